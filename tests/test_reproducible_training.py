"""Same data and seed, same model: the machine's load must not change what train.py learns.

Only a deadline that really binds may make training depend on time (a
subsampled fallback, a shortened schedule, an early stop), and then
``metrics.json`` lists it under ``time_bound_decisions``.

Two versions of the promise: in the suite, training twice in this process, the
second time under a clock that runs four times fast (what a loaded machine looks
like to the code: every measured duration four times longer); marked ``slow``
(``make test-slow``), the real thing: ``train.py`` on a quiet machine and beside
two busy processes. Process-dependence (a seed from the process id, hash
randomisation) is checked by ``test_isolation_determinism.py``.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stagerun import run_stage, task_detector_only

from aidetect import detector
from aidetect.budget import Deadline
from aidetect.cleaning import SHIFT_DIR, load_prepared
from aidetect.detector import TASK02_CONFIG, fit_time_bound_decisions
from aidetect.modelfiles import CLASSICAL_FILE, NETWORK_FILE, load_network_file
from aidetect.training import FitResult, stratified_holdout

TRAIN_TIMEOUT = 1800  # the official budget: on the demo data the deadline is far from binding
BURNERS = 2  # busy processes, one per core of the 2-core development machine


def start_burners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
            for _ in range(n)]


def subset_training_split(prepared: Path, per_class: int) -> None:
    """Keep the first ``per_class`` training images of each source class, with their stored views."""
    folder = prepared / "train"
    labels = np.load(folder / "labels.npy")
    chosen = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))
    for name in ("crops.npy", "labels.npy", "view_features.npy"):
        rows = np.load(folder / name)[chosen]
        np.save(folder / name, np.ascontiguousarray(rows))
    pd.read_parquet(folder / "index.parquet").iloc[chosen].to_parquet(folder / "index.parquet", index=False)
    info = json.loads((folder / "info.json").read_text())
    info.update(n=int(len(chosen)), per_class={str(c): int((labels[chosen] == c).sum()) for c in np.unique(labels)})
    (folder / "info.json").write_text(json.dumps(info))


@pytest.fixture(scope="module")
def small_prepared(demo_run, tmp_path_factory) -> Path:
    """The demo run's prepared training and calibration splits, training cut to 10 images per class: shorter
    epochs. The report splits are left out: scoring them would take most of the time, and the model (at stake
    here) is fitted and calibrated without them."""
    prepared = tmp_path_factory.mktemp("reproducible") / "prepared"
    shutil.copytree(demo_run["artifacts"] / "prepared", prepared)
    for name in ("validation", "validation_augmented", "calibration_augmented", SHIFT_DIR):
        shutil.rmtree(prepared / name)
    subset_training_split(prepared, per_class=10)
    return prepared


def train_once(small_prepared, demo_root, folder: Path, burners: int) -> Path:
    """train.py on a copy of the prepared crops, with ``burners`` busy processes beside it; returns the artifacts."""
    artifacts = folder / "artifacts"
    shutil.copytree(small_prepared, artifacts / "prepared")
    load = start_burners(burners)
    try:
        result = run_stage("train", demo_root / "data", artifacts, timeout=TRAIN_TIMEOUT, limit=900)
    finally:
        for proc in load:
            proc.kill()
        for proc in load:
            proc.wait(timeout=30)
    assert result.returncode == 0, result.output[-3000:]
    (folder / "train.log").write_text(result.output)
    return artifacts


def predict_in_process(demo_root, artifacts: Path, monkeypatch) -> bytes:
    monkeypatch.setenv("AMLS_DATA_DIR", str(demo_root / "data"))
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(artifacts))
    detector.predict_task("task02", Deadline(300, start=time.monotonic()))
    return (artifacts / "task02" / "predictions.csv").read_bytes()


CLOCK_FACTOR = 4  # the in-process twin's clock: four seconds pass for each real one
# The twin's schedule: Task 2's configuration, shorter (every time-dependent decision is taken each epoch, so a
# dozen epochs exercise them as sixty do, in a fifth of the time).
TWIN_CONFIG = replace(TASK02_CONFIG, epochs=12, min_epochs=6, patience=4)
# Both in-process runs get the official budget times the clock factor: the fast clock must not make the deadline
# bind on a busy machine (one run took 5 minutes at load 6), since only a deadline that does not bind is at stake.
TWIN_TIMEOUT = CLOCK_FACTOR * TRAIN_TIMEOUT


@contextlib.contextmanager
def fast_clock(factor: float):
    """``time.monotonic`` and ``time.perf_counter`` running ``factor`` times fast (forked workers inherit it)."""
    real_monotonic, real_perf = time.monotonic, time.perf_counter
    origin_monotonic, origin_perf = real_monotonic(), real_perf()
    time.monotonic = lambda: origin_monotonic + factor * (real_monotonic() - origin_monotonic)
    time.perf_counter = lambda: origin_perf + factor * (real_perf() - origin_perf)
    try:
        yield
    finally:
        time.monotonic, time.perf_counter = real_monotonic, real_perf


def train_in_process(small_prepared, demo_root, folder: Path, monkeypatch, clock_factor: float) -> Path:
    """train_task as train.py calls it, in this process, under a clock ``clock_factor`` times fast."""
    artifacts = folder / "artifacts"
    shutil.copytree(small_prepared, artifacts / "prepared")
    monkeypatch.setenv("AMLS_DATA_DIR", str(demo_root / "data"))
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(artifacts))
    with fast_clock(clock_factor):
        detector.require_trainable("task02")
        detector.train_task("task02", Deadline(TWIN_TIMEOUT, start=time.monotonic()), TWIN_CONFIG)
    return artifacts


def test_train_gives_the_same_model_when_every_duration_looks_four_times_longer(small_prepared, demo_root, tmp_path,
                                                                                monkeypatch):
    quiet = train_in_process(small_prepared, demo_root, tmp_path / "quiet", monkeypatch, clock_factor=1)
    loaded = train_in_process(small_prepared, demo_root, tmp_path / "loaded", monkeypatch, clock_factor=CLOCK_FACTOR)
    seconds = [json.loads((a / "task02" / "metrics.json").read_text())["seconds"] for a in (quiet, loaded)]
    assert seconds[1] > 2 * seconds[0], f"the fast clock did not reach the training code: {seconds}"
    assert_same_training(quiet, loaded, demo_root, monkeypatch, predict=False)


@pytest.mark.slow
def test_train_gives_the_same_model_on_a_quiet_and_on_a_loaded_machine(small_prepared, demo_root, tmp_path,
                                                                       monkeypatch):
    started = time.monotonic()
    quiet = train_once(small_prepared, demo_root, tmp_path / "quiet", burners=0)
    loaded = train_once(small_prepared, demo_root, tmp_path / "loaded", burners=BURNERS)
    assert_same_training(quiet, loaded, demo_root, monkeypatch)
    print(f"two trainings and predictions in {time.monotonic() - started:.0f}s")


def assert_same_training(quiet: Path, loaded: Path, demo_root: Path, monkeypatch, predict: bool = True) -> None:
    """Same weights, same classical model, same threshold and metrics (and, with ``predict``, same predictions:
    the in-process twin leaves them out, since same files predict the same labels, checked by
    test_isolation_determinism's predicting twice); no time-bound decision."""
    metrics = {name: json.loads((artifacts / "task02" / "metrics.json").read_text())
               for name, artifacts in (("quiet", quiet), ("loaded", loaded))}
    for name, m in metrics.items():
        # The precondition: the deadline did not bind train.py (the prepared crops are a fixed input here,
        # whatever the demo run's prepare.py had time for).
        assert [d for d in m["time_bound_decisions"] if d["stage"] != "prepare"] == [], f"{name} run"
        assert m["detector"] == "fusion", f"{name} run kept the {m['detector']} detector"

    weights = [load_network_file(a / "task02" / NETWORK_FILE) for a in (quiet, loaded)]
    assert weights[0][1]["epoch"] == weights[1][1]["epoch"]
    assert weights[0][0].keys() == weights[1][0].keys()
    assert all(torch.equal(weights[0][0][k], weights[1][0][k]) for k in weights[0][0])
    assert (quiet / "task02" / CLASSICAL_FILE).read_bytes() == (loaded / "task02" / CLASSICAL_FILE).read_bytes()
    for key in ("threshold", "splits", "classical_splits", "network_splits", "fusion"):
        assert metrics["quiet"][key] == metrics["loaded"][key], key
    if predict:
        predictions = [predict_in_process(demo_root, task_detector_only(a, a.parent / "predict"), monkeypatch)
                       for a in (quiet, loaded)]
        assert predictions[0] == predictions[1]


# --- the decisions that may depend on time, and only when the deadline binds --------------


@pytest.fixture
def demo_training(demo_run, tmp_path, monkeypatch):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(demo_run["artifacts"] / "prepared", artifacts / "prepared")
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(artifacts))
    train = load_prepared("train")
    indices, _ = stratified_holdout(train.source_class, 0.15, 0)
    return artifacts, train, indices, {"calibration": load_prepared("calibration")}


