"""Tables and values of the run's own files (exploration, cleaning, both tasks' metrics) and of the code."""
from __future__ import annotations

import math
import re

from .fmt import (NOT_AVAILABLE, NOT_RUN, cell, dig, fmt_float, fmt_int, fmt_interval, fmt_params, fmt_percent,
                  fmt_rate, fmt_seconds, is_number, table)
from .results import EVAL_SPLITS, TASKS

TASK_NAMES = {"task02": "Task 2 (plain)", "task03": "Task 3 (robust)"}
CLASS_KEYS = ("real", "generator_1", "generator_2", "generator_3", "generator_4", "generator_5")
CLASS_SHORT = ("real", "gen 1", "gen 2", "gen 3", "gen 4", "gen 5")
FAMILY_LABELS = {
    "classical_logistic": "features + logistic regr.", "classical_boosting": "features + gradient boosting",
    "tracenet": "TraceNet (high-pass)", "tracenet_rgb": "TraceNet + RGB input", "course_baseline": "course baseline CNN",
}


def warn(message: str) -> None:
    import sys

    print(f"build_report: warning: {message}", file=sys.stderr)




def _share_text(counts: dict | None) -> str:
    """Format/mode counts -> "JPEG" or "PNG 67 % / JPEG 33 %"."""
    if not isinstance(counts, dict) or not counts:
        return NOT_AVAILABLE
    total = sum(v for v in counts.values() if is_number(v))
    if total <= 0:
        return NOT_AVAILABLE
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    if len(ordered) == 1:
        return str(ordered[0][0])
    return " / ".join(f"{k} {100 * v / total:.0f} %" for k, v in ordered[:3])


def exploration_tables(exploration: dict | None, cleaning: dict | None) -> dict:
    tables = {}
    splits = dig(exploration, "splits") or {}
    rows = []
    for split, stats in splits.items():
        counts = [cell(stats, ("by_source_class", c, "count"), fmt_int) for c in CLASS_KEYS]
        kept = dig(cleaning, "kept_per_split_and_class", split)
        kept_text = NOT_RUN if cleaning is None else (fmt_int(sum(kept.values())) if isinstance(kept, dict) else NOT_AVAILABLE)
        rows.append([split.replace("_", " "), *counts, cell(stats, ("all", "count"), fmt_int), kept_text])
    if not rows:
        rows = [[NOT_RUN] + [NOT_RUN] * 8]
    tables["split_counts"] = table(["split", *CLASS_SHORT, "all", "kept"], rows)

    train = dig(splits, "train", "by_source_class")
    augmented = dig(splits, "validation_augmented", "by_source_class")

    def per_class(source, fn):
        if exploration is None:
            return [NOT_RUN] * len(CLASS_KEYS)
        return [fn(dig(source, c)) if isinstance(dig(source, c), dict) else NOT_AVAILABLE for c in CLASS_KEYS]

    def median_size(s):
        w, h = dig(s, "width", "median"), dig(s, "height", "median")
        return f"{w:.0f}\u00d7{h:.0f}" if is_number(w) and is_number(h) else NOT_AVAILABLE

    def jpeg_q(s):
        q = dig(s, "jpeg_quality", "median")
        return f"{q:.0f}" if is_number(q) else "no JPEG"

    def kbytes(s):
        b = dig(s, "file_size_bytes", "median")
        return f"{b / 1000:.0f}" if is_number(b) else NOT_AVAILABLE

    rows = [
        ["file format", *per_class(train, lambda s: _share_text(s.get("formats")))],
        ["colour mode", *per_class(train, lambda s: _share_text(s.get("modes")))],
        ["median size (px)", *per_class(train, median_size)],
        ["square images", *per_class(train, lambda s: fmt_percent(s.get("square_share")))],
        ["distinct sizes", *per_class(train, lambda s: fmt_int(s.get("distinct_sizes")))],
        ["median file size (kB)", *per_class(train, kbytes)],
        ["JPEG quality (median)", *per_class(train, jpeg_q)],
        ["EXIF present", *per_class(train, lambda s: fmt_percent(s.get("exif_share")))],
        ["ICC profile present", *per_class(train, lambda s: fmt_percent(s.get("icc_share")))],
        ["format, val. augmented", *per_class(augmented, lambda s: _share_text(s.get("formats")))],
        ["JPEG quality, val. augm.", *per_class(augmented, jpeg_q)],
    ]
    tables["characteristics"] = table(["characteristic (train split)", *CLASS_SHORT], rows, align="l" + "c" * 6)

    probe = dig(exploration, "shortcut_probe")
    rows = []
    if probe is None:
        rows.append([NOT_RUN] * 5)
    else:
        def probe_row(name, records):
            out = [name]
            for split in EVAL_SPLITS:
                rec = dig(records, split)
                out += [cell(rec, ("balanced_accuracy",)) if rec is not None else NOT_AVAILABLE,
                        cell(rec, ("roc_auc",)) if rec is not None else NOT_AVAILABLE]
            return out

        rows.append(probe_row("all cues (random forest)", probe.get("evaluation")))
        groups = list((probe.get("cue_groups") or {}).keys()) or list(dig(probe, "single_cue", "validation") or {})
        for group in groups:
            rows.append(probe_row(group.replace("_", " "),
                                  {s: dig(probe, "single_cue", s, group) for s in EVAL_SPLITS}))
    tables["shortcut"] = table(["metadata cue", "bal. acc.", "AUC", "bal. acc.", "AUC"], rows,
                                groups=[["", 1], ["validation", 2], ["val. augmented", 2]])
    return tables


