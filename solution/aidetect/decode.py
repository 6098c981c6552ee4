"""Turning encoded image bytes into RGB pixels, whatever the file.

Every class goes through exactly this function, so the model never sees how a
file was stored: any format PIL reads, any mode (grayscale, palette, alpha,
16-bit, CMYK), the first frame of an animation, EXIF orientation applied.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import DecodeError

# Refuse decompression bombs instead of exhausting memory: 40 megapixels is
# far above any photo in the data (COCO images are about 0.3 MP).
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


def open_image(data: bytes | None) -> Image.Image:
    """Open and fully load an image, or raise DecodeError saying why."""
    if data is None or len(data) == 0:
        raise DecodeError("empty image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise DecodeError(f"image of {image.width}x{image.height} exceeds {MAX_PIXELS} pixels")
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


def to_rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB array from any PIL mode."""
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:
        pass  # broken EXIF: keep the stored orientation
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        array = ((array - lo) / (hi - lo + 1e-12) * 255.0 + 0.5).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")  # drops alpha, maps CMYK / L / LA / P / YCbCr
    return np.asarray(image, dtype=np.uint8).copy()


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
            width, height = Image.open(io.BytesIO(data)).size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise DecodeError(_unknown_format(data)) from exc
    except Exception as exc:
        raise DecodeError(f"{type(exc).__name__}: {exc}") from exc
    if width * height > MAX_PIXELS:
        raise DecodeError(f"image of {width}x{height} exceeds {MAX_PIXELS} pixels")
    if width < 1 or height < 1:
        raise DecodeError("image has no pixels")
    return width, height
