"""The end-to-end promises of the specification, each checked so that breaking it fails a test.

* predict labels a row ai_generated exactly when its score exceeds the calibrated
  threshold, and on the labelled demo predict split the false-positive rate is
  compatible with the 20 % cap;
* a deadline that is used up before a row is reached still gives that row a label:
  predictions.csv always holds every row_id exactly once;
* no stage writes outside ``artifacts/``: not into the rest of the workspace, not
  into the HOME or TMPDIR it was given;
* Task 3 starts its network from Task 2's best weights.

Most tests read the shared demo run and redo one cheap step (a predict, a start of
training) with the code under test, so a breakage of that step fails them even
when the demo run was made earlier (``AMLS_TEST_DEMO_RUN``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stagerun import (SOLUTION, assert_complete, fallback_inputs, fresh_artifacts, read_predictions, run_stage,
                      task_detector_only)

from aidetect.budget import Deadline
from aidetect.metrics import clopper_pearson
from aidetect.modelfiles import NETWORK_FILE, load_network_file

MAX_FPR = 0.20
# One-sided 95 % lower Clopper-Pearson bound: the two-sided 90 % interval's lower end. A true FPR of at most
# 0.20 gives a lower bound above 0.20 with probability at most 5 %.
LOWER_BOUND_CONFIDENCE = 0.90
TASKS = ("task02", "task03")


def fpr_lower_bound(labels: dict[int, int], truth: dict[int, int]) -> tuple[float, int, int]:
    """(one-sided 95 % lower bound of the FPR, false positives, real images) of ``labels`` against ``truth``."""
    reals = [row for row, source in truth.items() if source == 0]
    false_positives = sum(labels[row] for row in reals)
    return clopper_pearson(false_positives, len(reals), LOWER_BOUND_CONFIDENCE)[0], false_positives, len(reals)


@pytest.fixture(scope="module")
def predict_truth(demo_root) -> dict[int, int]:
    labels = pd.read_parquet(demo_root / "labels" / "predict_labels.parquet")
    return dict(zip(labels["row_id"].astype(int), labels["source_class"].astype(int)))


def independent_scores(task: str, demo_root: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Row ids, scores and threshold value of ``task``'s detector on the demo predict split, computed here."""
    from aidetect.detector import _decode_for_predict, load_detector
    from aidetect.features import CornerFeatures

    detector = load_detector(task)
    raw = pd.read_parquet(demo_root / "data" / "predict")
    decoded = [_decode_for_predict((int(r), data, detector.scores_corner_crops))
               for r, data in zip(raw["row_id"], raw["image"])]
    assert all(error is None for _, _, error in decoded), "the demo predict images all decode"
    crops = np.stack([d[0] for _, d, _ in decoded])
    corners = CornerFeatures.stack([d[1] for _, d, _ in decoded]) if detector.scores_corner_crops else None
    threshold = json.loads((Path(os.environ["AMLS_ARTIFACTS_DIR"]) / task / "detector.json").read_text())["threshold"]
    return raw["row_id"].to_numpy().astype(int), detector.score(crops, corners=corners), float(threshold["value"])


@pytest.mark.parametrize("task", TASKS)
def test_predict_labels_are_the_calibrated_threshold_applied_to_the_scores(demo_run, demo_root, predict_truth, task,
                                                                           tmp_path, monkeypatch):
    from aidetect.detector import predict_task

    artifacts = task_detector_only(demo_run["artifacts"], tmp_path / "artifacts", task)
    monkeypatch.setenv("AMLS_DATA_DIR", str(demo_root / "data"))
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(artifacts))
    report = predict_task(task, Deadline(600, start=time.monotonic()))
    assert report["unscored_row_ids"] == [] and report["undecodable"] == []
    written = dict(read_predictions(artifacts / task / "predictions.csv"))

    row_ids, scores, threshold = independent_scores(task, demo_root)
    expected = {int(r): int(s > threshold) for r, s in zip(row_ids, scores)}
    wrong = sorted(r for r in expected if written.get(r) != expected[r])
    assert not wrong, f"{len(wrong)} rows not labelled score > {threshold:.4f}: {wrong[:10]}"
    # The scores are not all on one side of the threshold, so the comparison can tell rules apart.
    assert 0 < sum(expected.values()) < len(expected)
    # The predictions.csv the harness's run wrote follows the same rule on the rows it scored, and calls the
    # rows its deadline did not reach real (0).
    harness = dict(read_predictions(demo_run["artifacts"] / task / "predictions.csv"))
    unscored = set(json.loads((demo_run["artifacts"] / task / "predict_report.json").read_text())["unscored_row_ids"])
    assert harness == {r: 0 if r in unscored else label for r, label in expected.items()}

    bound, false_positives, reals = fpr_lower_bound(written, predict_truth)
    assert bound <= MAX_FPR, (f"{task}: {false_positives} of {reals} real predict images called generated; "
                              f"FPR lower bound {bound:.3f} > {MAX_FPR}")


