"""Robustness comparison runs: Task 2 against Task 3 under processing the training never saw.

    python benchmarks/robustness.py --data DATA_ROOT --runs runs/proxy runs/proxy-seed1 runs/proxy-seed2 \
        --out benchmarks/results/<date>-robustness-proxy.json [--proxy-bench benchmarks/results/<date>-proxy.json]

Each ``--runs`` folder holds the ``artifacts/`` of one complete six-stage run (one seed). The images of
``validation`` are processed by every family of ``aidetect.perturb`` at each of its strengths and scored
exactly as the predict stages score an image (centre crop for the network, corner crops for the
classical model, the fused score against the calibrated threshold). Per family and strength: FPR on the
real images at the calibrated threshold, recall, ROC AUC and the recall at an empirical FPR of 0.20 (the
two tasks compared at equal FPR).

Leave one family out: for each training family (``augment.TRAINING_FAMILIES``) a Task-3 detector is
trained on the first run's prepared data without it (its augmentations, its classical views and its
calibration-under-processing set all leave it out) and scored on the benchmark families it covers.
Families no training step covers are held out by every detector already.

Writes the JSON with a top-level ``targets`` list, a markdown table beside it and figures
(``<out stem>-fpr.png``, ``<out stem>-auc.png``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from aidetect.augment import ROBUST, TRAINING_FAMILIES, without
from aidetect.crops import CROP_SIZE, square_crop
from aidetect.dataio import iter_batches
from aidetect.decode import decode_rgb
from aidetect.features import CornerFeatures, corner_features
from aidetect.labels import binary_label
from aidetect.metrics import recall_at_fpr
from aidetect.modelfiles import NETWORK_FILE
from aidetect.parallel import ordered_map
from aidetect.paths import pointing_at
from aidetect.perturb import FAMILIES, perturb
from aidetect.settings import DETECTION
from aidetect.progress import progress

SCHEMA_VERSION = 1
TASKS = ("task02", "task03")
MAX_FPR = DETECTION.max_fpr
CLEAN = ("clean", 0.0)


def load_split(data_root: Path, split: str, limit: int | None = None) -> tuple[list[bytes], np.ndarray]:
    images, labels = [], []
    for batch in iter_batches(data_root / "data" / split, labelled=True):
        images.extend(batch.images)
        labels.extend(int(c) for c in batch.source_class)
    keep = np.arange(len(images)) if limit is None or limit >= len(images) else \
        np.linspace(0, len(images) - 1, limit).round().astype(int)  # evenly spaced: every class stays in
    return [images[i] for i in keep], np.asarray(labels, dtype=np.int64)[keep]


def conditions(families: list[str]) -> list[tuple[str, float]]:
    return [CLEAN] + [(name, s) for name in families for s in FAMILIES[name].strengths]


def _process(item: tuple) -> tuple:
    """Worker: one image under every condition -> [(centre crop, corner features)] (None where it failed)."""
    index, data, wanted = item
    try:
        rgb = decode_rgb(data)
    except Exception as exc:  # noqa: BLE001 - reported by the caller, never a worker's traceback
        return [f"image {index} cannot be decoded: {type(exc).__name__}: {exc}"] * len(wanted)
    out = []
    for position, (family, strength) in enumerate(wanted):
        try:
            view = rgb if family == "clean" else perturb(rgb, family, strength, [index, position])
            out.append((square_crop(view, CROP_SIZE), corner_features(view)))
        except Exception as exc:  # noqa: BLE001 - reported, never stops the benchmark
            out.append(f"{type(exc).__name__}: {exc}")
    return out


def processed_views(images: list[bytes], wanted: list[tuple[str, float]], cache: Path) -> dict:
    """{condition: (crops, CornerFeatures)} of every image under every condition (cached on disk)."""
    key = hashlib.sha1(repr((wanted, [hashlib.sha1(b).hexdigest() for b in images])).encode()).hexdigest()[:12]
    path = cache / f"views-{key}.npz"
    if path.exists():
        stored = np.load(path)
        return {c: (stored[f"crops{i}"], CornerFeatures(stored[f"feat{i}"], stored[f"off{i}"]))
                for i, c in enumerate(wanted)}
    per_condition = [[] for _ in wanted]
    with progress(total=len(images), desc="process and crop") as bar:
        for result in ordered_map(_process, ((i, b, wanted) for i, b in enumerate(images)), window_size=16):
            for store, value in zip(per_condition, result):
                if isinstance(value, str):
                    raise SystemExit(f"processing failed: {value}")
                store.append(value)
            bar.update(1)
    views, arrays = {}, {}
    for i, (condition, values) in enumerate(zip(wanted, per_condition)):
        corners = CornerFeatures.stack([v[1] for v in values])
        views[condition] = (np.stack([v[0] for v in values]), corners)
        arrays.update({f"crops{i}": views[condition][0], f"feat{i}": corners.features, f"off{i}": corners.offsets})
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return views


def detector_scores(artifacts: Path, data_root: Path, task: str, views: dict) -> tuple[dict, float]:
    """Fused scores per condition as predict scores them, and the detector's threshold."""
    from aidetect.detector import load_detector

    with pointing_at(artifacts, data_root / "data"):
        detector = load_detector(task)
    corners = detector.scores_corner_crops
    scores = {c: detector.score(crops, None, f"{task} {c[0]} {c[1]}", feats if corners else None)
              for c, (crops, feats) in views.items()}
    return scores, detector.threshold.value


