"""Reading the parquet splits in batches and writing artifacts atomically.

Reading streams record batches, so memory does not grow with the dataset.
Every write goes to a temporary file in the target folder and is renamed into
place, so a stage killed mid-write never leaves a half-written artifact.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import DataError

log = logging.getLogger(__name__)

LABELLED_SCHEMA = {"image": "binary", "source_class": "integer"}
PREDICT_SCHEMA = {"row_id": "integer", "image": "binary"}


def parquet_files(folder: Path) -> list[Path]:
    """The parquet files of one split, in a stable order."""
    if not folder.is_dir():
        raise DataError(f"split folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*.parquet") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"split folder {folder} holds no .parquet file")
    return files


def _check_column(path: Path, schema: pa.Schema, name: str, kind: str) -> None:
    if name not in schema.names:
        raise DataError(f"{path}: missing column '{name}' (found: {', '.join(schema.names)})")
    typ = schema.field(name).type
    ok = (
        (kind == "binary" and (pa.types.is_binary(typ) or pa.types.is_large_binary(typ)))
        or (kind == "integer" and pa.types.is_integer(typ))
    )
    if not ok:
        raise DataError(f"{path}: column '{name}' has type {typ}, expected {kind}")


def validate_split(folder: Path, labelled: bool) -> list[Path]:
    """Check every file's schema before any work starts; return the files."""
    files = parquet_files(folder)
    expected = LABELLED_SCHEMA if labelled else PREDICT_SCHEMA
    for path in files:
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
        for name, kind in expected.items():
            _check_column(path, schema, name, kind)
    return files


def count_rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in files)


@dataclass
class Batch:
    """One record batch: the encoded images and their label or row id."""

    file: Path
    first_row: int  # index of the batch's first row within its file
    images: list[bytes | None]
    source_class: np.ndarray | None = None
    row_id: np.ndarray | None = None


def iter_batches(folder: Path, labelled: bool, batch_size: int = 64) -> Iterator[Batch]:
    """Stream a split in batches, validating the schema of every file first."""
    files = validate_split(folder, labelled)
    columns = ["image", "source_class"] if labelled else ["row_id", "image"]
    for path in files:
        first_row = 0
        for record_batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns):
            images = record_batch.column("image").to_pylist()
            batch = Batch(file=path, first_row=first_row, images=images)
            if labelled:
                labels = record_batch.column("source_class")
                if labels.null_count:  # a missing label becomes -1: the recipe drops it as outside 0..5
                    labels = pc.fill_null(labels.cast(pa.int64()), -1)
                batch.source_class = labels.to_numpy(zero_copy_only=False)
            else:
                batch.row_id = record_batch.column("row_id").to_numpy(zero_copy_only=False)
            first_row += len(images)
            yield batch


@contextlib.contextmanager
def atomic_path(target: Path):
    """Yield a temporary path beside ``target``; rename it into place on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; artifacts are for other users too
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(target: Path, obj) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def write_predictions(target: Path, row_ids: np.ndarray, labels: np.ndarray) -> None:
    """The graded CSV: header ``row_id,predicted_label``, one row per row id."""
    lines = ["row_id,predicted_label"] + [f"{int(r)},{int(l)}" for r, l in zip(row_ids, labels)]
    with atomic_path(target) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def save_torch(target: Path, obj) -> None:
    import torch

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)


def read_row_ids(folder: Path) -> np.ndarray:
    """All row ids of the predict split; a clear error for duplicates."""
    files = validate_split(folder, labelled=False)
    columns = [pq.read_table(p, columns=["row_id"]).column("row_id") for p in files]
    for path, column in zip(files, columns):
        if column.null_count:
            raise DataError(f"{path}: row_id is missing (null) in {column.null_count} row(s); "
                            "every row needs an integer row_id")
    ids = np.concatenate([column.to_numpy() for column in columns])
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{folder}: duplicate row_id values {unique[counts > 1][:20].tolist()}; "
                        "every row_id must be unique")
    return ids
