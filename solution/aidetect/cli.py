"""The ``aidetect`` command: score image files, folders and course parquet files with a trained detector.

    aidetect score PATH... [--task task02|task03] [--model DIR] [--format csv|json]

Prints one row per image: its name, score, label at the detector's calibrated
threshold, and the error when the image could not be read or decoded (such an
image is listed, never dropped). A folder is searched for image and parquet
files; a parquet file in the course's layout gives one row per image, named
``<file>#row_id=<id>`` (predict split) or ``<file>#row=<index>`` (labelled
split). The detector is the one shipped in ``models/<task>`` unless ``--model``
names another folder (a task folder of a pipeline run's artifacts, say). The
exit status is non-zero only for a usage error (a path that does not exist, a
folder without a detector); unreadable images are rows with an error.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from .errors import DataError, PipelineError
from .labels import BINARY_NAMES
from .paths import shipped_model_dir

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
TASKS = ("task02", "task03")
COLUMNS = ("image", "score", "label", "error")


@dataclass
class Row:
    image: str
    score: float | None = None
    label: str | None = None
    error: str | None = None


def input_files(paths: list[Path]) -> list[Path]:
    """The files named, and the image and parquet files inside the folders named (sorted, hidden ones left out)."""
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in
                            IMAGE_SUFFIXES | {".parquet"} and not any(part.startswith(".") for part in
                                                                       p.relative_to(path).parts))
        else:
            files.append(path)
    return files


def parquet_images(path: Path, errors: list[Row]) -> Iterator[tuple[str, bytes | None]]:
    """(name, encoded image) of every row of a course parquet file; what cannot be read goes to ``errors``."""
    from .dataio import Unreadable, check_schema, iter_file_batches

    try:
        schema = pq.read_schema(path)
        labelled = "row_id" not in schema.names
        check_schema(path, schema, labelled)
    except DataError as exc:
        errors.append(Row(str(path), error=f"not a course parquet file: {exc}"))
        return
    except Exception as exc:  # Arrow raises several kinds for a damaged footer
        errors.append(Row(str(path), error=f"not a readable parquet file: {type(exc).__name__}: {exc}"))
        return
    unreadable: list[Unreadable] = []
    for batch in iter_file_batches(path, str(path), labelled, unreadable=unreadable):
        if labelled:
            names = [f"{path}#row={batch.first_row + i}" for i in range(len(batch.images))]
        else:
            names = [f"{path}#row_id={row_id}" for row_id in batch.row_id.tolist()]
        yield from zip(names, batch.images)
    for record in unreadable:
        rows = f"rows {record.first_row}..{record.first_row + record.n_rows - 1}" if record.n_rows else "all rows"
        errors.append(Row(f"{path}#{rows}", error=f"unreadable parquet data: {record.error}"))


def images_of(files: list[Path], errors: list[Row]) -> Iterator[tuple[str, bytes | Path | None]]:
    for path in files:
        if path.suffix.lower() == ".parquet":
            yield from parquet_images(path, errors)
        else:
            yield str(path), path


def count_images(files: list[Path]) -> int | None:
    """How many images the files hold (for the progress bar), or None if a parquet footer cannot be read."""
    try:
        return sum(pq.ParquetFile(p).metadata.num_rows if p.suffix.lower() == ".parquet" else 1 for p in files)
    except Exception:
        return None


def score_paths(detector, paths: list[Path]) -> list[Row]:
    """One row per image of ``paths``, in input order (rows of unreadable parquet data at the end)."""
    from .detector import predict_encoded

    files = input_files(paths)
    errors: list[Row] = []
    order: dict[str, int] = {}

    def named():
        for name, data in images_of(files, errors):
            order[name] = len(order)
            yield name, data

    rows = []
    for result in predict_encoded(detector, named(), count_images(files), "aidetect score"):
        label = None if result.label is None else BINARY_NAMES[result.label]
        rows.append(Row(result.key, result.score, label, result.error))
    rows.sort(key=lambda row: order[row.image])
    return rows + errors


def write_rows(rows: list[Row], fmt: str, out=None) -> None:
    out = sys.stdout if out is None else out
    if fmt == "json":
        json.dump([row.__dict__ for row in rows], out, indent=1)
        out.write("\n")
        return
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if value is None else value for value in (row.image, row.score, row.label, row.error)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aidetect", description="Detect AI-generated images on the CPU.")
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="score image files, folders and course parquet files",
                                description=__doc__.split("\n\n")[2])
    score.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="an image, a folder or a parquet file")
    score.add_argument("--task", choices=TASKS, default="task03",
                       help="which shipped detector: task02 (plain) or task03 (robust to processing; default)")
    score.add_argument("--model", type=Path,
                       help="a detector folder (holding detector.json) instead of the shipped one")
    score.add_argument("--format", choices=("csv", "json"), default="csv")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")
    from .detector import Detector

    folder = args.model or shipped_model_dir(args.task)
    try:
        detector = Detector.load(folder)
    except PipelineError as exc:
        parser.error(f"cannot load the detector in {folder}: {exc}")
    except Exception as exc:  # a damaged detector.json or weights file
        parser.error(f"cannot load the detector in {folder}: {type(exc).__name__}: {exc}")
    write_rows(score_paths(detector, args.paths), args.format)
    return 0


if __name__ == "__main__":
    sys.exit(main())
