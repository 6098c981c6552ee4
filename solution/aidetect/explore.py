"""Exploration: every characteristic of the files that could give the class away.

One streaming pass per labelled split records, for each image, how it is
stored (format, mode, size, file size, JPEG quality and subsampling, EXIF,
ICC, frames) and a few pixel statistics. From these rows we write

- ``metadata.parquet``: one row per image (split, file, row, source_class, fields),
- ``exploration.json``: per split and per source class summaries, exact
  duplicates within and across splits, undecodable rows, and the *shortcut
  probe*: how well a model that sees only file metadata, never pixels,
  predicts real vs generated,
- ``figures/*.png``: the plots the report shows.

If the metadata alone predicts the label, a detector can learn the storage
instead of the generation traces ("Fake or JPEG?", Grommelt et al. 2024);
the probe measures how large that temptation is on this data.

Only labelled splits are read (never ``predict/``) and nothing is written
under the data folder. The pass stops early, marking ``truncated``, when less
than ``RESERVE_FRACTION`` of the stage's budget is left, so that the cleaning
that follows in clean.py still finishes in time.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, JpegImagePlugin

from .budget import Deadline
from .dataio import atomic_path, iter_batches, write_json
from .decode import open_image, to_rgb
from .errors import DecodeError
from .labels import AI_GENERATED, BINARY_NAMES, REAL, SOURCE_NAMES, binary_label
from .paths import EVALUATION_SPLITS, LABELLED_SPLITS, data_dir, split_dir
from .settings import DETECTION

log = logging.getLogger(__name__)

# Stop reading when less than this share of the stage's budget is left.
RESERVE_FRACTION = 0.30
BATCH_SIZE = 64
# Pixel statistics: colour on a strided copy of about this many pixels per side,
# texture (Laplacian) on a native-resolution centre crop of at most this size,
# because downsampling by an image-size dependent factor would itself smooth
# large images more than small ones and turn size into "sharpness".
COLOUR_SIDE = 128
TEXTURE_CROP = 256
EXAMPLES_PER_CLASS = 6
THUMBNAIL_SIDE = 112
QUANTILES = {"min": 0.0, "p05": 0.05, "median": 0.5, "p95": 0.95, "max": 1.0}
MAX_LISTED_ROWS = 200  # row references kept in the JSON per list
PROBE_RANDOM_STATE = 0
FIGURE_DPI = 110

# The IJG / ITU-T T.81 Annex K luminance quantisation table, row-major
# (Pillow >= 8.3 exposes ``image.quantization`` in this natural order).
STANDARD_LUMA_TABLE = np.array(
    [
        16, 11, 10, 16, 24, 40, 51, 61,
        12, 12, 14, 19, 26, 58, 60, 55,
        14, 13, 16, 24, 40, 57, 69, 56,
        14, 17, 22, 29, 51, 87, 80, 62,
        18, 22, 37, 56, 68, 109, 103, 77,
        24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101,
        72, 92, 95, 98, 112, 100, 103, 99,
    ],
    dtype=np.float64,
)
_SUBSAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}

METADATA_FIELDS = (
    "sha1", "file_size", "decodable", "error", "format", "mode", "width", "height", "aspect",
    "megapixels", "jpeg_quality", "jpeg_standard_table", "jpeg_subsampling", "jpeg_progressive",
    "exif_present", "exif_tags", "icc_present", "n_frames",
    "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "saturation_mean", "laplacian_abs_mean",
)


# ----------------------------------------------------------------------------- per image


def ijg_table(quality: int) -> np.ndarray:
    """The luminance table libjpeg writes for ``quality`` (baseline, 1..255)."""
    quality = int(min(100, max(1, quality)))
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((STANDARD_LUMA_TABLE * scale + 50) / 100), 1, 255)


def estimate_jpeg_quality(luma_table) -> float:
    """libjpeg-style quality (1..100) from a 64-entry luminance quantisation table.

    The table is compared with the Annex K table: scale = mean(100 * Q / T),
    quality = (200 - scale) / 2 for scale <= 100, else 5000 / scale.
    """
    table = np.asarray(luma_table, dtype=np.float64).reshape(-1)[:64]
    scale = float(np.mean(100.0 * table / STANDARD_LUMA_TABLE))
    quality = (200.0 - scale) / 2.0 if scale <= 100 else 5000.0 / scale
    return round(float(np.clip(quality, 1.0, 100.0)), 1)


def _is_standard_table(luma_table, quality: float) -> bool:
    """Whether the table is exactly an IJG table (libjpeg, PIL) near ``quality``."""
    table = np.asarray(luma_table, dtype=np.float64).reshape(-1)[:64]
    centre = int(round(quality))
    return any(np.array_equal(table, ijg_table(q)) for q in range(max(1, centre - 2), min(100, centre + 2) + 1))


def _empty_metadata(data: bytes | None) -> dict:
    row = dict.fromkeys(METADATA_FIELDS)
    raw = data or b""
    row.update(sha1=hashlib.sha1(raw).hexdigest(), file_size=len(raw), decodable=False, format="unknown",
               exif_present=False, exif_tags=0, icc_present=False)
    return row


def _storage_fields(image: Image.Image, row: dict) -> None:
    """Fields read from the header and the file's info, not from the pixels."""
    row["format"] = image.format or "unknown"
    row["mode"] = image.mode
    row["width"], row["height"] = image.size
    row["aspect"] = image.width / image.height if image.height else None
    row["megapixels"] = image.width * image.height / 1e6
    row["n_frames"] = int(getattr(image, "n_frames", 1) or 1)
    row["icc_present"] = bool(image.info.get("icc_profile"))
    try:
        row["exif_tags"] = len(image.getexif())
    except Exception:
        row["exif_tags"] = 0
    row["exif_present"] = bool(row["exif_tags"] or image.info.get("exif"))
    if row["format"] == "JPEG":
        tables = getattr(image, "quantization", None) or {}
        if 0 in tables and len(tables[0]) >= 64:
            row["jpeg_quality"] = estimate_jpeg_quality(tables[0])
            row["jpeg_standard_table"] = _is_standard_table(tables[0], row["jpeg_quality"])
        try:
            if len(getattr(image, "layer", ())) == 1:
                row["jpeg_subsampling"] = "grayscale"
            else:
                row["jpeg_subsampling"] = _SUBSAMPLING_NAMES.get(JpegImagePlugin.get_sampling(image), "other")
        except Exception:
            row["jpeg_subsampling"] = "other"
        row["jpeg_progressive"] = bool(image.info.get("progressive") or image.info.get("progression"))


