"""Nothing is lost: a fault in one part of the input costs only that part, never the whole run.

Each test starts from a fault a hostile grader found and asserts what a user
relies on: a complete predictions.csv (every row_id exactly once, the rows the
fault touched labelled real and listed), or a one-line error and a non-zero
exit, and no file written outside ``artifacts/``.

- a damaged parquet page costs the rows of its row group (predict), or skips
  the row group with a warning (labelled splits);
- files with the same base name in different subfolders stay apart;
- the predict stage stops decoding at its deadline, however much work is
  queued, and a SIGTERM still writes the file;
- a tiny 16-bit PNG of 40 megapixels decodes in bounded memory;
- an empty evaluation-only split is skipped; an empty required one is a clear error;
- a calibration split without usable real images is skipped when another has them;
- predict_augmented without a usable Task-3 detector predicts with the Task-2 one, and says so;
- training data without a usable image, or of one class, stops training with one line;
- any exception reaching a stage's top is one line, not a traceback.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from stagerun import (SOLUTION, assert_complete, encode, fresh_artifacts, kill, noise_image, package_env, run_stage,
                      start_stage, wait_for, write_labelled_file, write_predict_file)


# --- helpers ------------------------------------------------------------------------


def snapshot(*folders: Path, skip: Path | None = None) -> dict:
    """path -> (size, mtime) of every file under ``folders`` except under ``skip``."""
    files = {}
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not (skip is not None and skip in path.parents):
                files[str(path)] = (path.stat().st_size, path.stat().st_mtime_ns)
    return files


class WritesOnlyArtifacts:
    """Asserts that a stage changed nothing under the test folder or ``solution/`` except ``artifacts/``."""

    def __init__(self, root: Path, artifacts: Path):
        self.root, self.artifacts = root, artifacts
        self.before = snapshot(root, SOLUTION, skip=artifacts)

    def check(self):
        assert snapshot(self.root, SOLUTION, skip=self.artifacts) == self.before


def damage_row_group(path: Path, row_group: int, column: int, n_bytes: int = 24) -> None:
    """Overwrite ``n_bytes`` at the first data page of one column chunk with 0xFF (the grader's reproduction)."""
    offset = pq.ParquetFile(path).metadata.row_group(row_group).column(column).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + n_bytes] = b"\xff" * n_bytes
    path.write_bytes(bytes(data))


def rewrite_in_row_groups(table: pa.Table, path: Path, rows: int = 20) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=rows, compression="snappy", use_dictionary=False)
    return path


def warning_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if " WARNING " in line]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if " ERROR " in line]


def small_labelled_table(n: int, seed: int) -> pa.Table:
    images = [encode(noise_image(48 + i % 5, 40, seed + i), "PNG") for i in range(n)]
    return pa.table({"image": pa.array(images, pa.binary()), "source_class": pa.array([i % 6 for i in range(n)], pa.int8())})


def report_of(artifacts: Path) -> dict:
    return json.loads((artifacts / "task02" / "predict_report.json").read_text())


# --- 1. a damaged parquet page ------------------------------------------------------


def test_a_damaged_parquet_page_costs_only_its_row_group(demo_root, detector_artifacts, tmp_path):
    table = pq.read_table(demo_root / "data" / "predict")
    path = rewrite_in_row_groups(table, tmp_path / "data" / "predict" / "part-0.parquet")
    damage_row_group(path, row_group=2, column=1)  # the image column of rows 40..59
    with pytest.raises(OSError):
        pq.read_table(path)  # what crashed the stage before
    # and a second file whose footer is destroyed: its rows (and their ids) cannot be known at all
    other = write_predict_file(tmp_path / "data" / "predict" / "sub" / "other.parquet", list(range(1000, 1010)),
                               [encode(noise_image(40, 30, 1), "PNG")] * 10)
    other.write_bytes(other.read_bytes()[:-40] + b"\xff" * 32 + other.read_bytes()[-8:])
    artifacts = fresh_artifacts(detector_artifacts, tmp_path)
    guard = WritesOnlyArtifacts(tmp_path, artifacts)

    result = run_stage("predict", tmp_path / "data", artifacts, timeout=60)

    assert result.returncode == 0, result.output[-3000:]
    assert "Traceback" not in result.output
    row_ids = table.column("row_id").to_pylist()
    labels = assert_complete(artifacts / "task02" / "predictions.csv", row_ids)
    lost = row_ids[40:60]
    assert all(labels[r] == 0 for r in lost)
    report = report_of(artifacts)
    assert sorted((u["where"], u["row_ids"]) for u in report["unreadable"]) == [
        ("part-0.parquet row group 2", lost), ("sub/other.parquet", [])]
    assert report["unscored_row_ids"] == [] and report["undecodable"] == []
    warning = next(line for line in warning_lines(result.stdout) if "labelled real (0)" in line and "row group 2" in line)
    assert all(str(r) in warning for r in lost)
    assert any("sub/other.parquet is unreadable" in line for line in warning_lines(result.stdout))
    guard.check()


