"""Perturbation audits: does the score follow generator traces, or format, size and content?

* Shortcut audit: the validation images are decoded from ``data/validation``,
  changed (re-encoded as PNG or JPEG, resized, cropped to another aspect,
  framed by a border) and sent through the pipeline's own preprocessing
  (``decode_rgb`` then ``square_crop``), so every change reaches the model the
  way a changed upload would.
* Frequency audit: the prepared crops are low- or high-pass filtered with
  ideal radial masks in the Fourier domain.
* Input-channel ablation: the network's fixed front end stacks residual
  channels (NPR, SRM) and, optionally, the colour image; zeroing a group shows
  how much of the decision rests on traces and how much on colour and content.
* Image statistics: texture, brightness and the original file's size and
  format, against the errors.
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from aidetect.crops import CROP_SIZE, square_crop
from aidetect.dataio import iter_batches
from aidetect.decode import decode_rgb
from aidetect.errors import DecodeError
from aidetect.labels import binary_label
from aidetect.paths import split_dir

from .loading import TaskModel, ValidationSet

SHORTCUT_VARIANTS = ("png", "jpeg_q95", "jpeg_q75", "jpeg_q50", "resize_x0.5", "resize_x1.5", "aspect_4:3", "border_16px")
FREQUENCY_CUTOFFS = {"low_pass": (0.75, 0.5, 0.25), "high_pass": (0.05, 0.25, 0.5)}  # fractions of Nyquist


# --- shortcut audit ------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    if fmt == "PNG":
        options.setdefault("compress_level", 1)  # lossless at any level; 1 is the fastest
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def variant_file(rgb: np.ndarray, variant: str) -> bytes:
    """The encoded file a user would upload after ``variant`` (lossless PNG unless JPEG is the point)."""
    image = Image.fromarray(rgb)
    width, height = image.size
    if variant == "png":
        return _encode(image, "PNG")
    if variant.startswith("jpeg_q"):
        return _encode(image, "JPEG", quality=int(variant[len("jpeg_q"):]))
    if variant.startswith("resize_x"):
        factor = float(variant[len("resize_x"):])
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        return _encode(image.resize(size, Image.BICUBIC), "PNG")
    if variant == "aspect_4:3":
        if width * 3 >= height * 4:
            new_w, new_h = max(1, round(height * 4 / 3)), height
        else:
            new_w, new_h = width, max(1, round(width * 3 / 4))
        left, top = (width - new_w) // 2, (height - new_h) // 2
        return _encode(image.crop((left, top, left + new_w, top + new_h)), "PNG")
    if variant == "border_16px":
        return _encode(ImageOps.expand(image, border=16, fill=(0, 0, 0)), "PNG")
    raise ValueError(f"unknown variant {variant!r}")


def variant_crop(rgb: np.ndarray, variant: str) -> np.ndarray:
    """The model-ready crop of the changed file, through the pipeline's own decode and crop."""
    return square_crop(decode_rgb(variant_file(rgb, variant)), CROP_SIZE)


def iter_originals(data: ValidationSet, positions: np.ndarray):
    """(position, decoded RGB) of the chosen crops' original files, in file order."""
    wanted = {(data.index["file"].iloc[p], int(data.index["row"].iloc[p])): int(p) for p in positions}
    for batch in iter_batches(split_dir(data.split), labelled=True, batch_size=32):
        for offset, encoded in enumerate(batch.images):
            position = wanted.get((batch.name, batch.first_row + offset))
            if position is not None:
                yield position, decode_rgb(encoded)


