"""The shortcut flip of the benchmark (and its two halves), and the compression-cue benchmark's debiasing."""
import io
from pathlib import Path

import numpy as np
from PIL import Image

from flipped import PARTS, VARIANTS, flip_image
import jpeg_bias


def encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_each_half_of_the_flip_changes_only_its_own_cue():
    rng = np.random.default_rng(0)
    real = encode(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8), "JPEG")
    generated = encode(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), "PNG")
    real_pixels = np.asarray(opened(real).convert("RGB"))
    out = {parts: (opened(flip_image(real, 0, np.random.default_rng(5), parts)),
                   opened(flip_image(generated, 3, np.random.default_rng(5), parts)))
           for parts in (PARTS, *VARIANTS.values())}

    real_img, gen_img = out[("format",)]
    assert real_img.format == "PNG" and np.array_equal(np.asarray(real_img), real_pixels)  # lossless: same pixels
    assert gen_img.format == "JPEG" and gen_img.size == (256, 256)

    real_img, gen_img = out[("geometry",)]
    assert real_img.size == (375, 375) and gen_img.format == "PNG"
    assert sorted(gen_img.size) == [192, 256]

    real_img, gen_img = out[PARTS]
    assert real_img.format == "PNG" and real_img.size == (375, 375)
    assert gen_img.format == "JPEG" and gen_img.size == out[("geometry",)][1].size  # same cut in both variants


def test_debiasing_compresses_only_the_generated_crops_it_should():
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    source = np.array([0, 1, 2, 5])
    was_jpeg = np.array([True, False, False, True])  # the real photo and the last generated image were JPEG files
    qualities = np.array([95, 96])
    changed = {variant: [not np.array_equal(a, b) for a, b in zip(
        crops, jpeg_bias.debiased_crops(crops, source, was_jpeg, variant, qualities, np.random.default_rng(0)))]
        for variant in jpeg_bias.VARIANTS[1:]}
    assert changed["debiased (real qualities)"] == [False, True, True, False]  # like the real photos: compressed once
    assert changed["debiased (quality 60-100)"] == [False, True, True, True]
