"""Sections built from the benchmark results: the same threshold rule, attribution and open set."""
from __future__ import annotations

from .fmt import NOT_AVAILABLE, NOT_RUN, cell, dig, fmt_float, fmt_int, fmt_percent, fmt_rate, is_number, table
from .results import TASKS, UNDER_PROCESSING_RULE
from .run_tables import TASK_NAMES


def _label(key: str) -> str:
    return str(key).replace("_", " ")


SAME_RULE_NAMES = {"calibration": "clean", "calibration + calibration_augmented": "both",
                   UNDER_PROCESSING_RULE: "processed"}
SAME_RULE_VALUES = ("same.clean.gap_val", "same.clean.gap_aug", "same.strict.gap_val", "same.strict.gap_aug",
                    "same.t3.aug_oracle")


def same_rule_section(same_rule) -> dict:
    """Task 2 and Task 3 under both threshold rules (``benchmarks/same_calibration.py``): table and sentence values."""
    if not isinstance(same_rule, dict) or not all(isinstance(same_rule.get(t), dict) for t in TASKS):
        return {"tables": {}, "values": {key: NOT_RUN for key in SAME_RULE_VALUES}}
    rows, recall = [], {}
    for task in TASKS:
        own = same_rule[task].get("own_rule")
        for rule, result in (same_rule[task].get("rules") or {}).items():
            splits = dig(result, "splits") or {}
            rows.append([TASK_NAMES[task].split(" (")[0], SAME_RULE_NAMES.get(rule, rule) + (" *" if rule == own else ""),
                         cell(result, ("threshold",), lambda x: fmt_float(x, 3)),
                         *(f"{cell(splits, (s, 'recall_ai'))} / {cell(splits, (s, 'fpr'))}"
                           for s in ("validation", "validation_augmented")),
                         cell(splits, ("validation_augmented", "recall_at_fpr_0.2_oracle"))])
            for s in ("validation", "validation_augmented"):
                recall[(task, rule, s)] = dig(splits, s, "recall_ai")
    values = {}
    for short, rule in (("clean", "calibration"), ("strict", UNDER_PROCESSING_RULE)):
        for s, key in (("validation", "val"), ("validation_augmented", "aug")):
            a, b = recall.get(("task03", rule, s)), recall.get(("task02", rule, s))
            values[f"same.{short}.gap_{key}"] = f"{a - b:+.3f}" if is_number(a) and is_number(b) else NOT_AVAILABLE
    values["same.t3.aug_oracle"] = cell(same_rule, ("task03", "rules", UNDER_PROCESSING_RULE, "splits",
                                                    "validation_augmented", "recall_at_fpr_0.2_oracle"))
    same_table = table(["detector", "rule", "thr.", "val.: recall / FPR", "augm.: recall / FPR",
                    "oracle (augm.)"], rows, align="llrrrr",
                   note="Rule: the calibration sets whose real images keep the bound (clean: calibration; "
                        "both: also calibration_augmented; processed: also the calibration reals processed by each "
                        "family Task 3 trains on); * = the detector's own rule. Oracle: the best recall "
                        "of any threshold at an empirical FPR <= 0.20 on validation_augmented; thr. = threshold.")
    return {"tables": {"same_rule": same_table}, "values": values}


# --- attribution and open set ----------------------------------------------------------------

SCORE_LABELS = {"centroid_distance": "centroid distance", "max_softmax": "max. softmax", "energy": "energy",
                "energy/head": "energy (source head)", "max_softmax/head": "max. softmax (source head)"}


def _class_label(key) -> str:
    key = str(key)
    return "real" if key == "0" else (f"gen {key}" if key.isdigit() else _label(key))


