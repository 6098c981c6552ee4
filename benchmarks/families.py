"""Compare the model families on the same prepared data and the same time budget.

    python benchmarks/families.py --artifacts runs/proxy/artifacts --budget 420 --out benchmarks/results/x.json

Each family is trained on ``prepared/train``, its threshold calibrated on the
real images of ``prepared/calibration`` by the pipeline's own rule, and scored
on ``validation`` and ``validation_augmented``. Families: the classical
features with logistic regression or gradient boosting, TraceNet (high-pass
inputs), TraceNet with colour inputs, and the course baseline CNN.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FAMILIES = ("classical_logistic", "classical_boosting", "tracenet", "tracenet_rgb", "course_baseline")


def run_family(name: str, budget: float, epochs: int) -> dict:

    from aidetect.budget import Deadline
    from aidetect.calibration import calibrate_threshold
    from aidetect.classical import ClassicalDetector
    from aidetect.cleaning import load_prepared, prepared_splits
    from aidetect.detector import DELTA, MAX_FPR, TASK02_CONFIG
    from aidetect.labels import binary_label
    from aidetect.metrics import detection_metrics
    from aidetect.training import fit, score_crops, with_overrides

    train = load_prepared("train")
    evaluation = {s: load_prepared(s) for s in ("calibration", "validation", "validation_augmented") if s in prepared_splits()}
    started = time.monotonic()
    fit_info = None
    if name.startswith("classical_"):
        model = ClassicalDetector(name.split("_", 1)[1]).fit(train.crops, binary_label(train.source_class))
        score = lambda crops: model.score(crops)  # noqa: E731
    else:
        overrides = {"tracenet": {"with_rgb": False}, "tracenet_rgb": {"with_rgb": True},
                     "course_baseline": {"arch": "course_baseline"}}[name]
        config = with_overrides(TASK02_CONFIG, epochs=epochs, **overrides)
        with tempfile.TemporaryDirectory() as tmp:
            deadline = Deadline(budget, start=time.monotonic())
            model, result = fit(config, train, Path(tmp), deadline, reserve_seconds=0.0, resume=False)
        fit_info = {k: v for k, v in asdict(result).items() if k != "history"}
        fit_info["holdout_curve"] = [h["holdout_score"] for h in result.history]
        score = lambda crops: score_crops(model, crops)  # noqa: E731
    train_seconds = time.monotonic() - started
    calibration = evaluation["calibration"]
    threshold = calibrate_threshold(score(calibration.crops[calibration.source_class == 0]), MAX_FPR, DELTA)
    splits = {}
    for split in ("validation", "validation_augmented"):
        if split in evaluation:
            data = evaluation[split]
            s = score(data.crops)
            splits[split] = detection_metrics(data.source_class, s, threshold.predict(s))
    return {"family": name, "train_seconds": train_seconds, "threshold": threshold.to_dict(), "splits": splits,
            "fit": fit_info}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True, help="artifacts folder of a run (needs prepared/)")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--budget", type=float, default=420.0, help="training seconds per neural family")
    parser.add_argument("--epochs", type=int, default=60, help="epoch budget (as train.py)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    os.environ["AMLS_ARTIFACTS_DIR"] = str(Path(args.artifacts).resolve())
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from aidetect.budget import configure_threads

    threads = configure_threads()
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "threads": threads,
               "budget_seconds": args.budget, "epochs": args.epochs, "command": " ".join(sys.argv), "families": {}}
    for name in args.families.split(","):
        print(f"[families] {name}", flush=True)
        results["families"][name] = run_family(name, args.budget, args.epochs)
        v = results["families"][name]["splits"].get("validation", {})
        print(f"[families] {name}: recall_ai {v.get('recall_ai')}, fpr {v.get('fpr')}, auc {v.get('roc_auc')}", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