def test_a_damaged_row_id_page_is_recovered_from_the_statistics(demo_root, tmp_path, monkeypatch):
    """Row ids of a damaged row_id page are still known (the footer's min..max spans exactly its rows)."""
    from aidetect.dataio import Unreadable, read_row_ids

    table = pq.read_table(demo_root / "data" / "predict")
    path = rewrite_in_row_groups(table, tmp_path / "predict" / "part-0.parquet")
    damage_row_group(path, row_group=1, column=0)
    unreadable: list[Unreadable] = []
    assert sorted(read_row_ids(tmp_path / "predict", unreadable).tolist()) == sorted(table.column("row_id").to_pylist())


def test_a_damaged_row_group_in_a_labelled_split_is_skipped_with_a_warning(tmp_path):
    data = tmp_path / "data"
    rewrite_in_row_groups(small_labelled_table(60, 0), data / "train" / "part-0.parquet")
    damage_row_group(data / "train" / "part-0.parquet", row_group=1, column=0)  # images of rows 20..39
    write_labelled_file(data / "calibration" / "part-0.parquet", [encode(noise_image(48, 40, 500 + i), "PNG")
                                                                   for i in range(12)], [i % 6 for i in range(12)])
    artifacts = tmp_path / "artifacts"
    guard = WritesOnlyArtifacts(tmp_path, artifacts)

    result = run_stage("prepare", data, artifacts, timeout=60)

    assert result.returncode == 0, result.output[-3000:]
    assert "Traceback" not in result.output
    assert any("part-0.parquet row group 1" in line for line in warning_lines(result.stdout)), result.stdout[-3000:]
    recipe = pd.read_parquet(artifacts / "clean" / "recipe.parquet")
    lost = recipe[recipe["reason"].str.startswith("unreadable row group")]
    assert sorted(lost["row"]) == list(range(20, 40)) and not lost["keep"].any()
    info = json.loads((artifacts / "prepared" / "train" / "info.json").read_text())
    assert info["n"] == 40 and not info["truncated"]
    guard.check()


# --- 3. same base name in different subfolders --------------------------------------


def test_files_with_the_same_name_in_different_subfolders_stay_apart(demo_root, tmp_path):
    train = pq.read_table(demo_root / "data" / "train")
    classes = train.column("source_class").to_numpy().copy()
    classes[7] = 9
    train = train.set_column(train.schema.get_field_index("source_class"), "source_class", pa.array(classes, pa.int8()))
    data = tmp_path / "data"
    for folder, rows in (("batch=a", slice(0, 60)), ("batch=b", slice(60, 120))):
        (data / "train" / folder).mkdir(parents=True)
        pq.write_table(train.slice(rows.start, rows.stop - rows.start), data / "train" / folder / "part-0.parquet")
    calibration = pq.read_table(demo_root / "data" / "calibration")
    (data / "calibration").mkdir(parents=True)
    pq.write_table(calibration.take(list(range(0, 80, 5))), data / "calibration" / "part-0.parquet")
    artifacts = tmp_path / "artifacts"
    guard = WritesOnlyArtifacts(tmp_path, artifacts)

    result = run_stage("prepare", data, artifacts, timeout=90)

    assert result.returncode == 0, result.output[-3000:]
    assert "Traceback" not in result.output
    recipe = pd.read_parquet(artifacts / "clean" / "recipe.parquet")
    recipe = recipe[recipe["split"] == "train"]
    assert len(recipe) == 120
    assert recipe.groupby("file").size().to_dict() == {"batch=a/part-0.parquet": 60, "batch=b/part-0.parquet": 60}
    dropped = recipe[recipe["reason"] == "source_class outside 0..5"]
    assert dropped[["file", "row"]].values.tolist() == [["batch=a/part-0.parquet", 7]]
    index = pd.read_parquet(artifacts / "prepared" / "train" / "index.parquet")
    assert len(index) == recipe["keep"].sum() == len(set(zip(index["file"], index["row"])))
    assert set(index["file"]) == {"batch=a/part-0.parquet", "batch=b/part-0.parquet"}
    guard.check()