def attribution_section(main: dict | None, logo: list | None, predict_scored: dict | None) -> dict:
    """Values and tables of the attribution / open-set section (schema of ``aidetect.attribution``)."""
    values, tables = {}, {}
    missing = main is None
    deployed = dig(main, "deployed") or {}
    classifier, score_name = deployed.get("classifier"), deployed.get("outlier_score")
    values["attr.model"] = NOT_RUN if missing else str(dig(main, "model_task") or NOT_AVAILABLE)
    values["attr.classifier"] = NOT_RUN if missing else {"head": "the source head", "centroid": "the nearest centroid"}.get(
        classifier, str(classifier or NOT_AVAILABLE))
    values["attr.score"] = NOT_RUN if missing else SCORE_LABELS.get(score_name, str(score_name or NOT_AVAILABLE))
    values["attr.w"] = cell(main, ("w",), lambda x: f"{x:g}")
    values["attr.cap"] = cell(main, ("outlier_max_fpr",), fmt_percent)
    values["attr.n_cal"] = cell(main, ("deployed", "threshold", "n_calibration"), fmt_int)
    values["attr.guaranteed"] = NOT_RUN if missing else (
        {True: "holds", False: "does not hold (too few images; the largest score is used)"}.get(
            dig(main, "calibration", score_name, "guaranteed_all_sets"), NOT_AVAILABLE))
    values["attr.rate_bound"] = cell(main, ("calibration", score_name, "rate_bound_95"), lambda x: fmt_percent(x, 1)) \
        if not missing else NOT_RUN
    values["attr.selection_split"] = cell(main, ("classifier_selection", "split"), lambda x: str(x).replace("_", " "))
    values["attr.predict_macro"] = cell(predict_scored, ("open_set", "macro_score"))
    values["attr.predict_acc"] = cell(predict_scored, ("closed_set_with_outliers_as_errors", "accuracy"))
    values["attr.predict_n"] = cell(predict_scored, ("n",), fmt_int)

    splits = {k: v for k, v in (dig(main, "splits") or {}).items() if isinstance(v, dict)}
    measures = [
        ("source head: accuracy", ("closed_set", "head", "accuracy"), fmt_rate),
        ("source head: macro F1", ("closed_set", "head", "macro_f1"), fmt_rate),
        ("nearest centroid: accuracy", ("closed_set", "centroid", "accuracy"), fmt_rate),
        ("nearest centroid: macro F1", ("closed_set", "centroid", "macro_f1"), fmt_rate),
        ("distinguishability (mean)", ("distinguishability", "mean_ratio"), fmt_float),
        ("open set: macro score", ("deployed", "macro_score"), fmt_rate),
        ("open set: known called outlier", ("deployed", "outlier_rate_known"), lambda x: fmt_percent(x, 1)),
    ]
    if splits:
        rows = [[label, *(cell(result, path, fmt) for result in splits.values())] for label, path, fmt in measures]
        header = ["", *(k.replace("_", " ").replace("validation augmented", "val. augmented") for k in splits)]
    else:
        rows = [[label, NOT_RUN] for label, _, _ in measures]
        header = ["", "validation"]
    tables["attr_splits"] = table(header, rows)

    rows = []
    validation = dig(main, "splits", "validation")
    per_class = dig(validation, "open_set", classifier, score_name, "per_class") or {}
    ratios = dig(validation, "distinguishability", "per_class") or {}
    for key in sorted(set(per_class) | set(ratios), key=lambda k: (not str(k).isdigit(), str(k))):
        rows.append([_class_label(key), cell(per_class, (key, "n"), fmt_int), cell(per_class, (key, "tpr")),
                     cell(per_class, (key, "fpr")), cell(per_class, (key, "score")),
                     cell(ratios, (key, "ratio"), fmt_float)])
    if not rows:
        rows = [[NOT_RUN] * 6]
    tables["attr_classes"] = table(["class", "n", "TPR", "FPR", "score", "inter/intra"], rows)

    rows = []
    for run in logo or []:
        split = dig(run, "splits", "validation")
        if not isinstance(split, dict):
            continue
        score = dig(run, "deployed", "outlier_score") or "centroid_distance"  # the run's own deployed score
        rows.append([f"gen {run.get('held_out', '?')}", cell(split, ("held_out", "n"), fmt_int),
                     cell(split, ("held_out", "flagged_generated")),
                     cell(split, ("known_generators", "flagged_generated")), cell(split, ("real", "fpr")),
                     cell(split, ("held_out", "binary_roc_auc_vs_real")),
                     cell(split, ("held_out", "rejected_outlier", score)),
                     cell(split, ("known_outlier_rate", score)),
                     cell(split, ("held_out", "outlier_roc_auc", score))])
    if not rows:
        rows = [[NOT_RUN] * 9]
    tables["logo"] = table(["held out", "n", "flagged", "known flagged", "real FPR", "AUC vs real", "rejected",
                             "known rejected", "outlier AUC"], rows)
    epochs = [dig(run, "fit", "epochs_run") for run in logo or []]
    epochs = sorted({int(e) for e in epochs if is_number(e)})
    values["logo.epochs"] = NOT_RUN if not logo else (
        NOT_AVAILABLE if not epochs else str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}\u2013{epochs[-1]}")
    return {"values": values, "tables": tables}