def condition_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import roc_auc_score

    predicted = scores > threshold
    return {"fpr": float(predicted[y == 0].mean()), "recall": float(predicted[y == 1].mean()),
            "roc_auc": float(roc_auc_score(y, scores)), "recall_at_fpr_0.2": recall_at_fpr(y, scores, MAX_FPR),
            "mean_score_real": float(scores[y == 0].mean()), "mean_score_ai": float(scores[y == 1].mean())}


def score_run(artifacts: Path, data_root: Path, views: dict, y: np.ndarray, tasks=TASKS) -> dict:
    results = {}
    for task in tasks:
        scores, threshold = detector_scores(artifacts, data_root, task, views)
        results[task] = {"threshold": threshold,
                         "conditions": {f"{c[0]}@{c[1]}": condition_metrics(y, s, threshold) for c, s in scores.items()}}
    return results


# --- leave one family out ----------------------------------------------------------------------


def retrain_task03(source: Path, artifacts: Path, data_root: Path, view_policy, config, seconds: float,
                   prepare_seconds: float = 1800) -> Path:
    """A Task-3 detector trained and calibrated with ``config`` on ``source``'s prepared data (an ``artifacts``
    folder holding prepared/, clean/ and task02/), written to ``artifacts``; the training split's whole-image
    views are remade with ``view_policy`` unless it is None (keep prepare's)."""
    from aidetect.budget import Deadline
    from aidetect.cleaning import load_or_build_recipe, prepare_split
    from aidetect.detector import train_task
    from aidetect.paths import task_dir

    shutil.rmtree(artifacts, ignore_errors=True)
    # The other splits are only read: hard links. The training split is rewritten (some files in place),
    # so it is a real copy and the source's own files never change.
    shutil.copytree(source / "prepared", artifacts / "prepared", copy_function=os.link,
                    ignore=lambda folder, names: ["train"] if Path(folder).name == "prepared" else [])
    shutil.copytree(source / "prepared" / "train", artifacts / "prepared" / "train")
    shutil.copytree(source / "clean", artifacts / "clean", copy_function=os.link)
    shutil.copytree(source / "task02", artifacts / "task02")
    with pointing_at(artifacts, data_root / "data"):
        if view_policy is not None:
            deadline = Deadline(prepare_seconds, start=time.monotonic())
            info = json.loads((artifacts / "prepared" / "train" / "info.json").read_text())
            prepare_split("train", load_or_build_recipe(deadline), seed=info["seed"], deadline=deadline,
                          limit=info["n_planned"], view_share=info["view_share"], view_policy=view_policy)
        train_task("task03", Deadline(seconds, start=time.monotonic()), config,
                   init_from=task_dir("task02") / NETWORK_FILE)
    return artifacts


