"""Choosing how Task 3 trains, on a holdout carved from the training split (never on validation).

    python benchmarks/robust_training.py --data DATA_ROOT --out benchmarks/results/<date>-robust-training-proxy.json \
        [--seeds 0 1 2] [--variants baseline broad ...]

The training split of DATA_ROOT is cut in two, stratified by source class: a development training split
and a development holdout. The holdout takes the place of ``validation`` in a development data root
(calibration splits unchanged), so the stages and the robustness benchmark run on it unchanged. On it:
clean, prepare and Task 2's training once per seed; then one Task-3 detector per variant, each trained from
that Task-2 network and calibrated as the stage calibrates. Every detector is scored on the holdout's
images processed by each perturbation family at moderate strength (``aidetect.perturb``), as the predict
stages score an image.

What a variant changes is named in ``VARIANTS``: the training processing (``narrow``: the Gaussian-blur,
JPEG-only policy; ``broad``: several blur kinds and codecs), the consistency term, and the weight of
processed real photos in the classical model. The variants are compared on the families that none of them
trains on (their mean FPR at the calibrated threshold, their ROC AUC and recall at FPR 0.20), as well as on
every family.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from aidetect.augment import POLICIES, ROBUST
from aidetect.perturb import FAMILIES
from result_files import data_identity, header, write
from robustness import (condition_metrics, load_split, mean_spread, processed_views,
                        retrain_task03)

NARROW = replace(ROBUST, name="robust_narrow", blur_kinds=("gaussian",), codecs=("jpeg",))
# name: (view policy, TrainConfig overrides)
VARIANTS = {
    "baseline": (NARROW, {}),
    "broad": (ROBUST, {}),
    "broad+consistency": (ROBUST, {"consistency_weight": 1.0}),
    "broad+consistency+real-views-x2": (ROBUST, {"consistency_weight": 1.0, "classical_real_view_weight": 2.0}),
}
STAGE_SECONDS = {"clean": 600, "prepare": 1800, "train": 3600}
CLEAN = ("clean", 0.0)


def carve_holdout(data_root: Path, out_root: Path, share: float, seed: int) -> dict:
    """A development data root: train cut into train and a stratified ``validation`` holdout."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(path) for path in sorted((data_root / "data" / "train").rglob("*.parquet"))])
    source = np.asarray(table.column("source_class").to_pylist())
    rng = np.random.default_rng([seed, 7])
    holdout = np.zeros(len(source), dtype=bool)
    for c in np.unique(source):
        members = np.flatnonzero(source == c)
        holdout[rng.choice(members, size=int(round(share * len(members))), replace=False)] = True
    shutil.rmtree(out_root, ignore_errors=True)
    for split, mask in (("train", ~holdout), ("validation", holdout)):
        (out_root / "data" / split).mkdir(parents=True)
        pq.write_table(table.filter(pa.array(mask)), out_root / "data" / split / "part-0.parquet")
    for split in ("calibration", "calibration_augmented"):
        if (data_root / "data" / split).exists():
            shutil.copytree(data_root / "data" / split, out_root / "data" / split)
    return {"train": int((~holdout).sum()), "holdout": int(holdout.sum()),
            "holdout_by_class": {str(c): int((source[holdout] == c).sum()) for c in np.unique(source)}}


