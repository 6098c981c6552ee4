"""Training-time views of a stored crop, applied to every class alike.

``neutral`` (Task 2) removes container cues: every image is JPEG re-encoded
with high probability at a random quality, so "was it a JPEG" stops telling
real from generated, plus flips and 90-degree turns. ``robust`` (Task 3) adds
what the augmented splits and real users do to images: lossy re-encoding down
to quality 30, blur, rescaling (up-scaling; down-scaling too for views smaller
than the stored crop), noise, colour changes and crops (CNNDetection, Wang et
al. 2020, with wider ranges). Each kind of processing comes in several
variants (``blur_kinds``, ``codecs``): a detector that has
only seen Gaussian blur reads a median filter's smoothness as a generator's.

``augment`` changes a stored crop (what the network trains on). A stored crop
cannot be down-scaled and stay a full-size crop, so ``image_view`` applies the
same changes to the whole decoded image, down-scaling included, before
prepare cuts its crop: the robust views of the classical model.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from .crops import TRAIN_CROP


@dataclass(frozen=True)
class AugmentPolicy:
    name: str
    jpeg_p: float
    jpeg_quality: tuple[int, int]
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.3, 2.0)
    rescale_p: float = 0.0
    rescale: tuple[float, float] = (0.5, 1.5)
    noise_p: float = 0.0
    noise_sigma: tuple[float, float] = (1.0, 6.0)
    colour_p: float = 0.0
    crop_size: int = TRAIN_CROP
    area_p: float = 0.0  # image_view only: keep a random part of the image ...
    area: tuple[float, float] = (0.8, 0.95)  # ... of this side fraction
    blur_kinds: tuple[str, ...] = ("gaussian",)  # drawn uniformly when a view is blurred (``_blur``)
    codecs: tuple[str, ...] = ("jpeg",)  # drawn uniformly when a view is re-encoded (``encode``)


NEUTRAL = AugmentPolicy("neutral", jpeg_p=0.7, jpeg_quality=(70, 100))
ROBUST = AugmentPolicy(
    "robust", jpeg_p=0.8, jpeg_quality=(30, 100), blur_p=0.4, rescale_p=0.5, noise_p=0.25, colour_p=0.3,
    area_p=0.3, blur_kinds=("gaussian", "box", "median"), codecs=("jpeg", "webp"),
)
POLICIES = {p.name: p for p in (NEUTRAL, ROBUST)}

# The kinds of processing a policy applies, each switched by one probability: what a
# leave-one-family-out detector leaves out (``perturb.Family.trained_as`` names them).
TRAINING_FAMILIES = {"jpeg": "jpeg_p", "blur": "blur_p", "rescale": "rescale_p", "noise": "noise_p",
                     "colour": "colour_p", "crop": "area_p"}


def without(policy: AugmentPolicy, families) -> AugmentPolicy:
    """``policy`` with the given training families switched off."""
    unknown = set(families) - set(TRAINING_FAMILIES)
    if unknown:
        raise ValueError(f"unknown training families {sorted(unknown)}; known: {sorted(TRAINING_FAMILIES)}")
    return replace(policy, **{TRAINING_FAMILIES[name]: 0.0 for name in families})


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    return encode(image, "jpeg", quality)


def encode(image: Image.Image, codec: str, quality: int) -> Image.Image:
    """``image`` saved with a lossy codec (``jpeg`` or ``webp``) at ``quality`` and decoded again."""
    buffer = io.BytesIO()
    image.save(buffer, format=codec.upper(), quality=int(quality))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _blur(image: Image.Image, kind: str, strength: float) -> Image.Image:
    """A low-pass filter of the given kind; ``strength`` is the Gaussian sigma, or its box/median equivalent."""
    if kind == "gaussian":
        return image.filter(ImageFilter.GaussianBlur(strength))
    if kind == "box":
        return image.filter(ImageFilter.BoxBlur(strength))
    if kind == "median":  # 3x3 at a weak strength, 5x5 at a strong one
        return image.filter(ImageFilter.MedianFilter(3 if strength < 1.2 else 5))
    raise ValueError(f"unknown blur kind {kind!r}")


def random_crop(array: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random ``size`` crop at even offsets (keeps the 2x2 pixel grid); pads by reflection if small."""
    height, width = array.shape[:2]
    if height < size or width < size:
        pad_h, pad_w = max(0, size - height), max(0, size - width)
        array = np.pad(array, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
        height, width = array.shape[:2]
    top = int(rng.integers(0, height - size + 1)) & ~1
    left = int(rng.integers(0, width - size + 1)) & ~1
    return array[top : top + size, left : left + size]


def _choose(kinds: tuple[str, ...], rng: np.random.Generator) -> str:
    """One of ``kinds``; a single kind draws no random number, so a one-kind policy makes the views it
    made before kinds existed."""
    return kinds[int(rng.integers(len(kinds)))] if len(kinds) > 1 else kinds[0]


def _degrade(image: Image.Image, policy: AugmentPolicy, rng: np.random.Generator, min_side: int) -> np.ndarray:
    """Rescaling (never below ``min_side`` px), blur, colour and noise, each with its policy's probability."""
    if rng.random() < policy.rescale_p:
        factor = float(rng.uniform(*policy.rescale))
        resample = Image.BILINEAR if rng.random() < 0.5 else Image.BICUBIC
        scale = max(factor, min_side / min(image.size))
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    if rng.random() < policy.blur_p:
        kind = _choose(policy.blur_kinds, rng)
        image = _blur(image, kind, float(rng.uniform(*policy.blur_sigma)))
    if rng.random() < policy.colour_p:
        image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.8, 1.2)))
        image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.8, 1.2)))
    array = np.asarray(image)
    if rng.random() < policy.noise_p:
        noise = rng.normal(0.0, float(rng.uniform(*policy.noise_sigma)), array.shape)
        array = np.clip(array + noise, 0, 255).astype(np.uint8)
    return array