def shortcut_scores(models: list[TaskModel], data: ValidationSet, positions: np.ndarray,
                    prepared_scores: dict[str, np.ndarray], keep_going=lambda: True, chunk: int = 16) -> dict:
    """Scores of every variant of the chosen images for every model.

    A variant whose crop equals the prepared crop pixel for pixel keeps the
    prepared score (the model is deterministic); the count of such crops is
    itself a finding (e.g. a border that never reaches the centred crop).
    Returns {"positions", "done", "identical": {variant: bool[]},
    "scores": {task: {variant: float[]}}, "original_matches_prepared": int}.
    """
    variants = ("original",) + SHORTCUT_VARIANTS
    slot = {int(p): i for i, p in enumerate(positions)}
    n = len(positions)
    identical = {v: np.zeros(n, dtype=bool) for v in variants}
    done = np.zeros(n, dtype=bool)
    scores = {m.task: {v: np.full(n, np.nan) for v in variants} for m in models}
    pending: list[tuple[int, str, np.ndarray]] = []

    def flush():
        if not pending:
            return
        crops = np.stack([crop for _, _, crop in pending])
        for model in models:
            values = model.score(crops)
            for (i, variant, _), value in zip(pending, values):
                scores[model.task][variant][i] = value
        pending.clear()

    for position, rgb in iter_originals(data, positions):
        if not keep_going():
            break
        i = slot[position]
        prepared = np.asarray(data.crops[position])
        for variant in variants:
            try:
                crop = square_crop(rgb, CROP_SIZE) if variant == "original" else variant_crop(rgb, variant)
            except DecodeError:  # e.g. an up-scaled huge image over the decoder's pixel limit: left out (NaN)
                continue
            if crop.shape == prepared.shape and np.array_equal(crop, prepared):
                identical[variant][i] = True
                for model in models:
                    scores[model.task][variant][i] = prepared_scores[model.task][position]
            else:
                pending.append((i, variant, crop))
        done[i] = True
        if len(pending) >= chunk:
            flush()
    flush()
    return {"positions": np.asarray(positions), "done": done, "identical": identical, "scores": scores,
            "original_matches_prepared": int(identical["original"][done].sum())}


def _group_change(before: np.ndarray, after: np.ndarray, threshold: float) -> dict:
    scored = np.isfinite(before) & np.isfinite(after)
    before, after = before[scored], after[scored]
    if len(before) == 0:
        return {"n": 0}
    share_before, share_after = float(np.mean(before > threshold)), float(np.mean(after > threshold))
    return {
        "n": int(len(before)),
        "mean_score_before": float(np.mean(before)),
        "mean_score_after": float(np.mean(after)),
        "mean_shift": float(np.mean(after - before)),
        "share_generated_before": share_before,
        "share_generated_after": share_after,
        "share_generated_change": share_after - share_before,
    }


def summarise_shortcuts(raw: dict, source_class: np.ndarray, task: str, threshold: float) -> dict:
    """Per variant: mean score shift and change in the share called generated, per class and source."""
    done = raw["done"]
    sources = np.asarray(source_class)[raw["positions"]][done]
    labels = binary_label(sources)
    before = raw["scores"][task]["original"][done]
    out = {"n_images": int(done.sum()), "original_matches_prepared": raw["original_matches_prepared"], "variants": {}}
    for variant in SHORTCUT_VARIANTS:
        after = raw["scores"][task][variant][done]
        entry = {
            "n_identical_crops": int(raw["identical"][variant][done].sum()),
            "real": _group_change(before[labels == 0], after[labels == 0], threshold),
            "generated": _group_change(before[labels == 1], after[labels == 1], threshold),
            "per_source": {str(int(c)): _group_change(before[sources == c], after[sources == c], threshold)
                           for c in np.unique(sources)},
        }
        out["variants"][variant] = entry
    return out


# --- frequency audit -----------------------------------------------------------------


