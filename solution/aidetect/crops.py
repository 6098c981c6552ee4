"""How every image is presented to the models: a native-resolution crop.

Resizing erases the high-frequency traces generators leave (Corvi et al. 2023),
and size, aspect and format would give the class away, so every image of every
class becomes one square crop of ``CROP_SIZE`` pixels cut from the decoded
pixels without resampling. Only images smaller than the crop on a side are
up-scaled (bicubic) to reach it. Crop offsets are multiples of 8, so the crop
keeps the 2x2 up-sampling grid and the 8x8 JPEG grid of the source, for every
class alike.

The network sees the centre crop. The classical model also scores the corner
crops (``corner_crops``: up to four, one where the image is the crop's size)
and averages their log-odds: a photo larger than the crop is judged on most of
its pixels, not on its middle alone.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

CROP_SIZE = 256  # the stored, model-ready crop
TRAIN_CROP = 128  # what the network sees in training (random sub-crop)
GRID = 8


def ensure_min_side(rgb: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    height, width = rgb.shape[:2]
    if min(height, width) >= size:
        return rgb
    scale = size / min(height, width)
    keep = math.ceil(4 * size / scale)  # trim an extreme strip before up-scaling: memory stays bounded
    if max(height, width) > keep:
        top, left = max(0, (height - keep) // 2), max(0, (width - keep) // 2)
        rgb = rgb[top : top + keep, left : left + keep]
        height, width = rgb.shape[:2]
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    return np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BICUBIC))


def aligned_offset(extent: int, size: int, rng: np.random.Generator | None) -> int:
    room = extent - size
    if room <= 0:
        return 0
    if rng is None:
        offset = room // 2
    else:
        offset = int(rng.integers(0, room + 1))
    return offset - offset % GRID


def square_crop(rgb: np.ndarray, size: int = CROP_SIZE, rng: np.random.Generator | None = None) -> np.ndarray:
    """A ``size`` x ``size`` crop: centred when ``rng`` is None, else random."""
    rgb = ensure_min_side(rgb, size)
    height, width = rgb.shape[:2]
    top = aligned_offset(height, size, rng)
    left = aligned_offset(width, size, rng)
    return np.ascontiguousarray(rgb[top : top + size, left : left + size])


def _corner_offsets(extent: int, size: int) -> list[int]:
    room = extent - size
    return [0] if room <= 0 else [0, room - room % GRID]


def corner_crops(rgb: np.ndarray, size: int = CROP_SIZE) -> list[np.ndarray]:
    """The crops at the image's corners (grid-aligned): 1, 2 or 4 of them, as many as are distinct."""
    rgb = ensure_min_side(rgb, size)
    height, width = rgb.shape[:2]
    return [np.ascontiguousarray(rgb[top : top + size, left : left + size])
            for top in _corner_offsets(height, size) for left in _corner_offsets(width, size)]
