"""Does the pipeline scale? The six stages on the proxy and on a 10x copy of it, with full and tight timeouts.

    PYTHONPATH=tools python benchmarks/scale_bench.py --data DATA_ROOT                       # 1x and 10x, timeouts x1 and x0.1
    PYTHONPATH=tools python benchmarks/scale_bench.py --data demo --factors 2 --timeout-scales 0.05 --out runs/scale   # smoke check

For every factor the dataset is replicated: copy 0 is the original file, copy k
is the same image flipped or rotated (the eight symmetries of the square, then
the same again with an 8-pixel border cut off, which keeps the JPEG and
up-sampling grids), re-encoded in its own format (JPEG with its own
quantisation tables and subsampling, PNG losslessly, WebP at quality 90), so the
cleaning recipe sees no exact duplicates and the container gives nothing new
away. Predict row ids become ``k * stride + row_id`` and the labels follow.
Each split is written as one parquet file per copy.

Every (factor, timeout scale) pair then runs the six stages through the
grading harness (read-only data, no network, killed at the timeout). The result,
``<out>/<date>-scale.json``, holds per stage the wall time, the peak memory and
whether it ended before its timeout, plus the validity and score of both
prediction files. It is rewritten after every run, so a cut-short benchmark
keeps what it measured.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, JpegImagePlugin

REPO = Path(__file__).resolve().parents[1]

from grade import _atomic_write_text, _cpu_model, _git_info, grade
from result_files import data_identity, describe_data, portable

SPLITS = ("train", "calibration", "calibration_augmented", "validation", "validation_augmented", "predict")
SYMMETRIES = (None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180,
              Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90,
              Image.Transpose.ROTATE_270)
BORDER = 8  # pixels cut per extra round of symmetries: a multiple of the JPEG block and of 2x up-sampling


# --- replicating the data -------------------------------------------------------------


def variant(data: bytes | None, copy: int) -> bytes | None:
    """Copy ``copy`` of an encoded image: a symmetry (and border cut), re-encoded in the same format."""
    if copy == 0 or not data:
        return data
    try:
        source = Image.open(io.BytesIO(data))
        source.load()
    except Exception:
        return data  # undecodable stays undecodable (and is dropped as a duplicate)
    image = source
    cut = BORDER * (copy // len(SYMMETRIES))
    if cut and min(image.size) > 2 * cut + 16:
        image = image.crop((cut, cut, image.width, image.height))
    symmetry = SYMMETRIES[copy % len(SYMMETRIES)]
    if symmetry is not None:
        image = image.transpose(symmetry)
    out = io.BytesIO()
    fmt = source.format or "PNG"
    try:
        if fmt == "JPEG":
            image.save(out, "JPEG", qtables=source.quantization,
                       subsampling=JpegImagePlugin.get_sampling(source), optimize=False)
        elif fmt == "WEBP":
            image.save(out, "WEBP", quality=90)
        elif fmt == "PNG":
            extra = {"transparency": source.info["transparency"]} if "transparency" in source.info else {}
            image.save(out, "PNG", **extra)
        else:
            image.save(out, fmt)
    except Exception:  # a mode or format PIL cannot write back: lossless PNG
        out = io.BytesIO()
        image.save(out, "PNG")
    return out.getvalue()


def replicate(src_root: Path, dst_root: Path, factor: int, batch_size: int = 64) -> dict:
    """``src_root`` (data/ + labels/) replicated ``factor`` times into ``dst_root``; returns counts."""
    started = time.monotonic()
    counts = {}
    stride = None
    for split in SPLITS:
        files = sorted((src_root / "data" / split).glob("*.parquet"))
        if not files:
            continue
        if split == "predict":
            max_id = max(pq.read_table(f, columns=["row_id"]).column("row_id").to_numpy().max(initial=0) for f in files)
            stride = 10 ** len(str(int(max_id) + 1))
        out_dir = dst_root / "data" / split
        out_dir.mkdir(parents=True, exist_ok=True)
        n = 0
        for copy in range(factor):
            target = out_dir / f"part-{copy}.parquet"
            writer = None
            for path in files:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
                    columns = {name: batch.column(name) for name in batch.schema.names}
                    columns["image"] = pa.array([variant(d, copy) for d in columns["image"].to_pylist()],
                                                pa.binary())
                    if split == "predict":
                        ids = columns["row_id"].to_numpy() + copy * stride
                        columns["row_id"] = pa.array(ids, columns["row_id"].type)
                    table = pa.table(columns)
                    if writer is None:
                        writer = pq.ParquetWriter(target, table.schema)
                    writer.write_table(table)
                    n += table.num_rows
            if writer is not None:
                writer.close()
        counts[split] = n
        print(f"[scale] {split}: {n} rows x{factor} ({time.monotonic() - started:.0f}s)", flush=True)
    labels = src_root / "labels" / "predict_labels.parquet"
    if labels.exists() and stride is not None:
        table = pq.read_table(labels)
        parts = []
        for copy in range(factor):
            ids = table.column("row_id").to_numpy() + copy * stride
            parts.append(table.set_column(table.schema.get_field_index("row_id"), "row_id",
                                          pa.array(ids, table.schema.field("row_id").type)))
        (dst_root / "labels").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(parts), dst_root / "labels" / "predict_labels.parquet")
    size = sum(p.stat().st_size for p in (dst_root / "data").rglob("*.parquet"))
    return {"rows": counts, "bytes": size, "seconds": round(time.monotonic() - started, 1), "row_id_stride": stride}


# --- running the stages ---------------------------------------------------------------


def task_facts(artifacts: Path, task: str) -> dict:
    """The detector kind and how training ended, from the run's own metrics.json."""
    try:
        metrics = json.loads((artifacts / task / "metrics.json").read_text())
    except (OSError, ValueError):
        return {"detector": None}
    fit = metrics.get("fit") or {}
    return {"detector": metrics.get("detector"), "epochs_run": fit.get("epochs_run"),
            "stopped_because": fit.get("stopped_because"), "train_images": metrics.get("train_images")}