def radial_frequency(height: int, width: int) -> np.ndarray:
    """|f| per FFT bin, scaled so the Nyquist frequency along an axis is 1."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    return np.hypot(fy, fx) / 0.5


def frequency_filtered(crops: np.ndarray, kind: str, cutoff: float) -> np.ndarray:
    """Ideal radial low-pass (keep |f| <= cutoff) or high-pass (keep |f| > cutoff and the mean)."""
    crops = np.asarray(crops, dtype=np.float32)
    radius = radial_frequency(*crops.shape[1:3])
    mask = radius <= cutoff if kind == "low_pass" else radius > cutoff
    if kind == "high_pass":
        mask[0, 0] = True  # keep each image's mean colour, so the result stays a plausible image
    spectrum = np.fft.fft2(crops, axes=(1, 2))
    out = np.fft.ifft2(spectrum * mask[None, :, :, None], axes=(1, 2)).real
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def frequency_scores(models: list[TaskModel], crops: np.ndarray, keep_going=lambda: True, chunk: int = 32) -> dict:
    """{task: {kind: {cutoff: scores}}} for every filter (filters not reached are absent)."""
    out = {m.task: {kind: {} for kind in FREQUENCY_CUTOFFS} for m in models}
    for kind, cutoffs in FREQUENCY_CUTOFFS.items():
        for cutoff in cutoffs:
            if not keep_going():
                return out
            values = {m.task: [] for m in models}
            for start in range(0, len(crops), chunk):
                filtered = frequency_filtered(crops[start : start + chunk], kind, cutoff)
                for model in models:
                    values[model.task].append(model.score(filtered))
            for model in models:
                out[model.task][kind][cutoff] = np.concatenate(values[model.task])
    return out


def describe_scores(scores: np.ndarray, source_class: np.ndarray, threshold: float) -> dict:
    """Mean score per class, recall and FPR at the threshold, and ROC AUC."""
    labels = binary_label(source_class)
    real, generated = labels == 0, labels == 1
    return {
        "mean_score_real": float(np.mean(scores[real])) if real.any() else None,
        "mean_score_generated": float(np.mean(scores[generated])) if generated.any() else None,
        "recall_ai": float(np.mean(scores[generated] > threshold)) if generated.any() else None,
        "fpr": float(np.mean(scores[real] > threshold)) if real.any() else None,
        "roc_auc": float(roc_auc_score(labels, scores)) if real.any() and generated.any() else None,
    }


def summarise_frequency(filtered: dict, original: np.ndarray, source_class: np.ndarray, threshold: float) -> dict:
    return {"unfiltered": describe_scores(original, source_class, threshold),
            **{kind: {str(cutoff): describe_scores(scores, source_class, threshold)
                      for cutoff, scores in by_cutoff.items()}
               for kind, by_cutoff in filtered.items()}}


# --- input-channel ablation ----------------------------------------------------------


def front_end_groups(network) -> dict[str, list[int]] | None:
    """Channel groups of the fixed front end: NPR residual (3), SRM residuals (3), centred RGB (3, optional).

    The layout is that of ``aidetect.models.HighPassFrontEnd``; None when the
    network has another front end (then no ablation is attempted).
    """
    front = getattr(network, "front", None)
    if front is None or not hasattr(front, "out_channels"):
        return None
    groups = {"npr_residual": [0, 1, 2], "srm_residuals": [3, 4, 5]}
    if getattr(front, "with_rgb", False):
        groups["rgb"] = [6, 7, 8]
    return groups if sum(len(c) for c in groups.values()) == front.out_channels else None


def ablations(groups: dict[str, list[int]]) -> dict[str, list[int]]:
    """Which front-end channels each ablation zeroes."""
    out = {f"without_{name}": channels for name, channels in groups.items()}
    if "rgb" in groups:
        out["rgb_only"] = groups["npr_residual"] + groups["srm_residuals"]
    return out


def scores_without_channels(model: TaskModel, crops: np.ndarray, channels: list[int]) -> np.ndarray:
    """Network logits with the given front-end output channels set to zero (no residual / mid-grey colour)."""
    index = torch.tensor(channels)
    handle = model.network.front.register_forward_hook(lambda module, inputs, out: out.index_fill(1, index, 0.0))
    try:
        return model.explained_scores(crops)
    finally:
        handle.remove()


def mean_log_spectra(crops: np.ndarray, source_class: np.ndarray, chunk: int = 32, bins: int = 64) -> dict:
    """Mean log10 power spectrum (centred, Hann-windowed luma) of real and generated crops.

    Returns {"real", "generated": (H, W) arrays, "radial": {source: profile},
    "radial_frequency": bin centres (fractions of Nyquist)}.
    """
    height, width = crops.shape[1:3]
    window = np.outer(np.hanning(height), np.hanning(width)).astype(np.float32)
    radius = np.fft.fftshift(radial_frequency(height, width))
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(radius, edges) - 1, 0, bins - 1)
    inside = radius <= 1
    sums = {"real": np.zeros((height, width)), "generated": np.zeros((height, width))}
    counts = {"real": 0, "generated": 0}
    radial = {}
    labels = binary_label(source_class)
    for start in range(0, len(crops), chunk):
        block = np.asarray(crops[start : start + chunk], dtype=np.float32)
        luma = block @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        luma -= luma.mean(axis=(1, 2), keepdims=True)
        power = np.abs(np.fft.fftshift(np.fft.fft2(luma * window), axes=(1, 2))) ** 2
        log_power = np.log10(power + 1e-3)
        for i, spectrum in enumerate(log_power):
            name = "generated" if labels[start + i] == 1 else "real"
            sums[name] += spectrum
            counts[name] += 1
            source = str(int(source_class[start + i]))
            profile = np.bincount(which[inside], weights=spectrum[inside], minlength=bins) / np.maximum(
                np.bincount(which[inside], minlength=bins), 1)
            radial.setdefault(source, []).append(profile)
    out = {name: sums[name] / max(1, counts[name]) for name in sums}
    out["counts"] = counts
    out["radial"] = {source: np.mean(rows, axis=0) for source, rows in sorted(radial.items())}
    out["radial_frequency"] = (edges[:-1] + edges[1:]) / 2
    return out


def spectrum_summary(spectra: dict) -> dict:
    """Mean log10-power difference (generated - real) in three frequency bands."""
    radius = np.fft.fftshift(radial_frequency(*spectra["real"].shape))
    difference = spectra["generated"] - spectra["real"]
    bands = {"low (<0.25 Nyquist)": (0, 0.25), "mid (0.25-0.75)": (0.25, 0.75), "high (0.75-1)": (0.75, 1.0)}
    return {
        "n_real": spectra["counts"]["real"],
        "n_generated": spectra["counts"]["generated"],
        "log10_power_difference_generated_minus_real": {
            name: float(difference[(radius >= lo) & (radius < hi if hi < 1 else radius <= hi)].mean())
            for name, (lo, hi) in bands.items()},
    }


# --- image statistics against errors ----------------------------------------------


def crop_statistics(crops: np.ndarray, chunk: int = 64) -> pd.DataFrame:
    """Texture (mean |Laplacian| of the luma, 0..255 scale) and brightness (mean luma) of each crop."""
    rows = []
    for start in range(0, len(crops), chunk):
        luma = np.asarray(crops[start : start + chunk], dtype=np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        laplacian = (4 * luma[:, 1:-1, 1:-1] - luma[:, :-2, 1:-1] - luma[:, 2:, 1:-1]
                     - luma[:, 1:-1, :-2] - luma[:, 1:-1, 2:])
        rows.append(pd.DataFrame({"texture": np.abs(laplacian).mean(axis=(1, 2)), "brightness": luma.mean(axis=(1, 2))}))
    return pd.concat(rows, ignore_index=True)


def image_table(data: ValidationSet) -> pd.DataFrame:
    """Per crop: texture and brightness of the crop, and the original file's size and format when known."""
    table = crop_statistics(data.crops)
    table["source_class"] = data.source_class
    if data.metadata is not None:
        meta = data.metadata.reset_index(drop=True)
        for column in ("format", "width", "height", "megapixels", "jpeg_quality", "file_size"):
            if column in meta:
                table[column] = meta[column].values
    return table