def run_stages(data_root: Path, artifacts: Path, seed: int, log_dir: Path, stages: dict) -> None:
    """``stages`` (name: timeout) among clean, prepare and train (Task 2), as the harness runs them, without
    its isolation."""
    env = {**os.environ, "AMLS_DATA_DIR": str((data_root / "data").resolve()),
           "AMLS_ARTIFACTS_DIR": str(artifacts.resolve()), "AMLS_SEED": str(seed)}
    log_dir.mkdir(parents=True, exist_ok=True)
    for stage, seconds in stages.items():
        with open(log_dir / f"{stage}.log", "w") as log:
            status = subprocess.run([sys.executable, str(REPO / "solution" / f"{stage}.py"), "--timeout_seconds",
                                     str(seconds)], env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if status != 0:
            raise SystemExit(f"stage {stage} failed (exit {status}); see {log_dir / f'{stage}.log'}")


def train_variant(name: str, base: Path, data_root: Path, workdir: Path, seed: int) -> Path:
    """A Task-3 detector of variant ``name``, trained on ``base``'s prepared data (views remade if they differ)."""
    from aidetect.cleaning import VIEW_POLICY
    from aidetect.detector import TASK03_CONFIG

    policy, overrides = VARIANTS[name]
    shutil.rmtree(workdir / name, ignore_errors=True)
    remade = None if policy == POLICIES[VIEW_POLICY] else policy
    POLICIES[policy.name] = policy  # the network's views follow config.policy
    config = replace(TASK03_CONFIG, seed=seed, policy=policy.name, **overrides)
    return retrain_task03(base, workdir / name / "artifacts", data_root, remade, config, 3600,
                          prepare_seconds=3600)


def score(artifacts: Path, data_root: Path, task: str, views: dict, y: np.ndarray) -> dict:
    from aidetect.detector import load_detector
    from aidetect.paths import pointing_at

    with pointing_at(artifacts, data_root / "data"):
        detector = load_detector(task)
    corners = detector.scores_corner_crops
    out = {}
    for condition, (crops, feats) in views.items():
        scores = detector.score(crops, None, f"{task} {condition[0]}", feats if corners else None)
        out[f"{condition[0]}@{condition[1]}"] = condition_metrics(y, scores, detector.threshold.value)
    return {"threshold": detector.threshold.value, "conditions": out}


def never_trained(variants: list[str]) -> list[str]:
    """Families that no variant's policy covers (``trained_as`` is None: no training step applies them at all,
    in any variant): the fair comparison of their robustness."""
    return [name for name, family in FAMILIES.items() if family.trained_as is None]


def summarise(per_seed: list[dict], variants: list[str], families: list[str]) -> dict:
    """Mean and spread over seeds, per variant and condition, and the means over never-trained families."""
    unseen = never_trained(variants)
    summary = {}
    for name in ["task02"] + variants:
        conditions = per_seed[0][name]["conditions"]
        per_condition = {c: {m: mean_spread([s[name]["conditions"][c][m] for s in per_seed]) for m in conditions[c]}
                         for c in conditions}
        unseen_keys = [f"{f}@{FAMILIES[f].moderate}" for f in unseen if f in families]
        means = {m: mean_spread([np.mean([s[name]["conditions"][c][m] for c in unseen_keys]) for s in per_seed])
                 for m in ("fpr", "recall", "roc_auc", "recall_at_fpr_0.2")}
        worst = mean_spread([max(s[name]["conditions"][c]["fpr"] for c in unseen_keys) for s in per_seed])
        summary[name] = {"per_condition": per_condition, "never_trained_mean": means, "never_trained_worst_fpr": worst}
    return {"never_trained_families": unseen, "variants": summary}


def markdown(result: dict) -> str:
    s, head = result["summary"], result["header"]
    lines = [f"# Choosing Task 3's training on a holdout of the training split ({head['date']})", "",
             f"Command: `{head['command']}`  ",
             f"Machine: {head['machine']['cpu']}, {head['machine']['nproc']} cores  ",
             f"Data: {result['data']['name']} (content hash {result['data']['sha1']}), its `train` split cut into "
             f"{result['data']['split']['train']} training and {result['data']['split']['holdout']} holdout images "
             f"(stratified by class); validation and predict never read  ",
             f"Seeds: {', '.join(map(str, result['seeds']))} (mean +- std over seeds); commit {result['commit']}  ", "",
             "## Families no variant trains on, moderate strength (mean over families)", "",
             f"Families: {', '.join(s['never_trained_families'])}", "",
             "| detector | FPR | worst-family FPR | recall | ROC AUC | recall at FPR 0.20 |", "|---|---|---|---|---|---|"]
    for name, v in s["variants"].items():
        m = v["never_trained_mean"]
        lines.append(f"| {name} | {_fmt(m['fpr'])} | {_fmt(v['never_trained_worst_fpr'])} | {_fmt(m['recall'])} | "
                     f"{_fmt(m['roc_auc'])} | {_fmt(m['recall_at_fpr_0.2'])} |")
    conditions = list(next(iter(s["variants"].values()))["per_condition"])
    for metric, title in (("fpr", "FPR at the calibrated threshold"), ("roc_auc", "ROC AUC"),
                          ("recall", "recall at the calibrated threshold")):
        lines += ["", f"## {title}, every condition", "", "| condition | " + " | ".join(s["variants"]) + " |",
                  "|---|" + "---|" * len(s["variants"])]
        for c in conditions:
            lines.append(f"| {c} | " + " | ".join(_fmt(v["per_condition"][c][metric]) for v in s["variants"].values())
                         + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: dict) -> str:
    return f"{value['mean']:.3f}" + (f" +- {value['std']:.3f}" if value["n"] > 1 else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="dataset root with data/train/")
    parser.add_argument("--out", required=True, type=Path, help="result JSON (markdown beside it)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "robust-training")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--holdout", type=float, default=0.3, help="share of each class held out")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--reuse", action="store_true",
                        help="keep what the base runs (clean, prepare, Task 2) already made")
    args = parser.parse_args(argv)
    started = time.monotonic()
    dev_root = args.workdir / "data-root"
    split = carve_holdout(args.data, dev_root, args.holdout, seed=0)
    images, labels = load_split(dev_root, "validation")
    y = (labels > 0).astype(np.int64)
    wanted = [CLEAN] + [(name, FAMILIES[name].moderate) for name in args.families]
    views = processed_views(images, wanted, args.workdir / "cache")
    per_seed = []
    for seed in args.seeds:
        seed_dir = args.workdir / f"seed{seed}"
        base = seed_dir / "base" / "artifacts"
        done = args.reuse and (base / "task02" / "detector.json").exists()
        if not done:
            stages = STAGE_SECONDS if not (args.reuse and (base / "prepared" / "train").exists()) else {"train": 3600}
            if len(stages) > 1:
                shutil.rmtree(base, ignore_errors=True)
            run_stages(dev_root, base, seed, seed_dir / "base" / "logs", stages)
        results = {"task02": score(base, dev_root, "task02", views, y)}
        for name in args.variants:
            artifacts = train_variant(name, base, dev_root, seed_dir, seed)
            results[name] = score(artifacts, dev_root, "task03", views, y)
            print(f"seed {seed} {name}: " + ", ".join(f"{c} fpr {m['fpr']:.2f}" for c, m in
                                                       results[name]["conditions"].items()), flush=True)
        per_seed.append(results)
    result = {"schema_version": 1, "header": header(), "commit": _commit(), "seeds": args.seeds,
              "data": {**data_identity(args.data), "split": split},
              "variants": {name: {"policy": VARIANTS[name][0].name, "overrides": VARIANTS[name][1]}
                           for name in args.variants},
              "summary": summarise(per_seed, args.variants, args.families), "per_seed": per_seed,
              "seconds": time.monotonic() - started}
    write(args.out, result, markdown(result), data_roots=[args.data])
    return 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
