"""Engineered features for the classical model family.

Computed on the same native-resolution crop the network sees. Three groups:
spectral (azimuthally averaged log power spectrum of the luma, Durall et al.
2020), residual (statistics of the NPR 2x2 residual and a Laplacian high-pass,
and the periodicity of neighbouring-pixel differences that up-sampling leaves),
and colour (channel moments and saturation).
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import kurtosis

N_SPECTRUM_BINS = 24


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def radial_spectrum(grey: np.ndarray, bins: int = N_SPECTRUM_BINS) -> np.ndarray:
    """Azimuthally averaged log power spectrum, normalised to sum 0 (shape only)."""
    window = np.outer(np.hanning(grey.shape[0]), np.hanning(grey.shape[1]))
    power = np.abs(np.fft.fftshift(np.fft.fft2((grey - grey.mean()) * window))) ** 2
    h, w = grey.shape
    yy, xx = np.indices((h, w))
    radius = np.hypot(yy - h / 2, xx - w / 2) / (min(h, w) / 2)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(radius, edges) - 1, 0, bins - 1)
    inside = radius <= 1
    sums = np.bincount(which[inside], weights=power[inside], minlength=bins)
    counts = np.bincount(which[inside], minlength=bins)
    profile = np.log(sums / np.maximum(counts, 1) + 1e-8)
    return profile - profile.mean()


def residual_features(rgb: np.ndarray) -> list[float]:
    x = rgb.astype(np.float32) / 255.0
    h, w = x.shape[0] - x.shape[0] % 2, x.shape[1] - x.shape[1] % 2
    x = x[:h, :w]
    up = np.repeat(np.repeat(x[::2, ::2], 2, axis=0), 2, axis=1)
    npr = x - up
    grey = _luma(rgb[:h, :w]) / 255.0
    lap = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    dx = np.abs(np.diff(grey, axis=1))
    dy = np.abs(np.diff(grey, axis=0))
    energy = grey.std() + 1e-6
    feats = []
    for channel in range(3):
        r = npr[..., channel]
        feats += [np.abs(r).mean() / energy, r.std() / energy]
    feats += [
        np.abs(lap).mean() / energy,
        float(kurtosis(lap.ravel(), fisher=True)),
        # Up-sampling by 2 makes differences at even and odd positions differ.
        (dx[:, ::2].mean() - dx[:, 1::2].mean()) / (dx.mean() + 1e-6),
        (dy[::2].mean() - dy[1::2].mean()) / (dy.mean() + 1e-6),
        # Correlation of neighbouring differences: interpolation smooths them.
        float(np.corrcoef(dx[:, :-1].ravel(), dx[:, 1:].ravel())[0, 1]),
        float(np.corrcoef(dy[:-1].ravel(), dy[1:].ravel())[0, 1]),
    ]
    return feats


def colour_features(rgb: np.ndarray) -> list[float]:
    x = rgb.astype(np.float32) / 255.0
    mx, mn = x.max(axis=2), x.min(axis=2)
    saturation = (mx - mn) / (mx + 1e-6)
    return [*x.mean(axis=(0, 1)), *x.std(axis=(0, 1)), saturation.mean(), saturation.std()]


FEATURE_GROUPS = {
    "spectrum": [f"spectrum_{i}" for i in range(N_SPECTRUM_BINS)],
    "residual": [
        "npr_abs_r", "npr_std_r", "npr_abs_g", "npr_std_g", "npr_abs_b", "npr_std_b",
        "laplacian_abs", "laplacian_kurtosis", "dx_even_odd", "dy_even_odd", "dx_corr", "dy_corr",
    ],
    "colour": ["mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "saturation_mean", "saturation_std"],
}
FEATURE_NAMES = [name for group in FEATURE_GROUPS.values() for name in group]


def image_features(rgb: np.ndarray) -> np.ndarray:
    """Feature vector (len(FEATURE_NAMES),) of one uint8 RGB crop."""
    # Flat crops make moments and correlations undefined: they become 0 below, silently.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        feats = np.concatenate([radial_spectrum(_luma(rgb)), residual_features(rgb), colour_features(rgb)])
    return np.nan_to_num(feats.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def batch_features(crops: np.ndarray) -> np.ndarray:
    return np.stack([image_features(c) for c in crops]) if len(crops) else np.zeros((0, len(FEATURE_NAMES)))