def test_an_exhausted_deadline_still_labels_every_row_once_and_names_the_unscored_rows(detector_artifacts, demo_root,
                                                                                     tmp_path):
    """2 s is less than the 5 s a stage keeps free at its end: the deadline is over before the first row."""
    row_ids = pd.read_parquet(demo_root / "data" / "predict")["row_id"].astype(int).tolist()
    artifacts = fresh_artifacts(detector_artifacts, tmp_path)

    result = run_stage("predict", demo_root / "data", artifacts, timeout=2, limit=120)

    assert result.returncode == 0, result.output[-3000:]
    labels = assert_complete(artifacts / "task02" / "predictions.csv", row_ids)
    assert set(labels.values()) == {0}  # conservative: a row without a score is called real
    report = json.loads((artifacts / "task02" / "predict_report.json").read_text())
    assert report["detector"] is not None and report["n_rows"] == len(row_ids)
    assert report["unscored_row_ids"] == sorted(row_ids)
    warning = [line for line in result.stdout.splitlines() if "time budget ran out" in line]
    assert len(warning) == 1 and f"{len(row_ids)} rows labelled real (0) unscored" in warning[0], warning
    named = [int(x) for x in warning[0].split("row_ids [", 1)[1].rstrip("]").split(",")]
    assert named and set(named) <= set(row_ids)


# --- nothing outside artifacts/ ------------------------------------------------------


def files_below(root: Path, skip_top: tuple[str, ...] = ()) -> dict[str, tuple[float, int]]:
    """Relative path -> (modification time, size) of every file, folder and link under ``root``."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if not rel.parts:
            dirnames[:] = [d for d in dirnames if d not in skip_top]
            filenames = [f for f in filenames if f not in skip_top]
        for name in dirnames + filenames:
            info = os.lstat(Path(dirpath) / name)
            found[str(rel / name)] = (info.st_mtime, info.st_size)
    return found


def assert_nothing_written_outside_artifacts(solution_copy: Path, expected_copy: Path, given: dict[str, Path],
                                             since: float) -> None:
    after = files_below(solution_copy, skip_top=("artifacts", "data"))
    before = files_below(expected_copy, skip_top=("artifacts", "data"))
    assert sorted(set(after) - set(before)) == [], "files appeared in the workspace outside artifacts/"
    assert sorted(set(before) - set(after)) == [], "files vanished from the workspace"
    # The copy keeps the source's modification times: a file rewritten in place is newer than the start.
    changed = [path for path, (mtime, size) in after.items()
               if not (solution_copy / path).is_dir() and (mtime >= since - 1 or size != before[path][1])]
    assert changed == [], f"files rewritten outside artifacts/: {changed}"
    for name, folder in given.items():
        left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
        assert left == [], f"the stages wrote into the {name} they were given ({folder}): {left[:10]}"


def test_no_stage_of_the_six_writes_outside_artifacts(demo_run):
    """The demo run's kept workspace, and the empty HOME and TMPDIR its stages were given."""
    from datetime import datetime

    assert [s["name"] for s in demo_run["stages"]] == ["clean", "prepare", "train", "predict", "train_augmented",
                                                        "predict_augmented"]
    first_start = datetime.fromisoformat(demo_run["stages"][0]["started_at"]).timestamp()
    assert_nothing_written_outside_artifacts(demo_run["solution_copy"], demo_run["expected_copy"],
                                             demo_run["given_dirs"], first_start)
    assert (demo_run["solution_copy"] / "artifacts" / "task03" / "predictions.csv").exists()


