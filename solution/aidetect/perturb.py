"""What happens to images in the wild: perturbation families, each with a strength axis.

A *family* is one kind of processing (JPEG re-saving, Lanczos up-scaling,
median filtering, ...) at three strengths, mild to strong; the middle one is
the family's *moderate* strength. The families are far broader than what the
detector trains on: ``trained_as`` names the training augmentation
(``augment.TRAINING_FAMILIES``) that covers a family, and is ``None`` for a
family no training step ever applies (other resampling kernels and aspect
changes, sharpening, signal-dependent noise, tone curves, padding, chains). The robustness benchmark scores images processed by every family,
and trains leave-one-family-out detectors for the covered ones; Task 3's
threshold is also calibrated on real images processed by the covered families
(``calibration_families``).

Every function takes and returns a uint8 RGB array of any size and is
deterministic given its ``numpy`` generator.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

Perturbation = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def _pil(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(rgb)).convert("RGB")


def _encode(rgb: np.ndarray, fmt: str, quality: float) -> np.ndarray:
    buffer = io.BytesIO()
    _pil(rgb).save(buffer, format=fmt, quality=int(quality))
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _resize(rgb: np.ndarray, factor_w: float, factor_h: float, kernel: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    size = (max(8, round(width * factor_w)), max(8, round(height * factor_h)))
    return np.asarray(_pil(rgb).resize(size, kernel))


def jpeg(rgb, quality, rng):
    return _encode(rgb, "JPEG", quality)


def webp(rgb, quality, rng):
    return _encode(rgb, "WEBP", quality)


def downscale(rgb, factor, rng):
    """Down-scaling with a kernel training never uses (Lanczos or box)."""
    return _resize(rgb, factor, factor, Image.LANCZOS if rng.random() < 0.5 else Image.BOX)


def upscale(rgb, factor, rng):
    """Non-integer up-scaling (Lanczos or bicubic), the common 'enhance' of photo apps."""
    return _resize(rgb, factor, factor, Image.LANCZOS if rng.random() < 0.5 else Image.BICUBIC)


def aspect(rgb, stretch, rng):
    """One axis stretched, the other kept (a careless resize to a fixed box)."""
    return _resize(rgb, stretch, 1.0, Image.BICUBIC) if rng.random() < 0.5 else _resize(rgb, 1.0, stretch, Image.BICUBIC)


def gaussian_blur(rgb, sigma, rng):
    return np.asarray(_pil(rgb).filter(ImageFilter.GaussianBlur(sigma)))


def box_blur(rgb, radius, rng):
    return np.asarray(_pil(rgb).filter(ImageFilter.BoxBlur(radius)))


def median(rgb, passes, rng):
    """A 3x3 median filter applied ``passes`` times (a larger window costs quadratically more)."""
    image = _pil(rgb)
    for _ in range(int(passes)):
        image = image.filter(ImageFilter.MedianFilter(3))
    return np.asarray(image)


def sharpen(rgb, percent, rng):
    return np.asarray(_pil(rgb).filter(ImageFilter.UnsharpMask(radius=2, percent=int(percent), threshold=2)))


def brightness_contrast(rgb, amount, rng):
    """Brightness and contrast scaled by 1 +- ``amount`` (signs at random)."""
    image = _pil(rgb)
    image = ImageEnhance.Brightness(image).enhance(1 + amount * rng.choice([-1, 1]))
    return np.asarray(ImageEnhance.Contrast(image).enhance(1 + amount * rng.choice([-1, 1])))


def gamma_saturation(rgb, amount, rng):
    """A tone curve (gamma 1 +- ``amount``) and a saturation change, as photo filters do."""
    gamma = 1 + amount * rng.choice([-1, 1])
    toned = (255.0 * (rgb.astype(np.float32) / 255.0) ** gamma).round().clip(0, 255).astype(np.uint8)
    return np.asarray(ImageEnhance.Color(_pil(toned)).enhance(1 + amount * rng.choice([-1, 1])))


def gaussian_noise(rgb, sigma, rng):
    return (rgb + rng.normal(0.0, sigma, rgb.shape)).round().clip(0, 255).astype(np.uint8)


def shot_noise(rgb, photons, rng):
    """Signal-dependent (Poisson) noise of a sensor that collected ``photons`` at full white."""
    scaled = rng.poisson(rgb.astype(np.float64) / 255.0 * photons) / photons * 255.0
    return scaled.round().clip(0, 255).astype(np.uint8)


def crop(rgb, keep, rng):
    """A random part of ``keep`` times each side (a user's crop; the pixel grid moves)."""
    height, width = rgb.shape[:2]
    new_h, new_w = max(8, round(height * keep)), max(8, round(width * keep))
    top, left = int(rng.integers(0, height - new_h + 1)), int(rng.integers(0, width - new_w + 1))
    return np.ascontiguousarray(rgb[top : top + new_h, left : left + new_w])


def pad(rgb, share, rng):
    """A flat border of ``share`` of each side (letter-boxing), in a random grey."""
    height, width = rgb.shape[:2]
    py, px = max(1, round(height * share)), max(1, round(width * share))
    return np.pad(rgb, ((py, py), (px, px), (0, 0)), mode="constant", constant_values=int(rng.integers(0, 256)))


@dataclass(frozen=True)
class Family:
    name: str
    apply: Perturbation
    strengths: tuple  # mild, moderate, strong
    unit: str
    trained_as: str | None  # the training augmentation that covers it (augment.TRAINING_FAMILIES), or None

    @property
    def moderate(self) -> float:
        return self.strengths[len(self.strengths) // 2]


_SINGLE = (
    Family("jpeg", jpeg, (90, 70, 50), "quality", "jpeg"),
    Family("webp", webp, (90, 70, 50), "quality", "jpeg"),  # training's lossy codecs: JPEG and WebP
    Family("downscale", downscale, (0.9, 0.7, 0.5), "factor", "rescale"),
    Family("upscale", upscale, (1.25, 1.5, 2.0), "factor", "rescale"),
    Family("aspect", aspect, (1.1, 1.25, 1.5), "stretch", None),
    Family("gaussian_blur", gaussian_blur, (0.5, 1.0, 1.5), "sigma", "blur"),
    Family("box_blur", box_blur, (0.5, 1.0, 1.5), "radius", "blur"),  # training blurs: Gaussian, box, median
    Family("median", median, (1, 2, 3), "3x3 passes", "blur"),
    Family("sharpen", sharpen, (50, 100, 200), "percent", None),
    Family("brightness_contrast", brightness_contrast, (0.1, 0.2, 0.3), "change", "colour"),
    Family("gamma_saturation", gamma_saturation, (0.1, 0.2, 0.35), "change", None),
    Family("gaussian_noise", gaussian_noise, (2.0, 4.0, 8.0), "sigma", "noise"),
    Family("shot_noise", shot_noise, (400.0, 150.0, 50.0), "photons", None),
    Family("crop", crop, (0.9, 0.75, 0.6), "kept side", "crop"),
    Family("pad", pad, (0.02, 0.05, 0.1), "border share", None),
)
SINGLE_FAMILIES = {f.name: f for f in _SINGLE}


def chain(rgb, length, rng):
    """``length`` different single families at their moderate strength, in random order (codecs last,
    as a re-upload saves last)."""
    names = list(rng.choice(sorted(SINGLE_FAMILIES), size=int(length), replace=False))
    names.sort(key=lambda n: n in ("jpeg", "webp"))
    for name in names:
        family = SINGLE_FAMILIES[name]
        rgb = family.apply(rgb, family.moderate, rng)
    return rgb


FAMILIES = {**SINGLE_FAMILIES, "chain": Family("chain", chain, (1, 2, 3), "operations", None)}


def perturb(rgb: np.ndarray, family: str, strength: float, seed) -> np.ndarray:
    """``rgb`` (uint8 RGB) processed by ``family`` at ``strength``; the same seed gives the same result."""
    rng = np.random.default_rng(seed)
    out = FAMILIES[family].apply(np.ascontiguousarray(rgb, dtype=np.uint8), strength, rng)
    return np.ascontiguousarray(out, dtype=np.uint8)


def calibration_families(excluded: tuple[str, ...] = ()) -> list[Family]:
    """Families Task 3 calibrates its threshold on: those its training covers, less ``excluded``
    training families (a leave-one-family-out detector calibrates without the one it leaves out)."""
    return [f for f in _SINGLE if f.trained_as is not None and f.trained_as not in excluded]