def pixel_statistics(rgb: np.ndarray) -> dict:
    """Channel means and stds, mean HSV saturation (on a strided copy) and
    mean |Laplacian| of the luminance (on a native-resolution centre crop)."""
    height, width = rgb.shape[:2]
    step = max(1, max(height, width) // COLOUR_SIDE)
    small = rgb[::step, ::step].astype(np.float32) / 255.0
    means = small.mean(axis=(0, 1))
    stds = small.std(axis=(0, 1))
    top, bottom = small.max(axis=2), small.min(axis=2)
    saturation = np.where(top > 0, (top - bottom) / np.maximum(top, 1e-6), 0.0)

    y0, x0 = max(0, (height - TEXTURE_CROP) // 2), max(0, (width - TEXTURE_CROP) // 2)
    crop = rgb[y0:y0 + TEXTURE_CROP, x0:x0 + TEXTURE_CROP].astype(np.float32)
    luma = crop @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if luma.shape[0] >= 3 and luma.shape[1] >= 3:
        laplacian = (luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1])
        texture = float(np.abs(laplacian).mean())
    else:
        texture = 0.0
    return {
        "mean_r": float(means[0]), "mean_g": float(means[1]), "mean_b": float(means[2]),
        "std_r": float(stds[0]), "std_g": float(stds[1]), "std_b": float(stds[2]),
        "saturation_mean": float(saturation.mean()), "laplacian_abs_mean": texture,
    }


def image_metadata(data: bytes | None) -> dict:
    """Storage and pixel characteristics of one encoded image.

    Never raises for bad bytes: an image that cannot be decoded gets
    ``decodable=False``, ``error`` saying why, and whatever its header told.
    Colour statistics are on a 0..1 scale, the Laplacian on 0..255.
    """
    row = _empty_metadata(data)
    try:
        image = open_image(data)
        _storage_fields(image, row)
        rgb = to_rgb(image)
    except Exception as exc:  # any failure, decoding or converting, makes this a bad image
        row["error"] = str(exc) if isinstance(exc, DecodeError) else f"{type(exc).__name__}: {exc}"
        try:  # the header may still say what the file claims to be
            with Image.open(io.BytesIO(data or b"")) as header:
                _storage_fields(header, row)
        except Exception:
            pass
        return row
    row.update(pixel_statistics(rgb))
    row["decodable"] = True
    return row


def _thumbnail(data: bytes) -> np.ndarray | None:
    try:
        image = Image.fromarray(to_rgb(open_image(data)))
    except Exception:
        return None
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BICUBIC)
    return np.asarray(image)