def _model_name(text) -> str:
    """"RandomForestClassifier(n_estimators=200, ...)" -> "random forest (200 trees)"."""
    if not isinstance(text, str) or not text:
        return NOT_AVAILABLE
    name = text.split("(")[0].replace("Classifier", "")
    name = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).lower()
    trees = re.search(r"n_estimators=(\d+)", text)
    return f"{name} ({trees.group(1)} trees)" if trees else name


def exploration_values(exploration: dict | None, cleaning: dict | None) -> dict:
    values = {}
    train_all = dig(exploration, "splits", "train", "all")
    values["data.train_images"] = cell(train_all, ("count",), fmt_int)
    values["data.train_real"] = cell(exploration, ("splits", "train", "by_label", "real", "count"), fmt_int)
    values["data.train_ai"] = cell(exploration, ("splits", "train", "by_label", "ai_generated", "count"), fmt_int)
    values["data.n_splits"] = fmt_int(len(dig(exploration, "splits") or {})) if exploration else NOT_RUN
    values["data.duplicates_within"] = cell(exploration, ("duplicates", "total_within_split_duplicate_rows"), fmt_int)
    values["data.duplicates_across"] = cell(exploration, ("duplicates", "total_cross_split_shared_images"), fmt_int)
    values["data.undecodable"] = cell(exploration, ("undecodable", "total"), fmt_int)
    values["data.truncated"] = ("yes" if exploration.get("truncated") else "no") if exploration else NOT_RUN
    values["data.explore_seconds"] = cell(exploration, ("seconds",), fmt_seconds)
    for label in ("real", "ai_generated"):
        stats = dig(exploration, "splits", "train", "by_label", label)
        values[f"data.{label}.formats"] = _share_text(dig(stats, "formats")) if exploration else NOT_RUN
        values[f"data.{label}.square"] = cell(stats, ("square_share",), fmt_percent) if exploration else NOT_RUN
    probe = dig(exploration, "shortcut_probe")
    values["probe.model"] = _model_name(dig(probe, "model")) if exploration else NOT_RUN
    for split in EVAL_SPLITS:
        values[f"probe.{split}.auc"] = cell(probe, ("evaluation", split, "roc_auc")) if exploration else NOT_RUN
        values[f"probe.{split}.bal_acc"] = cell(probe, ("evaluation", split, "balanced_accuracy")) if exploration else NOT_RUN
        strongest = dig(probe, "strongest_cue", split)
        values[f"probe.{split}.strongest"] = (str(strongest).replace("_", " ") if strongest else NOT_AVAILABLE) \
            if exploration else NOT_RUN
    strength = dig(probe, "evaluation", "validation", "balanced_accuracy")
    if exploration is None:
        values["probe.abstract"] = "We test whether file format, size and JPEG quality alone would reveal the class"
    elif is_number(strength) and strength >= 0.8:
        values["probe.abstract"] = (f"We show that file format, size and JPEG quality alone would reveal the class "
                                    f"(a metadata-only probe reaches a balanced accuracy of {fmt_rate(strength)})")
    else:
        values["probe.abstract"] = (f"We test whether file format, size and JPEG quality alone reveal the class "
                                    f"(here a metadata-only probe reaches a balanced accuracy of {fmt_rate(strength)})")
    values["clean.n_images"] = cell(cleaning, ("n_images",), fmt_int)
    values["clean.n_kept"] = cell(cleaning, ("n_kept",), fmt_int)
    if cleaning is None:
        values["clean.dropped"] = NOT_RUN
    else:
        dropped = cleaning.get("dropped_by_reason") or {}
        values["clean.dropped"] = "; ".join(f"{reason}: {count}" for reason, count in dropped.items()) \
            if dropped else "none"
    return values