def test_fallback_keeps_every_image_unless_they_would_not_fit_in_half_the_remaining_time(demo_training,
                                                                                         monkeypatch):
    artifacts, train, indices, splits = demo_training
    indices = indices[::3]  # a third of the images, every class: the rule is at stake, not the model
    monkeypatch.setattr(detector, "MIN_FALLBACK_TRAIN", 12)
    deadline = Deadline(1000, start=time.monotonic())
    n_scored = len(splits["calibration"])

    def per_crop_for(seconds: float) -> float:  # feature time per crop at which the fallback takes ``seconds``
        return seconds / (detector.VIEW_COST * len(indices) + n_scored)

    # A third of the remaining time: a quarter share would have subsampled, and changed the model with the load.
    decisions = []
    detector.fit_fallback("task02", train, indices, splits, 0, deadline, per_crop_for(deadline.remaining() / 3),
                          time_bound=decisions)
    assert json.loads((artifacts / "task02" / "detector.json").read_text())["train_images"] == len(indices)
    assert decisions == []
    # Twice the remaining time: the deadline binds, the set shrinks, and the run says so.
    detector.fit_fallback("task02", train, indices, splits, 0, deadline, per_crop_for(2 * deadline.remaining()),
                          time_bound=decisions)
    kept = json.loads((artifacts / "task02" / "detector.json").read_text())["train_images"]
    assert kept < len(indices)
    assert [(d["decision"], d["kept"], d["of"]) for d in decisions] == [
        ("fallback training set subsampled", kept, len(indices))]


def test_a_shortened_schedule_or_an_early_stop_is_recorded():
    def result(planned: int, stopped: str) -> FitResult:
        return FitResult(best_epoch=3, best_score=0.5, epochs_run=5, stopped_because=stopped, planned_epochs=planned)

    assert fit_time_bound_decisions("task02", TASK02_CONFIG, result(TASK02_CONFIG.epochs, "converged")) == []
    records = fit_time_bound_decisions("task02", TASK02_CONFIG, result(7, "time budget"))
    assert [r["decision"] for r in records] == ["learning-rate schedule shortened",
                                                "network training stopped by the deadline"]
    assert records[0]["planned_epochs"] == 7 and records[1]["epochs_run"] == 5


def test_the_demo_run_records_its_time_bound_decisions(demo_run):
    for task in ("task02", "task03"):
        metrics = json.loads((demo_run["artifacts"] / task / "metrics.json").read_text())
        assert isinstance(metrics["time_bound_decisions"], list)
        prepared = json.loads((demo_run["artifacts"] / "prepared" / "train" / "info.json").read_text())
        assert all(record in metrics["time_bound_decisions"] for record in prepared["time_bound_decisions"])