# ----------------------------------------------------------------------------- streaming pass


def _class_name(source_class: int) -> str:
    return SOURCE_NAMES.get(int(source_class), f"class_{int(source_class)}")


def collect_metadata(splits, deadline: Deadline, reserve_fraction: float = RESERVE_FRACTION,
                     examples_split: str = "train"):
    """Stream the splits and return (rows DataFrame, examples, read_info).

    ``examples`` maps source class to up to ``EXAMPLES_PER_CLASS`` thumbnails
    from ``examples_split``; ``read_info`` holds rows read per split, missing
    splits and whether the pass was cut short by the deadline.
    """
    reserve_seconds = reserve_fraction * deadline.timeout_seconds
    rows: list[dict] = []
    examples: dict[int, list[np.ndarray]] = {}
    info = {"rows_read": {}, "missing_splits": [], "truncated": False, "seconds": {}}
    for split in splits:
        folder = split_dir(split)
        if not folder.is_dir():
            log.warning("exploration: split %s not found at %s, skipped", split, folder)
            info["missing_splits"].append(split)
            continue
        started, count = time.monotonic(), 0
        for batch in iter_batches(folder, labelled=True, batch_size=BATCH_SIZE):
            if deadline.remaining() < reserve_seconds:
                info["truncated"] = True
                break
            file_name = batch.name
            for offset, (data, source_class) in enumerate(zip(batch.images, batch.source_class)):
                row = {"split": split, "file": file_name, "row": batch.first_row + offset,
                       "source_class": int(source_class)}
                row.update(image_metadata(data))
                rows.append(row)
                wanted = examples.setdefault(int(source_class), [])
                if split == examples_split and row["decodable"] and len(wanted) < EXAMPLES_PER_CLASS:
                    thumb = _thumbnail(data)
                    if thumb is not None:
                        wanted.append(thumb)
            count += len(batch.images)
        info["rows_read"][split] = count
        info["seconds"][split] = round(time.monotonic() - started, 2)
        log.info("exploration: %s: %d images read in %.1fs (%s)%s", split, count, info["seconds"][split],
                 deadline.describe(), " - stopped early, budget reserve reached" if info["truncated"] else "")
        if info["truncated"]:
            break
    frame = pd.DataFrame(rows, columns=["split", "file", "row", "source_class", *METADATA_FIELDS])
    return frame, {k: v for k, v in examples.items() if v}, info


# ----------------------------------------------------------------------------- summaries


def _finite(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _quantiles(values: pd.Series) -> dict | None:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return None
    return {name: round(float(values.quantile(q)), 4) for name, q in QUANTILES.items()}


def _share(values: pd.Series) -> float | None:
    return round(float(values.astype(bool).mean()), 4) if len(values) else None


def _counts(values: pd.Series) -> dict:
    return {str(k): int(v) for k, v in values.fillna("unknown").value_counts().items()}


def summarise(rows: pd.DataFrame) -> dict:
    """Descriptive statistics of one group of metadata rows."""
    good = rows[rows["decodable"].astype(bool)]
    jpeg = rows[rows["format"] == "JPEG"]
    square = (rows["width"] == rows["height"]) & rows["width"].notna()
    return {
        "count": int(len(rows)),
        "undecodable": int((~rows["decodable"].astype(bool)).sum()),
        "formats": _counts(rows["format"]),
        "modes": _counts(rows["mode"]),
        "width": _quantiles(rows["width"]),
        "height": _quantiles(rows["height"]),
        "aspect": _quantiles(rows["aspect"]),
        "megapixels": _quantiles(rows["megapixels"]),
        "file_size_bytes": _quantiles(rows["file_size"]),
        "square_share": _share(square[rows["width"].notna()]),
        "distinct_sizes": int(rows.dropna(subset=["width", "height"]).groupby(["width", "height"]).ngroups),
        "jpeg_count": int(len(jpeg)),
        "jpeg_quality": _quantiles(jpeg["jpeg_quality"]),
        "jpeg_standard_table_share": _share(jpeg["jpeg_standard_table"].dropna()),
        "jpeg_subsampling": _counts(jpeg["jpeg_subsampling"]) if len(jpeg) else {},
        "jpeg_progressive_share": _share(jpeg["jpeg_progressive"].dropna()),
        "exif_share": _share(rows["exif_present"]),
        "icc_share": _share(rows["icc_present"]),
        "multi_frame_share": _share(rows["n_frames"].fillna(1) > 1),
        "pixel_stats_mean": {
            name: _finite(round(float(good[name].mean()), 4)) if len(good) else None
            for name in ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "saturation_mean",
                         "laplacian_abs_mean")
        },
    }