def train_without(family: str, run: Path, data_root: Path, workdir: Path, seed: int, seconds: float) -> Path:
    """A Task-3 detector trained and calibrated on ``run``'s prepared data without training family ``family``."""
    from aidetect.detector import TASK03_CONFIG

    artifacts = workdir / f"without-{family}" / "artifacts"
    shutil.rmtree(artifacts.parent, ignore_errors=True)
    config = replace(TASK03_CONFIG, seed=seed, exclude_families=(family,))
    return retrain_task03(run / "artifacts", artifacts, data_root, without(ROBUST, [family]), config, seconds)


# --- summary, targets, figures -------------------------------------------------------------------


def mean_spread(values) -> dict:
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not len(values):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "n": int(len(values))}


def summarise(per_run: list[dict], lofo: dict, families: list[str]) -> dict:
    """Mean and spread over runs per task and condition; the held-out view of each family at moderate strength."""
    summary = {}
    for task in TASKS:
        summary[task] = {}
        for condition in per_run[0][task]["conditions"]:
            summary[task][condition] = {metric: mean_spread([r[task]["conditions"][condition][metric] for r in per_run])
                                        for metric in per_run[0][task]["conditions"][condition]}
    held_out = {}
    for family in (FAMILIES[name] for name in families):
        condition = f"{family.name}@{family.moderate}"
        if family.trained_as is None:
            task03, source = summary["task03"][condition], "packaged (family never trained on)"
        elif family.trained_as in lofo:
            task03 = {k: mean_spread([v]) for k, v in lofo[family.trained_as]["conditions"][condition].items()}
            source = f"trained without '{family.trained_as}'"
        else:
            continue
        held_out[family.name] = {"strength": family.moderate, "task03_source": source,
                                 "task02": {k: summary["task02"][condition][k] for k in ("fpr", "recall", "roc_auc", "recall_at_fpr_0.2")},
                                 "task03": {k: task03[k] for k in ("fpr", "recall", "roc_auc", "recall_at_fpr_0.2")}}
    return {"per_condition": summary, "held_out_moderate": held_out}


def split_metrics(per_run: list[dict], per_run_augmented: list[dict]) -> dict:
    """validation (the clean condition) and validation_augmented, each task, mean and spread over runs."""
    out = {}
    for task in TASKS:
        rows = {"validation": [r[task]["conditions"]["clean@0.0"] for r in per_run],
                "validation_augmented": [r[task]["conditions"]["clean@0.0"] for r in per_run_augmented]}
        out[task] = {split: {name: mean_spread([row[key] for row in values])
                             for name, key in (("recall_ai", "recall"), ("fpr", "fpr"), ("roc_auc", "roc_auc"),
                                               ("recall_at_fpr_0.2", "recall_at_fpr_0.2"))}
                     for split, values in rows.items()}
    return out


def _target(name: str, value, goal: str, met) -> dict:
    return {"name": name, "value": value, "goal": goal, "met": bool(met) if met is not None else None}


