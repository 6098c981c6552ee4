"""Task 2 and Task 3 under the same threshold rule: what the augmented calibration costs, what robust training buys.

The packaged detectors are calibrated by different rules: Task 2's threshold keeps the false-positive
bound on the real images of ``calibration``, Task 3's on those of ``calibration`` *and*
``calibration_augmented`` (the issue asks for both). Comparing them as packaged mixes two effects:
the models, and the stricter rule, which raises Task 3's threshold. This benchmark scores both trained
detectors of a finished run exactly as the predict stages do (fused score, corner crops when the
detector was calibrated on them), applies both rules to both, and reports on ``validation`` and
``validation_augmented``:

- recall_ai and FPR (with its 95 % interval) at each rule's threshold;
- ROC AUC and the oracle recall: the best recall any threshold reaches at an empirical FPR of at most
  20 % on that split (a ceiling for the score, not an operating point: it looks at the labels).

The row of each task's own rule must reproduce the threshold in its ``detector.json``; the result says
whether it did. Nothing is retrained or written into the artifacts.

    python benchmarks/same_calibration.py --artifacts runs/proxy/artifacts \
        --out benchmarks/results/2026-01-01-same-calibration-proxy.json
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

TASKS = ("task02", "task03")
UNDER_PROCESSING = "calibration + calibration_augmented + calibration reals under processing"


def rules() -> dict[str, tuple[str, ...]]:
    """The threshold rules compared, each the splits whose real images keep the bound."""
    from aidetect.detector import calibration_split_names

    return {"calibration": ("calibration",),
            "calibration + calibration_augmented": ("calibration", "calibration_augmented"),
            UNDER_PROCESSING: calibration_split_names("task03")}
EVALUATED = ("validation", "validation_augmented")


def detector_scores(task: str, splits: dict) -> tuple[dict[str, np.ndarray], float]:
    """Each split's scores by the task's packaged detector, as predict scores images; and its threshold."""
    from aidetect.detector import load_detector

    detector = load_detector(task)
    scores = {}
    for name, data in splits.items():
        corners = data.corners if detector.scores_corner_crops else None
        scores[name] = detector.score(np.asarray(data.crops), desc=f"{task} {name}", corners=corners)
    return scores, float(detector.threshold.value)


def compare(scores: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict:
    """For each rule: its threshold and the detection metrics of the evaluated splits at it."""
    from aidetect.calibration import calibrate_on_several
    from aidetect.detector import DELTA, MAX_FPR
    from aidetect.metrics import detection_metrics

    out = {}
    for rule, names in rules().items():
        present = [n for n in names if n in scores]
        if len(present) < len(names) and rule == UNDER_PROCESSING and present == list(names[:2]):
            continue  # prepared without the processed calibration reals: the rule is the one above
        threshold, _ = calibrate_on_several({n: scores[n][labels[n] == 0] for n in present}, MAX_FPR, DELTA)
        out[rule] = {"threshold": float(threshold.value),
                     "splits": {s: detection_metrics(labels[s], scores[s], threshold.predict(scores[s]))
                                for s in EVALUATED}}
    return out


def run(artifacts: Path) -> dict:
    os.environ["AMLS_ARTIFACTS_DIR"] = str(artifacts)  # read only: nothing is written there
    from aidetect.cleaning import load_prepared
    from aidetect.detector import calibration_split_names, load_shift_splits

    splits = {name: load_prepared(name) for name in ("calibration", "calibration_augmented", *EVALUATED)}
    splits.update(load_shift_splits("task03"))  # the processed sets Task 3 calibrates on (enough images each)
    labels = {name: data.source_class for name, data in splits.items()}
    result = {}
    for task in TASKS:
        scores, packaged = detector_scores(task, splits)
        by_rule = compare(scores, labels)
        own_names = tuple(n for n in calibration_split_names(task) if n in splits)
        own = next((rule for rule, names in rules().items()
                    if rule in by_rule and tuple(n for n in names if n in splits) == own_names), None)
        if own is None:
            raise SystemExit(f"{task} calibrates on {own_names}, which is none of {list(rules())}")
        result[task] = {"own_rule": own, "packaged_threshold": packaged,
                        "reproduces_packaged": bool(abs(by_rule[own]["threshold"] - packaged) < 1e-6), "rules": by_rule}
        if not result[task]["reproduces_packaged"]:
            print(f"[same-calibration] WARNING: {task}'s own rule gives {by_rule[own]['threshold']:.4f}, "
                  f"its detector.json {packaged:.4f}: the scores here are not the predict stages' scores", flush=True)
    return result


def _cell(m: dict) -> str:
    lo, hi = m["fpr_ci95"]
    return f"{m['recall_ai']:.3f} / {m['fpr']:.3f} [{lo:.2f}, {hi:.2f}]"


def markdown(result: dict) -> str:
    tasks = result["same_rule"]
    lines = [f"# Task 2 and Task 3 under the same threshold rule, {result['date']}", "",
             f"Machine: {result['machine']['cpu']} ({result['machine']['nproc']} cores); command: "
             f"`{result['command']}`; artifacts: `{result['artifacts']}`; {result['seconds']:.0f} s.", "",
             "Both packaged detectors, scored as the predict stages score; each threshold rule keeps the bound "
             "P(true FPR > 0.20) <= 0.05 on the real images of the named calibration splits. Cells: recall_ai / "
             "FPR [95 % interval]. Oracle: the best recall of any threshold at an empirical FPR <= 0.20 on that "
             "split (a ceiling of the score, it reads the labels). * = the task's own (packaged) rule.", "",
             "| task | threshold rule | threshold | validation | validation_augmented | AUC val / val_aug "
             "| oracle val / val_aug |", "|---|---|---|---|---|---|---|"]
    for task, r in tasks.items():
        for rule, x in r["rules"].items():
            v, a = x["splits"]["validation"], x["splits"]["validation_augmented"]
            mark = "*" if rule == r["own_rule"] else ""
            lines.append(f"| {task} | {rule}{mark} | {x['threshold']:.3f} | {_cell(v)} | {_cell(a)} | "
                         f"{v['roc_auc']:.3f} / {a['roc_auc']:.3f} | {v['recall_at_fpr_0.2_oracle']:.3f} / "
                         f"{a['recall_at_fpr_0.2_oracle']:.3f} |")
    lines.append("")
    for task, r in tasks.items():
        state = "reproduces" if r["reproduces_packaged"] else "does NOT reproduce"
        lines.append(f"- {task}: its own rule {state} the packaged threshold ({r['packaged_threshold']:.4f}).")
    for rule in tasks["task02"]["rules"]:  # run() scores both tasks under the same rules
        gap = [tasks["task03"]["rules"][rule]["splits"][s]["recall_ai"]
               - tasks["task02"]["rules"][rule]["splits"][s]["recall_ai"] for s in EVALUATED]
        lines.append(f"- Same rule ({rule}): Task 3 minus Task 2 recall_ai, validation {gap[0]:+.3f}, "
                     f"validation_augmented {gap[1]:+.3f}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", default=str(REPO / "runs" / "proxy" / "artifacts"))
    parser.add_argument("--out", required=True, help="the JSON result; the markdown table goes beside it (.md)")
    args = parser.parse_args(argv)
    from result_files import header, write

    started = time.monotonic()
    artifacts = Path(args.artifacts).resolve()
    if not (artifacts / "task03" / "detector.json").exists() or not (artifacts / "task02" / "detector.json").exists():
        raise SystemExit(f"{artifacts} holds no trained Task-2 and Task-3 detectors: run the pipeline (make bench) first")
    result = {**header(), "artifacts": str(artifacts)}
    result["same_rule"] = run(artifacts)
    result["seconds"] = round(time.monotonic() - started, 1)
    write(args.out, result, markdown(result))
    return 0 if all(r["reproduces_packaged"] for r in result["same_rule"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