def summarise_splits(rows: pd.DataFrame) -> dict:
    """Per split: the whole split, each source class and each binary label."""
    out = {}
    for split, group in rows.groupby("split", sort=False):
        labels = binary_label(group["source_class"])
        out[split] = {
            "all": summarise(group),
            "by_source_class": {_class_name(c): summarise(g) for c, g in group.groupby("source_class")},
            "by_label": {BINARY_NAMES[b]: summarise(group[labels == b]) for b in (REAL, AI_GENERATED)
                         if (labels == b).any()},
        }
    return out


def _row_ref(record) -> dict:
    return {"split": record.split, "file": record.file, "row": int(record.row),
            "source_class": int(record.source_class)}


def find_duplicates(rows: pd.DataFrame) -> dict:
    """Exact duplicates (same bytes, by SHA-1) within each split and across splits.

    ``duplicate_rows`` counts the redundant copies (rows whose bytes already
    appeared earlier in the split); ``label_conflicts`` counts byte-identical
    groups carrying more than one source class.
    """
    within = {}
    for split, group in rows.groupby("split", sort=False):
        groups = [g for _, g in group.groupby("sha1", sort=False) if len(g) > 1]
        within[split] = {
            "duplicate_rows": int(sum(len(g) - 1 for g in groups)),
            "groups": len(groups),
            "label_conflicts": int(sum(g["source_class"].nunique() > 1 for g in groups)),
            "examples": [[_row_ref(r) for r in g.itertuples()] for g in groups[:20]],
        }
    across = {}
    split_names = list(dict.fromkeys(rows["split"]))
    hashes = {s: set(rows.loc[rows["split"] == s, "sha1"]) for s in split_names}
    for i, first in enumerate(split_names):
        for second in split_names[i + 1:]:
            shared = hashes[first] & hashes[second]
            pair = rows[rows["sha1"].isin(shared) & rows["split"].isin([first, second])]
            conflicts = sum(g["source_class"].nunique() > 1 for _, g in pair.groupby("sha1"))
            across[f"{first}~{second}"] = {
                "shared_images": len(shared),
                "label_conflicts": int(conflicts),
                "examples": [[_row_ref(r) for r in g.itertuples()]
                             for _, g in list(pair.groupby("sha1", sort=False))[:20]],
            }
    return {
        "within_split": within,
        "across_splits": across,
        "total_within_split_duplicate_rows": int(sum(v["duplicate_rows"] for v in within.values())),
        "total_cross_split_shared_images": int(sum(v["shared_images"] for v in across.values())),
    }


def list_undecodable(rows: pd.DataFrame) -> dict:
    bad = rows[~rows["decodable"].astype(bool)]
    return {
        "total": int(len(bad)),
        "count": {s: int((bad["split"] == s).sum()) for s in dict.fromkeys(rows["split"])},
        "rows": [dict(_row_ref(r), error=r.error) for r in bad.head(MAX_LISTED_ROWS).itertuples()],
        "rows_listed_max": MAX_LISTED_ROWS,
    }


# ----------------------------------------------------------------------------- shortcut probe

# The cues a detector could read from the file instead of the pixels.
CUE_GROUPS = {
    "format": ["format="],
    "mode": ["mode="],
    "size_aspect": ["width", "height", "aspect", "is_square"],
    "file_size": ["log_file_size"],
    "jpeg_quality": ["jpeg_quality", "jpeg_quality_missing"],
    "exif": ["exif_present"],
    "icc": ["icc_present"],
}


def metadata_features(rows: pd.DataFrame, formats: list[str], modes: list[str]) -> pd.DataFrame:
    """File-metadata feature matrix; categories outside ``formats``/``modes`` get all zeros."""
    features = {f"format={f}": (rows["format"] == f).astype(float) for f in formats}
    features.update({f"mode={m}": (rows["mode"] == m).astype(float) for m in modes})
    width = rows["width"].astype(float).fillna(0.0)
    height = rows["height"].astype(float).fillna(0.0)
    quality = rows["jpeg_quality"].astype(float)
    features.update(
        width=width,
        height=height,
        aspect=rows["aspect"].astype(float).fillna(0.0),
        is_square=((width == height) & (width > 0)).astype(float),
        log_file_size=np.log10(rows["file_size"].astype(float).clip(lower=1.0)),
        jpeg_quality=quality.fillna(-1.0),
        jpeg_quality_missing=quality.isna().astype(float),
        exif_present=rows["exif_present"].astype(bool).astype(float),
        icc_present=rows["icc_present"].astype(bool).astype(float),
    )
    return pd.DataFrame(features, index=rows.index)