# --- 4. the deadline is kept per item, and SIGTERM still writes the file -------------


def _slow_square(x):
    time.sleep(0.2)
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_ordered_map_decides_to_stop_when_work_on_an_item_starts(workers):
    from aidetect.parallel import ordered_map

    started = time.monotonic()
    results = list(ordered_map(_slow_square, range(200), workers=workers, stop_at=started + 1.0))
    seconds = time.monotonic() - started
    assert results == [x * x for x in range(len(results))]  # an in-order prefix, nothing skipped inside it
    assert 0 < len(results) < 30
    assert seconds < 3.0, f"{seconds:.1f}s: queued items were still computed after the stop time"


@pytest.fixture(scope="module")
def slow_predict_data(tmp_path_factory) -> tuple[Path, list[int]]:
    """128 rows of one PNG of 1500x1500 (tens of seconds of decoding on two CPUs), small as files."""
    y, x = np.mgrid[0:1500, 0:1500]
    pixels = np.stack([(x * 7 + y) % 256, (y * 3) % 256, (x ^ y) % 256], -1).astype(np.uint8)
    image = encode(Image.fromarray(pixels), "PNG", compress_level=1)
    data = tmp_path_factory.mktemp("slow_predict")
    row_ids = list(range(1000, 1128))
    write_predict_file(data / "predict" / "part-0.parquet", row_ids, [image] * len(row_ids))
    return data, row_ids


def test_predict_stops_decoding_at_its_deadline_and_labels_every_row(detector_artifacts, slow_predict_data, tmp_path):
    data, row_ids = slow_predict_data
    artifacts = fresh_artifacts(detector_artifacts, tmp_path)
    timeout = 12  # on a quiet 2-core machine the 128 rows take about 17 s to decode: the deadline must bind

    result = run_stage("predict", data, artifacts, timeout=timeout)

    assert result.returncode == 0, result.output[-3000:]
    # Before, every row queued for the workers (a window of 128) was still decoded after the deadline: about
    # 30 s more here. The allowance covers interpreter start and exit, outside the stage's clock, on a busy machine.
    assert result.seconds < timeout + 3, f"predict took {result.seconds:.1f}s of its {timeout}s"
    labels = assert_complete(artifacts / "task02" / "predictions.csv", row_ids)
    report = report_of(artifacts)
    assert report["unscored_row_ids"], "the test data should take longer than the budget"
    assert all(labels[r] == 0 for r in report["unscored_row_ids"])
    assert any("time budget ran out" in line for line in warning_lines(result.stdout))


def test_sigterm_during_predict_writes_every_row_and_exits(detector_artifacts, slow_predict_data, tmp_path):
    data, row_ids = slow_predict_data
    artifacts = fresh_artifacts(detector_artifacts, tmp_path)
    log_path = tmp_path / "predict.log"
    proc = start_stage("predict", data, artifacts, 300, log_path)
    try:
        wait_for(lambda: "predict task02" in log_path.read_text(), proc, 120, "the predict loop", log_path)
        time.sleep(2.0)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        kill(proc)
    output = log_path.read_text()
    assert proc.returncode == 128 + 15, output[-3000:]
    assert time.monotonic() - sent < 10
    assert "Traceback" not in output
    labels = assert_complete(artifacts / "task02" / "predictions.csv", row_ids)
    report = report_of(artifacts)
    assert report["terminated"] and report["unscored_row_ids"]
    assert all(labels[r] == 0 for r in report["unscored_row_ids"])
    assert len(error_lines(output)) == 0 and any("SIGTERM" in line for line in warning_lines(output))


# --- 5. a tiny file of many 16-bit pixels --------------------------------------------


