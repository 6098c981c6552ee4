"""How fast do the predict stages score? Images per second and peak memory of predict.py and predict_augmented.py.

    python benchmarks/throughput.py --artifacts runs/proxy/artifacts --data DATA_ROOT/data/predict \\
        --images 1000 20000 --out benchmarks/results/<date>-throughput.json

Each predict set is built in a temporary folder outside the repository (never
copied into it): ``proxy`` cycles the encoded bytes of the ``--data`` predict
split (the proxy's: PNG 256 px, WebP 384 px, JPEG of about 500 x 375) to the
wanted number of rows; ``synthetic`` cycles 64 generated course-like images,
half JPEG photos of 640 x 480 (quality 90), half PNG of 1024 x 1024 (the size of
SDXL, SD 3, DALL-E 3 and Midjourney outputs), textured so that they decode and
compress like photographs. Both stages run as the graders run them (a fresh
process, the official 600 s timeout) on a private copy of the trained detectors
of ``--artifacts``. Images per second = rows scored / wall seconds of the whole
process (start-up and writing included); the loop rate divides by the seconds
the stage itself reports. Memory: the largest sum of RSS over the stage's
process tree (sampled every 0.2 s; a page shared by forked workers counts in
each) and the largest single-process high-water mark. The load average of the
machine is recorded before and after every run: the machine may be shared.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from aidetect.modelfiles import CLASSICAL_FILE, NETWORK_FILE

REPO = Path(__file__).resolve().parents[1]
STAGES = (("predict", "task02"), ("predict_augmented", "task03"))
DETECTOR_FILES = ("detector.json", CLASSICAL_FILE, NETWORK_FILE)


def proxy_images(folder: Path) -> tuple[list[bytes], str]:
    table = pq.read_table(folder, columns=["image"])
    images = table.column("image").to_pylist()
    digest = hashlib.sha256(b"".join(images)).hexdigest()[:16]
    name = folder.resolve().parents[1].name  # <root>/data/predict: the dataset's name, never its path
    return images, f"{len(images)} images of the predict split of {name} (sha256 of their bytes {digest})"


def synthetic_images(n: int = 64, seed: int = 0) -> tuple[list[bytes], str]:
    """Half JPEG photos of 640 x 480, half PNG of 1024 x 1024: smooth structure plus sensor-like noise."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        width, height, fmt = (640, 480, "JPEG") if i % 2 == 0 else (1024, 1024, "PNG")
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        phase = rng.uniform(0, 6.28, 3)
        base = np.stack([np.sin(x / rng.uniform(20, 80) + phase[c]) * np.cos(y / rng.uniform(20, 80)) * 70 + 128
                         for c in range(3)], -1)
        pixels = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        images.append(buffer.getvalue())
    return images, f"{n} generated images (seed {seed}): JPEG 640x480 q90 and PNG 1024x1024, alternating"


def write_predict_set(images: list[bytes], n: int, folder: Path) -> Path:
    """``n`` rows cycling through ``images``, row ids 0..n-1, in files of 1,000 rows."""
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, n, 1000):
        rows = range(start, min(n, start + 1000))
        pq.write_table(pa.table({"row_id": pa.array(list(rows), pa.int32()),
                                 "image": pa.array([images[i % len(images)] for i in rows], pa.binary())}),
                       folder / f"part-{start // 1000:03d}.parquet")
    return folder


