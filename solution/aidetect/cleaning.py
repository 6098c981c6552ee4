"""The deterministic cleaning recipe, and the model-ready crops built from it.

clean.py writes the recipe (which rows to keep, and why others go); prepare.py
turns the kept rows into fixed-size crops stored as uint8 arrays. The recipe is
a pure function of the data, so prepare.py recomputes it when clean.py did not
finish.

Rules, applied to every labelled split:
1. undecodable images are dropped (the reason is recorded);
2. ``source_class`` outside 0..5 is dropped (its meaning is unknown);
3. exact duplicates (same bytes) within a split keep their first copy;
4. a training image identical to a calibration or validation image is dropped
   from training, so the calibration guarantee and the validation score are
   not inflated by leakage;
5. images under 32 pixels on a side are dropped from training: too small to
   carry generator traces, and they would need 8x up-scaling.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .budget import Deadline
from .crops import CROP_SIZE, square_crop
from .dataio import atomic_path, count_rows, iter_batches, read_json, validate_split, write_json
from .decode import decode_rgb, open_image
from .errors import DataError, DecodeError
from .labels import SOURCE_CLASSES
from .paths import LABELLED_SPLITS, clean_dir, prepared_dir, split_dir
from .progress import progress

log = logging.getLogger(__name__)

MIN_TRAIN_SIDE = 32
RECIPE_COLUMNS = ["split", "file", "row", "sha1", "source_class", "width", "height", "keep", "reason"]


def recipe_path() -> Path:
    return clean_dir() / "recipe.parquet"


def available_splits() -> list[str]:
    return [s for s in LABELLED_SPLITS if split_dir(s).is_dir()]


def scan_split(split: str, deadline: Deadline | None = None) -> pd.DataFrame:
    """One row per image: its hash, size and whether it decodes."""
    folder = split_dir(split)
    files = validate_split(folder, labelled=True)
    rows = []
    with progress(total=count_rows(files), desc=f"scan {split}", deadline=deadline) as bar:
        for batch in iter_batches(folder, labelled=True):
            for offset, (data, source) in enumerate(zip(batch.images, batch.source_class)):
                record = {
                    "split": split, "file": batch.file.name, "row": batch.first_row + offset,
                    "sha1": hashlib.sha1(data or b"").hexdigest(), "source_class": int(source),
                    "width": 0, "height": 0, "keep": True, "reason": "",
                }
                try:
                    image = open_image(data)
                    record["width"], record["height"] = image.size
                except DecodeError as exc:
                    record["keep"], record["reason"] = False, f"undecodable: {exc}"
                rows.append(record)
            bar.update(len(batch.images))
    return pd.DataFrame(rows, columns=RECIPE_COLUMNS)


def apply_rules(scans: pd.DataFrame) -> pd.DataFrame:
    """Set ``keep`` and ``reason`` by the rules in the module docstring."""
    recipe = scans.copy()

    def drop(mask, reason):
        mask = mask & recipe["keep"]
        recipe.loc[mask, "keep"] = False
        recipe.loc[mask, "reason"] = reason

    drop(~recipe["source_class"].isin(SOURCE_CLASSES), "source_class outside 0..5")
    drop(recipe.duplicated(["split", "sha1"], keep="first"), "exact duplicate within the split")
    held_out = set(recipe.loc[recipe["split"] != "train", "sha1"])
    drop((recipe["split"] == "train") & recipe["sha1"].isin(held_out), "identical to a calibration/validation image")
    small = recipe[["width", "height"]].min(axis=1) < MIN_TRAIN_SIDE
    drop((recipe["split"] == "train") & small, f"smaller than {MIN_TRAIN_SIDE} px")
    return recipe


def build_recipe(deadline: Deadline | None = None) -> pd.DataFrame:
    splits = available_splits()
    if "train" not in splits:
        raise DataError(f"no training split at {split_dir('train')}")
    return apply_rules(pd.concat([scan_split(s, deadline) for s in splits], ignore_index=True))


def write_recipe(recipe: pd.DataFrame) -> None:
    with atomic_path(recipe_path()) as tmp:
        recipe.to_parquet(tmp, index=False)


def load_or_build_recipe(deadline: Deadline | None = None) -> pd.DataFrame:
    path = recipe_path()
    if path.exists():
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # a damaged file is rebuilt, not trusted
            log.warning("cleaning recipe %s unreadable (%s); rebuilding it", path, exc)
    log.info("no cleaning recipe from clean.py; building it now")
    recipe = build_recipe(deadline)
    write_recipe(recipe)
    return recipe


def summarise_recipe(recipe: pd.DataFrame) -> dict:
    dropped = recipe[~recipe["keep"]]
    return {
        "n_images": int(len(recipe)),
        "n_kept": int(recipe["keep"].sum()),
        "dropped_by_reason": {
            reason.split(":")[0]: int(count) for reason, count in dropped["reason"].str.split(":").str[0].value_counts().items()
        },
        "dropped_rows": dropped[["split", "file", "row", "source_class", "reason"]].to_dict("records")[:200],
        "kept_per_split_and_class": {
            split: {str(k): int(v) for k, v in group.loc[group["keep"], "source_class"].value_counts().sort_index().items()}
            for split, group in recipe.groupby("split")
        },
    }


# --- model-ready crops --------------------------------------------------------------


@dataclass
class PreparedSplit:
    """Kept images of one split as (N, CROP_SIZE, CROP_SIZE, 3) uint8 crops."""

    name: str
    crops: np.ndarray
    source_class: np.ndarray

    def __len__(self):
        return len(self.source_class)


def _crop_seed(seed: int, file: str, row: int) -> np.random.Generator:
    digest = hashlib.sha1(f"{seed}/{file}/{row}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def prepare_split(split: str, recipe: pd.DataFrame, seed: int = 0, deadline: Deadline | None = None) -> dict:
    """Decode the kept rows of a split and store one crop per image.

    Training crops are at a random (seeded, grid-aligned) position, so the
    model sees every part of an image across images; evaluation crops are
    centred, as at prediction time.
    """
    keep = recipe[(recipe["split"] == split) & recipe["keep"]]
    wanted = {(f, int(r)) for f, r in zip(keep["file"], keep["row"])}
    out = prepared_dir() / split
    out.mkdir(parents=True, exist_ok=True)
    info_path = out / "info.json"
    info_path.unlink(missing_ok=True)  # invalid until complete
    n = len(keep)
    with atomic_path(out / "crops.npy") as tmp:
        crops = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, CROP_SIZE, CROP_SIZE, 3))
        labels = np.zeros(n, dtype=np.int8)
        index, i = [], 0
        with progress(total=n, desc=f"prepare {split}", deadline=deadline) as bar:
            for batch in iter_batches(split_dir(split), labelled=True):
                for offset, (data, source) in enumerate(zip(batch.images, batch.source_class)):
                    key = (batch.file.name, batch.first_row + offset)
                    if key not in wanted:
                        continue
                    rng = _crop_seed(seed, *key) if split == "train" else None
                    crops[i] = square_crop(decode_rgb(data), CROP_SIZE, rng)
                    labels[i] = source
                    index.append(key)
                    i += 1
                    bar.update(1)
        crops.flush()
        del crops
    np.save(out / "labels.npy", labels)
    pd.DataFrame(index, columns=["file", "row"]).to_parquet(out / "index.parquet", index=False)
    info = {"split": split, "n": n, "crop_size": CROP_SIZE, "seed": seed,
            "per_class": {str(c): int((labels == c).sum()) for c in np.unique(labels)}}
    write_json(info_path, info)
    return info


def load_prepared(split: str) -> PreparedSplit:
    folder = prepared_dir() / split
    info_path = folder / "info.json"
    if not info_path.exists():
        raise DataError(f"prepared split {split} missing or incomplete at {folder}: run prepare.py")
    info = read_json(info_path)
    crops = np.load(folder / "crops.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npy")
    if len(crops) != info["n"] or len(labels) != info["n"]:
        raise DataError(f"prepared split {split} at {folder} is inconsistent: run prepare.py again")
    return PreparedSplit(split, crops, labels.astype(np.int64))


def prepared_splits() -> list[str]:
    return [s for s in LABELLED_SPLITS if (prepared_dir() / s / "info.json").exists()]
