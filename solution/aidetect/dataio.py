"""Reading the parquet splits in batches and writing artifacts atomically.

Reading streams record batches, so memory does not grow with the dataset.
A file is read row group by row group: a damaged page costs the rows of its
own row group (reported as an ``Unreadable`` record and in a warning), never
the rest of the split. A file is named by its path relative to the split
folder, so two ``part-0.parquet`` in different subfolders stay apart.
Every write goes to a temporary file in the target folder and is renamed into
place, so a stage killed mid-write never leaves a half-written artifact.
"""
from __future__ import annotations

import contextlib
import glob
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


@dataclass
class Unreadable:
    """Rows that could not be read: a whole file (``row_group`` None) or one row group of it."""

    file: Path
    name: str  # the file's path relative to its split folder
    row_group: int | None
    first_row: int  # index within the file of the first row lost
    n_rows: int  # rows lost (0 when a file's footer is unreadable: its size is unknown)
    error: str

    def where(self) -> str:
        return self.name if self.row_group is None else f"{self.name} row group {self.row_group}"

    def describe(self) -> str:
        return f"{self.where()}: {self.error}"


def file_name(path: Path, folder: Path) -> str:
    """How a file is named in the recipe, the prepared index and reports: its path inside the split folder."""
    return Path(path).relative_to(folder).as_posix()


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"  # Arrow's messages can hold line breaks and raw bytes of the damage
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _warn_unreadable(record: Unreadable, unreadable: list[Unreadable] | None) -> None:
    """Note ``record`` once per read of a split: a warning, and the caller's list if it keeps one."""
    rows = f"{record.n_rows} rows from row {record.first_row}" if record.n_rows else "rows unknown"
    log.warning("skipping unreadable parquet data in %s (%s): %s", record.where(), rows, record.error)
    if unreadable is not None:
        unreadable.append(record)


def validate_split(folder: Path, labelled: bool, unreadable: list[Unreadable] | None = None) -> list[Path]:
    """Check every file's schema before any work starts; return the readable files.

    A file whose footer cannot be read is skipped with a warning (and listed in
    ``unreadable``); a readable file that breaks the data contract stops the
    stage with a DataError naming file and column; a split with no readable
    file at all is a DataError too.
    """
    files = parquet_files(folder)
    readable = []
    for path in files:
        try:
            schema = pq.read_schema(path)
        except Exception as exc:  # Arrow raises OSError, ArrowInvalid and others for a damaged footer
            _warn_unreadable(Unreadable(path, file_name(path, folder), None, 0, 0,
                                        f"not a readable parquet file ({_one_line(exc)})"), unreadable)
            continue
        check_schema(path, schema, labelled)
        readable.append(path)
    if not readable:
        raise DataError(f"split folder {folder}: none of its {len(files)} parquet files is readable")
    return readable


def check_schema(path: Path, schema: pa.Schema, labelled: bool) -> None:
    """A DataError naming the file and column when ``schema`` breaks the data contract of its kind of split."""
    for name, kind in (LABELLED_SCHEMA if labelled else PREDICT_SCHEMA).items():
        _check_column(path, schema, name, kind)


def count_rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in files)


def row_groups(path: Path) -> list[tuple[int, int]]:
    """(first row, number of rows) of each row group of a parquet file."""
    metadata = pq.ParquetFile(path).metadata
    spans, first = [], 0
    for group in range(metadata.num_row_groups):
        n = metadata.row_group(group).num_rows
        spans.append((first, n))
        first += n
    return spans


@dataclass
class Batch:
    """One record batch: the encoded images and their label or row id."""

    file: Path
    name: str  # the file's path relative to its split folder: the file's identity in recipe and index
    first_row: int  # index of the batch's first row within its file
    images: list[bytes | None]
    source_class: np.ndarray | None = None
    row_id: np.ndarray | None = None


def iter_batches(folder: Path, labelled: bool, batch_size: int = 64,
                 unreadable: list[Unreadable] | None = None) -> Iterator[Batch]:
    """Stream a split in batches, validating the schema of every file first.

    Each row group is read on its own: one that fails to read (a damaged page,
    say) is skipped from the row where reading failed to its end, with a
    warning naming file and row group, and appended to ``unreadable``.
    """
    for path in validate_split(folder, labelled, unreadable):
        yield from iter_file_batches(path, file_name(path, folder), labelled, batch_size, unreadable)


def iter_file_batches(path: Path, name: str, labelled: bool, batch_size: int = 64,
                      unreadable: list[Unreadable] | None = None) -> Iterator[Batch]:
    """One parquet file (its schema already checked) in batches, row group by row group, as ``iter_batches``."""
    columns = ["image", "source_class"] if labelled else ["row_id", "image"]
    try:
        reader, spans = pq.ParquetFile(path), row_groups(path)
    except Exception as exc:
        _warn_unreadable(Unreadable(path, name, None, 0, 0, _one_line(exc)), unreadable)
        return
    for group, (group_first, group_rows) in enumerate(spans):
        first_row = group_first
        try:
            for record_batch in reader.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns):
                yield _batch(record_batch, path, name, first_row, labelled)
                first_row += record_batch.num_rows
        except Exception as exc:  # Arrow raises OSError, ArrowInvalid, ... for damaged pages
            _warn_unreadable(Unreadable(path, name, group, first_row, group_first + group_rows - first_row,
                                        _one_line(exc)), unreadable)