def summarise_run(card: dict, factor: int, scale: float, artifacts: Path) -> dict:
    stages = []
    for s in card["stages"]:
        stages.append({
            "name": s["name"], "timeout_seconds": s["timeout_seconds"], "wall_seconds": s["wall_seconds"],
            "exit_code": s["exit_code"], "timed_out": s["timed_out"], "killed": s["killed"],
            "ended_before_timeout": bool(s["exit_code"] is not None and not s["timed_out"]
                                         and s["wall_seconds"] < s["timeout_seconds"]),
            "peak_rss_mb": s["peak_rss_mb"], "peak_rss_max_process_mb": s["peak_rss_max_process_mb"],
            "peak_pss_tree_mb": s.get("peak_pss_tree_sampled_mb"),
        })
    tasks = {}
    for task, entry in card["tasks"].items():
        scores = entry.get("scores") or {}
        tasks[task] = {"valid": entry["valid"], "problems": entry["problems"][:5],
                       "recall_ai": scores.get("recall_ai"), "fpr": scores.get("fpr"), "n": scores.get("n"),
                       **task_facts(artifacts, task)}
    return {"factor": factor, "timeout_scale": scale, "isolation": card["isolation"],
            "total_wall_seconds": card["total_wall_seconds"], "all_stages_in_time": all(s["ended_before_timeout"]
                                                                                        for s in stages),
            "all_valid": card["all_valid"], "stages": stages, "tasks": tasks}


def print_table(runs: list[dict]) -> None:
    print(f"\n{'factor':>6} {'scale':>6} {'stage':<18} {'timeout':>7} {'wall s':>8} {'exit':>5} {'in time':>7} "
          f"{'peak MB':>8} {'PSS MB':>7}")
    for run in runs:
        for s in run["stages"]:
            in_time = "yes" if s["ended_before_timeout"] else "NO"
            print(f"{run['factor']:>6} {run['timeout_scale']:>6g} {s['name']:<18} {s['timeout_seconds']:>7} "
                  f"{s['wall_seconds']:>8.1f} {str(s['exit_code']):>5} {in_time:>7} {s['peak_rss_mb'] or 0:>8.0f} "
                  f"{s.get('peak_pss_tree_mb') or 0:>7.0f}")
        for task, t in run["tasks"].items():
            print(f"{'':>6} {'':>6} {task}: valid={t['valid']} detector={t['detector']} recall_ai={t['recall_ai']} "
                  f"fpr={t['fpr']}")