def _group_columns(columns, group: str) -> list[str]:
    return [c for c in columns if any(c == p or (p.endswith("=") and c.startswith(p)) for p in CUE_GROUPS[group])]


def _scores(y_true: np.ndarray, proba: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score, roc_curve

    predicted = (proba >= 0.5).astype(int)
    result = {
        "n": int(len(y_true)),
        "accuracy": round(float(accuracy_score(y_true, predicted)), 4),
        "balanced_accuracy": round(float(balanced_accuracy_score(y_true, predicted)), 4),
        "roc_auc": None,
        "recall_ai_at_fpr_0.2": None,
    }
    if len(np.unique(y_true)) == 2:
        result["roc_auc"] = round(float(roc_auc_score(y_true, proba)), 4)
        fpr, tpr, _ = roc_curve(y_true, proba)
        result["recall_ai_at_fpr_0.2"] = round(float(tpr[fpr <= DETECTION.max_fpr].max()), 4)
    return result


def shortcut_probe(rows: pd.DataFrame, train_split: str = "train", eval_splits=EVALUATION_SPLITS) -> dict:
    """Predict real vs generated from file metadata alone, fit on ``train_split``.

    Reports, per evaluation split, the full metadata model (a random forest),
    the majority-class baseline, and a depth-2 decision tree per cue group, so
    that one can read off which stored characteristic gives the class away.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    rows = rows[rows["decodable"].astype(bool)]
    train = rows[rows["split"] == train_split]
    evaluated = [s for s in eval_splits if (rows["split"] == s).any()]
    y_train = binary_label(train["source_class"])
    if len(train) == 0 or len(np.unique(y_train)) < 2 or not evaluated:
        return {"skipped": f"needs decodable rows of both labels in {train_split} and one of {list(eval_splits)}"}

    formats = sorted(train["format"].dropna().unique())
    modes = sorted(train["mode"].dropna().unique())
    x_train = metadata_features(train, formats, modes)
    model = RandomForestClassifier(n_estimators=200, min_samples_leaf=2, random_state=PROBE_RANDOM_STATE, n_jobs=1)
    model.fit(x_train.values, y_train)
    majority = int(np.bincount(y_train).argmax())
    single = {}
    for group in CUE_GROUPS:
        columns = _group_columns(x_train.columns, group)
        if columns:
            tree = DecisionTreeClassifier(max_depth=2, random_state=PROBE_RANDOM_STATE)
            single[group] = (columns, tree.fit(x_train[columns].values, y_train))

    result = {
        "model": "RandomForestClassifier(n_estimators=200, min_samples_leaf=2, random_state=0)",
        "single_cue_model": "DecisionTreeClassifier(max_depth=2, random_state=0)",
        "features": list(x_train.columns),
        "cue_groups": {g: cols for g, (cols, _) in single.items()},
        "train_split": train_split,
        "train_rows": int(len(train)),
        "train_label_counts": {BINARY_NAMES[b]: int((y_train == b).sum()) for b in (REAL, AI_GENERATED)},
        "evaluation": {},
        "single_cue": {},
        "strongest_cue": {},
    }
    for split in evaluated:
        part = rows[rows["split"] == split]
        y_true = binary_label(part["source_class"])
        x_eval = metadata_features(part, formats, modes)
        scores = _scores(y_true, model.predict_proba(x_eval.values)[:, 1])
        baseline = (y_true == majority).mean()
        scores["majority_baseline_accuracy"] = round(float(baseline), 4)
        scores["majority_class"] = BINARY_NAMES[majority]
        result["evaluation"][split] = scores
        cues = {group: _scores(y_true, tree.predict_proba(x_eval[cols].values)[:, 1])
                for group, (cols, tree) in single.items()}
        result["single_cue"][split] = cues
        # Balanced accuracy, because plain accuracy rewards predicting the majority class.
        strongest = max(cues, key=lambda g: (cues[g]["balanced_accuracy"], cues[g]["roc_auc"] or 0.0))
        result["strongest_cue"][split] = strongest
    return result


# ----------------------------------------------------------------------------- figures


def _class_colour(source_class: int):
    import matplotlib.pyplot as plt

    if source_class == REAL:
        return "#222222"
    return plt.get_cmap("tab10")((int(source_class) - 1) % 10)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(fig)


def _save_quantised(fig, path: Path, max_bytes: int = 190_000) -> None:
    """Photo thumbnails compress badly as RGB PNG: store them with a palette,
    as few colours as needed to stay under ``max_bytes`` (figures are committed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(fig)
    buffer.seek(0)
    rgb = Image.open(buffer).convert("RGB")
    for colours in (256, 128, 64):
        encoded = io.BytesIO()
        rgb.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            encoded, format="PNG", optimize=True)
        if encoded.tell() <= max_bytes:
            break
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.getvalue())


