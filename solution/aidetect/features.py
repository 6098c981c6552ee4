"""Engineered features for the classical model family.

Computed on the same native-resolution crop the network sees. Six groups:
spectral (azimuthally averaged log power spectrum of the luma, Durall et al.
2020), residual (statistics of the NPR 2x2 residual and a Laplacian high-pass,
and the periodicity of neighbouring-pixel differences that up-sampling leaves),
colour (channel moments and saturation), periodic (peaks of the high-pass
residual's spectrum at periods 8, 4 and 2 pixels: the grids of up-sampling
decoders), co-occurrence (joint histogram of neighbouring pixel differences, a
compact SPAM model, Pevny et al. 2010: how natural sensor noise differs from a
decoder's output) and noise (cross-channel residual correlation, left by
demosaicing, and how evenly the noise spreads over 8x8 blocks).
"""
from __future__ import annotations

import functools
import warnings

import numpy as np

from .crops import corner_crops

N_SPECTRUM_BINS = 24

# Speed without changing a bit: the predict stages compute these features on up to four crops of every image,
# so they dominate its time. What depends on the crop's shape only (window, radial bins) is computed once per
# shape, and what several groups share (the float pixels, the luma, its Laplacian) once per crop; every
# feature is the same arithmetic on the same arrays as before, so the scores and the calibrated threshold
# are unchanged (tests/test_features.py compares them with the straightforward computation, bit for bit).


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _read_only(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for array in arrays:
        array.setflags(write=False)  # shared between calls through the cache
    return arrays


@functools.lru_cache(maxsize=16)
def _spectrum_geometry(h: int, w: int, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(Hann window, mask of the disc, radial bin of each pixel in it, pixels per bin) of an h x w spectrum."""
    window = np.outer(np.hanning(h), np.hanning(w))
    yy, xx = np.indices((h, w))
    radius = np.hypot(yy - h / 2, xx - w / 2) / (min(h, w) / 2)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(radius, edges) - 1, 0, bins - 1)
    inside = radius <= 1
    return _read_only(window, inside, which[inside], np.bincount(which[inside], minlength=bins))


def radial_spectrum(grey: np.ndarray, bins: int = N_SPECTRUM_BINS) -> np.ndarray:
    """Azimuthally averaged log power spectrum, normalised to sum 0 (shape only)."""
    window, inside, which, counts = _spectrum_geometry(grey.shape[0], grey.shape[1], bins)
    power = np.abs(np.fft.fftshift(np.fft.fft2((grey - grey.mean()) * window))) ** 2
    sums = np.bincount(which, weights=power[inside], minlength=bins)
    profile = np.log(sums / np.maximum(counts, 1) + 1e-8)
    return profile - profile.mean()


def _laplacian(channel: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian over the first two axes (of one channel, or of every channel at once)."""
    c = channel
    return 4 * c[1:-1, 1:-1] - c[:-2, 1:-1] - c[2:, 1:-1] - c[1:-1, :-2] - c[1:-1, 2:]


class _Crop:
    """The arrays several feature groups of one crop start from, each computed once."""

    def __init__(self, rgb: np.ndarray):
        self.rgb = rgb
        self.pixels = rgb.astype(np.float32)  # 0..255
        self.unit = self.pixels / 255.0  # 0..1
        self.luma = self.pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        self.luma_laplacian = _laplacian(self.luma / 255.0)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """``np.corrcoef(a.ravel(), b.ravel())[0, 1]``, the same float64 arithmetic without its copies and overhead.

    As numpy's covariance: both rows in one float64 array, each centred on its mean, their products by one
    ``dot`` of the rows with their transposed conjugate, scaled by 1 / (n - 1), then divided by both spreads.
    """
    rows = np.empty((2, a.size))
    rows[0], rows[1] = a.reshape(-1), b.reshape(-1)
    rows -= rows.mean(axis=1)[:, None]
    c = np.dot(rows, rows.T.conj())
    c *= np.true_divide(1, a.size - 1)
    spread = np.sqrt(np.diag(c))
    return float(np.clip(c[0, 1] / spread[0] / spread[1], -1, 1))


def _kurtosis(values: np.ndarray) -> float:
    """``scipy.stats.kurtosis(values)`` (Fisher, biased) of a 1-d array: its arithmetic without its checks."""
    mean = values.mean(axis=0, keepdims=True)
    square = (values - mean) ** 2
    m2, m4 = square.mean(axis=0), (square**2).mean(axis=0)
    if m2 <= (np.finfo(m2.dtype).eps * mean[0]) ** 2:
        return float("nan")  # a constant array, as scipy says
    return float(m4 / m2**2.0 - 3)


def residual_features(rgb: np.ndarray, crop: _Crop | None = None) -> list[float]:
    crop = crop or _Crop(rgb)
    h, w = rgb.shape[0] - rgb.shape[0] % 2, rgb.shape[1] - rgb.shape[1] % 2
    x = crop.unit[:h, :w]
    # Each pixel minus the top-left pixel of its 2x2 cell (the cell's pixel repeated, without building the copy).
    cells = x[::2, ::2]
    npr = (x.reshape(h // 2, 2, w // 2, 2, 3) - cells[:, None, :, None, :]).reshape(h, w, 3)
    even = (h, w) == rgb.shape[:2]
    grey = crop.luma / 255.0 if even else _luma(rgb[:h, :w]) / 255.0
    lap = crop.luma_laplacian if even else _laplacian(grey)
    dx = np.abs(np.diff(grey, axis=1))
    dy = np.abs(np.diff(grey, axis=0))
    energy = grey.std() + 1e-6
    feats = []
    for channel in range(3):
        r = npr[..., channel]
        feats += [np.abs(r).mean() / energy, r.std() / energy]
    feats += [
        np.abs(lap).mean() / energy,
        _kurtosis(lap.ravel()),
        # Up-sampling by 2 makes differences at even and odd positions differ.
        (dx[:, ::2].mean() - dx[:, 1::2].mean()) / (dx.mean() + 1e-6),
        (dy[::2].mean() - dy[1::2].mean()) / (dy.mean() + 1e-6),
        # Correlation of neighbouring differences: interpolation smooths them.
        _correlation(dx[:, :-1], dx[:, 1:]),
        _correlation(dy[:-1], dy[1:]),
    ]
    return feats


def _channel_sums(pixels: np.ndarray) -> np.ndarray:
    """``pixels.sum(axis=0)`` of an (n, channels) array, bit for bit, several times faster.

    Summing over the pixels of an interleaved image, numpy adds each pixel's channels to the running
    totals in pixel order (one float32 addition after another, not pairwise); a cumulative sum down each
    contiguous channel row makes the same additions in the same order without its per-pixel overhead.
    """
    return np.cumsum(np.ascontiguousarray(pixels.T), axis=1)[:, -1]


def _channel_mean_std(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x.mean(axis=(0, 1)), x.std(axis=(0, 1)))`` of an H x W x C float32 image, the same arithmetic as numpy's."""
    pixels = x.reshape(-1, x.shape[-1])
    n = len(pixels)
    mean = _channel_sums(pixels) / n
    deviation = pixels - mean
    np.multiply(deviation, deviation, out=deviation)
    return mean, np.sqrt(_channel_sums(deviation) / n)


def colour_features(rgb: np.ndarray, crop: _Crop | None = None) -> list[float]:
    x = (crop or _Crop(rgb)).unit
    red, green, blue = x[..., 0], x[..., 1], x[..., 2]
    # The largest and smallest channel, as max/min over the last axis (exact either way, several times faster).
    mx, mn = np.maximum(np.maximum(red, green), blue), np.minimum(np.minimum(red, green), blue)
    saturation = (mx - mn) / (mx + 1e-6)
    mean, std = _channel_mean_std(x)
    return [*mean, *std, saturation.mean(), saturation.std()]


PERIODS = (8, 4, 2)


def periodic_features(rgb: np.ndarray, crop: _Crop | None = None) -> list[float]:
    """Log-spectrum peak height of the luma high-pass at periods 8, 4, 2 (x, y, diagonal) over its neighbours."""
    lap = (crop or _Crop(rgb)).luma_laplacian
    n = min(lap.shape) // 8 * 8  # a multiple of 8: every period falls on an exact frequency bin
    lap = lap[:n, :n]
    log_power = np.log(np.abs(np.fft.fft2(lap - lap.mean())) + 1e-6)
    feats = []
    for profile in (log_power.mean(axis=0), log_power.mean(axis=1)):
        for period in PERIODS:
            f = n // period
            neighbours = np.r_[profile[max(1, f - 4) : f - 1], profile[f + 2 : f + 5]]
            feats.append(profile[f] - np.median(neighbours))
    for period in PERIODS:
        f = n // period
        patch = log_power[max(0, f - 3) : f + 4, max(0, f - 3) : f + 4]
        feats.append(log_power[f, f] - np.median(patch))
    return feats


COOC_T = 2  # differences are clipped to [-T, T]


def cooccurrence_features(rgb: np.ndarray) -> list[float]:
    """Joint histogram of two successive first-order differences of the green channel, rows and columns pooled."""
    green = rgb[..., 1].astype(np.int16)
    side = 2 * COOC_T + 1
    histogram = np.zeros(side * side)
    for diff in (np.diff(green, axis=1), np.diff(green, axis=0).T):
        d = np.clip(diff, -COOC_T, COOC_T) + COOC_T
        histogram += np.bincount((d[:, :-1] * side + d[:, 1:]).ravel(), minlength=side * side)
    return list(histogram / max(histogram.sum(), 1.0))


NOISE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def noise_features(rgb: np.ndarray, crop: _Crop | None = None) -> list[float]:
    laplacians = _laplacian((crop or _Crop(rgb)).pixels)  # of the three channels at once
    residual = [laplacians[..., c] for c in range(3)]
    g = residual[1]
    n = min(g.shape) // 8 * 8
    blocks = np.abs(g[:n, :n]).reshape(n // 8, 8, n // 8, 8).mean(axis=(1, 3)).ravel()
    spread = np.quantile(blocks, NOISE_QUANTILES) / (blocks.mean() + 1e-6)
    return [_correlation(residual[0], residual[1]), _correlation(residual[1], residual[2]),
            _correlation(residual[0], residual[2]),
            *spread, float((blocks < 1.0).mean())]


FEATURE_GROUPS = {
    "spectrum": [f"spectrum_{i}" for i in range(N_SPECTRUM_BINS)],
    "residual": [
        "npr_abs_r", "npr_std_r", "npr_abs_g", "npr_std_g", "npr_abs_b", "npr_std_b",
        "laplacian_abs", "laplacian_kurtosis", "dx_even_odd", "dy_even_odd", "dx_corr", "dy_corr",
    ],
    "colour": ["mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "saturation_mean", "saturation_std"],
    "periodic": [f"peak_{axis}_{p}" for axis in ("x", "y", "diag") for p in PERIODS],
    "cooccurrence": [f"cooc_{a}_{b}" for a in range(-COOC_T, COOC_T + 1) for b in range(-COOC_T, COOC_T + 1)],
    "noise": ["residual_corr_rg", "residual_corr_gb", "residual_corr_rb",
              *[f"block_noise_q{round(100 * q):02d}" for q in NOISE_QUANTILES], "flat_blocks"],
}
FEATURE_NAMES = [name for group in FEATURE_GROUPS.values() for name in group]


def image_features(rgb: np.ndarray) -> np.ndarray:
    """Feature vector (len(FEATURE_NAMES),) of one uint8 RGB crop."""
    # Flat crops make moments and correlations undefined: they become 0 below, silently.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        crop = _Crop(rgb)
        feats = np.concatenate([radial_spectrum(crop.luma), residual_features(rgb, crop), colour_features(rgb, crop),
                                periodic_features(rgb, crop), cooccurrence_features(rgb), noise_features(rgb, crop)])
    return np.nan_to_num(feats.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def batch_features(crops) -> np.ndarray:
    """Feature rows of a sequence of crops, computed on every usable CPU for large batches."""
    from .parallel import ordered_map

    if len(crops) == 0:
        return np.zeros((0, len(FEATURE_NAMES)))
    workers = None if len(crops) >= PARALLEL_MIN_CROPS else 1
    return np.stack(list(ordered_map(image_features, (np.asarray(c) for c in crops), workers, chunksize=8)))


class CornerFeatures:
    """Feature rows of the corner crops of several images: image i owns rows offsets[i]:offsets[i + 1]."""

    def __init__(self, features: np.ndarray, offsets: np.ndarray):
        features, offsets = np.asarray(features, dtype=np.float64), np.asarray(offsets, dtype=np.int64)
        if (offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(features)
                or np.any(np.diff(offsets) < 1) or features.shape[1:] != (len(FEATURE_NAMES),)):
            raise ValueError(f"inconsistent corner features: {features.shape} rows, offsets {offsets[:5]}...")
        self.features, self.offsets = features, offsets

    @classmethod
    def stack(cls, per_image: list[np.ndarray]) -> "CornerFeatures":
        offsets = np.concatenate([[0], np.cumsum([len(rows) for rows in per_image])])
        features = np.vstack(per_image) if per_image else np.zeros((0, len(FEATURE_NAMES)))
        return cls(features, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1


def corner_features(rgb: np.ndarray) -> np.ndarray:
    """Feature rows of an image's corner crops, the crops the classical model averages over."""
    return np.stack([image_features(crop) for crop in corner_crops(rgb)])


PARALLEL_MIN_CROPS = 64  # below this, starting worker processes costs more than it saves
