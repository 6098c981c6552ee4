"""The demo run was isolated, and stages repeat themselves exactly across processes.

Read-only data and no network: the demo run goes through the harness inside
``unshare --mount --net`` (rootless for an ordinary user: ``--user --map-root-user``) with the
data bind-mounted read-only. That a socket
connect fails in the stage's namespace and a write to ``data/`` fails is shown by
``tests/test_grade_harness.py::test_full_run_on_fake_solution``; it is not repeated here.

That no stage writes outside ``artifacts/`` is checked on the demo run's kept workspace
(``tests/test_promises.py``), and that every stage keeps its short timeouts (a tenth of the official
ones) by ``tests/test_pipeline_e2e.py::test_every_stage_succeeds_within_its_timeout``. Training under a
deadline that binds is checked in process: the decisions it forces and their record
(``tests/test_reproducible_training.py``) and the fallback fitted to a short budget
(``tests/test_kill_resume.py``).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import torch

from stagerun import SOLUTION, package_env, task_detector_only

from aidetect.budget import Deadline
from aidetect.cleaning import prepare_split


def test_demo_run_had_read_only_data_and_no_network(demo_run, demo_root):
    if demo_run["isolation"] == "none" and os.geteuid() != 0:
        pytest.skip("an ordinary user on a machine without unprivileged user namespaces cannot unshare "
                    "mount and network namespaces: " + "; ".join(demo_run["warnings"]))
    assert demo_run["isolation"] == "unshare(mount,net)+ro-bind", demo_run["warnings"]
    assert demo_run["data_mount"] == "read-only bind mount"
    assert demo_run["network"].startswith("none")
    # Nothing appeared in the dataset folder: it holds exactly what make_demo_data wrote.
    written = sorted(str(p.relative_to(demo_root / "data")) for p in (demo_root / "data").rglob("*") if p.is_file())
    assert written == sorted(f"{split}/part-0.parquet" for split in
                             ("train", "calibration", "calibration_augmented", "validation",
                              "validation_augmented", "predict"))


# --- determinism ----------------------------------------------------------------------


def test_prepare_is_deterministic_across_processes(demo_run, demo_root, tmp_path, monkeypatch):
    """The crops prepared here equal the ones the demo run's prepare.py wrote in its own process."""
    recipe = pd.read_parquet(demo_run["artifacts"] / "clean" / "recipe.parquet")
    monkeypatch.setenv("AMLS_DATA_DIR", str(demo_root / "data"))
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(tmp_path))
    prepare_split("train", recipe, seed=0)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    for name in ("crops.npy", "labels.npy"):
        reference = digest(demo_run["artifacts"] / "prepared" / "train" / name)
        assert digest(tmp_path / "prepared" / "train" / name) == reference


TRAIN_IN_A_PROCESS = textwrap.dedent("""
    import sys, time
    import numpy as np, torch
    from aidetect.budget import Deadline
    from aidetect.cleaning import PreparedSplit, load_prepared
    from aidetect.training import TrainConfig, fit, score_crops
    full = load_prepared("train")
    keep = np.sort(np.concatenate([np.flatnonzero(full.source_class == c)[:4] for c in range(6)]))
    data = PreparedSplit("train", np.asarray(full.crops[keep]), full.source_class[keep])
    config = TrainConfig(epochs=2, width=8, batch_size=8, seed=123)  # small: only repeatability is at stake
    model, result = fit(config, data, __import__("pathlib").Path(sys.argv[1]), Deadline(600, start=time.monotonic()),
                        reserve_seconds=0, resume=False)
    scores = score_crops(model, np.asarray(load_prepared("calibration").crops[:16]))
    history = [{{k: v for k, v in h.items() if k != "seconds"}} for h in result.history]
    torch.save({{"state": model.state_dict(), "history": history, "best_score": result.best_score,
                "epochs_run": result.epochs_run, "scores": scores}}, sys.argv[2])
""")


def test_training_twice_in_two_processes_gives_identical_models_and_scores(demo_run, tmp_path):
    """Two interpreters, as two runs of train.py: a seed that depends on the process (its id, the time, hash
    randomisation) would pass a check inside one process and fail here."""
    script = tmp_path / "train_once.py"
    script.write_text(TRAIN_IN_A_PROCESS.format(solution=str(SOLUTION)))
    env = package_env(dict(os.environ, AMLS_ARTIFACTS_DIR=str(demo_run["artifacts"]), PYTHONHASHSEED="random"))
    env.pop("AMLS_SEED", None)
    runs = []
    for run in ("a", "b"):
        result = subprocess.run([sys.executable, str(script), str(tmp_path / run), str(tmp_path / f"{run}.pt")],
                                env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        runs.append(torch.load(tmp_path / f"{run}.pt", weights_only=False))
    a, b = runs
    assert a["epochs_run"] == 2
    assert a["history"] == b["history"] and a["best_score"] == b["best_score"]
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert np.array_equal(a["scores"], b["scores"])


def test_predicting_twice_gives_identical_files(demo_run, demo_root, tmp_path, monkeypatch):
    """A fresh predict with the demo run's detector rewrites its predictions.csv byte for byte."""
    from aidetect.detector import predict_task

    artifacts = task_detector_only(demo_run["artifacts"], tmp_path / "artifacts")
    monkeypatch.setenv("AMLS_DATA_DIR", str(demo_root / "data"))
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(artifacts))
    predict_task("task02", Deadline(120, start=time.monotonic()))
    again = (artifacts / "task02" / "predictions.csv").read_bytes()
    assert again == (demo_run["artifacts"] / "task02" / "predictions.csv").read_bytes()


@pytest.mark.parametrize("task", ["task02", "task03"])
def test_the_seed_is_recorded_with_the_metrics(demo_run, task):
    metrics = json.loads((demo_run["artifacts"] / task / "metrics.json").read_text())
    assert metrics["seed"] == 0 and metrics["config"]["seed"] == 0