def _split_row(label: str, split_label: str, record: dict | None, source_missing: bool) -> list[str]:
    keys = [("recall_ai",), ("fpr",), ("fpr_ci95",), ("precision_ai",), ("balanced_accuracy",), ("roc_auc",),
            ("recall_at_fpr_0.2_oracle",)]
    if source_missing:
        return [label, split_label] + [NOT_RUN] * len(keys)
    fmts = [fmt_rate, fmt_rate, fmt_interval, fmt_rate, fmt_rate, fmt_rate, fmt_rate]
    return [label, split_label] + [cell(record, k, f) if record is not None else NOT_AVAILABLE for k, f in zip(keys, fmts)]


METRIC_HEADER = ["recall AI", "FPR", "FPR 95 % CI", "precision", "bal. acc.", "ROC AUC", "recall\u2009@0.2 (oracle)"]


DEPLOYED = "\u2009*"  # marks the deployed detector in the tables


def model_variants(metrics: dict | None) -> list[tuple[str, dict | None]]:
    """(label, per-split metrics) of the network, the classical model and their fusion, the deployed one marked.

    Reads both schemas of metrics.json: ``network_splits`` / ``classical_splits`` beside the
    deployed ``splits``, or the older ``splits`` / ``fallback_splits``.
    """
    m = metrics or {}
    deployed = m.get("detector")
    network = m.get("network_splits") or (m.get("splits") if deployed == "network" else None)
    classical = m.get("classical_splits") or m.get("fallback_splits") or (
        m.get("splits") if deployed == "classical" else None)
    variants = [("TraceNet CNN" + (DEPLOYED if deployed == "network" else ""), network),
                ("features + gradient boosting" + (DEPLOYED if deployed == "classical" else ""), classical)]
    if deployed == "fusion" or m.get("fusion") is not None and deployed != "network":
        variants.append(("fusion of both" + (DEPLOYED if deployed == "fusion" else ""),
                         m.get("splits") if deployed == "fusion" else None))
    return variants


def _short_split(split: str) -> str:
    return split.replace("_", " ").replace("validation augmented", "val. augmented")


def families_table(families) -> dict:
    """Every model family under the same data and budget (``benchmarks/families.py``)."""
    rows = []
    for name, record in (families.records.items() if families else []):
        row = [FAMILY_LABELS.get(name, name.replace("_", " "))]
        for split in EVAL_SPLITS:
            row += [cell(record, ("splits", split, key)) for key in ("recall_ai", "fpr", "roc_auc")]
        row.append(fmt_seconds(record.get("train_seconds")))
        rows.append(row)
    return table(["model family", "recall", "FPR", "AUC", "recall", "FPR", "AUC", "fit s"],
                 rows or [[NOT_RUN] * 8], groups=[["", 1], ["validation", 3], ["val. augmented", 3], ["", 1]])


def model_tables(metrics: dict, detectors: dict) -> dict:
    tables = {}
    rows = []
    for task in TASKS:
        m = metrics.get(task)
        for split in EVAL_SPLITS:
            rows.append(_split_row(TASK_NAMES[task].split(" (")[0], _short_split(split), dig(m, "splits", split),
                                   m is None))
    tables["robustness"] = table(["detector", "split", *METRIC_HEADER], rows, align="ll" + "r" * 7)

    rows = []
    for task in TASKS:
        m = metrics.get(task)
        for split in EVAL_SPLITS:
            per_class = dig(m, "splits", split, "recall_per_class")
            cells = [cell(per_class, (str(c),)) if m is not None and per_class is not None
                     else (NOT_RUN if m is None else NOT_AVAILABLE) for c in range(1, 6)]
            rows.append([TASK_NAMES[task].split(" (")[0], _short_split(split), *cells])
    tables["per_class"] = table(["detector", "split", *CLASS_SHORT[1:]], rows, align="ll" + "r" * 5)
    tables["calibration"] = calibration_table(metrics, detectors)
    return tables


