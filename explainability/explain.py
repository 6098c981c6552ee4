"""Why the detectors decide as they do, where they fail, and whether they take shortcuts.

    python explainability/explain.py --artifacts solution/artifacts --data solution/data \
        --out explainability/output [--tasks task02,task03] [--max-images 16] [--seed 0]

Reads a pipeline run (each task's ``detector.json`` and checkpoint, the prepared
validation crops, ``clean/metadata.parquet``) and the original validation files;
never trains. Writes PNG figures, ``summary.json`` (every number) and
``discussion.md`` (a critical discussion whose numbers come from the summary).

The analyses run in order of importance under one deadline; ``summary.json`` is
rewritten after each, so whatever finished is kept when time runs out:

1. scores, errors and per-source rates at the calibrated threshold;
2. errors against image statistics (texture, brightness, original size and format);
3. Grad-CAM on every validation crop: mean attention of real vs generated, error galleries;
4. shortcut audit: PNG / JPEG re-encoding, resizing, aspect crops and borders of the originals;
5. input-channel ablation: the network without its residual or its colour channels;
6. Integrated Gradients and occlusion on a sample, and the deletion test of every map;
7. frequency audit: low- and high-pass filtered crops, and the mean spectra;
8. grouped permutation importance: AUC lost when a classical feature group or the network's score is shuffled.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from aidetect.budget import Deadline, configure_threads
from aidetect.dataio import write_json
from aidetect.errors import PipelineError
from aidetect.labels import binary_label
from aidetect.metrics import detection_metrics
from aidetect.paths import pointing_at

from aidetect.provenance import data_identity, describe_data, portable
from explainability import attributions, audit, figures
from explainability.discussion import write_discussion
from explainability.loading import TaskModel, ValidationSet, load_task_model, load_validation

log = logging.getLogger("explain")

TASKS = ("task02", "task03")
RESERVE_SECONDS = 20.0  # kept for the last figures and discussion.md
N_GALLERY = 5


@dataclass
class Run:
    """The state one explanation run builds up; ``summary`` is what gets written."""

    args: argparse.Namespace
    deadline: Deadline
    out: Path
    data: ValidationSet
    models: dict[str, TaskModel]
    summary: dict
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # the detector's score
    explained: dict[str, np.ndarray] = field(default_factory=dict)  # the part the maps explain (network logit)
    classical: dict[str, np.ndarray | None] = field(default_factory=dict)  # a fusion's classical part
    predicted: dict[str, np.ndarray] = field(default_factory=dict)
    gradcam: dict[str, np.ndarray] = field(default_factory=dict)  # signed maps of every crop

    @property
    def labels(self) -> np.ndarray:
        return binary_label(self.data.source_class)

    def keep_going(self) -> bool:
        return self.deadline.remaining() > RESERVE_SECONDS

    def task_summary(self, task: str) -> dict:
        return self.summary["tasks"][task]

    def figure(self, key: str, path: Path) -> None:
        self.summary["figures"][key] = path.name


# --- 1. scores and errors -----------------------------------------------------------


def analyse_scores(run: Run) -> None:
    rates = {}
    for task, model in run.models.items():
        explained = model.explained_scores(run.data.crops)
        classical = model.classical_image_scores(run.data) if model.kind != "network" else None
        # A classical detector's score is its corner-crop mean; the maps still explain single crops.
        scores = classical if model.kind == "classical" else model.combine(explained, classical_scores=classical)
        predicted = model.predict(scores)
        run.scores[task], run.explained[task], run.classical[task] = scores, explained, classical
        run.predicted[task] = predicted
        metrics = detection_metrics(run.data.source_class, scores, predicted)
        labels, sources = run.labels, run.data.source_class
        false_positive = np.flatnonzero((labels == 0) & (predicted == 1))
        false_negative = np.flatnonzero((labels == 1) & (predicted == 0))
        run.task_summary(task)["validation"] = {
            key: metrics[key] for key in ("n", "n_real", "n_ai", "recall_ai", "fpr", "fpr_ci95", "precision_ai",
                                          "balanced_accuracy", "roc_auc", "confusion", "recall_per_class")}
        run.task_summary(task)["errors"] = {
            "false_positives": [_describe(run, i, scores) for i in false_positive[np.argsort(-scores[false_positive])]],
            "false_negatives": [_describe(run, i, scores) for i in false_negative[np.argsort(scores[false_negative])]],
        }
        rates[task] = {str(int(c)): (int(predicted[sources == c].sum()), int((sources == c).sum()))
                       for c in np.unique(sources)}
    run.figure("per_source_rates", figures.per_source_rates(run.out / "per_source_recall.png", rates))


def _describe(run: Run, i: int, scores: np.ndarray) -> dict:
    entry = {"index": int(i), "source_class": int(run.data.source_class[i]), "score": float(scores[i])}
    if run.data.index is not None:
        entry["file"], entry["row"] = str(run.data.index["file"].iloc[i]), int(run.data.index["row"].iloc[i])
    if run.data.metadata is not None:
        meta = run.data.metadata.iloc[i]
        for key in ("format", "width", "height"):
            if key in meta and meta[key] == meta[key]:
                entry[key] = meta[key].item() if hasattr(meta[key], "item") else meta[key]
    return entry


# --- 2. image statistics ------------------------------------------------------------


def analyse_image_statistics(run: Run) -> None:
    table = audit.image_table(run.data)
    run.summary["data"]["metadata_matched"] = run.data.metadata is not None
    for task in run.models:
        run.task_summary(task)["image_statistics"] = audit.error_statistics(table, run.scores[task], run.predicted[task])
        path = figures.image_statistics(run.out / f"{task}_image_statistics.png", task, table, run.scores[task],
                                        run.predicted[task], run.models[task].threshold)
        run.figure(f"{task}_image_statistics", path)


# --- 3. Grad-CAM on every crop -------------------------------------------------------


def analyse_gradcam(run: Run) -> None:
    labels = run.labels
    for task, model in run.models.items():
        maps = None
        if model.network is None:
            run.task_summary(task)["gradcam"] = {"skipped": "classical fallback detector: no gradients"}
        else:
            maps = attributions.gradcam_maps(model, run.data.crops,
                                             centre=model.network_thresholds(len(run.data), run.classical[task]))
            run.gradcam[task] = maps
            decision = attributions.decision_maps(maps, run.predicted[task])
            real_mean, generated_mean = maps[labels == 0].mean(axis=0), maps[labels == 1].mean(axis=0)
            both = real_mean.std() > 0 and generated_mean.std() > 0
            run.task_summary(task)["gradcam"] = {
                "layer": "stages[-1] (last residual block), bilinear upsampling to the crop",
                "map": "signed Grad-CAM of the network logit, centred so the cells sum to logit - threshold "
                       "(for a fusion: each image's threshold on the network logit, the classical part held fixed)",
                "attention_of": "evidence for the model's own decision: ReLU(map x sign of the decision)",
                "attention": {"real": attributions.attention_statistics(decision[labels == 0]),
                              "generated": attributions.attention_statistics(decision[labels == 1]),
                              "false_positives": attributions.attention_statistics(
                                  decision[(labels == 0) & (run.predicted[task] == 1)]),
                              "false_negatives": attributions.attention_statistics(
                                  decision[(labels == 1) & (run.predicted[task] == 0)])},
                "mean_map_correlation_real_vs_generated": (
                    float(np.corrcoef(real_mean.ravel(), generated_mean.ravel())[0, 1]) if both else None),
                "mean_map_range": {"real": [float(real_mean.min()), float(real_mean.max())],
                                   "generated": [float(generated_mean.min()), float(generated_mean.max())]},
                "completeness": attributions.gradcam_completeness(model, np.asarray(run.data.crops[:8])),
            }
            cell_px = run.task_summary(task)["gradcam"]["completeness"]["cell_px"]
            path = figures.mean_attention(run.out / f"{task}_gradcam_mean.png", task, real_mean, generated_mean,
                                          {"real": int((labels == 0).sum()), "generated": int((labels == 1).sum())},
                                          cell_px)
            run.figure(f"{task}_gradcam_mean", path)
        run.figure(f"{task}_errors", _error_gallery(run, task, maps))


def _error_gallery(run: Run, task: str, maps: np.ndarray | None) -> Path:
    scores, predicted, labels = run.scores[task], run.predicted[task], run.labels
    sections = []
    for label, wrong_title, near_title in ((0, "false positives (real called generated)",
                                            "no false positive: highest-scoring real images"),
                                           (1, "false negatives (generated called real)",
                                            "no false negative: lowest-scoring generated images")):
        member = np.flatnonzero(labels == label)
        ranked = member[np.argsort(-scores[member] if label == 0 else scores[member])]
        wrong = ranked[predicted[ranked] != label]
        chosen, title = (wrong, wrong_title) if len(wrong) else (ranked, near_title)
        items = [{"crop": np.asarray(run.data.crops[i]), "score": float(scores[i]), "source": int(run.data.source_class[i]),
                  "map": None if maps is None else maps[i]}
                 for i in chosen[:N_GALLERY]]
        sections.append({"title": title, "items": items})
    return figures.error_gallery(run.out / f"{task}_errors.png", task, sections, run.models[task].threshold)


# --- 4. shortcut audit ---------------------------------------------------------------


def audit_positions(run: Run) -> np.ndarray:
    """All crops, or a class-stratified random subset of ``--max-audit-images``."""
    n = len(run.data)
    limit = run.args.max_audit_images
    if not limit or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng([run.args.seed, 4])
    sources = run.data.source_class
    chosen = []
    for c in np.unique(sources):
        members = np.flatnonzero(sources == c)
        take = max(1, int(round(limit * len(members) / n)))
        chosen.extend(rng.choice(members, size=min(take, len(members)), replace=False).tolist())
    return np.array(sorted(chosen))


def analyse_shortcuts(run: Run) -> None:
    if run.data.index is None:
        raise PipelineError("prepared/validation/index.parquet is missing: cannot find the original files")
    positions = audit_positions(run)
    raw = audit.shortcut_scores(list(run.models.values()), run.data, positions, run.scores, run.keep_going)
    audits = {}
    for task, model in run.models.items():
        audits[task] = audit.summarise_shortcuts(raw, run.data.source_class, task, model.threshold)
        audits[task]["n_requested"] = int(len(positions))
        run.task_summary(task)["shortcut_audit"] = audits[task]
        path = figures.shortcut_by_source(run.out / f"{task}_shortcut_by_source.png", task, audits[task])
        run.figure(f"{task}_shortcut_by_source", path)
    run.figure("shortcut_audit", figures.shortcut_overview(run.out / "shortcut_audit.png", audits))


# --- 5. input-channel ablation -------------------------------------------------------


def analyse_channels(run: Run) -> None:
    results = {}
    positions = audit_positions(run)
    crops = np.asarray(run.data.crops[positions])
    for task, model in run.models.items():
        groups = audit.front_end_groups(model.network) if model.network is not None else None
        if groups is None:
            run.task_summary(task)["channel_ablation"] = {
                "skipped": "no network with the HighPassFrontEnd layout" if model.network is not None else
                           "classical fallback detector: no input channels to ablate"}
            continue
        entry = {"groups": groups, "zeroed": "front-end output channels set to 0 (no residual / mid-grey colour)",
                 "decisions_of": "the whole detector" + (" (network ablated, classical part unchanged)"
                                                          if model.kind == "fusion" else ""),
                 "n_images": int(len(positions)),
                 "none": _ablation_entry(run, task, positions, run.explained[task][positions])}
        for name, channels in audit.ablations(groups).items():
            if not run.keep_going():
                break
            entry[name] = _ablation_entry(run, task, positions, audit.scores_without_channels(model, crops, channels))
        run.task_summary(task)["channel_ablation"] = results[task] = entry
    if results:
        run.figure("channel_ablation", figures.channel_ablation(run.out / "channel_ablation.png", results))


def _ablation_entry(run: Run, task: str, positions: np.ndarray, network_scores: np.ndarray) -> dict:
    model, sources = run.models[task], run.data.source_class[positions]
    classical = run.classical[task][positions] if run.classical[task] is not None else None
    entry = audit.describe_scores(model.combine(network_scores, classical_scores=classical), sources, model.threshold)
    if model.kind == "fusion":
        entry["network_roc_auc"] = audit.describe_scores(network_scores, sources, 0.0)["roc_auc"]
    return entry


# --- 6. attributions on a sample and the deletion test -------------------------------


def select_sample(labels: np.ndarray, scores: np.ndarray, predicted: np.ndarray, n: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` crops: the most confident errors and random correct ones, mostly generated images.

    Order: one false positive, false negative, true positive and true negative
    first (the displayed rows), then generated, then real images.
    """
    def ranked(mask, by):
        idx = np.flatnonzero(mask)
        return idx[np.argsort(by[idx])]

    fp = ranked((labels == 0) & (predicted == 1), -scores)
    fn = ranked((labels == 1) & (predicted == 0), scores)
    tp = rng.permutation(np.flatnonzero((labels == 1) & (predicted == 1)))
    tn = rng.permutation(np.flatnonzero((labels == 0) & (predicted == 0)))
    n_real = min(max(2, n // 4), n, len(fp) + len(tn))
    reals = list(fp[: (n_real + 1) // 2]) + list(tn)
    reals = (reals + [i for i in fp if i not in reals])[:n_real]
    n_generated = n - len(reals)
    generated = list(fn[: (n_generated + 1) // 2]) + list(tp)
    generated = (generated + [i for i in fn if i not in generated])[:n_generated]
    head = [group[0] for group in (fp, fn, tp, tn) if len(group) and group[0] in reals + generated]
    rest = [i for i in generated + reals if i not in head]
    return np.array(head + rest, dtype=np.int64)


def analyse_attributions(run: Run) -> None:
    deletions = {}
    for task, model in run.models.items():
        if not run.keep_going():
            run.task_summary(task)["attributions"] = {"skipped": "time budget"}
            continue
        result = _attribute_task(run, task, model)
        run.task_summary(task)["attributions"] = result
        if result.get("deletion", {}).get("n_images"):
            deletions[task] = result["deletion"] | {
                "threshold": model.threshold if model.kind != "fusion" else None,
                "y_label": "mean network logit" if model.network is not None else "mean classical log-odds"}
        write_json(run.out / "summary.json", run.summary)
    if deletions:
        run.figure("deletion_curves", figures.deletion_curves(run.out / "deletion_curves.png", deletions))


def _attribute_task(run: Run, task: str, model: TaskModel) -> dict:
    rng = np.random.default_rng([run.args.seed, int(task[-2:])])
    labels, scores, predicted = run.labels, run.scores[task], run.predicted[task]
    sample = select_sample(labels, scores, predicted, run.args.max_images, rng)
    crops = np.asarray(run.data.crops[sample])
    baselines = attributions.blurred(crops)
    maps, n_done, notes = {}, {}, {}
    if model.network is not None:
        classical = run.classical[task][sample] if run.classical[task] is not None else None
        maps["gradcam"] = (run.gradcam[task][sample] if task in run.gradcam else attributions.gradcam_maps(
            model, crops, centre=model.network_thresholds(len(sample), classical)))
        n_done["gradcam"] = len(sample)
        ig, errors = [], []
        for i in range(len(sample)):
            if not run.keep_going():
                break
            one_map, error = attributions.integrated_gradients_maps(model, crops[i : i + 1], baselines[i : i + 1])
            ig.append(one_map[0])
            errors.append(error[0])
        maps["integrated_gradients"], n_done["integrated_gradients"] = np.asarray(ig), len(ig)
        notes["integrated_gradients_relative_completeness_error_median"] = float(np.median(errors)) if errors else None
    else:
        notes["skipped_gradient_methods"] = "classical fallback detector: Grad-CAM and Integrated Gradients need a network"
    occlusion = []
    for i in range(min(run.args.max_occlusion_images, len(sample))):
        if not run.keep_going():
            break
        occlusion.append(attributions.occlusion_maps(model, crops[i : i + 1], baselines[i : i + 1])[0])
    maps["occlusion"], n_done["occlusion"] = np.asarray(occlusion), len(occlusion)

    result = {
        "explains": ("the network logit (for a fusion detector: its network part; the classical part has no "
                     "gradients)" if model.network is not None else "the classical log-odds"),
        "sample": [_describe(run, int(i), scores) | {"predicted": int(predicted[i])} for i in sample],
        "n_maps": n_done,
        "baseline": f"the image blurred by a Gaussian of sigma {attributions.BLUR_SIGMA} px (removes the "
                    "high-frequency traces, keeps colours and layout)",
        "integrated_gradients_steps": attributions.IG_STEPS,
        "occlusion_window_px": attributions.OCCLUSION_WINDOW,
        "occlusion_stride_px": attributions.OCCLUSION_STRIDE,
        "occlusion_replacement": "the blurred image (same baseline)",
        **notes,
    }
    displayed = [i for i in range(min(4, len(sample))) if all(n_done[m] > i for m in maps)]
    if displayed:
        rows = [{"crop": crops[i],
                 "title": (f"{figures.source_name(run.data.source_class[sample[i]])}, score {scores[sample[i]]:.2f}\n"
                           f"{_outcome(labels[sample[i]], predicted[sample[i]])}"),
                 "maps": {m: maps[m][i] for m in maps}} for i in displayed]
        path = figures.attribution_panels(run.out / f"{task}_attributions.png", task, rows, list(maps),
                                          "network logit" if model.network is not None else "classical log-odds")
        run.figure(f"{task}_attributions", path)
    result.update(_deletion_test(run, model, sample, crops, baselines, maps, n_done, rng))
    return result


def _outcome(label: int, predicted: int) -> str:
    return {(1, 1): "true positive", (0, 0): "true negative", (0, 1): "FALSE POSITIVE",
            (1, 0): "FALSE NEGATIVE"}[(int(label), int(predicted))]


def _deletion_test(run, model, sample, crops, baselines, maps, n_done, rng) -> dict:
    """Deletion curves on the sample's generated images: every map against random orders.

    The headline set is every generated image that has the per-image maps
    (Integrated Gradients for the network, occlusion for the classical
    fallback); when occlusion covers fewer images, it is compared on its own
    subset against the other curves of the same images.
    """
    is_generated = run.labels[sample] == 1
    detected = run.predicted[model.task][sample] == 1
    headline_length = n_done["integrated_gradients"] if model.network is not None else n_done["occlusion"]
    methods = [m for m in maps if n_done[m] >= headline_length and headline_length > 0]
    chosen = np.flatnonzero(is_generated[:headline_length])
    if not methods or not len(chosen):
        return {"deletion": {"skipped": "no generated image with attribution maps"}}
    orders = {m: attributions.removal_orders(maps[m][chosen], rng) for m in methods}
    n_blocks = next(iter(orders.values())).shape[1]
    for seed in range(attributions.N_RANDOM_ORDERS):
        seeded = np.random.default_rng([run.args.seed, 77, seed])
        orders[f"random_{seed}"] = attributions.random_orders(len(chosen), n_blocks, seeded)
    curves = attributions.deletion_curves(model, crops[chosen], baselines[chosen], orders,
                                          keep_going=run.keep_going)
    done = len(next(iter(curves.values())))
    if done == 0:
        return {"deletion": {"skipped": "time budget"}}
    out = {"deletion": attributions.summarise_deletion(curves, attributions.DELETION_FRACTIONS, detected[chosen][:done])
           | {"methods": methods, "block_px": attributions.BLOCK,
              "replacement": f"Gaussian blur of the image, sigma {attributions.BLUR_SIGMA} px"}}
    # The same orders with an in-distribution replacement: blocks of the same image from elsewhere.
    if run.keep_going():
        replacement = attributions.resampled(crops[chosen[:done]], np.random.default_rng([run.args.seed, 78]))
        in_distribution = attributions.deletion_curves(model, crops[chosen[:done]], replacement,
                                                       {name: rows[:done] for name, rows in orders.items()},
                                                       keep_going=run.keep_going)
        k = len(next(iter(in_distribution.values())))
        if k:
            out["deletion_resampled"] = attributions.summarise_deletion(
                in_distribution, attributions.DELETION_FRACTIONS, detected[chosen][:k]) | {
                "methods": methods, "block_px": attributions.BLOCK,
                "replacement": "a block of the same image from elsewhere on the 8-px grid, moved to the removed "
                               "block's mean colour"}
    subset = [j for j, i in enumerate(chosen[:done]) if i < n_done["occlusion"]]
    if "occlusion" not in methods and subset and run.keep_going():
        occlusion_orders = {"occlusion": attributions.removal_orders(maps["occlusion"][chosen[subset]], rng)}
        occlusion_curves = attributions.deletion_curves(model, crops[chosen[subset]], baselines[chosen[subset]],
                                                        occlusion_orders, keep_going=run.keep_going)
        k = len(occlusion_curves["occlusion"])
        if k:
            both = {name: rows[subset[:k]] for name, rows in curves.items()} | occlusion_curves
            out["deletion_occlusion_subset"] = attributions.summarise_deletion(
                both, attributions.DELETION_FRACTIONS, detected[chosen[subset[:k]]])
    return out


# --- 7. frequency ---------------------------------------------------------------------


def analyse_frequency(run: Run) -> None:
    spectra = audit.mean_log_spectra(run.data.crops, run.data.source_class)
    run.summary["spectra"] = audit.spectrum_summary(spectra)
    run.figure("spectra", figures.spectra(run.out / "spectra.png", spectra))
    positions = audit_positions(run)
    filtered = audit.frequency_scores(list(run.models.values()), np.asarray(run.data.crops[positions]), run.keep_going)
    summaries = {}
    for task, model in run.models.items():
        summaries[task] = audit.summarise_frequency(filtered[task], run.scores[task][positions],
                                                    run.data.source_class[positions], model.threshold)
        summaries[task]["n_images"] = int(len(positions))
        summaries[task]["filter"] = "ideal radial mask on the 2-D FFT of each colour channel"
        run.task_summary(task)["frequency"] = summaries[task]
    run.figure("frequency_filtering", figures.frequency_curves(run.out / "frequency_filtering.png", summaries))


# --- 8. grouped permutation importance ------------------------------------------------


def analyse_feature_groups(run: Run) -> None:
    """AUC lost by each task's whole detector when a classical feature group or the network's score is shuffled.

    The classical part is scored on each image's centre crop (the deployed detector averages its corner
    crops; the centre keeps the permutation to one feature row per image).
    """
    from aidetect.features import FEATURE_GROUPS, FEATURE_NAMES, batch_features

    positions = audit_positions(run)
    crops = np.asarray(run.data.crops[positions])
    features = batch_features(crops)
    columns = {name: [FEATURE_NAMES.index(f) for f in group] for name, group in FEATURE_GROUPS.items()}
    labels = run.labels[positions]
    for task, model in run.models.items():
        if model.classical is None or not run.keep_going():
            continue
        network = run.explained[task][positions] if model.kind == "fusion" else None
        combine = model.detector.scorer.combine if model.kind == "fusion" else (lambda net, cls: cls)
        result = audit.grouped_permutation_importance(
            model.classical.score_features, combine, features, network, labels, columns,
            np.random.default_rng([run.args.seed, 79]))
        run.task_summary(task)["feature_groups"] = result | {
            "classical_scored_on": "the centre crop of each image", "metric": "ROC AUC of the whole detector"}


ANALYSES = (
    ("scores", analyse_scores),
    ("image_statistics", analyse_image_statistics),
    ("gradcam", analyse_gradcam),
    ("shortcut_audit", analyse_shortcuts),
    ("channel_ablation", analyse_channels),
    ("attributions", analyse_attributions),
    ("frequency", analyse_frequency),
    ("feature_groups", analyse_feature_groups),
)


# --- the command ----------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=REPO / "solution" / "artifacts",
                        help="a pipeline run's artifacts folder")
    parser.add_argument("--data", type=Path, default=REPO / "solution" / "data",
                        help="the data folder (validation originals for the shortcut audit)")
    parser.add_argument("--out", type=Path, default=REPO / "explainability" / "output")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated: task02,task03")
    parser.add_argument("--max-images", type=int, default=16,
                        help="crops for Integrated Gradients and the deletion test")
    parser.add_argument("--max-occlusion-images", type=int, default=6,
                        help="crops for occlusion (225 model evaluations each), the first of the sample")
    parser.add_argument("--max-audit-images", type=int, default=0,
                        help="crops for the shortcut, channel and frequency audits (0 = the whole split)")
    parser.add_argument("--split", default="validation", help="the labelled split to explain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout_seconds", type=float, default=900.0)
    return parser


def describe_model(model: TaskModel) -> dict:
    """What the explanations are about: architecture and front end of the network, or the classical model."""
    if model.network is None:
        return {"family": "classical", "classifier": type(model.detector.scorer).__name__}
    network = model.network
    front = getattr(network, "front", None)
    return {"family": model.kind, "class": type(network).__name__,
            "fusion_weight_of_network": getattr(model.detector.scorer, "weight", None) if model.kind == "fusion" else None,
            "parameters": int(sum(p.numel() for p in network.parameters())),
            "front_end_channels": getattr(front, "out_channels", None),
            "sees_colour_image": bool(getattr(front, "with_rgb", False)),
            "best_epoch": (model.detector.info.get("fit") or {}).get("best_epoch")}


class InputError(RuntimeError):
    """The run or data folder lacks what the explanations read; nothing has been written."""


def check_inputs(artifacts: Path, data: Path, split: str, tasks: list[str]) -> list[str]:
    """What is missing for an explanation run (empty when it can start), checked before anything is written."""
    problems = []
    if not Path(artifacts).is_dir():
        return [f"artifacts folder {artifacts} does not exist (run the six stages or `make bench` first)"]
    if not (Path(artifacts) / "prepared" / split).is_dir():
        problems.append(f"{Path(artifacts) / 'prepared' / split} is missing (prepare.py has not run)")
    detectors = [task for task in tasks if (Path(artifacts) / task / "detector.json").is_file()]
    if not detectors:
        problems.append(f"no detector.json for {', '.join(tasks)} in {artifacts} (train.py has not run)")
    if not (Path(data) / split).is_dir():
        problems.append(f"data folder {Path(data) / split} does not exist (the originals are read for the "
                        f"shortcut audit; pass --data)")
    return problems


def build_folder(out: Path) -> Path:
    """Where a run writes before its outputs replace ``out``: a hidden sibling, cleared first."""
    return out.parent / f".{out.name}.build"


def replace_outputs(build: Path, out: Path) -> None:
    """Swap the finished build folder in for ``out`` (the previous outputs are removed only now)."""
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(build, out)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    """Run every analysis that fits in the time budget; return the summary (also written to ``--out``)."""
    args = get_args_parser().parse_args(argv)
    task_list = [t.strip() for t in args.tasks.split(",") if t.strip()]
    problems = check_inputs(args.artifacts, args.data, args.split, task_list)
    if problems:
        raise InputError("cannot explain: " + "; ".join(problems) + f". Nothing was written to {args.out}.")
    deadline = Deadline(args.timeout_seconds, start=time.monotonic())
    threads = configure_threads()
    final_out = Path(args.out)
    out = build_folder(final_out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.monotonic()
    try:
        summary = _explain(args, deadline, threads, out, task_list, started)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    replace_outputs(out, final_out)
    log.info("explanations written to %s in %.0fs", final_out, time.monotonic() - started)
    return summary


def _explain(args, deadline: Deadline, threads: int, out: Path, task_list: list[str], started: float) -> dict:
    """Every analysis that fits in the budget, written into ``out``; returns the summary."""
    with pointing_at(args.artifacts, args.data):
        data = load_validation(args.split)
        summary = {
            "config": {"artifacts": portable(str(args.artifacts)), "data": describe_data(data_identity(args.data)),
                       "split": args.split,
                       "tasks": args.tasks, "max_images": args.max_images,
                       "max_occlusion_images": args.max_occlusion_images, "max_audit_images": args.max_audit_images,
                       "seed": args.seed, "timeout_seconds": args.timeout_seconds, "threads": threads},
            "data": {"n": len(data), "per_source": {str(int(c)): int((data.source_class == c).sum())
                                                    for c in np.unique(data.source_class)}},
            "tasks": {}, "figures": {}, "timing_seconds": {}, "skipped": {},
        }
        models = {}
        for task in task_list:
            try:
                models[task] = load_task_model(task)
            except PipelineError as exc:
                summary["skipped"][f"{task}"] = f"no detector: {exc}"
                continue
            description = models[task].detector.info
            summary["tasks"][task] = {"kind": models[task].kind, "threshold": models[task].detector.threshold.to_dict(),
                                      "calibration_sets": list(description.get("calibration_sets", {})),
                                      "model": describe_model(models[task])}
        run = Run(args, deadline, out, data, models, summary)
        if not models:
            raise PipelineError(f"no detector in {args.artifacts} for tasks {args.tasks}")
        for name, analysis in ANALYSES:
            if not run.keep_going():
                summary["skipped"][name] = f"time budget ({deadline.describe()})"
                log.warning("skipping %s: %s", name, deadline.describe())
                continue
            t0 = time.monotonic()
            log.info("%s (%s)", name, deadline.describe())
            analysis(run)
            summary["timing_seconds"][name] = round(time.monotonic() - t0, 1)
            write_json(out / "summary.json", summary)
        summary["timing_seconds"]["total"] = round(time.monotonic() - started, 1)
        write_json(out / "summary.json", summary)
        write_discussion(out / "discussion.md", summary)
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        main()
    except (InputError, PipelineError) as exc:
        print(f"explain: error: {exc}", file=sys.stderr)
        sys.exit(2)