def _batch(record_batch: pa.RecordBatch, path: Path, name: str, first_row: int, labelled: bool) -> Batch:
    batch = Batch(file=path, name=name, first_row=first_row, images=record_batch.column("image").to_pylist())
    if labelled:
        labels = record_batch.column("source_class")
        if labels.null_count:  # a missing label becomes -1: the recipe drops it as outside 0..5
            labels = pc.fill_null(labels.cast(pa.int64()), -1)
        batch.source_class = labels.to_numpy(zero_copy_only=False)
    else:
        batch.row_id = record_batch.column("row_id").to_numpy(zero_copy_only=False)
    return batch


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_leftover_temporaries(target: Path) -> None:
    """Delete the temporaries of ``target`` that no running write will rename: those of a process killed while
    it wrote, and this process's own (writes of one target are never nested, and in a container a rerun of a
    stage may get the killed run's process id). A temporary is named ``.<name>.<pid>.<random>.tmp``."""
    prefix = f".{target.name}."
    for stale in target.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = stale.name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or not _process_exists(int(pid)):
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: Path):
    """Yield a temporary path beside ``target``; rename it into place on success. A kill leaves the previous
    ``target`` (or none) and a temporary, which the next write of ``target`` removes."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftover_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
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


UNKNOWN_ROW_ID = np.iinfo(np.int64).min  # a row whose row_id could not be read


def row_ids_by_file(folder: Path, unreadable: list[Unreadable] | None = None) -> dict[str, np.ndarray]:
    """The row ids of each predict file (by its name), in file order; a clear error for nulls and duplicates.

    Row ids are read per row group. When a row group's ``row_id`` column is
    damaged, its ids are taken from the footer's statistics if they prove
    them (min..max spans exactly the group's rows, and ids are unique);
    otherwise they are ``UNKNOWN_ROW_ID`` and the group is listed in ``unreadable``.
    """
    by_file = {}
    for path in validate_split(folder, labelled=False, unreadable=unreadable):
        name = file_name(path, folder)
        reader = pq.ParquetFile(path)
        parts = []
        for group, (first, n) in enumerate(row_groups(path)):
            try:
                column = reader.read_row_group(group, columns=["row_id"]).column("row_id")
            except Exception as exc:
                ids = _ids_from_statistics(reader, group, n)
                if ids is None:
                    _warn_unreadable(Unreadable(path, name, group, first, n, f"row_id unreadable ({_one_line(exc)})"),
                                     unreadable)
                    ids = np.full(n, UNKNOWN_ROW_ID, dtype=np.int64)
                else:
                    log.warning("%s row group %d: row_id column unreadable (%s); its %d ids %d..%d taken from the "
                                "file's statistics", name, group, _one_line(exc), n, ids[0], ids[-1])
                parts.append(ids)
                continue
            if column.null_count:
                raise DataError(f"{path}: row_id is missing (null) in {column.null_count} row(s); "
                                "every row needs an integer row_id")
            parts.append(column.to_numpy().astype(np.int64))
        by_file[name] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    unique, counts = np.unique(known_row_ids(by_file), return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{folder}: duplicate row_id values {unique[counts > 1][:20].tolist()}; "
                        "every row_id must be unique")
    return by_file


def _ids_from_statistics(reader: pq.ParquetFile, group: int, n: int) -> np.ndarray | None:
    """The ids of a row group whose statistics say min..max with max - min + 1 == n rows and no null, else None."""
    try:
        chunks = reader.metadata.row_group(group)
        column = next(chunks.column(i) for i in range(chunks.num_columns) if chunks.column(i).path_in_schema == "row_id")
        stats = column.statistics
        if stats is None or not stats.has_min_max or stats.null_count != 0:
            return None
        low, high = int(stats.min), int(stats.max)
    except Exception:
        return None
    return np.arange(low, high + 1, dtype=np.int64) if high - low + 1 == n else None


def known_row_ids(ids_by_file: dict[str, np.ndarray]) -> np.ndarray:
    """The row ids of ``row_ids_by_file`` that could be read, in file order."""
    ids = np.concatenate(list(ids_by_file.values()) or [np.zeros(0, dtype=np.int64)])
    return ids[ids != UNKNOWN_ROW_ID]


def read_row_ids(folder: Path, unreadable: list[Unreadable] | None = None) -> np.ndarray:
    """All readable row ids of the predict split; a clear error for nulls and duplicates."""
    return known_row_ids(row_ids_by_file(folder, unreadable))
