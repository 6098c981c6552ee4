"""The compression cue of the data, and what taking it away costs: the classical model trained three ways.

In the proxy, every real photo is a JPEG file (estimated quality 95 for most), while generated images
are PNG or WebP files (a few JPEG). The packaged training re-encodes views of both classes as JPEG, but
that does not make compression uninformative: every real crop carries JPEG traces, only some generated
ones do. The shortcut-flip benchmark shows the result: saving the generated images as JPEG (quality 90
to 97) costs recall. "Fake or JPEG?" (Grommelt et al. 2024) removes such a bias by compressing the
generated training images like the real ones. This benchmark measures that trade-off on a finished
run's prepared crops, for the classical model (gradient boosting on the 87 features, corner-crop image
scores, the packaged threshold rule), trained as

- ``packaged``: clean crop + one view of the task's policy made from the stored crop (what ``train.py``
  does for Task 2, and did for Task 3 before it learnt from the whole-image views that prepare stores,
  commit f16ee39: those views are made from the original images and cannot be debiased here, so every
  Task-3 variant below uses crop views, and the Task-3 numbers describe that earlier training);
- ``debiased (real qualities)``: generated training crops that were not JPEG files are first JPEG-compressed
  at a quality drawn from the real training photos' estimated qualities (clean stage's metadata), so
  the share and strength of compression match between the classes; then as packaged;
- ``debiased (quality 60-100)``: every generated training crop is first JPEG-compressed at a quality
  drawn uniformly from 60 to 100; then as packaged.

Each is scored on validation, validation_augmented, the labelled predict split, the shortcut-flipped
predict split and its format-only half (generated images saved as JPEG, nothing else changed).

    python benchmarks/jpeg_bias.py --artifacts runs/proxy/artifacts --data DATA_ROOT \
        --out benchmarks/results/2026-01-01-jpeg-bias-proxy.json
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]

VARIANTS = ("packaged", "debiased (real qualities)", "debiased (quality 60-100)")
SPLITS = ("validation", "validation_augmented", "predict", "predict, flipped", "predict, format-only flip")


def jpeg_array(crop: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    from aidetect.augment import jpeg

    return np.asarray(jpeg(Image.fromarray(crop), quality))


def training_formats(artifacts: Path) -> tuple[np.ndarray, np.ndarray]:
    """(was each prepared training image a JPEG file, the real training photos' estimated JPEG qualities)."""
    meta = pd.read_parquet(artifacts / "clean" / "metadata.parquet")
    meta = meta[meta["split"] == "train"]
    fmt = dict(zip(zip(meta["file"], meta["row"]), meta["format"]))
    index = pd.read_parquet(artifacts / "prepared" / "train" / "index.parquet")
    is_jpeg = np.array([fmt.get((f, r)) == "JPEG" for f, r in zip(index["file"], index["row"])])
    qualities = meta.loc[meta["source_class"] == 0, "jpeg_quality"].dropna().round().astype(int).to_numpy()
    if len(qualities) == 0:
        raise SystemExit("no JPEG qualities of real training photos in the clean stage's metadata")
    return is_jpeg, qualities


def debiased_crops(crops: np.ndarray, source_class: np.ndarray, is_jpeg: np.ndarray, variant: str,
                   qualities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = crops.copy()
    for i in np.flatnonzero(source_class > 0):
        if variant == VARIANTS[1] and not is_jpeg[i]:
            out[i] = jpeg_array(crops[i], int(rng.choice(qualities)))
        elif variant == VARIANTS[2]:
            out[i] = jpeg_array(crops[i], int(rng.integers(60, 101)))
    return out


def predict_sets(data_root: Path, workdir: Path) -> dict[str, tuple[list, np.ndarray]]:
    """Corner features and labels of the predict split, its flipped copy and its format-only flip."""
    from flipped import make_flipped
    from aidetect.decode import decode_rgb
    from aidetect.features import corner_features

    roots = {"predict": data_root,
             "predict, flipped": make_flipped(data_root, workdir / "flipped"),
             "predict, format-only flip": make_flipped(data_root, workdir / "format", parts=("format",))}
    out = {}
    for name, root in roots.items():
        images = pd.read_parquet(root / "data" / "predict")
        labels = pd.read_parquet(root / "labels" / "predict_labels.parquet")
        y = images["row_id"].map(dict(zip(labels["row_id"], labels["source_class"]))).to_numpy()
        out[name] = ([corner_features(decode_rgb(b)) for b in images["image"]], y)
        print(f"[jpeg-bias] features of {name}: {len(y)} images", flush=True)
    return out


def scores_of(model, features: list) -> np.ndarray:
    return np.array([model.score_features(f).mean() for f in features])


def run(artifacts: Path, data_root: Path, tasks: tuple[str, ...]) -> dict:
    os.environ["AMLS_ARTIFACTS_DIR"] = str(artifacts)  # read only: nothing is written there
    from sklearn.metrics import roc_auc_score

    from aidetect import detector as D
    from aidetect.classical import ClassicalDetector
    from aidetect.cleaning import PreparedSplit, load_prepared
    from aidetect.training import stratified_holdout

    train = load_prepared("train")
    splits = {name: load_prepared(name) for name in D.REPORT_SPLITS}
    is_jpeg, qualities = training_formats(artifacts)
    with tempfile.TemporaryDirectory() as tmp:
        extra = predict_sets(data_root, Path(tmp))
    labels = {name: data.source_class for name, data in splits.items()}
    labels.update({name: y for name, (_, y) in extra.items()})
    crops = np.asarray(train.crops[np.arange(len(train))])  # in memory once: the debiased variants copy it
    result = {"real_training_jpeg_quality": {"median": float(np.median(qualities)), "n": int(len(qualities))},
              "generated_training_jpeg_files": int((is_jpeg & (train.source_class > 0)).sum()),
              "generated_training_images": int((train.source_class > 0).sum()), "tasks": {}}
    for task in tasks:
        config = D.TASK02_CONFIG if task == "task02" else D.TASK03_CONFIG
        train_idx, _ = stratified_holdout(train.source_class, config.holdout_fraction, config.seed)
        result["tasks"][task] = {}
        for variant in VARIANTS:
            t0 = time.monotonic()
            rng = np.random.default_rng([config.seed, 7])
            source = crops if variant == VARIANTS[0] else debiased_crops(
                crops, train.source_class, is_jpeg, variant, qualities, rng)
            features, y = D.classical_training_features(
                task, PreparedSplit("train", source, train.source_class), train_idx, config.seed)
            model = ClassicalDetector("boosting").fit_features(features, y)
            scores = {name: model.score_images(data.corners) for name, data in splits.items()}
            scores.update({name: scores_of(model, feats) for name, (feats, _) in extra.items()})
            threshold, _ = D._calibrate(scores, labels, task)
            per_split = {}
            for name in SPLITS:
                positive = labels[name] > 0
                predicted = threshold.predict(scores[name]).astype(bool)
                per_split[name] = {"roc_auc": float(roc_auc_score(positive, scores[name])),
                                   "recall_ai": float(predicted[positive].mean()),
                                   "fpr": float(predicted[~positive].mean()), "n": int(len(positive))}
            result["tasks"][task][variant] = {"splits": per_split, "threshold": threshold.to_dict(),
                                              "seconds": round(time.monotonic() - t0, 1)}
            v, p, f = per_split["validation"], per_split["predict"], per_split["predict, flipped"]
            print(f"[jpeg-bias] {task} {variant}: validation AUC {v['roc_auc']:.3f}, predict recall "
                  f"{p['recall_ai']:.3f} -> flipped {f['recall_ai']:.3f} ({time.monotonic() - t0:.0f}s)", flush=True)
    return result


def markdown(result: dict) -> str:
    lines = [f"# Compression cue: the classical model with and without it, {result['date']}", "",
             f"Machine: {result['machine']['cpu']} ({result['machine']['nproc']} cores); command: `{result['command']}`; "
             f"{result['seconds']:.0f} s. The models and thresholds are this benchmark's own: the packaged detector "
             "is not changed.", "",
             f"Real training photos: median estimated JPEG quality {result['real_training_jpeg_quality']['median']:.0f} "
             f"(n={result['real_training_jpeg_quality']['n']}); generated training images that are JPEG files: "
             f"{result['generated_training_jpeg_files']} of {result['generated_training_images']}.", "",
             "Each cell: ROC AUC / recall_ai / FPR at the packaged threshold rule. Shift = flipped minus predict.", "",
             "| task | training | " + " | ".join(SPLITS) + " | recall shift | FPR shift |",
             "|---|---|" + "---|" * (len(SPLITS) + 2)]
    for task, variants in result["tasks"].items():
        for variant, r in variants.items():
            s = r["splits"]
            cells = [f"{s[n]['roc_auc']:.3f} / {s[n]['recall_ai']:.3f} / {s[n]['fpr']:.3f}" for n in SPLITS]
            shift_r = s["predict, flipped"]["recall_ai"] - s["predict"]["recall_ai"]
            shift_f = s["predict, flipped"]["fpr"] - s["predict"]["fpr"]
            lines.append(f"| {task} | {variant} | " + " | ".join(cells) + f" | {shift_r:+.3f} | {shift_f:+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", default=str(REPO / "runs" / "proxy" / "artifacts"))
    parser.add_argument("--data", required=True, help="dataset root with data/<split>/ and labels/ (the run's data)")
    parser.add_argument("--out", required=True, help="the JSON result; the markdown table goes beside it (.md)")
    parser.add_argument("--tasks", default="task02,task03")
    args = parser.parse_args(argv)
    from result_files import data_identity, header, write

    started = time.monotonic()
    result = {**header(), "artifacts": str(Path(args.artifacts).resolve()), "data": data_identity(args.data)}
    result.update(run(Path(args.artifacts).resolve(), Path(args.data).resolve(), tuple(args.tasks.split(","))))
    result["seconds"] = round(time.monotonic() - started, 1)
    write(args.out, result, markdown(result), data_roots=[args.data])
    return 0


if __name__ == "__main__":
    sys.exit(main())