def png16_ramp(size: int) -> bytes:
    """A ``size`` x ``size`` 16-bit grey PNG, every row the ramp 0, 10, 20, ...; rows 2.. repeat row 1 (filter Up)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ramp = (np.arange(size, dtype=np.int64) * 10 % 65536).astype(">u2").tobytes()
    compressor = zlib.compressobj(9)
    body = compressor.compress(b"\x00" + ramp)
    up = b"\x02" + bytes(2 * size)
    body += b"".join(compressor.compress(up * 500) for _ in range((size - 1) // 500))
    body += compressor.compress(up * ((size - 1) % 500)) + compressor.flush()
    header = struct.pack(">IIBBBBB", size, size, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


DECODE_PROBE = textwrap.dedent("""
    import sys, time
    import numpy as np
    from aidetect.decode import decode_rgb
    def hwm():
        return [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
    data = open(sys.argv[1], "rb").read()
    before, started = hwm(), time.monotonic()
    rgb = decode_rgb(data)
    seconds, extra = time.monotonic() - started, hwm() - before
    expected = ((np.arange(rgb.shape[1]) * 10 % 65536) * 255 + 32767) // 65535
    ok = rgb.shape == (6324, 6324, 3) and (rgb[0, :, 0] == expected).all() and (rgb[-1] == rgb[0]).all()
    print(ok, round(seconds, 2), round(extra, 1))
""")


def test_a_small_16_bit_png_of_40_megapixels_decodes_in_bounded_memory(tmp_path):
    data = png16_ramp(6324)
    assert len(data) < 150_000 and 6324 * 6324 <= 40_000_000
    (tmp_path / "grey16.png").write_bytes(data)
    (tmp_path / "probe.py").write_text(DECODE_PROBE.format(solution=str(SOLUTION)))
    result = subprocess.run([sys.executable, str(tmp_path / "probe.py"), str(tmp_path / "grey16.png")],
                            capture_output=True, text=True, timeout=120, env=package_env())
    assert result.returncode == 0, result.stderr[-3000:]
    ok, seconds, extra_mb = result.stdout.split()
    assert ok == "True"
    # PIL's 16-bit raster (80 MB) and the RGB result (120 MB), no full-size float copy (that cost 1.1 GB)
    assert float(extra_mb) < 320, f"decoding took {extra_mb} MB"


def test_the_pixel_budget_counts_bytes_per_pixel():
    from aidetect.decode import MAX_DECODE_BYTES, MAX_PIXELS, check_decode_budget, raster_bytes
    from aidetect.errors import DecodeError

    assert [raster_bytes(m) for m in ("L", "P", "I;16", "RGB", "RGBA", "F")] == [1, 1, 2, 4, 4, 4]
    check_decode_budget(6324, 6324, "I;16")  # 5 bytes a pixel: within the budget
    with pytest.raises(DecodeError, match="exceeds"):
        check_decode_budget(7000, 7000, "L")
    # a mode needing more bytes per pixel would get fewer pixels than MAX_PIXELS
    assert MAX_DECODE_BYTES // (raster_bytes("RGB") + 3) == MAX_PIXELS


def test_the_worker_count_keeps_a_stage_under_its_memory_target_whatever_the_cpus(monkeypatch):
    from aidetect import budget, parallel
    from aidetect.decode import MAX_DECODE_BYTES

    assert budget.WORKER_BYTES > MAX_DECODE_BYTES  # a worker may hold one image at the decode bound
    monkeypatch.setattr(budget, "memory_limit", lambda: None)
    monkeypatch.setattr(budget, "memory_available", lambda: 64 * 2**30)
    for cpus in (1, 2, 8, 64):
        workers = budget.worker_processes(cpus)
        assert 1 <= workers <= cpus
        assert budget.MAIN_PROCESS_BYTES + workers * budget.WORKER_BYTES <= budget.STAGE_MEMORY_TARGET
    assert budget.worker_processes(2) == 2 and budget.worker_processes(8) < 8  # --cpus 8 would not fit
    monkeypatch.setattr(budget, "memory_limit", lambda: 2 * 2**30)  # docker run --memory 2g
    assert budget.worker_processes(8) == 1
    monkeypatch.setattr(budget, "memory_limit", lambda: None)
    monkeypatch.setattr(budget, "memory_available", lambda: 3 * 2**30)  # a busy host: 3 GB left
    assert budget.MAIN_PROCESS_BYTES + budget.worker_processes(8) * budget.WORKER_BYTES <= 3 * 2**30
    # the pools use it: with memory for one worker, ordered_map computes in this process
    monkeypatch.setattr(budget, "memory_limit", lambda: budget.MAIN_PROCESS_BYTES + budget.WORKER_BYTES)
    monkeypatch.setattr(parallel, "worker_processes", budget.worker_processes)
    pids = list(parallel.ordered_map(_pid_of, range(6)))
    assert set(pids) == {os.getpid()}


def _pid_of(_item) -> int:
    return os.getpid()


# --- 6. empty evaluation-only splits ------------------------------------------------


def test_unusable_evaluation_splits_are_skipped_and_an_empty_required_one_is_a_clear_error(tmp_path):
    data = tmp_path / "data"
    write_labelled_file(data / "train" / "part-0.parquet", [encode(noise_image(48, 40, i), "PNG") for i in range(24)],
                        [i % 6 for i in range(24)])
    write_labelled_file(data / "calibration" / "part-0.parquet",
                        [encode(noise_image(48, 40, 100 + i), "PNG") for i in range(12)], [i % 2 for i in range(12)])
    (data / "validation").mkdir()  # no parquet file at all
    write_labelled_file(data / "validation_augmented" / "part-0.parquet", [], [])  # zero rows
    # Its real images do not decode, its generated one does: no usable real image to calibrate Task 3 on.
    write_labelled_file(data / "calibration_augmented" / "part-0.parquet",
                        [b"not an image", encode(noise_image(48, 40, 200), "PNG"), b"not an image"], [0, 1, 0])
    artifacts = tmp_path / "artifacts"
    guard = WritesOnlyArtifacts(tmp_path, artifacts)

    for stage in ("clean", "prepare"):
        result = run_stage(stage, data, artifacts, timeout=60, limit=300)
        assert result.returncode == 0, f"{stage}: {result.output[-3000:]}"
        assert "Traceback" not in result.output
        warnings = warning_lines(result.stdout)
        for split in ("validation", "validation_augmented"):
            assert any(split in line and "skipped" in line for line in warnings), (stage, split, warnings)
    assert sorted(p.parent.name for p in (artifacts / "prepared").glob("*/info.json")) == [
        "calibration", "calibration_augmented", "train"]
    for stage, task in (("train", "task02"), ("train_augmented", "task03")):
        # A short budget: the fallback detector is enough. The limit only allows for a slow start on a busy machine.
        result = run_stage(stage, data, artifacts, timeout=30, limit=300)
        assert result.returncode == 0 and "Traceback" not in result.output, result.output[-3000:]
        assert (artifacts / task / "detector.json").is_file()
    # Task 3 calibrated on the split that has real images, and said why it left the other out.
    assert any("calibration_augmented holds no usable real image" in line for line in warning_lines(result.stdout))
    calibration_sets = json.loads((artifacts / "task03" / "detector.json").read_text())["calibration_sets"]
    assert "calibration" in calibration_sets and "calibration_augmented" not in calibration_sets
    guard.check()

    shutil.rmtree(artifacts)
    (data / "calibration" / "part-0.parquet").unlink()
    write_labelled_file(data / "calibration" / "part-0.parquet", [], [])
    result = run_stage("prepare", data, artifacts, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.output
    [error] = error_lines(result.stdout)
    assert "calibration" in error and "required" in error, error


# --- every other exception --------------------------------------------------------------


def test_an_unexpected_exception_is_one_line_and_a_non_zero_exit(tmp_path, monkeypatch, caplog):
    from aidetect import stages

    def broken(deadline):
        raise ValueError("first line\nsecond line")

    monkeypatch.setitem(stages.STAGES, "predict", broken)
    with caplog.at_level(logging.DEBUG, logger="aidetect"):
        status = stages.run_stage("predict", ["--timeout_seconds", "5"])
    assert status == 1
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.getMessage().startswith("stage predict failed: ValueError: first line second line")
    assert "\n" not in error.getMessage() and "AMLS_LOG_LEVEL=DEBUG" in error.getMessage()
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)  # the traceback, for debugging


def test_an_unwritable_artifacts_folder_is_one_line_not_a_traceback(tmp_path):
    data = tmp_path / "data"
    write_predict_file(data / "predict" / "part-0.parquet", [0, 1], [encode(noise_image(40, 30, 1), "PNG")] * 2)
    artifacts = tmp_path / "artifacts"
    artifacts.write_text("a file where the artifacts folder should be")

    result = run_stage("predict", data, artifacts, timeout=30)

    assert result.returncode == 1 and "Traceback" not in result.output, result.output[-3000:]
    [error] = error_lines(result.stdout)
    assert "stage predict failed" in error and "Error" in error, error


# --- Task 3 degrades gracefully -----------------------------------------------------------


def test_a_calibration_split_without_real_images_is_skipped_when_another_has_them(caplog):
    from aidetect.detector import _calibrate
    from aidetect.errors import DataError

    rng = np.random.default_rng(0)
    scores = {"calibration": rng.normal(size=40), "calibration_augmented": rng.normal(size=10)}
    labels = {"calibration": np.repeat([0, 1], 20), "calibration_augmented": np.ones(10, dtype=np.int64)}
    with caplog.at_level(logging.WARNING, logger="aidetect.detector"):
        threshold, per_set = _calibrate(scores, labels, "task03")
    assert list(per_set) == ["calibration"] and threshold.n_calibration == 20
    assert any("calibration_augmented holds no usable real image" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match="no real images in the calibration splits"):
        _calibrate({"calibration": scores["calibration"][20:]}, {"calibration": labels["calibration"][20:]}, "task03")


@pytest.mark.parametrize("damage", ["missing", "corrupt weights"])
def test_predict_augmented_without_a_usable_task3_detector_uses_the_task2_one(demo_run, detector_artifacts, tmp_path,
                                                                           damage):
    artifacts = fresh_artifacts(detector_artifacts, tmp_path)  # the trained task02 detector only
    if damage == "corrupt weights":
        shutil.copytree(artifacts / "task02", artifacts / "task03")
        weights = artifacts / "task03" / json.loads((artifacts / "task03" / "detector.json").read_text())["weights"]
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    data = demo_run["data_root"] / "data"
    guard = WritesOnlyArtifacts(tmp_path, artifacts)

    result = run_stage("predict_augmented", data, artifacts, timeout=60, limit=300)

    assert result.returncode == 0 and "Traceback" not in result.output, result.output[-3000:]
    assert not error_lines(result.stdout), error_lines(result.stdout)
    [warning] = [line for line in warning_lines(result.stdout) if "predicting with the task02 detector" in line]
    assert "no usable task03 detector" in warning
    row_ids = pq.read_table(data / "predict", columns=["row_id"]).column("row_id").to_pylist()
    labels = assert_complete(artifacts / "task03" / "predictions.csv", row_ids)
    assert labels == assert_complete(demo_run["artifacts"] / "task02" / "predictions.csv", row_ids)
    report = json.loads((artifacts / "task03" / "predict_report.json").read_text())
    assert report["detector_task"] == "task02" and "no usable task03 detector" in report["detector_fallback"]
    assert report["unscored_row_ids"] == []
    guard.check()


# --- training data that cannot train ------------------------------------------------------


@pytest.mark.parametrize("fault", ["no usable image", "one class"])
def test_training_data_that_cannot_train_stops_training_with_one_line(tmp_path, fault):
    data = tmp_path / "data"
    if fault == "no usable image":
        write_labelled_file(data / "train" / "part-0.parquet", [b"not an image"] * 12, [i % 6 for i in range(12)])
    else:
        write_labelled_file(data / "train" / "part-0.parquet",
                            [encode(noise_image(48, 40, i), "PNG") for i in range(12)], [3] * 12)
    write_labelled_file(data / "calibration" / "part-0.parquet",
                        [encode(noise_image(48, 40, 100 + i), "PNG") for i in range(6)], [i % 2 for i in range(6)])
    artifacts = tmp_path / "artifacts"
    stale = artifacts / "task02" / "detector.json"  # an earlier run's detector, trained on other data
    stale.parent.mkdir(parents=True)
    stale.write_text('{"kind": "classical", "weights": "fallback.json"}')
    guard = WritesOnlyArtifacts(tmp_path, artifacts)

    prepared = run_stage("prepare", data, artifacts, timeout=60, limit=300)
    assert "Traceback" not in prepared.output
    assert prepared.returncode == (2 if fault == "no usable image" else 0), prepared.output[-3000:]
    for stage in ("train", "train_augmented"):
        result = run_stage(stage, data, artifacts, timeout=60, limit=300)  # the check comes first: it fails fast
        assert result.returncode == 2 and "Traceback" not in result.output, result.output[-3000:]
        [error] = error_lines(result.stdout)
        expected = "no prepared training images" if fault == "no usable image" else "all of one class"
        assert f"stage {stage} failed" in error and expected in error and str(data / "train") in error, error
    assert not stale.exists()  # removed, so the predict stages do not use a detector of other data
    guard.check()
