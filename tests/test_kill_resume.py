"""A stage may be killed at any moment: what it leaves behind stays usable.

``train.py`` runs on a small copy of the demo run's prepared crops and is
killed (SIGKILL, once SIGTERM) before its fallback detector exists, after the
fallback's ``detector.json`` appears, and during network training once
``checkpoint_last.pt`` appears. After each kill ``predict.py`` still writes every
row_id exactly once, every checkpoint on disk loads, and training resumes from
the last checkpoint, or restarts cleanly when a kill cut a checkpoint write short.
"""
from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stagerun import assert_complete, fallback_inputs, kill, run_stage, start_stage, wait_for

from aidetect.budget import Deadline
from aidetect.cleaning import PreparedSplit, load_prepared
from aidetect.dataio import write_json
from aidetect.detector import TASK02_CONFIG, load_detector
from aidetect.modelfiles import NETWORK_FILE, load_checkpoint, load_network_file
from aidetect.training import _load_resumable, fit

TRAIN_TIMEOUT = 300  # enough for the network to start on the small prepared set, also on a busy machine


def subset_prepared(src: Path, dst: Path, split: str, per_class: int, seed: int = 0) -> None:
    """A prepared split with at most ``per_class`` crops of each source class, in the prepare.py layout."""
    crops = np.load(src / split / "crops.npy", mmap_mode="r")
    labels = np.load(src / split / "labels.npy")
    rng = np.random.default_rng(seed)
    chosen = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                                     for c in np.unique(labels)]))
    out = dst / split
    out.mkdir(parents=True)
    np.save(out / "crops.npy", np.ascontiguousarray(crops[chosen]))
    np.save(out / "labels.npy", labels[chosen])
    pd.read_parquet(src / split / "index.parquet").iloc[chosen].to_parquet(out / "index.parquet", index=False)
    write_json(out / "info.json", {"split": split, "n": int(len(chosen)), "crop_size": int(crops.shape[1]),
                                   "seed": 0, "per_class": {str(c): int((labels[chosen] == c).sum())
                                                            for c in np.unique(labels)}})


@pytest.fixture(scope="module")
def small_prepared(demo_run, tmp_path_factory) -> Path:
    """artifacts/prepared with 8 training crops per class and 24 real + 10 generated calibration crops."""
    root = tmp_path_factory.mktemp("small_artifacts")
    src = demo_run["artifacts"] / "prepared"
    subset_prepared(src, root / "prepared", "train", per_class=8)
    subset_prepared(src, root / "prepared", "calibration", per_class=24)
    labels = np.load(root / "prepared" / "calibration" / "labels.npy")
    assert (labels == 0).sum() >= 14  # enough real images for the FPR guarantee
    return root


@pytest.fixture
def artifacts(small_prepared, tmp_path) -> Path:
    shutil.copytree(small_prepared, tmp_path / "artifacts")
    return tmp_path / "artifacts"


@pytest.fixture(scope="module")
def predict_ids(demo_root) -> list[int]:
    return pd.read_parquet(demo_root / "data" / "predict")["row_id"].tolist()


def predict_after_kill(demo_root, artifacts, predict_ids):
    result = run_stage("predict", demo_root / "data", artifacts, timeout=600)  # not binding: kills are at stake
    assert result.returncode == 0, result.output[-3000:]
    assert "Traceback" not in result.output
    labels = assert_complete(artifacts / "task02" / "predictions.csv", predict_ids)
    report = json.loads((artifacts / "task02" / "predict_report.json").read_text())
    return result, labels, report


def test_kill_before_any_detector_exists_still_gives_complete_predictions(demo_root, artifacts, predict_ids,
                                                                         tmp_path):
    log = tmp_path / "train.log"
    proc = start_stage("train", demo_root / "data", artifacts, TRAIN_TIMEOUT, log)
    wait_for(lambda: "stage train:" in log.read_text(), proc, 180, "stage start", log)
    kill(proc, signal.SIGKILL)
    assert not (artifacts / "task02" / "detector.json").exists()

    result, labels, report = predict_after_kill(demo_root, artifacts, predict_ids)

    assert set(labels.values()) == {0}
    assert "no usable task02 detector" in result.stdout and "every row will be labelled real (0)" in result.stdout
    assert report["detector"] is None and report["n_rows"] == len(predict_ids)


def test_sigterm_after_the_fallback_leaves_the_fallback_usable(demo_root, artifacts, predict_ids, tmp_path):
    log = tmp_path / "train.log"
    proc = start_stage("train", demo_root / "data", artifacts, TRAIN_TIMEOUT, log)
    wait_for(lambda: (artifacts / "task02" / "detector.json").exists(), proc, 240, "detector.json", log)
    kill(proc, signal.SIGTERM)
    assert proc.returncode == -signal.SIGTERM
    assert json.loads((artifacts / "task02" / "detector.json").read_text())["kind"] == "classical"

    _, _, report = predict_after_kill(demo_root, artifacts, predict_ids)

    assert report["detector"] == "classical" and report["undecodable"] == []


