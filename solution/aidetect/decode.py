"""Turning encoded image bytes into RGB pixels, whatever the file.

Every class goes through exactly this function, so the model never sees how a
file was stored: any format PIL reads, any mode (grayscale, palette, alpha,
16-bit, CMYK), the first frame of an animation, EXIF orientation applied.

Memory is bounded by the decoded size, not the file size (a 90 kB PNG can
hold 40 megapixels of 16-bit grey): an image is refused before its pixels are
decoded when PIL's raster plus the RGB result would exceed
``MAX_DECODE_BYTES``, and conversion to RGB runs strip by strip in integer
arithmetic, so no full-size temporary copy is ever made.
"""
from __future__ import annotations

import io
import warnings
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import DecodeError

# Refuse decompression bombs instead of exhausting memory: 40 megapixels is
# far above any photo in the data (COCO images are about 0.3 MP).
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False
RGB_BYTES = 3  # per pixel of the uint8 RGB result
# What decoding may hold at once, in bytes: an RGB image of MAX_PIXELS (PIL keeps 4 bytes a pixel) and
# its RGB array. Conversion strips add at most a few MB (STRIP_PIXELS).
MAX_DECODE_BYTES = MAX_PIXELS * (4 + RGB_BYTES)
STRIP_PIXELS = 1 << 20


def raster_bytes(mode: str) -> int:
    """Bytes a pixel takes in PIL's decoded image of ``mode``: 1 for 1/L/P, 2 for 16-bit grey, else 4."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4  # every other mode is stored as 32-bit pixels (RGB and LA included)


def check_decode_budget(width: int, height: int, mode: str) -> None:
    """DecodeError if an image of this size and mode may not be decoded (too many pixels or bytes)."""
    if width * height > MAX_PIXELS:
        raise DecodeError(f"image of {width}x{height} exceeds {MAX_PIXELS} pixels")
    needed = width * height * (raster_bytes(mode) + RGB_BYTES)
    if needed > MAX_DECODE_BYTES:
        raise DecodeError(f"image of {width}x{height} in mode {mode} needs {needed / 1e6:.0f} MB to decode, "
                          f"more than the {MAX_DECODE_BYTES / 1e6:.0f} MB allowed")


def open_image(data: bytes | None) -> Image.Image:
    """Open and fully load an image, or raise DecodeError saying why."""
    if data is None or len(data) == 0:
        raise DecodeError("empty image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            check_decode_budget(image.width, image.height, image.mode)
            image.seek(0)  # first frame of animated / multi-page files
            image.load()
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:  # its own message names only a BytesIO object
        raise DecodeError(_unknown_format(data)) from exc
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DecodeError(f"{type(exc).__name__}: {exc}") from exc
    if image.width < 1 or image.height < 1:
        raise DecodeError("image has no pixels")
    return image


def _unknown_format(data: bytes) -> str:
    return f"not an image format PIL reads ({len(data)} bytes starting {data[:8]!r})"


def _strips(image: Image.Image) -> Iterator[tuple[int, int, Image.Image]]:
    """(top, bottom, strip image) of about STRIP_PIXELS each, top to bottom."""
    width, height = image.size
    rows = max(1, STRIP_PIXELS // max(1, width))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        yield top, bottom, image.crop((0, top, width, bottom))


def to_rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB array from any PIL mode, converted strip by strip into the result."""
    try:
        ImageOps.exif_transpose(image, in_place=True)  # in place: no second full-size image kept
    except Exception:
        pass  # broken EXIF: keep the stored orientation
    mode = image.mode
    width, height = image.size
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # round(v / top * 255) for v clipped to 0..top, exactly, in integers
        top = 65535 if image.getextrema()[1] > 255 else 255
        for first, last, strip in _strips(image):
            values = np.clip(np.asarray(strip).astype(np.int64), 0, top)
            rgb[first:last] = ((values * 255 + top // 2) // top).astype(np.uint8)[..., None]
        return rgb
    if mode == "F":
        lo, hi = (float(v) for v in image.getextrema())
        for first, last, strip in _strips(image):
            values = np.asarray(strip, dtype=np.float64)
            rgb[first:last] = ((values - lo) / (hi - lo + 1e-12) * 255.0 + 0.5).astype(np.uint8)[..., None]
        return rgb
    for first, last, strip in _strips(image):
        if mode == "P" and "transparency" in image.info:
            strip = strip.convert("RGBA")
        if strip.mode != "RGB":
            strip = strip.convert("RGB")  # drops alpha, maps CMYK / L / LA / P / YCbCr
        rgb[first:last] = np.asarray(strip, dtype=np.uint8)
    return rgb


def decode_rgb(data: bytes | None) -> np.ndarray:
    """Encoded bytes to HxWx3 uint8 RGB, or DecodeError."""
    image = open_image(data)
    try:
        return to_rgb(image)
    except Exception as exc:
        raise DecodeError(f"could not convert mode {image.mode}: {exc}") from exc


def read_size(data: bytes | None) -> tuple[int, int]:
    """(width, height) from the header alone, or DecodeError: fast enough to scan a whole split."""
    if data is None or len(data) == 0:
        raise DecodeError("empty image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            (width, height), mode = image.size, image.mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise DecodeError(_unknown_format(data)) from exc
    except Exception as exc:
        raise DecodeError(f"{type(exc).__name__}: {exc}") from exc
    check_decode_budget(width, height, mode)
    if width < 1 or height < 1:
        raise DecodeError("image has no pixels")
    return width, height
