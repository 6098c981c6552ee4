"""The proxy benchmark (docs/proxy.md): everything the detector issue must show, in one run.

    PYTHONPATH=tools python benchmarks/run_bench.py --data DATA_ROOT --out benchmarks/results

1. the course reference runtime (docs/contract.md), measured first, on the same machine;
2. the packaged six-stage pipeline through the grading harness with the official
   timeouts (read-only data, no network), scored on the labelled predict split;
3. the same trained detectors on a shortcut-flipped copy of the predict split,
   and on copies with only one half of the flip (format, geometry) applied;
4. the model families (classical, TraceNet, course baseline) on the same data and budget.

Writes ``<out>/<date>-proxy.json`` and ``<out>/<date>-proxy.md``; the run's
artifacts stay in ``runs/proxy/`` for explainability, attribution and the report.
The result names the data by name and content hash, never by path (``result_files.portable``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from flipped import PARTS, VARIANTS, make_flipped
from grade import grade, score_predictions, validate_predictions, read_predict_ids
from result_files import data_identity, describe_data, portable


def step(title: str) -> None:
    print(f"\n[bench] === {title} ({time.strftime('%H:%M:%S')})", flush=True)


def reference_runtime(out_dir: Path) -> dict:
    path = out_dir / "reference_runtime.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "reference_runtime.py"), "--json", str(path)], check=True)
    return json.loads(path.read_text())


def score_flipped(run_dir: Path, data_root: Path, parts: tuple[str, ...] = PARTS, name: str = "flipped") -> dict:
    """Predict the flipped split (or one with only ``parts`` of the flip) with the trained artifacts and score it."""
    flipped_root = make_flipped(data_root, run_dir / name, parts=parts)
    artifacts = run_dir / f"{name}_artifacts"
    shutil.rmtree(artifacts, ignore_errors=True)
    shutil.copytree(run_dir / "artifacts", artifacts)
    env = dict(os.environ, AMLS_DATA_DIR=str(flipped_root / "data"), AMLS_ARTIFACTS_DIR=str(artifacts))
    results = {}
    for task, script in (("task02", "predict.py"), ("task03", "predict_augmented.py")):
        subprocess.run([sys.executable, script, "--timeout_seconds", "600"], cwd=REPO / "solution", env=env, check=True)
        info, preds = validate_predictions(str(artifacts / task / "predictions.csv"), read_predict_ids(str(flipped_root)))
        results[task] = {"valid": info["valid"], "scores": score_predictions(preds, str(flipped_root / "labels" / "predict_labels.parquet"))}
    return results


def flip_decomposition(run_dir: Path, data_root: Path) -> dict:
    """Each half of the flip alone: which one moves the detectors."""
    return {label: score_flipped(run_dir, data_root, parts, "flip_" + "_".join(parts)) for label, parts in VARIANTS.items()}


def flip_table(result: dict) -> list[str]:
    """Markdown rows: recall_ai and FPR on the predict split, the flip and its halves, with the shift from predict."""
    card = result["harness"]
    variants = {"shortcut-flipped": result.get("flipped", {}), **result.get("flip_decomposition", {})}
    lines = ["", "## Shortcut flip and its halves (predict split; shift = variant minus the normal predict split)", "",
             "| task | variant | recall_ai | FPR | recall shift | FPR shift |", "|---|---|---|---|---|---|"]
    for task in ("task02", "task03"):
        base = card["tasks"][task].get("scores") or {}
        for label, scored in variants.items():
            sc = (scored.get(task) or {}).get("scores") or {}
            if not sc or not base:
                continue
            lines.append(f"| {task} | {label} | {fmt(sc['recall_ai'])} | {fmt(sc['fpr'])} | "
                         f"{sc['recall_ai'] - base['recall_ai']:+.3f} | {sc['fpr'] - base['fpr']:+.3f} |")
    return lines


def families(run_dir: Path, out_dir: Path, budget: float) -> dict:
    path = out_dir / "families.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "families.py"), "--artifacts", str(run_dir / "artifacts"),
                    "--budget", str(budget), "--out", str(path)], check=True)
    return json.loads(path.read_text())


def fmt(x, nd=3):
    return "n/a" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def markdown(result: dict) -> str:
    card = result["harness"]
    lines = [f"# Proxy benchmark, {result['date']}", "",
             f"Machine: {result['machine']['cpu']} ({result['machine']['nproc']} cores); command: `{result['command']}`", "",
             *([f"Data: {describe_data(result['data'])}.", ""] if result.get("data") else []),
             *([f"Note: {result['note']}.", ""] if result.get("note") else []),
             "## Stages (official timeouts, read-only data, no network)", "",
             "| stage | timeout s | wall s | exit | peak MB |", "|---|---|---|---|---|"]
    for s in card["stages"]:
        lines.append(f"| {s['name']} | {s['timeout_seconds']} | {s['wall_seconds']:.0f} | {s['exit_code']} | {fmt(s['peak_rss_mb'], 0)} |")
    ref = result["reference"]["elapsed_seconds"]
    train = sum(s["wall_seconds"] for s in card["stages"] if s["name"] in ("train", "train_augmented"))
    lines += ["", f"Reference runtime (same machine, same run): {ref:.0f} s; 5x = {5 * ref:.0f} s. "
              f"train + train_augmented wall time: {train:.0f} s = {train / ref:.2f}x the reference.", "",
              "## Detection (threshold calibrated on calibration/, FPR cap 0.20)", "",
              "| task | split | recall_ai | FPR | ROC AUC |", "|---|---|---|---|---|"]
    for task in ("task02", "task03"):
        mm = (card["tasks"][task].get("model_metrics") or {}).get("splits") or {}
        for split in ("validation", "validation_augmented"):
            m = mm.get(split, {})
            lines.append(f"| {task} | {split} | {fmt(m.get('recall_ai'))} | {fmt(m.get('fpr'))} | {fmt(m.get('roc_auc'))} |")
        sc = card["tasks"][task].get("scores") or {}
        lines.append(f"| {task} | predict (labelled) | {fmt(sc.get('recall_ai'))} | {fmt(sc.get('fpr'))} | |")
        fl = (result.get("flipped", {}).get(task) or {}).get("scores") or {}
        lines.append(f"| {task} | predict, shortcut-flipped | {fmt(fl.get('recall_ai'))} | {fmt(fl.get('fpr'))} | |")
    if result.get("flip_decomposition"):
        lines += flip_table(result)
    parts = result.get("components", {})
    if parts:
        lines += ["", "## Effect of each modelling choice (the packaged run's own models, same thresholds rule)", "",
                  "| task | model | val recall_ai | val FPR | val AUC | val_aug recall_ai | val_aug FPR | val_aug AUC |",
                  "|---|---|---|---|---|---|---|---|"]
        for task, models in parts.items():
            for name, splits in models.items():
                v, a = splits.get("validation", {}), splits.get("validation_augmented", {})
                lines.append(f"| {task} | {name} | {fmt(v.get('recall_ai'))} | {fmt(v.get('fpr'))} | {fmt(v.get('roc_auc'))} | "
                             f"{fmt(a.get('recall_ai'))} | {fmt(a.get('fpr'))} | {fmt(a.get('roc_auc'))} |")
    fam = result.get("families", {}).get("families", {})
    if fam:
        base = fam.get("course_baseline", {}).get("splits", {}).get("validation", {})
        lines += ["", f"## Model families (same prepared data, {result['families']['budget_seconds']:.0f} s budget each)", "",
                  "| family | val recall_ai | val FPR | val AUC | val_aug recall_ai | val_aug AUC | AUC / baseline | train s |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, f in fam.items():
            v, a = f["splits"].get("validation", {}), f["splits"].get("validation_augmented", {})
            ratio = v.get("roc_auc") / base["roc_auc"] if base.get("roc_auc") else None
            lines.append(f"| {name} | {fmt(v.get('recall_ai'))} | {fmt(v.get('fpr'))} | {fmt(v.get('roc_auc'))} | "
                         f"{fmt(a.get('recall_ai'))} | {fmt(a.get('roc_auc'))} | {fmt(ratio, 2)} | {f['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def components(run_dir: Path) -> dict:
    out = {}
    for task in ("task02", "task03"):
        path = run_dir / "artifacts" / task / "metrics.json"
        if path.exists():
            m = json.loads(path.read_text())
            out[task] = {label: m.get(key) or {} for label, key in (
                ("classical (boosting)", "classical_splits"), ("TraceNet", "network_splits"),
                (f"packaged: {m.get('detector')}", "splits"))}
    return out


def assemble(args) -> int:
    """Write the results from the pieces an earlier (possibly interrupted) run left in --run-dir."""
    data_root, out_dir, run_dir = Path(args.data).resolve(), Path(args.out).resolve(), Path(args.run_dir).resolve()
    from reference_runtime import cpu_name

    date = time.strftime("%Y-%m-%d")
    result = {"date": date, "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": {"cpu": cpu_name(), "nproc": os.cpu_count(), "host": platform.node()},
              "data": data_identity(data_root),
              "reference": json.loads((run_dir / "reference_runtime.json").read_text()),
              "harness": json.loads((run_dir / "scorecard.json").read_text())}
    previous = out_dir / f"{date}-proxy.json"  # the run's own result, if this re-assembles it: keep its command
    previous = json.loads(previous.read_text()) if previous.exists() else {}
    same_run = (previous.get("harness") or {}).get("date") == result["harness"].get("date")
    run_command = previous.get("run_command") or previous.get("command") if same_run else None
    if run_command:
        result["run_command"] = run_command
    result["note"] = (f"assembled at {time.strftime('%Y-%m-%d %H:%M')} from the run in {run_dir.name} (its stages, "
                      f"reference and families; commit {result['harness'].get('git_commit')}"
                      + (f"; run by `{run_command}`" if run_command else "")
                      + "); the flipped splits were scored now with that run's artifacts")
    result["components"] = components(run_dir)
    step("shortcut-flipped predict split")
    result["flipped"] = score_flipped(run_dir, data_root)
    step("the flip's halves alone")
    result["flip_decomposition"] = flip_decomposition(run_dir, data_root)
    if args.families_json:
        result["families"] = json.loads(Path(args.families_json).read_text())
    result = portable(json.loads(json.dumps(result, default=str)), [args.data])
    (out_dir / f"{date}-proxy.json").write_text(json.dumps(result, indent=2))
    (out_dir / f"{date}-proxy.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset root with data/<split>/ and labels/ (see docs/proxy.md)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "proxy"))
    parser.add_argument("--family-budget", type=float, default=300.0)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-families", action="store_true")
    parser.add_argument("--assemble", action="store_true",
                        help="do not run anything long: read the reference, scorecard and families results of an "
                             "earlier run from --run-dir (and --families-json), score the flipped split, write the results")
    parser.add_argument("--families-json", default=None, help="with --assemble: a families.py result file")
    args = parser.parse_args(argv)
    if args.assemble:
        return assemble(args)
    data_root, out_dir, run_dir = Path(args.data).resolve(), Path(args.out).resolve(), Path(args.run_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    date = time.strftime("%Y-%m-%d")
    from reference_runtime import cpu_name

    result = {"date": date, "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": {"cpu": cpu_name(), "nproc": os.cpu_count(), "host": platform.node()},
              "data": data_identity(data_root)}
    if not args.skip_reference:
        step("reference runtime")
        result["reference"] = reference_runtime(run_dir)
    step("six stages through the harness")
    card = grade(str(data_root), str(REPO / "solution"), workspace=str(run_dir / "workspace"),
                 out=str(run_dir / "scorecard.json"), artifacts_out=str(run_dir / "artifacts"))
    result["harness"] = card
    result["components"] = components(run_dir)
    step("shortcut-flipped predict split")
    result["flipped"] = score_flipped(run_dir, data_root)
    step("the flip's halves alone")
    result["flip_decomposition"] = flip_decomposition(run_dir, data_root)
    if not args.skip_families:
        step("model families")
        result["families"] = families(run_dir, run_dir, args.family_budget)
    result = portable(json.loads(json.dumps(result, default=str)), [args.data])
    (out_dir / f"{date}-proxy.json").write_text(json.dumps(result, indent=2))
    copy_run_outputs(run_dir / "artifacts", out_dir, date)
    if "reference" in result:
        (out_dir / f"{date}-proxy.md").write_text(markdown(result))
        print(markdown(result))
    return 0 if card.get("all_valid") else 1


def copy_run_outputs(artifacts: Path, out_dir: Path, date: str) -> None:
    """The run's per-task metrics and its exploration (figures, statistics, cleaning report) next to the result."""
    for task in ("task02", "task03"):
        metrics = artifacts / task / "metrics.json"
        if metrics.exists():
            shutil.copy2(metrics, out_dir / f"{date}-proxy-{task}-metrics.json")
    exploration = out_dir / f"{date}-proxy-exploration"
    clean = artifacts / "clean"
    for name in ("cleaning.json", "exploration.json"):
        if (clean / name).exists():
            exploration.mkdir(parents=True, exist_ok=True)
            shutil.copy2(clean / name, exploration / name)
    if (clean / "figures").is_dir():
        shutil.copytree(clean / "figures", exploration / "figures", dirs_exist_ok=True)


if __name__ == "__main__":
    sys.exit(main())
