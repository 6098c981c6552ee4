"""A shortcut-flipped copy of a predict split: the container cues point the wrong way.

Real photos become square PNG crops; generated images become non-square JPEG
crops (quality 90 to 97, aspect 4:3 or 3:4). A detector that learned format,
size or aspect instead of generator traces changes its answers here; one that
learned traces does not.

The two halves of the flip can also be applied alone (``PARTS``), to tell
which of them moves a detector: ``format`` only re-encodes (real photos as
PNG, pixels unchanged; generated images as JPEG at full size), ``geometry``
only cuts (real photos to a square, generated images to 4:3, both kept
lossless as PNG). A 4:3 cut of a 256-px generated image is 192 px on its short
side, so prepare up-scales it: the geometry half includes that resampling.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


PARTS = ("format", "geometry")
VARIANTS = {"format only": ("format",), "geometry only": ("geometry",)}  # the flip's halves, for the decomposition


def flip_image(data: bytes, source_class: int, rng: np.random.Generator, parts: tuple[str, ...] = PARTS) -> bytes:
    """The image with the flip's ``parts`` applied (both by default).

    The random choices (cut orientation, JPEG quality) are drawn for every
    generated image whatever ``parts`` is, so each variant changes the same
    image in the same way.
    """
    image = Image.open(io.BytesIO(data))
    image.load()
    image = image.convert("RGB")
    width, height = image.size
    buffer = io.BytesIO()
    if source_class == 0:
        if "geometry" in parts:
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        image.save(buffer, format="PNG")  # lossless: only the container changes
    else:
        # Cut a 4:3 (or 3:4) window out of the square generated image.
        if rng.random() < 0.5:
            new_w, new_h = width, int(round(width * 3 / 4))
        else:
            new_w, new_h = int(round(height * 3 / 4)), height
        quality = int(rng.integers(90, 98))
        if "geometry" in parts:
            left, top = (width - new_w) // 2, (height - new_h) // 2
            image = image.crop((left, top, left + new_w, top + new_h))
        if "format" in parts:
            image.save(buffer, format="JPEG", quality=quality)
        else:
            image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_flipped(data_root: Path, out_root: Path, seed: int = 0, parts: tuple[str, ...] = PARTS) -> Path:
    """Write ``out_root/data/predict`` and ``out_root/labels`` from ``data_root`` (course layout + labels)."""
    rng = np.random.default_rng(seed)
    predict = pd.read_parquet(data_root / "data" / "predict")
    labels = pd.read_parquet(data_root / "labels" / "predict_labels.parquet")
    source = dict(zip(labels["row_id"], labels["source_class"]))
    flipped = [flip_image(b, int(source[r]), rng, parts) for r, b in zip(predict["row_id"], predict["image"])]
    (out_root / "data" / "predict").mkdir(parents=True, exist_ok=True)
    (out_root / "labels").mkdir(parents=True, exist_ok=True)
    table = pa.table({"row_id": pa.array(predict["row_id"], pa.int32()), "image": pa.array(flipped, pa.binary())})
    pq.write_table(table, out_root / "data" / "predict" / "part-0.parquet")
    labels.to_parquet(out_root / "labels" / "predict_labels.parquet", index=False)
    return out_root
