"""A stage killed at any moment, also in the middle of writing a file, leaves usable outputs.

``test_kill_resume.py`` kills ``train.py`` between its writes. Here ``predict.py`` is
killed (SIGKILL) at three moments: before it has read the row ids, as soon as its
predictions.csv exists, and while it scores. And a process is killed in the middle
of each kind of write the stages make (predictions.csv, detector.json, a torch
checkpoint): half the bytes are on disk when the SIGKILL arrives. The file a later
stage reads must then be the previous complete version, never the half-written one.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stagerun import (SOLUTION, assert_complete, assert_processes_end, child_pids, encode, fresh_artifacts, kill,
                      package_env, run_stage, stage_env, start_stage, wait_for, write_labelled_file, write_predict_file)


@pytest.fixture(scope="module")
def slow_predict(tmp_path_factory) -> tuple[Path, list[int]]:
    """48 rows of one 1200x1200 PNG: predict needs several seconds to decode them, time to kill it mid-way."""
    y, x = np.mgrid[0:1200, 0:1200]
    pixels = np.stack([(x * 5 + y) % 256, (y * 3) % 256, (x ^ y) % 256], -1).astype(np.uint8)
    image = encode(Image.fromarray(pixels), "PNG", compress_level=1)
    data = tmp_path_factory.mktemp("slow_predict") / "data"
    row_ids = list(range(500, 548))
    write_predict_file(data / "predict" / "part-0.parquet", row_ids, [image] * len(row_ids))
    return data, row_ids


def _predictions_exist(artifacts: Path):
    return lambda: (artifacts / "task02" / "predictions.csv").exists()


def _log_says(log: Path, text: str):
    return lambda: text in log.read_text()


MOMENTS = {  # name -> (condition to wait for before the SIGKILL, whether predictions.csv must exist by then)
    "before the row ids are read": (lambda artifacts, log: _log_says(log, "stage predict:"), False),
    "as soon as predictions.csv exists": (lambda artifacts, log: _predictions_exist(artifacts), True),
    # The file exists, every row real (0), before the first row is scored: a kill mid-loop still leaves it.
    "while scoring": (lambda artifacts, log: _log_says(log, "predict task02"), True),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_predict_killed_at_any_moment_leaves_every_row_labelled_once(moment, detector_artifacts, slow_predict,
                                                                     tmp_path):
    data, row_ids = slow_predict
    artifacts = fresh_artifacts(detector_artifacts, tmp_path)
    log = tmp_path / "predict.log"
    condition, must_exist = MOMENTS[moment]
    proc = start_stage("predict", data, artifacts, 600, log)
    try:
        wait_for(condition(artifacts, log), proc, 240, moment, log)
        workers = set()
        if moment == "while scoring":
            time.sleep(1.0)  # decoding 48 images of 1200x1200 px takes several seconds: still in the loop
            workers = child_pids(proc.pid)
            assert workers, "the worker pool was not running"
    finally:
        kill(proc, signal.SIGKILL)
    assert_processes_end(workers)  # no orphaned worker keeps waiting on a queue, holding its memory
    csv = artifacts / "task02" / "predictions.csv"
    if must_exist or csv.exists():
        labels = assert_complete(csv, row_ids)  # the file that exists is whole: every row once
        assert set(labels.values()) <= {0, 1}
    # And predict run again (the graders may re-run a stage) writes the full file. Once, after the latest kill:
    # the earlier moments leave part of what it leaves (no file, or the first file with every row real).
    if moment == "while scoring":
        rerun = run_stage("predict", data, artifacts, timeout=600)
        assert rerun.returncode == 0, rerun.output[-3000:]
        assert_complete(csv, row_ids)


# --- killed in the middle of a write ---------------------------------------------------

DIE_MID_WRITE = textwrap.dedent("""
    import io, os, pathlib, signal, sys, time
    scenario, nth = sys.argv[1], int(sys.argv[2])
    calls = {{"n": 0}}

    def die_after_half(path, data):
        with open(path, "wb" if isinstance(data, bytes) else "w") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.fsync(handle.fileno())
        print("dying in the middle of writing", path, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    def watched(original, marker):
        def write(self, data, *args, **kwargs):
            if marker in self.name:
                calls["n"] += 1
                if calls["n"] == nth:
                    die_after_half(self, data)
            return original(self, data, *args, **kwargs)
        return write

    if scenario == "predictions.csv":
        pathlib.Path.write_text = watched(pathlib.Path.write_text, "predictions.csv")
        from aidetect.budget import Deadline
        from aidetect.detector import predict_task
        predict_task("task02", Deadline(300, start=time.monotonic()))
    elif scenario == "detector.json":
        pathlib.Path.write_text = watched(pathlib.Path.write_text, "detector.json")
        from aidetect.calibration import Threshold
        from aidetect.detector import save_detector_description
        for value in (1.5, 2.5):
            threshold = Threshold(value, 0.2, 0.95, 40, 38, 0.05, True)
            save_detector_description("task02", "classical", "fallback.json", threshold, {{"train_images": 10}})
    elif scenario == "checkpoint":
        import torch
        original_save = torch.save
        def save(obj, path, *args, **kwargs):
            if "checkpoint_last.pt" in pathlib.Path(path).name:
                calls["n"] += 1
                if calls["n"] == nth:
                    buffer = io.BytesIO()
                    original_save(obj, buffer)
                    die_after_half(pathlib.Path(path), buffer.getvalue())
            return original_save(obj, path, *args, **kwargs)
        torch.save = save
        from aidetect.dataio import save_torch
        from aidetect.paths import task_dir
        for epoch in (1, 2):
            save_torch(task_dir("task02") / "checkpoint_last.pt",
                       {{"model": {{"w": torch.full((64, 64), float(epoch))}}, "state": {{"epoch": epoch}}}})
    print("finished without being killed", flush=True)
""")


def die_mid_write(scenario: str, nth: int, data: Path, artifacts: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "die_mid_write.py"
    script.write_text(DIE_MID_WRITE.format(solution=str(SOLUTION)))
    result = subprocess.run([sys.executable, str(script), scenario, str(nth)],
                            env=package_env(stage_env(data, artifacts)),
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == -signal.SIGKILL, (
        f"the write was not reached (exit {result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result


def test_predict_killed_while_writing_the_final_csv_leaves_the_complete_first_one(detector_artifacts, demo_root,
                                                                                  tmp_path):
    """predict writes predictions.csv twice: every row real (0) at once, then the labels. Killed during the second
    write, the first, complete file stays."""
    artifacts = fresh_artifacts(detector_artifacts, tmp_path)
    row_ids = pd.read_parquet(demo_root / "data" / "predict")["row_id"].astype(int).tolist()
    die_mid_write("predictions.csv", 2, demo_root / "data", artifacts, tmp_path)
    labels = assert_complete(artifacts / "task02" / "predictions.csv", row_ids)
    assert set(labels.values()) == {0}


def test_predict_killed_while_writing_the_first_csv_leaves_no_partial_file(detector_artifacts, demo_root, tmp_path):
    artifacts = fresh_artifacts(detector_artifacts, tmp_path)
    die_mid_write("predictions.csv", 1, demo_root / "data", artifacts, tmp_path)
    assert not (artifacts / "task02" / "predictions.csv").exists()


def test_a_kill_while_detector_json_is_rewritten_leaves_the_previous_detector(tmp_path):
    artifacts = tmp_path / "artifacts"
    die_mid_write("detector.json", 2, tmp_path / "data", artifacts, tmp_path)
    description = json.loads((artifacts / "task02" / "detector.json").read_text())
    assert description["threshold"]["value"] == 1.5 and description["kind"] == "classical"


def test_a_kill_while_a_checkpoint_is_rewritten_leaves_the_previous_checkpoint(tmp_path):
    import torch

    artifacts = tmp_path / "artifacts"
    die_mid_write("checkpoint", 2, tmp_path / "data", artifacts, tmp_path)
    checkpoint = torch.load(artifacts / "task02" / "checkpoint_last.pt", weights_only=True)
    assert checkpoint["state"]["epoch"] == 1 and torch.equal(checkpoint["model"]["w"], torch.full((64, 64), 1.0))


# --- prepare.py killed while it writes a split ---------------------------------------


def _pattern_png(size: int, seed: int) -> bytes:
    """A distinct, cheap-to-store PNG (clean drops byte-identical images, so every one must differ)."""
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([(x * 5 + y + 7 * seed) % 256, (y * 3 + seed) % 256, (x ^ (y + seed)) % 256], -1)
    return encode(Image.fromarray(pixels.astype(np.uint8)), "PNG", compress_level=1)


@pytest.fixture(scope="module")
def slow_prepare_data(tmp_path_factory) -> Path:
    """24 training images of 600 x 600 pixels (prepare needs seconds for them: time to kill it mid-split) and
    a small calibration split."""
    data = tmp_path_factory.mktemp("slow_prepare") / "data"
    write_labelled_file(data / "train" / "part-0.parquet", [_pattern_png(600, i) for i in range(24)],
                        [i % 6 for i in range(24)])
    write_labelled_file(data / "calibration" / "part-0.parquet", [_pattern_png(256, 100 + i) for i in range(12)],
                        [i % 2 for i in range(12)])
    return data


def _writing(folder: Path, name: str):
    return lambda: any(folder.glob(f".{name}.*.tmp"))


def test_prepare_killed_while_writing_a_split_leaves_nothing_that_passes_for_complete(slow_prepare_data, tmp_path):
    """SIGKILL while the train split's crops are being written: the split reads as missing (train.py stops with one
    line that says to run prepare.py), and prepare.py run again leaves complete splits and no temporary file."""
    from aidetect.cleaning import load_prepared
    from aidetect.errors import DataError
    from aidetect.paths import pointing_at

    artifacts = tmp_path / "artifacts"
    log = tmp_path / "prepare.log"
    proc = start_stage("prepare", slow_prepare_data, artifacts, timeout=600, log_path=log)
    try:
        wait_for(_writing(artifacts / "prepared" / "train", "crops.npy"), proc, 300, "the train crops are written", log)
    finally:
        kill(proc)
    with pointing_at(artifacts, slow_prepare_data):
        with pytest.raises(DataError, match="run prepare.py"):
            load_prepared("train")

    train = run_stage("train", slow_prepare_data, artifacts, timeout=60, limit=300)
    assert train.returncode == 2 and "Traceback" not in train.output, train.output[-3000:]
    errors = [line for line in train.stdout.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "run prepare.py" in errors[0], errors

    again = run_stage("prepare", slow_prepare_data, artifacts, timeout=600, limit=600)
    assert again.returncode == 0, again.output[-3000:]
    with pointing_at(artifacts, slow_prepare_data):
        assert len(load_prepared("train")) == 24 and len(load_prepared("calibration")) == 12
    assert list((artifacts / "prepared").rglob("*.tmp")) == []  # the killed run's half-written file is gone


def test_the_next_write_removes_the_temporaries_that_killed_writes_left(tmp_path):
    """A kill mid-write leaves ``.<name>.<pid>.<random>.tmp`` beside the file: the next write of that file removes
    it when its writer is gone (or is this process), and leaves a running writer's and other files' alone."""
    from aidetect.dataio import write_json

    target = tmp_path / "detector.json"
    dead = tmp_path / ".detector.json.999999999.k2x8q1ab.tmp"  # above Linux's largest process id: no such process
    own = tmp_path / f".detector.json.{os.getpid()}.a1b2c3d4.tmp"
    unnamed = tmp_path / ".detector.json.q7w8e9r0.tmp"  # without a process id
    running = tmp_path / ".detector.json.1.z9y8x7w6.tmp"  # process 1 always runs
    other_file = tmp_path / ".metrics.json.999999999.k2x8q1ab.tmp"
    for path in (dead, own, unnamed, running, other_file):
        path.write_text("half")

    write_json(target, {"kind": "classical"})

    assert json.loads(target.read_text()) == {"kind": "classical"}
    assert sorted(p.name for p in tmp_path.glob(".*.tmp")) == sorted([running.name, other_file.name])