def _load_every_checkpoint(folder: Path) -> dict[str, dict]:
    """The resume checkpoint and the best network's metadata, each read the safe way."""
    loaded = {path.name: load_checkpoint(path) for path in sorted(folder.glob("*.pt"))}
    assert all("model" in checkpoint for checkpoint in loaded.values())
    if (folder / NETWORK_FILE).exists():
        loaded[NETWORK_FILE] = load_network_file(folder / NETWORK_FILE)[1]
    return loaded


def test_kill_during_network_training_then_predict_and_resume(demo_root, artifacts, predict_ids, tmp_path,
                                                              monkeypatch):
    folder = artifacts / "task02"
    log = tmp_path / "train.log"
    proc = start_stage("train", demo_root / "data", artifacts, TRAIN_TIMEOUT, log)
    wait_for(lambda: (folder / "checkpoint_last.pt").exists(), proc, 280, "checkpoint_last.pt", log)
    kill(proc, signal.SIGKILL)

    checkpoints = _load_every_checkpoint(folder)
    assert {"checkpoint_last.pt", NETWORK_FILE} <= set(checkpoints)
    assert json.loads((folder / "detector.json").read_text())["kind"] == "classical"  # network not calibrated yet
    _, _, report = predict_after_kill(demo_root, artifacts, predict_ids)
    assert report["detector"] == "classical"

    # The killed run's checkpoint is resumable by the stage's own configuration ...
    checkpoint = _load_resumable(folder / "checkpoint_last.pt", TASK02_CONFIG)
    assert checkpoint is not None and checkpoint["state"]["epoch"] >= 1
    # ... and a re-run resumes from it. It is moved to the last epoch so the re-run stays short.
    checkpoint["state"]["epoch"] = TASK02_CONFIG.epochs - 1
    torch.save(checkpoint, folder / "checkpoint_last.pt")
    rerun = run_stage("train", demo_root / "data", artifacts, timeout=TRAIN_TIMEOUT)

    assert rerun.returncode == 0, rerun.output[-3000:]
    assert f"resuming tracenet from epoch {TASK02_CONFIG.epochs - 1}" in rerun.stdout
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["detector"] == "fusion" and metrics["fit"]["epochs_run"] == TASK02_CONFIG.epochs
    assert _load_every_checkpoint(folder)["checkpoint_last.pt"]["finished"] is True
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(artifacts))
    detector = load_detector("task02")  # what predict.py loads (a full network predict takes a while)
    assert detector.kind == "fusion" and detector.network is not None
    crops = load_prepared("calibration").crops[:4]
    assert set(detector.label_single_crops(np.asarray(crops)).tolist()) <= {0, 1}


def test_a_checkpoint_write_cut_short_restarts_training_cleanly(artifacts, monkeypatch, caplog):
    """A stray temp file and a truncated checkpoint_last.pt (a kill mid-write without atomic rename)."""
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(artifacts))
    folder = artifacts / "task02"
    folder.mkdir()
    data = load_prepared("train")
    good = folder / "good.pt"
    torch.save({"model": {}, "config": asdict(TASK02_CONFIG), "state": {"epoch": 3}, "finished": False}, good)
    blob = good.read_bytes()
    (folder / "checkpoint_last.pt").write_bytes(blob[: len(blob) // 2])
    (folder / ".checkpoint_last.pt.k1ll3d.tmp").write_bytes(blob[:100])
    good.unlink()

    with caplog.at_level(logging.INFO, logger="aidetect"):
        _, result = fit(TASK02_CONFIG, PreparedSplit("train", data.crops, data.source_class), folder,
                        Deadline(10, start=time.monotonic()), reserve_seconds=0)

    assert "unreadable" in caplog.text and "starting afresh" in caplog.text
    assert "resuming" not in caplog.text
    assert result.epochs_run >= 1 and result.history[0]["epoch"] == 1
    checkpoints = _load_every_checkpoint(folder)
    assert checkpoints["checkpoint_last.pt"]["state"]["epoch"] == result.epochs_run
    assert checkpoints[NETWORK_FILE]["epoch"] == result.best_epoch


def test_fallback_subsamples_its_training_set_to_fit_a_short_budget(demo_run, tmp_path, monkeypatch):
    """With seconds to spare, the fallback learns from a stratified subset and is still calibrated and saved."""
    from aidetect import detector
    from aidetect.budget import Deadline

    artifacts, train, splits, indices = fallback_inputs(demo_run, tmp_path, monkeypatch, min_fallback_train=24)
    assert len(indices) > 40, "the demo training set is too small for this test"
    started = time.monotonic()
    model, scores = detector.fit_fallback("task02", train, indices, splits, 0, Deadline(3, start=time.monotonic()))
    description = json.loads((artifacts / "task02" / "detector.json").read_text())
    assert description["kind"] == "classical"
    assert description["train_images"] <= 30  # the floor (24), give or take stratified rounding
    assert set(scores) >= {"calibration"} and len(scores["calibration"]) == len(splits["calibration"])
    assert time.monotonic() - started < 30
    # And with a long budget it keeps every image.
    detector.fit_fallback("task02", train, indices, splits, 0, Deadline(3600, start=time.monotonic()))
    assert json.loads((artifacts / "task02" / "detector.json").read_text())["train_images"] == len(indices)