def _figure_class_distribution(rows, path):
    import matplotlib.pyplot as plt

    counts = rows.groupby(["split", "source_class"]).size().unstack(fill_value=0)
    counts = counts.loc[list(dict.fromkeys(rows["split"]))]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, counts.shape[1])
    x = np.arange(len(counts))
    for i, source_class in enumerate(counts.columns):
        ax.bar(x + (i - (counts.shape[1] - 1) / 2) * width, counts[source_class], width,
               color=_class_colour(source_class), label=_class_name(source_class))
    ax.set_xticks(x, counts.index, rotation=15)
    ax.set_ylabel("images")
    ax.set_title("Images per source class and split")
    ax.legend(fontsize=8, ncols=2)
    _save(fig, path)


def _figure_size_scatter(rows, split, path):
    import matplotlib.pyplot as plt

    part = rows[(rows["split"] == split)].dropna(subset=["width", "height"])
    grouped = part.groupby(["source_class", "width", "height"]).size().reset_index(name="n")
    classes = sorted(grouped["source_class"].unique())
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for k, (source_class, g) in enumerate(grouped.groupby("source_class")):
        # Generators often share one exact size: dodge each class a little so none hides another.
        dodge = 1.0 + 0.035 * (k - (len(classes) - 1) / 2)
        ax.scatter(g["width"] * dodge, g["height"], s=10 + 10 * np.sqrt(g["n"]), alpha=0.6,
                   color=_class_colour(source_class), edgecolors="white", linewidths=0.4,
                   label=f"{_class_name(source_class)} ({int(g['n'].sum())})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    low = max(16.0, min(part["width"].min(), part["height"].min()) * 0.8)
    high = max(part["width"].max(), part["height"].max()) * 1.25
    ticks = [t for t in (32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 4096, 8192) if low <= t <= high]
    for setter in (ax.set_xticks, ax.set_yticks):
        setter(ticks, [str(t) for t in ticks])
        setter([], minor=True)
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.grid(True, linewidth=0.3, alpha=0.5)
    ax.set_xlabel("width (px, log scale)")
    ax.set_ylabel("height (px, log scale)")
    ax.set_title(f"Stored image size per source class ({split})", fontsize=10)
    ax.legend(fontsize=8, title="class (images); area ~ count", title_fontsize=8, loc="upper left")
    _save(fig, path)


def _figure_aspect_filesize(rows, split, path):
    import matplotlib.pyplot as plt

    part = rows[rows["split"] == split]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    aspect_bins = np.linspace(0.4, 2.5, 43)
    size_bins = np.linspace(np.log10(max(1, part["file_size"].min())) - 0.05,
                            np.log10(max(2, part["file_size"].max())) + 0.05, 40)
    for source_class, g in part.groupby("source_class"):
        weights = np.full(len(g), 1.0 / len(g))
        square = float((g["width"] == g["height"]).mean())
        kwargs = dict(histtype="step", linewidth=1.6, color=_class_colour(source_class),
                      label=f"{_class_name(source_class)} ({square:.0%} square)")
        left.hist(g["aspect"].fillna(1.0).clip(0.4, 2.5), bins=aspect_bins, weights=weights, **kwargs)
        right.hist(np.log10(g["file_size"].clip(lower=1)), bins=size_bins, weights=weights, **kwargs)
    left.set_xlabel("aspect ratio width / height (clipped to 0.4..2.5)")
    left.set_ylabel("share of the class's images")
    left.set_title(f"Aspect ratio per class ({split})")
    right.set_xlabel("file size, log10(bytes)")
    right.set_ylabel("share of the class's images")
    right.set_title(f"Encoded file size per class ({split})")
    left.legend(fontsize=8, title="overlapping lines: see the square share", title_fontsize=7)
    _save(fig, path)


def _stacked_shares(ax, part, column, colours, title):
    table = pd.crosstab(part["source_class"], part[column].fillna("unknown"), normalize="index")
    bottom = np.zeros(len(table))
    for value in colours:
        if value in table.columns:
            ax.bar(range(len(table)), table[value], bottom=bottom, color=colours[value])
            bottom += table[value].values
    ax.set_xticks(range(len(table)), [_class_name(c).replace("generator_", "gen ") for c in table.index],
                  rotation=30, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)


def _figure_format_mode(rows, path):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    splits = list(dict.fromkeys(rows["split"]))
    fig, axes = plt.subplots(2, len(splits), figsize=(2.6 * len(splits) + 1.8, 6), squeeze=False, sharey=True)
    for r, (column, label, cmap) in enumerate((("format", "file format", "Set2"), ("mode", "colour mode", "Set3"))):
        # One colour per value across all panels, and one legend listing every value.
        values = sorted(rows[column].fillna("unknown").unique())
        colours = {v: plt.get_cmap(cmap)(i % 8) for i, v in enumerate(values)}
        for j, split in enumerate(splits):
            _stacked_shares(axes[r, j], rows[rows["split"] == split], column, colours, f"{split}: {label}")
        axes[r, 0].set_ylabel("share of the class's images")
        axes[r, -1].legend([Patch(color=colours[v]) for v in values], values, title=label, fontsize=8,
                           title_fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("File format and colour mode per source class")
    fig.tight_layout()
    _save(fig, path)


def _figure_jpeg_quality(rows, path):
    import matplotlib.pyplot as plt

    splits = [s for s in dict.fromkeys(rows["split"]) if s == "train" or s.endswith("_augmented")][:2]
    splits = splits or list(dict.fromkeys(rows["split"]))[:1]
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4.2), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, split in zip(axes[0], splits):
        part = rows[rows["split"] == split]
        classes = sorted(part["source_class"].unique())
        for i, source_class in enumerate(classes):
            g = part[part["source_class"] == source_class]
            quality = g["jpeg_quality"].dropna().values
            if len(quality):
                ax.boxplot(quality, positions=[i], widths=0.5, showfliers=False,
                           medianprops={"color": "crimson"})
                ax.scatter(i + rng.uniform(-0.18, 0.18, len(quality)), quality, s=6, alpha=0.4,
                           color=_class_colour(source_class))
            ax.text(i, 2, f"{len(quality)}/{len(g)}\nJPEG", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(classes)), [_class_name(c).replace("generator_", "gen ") for c in classes],
                      rotation=30, fontsize=8)
        ax.set_ylim(0, 102)
        ax.set_ylabel("estimated JPEG quality (IJG scale)")
        ax.set_title(f"JPEG quality per class ({split})")
    fig.tight_layout()
    _save(fig, path)