def markdown(result: dict) -> str:
    """Tables of a scale result: stage times and memory per run, then the tasks' outcomes."""
    mb = lambda v: "" if v is None else f"{v:.0f}"  # noqa: E731
    rate = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"# Scale and time-budget benchmark, {result['date'][:10]}", "",
             f"Machine: {result['machine']['cpu_model']} ({result['machine']['nproc']} cores). Data: "
             f"`{describe_data(result['data']) if isinstance(result['data'], dict) else result['data']}` replicated "
             f"(x1 = as is; {result['note']})."
             + (f" Command: `{result['command']}`" if result.get("command") else "")
             + (f", commit {result['git_commit'][:7]}." if result.get("git_commit") else ""), "",
             "Memory columns: `peak` = the harness's `peak_rss_mb`, the larger of the largest sum of RSS over the "
             "stage's process tree (a page that a forked worker shares with its parent counts once per process) "
             "and the largest process; `max process` = the largest "
             "single-process high-water mark; `tree PSS` = the largest sum of PSS over the tree (a shared page "
             "counts 1/k in each of its k sharers: the tree's actual footprint), read at most once a second "
             "(empty for runs made before the harness recorded it).", "",
             "| factor | timeouts | started | stage | timeout s | wall s | exit | in time | peak MB | "
             "max process MB | tree PSS MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    runs = sorted(result["runs"], key=lambda r: (r["factor"], -r["timeout_scale"]))
    for run in runs:
        for st in run["stages"]:
            lines.append(f"| x{run['factor']} | x{run['timeout_scale']:g} | {run.get('started', '')[11:16]} | "
                         f"{st['name']} | {st['timeout_seconds']} | {st['wall_seconds']:.0f} | {st['exit_code']} | "
                         f"{'yes' if st['ended_before_timeout'] else 'NO'} | {mb(st['peak_rss_mb'])} | "
                         f"{mb(st['peak_rss_max_process_mb'])} | {mb(st.get('peak_pss_tree_mb'))} |")
    lines += ["", "| factor | timeouts | task | valid | detector | epochs | stopped because | recall_ai (predict) | "
                  "FPR (predict) |", "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for task, t in run["tasks"].items():
            lines.append(f"| x{run['factor']} | x{run['timeout_scale']:g} | {task} | {t['valid']} | {t['detector']} | "
                         f"{t.get('epochs_run') or ''} | {t.get('stopped_because') or ''} | {rate(t['recall_ai'])} | "
                         f"{rate(t['fpr'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset root with data/<split>/ and labels/")
    parser.add_argument("--factors", default="1,10", help="comma list of replication factors (1 = the data as is)")
    parser.add_argument("--timeout-scales", default="1.0,0.1",
                        help="comma list of multipliers of the official timeouts")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder of <date>-scale.json")
    parser.add_argument("--workdir", default=None, help="where the replicated data and runs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the replicated data, logs and artifacts")
    parser.add_argument("--verbose", action="store_true", help="stream the stages' output")
    parser.add_argument("--markdown-only", type=Path, default=None, metavar="JSON",
                        help="only write the tables of an existing result JSON (to <JSON>.md) and exit")
    args = parser.parse_args(argv)
    if args.markdown_only is not None:
        args.markdown_only.with_suffix(".md").write_text(markdown(json.loads(args.markdown_only.read_text())))
        return 0

    data_root = Path(args.data).resolve()
    factors = [int(f) for f in args.factors.split(",")]
    scales = [float(s) for s in args.timeout_scales.split(",")]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="scale_bench_")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path = out_dir / f"{dt.date.today().isoformat()}-scale.json"
    result = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"cpu_model": _cpu_model(), "nproc": os.cpu_count(), "python": platform.python_version()},
        "data": data_identity(data_root), "factors": factors, "timeout_scales": scales,
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "git_commit": _git_info(str(REPO))["commit"],
        "replication": {}, "runs": [],
        "note": "copy k of an image = a symmetry of the square (+ an 8 px border cut from k >= 8), re-encoded in "
                "its own format; peak_rss_mb from the harness (process-tree RSS and kernel high-water marks)",
    }
    if result_path.exists():  # keep the runs of earlier invocations today that this one does not repeat
        planned = {(f, s) for f in factors for s in scales}
        earlier = json.loads(result_path.read_text())
        result["runs"] = [r for r in earlier.get("runs", []) if (r["factor"], r["timeout_scale"]) not in planned]
        result["replication"] = earlier.get("replication", {})
    try:
        for factor in factors:
            if factor == 1:
                root = data_root
            else:
                root = workdir / f"data_x{factor}"
                if not (root / "data").exists():
                    print(f"[scale] replicating {data_root} x{factor} into {root}", flush=True)
                    result["replication"][str(factor)] = replicate(data_root, root, factor)
            for scale in scales:
                run_dir = workdir / f"run_x{factor}_t{scale:g}"
                started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
                print(f"[scale] six stages on x{factor} with timeouts x{scale:g} ({time.strftime('%H:%M:%S')})",
                      flush=True)
                card = grade(str(root), str(REPO / "solution"), workspace=str(run_dir / "ws"), timeout_scale=scale,
                             out=str(run_dir / "scorecard.json"), keep_workspace=True, quiet=not args.verbose)
                run = summarise_run(card, factor, scale, run_dir / "ws" / "solution" / "artifacts")
                if not args.keep:
                    shutil.rmtree(run_dir / "ws" / "solution", ignore_errors=True)  # the prepared crops are large
                run["started"] = started
                run["load_average_at_end"] = os.getloadavg()
                run["scorecard"] = str(run_dir / "scorecard.json") if args.keep else None
                result["runs"].append(run)
                _atomic_write_text(str(result_path), json.dumps(portable(result, [data_root]), indent=2) + "\n")
                print_table([run])
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    _atomic_write_text(str(result_path.with_suffix(".md")), portable(markdown(result), [data_root]))
    print(f"\n[scale] wrote {result_path} and its tables in {result_path.with_suffix('.md').name}")
    return 0 if all(r["all_valid"] for r in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