def _winning_set(detector: dict | None) -> str | None:
    """The calibration set whose real images gave the largest threshold (the one deployed)."""
    sets = dig(detector, "calibration_sets") or {}
    if not sets:
        return None
    return max(sets, key=lambda k: sets[k].get("value", -math.inf))


def _set_label(name: str | None) -> str:
    if name is None:
        return NOT_AVAILABLE
    return {"calibration": "calibration", "calibration_augmented": "calibration augm."}.get(
        name, name.split("/")[-1].replace("_", " ") + " (processed calib.)")


def calibration_table(metrics: dict, detectors: dict) -> dict:
    """Each task's threshold, the set that fixed it and that set's empirical FPR, and the validation FPRs."""
    rows = []
    for task in TASKS:
        m, det = metrics.get(task), detectors.get(task)
        winner = _winning_set(det)
        sets = dig(det, "calibration_sets") or {}
        rows.append([TASK_NAMES[task].split(" (")[0], fmt_int(len(sets)) if det else NOT_RUN, _set_label(winner),
                     cell(m, ("threshold", "value"), lambda x: f"{x:.3f}"),
                     cell(sets, (winner, "empirical_fpr")) if winner else NOT_AVAILABLE,
                     cell(m, ("splits", "validation", "fpr")), cell(m, ("splits", "validation", "fpr_ci95"), fmt_interval),
                     cell(m, ("splits", "validation_augmented", "fpr"))])
    return table(["", "sets", "set fixing the threshold", "thr.", "its FPR", "FPR val.", "95 % CI",
                  "FPR augm."], rows, align="lrlrrrrr",
                 note="Each set's real images give a threshold by the same rule; the largest is deployed, so its "
                      "empirical FPR is the one shown. 95 % CI: Clopper\u2013Pearson on validation.")


def model_values(metrics: dict, detectors: dict) -> dict:
    values = {}
    for task in TASKS:
        m = metrics.get(task)
        p = task[-1]
        weight = dig(m, "fusion", "weight")
        values[f"t{p}.fusion_weight"] = fmt_float(weight) if m is not None else NOT_RUN
        for split in EVAL_SPLITS:
            s = "val" if split == "validation" else "aug"
            for key in ("recall_ai", "fpr", "roc_auc", "balanced_accuracy", "precision_ai", "recall_at_fpr_0.2_oracle"):
                values[f"t{p}.{s}.{key}"] = cell(m, ("splits", split, key))
            values[f"t{p}.{s}.fpr_ci95"] = cell(m, ("splits", split, "fpr_ci95"), fmt_interval)
            values[f"t{p}.{s}.n_real"] = cell(m, ("splits", split, "n_real"), fmt_int)
            values[f"t{p}.{s}.n_ai"] = cell(m, ("splits", split, "n_ai"), fmt_int)
        values[f"t{p}.threshold"] = cell(m, ("threshold", "value"), lambda x: f"{x:.3f}")
        values[f"t{p}.n_cal"] = cell(m, ("threshold", "n_calibration"), fmt_int)
        values[f"t{p}.train_images"] = cell(m, ("train_images",), fmt_int)
        fit = dig(m, "fit")
        if m is None:
            values[f"t{p}.fit_sentence"] = f"Training: {NOT_RUN}."
        elif not isinstance(fit, dict):
            values[f"t{p}.fit_sentence"] = ("No network finished training in this run, so the calibrated classical "
                                            "fallback was deployed.")
        else:
            values[f"t{p}.fit_sentence"] = (
                f"The network ran {cell(fit, ('epochs_run',), fmt_int)} of {cell(fit, ('planned_epochs',), fmt_int)} "
                f"planned epochs (best epoch {cell(fit, ('best_epoch',), fmt_int)}; stopped: "
                f"{fit.get('stopped_because', NOT_AVAILABLE)}).")
        config = dig(m, "config") or {}
        for key in ("epochs", "batch_size", "lr", "weight_decay", "source_loss_weight", "patience", "holdout_fraction",
                    "clean_fraction", "width", "stem_stride"):
            values[f"t{p}.config.{key}"] = NOT_RUN if m is None else (
                NOT_AVAILABLE if key not in config else (f"{config[key]:g}" if is_number(config[key]) else str(config[key])))
        values[f"t{p}.params"] = fmt_params(count_parameters(dig(m, "config")))
        values[f"t{p}.sees_colour"] = "yes" if config.get("with_rgb") else "no"
        det = detectors.get(task)
        winner = _winning_set(det)
        values[f"t{p}.calset.n"] = fmt_int(len(dig(det, "calibration_sets") or {})) if det else NOT_RUN
        values[f"t{p}.calset.winner"] = _set_label(winner) if det else NOT_RUN
        values[f"t{p}.calset.clean_threshold"] = cell(dig(det, "calibration_sets"), ("calibration", "value"),
                                                      lambda x: f"{x:.3f}") if det else NOT_RUN
    return values