def _figure_examples(examples, path):
    import matplotlib.pyplot as plt

    classes = sorted(examples)
    fig, axes = plt.subplots(len(classes), EXAMPLES_PER_CLASS, figsize=(EXAMPLES_PER_CLASS * 1.15, len(classes) * 1.2),
                             squeeze=False)
    for i, source_class in enumerate(classes):
        for j in range(EXAMPLES_PER_CLASS):
            ax = axes[i, j]
            ax.axis("off")
            if j < len(examples[source_class]):
                ax.imshow(examples[source_class][j])
        axes[i, 0].text(-0.08, 0.5, _class_name(source_class), transform=axes[i, 0].transAxes,
                        ha="right", va="center", fontsize=8)
    fig.subplots_adjust(wspace=0.05, hspace=0.08, top=0.94)
    fig.suptitle("Example images per source class (train, first decodable rows, true aspect)", fontsize=9, y=0.975)
    _save_quantised(fig, path)


def _figure_probe(probe, path):
    import matplotlib.pyplot as plt

    splits = list(probe["evaluation"])
    names = ["all metadata", *probe["single_cue"][splits[0]]]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(splits)
    x = np.arange(len(names))
    for i, split in enumerate(splits):
        values = [probe["evaluation"][split]["balanced_accuracy"]]
        values += [probe["single_cue"][split][n]["balanced_accuracy"] for n in names[1:]]
        ax.bar(x + (i - (len(splits) - 1) / 2) * width, values, width, label=split)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance / majority class")
    ax.set_xticks(x, names, rotation=15)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("balanced accuracy (real vs generated)")
    ax.set_title(f"Shortcut probe: metadata-only classifiers fit on {probe['train_split']}")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


TAIL_STEP_SECONDS = 5.0  # a figure or the shortcut probe starts only with at least this much time left


