"""Build the small, deterministic *plumbing demo* dataset in the exact course data layout.

This is a plumbing demo, not a benchmark: it exists so that the six stages, the tests and the
explainability code can run end to end in seconds on a laptop, with every split, column, dtype,
container format and colour mode that the course data may contain. Scores on it mean nothing.

Layout written under ``<out>`` (default ``<repo>/demo``), identical to the course data and to the
proxy benchmark::

    data/train/part-0.parquet                  image: binary, source_class: int8
    data/calibration/part-0.parquet            same
    data/calibration_augmented/part-0.parquet  same (the calibration images, perturbed)
    data/validation/part-0.parquet             same
    data/validation_augmented/part-0.parquet   same (the validation images, perturbed)
    data/predict/part-0.parquet                row_id: int32, image: binary (no labels)
    labels/predict_labels.parquet              row_id: int32, source_class: int8, generator: string
    MANIFEST.json                              counts per split and class, generators, provenance

Class 0, real photographs
    Random crops (each side about 96 to 320 px, any aspect) of the sample photographs bundled
    inside the scikit-image wheel (``skimage.data``; nothing is downloaded). The photos are split
    group-aware by the fixed table ``PHOTOS_BY_SPLIT``: a photo feeds exactly one split, and the
    stereo pair motorcycle_left / motorcycle_right counts as one group. Grey photos are expanded
    to three equal channels.

Classes 1..5, synthetic "generator fingerprints"
    Other crops of the photos assigned to the same split (never the exact crop used for a real
    image), down-scaled by 2 or 4 with area averaging and brought back to the crop size by one
    of five decoder-like up-samplers. Each leaves its own trace, like the last layers of a real
    generator do. None of them is an ordinary resampling filter (nearest, bilinear, bicubic,
    Lanczos): users up-scale real photos with those, so a detector must learn to ignore them.

    1. ``transposed-conv-3x3``: a stride-2 transposed convolution with a 3x3 kernel, padding 1
       and output padding 1, mixing the three channels: the up-sampling layer of the CycleGAN
       and pix2pix ResNet generators. Its fixed, seeded kernel is the triangle (linear
       interpolation) kernel plus noise on every tap of every channel pair, each output phase
       scaled to a gain of about 1 +- 3 %. A 3x3 kernel at stride 2 overlaps unevenly: in each
       2x2 output cell one pixel comes from one low-resolution pixel, two from two and one from
       four, so sharpness and noise alternate with period 2. Applied twice for factor 4.
    2. ``vae-decoder``: the up-sampling block of a latent-diffusion VAE decoder: nearest
       up-sampling by 2, then a fixed, seeded 3x3 convolution 3 -> 3 (a binomial blur plus
       noise on every tap and a little channel mixing, each output channel's weights summing to
       1), once per factor 2; then a GroupNorm-like per-channel rescale: each channel is
       centred on its own mean over the image, scaled by a seeded gain (1 +- 5 %) and shifted
       by a seeded offset (a few grey levels). With the plain symmetric blur, nearest
       up-sampling followed by the convolution would be bilinear up-sampling; the uneven
       learned-looking kernel makes the two output phases of each axis differ.
    3. ``transposed-conv``: a stride-2 transposed convolution with a fixed, seeded 4x4 kernel per
       channel (the bilinear kernel plus noise, each of the four output phases scaled to a gain
       of about 1 +- 4 %): the classic checkerboard artefact. Applied twice for factor 4.
    4. ``pixel-shuffle``: every low-resolution pixel becomes a 2x2 cell whose four sub-pixels
       are fixed linear mixes (identity plus seeded noise, plus a small bias; the perturbations
       average to zero over the cell) of that pixel's three channels, like a sub-pixel
       convolution layer. Applied twice for factor 4.
    5. ``random-decoder``: nearest up-sampling, then a fixed seeded two-layer decoder: a 3x3
       convolution 3 -> 8 channels (three of them a blur of the input plus noise, five random),
       ReLU, and a 1x1 convolution 8 -> 3 (identity on the blur channels plus random mixing),
       followed by an affine colour correction fitted once so that flat colours pass unchanged.

    Every result is rounded and clipped to uint8.

Encoding (identical rule for both classes, so the container gives nothing away)
    Each image gets JPEG (quality 75 to 98) with probability 0.45, PNG with 0.30 or WebP
    (quality 80 to 95) with 0.25. In every split, three real and three generated images are
    stored in another colour mode instead: a grey ``L`` JPEG or PNG, a palette ``P`` PNG and an
    opaque ``RGBA`` PNG. Sizes come from the same distribution for both classes.

Augmented splits
    ``calibration_augmented`` and ``validation_augmented`` hold the calibration and validation
    images in the same order, each changed by one to three of (random order): JPEG
    re-compression (quality 60 to 92), Gaussian blur (sigma 0.4 to 1.5), down-scaling (x0.5 to
    x0.9), additive Gaussian noise (sigma 2 to 8), brightness and contrast change, and a random
    crop of 80 to 95 % per side, then encoded by the same container rule (RGB only).

Determinism
    All randomness comes from numpy Generators seeded from ``--seed``; the same seed gives
    byte-identical parquet files. Each file is written to a temporary file in its folder and
    moved into place with ``os.replace``; ``data/train`` is written last, so its presence means
    the dataset is complete (the script skips the work when it exists, unless ``--force``).

Usage: ``python tools/make_demo_data.py [--out DIR] [--seed 0] [--force]``
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from scipy import ndimage

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "demo"
NOTE = "plumbing demo, not a benchmark"

# Group-aware assignment of the bundled photos to splits; a photo never feeds two splits.
# Each split gets colour and grey photos so that colour says nothing about the split.
PHOTOS_BY_SPLIT = {
    "train": ["astronaut", "motorcycle_left", "motorcycle_right", "retina",
              "camera", "grass", "brick"],
    "calibration": ["coffee", "immunohistochemistry", "coins", "gravel"],
    "validation": ["chelsea", "hubble_deep_field", "moon", "text"],
    "predict": ["rocket", "page", "cell", "clock"],
}
# (real images, images per generator) for each base split.
SPLIT_SIZES = {"train": (60, 12), "calibration": (40, 8), "validation": (40, 8), "predict": (40, 8)}
BASE_SPLITS = ["train", "calibration", "validation", "predict"]
AUGMENTED_SPLITS = {"calibration_augmented": "calibration", "validation_augmented": "validation"}

REAL_SOURCE = "skimage-photos"
GENERATORS = {
    1: ("transposed-conv-3x3", "down-scale x2 or x4 (area mean), stride-2 transposed convolution "
        "with a fixed seeded 3x3 kernel mixing the channels, padding 1, output padding 1 (triangle "
        "kernel + noise, phase gains 1 +- 3 %), applied once per factor 2: uneven overlap, period-2 "
        "sharpness pattern"),
    2: ("vae-decoder", "down-scale x2 or x4 (area mean), per factor 2 nearest up-sampling then a fixed "
        "seeded 3x3 conv 3->3 (binomial blur + noise, slight channel mixing), then a GroupNorm-like "
        "per-channel rescale about the image mean (seeded gain 1 +- 5 % and offset)"),
    3: ("transposed-conv", "down-scale x2 or x4 (area mean), stride-2 transposed convolution with a "
        "fixed seeded 4x4 kernel per channel (bilinear kernel + noise, phase gains 1 +- 4 %), "
        "applied once per factor 2: checkerboard artefacts"),
    4: ("pixel-shuffle", "down-scale x2 or x4 (area mean), pixel shuffle of a fixed seeded linear "
        "map: each output 2x2 cell is a fixed linear mix (identity + zero-mean noise, small "
        "zero-mean bias) of the low-res pixel's channels, applied once per factor 2"),
    5: ("random-decoder", "down-scale x2 or x4 (area mean), nearest up-sampling, then a fixed seeded "
        "decoder: 3x3 conv 3->8 (blur-like + random), ReLU, 1x1 conv 8->3 with an affine colour "
        "correction so that flat colours pass unchanged"),
}

MIN_SIDE, MAX_SIDE = 96, 320
# Taps of a 3x3 stride-2 transposed convolution (padding 1) that reach an output pixel of even
# index (the middle one) and of odd index (the two outer ones), along one axis.
PHASE_TAPS = (slice(1, 2), slice(0, 3, 2))
DOWNSCALE_FACTORS, DOWNSCALE_PROBS = (2, 4), (0.7, 0.3)
FORMATS, FORMAT_PROBS = ("JPEG", "PNG", "WEBP"), (0.45, 0.30, 0.25)
SPECIAL_MODES = ("L", "P", "RGBA")
AUGMENTATIONS = ("jpeg", "blur", "downscale", "noise", "brightness_contrast", "crop")

IMAGE_SCHEMA = pa.schema([("image", pa.binary()), ("source_class", pa.int8())])
PREDICT_SCHEMA = pa.schema([("row_id", pa.int32()), ("image", pa.binary())])
LABELS_SCHEMA = pa.schema([("row_id", pa.int32()), ("source_class", pa.int8()),
                           ("generator", pa.string())])


# ----------------------------------------------------------------------------------------------
# Source photos
# ----------------------------------------------------------------------------------------------

def load_photos() -> dict[str, np.ndarray]:
    """All photos of PHOTOS_BY_SPLIT as HxWx3 uint8 arrays, read from the installed wheel."""
    import skimage.data as skdata

    left, right, _disparity = skdata.stereo_motorcycle()
    loaders = {"motorcycle_left": lambda: left, "motorcycle_right": lambda: right}
    photos = {}
    for name in sorted(n for names in PHOTOS_BY_SPLIT.values() for n in names):
        array = loaders[name]() if name in loaders else getattr(skdata, name)()
        array = np.asarray(array, dtype=np.uint8)
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        photos[name] = np.ascontiguousarray(array[:, :, :3])
    return photos


def sample_crop_box(rng: np.random.Generator, photo: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop; sides 96..320 px, at most the photo size
    rounded down to a multiple of 4 (so a generated crop can be down-scaled by 4 in place)."""
    height_max, width_max = (photo.shape[0] // 4) * 4, (photo.shape[1] // 4) * 4
    height = min(int(rng.integers(MIN_SIDE, MAX_SIDE + 1)), height_max)
    width = min(int(rng.integers(MIN_SIDE, MAX_SIDE + 1)), width_max)
    top = int(rng.integers(0, photo.shape[0] - height + 1))
    left = int(rng.integers(0, photo.shape[1] - width + 1))
    return top, left, height, width


def draw_crop(rng, photo, used_boxes: set, factor: int = 1):
    """A crop box not used before in this split, on a region that is not flat (black retina
    borders, empty sky). With factor > 1 the box grows to a multiple of factor (the caller
    trims back), which still fits because sides are capped at multiples of 4."""
    for _ in range(100):
        top, left, height, width = sample_crop_box(rng, photo)
        padded_h, padded_w = -(-height // factor) * factor, -(-width // factor) * factor
        top = min(top, photo.shape[0] - padded_h)
        left = min(left, photo.shape[1] - padded_w)
        box = (top, left, height, width)
        region = photo[top:top + padded_h, left:left + padded_w]
        if box not in used_boxes and region.std() >= 6.0:
            used_boxes.add(box)
            return box, region
    raise RuntimeError("could not find a fresh, textured crop")


# ----------------------------------------------------------------------------------------------
# The five generator fingerprints (all numpy, float64 in 0..255)
# ----------------------------------------------------------------------------------------------

def downscale_area(image: np.ndarray, factor: int) -> np.ndarray:
    height, width, channels = image.shape
    blocks = image.reshape(height // factor, factor, width // factor, factor, channels)
    return blocks.mean(axis=(1, 3))


def upsample_nearest(image: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def make_fingerprints(seed: int) -> dict:
    """The fixed, seeded parameters of generators 1 to 5."""
    # Generators 1 and 2 draw from a stream of their own, so that the parameters of 3, 4 and 5
    # do not depend on theirs.
    rng = np.random.default_rng([seed, 1_000_003, 12])
    # 1: transposed-conv-3x3 kernel, shape (out, in, ky, kx), triangle kernel on the diagonal.
    triangle = np.outer([0.5, 1.0, 0.5], [0.5, 1.0, 0.5])
    tconv3_kernel = np.eye(3)[:, :, None, None] * triangle + 0.04 * rng.standard_normal((3, 3, 3, 3))
    for row_taps in PHASE_TAPS:
        for col_taps in PHASE_TAPS:
            taps = tconv3_kernel[:, :, row_taps, col_taps]
            gain = 1.0 + 0.03 * rng.standard_normal((3, 1, 1, 1))
            tconv3_kernel[:, :, row_taps, col_taps] = taps / taps.sum(axis=(1, 2, 3), keepdims=True) * gain
    # 2: vae-decoder convolution (out, in, ky, kx), and the gain and offset per channel of its
    # GroupNorm-like rescale.
    binomial = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0
    own_channel = binomial + 0.08 * rng.standard_normal((3, 1, 3, 3))
    vae_conv = np.eye(3)[:, :, None, None] * own_channel + 0.01 * rng.standard_normal((3, 3, 3, 3))
    vae_conv /= vae_conv.sum(axis=(1, 2, 3), keepdims=True)
    vae_gain = 1.0 + 0.05 * rng.standard_normal(3)
    vae_offset = 2.0 * rng.standard_normal(3)

    rng = np.random.default_rng([seed, 1_000_003])
    # 3: transposed-conv kernel, shape (4, 4, channels).
    bilinear_1d = np.array([1.0, 3.0, 3.0, 1.0]) / 4.0
    kernel = np.outer(bilinear_1d, bilinear_1d)[:, :, None] + 0.03 * rng.standard_normal((4, 4, 3))
    for phase_row in range(2):
        for phase_col in range(2):
            taps = kernel[phase_row::2, phase_col::2]
            gain = 1.0 + 0.04 * rng.standard_normal(3)
            kernel[phase_row::2, phase_col::2] = taps / taps.sum(axis=(0, 1)) * gain
    # 4: pixel-shuffle maps, one 3x3 channel mix and bias per sub-pixel of the 2x2 cell. The
    # perturbations average to zero over the cell: a periodic 2x2 pattern, no global colour cast.
    mix_noise = 0.05 * rng.standard_normal((4, 3, 3))
    shuffle_mix = np.eye(3)[None] + mix_noise - mix_noise.mean(axis=0)
    bias_noise = 3.0 * rng.standard_normal((4, 3))
    shuffle_bias = bias_noise - bias_noise.mean(axis=0)
    # 5: random decoder.
    blur = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
    conv1 = 0.1 * rng.standard_normal((8, 3, 3, 3))  # (out, in, ky, kx)
    for channel in range(3):
        conv1[channel] *= 0.3
        conv1[channel, channel] += blur
    bias1 = 2.0 * rng.standard_normal(8)
    conv2 = np.zeros((3, 8))
    conv2[:, :3] = np.eye(3) + 0.05 * rng.standard_normal((3, 3))
    conv2[:, 3:] = 0.1 * rng.standard_normal((3, 5))
    # Fold an affine colour correction into the last layer so that flat colours come out
    # (nearly) unchanged: the decoder's trace sits in edges and texture, not in a colour cast.
    flat_colours = rng.uniform(0.0, 255.0, (256, 3))
    hidden = np.maximum(flat_colours @ conv1.sum(axis=(2, 3)).T + bias1, 0.0)
    raw = np.c_[hidden @ conv2.T, np.ones(len(flat_colours))]
    correction, *_ = np.linalg.lstsq(raw, flat_colours, rcond=None)  # (4, 3): linear + offset
    bias2 = correction[3]
    conv2 = correction[:3].T @ conv2
    return {"tconv3_kernel": tconv3_kernel, "vae_conv": vae_conv, "vae_gain": vae_gain,
            "vae_offset": vae_offset, "tconv_kernel": kernel, "shuffle_mix": shuffle_mix,
            "shuffle_bias": shuffle_bias, "conv1": conv1, "bias1": bias1, "conv2": conv2, "bias2": bias2}


def upsample_transposed_conv_3x3(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Stride-2 transposed convolution, 3x3 kernel (out, in, ky, kx), padding 1, output padding 1
    (output = 2x input), as ``torch.nn.ConvTranspose2d``; the input is edge-padded by one pixel
    so that the last odd row and column get both their taps."""
    height, width, _ = image.shape
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    full = np.zeros((2 * (height + 2) + 1, 2 * (width + 2) + 1, kernel.shape[0]))
    for ky in range(3):
        for kx in range(3):
            full[ky:ky + 2 * (height + 2):2, kx:kx + 2 * (width + 2):2] += padded @ kernel[:, :, ky, kx].T
    return full[3:3 + 2 * height, 3:3 + 2 * width]


def upsample_transposed_conv(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Stride-2 depthwise transposed convolution, 4x4 kernel, padding 1 (output = 2x input);
    the input is edge-padded by one pixel so that borders get all their taps."""
    height, width, channels = image.shape
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    full = np.zeros((2 * (height + 2) + 2, 2 * (width + 2) + 2, channels))
    for ky in range(4):
        for kx in range(4):
            full[ky:ky + 2 * (height + 2):2, kx:kx + 2 * (width + 2):2] += padded * kernel[ky, kx]
    return full[3:3 + 2 * height, 3:3 + 2 * width]


def upsample_pixel_shuffle(image: np.ndarray, mix: np.ndarray, bias: np.ndarray) -> np.ndarray:
    height, width, channels = image.shape
    sub_pixels = np.einsum("hwc,pdc->hwpd", image, mix) + bias  # (h, w, 4, channels)
    cells = sub_pixels.reshape(height, width, 2, 2, channels)
    return cells.transpose(0, 2, 1, 3, 4).reshape(2 * height, 2 * width, channels)


def conv3x3(image: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    height, width, _ = image.shape
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    out = np.zeros((height, width, weights.shape[0])) + bias
    for ky in range(3):
        for kx in range(3):
            out += padded[ky:ky + height, kx:kx + width] @ weights[:, :, ky, kx].T
    return out


def upsample_vae_decoder(image: np.ndarray, factor: int, fingerprints: dict) -> np.ndarray:
    """Nearest up-sampling by 2 and the 3x3 convolution, once per factor 2, then the
    GroupNorm-like rescale (one group per channel, its learned scale and shift in grey levels)."""
    out = image
    for _ in range(factor // 2):
        out = conv3x3(upsample_nearest(out, 2), fingerprints["vae_conv"], np.zeros(3))
    mean = out.mean(axis=(0, 1))
    return mean + fingerprints["vae_gain"] * (out - mean) + fingerprints["vae_offset"]


def apply_generator(generator: int, crop: np.ndarray, factor: int, fingerprints: dict) -> np.ndarray:
    """Down-scale ``crop`` (sides multiples of ``factor``) and up-sample it back with generator
    1..5; returns uint8 of the same shape."""
    low = downscale_area(crop.astype(np.float64), factor)
    if generator == 1:
        out = low
        for _ in range(factor // 2):
            out = upsample_transposed_conv_3x3(out, fingerprints["tconv3_kernel"])
    elif generator == 2:
        out = upsample_vae_decoder(low, factor, fingerprints)
    elif generator == 3:
        out = low
        for _ in range(factor // 2):
            out = upsample_transposed_conv(out, fingerprints["tconv_kernel"])
    elif generator == 4:
        out = low
        for _ in range(factor // 2):
            out = upsample_pixel_shuffle(out, fingerprints["shuffle_mix"], fingerprints["shuffle_bias"])
    elif generator == 5:
        hidden = np.maximum(conv3x3(upsample_nearest(low, factor), fingerprints["conv1"],
                                    fingerprints["bias1"]), 0.0)
        out = hidden @ fingerprints["conv2"].T + fingerprints["bias2"]
    else:
        raise ValueError(f"unknown generator {generator}")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Encoding and augmentation
# ----------------------------------------------------------------------------------------------

def encode(rng: np.random.Generator, pixels: np.ndarray, mode: str = "RGB") -> tuple[bytes, dict]:
    """Encode an RGB uint8 array by the shared container rule; ``mode`` L/P/RGBA forces a
    lossless-friendly container (L: JPEG or PNG; P and RGBA: PNG)."""
    image = Image.fromarray(pixels, mode="RGB")
    container = str(rng.choice(FORMATS, p=FORMAT_PROBS))
    if mode == "L":
        image = image.convert("L")
        container = "JPEG" if container == "JPEG" else "PNG"
    elif mode == "P":
        image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        container = "PNG"
    elif mode == "RGBA":
        image = image.convert("RGBA")  # opaque alpha
        container = "PNG"
    options, info = {}, {"format": container, "mode": mode}
    if container == "JPEG":
        options["quality"] = info["quality"] = int(rng.integers(75, 99))
    elif container == "WEBP":
        options["quality"] = info["quality"] = int(rng.integers(80, 96))
    buffer = io.BytesIO()
    image.save(buffer, format=container, **options)
    return buffer.getvalue(), info


def decode_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def augment(rng: np.random.Generator, pixels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """One to three of AUGMENTATIONS in random order (ranges as in the proxy README)."""
    count = int(rng.integers(1, 4))
    chosen = [AUGMENTATIONS[i] for i in rng.permutation(len(AUGMENTATIONS))[:count]]
    image = pixels
    for name in chosen:
        if name == "jpeg":
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=int(rng.integers(60, 93)))
            image = decode_rgb(buffer.getvalue())
        elif name == "blur":
            sigma = float(rng.uniform(0.4, 1.5))
            blurred = ndimage.gaussian_filter(image.astype(np.float64), sigma=(sigma, sigma, 0))
            image = np.clip(np.rint(blurred), 0, 255).astype(np.uint8)
        elif name == "downscale":
            scale = float(rng.uniform(0.5, 0.9))
            size = (max(32, round(image.shape[1] * scale)), max(32, round(image.shape[0] * scale)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
        elif name == "noise":
            noisy = image + rng.normal(0.0, rng.uniform(2.0, 8.0), image.shape)
            image = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        elif name == "brightness_contrast":
            contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-20.0, 20.0)
            mean = image.mean()
            changed = (image - mean) * contrast + mean + brightness
            image = np.clip(np.rint(changed), 0, 255).astype(np.uint8)
        elif name == "crop":
            keep = rng.uniform(0.80, 0.95, size=2)
            height, width = (max(16, int(round(s * k))) for s, k in zip(image.shape[:2], keep))
            top = int(rng.integers(0, image.shape[0] - height + 1))
            left = int(rng.integers(0, image.shape[1] - width + 1))
            image = image[top:top + height, left:left + width]
    return np.ascontiguousarray(image), chosen


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------

def build_split(split: str, photos: dict, fingerprints: dict, seed: int) -> tuple[list, list]:
    """Encoded images and provenance records of one base split, in shuffled order."""
    rng = np.random.default_rng([seed, BASE_SPLITS.index(split)])
    n_real, n_per_generator = SPLIT_SIZES[split]
    classes = [0] * n_real + [c for c in GENERATORS for _ in range(n_per_generator)]
    order = rng.permutation(len(classes))
    classes = [classes[i] for i in order]

    names = PHOTOS_BY_SPLIT[split]
    # Balanced photo use within each class group (real / generated).
    is_real = np.array(classes) == 0
    photo_of = np.empty(len(classes), dtype=object)
    for group in (is_real, ~is_real):
        n_group = int(group.sum())
        photo_of[group] = [names[i] for i in rng.permutation(np.resize(np.arange(len(names)), n_group))]
    # Three real and three generated images get a special colour mode.
    modes = np.full(len(classes), "RGB", dtype=object)
    for group in (is_real, ~is_real):
        modes[rng.choice(np.flatnonzero(group), size=len(SPECIAL_MODES), replace=False)] = SPECIAL_MODES

    used_boxes = {name: set() for name in names}
    images, records = [], []
    for index, source_class in enumerate(classes):
        photo_name = str(photo_of[index])
        photo = photos[photo_name]
        record = {"source_class": source_class, "photo": photo_name}
        if source_class == 0:
            box, region = draw_crop(rng, photo, used_boxes[photo_name])
            pixels = region
            record["generator"] = REAL_SOURCE
        else:
            factor = int(rng.choice(DOWNSCALE_FACTORS, p=DOWNSCALE_PROBS))
            box, region = draw_crop(rng, photo, used_boxes[photo_name], factor)
            pixels = apply_generator(source_class, region, factor, fingerprints)[:box[2], :box[3]]
            record["generator"] = GENERATORS[source_class][0]
            record["downscale"] = factor
        data, info = encode(rng, np.ascontiguousarray(pixels), str(modes[index]))
        record.update(info, box=list(box))
        images.append(data)
        records.append(record)
    return images, records


def build_augmented(split: str, base_images: list, base_records: list, seed: int):
    rng = np.random.default_rng([seed, 100 + list(AUGMENTED_SPLITS).index(split)])
    images, records = [], []
    for data, base in zip(base_images, base_records):
        pixels, operations = augment(rng, decode_rgb(data))
        encoded, info = encode(rng, pixels)
        images.append(encoded)
        records.append({"source_class": base["source_class"], "photo": base["photo"],
                        "generator": base["generator"], "augmentations": operations,
                        "size": [int(pixels.shape[1]), int(pixels.shape[0])], **info})
    return images, records


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

def write_atomic(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file in ``path``'s folder, then move it in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp_name)
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; the data is read by other users
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_parquet(path: Path, columns: dict, schema: pa.Schema) -> None:
    table = pa.table(columns, schema=schema)
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def counts(records: list) -> dict:
    by_class = {str(c): 0 for c in range(6)}
    for record in records:
        by_class[str(record["source_class"])] += 1
    return {"n": len(records), "by_class": by_class}


def make_demo_data(out_dir: Path, seed: int = 0) -> dict:
    """Write the demo dataset under ``out_dir`` (overwriting) and return its manifest.

    The manifest holds counts per split and class (top-level keys = split names, as in the
    proxy), ``generators`` (classes 1..5), ``note``, ``seed``, ``source_photos`` (photo names per
    split) and ``images``: one provenance record per row of each split, in row order
    (source_class, photo, generator, crop box, format, mode, ...).
    """
    out_dir = Path(out_dir)
    photos = load_photos()
    fingerprints = make_fingerprints(seed)

    images, records = {}, {}
    for split in BASE_SPLITS:
        images[split], records[split] = build_split(split, photos, fingerprints, seed)
    for split, base in AUGMENTED_SPLITS.items():
        images[split], records[split] = build_augmented(split, images[base], records[base], seed)

    manifest = {"note": NOTE, "seed": seed}
    for split in ["train", "calibration", "calibration_augmented", "validation",
                  "validation_augmented", "predict"]:
        manifest[split] = counts(records[split])
    manifest["generators"] = {
        str(c): {"name": name, "description": description} for c, (name, description) in GENERATORS.items()
    }
    manifest["real_source"] = {
        "name": REAL_SOURCE,
        "description": "random crops (96..320 px per side) of the sample photographs bundled with "
                       "scikit-image (skimage.data), split group-aware by photo",
    }
    manifest["encoding"] = ("same rule for every image: JPEG q75-98 (p 0.45), PNG (p 0.30), WebP "
                            "q80-95 (p 0.25); per split 3 real + 3 generated images in modes L "
                            "(JPEG/PNG), P (PNG), RGBA (PNG)")
    manifest["augmentations"] = ("calibration/validation images in the same order, each changed by 1-3 "
                                 "of: JPEG q60-92, Gaussian blur sigma 0.4-1.5, down-scale x0.5-0.9, "
                                 "Gaussian noise sigma 2-8, brightness/contrast, crop 80-95 %")
    manifest["source_photos"] = PHOTOS_BY_SPLIT
    manifest["generator_code"] = generator_code_hash()
    manifest["images"] = records

    data_dir = out_dir / "data"
    # data/train is written last: its presence marks a complete dataset.
    for split in ["calibration", "calibration_augmented", "validation", "validation_augmented"]:
        write_parquet(data_dir / split / "part-0.parquet",
                      {"image": images[split], "source_class": [r["source_class"] for r in records[split]]},
                      IMAGE_SCHEMA)
    row_ids = list(range(len(images["predict"])))
    write_parquet(data_dir / "predict" / "part-0.parquet",
                  {"row_id": row_ids, "image": images["predict"]}, PREDICT_SCHEMA)
    write_parquet(out_dir / "labels" / "predict_labels.parquet",
                  {"row_id": row_ids,
                   "source_class": [r["source_class"] for r in records["predict"]],
                   "generator": [r["generator"] for r in records["predict"]]},
                  LABELS_SCHEMA)
    text = json.dumps(manifest, indent=1) + "\n"
    write_atomic(out_dir / "MANIFEST.json", lambda tmp: Path(tmp).write_text(text))
    write_parquet(data_dir / "train" / "part-0.parquet",
                  {"image": images["train"], "source_class": [r["source_class"] for r in records["train"]]},
                  IMAGE_SCHEMA)
    return manifest


def generator_code_hash() -> str:
    """Hash of this script: a dataset written by other generator code is rebuilt, never silently reused."""
    import hashlib

    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def is_current(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a complete demo dataset written by this very script."""
    manifest = out_dir / "MANIFEST.json"
    train_dir = out_dir / "data" / "train"
    if not (manifest.is_file() and train_dir.is_dir() and any(train_dir.glob("*.parquet"))):
        return False
    try:
        return json.loads(manifest.read_text()).get("generator_code") == generator_code_hash()
    except (OSError, ValueError):
        return False


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if the dataset exists")
    return parser


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if not args.force and is_current(args.out):
        print(f"demo data already exists in {args.out} (use --force to rebuild)")
        return 0
    start = time.perf_counter()
    manifest = make_demo_data(args.out, seed=args.seed)
    summary = ", ".join(f"{split} {manifest[split]['n']}" for split in
                        ["train", "calibration", "calibration_augmented", "validation",
                         "validation_augmented", "predict"])
    print(f"wrote demo data to {args.out} in {time.perf_counter() - start:.1f} s: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
