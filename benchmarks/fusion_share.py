"""The network's share of Task 3's fused score, scanned on a development holdout (never on validation).

    python benchmarks/fusion_share.py --workdir runs/robust-training --variant broad --seed 0 \
        --out benchmarks/results/<date>-fusion-share-proxy.json

Reads what ``benchmarks/robust_training.py`` left in ``--workdir``: the development data root (its
``validation`` is a holdout of the training split), the processed holdout images, and one variant's trained
Task-3 detector. For each share, the fused score is recalibrated exactly as the stage calibrates it
(calibration, calibration_augmented and the calibration reals under processing) and scored on the holdout
under every perturbation family at moderate strength.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from aidetect.perturb import FAMILIES
from result_files import header, write
from robustness import condition_metrics, load_split, processed_views

SHARES = (0.0, 0.2, 0.3, 0.5, 0.7, 1.0)


def component_scores(artifacts: Path, data_root: Path, views: dict) -> tuple[dict, dict, dict, dict]:
    """Network and classical scores of the calibration sets, their labels, the same of every condition, and the
    fusion's standardisation."""
    from aidetect import detector as D
    from aidetect.paths import pointing_at
    from aidetect.training import score_crops

    with pointing_at(artifacts, data_root / "data"):
        fused = D.load_detector("task03").scorer
        splits = {name: D._load_optional(name) for name in D.TASK_CALIBRATION_SPLITS["task03"]}
        splits = {k: v for k, v in splits.items() if v is not None}
        splits.update(D.load_shift_splits("task03"))
        calibration = {name: (score_crops(fused.network, data.crops), D.classical_split_scores(fused.classical, data, True))
                       for name, data in splits.items()}
        conditions = {f"{c[0]}@{c[1]}": (score_crops(fused.network, crops), D.classical_scores_of(fused.classical, crops, feats))
                      for c, (crops, feats) in views.items()}
    return calibration, {name: data.source_class for name, data in splits.items()}, conditions, fused.stats


def scan(calibration, labels, conditions, stats, y) -> dict:
    from aidetect.detector import _calibrate

    def fuse(share, network, classical):
        return (share * (network - stats["network_mean"]) / stats["network_std"]
                + (1 - share) * (classical - stats["classical_mean"]) / stats["classical_std"])

    unseen = [f"{name}@{f.moderate}" for name, f in FAMILIES.items() if f.trained_as is None]
    out = {}
    for share in SHARES:
        threshold, _ = _calibrate({k: fuse(share, *v) for k, v in calibration.items()}, labels, "task03")
        rows = {c: condition_metrics(y, fuse(share, *v), threshold.value) for c, v in conditions.items()}
        out[str(share)] = {"threshold": threshold.value, "conditions": rows,
                           "never_trained_mean_fpr": float(np.mean([rows[c]["fpr"] for c in unseen])),
                           "never_trained_worst_fpr": float(max(rows[c]["fpr"] for c in unseen)),
                           "mean_roc_auc": float(np.mean([r["roc_auc"] for r in rows.values()])),
                           "worst_fpr": float(max(r["fpr"] for r in rows.values()))}
    return out


def markdown(result: dict) -> str:
    head = result["header"]
    lines = [f"# The network's share of Task 3's fused score ({head['date']})", "",
             f"Command: `{head['command']}`  ", f"Machine: {head['machine']['cpu']}, {head['machine']['nproc']} cores  ",
             f"Data: the development holdout of `benchmarks/robust_training.py` ({result['n_real']} real, "
             f"{result['n_ai']} generated images of the proxy's train split); variant `{result['variant']}`, "
             f"seed {result['seed']}  ", "",
             "| network share | clean FPR | clean recall | clean ROC AUC | never-trained mean FPR | never-trained worst FPR | "
             "worst FPR, all families | mean ROC AUC, all conditions |", "|---|---|---|---|---|---|---|---|"]
    for share, r in result["shares"].items():
        clean = r["conditions"]["clean@0.0"]
        lines.append(f"| {share} | {clean['fpr']:.3f} | {clean['recall']:.3f} | {clean['roc_auc']:.3f} | "
                     f"{r['never_trained_mean_fpr']:.3f} | {r['never_trained_worst_fpr']:.3f} | {r['worst_fpr']:.3f} | "
                     f"{r['mean_roc_auc']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "robust-training")
    parser.add_argument("--variant", default="broad")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    data_root = args.workdir / "data-root"
    images, labels = load_split(data_root, "validation")
    y = (labels > 0).astype(np.int64)
    views = processed_views(images, [("clean", 0.0)] + [(n, f.moderate) for n, f in FAMILIES.items()],
                            args.workdir / "cache")
    artifacts = args.workdir / f"seed{args.seed}" / args.variant / "artifacts"
    calibration, calibration_labels, conditions, stats = component_scores(artifacts, data_root, views)
    result = {"schema_version": 1, "header": header(), "variant": args.variant, "seed": args.seed,
              "n_real": int((y == 0).sum()), "n_ai": int((y == 1).sum()),
              "shares": scan(calibration, calibration_labels, conditions, stats, y)}
    write(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
