"""The classical features are computed fast and exactly as the straightforward computation does.

The predict stages compute them on up to four crops of every image, so they are
written for speed (shared intermediate arrays, per-shape constants cached); the
scores, and so the threshold calibrated on them, must not change by a bit. The
reference below is the plain form of each changed group.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import kurtosis

from aidetect import features


def _luma(rgb):
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _laplacian(c):
    return 4 * c[1:-1, 1:-1] - c[:-2, 1:-1] - c[2:, 1:-1] - c[1:-1, :-2] - c[1:-1, 2:]


def reference_radial_spectrum(grey, bins=features.N_SPECTRUM_BINS):
    window = np.outer(np.hanning(grey.shape[0]), np.hanning(grey.shape[1]))
    power = np.abs(np.fft.fftshift(np.fft.fft2((grey - grey.mean()) * window))) ** 2
    h, w = grey.shape
    yy, xx = np.indices((h, w))
    radius = np.hypot(yy - h / 2, xx - w / 2) / (min(h, w) / 2)
    which = np.clip(np.digitize(radius, np.linspace(0, 1, bins + 1)) - 1, 0, bins - 1)
    inside = radius <= 1
    sums = np.bincount(which[inside], weights=power[inside], minlength=bins)
    profile = np.log(sums / np.maximum(np.bincount(which[inside], minlength=bins), 1) + 1e-8)
    return profile - profile.mean()


def reference_residual(rgb):
    x = rgb.astype(np.float32) / 255.0
    h, w = x.shape[0] - x.shape[0] % 2, x.shape[1] - x.shape[1] % 2
    x = x[:h, :w]
    npr = x - np.repeat(np.repeat(x[::2, ::2], 2, axis=0), 2, axis=1)
    grey = _luma(rgb[:h, :w]) / 255.0
    lap = _laplacian(grey)
    dx, dy = np.abs(np.diff(grey, axis=1)), np.abs(np.diff(grey, axis=0))
    energy = grey.std() + 1e-6
    feats = []
    for channel in range(3):
        r = npr[..., channel]
        feats += [np.abs(r).mean() / energy, r.std() / energy]
    return feats + [np.abs(lap).mean() / energy, float(kurtosis(lap.ravel(), fisher=True)),
                    (dx[:, ::2].mean() - dx[:, 1::2].mean()) / (dx.mean() + 1e-6),
                    (dy[::2].mean() - dy[1::2].mean()) / (dy.mean() + 1e-6),
                    float(np.corrcoef(dx[:, :-1].ravel(), dx[:, 1:].ravel())[0, 1]),
                    float(np.corrcoef(dy[:-1].ravel(), dy[1:].ravel())[0, 1])]


def reference_colour(rgb):
    x = rgb.astype(np.float32) / 255.0
    mx, mn = x.max(axis=2), x.min(axis=2)
    saturation = (mx - mn) / (mx + 1e-6)
    return [*x.mean(axis=(0, 1)), *x.std(axis=(0, 1)), saturation.mean(), saturation.std()]


def reference_periodic(rgb):
    lap = _laplacian(_luma(rgb) / 255.0)
    n = min(lap.shape) // 8 * 8
    lap = lap[:n, :n]
    log_power = np.log(np.abs(np.fft.fft2(lap - lap.mean())) + 1e-6)
    feats = []
    for profile in (log_power.mean(axis=0), log_power.mean(axis=1)):
        for period in features.PERIODS:
            f = n // period
            feats.append(profile[f] - np.median(np.r_[profile[max(1, f - 4) : f - 1], profile[f + 2 : f + 5]]))
    for period in features.PERIODS:
        f = n // period
        feats.append(log_power[f, f] - np.median(log_power[max(0, f - 3) : f + 4, max(0, f - 3) : f + 4]))
    return feats


def reference_noise(rgb):
    x = rgb.astype(np.float32)
    residual = [_laplacian(x[..., c]) for c in range(3)]

    def corr(a, b):
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    g = residual[1]
    n = min(g.shape) // 8 * 8
    blocks = np.abs(g[:n, :n]).reshape(n // 8, 8, n // 8, 8).mean(axis=(1, 3)).ravel()
    spread = np.quantile(blocks, features.NOISE_QUANTILES) / (blocks.mean() + 1e-6)
    return [corr(residual[0], residual[1]), corr(residual[1], residual[2]), corr(residual[0], residual[2]),
            *spread, float((blocks < 1.0).mean())]


def reference_features(rgb):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # flat crops: moments are undefined, as in image_features
        feats = np.concatenate([reference_radial_spectrum(_luma(rgb)), reference_residual(rgb), reference_colour(rgb),
                                reference_periodic(rgb), features.cooccurrence_features(rgb), reference_noise(rgb)])
    return np.nan_to_num(feats.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def textured(height, width, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([np.sin(x / 17 + c) * np.cos(y / 29) * 80 + 128 for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


CROPS = {
    "textured 256": lambda: textured(256, 256, 0),
    "noise 256": lambda: np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8),
    "flat": lambda: np.full((256, 256, 3), 200, dtype=np.uint8),
    "odd 255x257": lambda: textured(255, 257, 2),
    "small 40x72": lambda: textured(40, 72, 3),
}


@pytest.mark.parametrize("name", list(CROPS))
def test_features_equal_the_straightforward_computation_bit_for_bit(name):
    crop = CROPS[name]()
    for _ in range(2):  # the second time from the cached per-shape constants
        fast = features.image_features(crop)
        assert fast.shape == (len(features.FEATURE_NAMES),)
        assert np.array_equal(fast, reference_features(crop)), name


ARRAYS = {
    "texture": lambda: textured(64, 48, 4).astype(np.float32) / 255.0,
    "noise": lambda: np.random.default_rng(5).random((64, 48, 3), dtype=np.float32),
    "constant": lambda: np.full((64, 48, 3), 0.7, dtype=np.float32),
    "zero": lambda: np.zeros((64, 48, 3), dtype=np.float32),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_the_fast_statistics_equal_numpy_and_scipy_bit_for_bit(name):
    """The colour moments, correlations and kurtosis are reimplemented for speed: the same bits, even where
    they are undefined (nan for constant input)."""
    x = ARRAYS[name]()
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, std = features._channel_mean_std(x)
        assert np.array_equal(mean, x.mean(axis=(0, 1))) and np.array_equal(std, x.std(axis=(0, 1)))
        a, b = x[1:, :, 0], x[:-1, ::-1, 1]  # strided views, as the features pass them
        assert np.array_equal(features._correlation(a, b), float(np.corrcoef(a.ravel(), b.ravel())[0, 1]),
                              equal_nan=True)
        values = x[..., 2].ravel()
        assert np.array_equal(features._kurtosis(values), float(kurtosis(values, fisher=True)), equal_nan=True)