def _maybe_jpeg(array: np.ndarray, policy: AugmentPolicy, rng: np.random.Generator) -> np.ndarray:
    """JPEG re-encoding with the policy's probability, at a quality drawn from its range."""
    if rng.random() < policy.jpeg_p:
        codec = _choose(policy.codecs, rng)
        quality = int(rng.integers(*policy.jpeg_quality, endpoint=True))
        return np.asarray(encode(Image.fromarray(array), codec, quality))
    return array


def augment(crop: np.ndarray, policy: AugmentPolicy, rng: np.random.Generator) -> np.ndarray:
    """One random training view (``policy.crop_size`` square, uint8 RGB) of a stored crop."""
    # Rescaling never goes below the crop: for the network's 128-px views of a 256-px crop a factor down to
    # 0.5 is a real down-scaling; for full-size (256-px) views only factors above 1 change anything
    # (``image_view`` down-scales whole images).
    array = random_crop(_degrade(Image.fromarray(crop), policy, rng, policy.crop_size), policy.crop_size, rng)
    array = _maybe_jpeg(array, policy, rng)  # last, on the final crop, as a user's re-upload would do it
    if rng.random() < 0.5:
        array = array[:, ::-1]
    array = np.rot90(array, int(rng.integers(0, 4)))
    return np.ascontiguousarray(array)


MIN_VIEW_SIDE = 16  # px: image_view never shrinks an image below this


def image_view(rgb: np.ndarray, policy: AugmentPolicy, rng: np.random.Generator) -> np.ndarray:
    """A random view of a whole decoded image (uint8 RGB, any size), changed as users and the augmented
    splits change images: a part of it kept, rescaled down or up, blurred, colour-changed, noised, and
    saved as JPEG last. The caller cuts its crop from it as prepare does (``crops.square_crop``), so a
    small result is up-scaled to the crop exactly as prepare up-scales a small image.
    """
    image = Image.fromarray(rgb)
    if rng.random() < policy.area_p:
        fraction = float(rng.uniform(*policy.area))
        width, height = max(1, round(image.width * fraction)), max(1, round(image.height * fraction))
        left = int(rng.integers(0, image.width - width + 1))
        top = int(rng.integers(0, image.height - height + 1))
        image = image.crop((left, top, left + width, top + height))
    array = _degrade(image, policy, rng, min(MIN_VIEW_SIDE, *image.size))
    return np.ascontiguousarray(_maybe_jpeg(array, policy, rng))  # JPEG last