def targets(splits: dict, held_out: dict, flip: dict | None) -> list[dict]:
    t3, t2 = splits["task03"], splits["task02"]
    worst_fpr = max(held_out.items(), key=lambda kv: kv[1]["task03"]["fpr"]["mean"])
    auc_gaps = {name: h["task03"]["roc_auc"]["mean"] - h["task02"]["roc_auc"]["mean"] for name, h in held_out.items()}
    worst_gap = min(auc_gaps.items(), key=lambda kv: kv[1])
    recall_gap = t3["validation"]["recall_ai"]["mean"] - t2["validation"]["recall_ai"]["mean"]
    aug_gap = t3["validation_augmented"]["roc_auc"]["mean"] - t2["validation_augmented"]["roc_auc"]["mean"]
    rows = [
        _target("Task 3 FPR on validation", t3["validation"]["fpr"]["mean"], "<= 0.20",
                t3["validation"]["fpr"]["mean"] <= MAX_FPR),
        _target("Task 3 FPR on validation_augmented", t3["validation_augmented"]["fpr"]["mean"], "<= 0.20",
                t3["validation_augmented"]["fpr"]["mean"] <= MAX_FPR),
        _target(f"Task 3 FPR on every held-out family at moderate strength (worst: {worst_fpr[0]})",
                worst_fpr[1]["task03"]["fpr"]["mean"], "<= 0.20", worst_fpr[1]["task03"]["fpr"]["mean"] <= MAX_FPR),
        _target("Task 3 recall on validation_augmented", t3["validation_augmented"]["recall_ai"]["mean"], ">= 0.90",
                t3["validation_augmented"]["recall_ai"]["mean"] >= 0.90),
        _target("Task 3 recall on validation minus Task 2's", recall_gap, ">= -0.02", recall_gap >= -0.02),
        _target("Task 3 ROC AUC minus Task 2's on validation_augmented", aug_gap, ">= 0", aug_gap >= 0),
        _target(f"Task 3 ROC AUC minus Task 2's on every held-out family (worst: {worst_gap[0]})", worst_gap[1],
                ">= 0", worst_gap[1] >= 0),
    ]
    for task in TASKS:
        for metric in ("recall", "fpr"):
            value = None if flip is None else flip[task][metric]
            rows.append(_target(f"{task} shortcut-flip shift in {metric} (absolute)", value, "<= 0.05",
                                None if value is None else abs(value) <= 0.05))
    return rows


def flip_shift(proxy_bench: Path | None) -> dict | None:
    """Shortcut-flip shifts (flipped minus original labelled predict split) from a run_bench result."""
    if proxy_bench is None:
        return None
    result = json.loads(proxy_bench.read_text())
    shifts = {}
    for task in TASKS:
        original, flipped = result["harness"]["tasks"][task]["scores"], result["flipped"][task]["scores"]
        shifts[task] = {"recall": flipped["recall_ai"] - original["recall_ai"], "fpr": flipped["fpr"] - original["fpr"]}
    return shifts


def _fmt(stat: dict | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} +- {stat['std']:.{digits}f}" if stat["n"] > 1 else f"{stat['mean']:.{digits}f}"


