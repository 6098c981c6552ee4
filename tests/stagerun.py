"""Helpers for the fault tests: run one stage as the graders do, build odd inputs, read predictions.

A stage runs as ``python <stage>.py --timeout_seconds N`` from inside ``solution/``
with ``AMLS_DATA_DIR`` / ``AMLS_ARTIFACTS_DIR`` pointing at the test's folders,
so a test can break the data or the artifacts of one stage without a full run.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SOLUTION = REPO / "solution"


@dataclass
class StageResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float  # largest kernel high-water mark (VmHWM) polled over the stage's processes

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def stage_env(data_dir: Path, artifacts_dir: Path) -> dict:
    env = dict(os.environ, AMLS_DATA_DIR=str(data_dir), AMLS_ARTIFACTS_DIR=str(artifacts_dir),
               PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    return env


def package_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's) in which a script anywhere imports the package from ``solution/``."""
    return dict(os.environ if env is None else env, PYTHONPATH=str(SOLUTION))


def vm_hwm_mb(pid: int | str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def start_stage(stage: str, data_dir: Path, artifacts_dir: Path, timeout: float, log_path: Path) -> subprocess.Popen:
    """Start a stage in the background, its stdout and stderr going to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, f"{stage}.py", "--timeout_seconds", str(timeout)], cwd=SOLUTION,
                            env=stage_env(data_dir, artifacts_dir), stdout=handle, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    handle.close()
    return proc


def run_stage(stage: str, data_dir: Path, artifacts_dir: Path, timeout: float = 60, limit: float | None = None
              ) -> StageResult:
    """Run a stage to its end (killed after ``limit`` s, default timeout + 30) and measure its peak memory."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, f"{stage}.py", "--timeout_seconds", str(timeout)], cwd=SOLUTION,
                            env=stage_env(data_dir, artifacts_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    peak = [0.0]

    def poll():  # the stage and its worker processes: the largest single-process high-water mark
        import psutil

        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root] + root.children(recursive=True)
            except psutil.Error:
                break
            for member in tree:
                peak[0] = max(peak[0], vm_hwm_mb(member.pid) or 0.0)
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        stdout, stderr = proc.communicate(timeout=limit or timeout + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{stage}.py still running after {limit or timeout + 30}s:\n{stdout[-3000:]}")
    poller.join()
    return StageResult(proc.returncode, stdout, stderr, time.monotonic() - started, peak[0])


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to a stage we started and reap it."""
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=30)


def child_pids(pid: int) -> set[int]:
    """The processes ``pid`` started (Linux /proc), e.g. a stage's worker pool."""
    found = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found |= {int(child) for child in children.read_text().split()}
        except OSError:
            pass
    return found


def assert_processes_end(pids: set[int], within: float = 15) -> None:
    """Every process of ``pids`` is gone (or a zombie) within ``within`` seconds."""
    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + within
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = sorted(pid for pid in pids if alive(pid))
    assert not left, f"processes still running {within:.0f}s after their stage was killed: {left}"


def wait_for(condition, proc: subprocess.Popen, limit: float, what: str, log_path: Path | None = None) -> float:
    """Poll ``condition()`` every 50 ms; fail if the process ends or ``limit`` s pass first."""
    started = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            log = log_path.read_text()[-3000:] if log_path else ""
            raise AssertionError(f"stage ended (exit {proc.returncode}) before {what}:\n{log}")
        if time.monotonic() - started > limit:
            kill(proc)
            raise AssertionError(f"no {what} after {limit}s")
        time.sleep(0.05)
    return time.monotonic() - started


def copy_artifacts(src: Path, dst: Path, parts: tuple[str, ...]) -> Path:
    """Copy the named top-level parts of an artifacts folder (e.g. ``prepared``, ``task02``)."""
    dst.mkdir(parents=True, exist_ok=True)
    for part in parts:
        if (src / part).is_dir():
            shutil.copytree(src / part, dst / part)
    return dst


def task_detector_only(src: Path, dst: Path, task: str = "task02") -> Path:
    """An artifacts folder holding only the trained detector of ``task`` (no old predictions)."""
    folder = dst / task
    folder.mkdir(parents=True, exist_ok=True)
    from aidetect.modelfiles import CLASSICAL_FILE, NETWORK_FILE

    for name in ("detector.json", CLASSICAL_FILE, NETWORK_FILE):
        if (src / task / name).exists():
            shutil.copy2(src / task / name, folder / name)
    return dst


def fallback_inputs(demo_run: dict, tmp_path: Path, monkeypatch, min_fallback_train: int):
    """What ``train.py`` gives ``detector.fit_fallback``, from a copy of the demo run's prepared data (artifacts
    redirected to ``tmp_path/artifacts``): (artifacts, train split, evaluation splits, training indices)."""
    from aidetect import detector
    from aidetect.cleaning import load_prepared
    from aidetect.training import stratified_holdout

    artifacts = tmp_path / "artifacts"
    shutil.copytree(demo_run["artifacts"] / "prepared", artifacts / "prepared")
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(artifacts))
    monkeypatch.setattr(detector, "MIN_FALLBACK_TRAIN", min_fallback_train)
    train = load_prepared("train")
    splits = {name: load_prepared(name) for name in ("calibration", "validation")}
    indices, _ = stratified_holdout(train.source_class, 0.15, 0)
    return artifacts, train, splits, indices


def read_predictions(path: Path) -> list[tuple[int, int]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["row_id", "predicted_label"], rows[:2]
    return [(int(r[0]), int(r[1])) for r in rows[1:]]


def assert_complete(path: Path, row_ids) -> dict[int, int]:
    """Every expected row id exactly once, labels in {0, 1}; returns row_id -> label."""
    rows = read_predictions(path)
    ids = [r for r, _ in rows]
    assert len(ids) == len(set(ids)), "duplicate row ids in predictions.csv"
    assert sorted(ids) == sorted(int(r) for r in row_ids)
    assert {label for _, label in rows} <= {0, 1}
    return dict(rows)


# --- building odd inputs ------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return image if mode == "RGB" else image.convert(mode)


def write_predict_file(path: Path, row_ids, images, row_id_type=pa.int32(), extra: dict | None = None,
                       order: list[str] | None = None, image_type=pa.binary()) -> Path:
    columns = {"row_id": pa.array(row_ids, row_id_type), "image": pa.array(images, image_type)}
    columns.update(extra or {})
    names = order or list(columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({n: columns[n] for n in names}), path)
    return path


def write_labelled_file(path: Path, images, source_class, source_type=pa.int8()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()),
                             "source_class": pa.array(source_class, source_type)}), path)
    return path


def fresh_artifacts(detector_artifacts: Path, tmp_path: Path) -> Path:
    """A private copy of a trained detector's artifacts for one test."""
    shutil.copytree(detector_artifacts, tmp_path / "artifacts")
    return tmp_path / "artifacts"