def count_parameters(config: dict | None):
    """Trainable parameters of the network a run's TrainConfig describes (the code's default without one)."""
    try:
        from aidetect.models import build_model
        from aidetect.training import TrainConfig

        known = set(TrainConfig.__dataclass_fields__)
        train_config = TrainConfig(**{k: v for k, v in (config or {}).items() if k in known})
        model = build_model(train_config.arch, **train_config.model_kwargs())
        return sum(p.numel() for p in model.parameters())
    except Exception as exc:  # the report still builds without torch or the package
        warn(f"cannot count the network's parameters: {exc}")
        return None


def code_values() -> dict:
    """Design constants read from the code the run used (never typed into the report)."""
    values = {}
    try:
        from aidetect import augment, calibration, cleaning, crops, detector, features

        values["code.crop"] = str(crops.CROP_SIZE)
        values["code.train_crop"] = str(crops.TRAIN_CROP)
        values["code.grid"] = str(crops.GRID)
        values["code.min_side"] = str(cleaning.MIN_TRAIN_SIDE)
        values["code.min_side_upscale"] = f"{crops.CROP_SIZE / cleaning.MIN_TRAIN_SIDE:g}"
        values["code.n_features"] = str(len(features.FEATURE_NAMES))
        for group, names in features.FEATURE_GROUPS.items():
            values[f"code.features.{group}"] = str(len(names))
        values["code.max_fpr"] = f"{detector.MAX_FPR:g}"
        values["code.delta"] = f"{detector.DELTA:g}"
        values["code.min_cal"] = str(calibration.min_calibration_size(detector.MAX_FPR, detector.DELTA))
        for policy in (augment.NEUTRAL, augment.ROBUST):
            prefix = f"code.{policy.name}"
            values[f"{prefix}.jpeg_p"] = f"{policy.jpeg_p:g}"
            values[f"{prefix}.jpeg_q"] = f"{policy.jpeg_quality[0]}\u2013{policy.jpeg_quality[1]}"
            values[f"{prefix}.blur_p"] = f"{policy.blur_p:g}"
            values[f"{prefix}.blur_sigma"] = f"{policy.blur_sigma[0]:g}\u2013{policy.blur_sigma[1]:g}"
            values[f"{prefix}.rescale_p"] = f"{policy.rescale_p:g}"
            values[f"{prefix}.rescale"] = f"{policy.rescale[0]:g}\u2013{policy.rescale[1]:g}"
            values[f"{prefix}.noise_p"] = f"{policy.noise_p:g}"
            values[f"{prefix}.noise_sigma"] = f"{policy.noise_sigma[0]:g}\u2013{policy.noise_sigma[1]:g}"
            values[f"{prefix}.colour_p"] = f"{policy.colour_p:g}"
            values[f"{prefix}.area_p"] = f"{policy.area_p:g}"
            values[f"{prefix}.area"] = f"{policy.area[0]:g}\u2013{policy.area[1]:g}"
        values["code.train_views"] = str(cleaning.TRAIN_VIEWS)
        values["code.view_window"] = str(cleaning.VIEW_WINDOW)
        logistic = __import__("aidetect.classical", fromlist=["make_classifier"]).make_classifier("logistic")
        values["code.logistic_c"] = f"{logistic[-1].C:g}"
    except Exception as exc:  # the report still builds without the package
        warn(f"cannot read design constants from solution/aidetect: {exc}")
    try:
        from aidetect.models import CourseBaselineCNN

        values["code.baseline_params"] = fmt_params(sum(p.numel() for p in CourseBaselineCNN().parameters()))
    except Exception:
        values["code.baseline_params"] = NOT_AVAILABLE
    return values