def plot(summary: dict, lofo: dict, families: list[str], metric: str, ylabel: str, path: Path,
         goal: float | None = None) -> None:
    """One panel per family: ``metric`` over strength, Task 2 and Task 3 (mean and spread over runs) and
    the Task-3 detector trained without the family's training augmentation (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [FAMILIES[name] for name in families]
    cols = min(4, len(families))
    rows = -(-len(families) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.3 * rows + 0.4), sharey=True, squeeze=False)
    per = summary["per_condition"]
    for ax, family in zip(axes.flat, families):
        x = [0.0] + list(range(1, len(family.strengths) + 1))
        labels = ["none"] + [f"{s:g}" for s in family.strengths]
        keys = ["clean@0.0"] + [f"{family.name}@{s}" for s in family.strengths]
        for task, colour, name in (("task02", "tab:orange", "Task 2"), ("task03", "tab:blue", "Task 3")):
            mean = np.array([per[task][k][metric]["mean"] for k in keys])
            std = np.array([per[task][k][metric]["std"] for k in keys])
            ax.plot(x, mean, "o-", color=colour, label=name, lw=1.6, ms=3.5)
            ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, lw=0)
        if family.trained_as in lofo:
            conditions = lofo[family.trained_as]["conditions"]
            ax.plot(x, [conditions[k][metric] for k in keys], "s--", color="tab:blue", alpha=0.7, ms=3,
                    label="Task 3 without it")
        if goal is not None:
            ax.axhline(goal, color="black", lw=0.8, ls=":")
        seen = "unseen" if family.trained_as is None else f"trained: {family.trained_as}"
        ax.set_title(f"{family.name} ({seen})", fontsize=9)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_xlabel(family.unit, fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=9)
    handles, names = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat:
        h, n = ax.get_legend_handles_labels()
        if len(n) > len(names):
            handles, names = h, n
    fig.legend(handles, names, loc="upper center", ncol=len(names), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    fig.savefig(path, dpi=150)
    plt.close(fig)


def markdown(result: dict) -> str:
    head = result["header"]
    lines = [f"# Robustness comparison runs ({head['date']})", "",
             f"Command: `{head['command']}`  ", f"Machine: {head['machine']['cpu']}, {head['machine']['nproc']} cores  ",
             f"Data: {result['data']['name']} (content hash {result['data']['sha1']}), split `{result['split']}`, "
             f"{result['data']['n_real']} real and {result['data']['n_ai']} generated images  ",
             f"Runs (seeds): {', '.join(str(r['seed']) for r in result['runs'])}; commit {result['commit']}  ", "",
             "## Targets", "", "| target | value | goal | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        lines.append(f"| {t['name']} | {value} | {t['goal']} | {'yes' if t['met'] else ('n/a' if t['met'] is None else 'NO')} |")
    lines += ["", "## validation and validation_augmented (mean +- std over runs, scored as predict scores)", "",
              "| task | split | recall_ai | FPR | ROC AUC | recall at FPR 0.20 |", "|---|---|---|---|---|---|"]
    for task, splits in result["splits"].items():
        for split, m in splits.items():
            lines.append(f"| {task} | {split} | {_fmt(m['recall_ai'])} | {_fmt(m['fpr'])} | {_fmt(m['roc_auc'])} | "
                         f"{_fmt(m['recall_at_fpr_0.2'])} |")
    lines += ["", "## Held-out families at moderate strength", "",
              "Task 3 is the packaged detector for families no training step covers, and the detector trained "
              "without the covering augmentation for the others (first run's data, one seed).", "",
              "| family | strength | Task 3 from | FPR T2 | FPR T3 | recall T2 | recall T3 | AUC T2 | AUC T3 | "
              "recall@FPR0.2 T2 | recall@FPR0.2 T3 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, h in result["summary"]["held_out_moderate"].items():
        t2, t3 = h["task02"], h["task03"]
        lines.append(f"| {name} | {h['strength']:g} | {h['task03_source']} | {_fmt(t2['fpr'])} | {_fmt(t3['fpr'])} | "
                     f"{_fmt(t2['recall'])} | {_fmt(t3['recall'])} | {_fmt(t2['roc_auc'])} | {_fmt(t3['roc_auc'])} | "
                     f"{_fmt(t2['recall_at_fpr_0.2'])} | {_fmt(t3['recall_at_fpr_0.2'])} |")
    lines += ["", "## Every condition, packaged detectors (mean over runs)", "",
              "| condition | FPR T2 | FPR T3 | recall T2 | recall T3 | AUC T2 | AUC T3 |", "|---|---|---|---|---|---|---|"]
    per = result["summary"]["per_condition"]
    for condition in per["task02"]:
        a, b = per["task02"][condition], per["task03"][condition]
        lines.append(f"| {condition} | {_fmt(a['fpr'])} | {_fmt(b['fpr'])} | {_fmt(a['recall'])} | {_fmt(b['recall'])} | "
                     f"{_fmt(a['roc_auc'])} | {_fmt(b['roc_auc'])} |")
    lines += ["", f"Figures: `{Path(result['figures']['fpr']).name}`, `{Path(result['figures']['auc']).name}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    from result_files import data_identity, header, write

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="dataset root with data/<split>/")
    parser.add_argument("--runs", required=True, nargs="+", type=Path, help="run folders holding artifacts/ (one per seed)")
    parser.add_argument("--out", required=True, type=Path, help="result JSON (markdown and figures beside it)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "robustness")
    parser.add_argument("--no-lofo", action="store_true", help="skip the leave-one-family-out trainings")
    parser.add_argument("--lofo-seconds", type=float, default=1800.0,
                        help="time budget of each leave-one-family-out training (train_augmented.py's timeout)")
    parser.add_argument("--lofo-families", nargs="+", default=None, choices=sorted(TRAINING_FAMILIES),
                        help="leave out only these training families (default: every covered one)")
    parser.add_argument("--reuse-lofo", action="store_true",
                        help="reuse leave-one-family-out detectors already trained in --workdir (same first run)")
    parser.add_argument("--max-images", type=int, default=None, help="only N evenly spaced images of each split (tests)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES),
                        help="a subset of the perturbation families (default: all)")
    parser.add_argument("--proxy-bench", type=Path, default=None, help="run_bench result of the first run (flip shift)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    images, source = load_split(args.data, args.split, args.max_images)
    y = binary_label(source)
    views = processed_views(images, conditions(args.families), args.workdir / "cache")
    augmented_images, augmented_source = load_split(args.data, "validation_augmented", args.max_images)
    y_augmented = binary_label(augmented_source)
    augmented_views = processed_views(augmented_images, [CLEAN], args.workdir / "cache")
    print(f"[robustness] {len(views)} conditions x {len(images)} images ready ({time.monotonic() - started:.0f}s)", flush=True)
    per_run, per_run_augmented = [], []
    for run in args.runs:
        per_run.append(score_run(run / "artifacts", args.data, views, y))
        per_run_augmented.append(score_run(run / "artifacts", args.data, augmented_views, y_augmented))
        print(f"[robustness] scored {run} ({time.monotonic() - started:.0f}s)", flush=True)
    lofo = {}
    if not args.no_lofo:
        first = args.runs[0]
        seed = json.loads((first / "artifacts" / "task03" / "metrics.json").read_text())["seed"]
        covered = sorted({FAMILIES[name].trained_as for name in args.families} - {None})
        for family in [f for f in covered if args.lofo_families is None or f in args.lofo_families]:
            held_out = [c for c in views if c[0] == "clean" or (c[0] in FAMILIES and FAMILIES[c[0]].trained_as == family)]
            artifacts = args.workdir / f"without-{family}" / "artifacts"
            if not (args.reuse_lofo and (artifacts / "task03" / "detector.json").exists()):
                artifacts = train_without(family, first, args.data, args.workdir, seed, args.lofo_seconds)
            scored = score_run(artifacts, args.data, {c: views[c] for c in held_out}, y, tasks=("task03",))["task03"]
            metrics = json.loads((artifacts / "task03" / "metrics.json").read_text())
            lofo[family] = {**scored, "config": metrics["config"], "splits": metrics["splits"],
                            "calibration_sets": sorted(json.loads((artifacts / "task03" / "detector.json").read_text())
                                                       .get("calibration_sets", {}))}
            print(f"[robustness] without {family}: done ({time.monotonic() - started:.0f}s)", flush=True)
    summary = summarise(per_run, lofo, args.families)
    splits = split_metrics(per_run, per_run_augmented)
    flip = flip_shift(args.proxy_bench)
    stem = args.out.with_suffix("")
    figures = {"fpr": str(stem) + "-fpr.png", "auc": str(stem) + "-auc.png", "recall": str(stem) + "-recall-at-fpr.png"}
    plot(summary, lofo, args.families, "fpr", "FPR at the calibrated threshold", Path(figures["fpr"]), goal=MAX_FPR)
    plot(summary, lofo, args.families, "roc_auc", "ROC AUC", Path(figures["auc"]))
    plot(summary, lofo, args.families, "recall_at_fpr_0.2", "recall at FPR 0.20", Path(figures["recall"]))
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"schema_version": SCHEMA_VERSION, "header": header(), "commit": commit,
              "data": {**data_identity(args.data), "n_real": int((y == 0).sum()), "n_ai": int((y == 1).sum())},
              "split": args.split,
              "runs": [{"name": r.name, "seed": json.loads((r / "artifacts" / "task02" / "metrics.json").read_text())["seed"]}
                       for r in args.runs],
              "families": {name: {"strengths": list(FAMILIES[name].strengths), "unit": FAMILIES[name].unit,
                                  "trained_as": FAMILIES[name].trained_as} for name in args.families},
              "targets": targets(splits, summary["held_out_moderate"], flip), "splits": splits,
              "flip_shift": flip, "summary": summary, "per_run": per_run,
              "per_run_validation_augmented": per_run_augmented, "leave_one_family_out": lofo,
              "figures": {k: Path(v).name for k, v in figures.items()}, "seconds": time.monotonic() - started}
    write(args.out, result, markdown(result), data_roots=[args.data])
    return 0


if __name__ == "__main__":
    sys.exit(main())
