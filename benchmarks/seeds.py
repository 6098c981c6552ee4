"""Mean and spread over seeds of the six-stage runs (``make bench`` and ``make bench-seeds``).

    python benchmarks/seeds.py --runs runs/proxy runs/proxy-seed1 runs/proxy-seed2 \
        --out benchmarks/results/<date>-seeds-proxy.json

Reads each run's ``artifacts/<task>/metrics.json`` (validation splits, scored by the packaged detector at its
calibrated threshold, as the predict stages score) and its harness ``scorecard.json`` (the labelled predict
split), and writes their mean and standard deviation per task.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

TASKS = ("task02", "task03")
SPLITS = ("validation", "validation_augmented")
METRICS = ("recall_ai", "fpr", "roc_auc")


def stat(values: list[float]) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "n": int(len(values)), "values": [float(v) for v in values]}


def scorecard_of(run: Path) -> dict | None:
    for name in ("scorecard.json", "scorecard/scorecard.json"):
        if (run / name).is_file():
            return json.loads((run / name).read_text())
    return None


def summarise(runs: list[Path]) -> dict:
    out = {}
    for task in TASKS:
        metrics = [json.loads((r / "artifacts" / task / "metrics.json").read_text()) for r in runs]
        out[task] = {"seeds": [m["seed"] for m in metrics],
                     "threshold": stat([m["threshold"]["value"] for m in metrics])}
        for split in SPLITS:
            out[task][split] = {k: stat([m["splits"][split][k] for m in metrics]) for k in METRICS}
        cards = [scorecard_of(r) for r in runs]
        if all(c is not None for c in cards):
            scores = [c["tasks"][task]["scores"] for c in cards]
            out[task]["predict"] = {k: stat([s[k] for s in scores]) for k in ("recall_ai", "fpr")}
    return out


def markdown(result: dict) -> str:
    lines = [f"# Six-stage runs over seeds, {result['date']}", "",
             f"Machine: {result['machine']['cpu']} ({result['machine']['nproc']} cores); command: "
             f"`{result['command']}`; runs: {', '.join(result['runs'])}.", "",
             "Mean +- standard deviation over the seeds (packaged detectors at their calibrated thresholds).", "",
             "| task | split | recall_ai | FPR | ROC AUC |", "|---|---|---|---|---|"]
    for task, r in result["tasks"].items():
        for split in (*SPLITS, "predict"):
            if split in r:
                cells = [f"{r[split][k]['mean']:.3f} +- {r[split][k]['std']:.3f}" if k in r[split] else ""
                         for k in METRICS]
                lines.append(f"| {task} (seeds {r['seeds']}) | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from result_files import header, write

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    result = {**header(), "runs": [r.name for r in args.runs], "tasks": summarise(args.runs)}
    write(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