def error_statistics(table: pd.DataFrame, scores: np.ndarray, predicted: np.ndarray) -> dict:
    """Errors against image statistics, per true class (real / generated).

    For each numeric statistic: its mean over errors and over correct images,
    and the Spearman correlation of the score with it inside the class; for the
    original format: the error rate per format.
    """
    labels = binary_label(table["source_class"].to_numpy())
    numeric = [c for c in ("texture", "brightness", "megapixels", "jpeg_quality") if c in table]
    out = {"statistics": numeric, "by_class": {}, "class_separation_auc": {}}
    for column in numeric:
        values = table[column].to_numpy(dtype=np.float64)
        ok = np.isfinite(values)
        if ok.sum() > 2 and len(np.unique(labels[ok])) == 2 and len(np.unique(values[ok])) > 1:
            # How well the statistic alone tells the classes apart (0.5 = not at all).
            out["class_separation_auc"][column] = float(roc_auc_score(labels[ok], values[ok]))
    for name, label in (("real", 0), ("generated", 1)):
        member = labels == label
        wrong = member & (predicted != label)
        entry = {"n": int(member.sum()), "n_errors": int(wrong.sum())}
        for column in numeric:
            values = table[column].to_numpy(dtype=np.float64)
            ok = member & np.isfinite(values)
            rho = spearmanr(values[ok], scores[ok]) if ok.sum() > 2 and len(np.unique(values[ok])) > 1 else None
            entry[column] = {
                "mean_errors": float(np.nanmean(values[wrong])) if (wrong & ok).any() else None,
                "mean_correct": float(np.nanmean(values[member & ~wrong])) if (member & ~wrong & ok).any() else None,
                "spearman_with_score": float(rho.statistic) if rho is not None else None,
                "spearman_p": float(rho.pvalue) if rho is not None else None,
            }
        if "format" in table:
            formats = table["format"].fillna("unknown").to_numpy()
            entry["error_rate_by_format"] = {
                str(fmt): {"n": int((member & (formats == fmt)).sum()),
                           "error_rate": float(np.mean(wrong[member & (formats == fmt)]))}
                for fmt in np.unique(formats[member])}
        out["by_class"][name] = entry
    return out