def test_the_predict_stages_write_nothing_outside_artifacts_as_graders_run_them(demo_run, demo_root, tmp_path):
    """predict.py and predict_augmented.py in a copy of solution/ with the default paths (no AMLS_* variables):
    artifacts/ and data/ inside it, as in the graders' container. Cheaper than the six stages, for the mutation check."""
    from grade import copy_build_context

    solution_copy, expected_copy = tmp_path / "ws" / "solution", tmp_path / "expected_copy"
    copy_build_context(str(SOLUTION), str(solution_copy))
    copy_build_context(str(SOLUTION), str(expected_copy))
    shutil.copytree(demo_root / "data" / "predict", solution_copy / "data" / "predict")
    for task in TASKS:
        task_detector_only(demo_run["artifacts"], solution_copy / "artifacts", task)
    given = {"HOME": tmp_path / "home", "TMPDIR": tmp_path / "tmp"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMLS_") and k not in (
        "PYTHONPATH", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR", "TORCH_HOME")}
    for key, folder in given.items():
        folder.mkdir()
        env[key] = str(folder)
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    started = time.time()
    for stage in ("predict", "predict_augmented"):
        result = subprocess.run([sys.executable, f"{stage}.py", "--timeout_seconds", "600"], cwd=solution_copy,
                                env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_nothing_written_outside_artifacts(solution_copy, expected_copy, given, started)
    row_ids = pd.read_parquet(demo_root / "data" / "predict")["row_id"].tolist()
    for task in TASKS:
        assert_complete(solution_copy / "artifacts" / task / "predictions.csv", row_ids)


# --- Task 3 continues from Task 2 ------------------------------------------------------


class _FirstStep(Exception):
    """Raised by the spy at the first training step: the test has what it needs."""


def test_task03_training_starts_from_the_task02_best_weights(demo_run, tmp_path, monkeypatch):
    """train_augmented's first training step sees exactly the weights of task02/model_best.safetensors."""
    import torch

    from aidetect import detector, stages, training

    artifacts = tmp_path / "artifacts"
    for part in ("prepared", "task02"):
        shutil.copytree(demo_run["artifacts"] / part, artifacts / part)
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(artifacts))
    monkeypatch.setenv("AMLS_DATA_DIR", str(demo_run["data_root"] / "data"))

    def quick_fallback(task, train, indices, splits, *args, **kwargs):  # the classical model is not at stake here
        return None, {name: np.arange(len(data), dtype=np.float64) for name, data in splits.items()}

    seen = {}

    def spy(model, *args, **kwargs):
        seen["weights"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        raise _FirstStep

    monkeypatch.setattr(detector, "fit_fallback", quick_fallback)
    monkeypatch.setattr(training, "train_one_epoch", spy)
    with pytest.raises(_FirstStep):
        stages.train_augmented(Deadline(1800, start=time.monotonic()))

    task02 = load_network_file(artifacts / "task02" / NETWORK_FILE)[0]
    assert seen["weights"].keys() == task02.keys()
    assert all(torch.equal(seen["weights"][k], task02[k]) for k in task02)
    # ... and not by chance: a freshly initialised network differs.
    fresh = training.build_model(detector.TASK03_CONFIG.arch, **detector.TASK03_CONFIG.model_kwargs()).state_dict()
    assert not all(torch.equal(fresh[k], task02[k]) for k in task02)


# --- the threshold comes from the calibration split -----------------------------------


def test_the_threshold_is_the_rule_applied_to_the_calibration_reals_scores(demo_run, tmp_path, monkeypatch):
    """The classical detector fitted on a third of the demo training images, as train.py fits it: its saved
    threshold is the Neyman-Pearson order statistic of the calibration split's real images, not of another split."""
    from aidetect import detector
    from aidetect.calibration import calibrate_threshold

    artifacts, train, splits, indices = fallback_inputs(demo_run, tmp_path, monkeypatch, min_fallback_train=12)
    model, _ = detector.fit_fallback("task02", train, indices[::3], splits, 0, Deadline(1000, start=time.monotonic()))

    calibration = splits["calibration"]
    scores = detector.classical_split_scores(model, calibration, detector.uses_corners("task02", splits))
    reals = scores[calibration.source_class == 0]
    expected = calibrate_threshold(reals, MAX_FPR, 0.05)
    saved = json.loads((artifacts / "task02" / "detector.json").read_text())["threshold"]
    assert saved["n_calibration"] == len(reals) and saved["order_statistic_k"] == expected.order_statistic_k
    assert saved["value"] == pytest.approx(expected.value, abs=1e-12)
    assert saved["guaranteed"] and saved["max_fpr"] == MAX_FPR and saved["confidence"] == 0.95