def _tree_memory(pid: int) -> tuple[float, float]:
    """(sum of RSS over the process tree, largest VmHWM) in MB."""
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0.0, 0.0
    rss, hwm = 0.0, 0.0
    for member in tree:
        try:
            rss += member.memory_info().rss / 2**20
            for line in Path(f"/proc/{member.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]) / 1024)
        except (psutil.Error, OSError, ValueError):
            pass
    return rss, hwm


def run_stage(stage: str, data: Path, artifacts: Path, timeout: float, solution: Path) -> dict:
    env = dict(os.environ, AMLS_DATA_DIR=str(data), AMLS_ARTIFACTS_DIR=str(artifacts), PYTHONDONTWRITEBYTECODE="1")
    load_before = os.getloadavg()
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, f"{stage}.py", "--timeout_seconds", str(timeout)], cwd=solution, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"tree_rss_mb": 0.0, "max_process_hwm_mb": 0.0}

    def poll():
        while proc.poll() is None:
            rss, hwm = _tree_memory(proc.pid)
            peak["tree_rss_mb"] = max(peak["tree_rss_mb"], rss)
            peak["max_process_hwm_mb"] = max(peak["max_process_hwm_mb"], hwm)
            time.sleep(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    output, _ = proc.communicate(timeout=timeout + 60)
    wall = time.monotonic() - started
    poller.join()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the stage and every worker it reaped
    cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    return {"exit": proc.returncode, "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "load_before": [round(v, 2) for v in load_before],
            "load_after": [round(v, 2) for v in os.getloadavg()],
            **{k: round(v) for k, v in peak.items()}, "log_tail": output.splitlines()[-3:]}


def available_cpus() -> int:
    return len(os.sched_getaffinity(0))


def measure(name: str, images: list[bytes], n: int, source: Path, timeout: float, solution: Path, work: Path,
            stages: list[str]) -> list[dict]:
    data = work / f"{name}-{n}" / "data"
    write_predict_set(images, n, data / "predict")
    rows = []
    for stage, task in [(stage, task) for stage, task in STAGES if stage in stages]:
        artifacts = work / f"{name}-{n}" / f"artifacts-{stage}"
        for part in ("task02", "task03"):
            (artifacts / part).mkdir(parents=True, exist_ok=True)
            for file in DETECTOR_FILES:
                if (source / part / file).exists():
                    shutil.copy2(source / part / file, artifacts / part / file)
        run = run_stage(stage, data, artifacts, timeout, solution)
        report = json.loads((artifacts / task / "predict_report.json").read_text())
        scored = report["n_rows"] - len(report["unscored_row_ids"]) - len(report["undecodable"])
        row = {"data": name, "images": n, "stage": stage, "detector": report["detector"], "scored": scored,
               "images_per_second": round(scored / run["wall_seconds"], 1),
               "loop_images_per_second": round(scored / report["seconds"], 1), "stage_seconds": round(report["seconds"], 1),
               **run, "cpu_ms_per_image": round(1000 * run["cpu_seconds"] / max(1, scored), 1),
               # what the stage would reach with every CPU of the machine to itself, from its CPU time
               "cpu_bound_images_per_second": round(scored / max(1e-9, run["cpu_seconds"]) * available_cpus(), 1)}
        print(json.dumps({k: v for k, v in row.items() if k != "log_tail"}), flush=True)
        rows.append(row)
        shutil.rmtree(artifacts)
    shutil.rmtree(data.parent)
    return rows


def describe_detectors(artifacts: Path) -> str:
    """The detectors by kind and content hash, not by a path of this machine."""
    parts = []
    for _, task in STAGES:
        description = artifacts / task / "detector.json"
        digest = hashlib.sha256(description.read_bytes()).hexdigest()[:16]
        parts.append(f"{task} {json.loads(description.read_text())['kind']} (detector.json sha256 {digest})")
    return ", ".join(parts)


def markdown(result: dict) -> str:
    lines = [f"# Predict throughput, {result['date']}", "",
             f"Machine: {result['machine']['cpu']} ({result['machine']['nproc']} cores), shared with other jobs: "
             "the load average (1, 5, 15 min) before and after each run is in the table. "
             f"Command: `{result['command']}`. Code: {result['commit']}. Detectors: {result['artifacts']}. "
             f"Timeout {result['timeout_seconds']:.0f} s per stage.", "",
             *[f"- `{name}`: {text}" for name, text in result["data"].items()], "",
             *([result["notes"], ""] if result.get("notes") else []),
             "`images/s (wall)`: rows scored / wall seconds of the process; `(loop)`: / the seconds the stage reports; "
             "`CPU ms/image`: user + system CPU time of the stage and its workers per scored row; `CPU-bound images/s`: "
             "the rate those CPU seconds allow with every CPU of this machine free (an estimate, not a measurement).", "",
             "| data | images | stage | detector | scored | images/s (wall) | images/s (loop) | CPU ms/image | "
             "CPU-bound images/s | wall s | exit | peak tree RSS MB | max process MB | load before | load after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['data']} | {r['images']} | {r['stage']} | {r['detector']} | {r['scored']} | "
                     f"{r['images_per_second']} | {r['loop_images_per_second']} | {r['cpu_ms_per_image']} | "
                     f"{r['cpu_bound_images_per_second']} | {r['wall_seconds']} | {r['exit']} | "
                     f"{r['tree_rss_mb']} | {r['max_process_hwm_mb']} | {r['load_before']} | {r['load_after']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", required=True, help="a run's artifacts holding task02/ and task03/ detectors")
    parser.add_argument("--data", default=None,
                        help="the predict split whose images are cycled (set 'proxy'; required with it)")
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--sets", nargs="+", default=["proxy", "synthetic"], choices=["proxy", "synthetic"])
    parser.add_argument("--synthetic-images", type=int, nargs="+", default=None,
                        help="sizes for the synthetic set (default: those of --images)")
    parser.add_argument("--stages", nargs="+", default=[stage for stage, _ in STAGES],
                        choices=[stage for stage, _ in STAGES])
    parser.add_argument("--synthetic-stages", nargs="+", default=None, choices=[stage for stage, _ in STAGES],
                        help="stages for the synthetic set (default: those of --stages)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--solution", default=str(REPO / "solution"), help="the solution folder whose stages run")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if "proxy" in args.sets and not args.data:
        parser.error("--data is required for the 'proxy' set")
    data_roots = [Path(args.data).parents[1]] if args.data else []

    from result_files import header, write

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "solution"], capture_output=True,
                           text=True).stdout.strip()
    sets = {}
    if "proxy" in args.sets:
        sets["proxy"] = proxy_images(Path(args.data))
    if "synthetic" in args.sets:
        sets["synthetic"] = synthetic_images()
    result = {**header(), "commit": commit + (" (solution/ modified)" if dirty else ""),
              "artifacts": describe_detectors(Path(args.artifacts)),
              "timeout_seconds": args.timeout, "data": {name: text for name, (_, text) in sets.items()}, "runs": []}
    with tempfile.TemporaryDirectory(prefix="throughput-") as work:
        for name, (images, _) in sets.items():
            sizes = args.synthetic_images if name == "synthetic" and args.synthetic_images else args.images
            for n in sizes:
                stages = args.synthetic_stages if name == "synthetic" and args.synthetic_stages else args.stages
                result["runs"] += measure(name, images, n, Path(args.artifacts), args.timeout, Path(args.solution),
                                          Path(work), stages)
                write(args.out, result, markdown(result), data_roots)  # rewritten after every run: a cut-short run keeps its rows


if __name__ == "__main__":
    main()