def make_figures(rows: pd.DataFrame, examples: dict, probe: dict, figure_dir: Path,
                 deadline: Deadline | None = None) -> list[str]:
    """Draw every exploration figure that the available rows (and time) allow; return their file names."""
    import matplotlib

    matplotlib.use("Agg")
    if rows.empty:
        return []
    sized = rows.dropna(subset=["width", "height"])  # images whose header could be read
    if sized.empty:
        log.warning("exploration: no image of any split could be read; no figures drawn")
        return []
    main_split = "train" if (sized["split"] == "train").any() else sized["split"].iloc[0]
    plots = {
        "class_distribution.png": lambda p: _figure_class_distribution(rows, p),
        "size_scatter.png": lambda p: _figure_size_scatter(rows, main_split, p),
        "aspect_filesize_hist.png": lambda p: _figure_aspect_filesize(rows, main_split, p),
        "format_mode_share.png": lambda p: _figure_format_mode(rows, p),
        "jpeg_quality.png": lambda p: _figure_jpeg_quality(rows, p),
    }
    if examples:
        plots["examples.png"] = lambda p: _figure_examples(examples, p)
    if probe.get("evaluation"):
        plots["shortcut_probe.png"] = lambda p: _figure_probe(probe, p)
    written = []
    for name, draw in plots.items():
        if deadline is not None and deadline.remaining() < TAIL_STEP_SECONDS:
            log.warning("exploration: no time left for figure %s and those after it (%s)", name, deadline.describe())
            break
        try:
            draw(figure_dir / name)
            written.append(name)
        except Exception as exc:  # a figure is never worth failing the stage for
            log.debug("traceback of figure %s", name, exc_info=True)
            log.warning("exploration: figure %s failed (%s: %s)", name, type(exc).__name__, " ".join(str(exc).split()))
    return written


# ----------------------------------------------------------------------------- entry point


def _json_safe(obj):
    """NaN / inf become null, so the JSON stays standard."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return _finite(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def run_exploration(splits: list[str], out_dir: Path, deadline: Deadline,
                    reserve_fraction: float = RESERVE_FRACTION) -> dict:
    """Explore the labelled ``splits`` and write metadata, summary JSON and figures to ``out_dir``.

    Returns the summary that is also written as ``out_dir/exploration.json``.
    Reading stops early (``truncated: true``) once less than
    ``reserve_fraction`` of the deadline's budget is left.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    unlabelled = [s for s in splits if s not in LABELLED_SPLITS]
    if unlabelled:
        raise ValueError(f"exploration reads labelled splits only, got {unlabelled}")
    if out_dir.resolve().is_relative_to(data_dir().resolve()):
        raise ValueError(f"exploration must not write under the data folder {data_dir()}")

    rows, examples, info = collect_metadata(splits, deadline, reserve_fraction)
    with atomic_path(out_dir / "metadata.parquet") as tmp:
        rows.to_parquet(tmp, index=False)

    summary = {
        "truncated": info["truncated"],
        "splits_requested": list(splits),
        "missing_splits": info["missing_splits"],
        "rows_read": info["rows_read"],
        "read_seconds": info["seconds"],
        "splits": summarise_splits(rows) if len(rows) else {},
        "duplicates": find_duplicates(rows) if len(rows) else {},
        "undecodable": list_undecodable(rows) if len(rows) else {"total": 0, "count": {}, "rows": []},
    }
    # Written now and again after each step: a kill during the probe or the figures keeps the statistics.
    summary["shortcut_probe"] = {"skipped": "not reached before the deadline"}
    write_json(out_dir / "exploration.json", _json_safe(summary))
    if deadline.remaining() >= TAIL_STEP_SECONDS:
        try:
            summary["shortcut_probe"] = shortcut_probe(rows) if len(rows) else {"skipped": "no rows read"}
        except Exception as exc:  # the probe informs the report; it must not sink the stage
            log.exception("exploration: shortcut probe failed")
            summary["shortcut_probe"] = {"skipped": f"{type(exc).__name__}: {exc}"}
        write_json(out_dir / "exploration.json", _json_safe(summary))
    summary["figures"] = make_figures(rows, examples, summary["shortcut_probe"], out_dir / "figures", deadline)
    summary["seconds"] = round(time.monotonic() - started, 2)
    summary = _json_safe(summary)
    write_json(out_dir / "exploration.json", summary)
    probe = summary["shortcut_probe"]
    if "evaluation" in probe:
        for split, scores in probe["evaluation"].items():
            log.info("exploration: shortcut probe on %s: accuracy %.3f (majority %.3f), AUC %s, strongest cue %s",
                     split, scores["accuracy"], scores["majority_baseline_accuracy"], scores["roc_auc"],
                     probe["strongest_cue"][split])
    log.info("exploration: done in %.1fs%s (%s)", summary["seconds"], ", truncated" if summary["truncated"] else "",
             deadline.describe())
    return summary
