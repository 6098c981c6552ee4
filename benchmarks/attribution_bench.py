"""Attribution and open-set benchmark on a finished pipeline run (e.g. the proxy benchmark).

1. The deployed attributor (``aidetect.attribution.run_attribution``) on the run's artifacts:
   source head and nearest centroid on validation / validation_augmented, open-set thresholds at
   1 %, and the predictions for ``data/predict`` scored against ``labels/predict_labels.parquet``.
   Nothing is written into the run's artifacts folder (read-only); outputs go next to ``--out``.
2. Leave-one-generator-out: for each held-out generator, a TraceNet trained from scratch on the
   prepared train crops without it (Task-2 config, ``--epochs``), its binary threshold calibrated on
   the real calibration images (FPR <= 0.2, delta 0.05) and its open-set thresholds at 1 % on the
   known-class calibration images: how often is the unseen generator flagged as generated, and
   how often rejected as an outlier, against the known classes.

    python benchmarks/attribution_bench.py --artifacts /tmp/art_proxy --data /work/shared/proxy/data \
        --out benchmarks/results/2026-01-01-attribution-proxy.json

Writes the JSON, a markdown table beside it (same stem, ``.md``) and figures under
``benchmarks/results/figures/``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "solution"))


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, required=True, help="artifacts folder of a finished run (read only)")
    parser.add_argument("--data", type=Path, required=True, help="the data folder of that run")
    parser.add_argument("--labels", type=Path, default=None,
                        help="predict labels (default: <data>/../labels/predict_labels.parquet, if present)")
    parser.add_argument("--out", type=Path, required=True, help="result JSON; a .md table is written beside it")
    parser.add_argument("--figures", type=Path, default=REPO / "benchmarks" / "results" / "figures")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of each leave-one-out training run")
    parser.add_argument("--held-out", type=int, nargs="*", default=[1, 2, 3, 4, 5], help="generators to hold out")
    parser.add_argument("--run-seconds", type=float, default=600.0,
                        help="time budget of each leave-one-out run; keep it generous so that --epochs, not the "
                             "budget, ends a run (under a tight budget fit() shortens the schedule)")
    parser.add_argument("--from-json", action="store_true",
                        help="only re-render the markdown table and figures from an existing --out JSON")
    parser.add_argument("--attribute-seconds", type=float, default=600.0, help="budget of the deployed attributor")
    parser.add_argument("--w", type=float, default=None, help="W of the challenge metric (default: the package's)")
    return parser


def score_predictions(predictions: Path, labels: Path, w: float) -> dict:
    """Closed-set and open-set scores of the attribution CSV against the true source classes."""
    import pandas as pd

    from aidetect.attribution import LABEL_NAMES, attribution_score, closed_set_metrics
    from aidetect.labels import SOURCE_CLASSES

    code = {name: c for c, name in LABEL_NAMES.items()}
    predicted = pd.read_csv(predictions)
    truth = pd.read_parquet(labels)[["row_id", "source_class"]]
    merged = truth.merge(predicted, on="row_id", how="left", validate="one_to_one")
    if merged["predicted_source"].isna().any():
        raise SystemExit(f"{predictions}: rows missing for some labelled row ids")
    true = merged["source_class"].to_numpy().astype(int)
    pred = merged["predicted_source"].map(code).to_numpy().astype(int)
    return {"n": int(len(merged)), "closed_set_with_outliers_as_errors": closed_set_metrics(true, pred),
            "open_set": attribution_score(true, pred, SOURCE_CLASSES, w)}


def plot_logo(results: list[dict], split: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [f"g{r['held_out']} ({r['fit']['epochs_run']} ep.)" for r in results]
    x = np.arange(len(results))
    series = [
        ("held out: flagged generated", [r["splits"][split]["held_out"]["flagged_generated"] for r in results], "C0", ""),
        ("known generators: flagged generated",
         [r["splits"][split]["known_generators"]["flagged_generated"] for r in results], "C0", "//"),
        ("held out: rejected as outlier",
         [r["splits"][split]["held_out"]["rejected_outlier"]["centroid_distance"] for r in results], "C3", ""),
        ("known classes: rejected as outlier",
         [r["splits"][split]["known_outlier_rate"]["centroid_distance"] for r in results], "C3", "//"),
    ]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    width = 0.2
    for i, (label, values, colour, hatch) in enumerate(series):
        ax.bar(x + (i - 1.5) * width, values, width, label=label, color=colour, hatch=hatch,
               alpha=1.0 if not hatch else 0.45, edgecolor="black", linewidth=0.4)
    ax.set_xticks(x, names)
    ax.set_xlabel("generator held out of training")
    ax.set_ylabel("share of images")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Leave one generator out ({split}): binary detector at FPR<=0.2, "
                 "open set at 1 % (centroid distance)", fontsize=8)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def pct(value) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}"


def markdown(result: dict) -> str:
    lines = [f"# Attribution and open set: {result['dataset']}", "",
             f"Date {result['date']}; machine: {result['machine']['nproc']} CPUs ({result['machine']['cpu']}); "
             f"torch threads {result['machine']['torch_threads']}; total {result['seconds']:.0f} s.", "",
             f"Command: `{result['command']}`", ""]
    main = result.get("attribution")
    if main:
        lines += [f"## Deployed attributor (model {main['model_task']}, W = {main['w']})", "",
                  "| split | head acc | head macro F1 | centroid acc | centroid macro F1 | mean distinguishability "
                  "| open-set macro score (deployed) | known called outlier |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, s in main["splits"].items():
            head, cen = s["closed_set"]["head"], s["closed_set"]["centroid"]
            lines.append(f"| {name} | {head['accuracy']:.3f} | {head['macro_f1']:.3f} | {cen['accuracy']:.3f} | "
                         f"{cen['macro_f1']:.3f} | {s['distinguishability']['mean_ratio']:.2f} | "
                         f"{s['deployed']['macro_score']:.3f} | {pct(s['deployed']['outlier_rate_known'])} % |")
        selection = ", ".join(f"{k} {v:.3f}" for k, v in main["classifier_selection"]["macro_f1"].items())
        lines += ["", f"Deployed: classifier `{main['deployed']['classifier']}` (chosen on calibration macro F1: "
                  f"{selection}), outlier score `{main['deployed']['outlier_score']}`.",
                  "", "Outlier thresholds (cap 1 %, delta 0.05):", "",
                  "| score | n per set | guaranteed | 95 % bound on the known-image rate | "
                  "known called outlier: validation | validation_augmented |", "|---|---|---|---|---|---|"]
        for score, cal in main["calibration"].items():
            ns = ", ".join(f"{k} {v['n_calibration']}" for k, v in cal["per_set"].items())
            rates = [pct(main["splits"].get(s, {}).get("open_set", {}).get(main["deployed"]["classifier"], {})
                         .get(score, {}).get("outlier_rate_known")) for s in ("validation", "validation_augmented")]
            lines.append(f"| {score} | {ns} | {cal['guaranteed_all_sets']} | {pct(cal['rate_bound_95'])} % | "
                         f"{rates[0]} % | {rates[1]} % |")
        if result.get("predict_scored"):
            p = result["predict_scored"]
            lines += ["", f"Predict split ({p['n']} labelled rows): accuracy "
                      f"{p['closed_set_with_outliers_as_errors']['accuracy']:.3f} (outliers count as errors), "
                      f"macro F1 {p['closed_set_with_outliers_as_errors']['macro_f1']:.3f}, open-set macro score "
                      f"{p['open_set']['macro_score']:.3f}, known called outlier {pct(p['open_set']['outlier_rate_known'])} %."]
    if result.get("logo"):
        for split in ("validation", "validation_augmented"):
            lines += ["", f"## Leave one generator out ({split}; {result['logo_epochs']} epochs per run)", "",
                      "| held out | epochs run | held out flagged generated | known generators flagged | real FPR "
                      "| held out rejected (centroid / softmax / energy) | known rejected (centroid) "
                      "| outlier AUROC (centroid / softmax / energy) | binary AUROC real vs held out |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for r in result["logo"]:
                s = r["splits"].get(split)
                if s is None:
                    continue
                h, rej, auc = s["held_out"], s["held_out"]["rejected_outlier"], s["held_out"]["outlier_roc_auc"]
                lines.append(
                    f"| {r['held_out']} (n={h['n']}) | {r['fit']['epochs_run']} | {pct(h['flagged_generated'])} % | "
                    f"{pct(s['known_generators']['flagged_generated'])} % | {pct(s['real']['fpr'])} % | "
                    f"{pct(rej['centroid_distance'])} / {pct(rej['max_softmax'])} / {pct(rej['energy'])} % | "
                    f"{pct(s['known_outlier_rate']['centroid_distance'])} % | "
                    f"{auc['centroid_distance']:.3f} / {auc['max_softmax']:.3f} / {auc['energy']:.3f} | "
                    f"{h['binary_roc_auc_vs_real']:.3f} |")
            short = [str(r["held_out"]) for r in result["logo"] if r["fit"]["epochs_run"] < result["logo_epochs"]]
            if short:
                lines += ["", f"Held out {', '.join(short)}: fewer epochs than asked, because the time budget of the "
                          "run shortened the schedule (a loaded machine); their rows are not like for like."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.from_json:
        import json

        result = json.loads(args.out.read_text())
        for split in ("validation", "validation_augmented"):
            if result.get("logo"):
                plot_logo(result["logo"], split, args.figures / f"{args.out.with_suffix('').name}-logo-{split}.png")
        args.out.with_suffix(".md").write_text(markdown(result))
        return 0
    os.environ["AMLS_ARTIFACTS_DIR"] = str(args.artifacts.resolve())
    os.environ["AMLS_DATA_DIR"] = str(args.data.resolve())
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from aidetect.attribution import DEFAULT_W, leave_one_generator_out, logo_config, run_attribution
    from aidetect.budget import Deadline, configure_threads
    from aidetect.cleaning import load_prepared
    from aidetect.dataio import write_json
    from aidetect.detector import TASK02_CONFIG

    w = DEFAULT_W if args.w is None else args.w
    threads = configure_threads()
    started = time.monotonic()
    stem = args.out.with_suffix("")
    labels = args.labels or (args.data.resolve().parent / "labels" / "predict_labels.parquet")
    result = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_name(), "torch_threads": threads,
                    "platform": platform.platform()},
        "dataset": str(args.data), "artifacts": str(args.artifacts),
    }
    work = Path(tempfile.mkdtemp(prefix="attribution_bench_"))
    try:
        t0 = time.monotonic()
        metrics = run_attribution(Deadline(args.attribute_seconds, start=time.monotonic()), out_dir=work / "attribution",
                                  w=w)
        result["attribution"] = metrics
        result["attribution_seconds"] = time.monotonic() - t0
        args.figures.mkdir(parents=True, exist_ok=True)
        for fig in sorted((work / "attribution" / "figures").glob("*.png")):
            shutil.copy(fig, args.figures / f"{stem.name}-{fig.name}")
        if labels.exists():
            result["predict_scored"] = score_predictions(work / "attribution" / "predictions.csv", labels, w)

        train, calibration = load_prepared("train"), load_prepared("calibration")
        evaluation = {name: load_prepared(name) for name in ("validation", "validation_augmented")}
        config = logo_config(TASK02_CONFIG, args.epochs)
        result["logo_epochs"] = args.epochs
        result["logo"] = []
        for g in args.held_out:
            logging.getLogger("bench").info("leave out generator %d (%d epochs, %.0f s budget)", g, args.epochs,
                                            args.run_seconds)
            run = leave_one_generator_out(g, config, train, calibration, evaluation, work / f"logo_{g}",
                                          Deadline(args.run_seconds, start=time.monotonic()), w=w)
            result["logo"].append(run)
            result["seconds"] = time.monotonic() - started
            write_json(args.out, result)  # partial results survive an interrupted benchmark
        for split in evaluation:
            plot_logo(result["logo"], split, args.figures / f"{stem.name}-logo-{split}.png")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = time.monotonic() - started
    write_json(args.out, result)
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