# --- grouped permutation importance ----------------------------------------------------


def grouped_permutation_importance(classical_log_odds, combine, features: np.ndarray, network_scores: np.ndarray | None,
                                   labels: np.ndarray, groups: dict[str, list[int]], rng: np.random.Generator,
                                   n_repeats: int = 5) -> dict:
    """ROC AUC lost by the whole detector when one feature group, or the network's score, is shuffled across images.

    ``classical_log_odds(features) -> (N,)`` scores the classical part from its feature rows;
    ``combine(network_scores, classical_scores) -> (N,)`` is the detector's fusion (the identity on the
    classical scores when ``network_scores`` is None). A group's columns are permuted together with
    one permutation per repeat, so correlated features of a group (e.g. the spectrum bins) lose their
    information jointly instead of standing in for each other. The network's share is measured the
    same way: its scores are permuted across images with the classical part held fixed.
    Returns {"baseline_auc", "groups": {name: {"auc_drop_mean", "auc_drop_std"}}, "network": {...} or None}.
    """
    features = np.asarray(features, dtype=np.float64)
    classical = classical_log_odds(features)
    baseline = roc_auc_score(labels, combine(network_scores, classical))

    def drops(make_scores) -> dict:
        lost = [baseline - roc_auc_score(labels, make_scores(rng.permutation(len(labels)))) for _ in range(n_repeats)]
        return {"auc_drop_mean": float(np.mean(lost)), "auc_drop_std": float(np.std(lost))}

    out = {"baseline_auc": float(baseline), "groups": {}, "network": None, "n_repeats": n_repeats,
           "n_images": int(len(labels))}
    for name, columns in groups.items():
        def shuffled(order, columns=columns):
            permuted = features.copy()
            permuted[:, columns] = features[order][:, columns]
            return combine(network_scores, classical_log_odds(permuted))
        out["groups"][name] = drops(shuffled)
    if network_scores is not None:
        out["network"] = drops(lambda order: combine(np.asarray(network_scores)[order], classical))
    return out
