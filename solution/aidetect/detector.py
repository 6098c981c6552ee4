"""What the stages do: train, calibrate, evaluate and apply a detector.

A task folder (``artifacts/task02`` or ``task03``) holds ``detector.json``, the
single description of the active detector: its kind (``network`` or the
``classical`` fallback), its weights file and its calibrated threshold. It is
written atomically, first for the fallback (seconds into training), then for
the network once it is calibrated, so a kill at any moment leaves a usable
detector behind.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .budget import Deadline, Terminated, terminate_raises, time_bound_decision, torch_threads, worker_processes
from .calibration import Threshold, calibrate_on_several, min_calibration_size
from .classical import ClassicalDetector
from .cleaning import (SHIFT_DIR, PreparedSplit, load_prepared, prepared_splits, prepared_time_bound_decisions,
                       shift_split, shift_splits_present)
from .crops import CROP_SIZE, square_crop
from .dataio import (UNKNOWN_ROW_ID, Unreadable, iter_batches, known_row_ids, read_json, row_ids_by_file,
                     write_json, write_predictions)
from .decode import decode_rgb
from .errors import DataError, DecodeError, PipelineError
from .labels import BINARY_NAMES, binary_label
from .metrics import detection_metrics
from .modelfiles import CLASSICAL_FILE, NETWORK_FILE, load_classical, load_network_file, save_classical
from .parallel import ordered_map
from .paths import PREDICT_SPLIT, predictions_path, prepared_dir, split_dir, task_dir
from .progress import progress
from .features import FEATURE_NAMES, CornerFeatures, batch_features, corner_features
from .models import build_model
from .perturb import calibration_families
from .settings import DETECTION
from .training import FitResult, TrainConfig, fit, load_model, score_crops, stratified_holdout

log = logging.getLogger(__name__)

MAX_FPR = DETECTION.max_fpr
DELTA = DETECTION.delta  # P(true FPR > MAX_FPR) <= DELTA
SEED = DETECTION.seed

# TraceNet sees the high-pass residuals only, not the colour image: on the proxy, on the quiet machine, the
# colour input cost validation AUC (0.858 with it, 0.941 without, same seed and data, families of the
# 2026-11-26 04:07 benchmark; 0.932 without it with other batch seeds; 0.959 for the packaged Task-2
# network of the 05:04 benchmark). Colour carries content, a likely reason.
TASK02_CONFIG = TrainConfig(policy="neutral", with_rgb=False, epochs=60, patience=12, min_epochs=30, lr=2e-3,
                            seed=SEED)
TASK03_CONFIG = TrainConfig(policy="robust", with_rgb=False, clean_fraction=0.3, epochs=30, patience=10, lr=1e-3,
                            seed=SEED)
TASK_CALIBRATION_SPLITS = {"task02": ("calibration",), "task03": ("calibration", "calibration_augmented")}
# Task 3 also keeps the bound on the calibration reals processed by each family it trains on (prepared by
# ``cleaning.prepare_calibration_shift``): its promise is an FPR that survives processing, not only the two
# calibration splits. Task 2, the plain detector, calibrates on clean images only.
CALIBRATES_UNDER_PROCESSING = {"task02": False, "task03": True}
REPORT_SPLITS = ("calibration", "calibration_augmented", "validation", "validation_augmented")


# --- detectors as files -------------------------------------------------------------


CROP_MODES = {True: "corners", False: "centre"}  # how the classical model scored the calibration images


def classical_scores_of(model: ClassicalDetector, crops, corners: CornerFeatures | None) -> np.ndarray:
    """The classical model's image scores: the mean over each image's corner crops when given, else per crop."""
    return model.score(crops) if corners is None else model.score_images(corners)


def uses_corners(task: str, splits: dict[str, PreparedSplit]) -> bool:
    """Score with corner crops only if every calibration split has them (prepare.py computes them)."""
    calibration = [splits[name] for name in TASK_CALIBRATION_SPLITS[task] if name in splits]
    return bool(calibration) and all(data.corners is not None for data in calibration)


def classical_split_scores(model: ClassicalDetector, data: PreparedSplit, corners: bool) -> np.ndarray:
    if corners and data.corners is None:
        log.warning("%s has no corner features (prepared by older code?): scored on its centre crops", data.name)
    return classical_scores_of(model, data.crops, data.corners if corners else None)


class FusedScorer:
    """``w * z(network logit) + (1 - w) * z(classical log-odds)``.

    Each score is standardised by the mean and spread of the *holdout* real
    images' scores (never the calibration images, which stay reserved for the
    threshold), so the weight means the same whatever the scales.
    """

    def __init__(self, network, classical, weight: float, stats: dict):
        self.network, self.classical, self.weight, self.stats = network, classical, weight, stats

    def combine(self, network_scores: np.ndarray, classical_scores: np.ndarray) -> np.ndarray:
        st = self.stats
        z_net = (network_scores - st["network_mean"]) / st["network_std"]
        z_cls = (classical_scores - st["classical_mean"]) / st["classical_std"]
        return self.weight * z_net + (1 - self.weight) * z_cls

    def score(self, crops: np.ndarray, deadline: Deadline | None = None, desc: str = "score",
              corners: CornerFeatures | None = None) -> np.ndarray:
        return self.combine(score_crops(self.network, crops, 16, deadline, desc),
                            classical_scores_of(self.classical, crops, corners))


class Detector:
    """A scoring function plus its calibrated threshold.

    ``kind`` is ``network`` (TraceNet alone), ``fusion`` (TraceNet and the
    classical model), or ``classical`` (the fallback alone).
    """

    def __init__(self, kind: str, scorer, threshold: Threshold, info: dict):
        self.kind, self.scorer, self.threshold, self.info = kind, scorer, threshold, info

    @property
    def network(self):
        """The torch model inside (for gradient explanations), or None."""
        return {"network": self.scorer, "fusion": getattr(self.scorer, "network", None)}.get(self.kind)

    def score(self, crops: np.ndarray, deadline: Deadline | None = None, desc: str = "score",
              corners: CornerFeatures | None = None) -> np.ndarray:
        """Scores of images given as their centre crops, plus, when known, their corner crops' features.

        Without ``corners`` the classical model scores each crop alone (the
        explanations perturb single crops); the predict stages and the
        calibration pass both.
        """
        if self.kind == "network":
            return score_crops(self.scorer, crops, 16, deadline, desc)
        if self.kind == "fusion":
            return self.scorer.score(crops, deadline, desc, corners)
        return classical_scores_of(self.scorer, crops, corners)

    @property
    def scores_corner_crops(self) -> bool:
        """Whether the threshold was calibrated on corner-crop scores, so images must be scored that way too."""
        return self.info.get("classical_crops") == CROP_MODES[True]

    def label_single_crops(self, crops: np.ndarray) -> np.ndarray:
        """Labels of centre crops scored alone: NOT how the threshold was calibrated when the detector scores
        corner crops (``scores_corner_crops``), so the FPR bound does not hold for them. For images, use
        ``predict_images``."""
        return self.threshold.predict(self.score(crops))

    @classmethod
    def load(cls, folder: Path) -> "Detector":
        """The detector a folder's ``detector.json`` describes (a task folder of artifacts, or a shipped model)."""
        folder = Path(folder)
        path = folder / "detector.json"
        if not path.exists():
            raise PipelineError(f"no trained detector at {path}")
        description = read_json(path)
        threshold = Threshold(**description["threshold"])
        kind = description["kind"]
        if kind == "network":
            scorer = load_model(folder / description["weights"])
        elif kind == "fusion":
            fusion = description["fusion"]
            scorer = FusedScorer(load_model(folder / description["weights"]),
                                 load_classical(folder / fusion["classical"]), fusion["weight"], fusion["stats"])
        else:
            scorer = load_classical(folder / description["weights"])
        return cls(kind, scorer, threshold, description)

    def predict_images(self, images, deadline: Deadline | None = None, desc: str = "score") -> list["ImagePrediction"]:
        """Score and label encoded images (bytes, or paths of image files) exactly as the predict stages do.

        Each image is decoded, cut into its centre crop and, when the threshold
        was calibrated that way, its corner crops' features, and labelled at the
        calibrated threshold. One ``ImagePrediction`` per image, in order; an
        image that cannot be read or decoded gets its error, never a label.
        """
        images = list(images)
        results = {p.key: p for p in predict_encoded(self, enumerate(images), len(images), desc, deadline)}
        return [results.get(i, ImagePrediction(i, None, None, "not scored: the time budget ran out"))
                for i in range(len(images))]


def save_detector_description(task: str, kind: str, weights: str, threshold: Threshold, extra: dict) -> None:
    write_json(task_dir(task) / "detector.json",
               {"kind": kind, "weights": weights, "threshold": threshold.to_dict(), **extra})


def load_detector(task: str) -> Detector:
    return Detector.load(task_dir(task))


# --- training a task ----------------------------------------------------------------


def _load_optional(split: str) -> PreparedSplit | None:
    return load_prepared(split) if split in prepared_splits() else None


def untrainable_reason() -> str | None:
    """Why the prepared training split cannot train a detector (no usable image, one class only), or None."""
    if "train" not in prepared_splits():
        return (f"no prepared training images in {prepared_dir() / 'train'}: prepare.py found no usable image in "
                f"{split_dir('train')} or did not finish (see its log); fix the data and run prepare.py again")
    labels = binary_label(load_prepared("train").source_class)
    if len(labels) == 0:
        return f"the prepared training split holds no image: check {split_dir('train')} and run prepare.py again"
    missing = [name for label, name in BINARY_NAMES.items() if not np.any(labels == label)]
    if missing:
        return (f"the training images are all of one class ({len(labels)} images, no {missing[0]} one): a detector "
                f"needs both real (source_class 0) and generated (1..5) images; check {split_dir('train')}")
    return None


def require_trainable(task: str) -> None:
    """A DataError saying what to fix when the training data cannot train ``task``'s detector.

    A detector description left by an earlier run is removed first: it was
    not trained on this data, and the predict stages would otherwise use it.
    """
    reason = untrainable_reason()
    if reason is None:
        return
    stale = task_dir(task) / "detector.json"
    if stale.exists():
        stale.unlink()
        log.warning("removed %s of an earlier run: it was not trained on this data", stale)
    raise DataError(reason)


def calibration_split_names(task: str, exclude_families: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The splits whose real images set the task's threshold: its calibration splits and, for Task 3, the
    calibration reals processed by each family it trains on (less ``exclude_families``)."""
    names = TASK_CALIBRATION_SPLITS[task]
    if CALIBRATES_UNDER_PROCESSING[task]:
        names += tuple(shift_split(f.name) for f in calibration_families(exclude_families))
    return names


def load_shift_splits(task: str, exclude_families: tuple[str, ...] = ()) -> dict[str, PreparedSplit]:
    """The prepared calibration-under-processing splits the task calibrates on: those prepare completed with
    enough real images for the guarantee (a set cut short by prepare's deadline could only add noise)."""
    wanted = set(calibration_split_names(task, exclude_families))
    splits = {name: load_prepared(name) for name in shift_splits_present() if name in wanted}
    enough = min_calibration_size(MAX_FPR, DELTA)
    for name in [n for n, data in splits.items() if len(data) < enough]:
        log.warning("%s holds %d real images, fewer than the %d the FPR guarantee needs: not calibrated on",
                    name, len(splits.pop(name)), enough)
    return splits


def _calibrate(scores: dict[str, np.ndarray], labels: dict[str, np.ndarray], task: str,
               exclude_families: tuple[str, ...] = ()) -> tuple[Threshold, dict]:
    """The task's threshold from the real images of its calibration splits (the largest of their thresholds)."""
    names = calibration_split_names(task, exclude_families)
    real = {name: scores[name][labels[name] == 0] for name in names if name in scores}
    if not any(len(real.get(name, ())) for name in TASK_CALIBRATION_SPLITS[task]):
        raise DataError(f"no real images in the calibration splits {TASK_CALIBRATION_SPLITS[task]}: cannot calibrate")
    for name in [n for n, r in real.items() if not len(r)]:
        log.warning("%s holds no usable real image: skipped for %s's threshold, which the other calibration "
                    "splits set", name, task)
        del real[name]
    return calibrate_on_several(real, MAX_FPR, DELTA)


CLASSICAL_VIEWS = {"task02": "neutral", "task03": "robust"}
FEATURE_CHUNK = 256  # crops in memory at a time while computing training features


def stored_views(task: str, train: PreparedSplit, indices: np.ndarray) -> np.ndarray | None:
    """Rows of ``indices`` whose robust views prepare stored, if the task learns from them (Task 3)."""
    if CLASSICAL_VIEWS[task] != "robust" or train.views is None:
        return None
    made = indices[np.isfinite(train.views[indices]).all(axis=(1, 2))]
    return made if len(made) else None


def classical_training_features(task: str, train: PreparedSplit, indices: np.ndarray, seed: int,
                                exclude_families: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels the classical model learns from: each clean crop plus augmented views.

    Task 2 adds one ``neutral`` view of each stored crop (JPEG re-encoding of
    both classes, flips), so that "was it compressed" tells the features
    nothing about the class. Task 3 learns from the robust views prepare made
    of the whole images (``cleaning.view_features``: down-scaling included);
    without them (data prepared by older code) from one ``robust`` view of each
    stored crop. Views keep the full crop size, the size the features are
    computed on at prediction time. Crops are read in chunks, so memory does
    not grow with the training set.
    """
    from dataclasses import replace

    from .augment import POLICIES, augment, without

    indices = np.sort(indices)  # consecutive rows are read from the crop file in one go
    labels = binary_label(train.source_class[indices])
    with_views = stored_views(task, train, indices)
    policy = replace(without(POLICIES[CLASSICAL_VIEWS[task]], exclude_families), crop_size=CROP_SIZE)
    rng = np.random.default_rng([seed, 2 if task == "task02" else 3])
    clean, views = [np.zeros((0, len(FEATURE_NAMES)))], [np.zeros((0, len(FEATURE_NAMES)))]
    for start in range(0, len(indices), FEATURE_CHUNK):
        crops = np.asarray(train.crops[indices[start : start + FEATURE_CHUNK]])
        clean.append(batch_features(crops))
        if with_views is None:
            views.append(batch_features([augment(crop, policy, rng) for crop in crops]))
    view_labels = labels
    if with_views is not None:
        stored = train.views[with_views].astype(np.float64)
        views = [stored.reshape(-1, stored.shape[2])]
        view_labels = np.repeat(binary_label(train.source_class[with_views]), stored.shape[1])
    return np.vstack(clean + views), np.concatenate([labels, view_labels])


def view_weights(labels: np.ndarray, n_clean: int, real_view_weight: float) -> np.ndarray | None:
    """Row weights of ``classical_training_features``' rows (its first ``n_clean`` rows are the clean crops)."""
    if real_view_weight == 1.0:
        return None
    weights = np.ones(len(labels))
    weights[n_clean:][labels[n_clean:] == 0] = real_view_weight
    return weights


# The fallback learns from every training image unless that would take more than this share of the stage's
# remaining time. The cost is extrapolated from features timed on 8 crops, which a busy machine can inflate
# several-fold, so a tighter share would shrink the training set (and change the model) with the load.
FALLBACK_SHARE = 0.5
MIN_FALLBACK_TRAIN = 200  # images: below this the fallback is not worth having, whatever the budget
VIEW_COST = 2.5  # a training image costs its clean crop, its augmented view and the augmentation itself
STORED_VIEW_COST = 1.2  # ... or its clean crop only, when prepare stored its views


def feature_seconds_per_crop(crops: np.ndarray) -> float:
    """Wall seconds per crop of the classical features on the worker processes, timed on a few crops."""
    from .features import image_features

    t0 = time.monotonic()
    for crop in crops:
        image_features(np.asarray(crop))
    return (time.monotonic() - t0) / max(1, len(crops)) / worker_processes()


def fit_fallback(task: str, train: PreparedSplit, indices: np.ndarray, splits: dict[str, PreparedSplit],
                 seed: int, deadline: Deadline, per_crop: float | None = None,
                 exclude_families: tuple[str, ...] = (),
                 time_bound: list[dict] | None = None,
                 real_view_weight: float = 1.0) -> tuple[ClassicalDetector, dict]:
    """The classical detector, fitted and calibrated within a share of the budget, saved as the active detector.

    The training set is subsampled (stratified) only when scoring the
    calibration splits and learning from every image would not fit in
    ``FALLBACK_SHARE`` of the remaining time; that choice is appended to
    ``time_bound``. The other splits are scored only if that still fits
    (``train_task`` scores them after training when the fusion needs them).
    ``per_crop`` is the feature time per crop (``feature_seconds_per_crop``),
    timed here if not given; ``real_view_weight`` weighs the processed views of
    real images (``TrainConfig.classical_real_view_weight``). Returns the model
    and its scores per split.
    """
    t0 = time.monotonic()
    budget = FALLBACK_SHARE * deadline.remaining()
    if per_crop is None:
        per_crop = feature_seconds_per_crop(np.asarray(train.crops[indices[:8]]))
    required = [name for name in calibration_split_names(task, exclude_families) if name in splits]
    room = budget - per_crop * sum(len(splits[name]) for name in required)
    cost = STORED_VIEW_COST if stored_views(task, train, indices) is not None else VIEW_COST
    limit = max(MIN_FALLBACK_TRAIN, int(room / (cost * per_crop)))
    if len(indices) > limit:
        _, keep = stratified_holdout(train.source_class[indices], limit / len(indices), seed, max_size=limit)
        record = time_bound_decision("train", "fallback training set subsampled", task=task, kept=int(len(keep)),
                                     of=int(len(indices)), budget_seconds=round(budget, 1),
                                     estimated_seconds=round(cost * per_crop * len(indices), 1))
        if time_bound is not None:
            time_bound.append(record)
        indices = indices[keep]
    features, labels = classical_training_features(task, train, indices, seed, exclude_families)
    weights = view_weights(labels, len(indices), real_view_weight)
    model = ClassicalDetector("boosting").fit_features(features, labels, weights)
    log.info("classical model fitted on %d crops and views in %.1fs", len(labels), time.monotonic() - t0)
    corners = uses_corners(task, splits)
    scores = {name: classical_split_scores(model, splits[name], corners) for name in required}
    for name, data in splits.items():
        if name not in scores and time.monotonic() - t0 + per_crop * len(data) < budget:
            scores[name] = classical_split_scores(model, data, corners)
    threshold, per_set = _calibrate(scores, {n: d.source_class for n, d in splits.items()}, task, exclude_families)
    save_classical(task_dir(task) / CLASSICAL_FILE, model)
    save_detector_description(task, "classical", CLASSICAL_FILE, threshold,
                              {"calibration_sets": per_set, "fit_seconds": time.monotonic() - t0,
                               "train_images": int(len(indices)), "classical_crops": CROP_MODES[corners]})
    log.info("fallback classical detector ready in %.1fs (threshold %.3f)", time.monotonic() - t0, threshold.value)
    return model, scores


FUSION_WEIGHT = DETECTION.fusion_weight  # why 0.3: see ``settings.DetectionSettings``


def fusion_stats(network, classical: ClassicalDetector, train: PreparedSplit, holdout: np.ndarray) -> dict:
    """Mean and spread of both models' scores on the holdout's real images (neither model trained on them).

    The classical scores here are of single crops (training images get no
    corner features), while the fused score uses the mean over corner crops,
    whose spread is a little smaller (proxy calibration reals: 3.5 against
    3.9); the standardisation is only a common scale for ``FUSION_WEIGHT``.
    """
    real = holdout[train.source_class[holdout] == 0] if len(holdout) else holdout
    if len(real) < 2:
        log.warning("no real holdout images to standardise the fusion: using the raw scores")
        return {"network_mean": 0.0, "network_std": 1.0, "classical_mean": 0.0, "classical_std": 1.0}
    crops = np.asarray(train.crops[real])
    net, cls = score_crops(network, crops), classical.score(crops)
    return {"network_mean": float(net.mean()), "network_std": float(net.std() + 1e-6),
            "classical_mean": float(cls.mean()), "classical_std": float(cls.std() + 1e-6)}


def evaluate_scores(scores: dict[str, np.ndarray], splits: dict[str, PreparedSplit], threshold: Threshold) -> dict:
    """Detection metrics of the labelled splits (the calibration reals under processing have their own)."""
    return {name: detection_metrics(splits[name].source_class, s, threshold.predict(s))
            for name, s in scores.items() if len(s) and not name.startswith(SHIFT_DIR)}


def fpr_under_processing(scores: dict[str, np.ndarray], threshold: Threshold) -> dict:
    """Empirical FPR at the threshold of each calibration-under-processing set (all real images)."""
    return {name.split("/", 1)[1]: {"n_real": int(len(s)), "fpr": float(np.mean(threshold.predict(s)))}
            for name, s in scores.items() if name.startswith(SHIFT_DIR) and len(s)}


def fit_time_bound_decisions(task: str, config: TrainConfig, fit_result: FitResult) -> list[dict]:
    """Records of the deadline shortening the learning-rate schedule or stopping the training."""
    records = []
    if fit_result.planned_epochs is not None and fit_result.planned_epochs < config.epochs:
        records.append(time_bound_decision("train", "learning-rate schedule shortened", task=task,
                                           planned_epochs=fit_result.planned_epochs, of=config.epochs))
    if fit_result.stopped_because == "time budget":
        records.append(time_bound_decision("train", "network training stopped by the deadline", task=task,
                                           epochs_run=fit_result.epochs_run))
    return records


def inherited_time_bound_decisions(metrics_path: Path, known: list[dict]) -> list[dict]:
    """The decisions of the run whose weights this one starts from, other than those already ``known``."""
    if not metrics_path.exists():
        return []
    inherited = read_json(metrics_path).get("time_bound_decisions", [])
    return [record for record in inherited if record not in known]


def train_task(task: str, deadline: Deadline, config: TrainConfig, init_from: Path | None = None) -> dict:
    """Fallback first, then the network, then their fusion; calibrate, evaluate, write metrics.json."""
    started = time.monotonic()
    train = load_prepared("train")
    splits = {name: _load_optional(name) for name in REPORT_SPLITS}
    splits = {k: v for k, v in splits.items() if v is not None}
    if "calibration" not in splits:
        raise DataError("the calibration split is missing from artifacts/prepared: run prepare.py")
    splits.update(load_shift_splits(task, config.exclude_families))
    labels = {name: data.source_class for name, data in splits.items()}
    corners = uses_corners(task, splits)  # as fit_fallback decides it
    train_idx, holdout_idx = stratified_holdout(train.source_class, config.holdout_fraction, config.seed)

    # Choices the deadline forced on this model, prepare's included: none when it did not bind.
    time_bound = prepared_time_bound_decisions()
    per_crop = feature_seconds_per_crop(np.asarray(train.crops[train_idx[:8]]))
    excluded = config.exclude_families
    classical, classical_scores = fit_fallback(task, train, train_idx, splits, config.seed, deadline, per_crop,
                                               excluded, time_bound, config.classical_real_view_weight)
    classical_threshold, _ = _calibrate(classical_scores, labels, task, excluded)
    n_eval = sum(len(s) for s in splits.values()) + len(holdout_idx) * 2
    # Splits the fallback had no time for get classical scores after training (for the fusion).
    feature_time = per_crop * sum(len(data) for name, data in splits.items() if name not in classical_scores)
    # Time to score the evaluation splits after training: measured on 32 crops, with 50 % to spare.
    probe = np.asarray(splits["calibration"].crops[:32])
    probe_model = build_model(config.arch, **config.model_kwargs())
    score_crops(probe_model, probe[:4], desc="warm-up")  # the first call pays one-off set-up costs
    t0 = time.monotonic()
    score_crops(probe_model, probe, desc="timing probe")
    per_image = (time.monotonic() - t0) / max(1, len(probe))
    reserve = 1.5 * (per_image * n_eval + feature_time) + 10.0
    log.info("keeping %.0fs after training for calibration and evaluation of %d images", reserve, n_eval)

    init_state = None
    if init_from is not None:
        if init_from.exists():
            init_state = load_network_file(init_from)[0]
            time_bound += inherited_time_bound_decisions(init_from.parent / "metrics.json", time_bound)
        else:
            log.warning("no checkpoint at %s to continue from; training from scratch", init_from)

    network, fit_result = None, None
    if deadline.remaining() > reserve + 30:
        network, fit_result = fit(config, train, task_dir(task), deadline, reserve, init_state=init_state)
    else:
        log.warning("no time left to train the network (%s); keeping the fallback", deadline.describe())
        time_bound.append(time_bound_decision("train", "network not trained", task=task,
                                              reserve_seconds=round(reserve, 1)))
    if fit_result is not None:
        time_bound += fit_time_bound_decisions(task, config, fit_result)

    metrics = {"task": task, "seed": config.seed, "settings": asdict(DETECTION), "config": asdict(config),
               "train_images": len(train),
               "fit": asdict(fit_result) if fit_result else None,
               "classical_splits": evaluate_scores(classical_scores, splits, classical_threshold)}
    kind, threshold, final_scores = "classical", classical_threshold, classical_scores
    if network is not None and (task_dir(task) / NETWORK_FILE).exists():
        # In split order whichever the fallback had time to score, so metrics.json does not vary with the load.
        classical_scores = {name: classical_scores[name] if name in classical_scores
                            else classical_split_scores(classical, data, corners) for name, data in splits.items()}
        metrics["classical_splits"] = evaluate_scores(classical_scores, splits, classical_threshold)
        network_scores = {name: score_crops(network, data.crops, 16, deadline, f"score {name}")
                          for name, data in splits.items()}
        network_threshold, _ = _calibrate(network_scores, labels, task, excluded)
        metrics["network_splits"] = evaluate_scores(network_scores, splits, network_threshold)
        weight, stats = FUSION_WEIGHT, fusion_stats(network, classical, train, holdout_idx)
        fused = FusedScorer(network, classical, weight, stats)
        fused_scores = {name: fused.combine(network_scores[name], classical_scores[name]) for name in splits}
        metrics["fusion"] = {"weight": weight, "stats": stats, "classical_crops": CROP_MODES[corners]}
        kind, final_scores = "fusion", fused_scores
        threshold, per_set = _calibrate(final_scores, labels, task, excluded)
        save_detector_description(task, kind, NETWORK_FILE, threshold, {
            "arch": config.arch, "calibration_sets": per_set, "fit": asdict(fit_result),
            "fusion": {"weight": weight, "stats": stats, "classical": CLASSICAL_FILE},
            "classical_crops": CROP_MODES[corners]})
    metrics.update({"detector": kind, "threshold": threshold.to_dict(),
                    "splits": evaluate_scores(final_scores, splits, threshold),
                    "calibration_under_processing": fpr_under_processing(final_scores, threshold),
                    "seconds": time.monotonic() - started})
    metrics["time_bound_decisions"] = time_bound
    write_json(task_dir(task) / "metrics.json", metrics)
    for name, m in metrics["splits"].items():
        log.info("%s %s: recall_ai %.3f, FPR %.3f, ROC AUC %.3f", task, name, m["recall_ai"], m["fpr"], m["roc_auc"])
    return metrics


# --- prediction ---------------------------------------------------------------------


# The detector a predict stage uses when its own cannot be loaded: Task 3 continues from Task 2, so the
# Task-2 detector is the closest usable one (its threshold was calibrated on clean calibration images only).
PREDICT_FALLBACK = {"task03": "task02"}


@dataclass
class DetectorSource:
    """Which task's detector a predict stage scores with (None: none loaded), and why, if not its own."""

    task: str | None
    fallback_reason: str | None = None


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def load_predict_detector(task: str) -> tuple[Detector | None, DetectorSource]:
    """The task's detector or, when it is missing or unreadable, its ``PREDICT_FALLBACK`` (with a warning).

    Without either, every row will be labelled real (0) and the error says so.
    """
    try:
        return load_detector(task), DetectorSource(task)
    except Exception as exc:  # a missing, truncated or inconsistent file: any of them leaves no usable detector
        reason = f"no usable {task} detector ({_one_line(exc)})"
    fallback = PREDICT_FALLBACK.get(task)
    if fallback is None:
        log.error("%s: every row will be labelled real (0)", reason)
        return None, DetectorSource(None, reason)
    try:
        detector = load_detector(fallback)
    except Exception as exc:
        log.error("%s, nor a usable %s detector (%s): every row will be labelled real (0)", reason, fallback,
                  _one_line(exc))
        return None, DetectorSource(None, reason)
    log.warning("%s: predicting with the %s detector instead (%s, threshold %.4f)", reason, fallback, detector.kind,
                detector.threshold.value)
    return detector, DetectorSource(fallback, reason)


def _decode_for_predict(item: tuple) -> tuple:
    """Worker: (row_id, bytes, corners wanted) -> (row_id, (centre crop, corner features or None) or None, error)."""
    row_id, data, want_corners = item
    try:
        rgb = decode_rgb(_read_if_path(data))
        return row_id, (square_crop(rgb, CROP_SIZE), corner_features(rgb) if want_corners else None), None
    except DecodeError as exc:
        return row_id, None, str(exc)
    except OSError as exc:  # a file that cannot be read
        return row_id, None, f"unreadable file: {exc.strerror or exc}"
    except Exception as exc:  # one bad row must never cost the others their label
        return row_id, None, f"{type(exc).__name__}: {exc}"


@dataclass
class ImagePrediction:
    """One image's score and label (1 ai_generated, 0 real) at the detector's threshold, or why it has none."""

    key: object  # the caller's name for the image: a row id, an index, a file name
    score: float | None
    label: int | None
    error: str | None = None


def _read_if_path(data):
    """The bytes of a file given by its path; anything else (bytes, or None for a missing image) as it is."""
    return Path(data).read_bytes() if isinstance(data, (str, os.PathLike)) else data


def predict_encoded(detector: Detector, items, total: int | None, desc: str, deadline: Deadline | None = None,
                    batch_size: int = 16):
    """``ImagePrediction`` of each (key, encoded image or file path) of ``items``, as results come in.

    The predict stages' code path: worker processes decode each image into its
    centre crop and, when the threshold was calibrated on corner crops, their
    features, while this process scores batches of ``batch_size``. With a
    ``deadline`` nothing is decoded after it expires (the unreached images get
    no prediction).
    """
    want_corners = detector.scores_corner_crops  # scored as the threshold was calibrated
    workers = worker_processes()
    pending_keys, pending_crops, pending_corners = [], [], []

    def flush():
        if pending_crops:
            corners = CornerFeatures.stack(pending_corners) if want_corners else None
            scores = detector.score(np.stack(pending_crops), None, "predict batch", corners)
            labels = detector.threshold.predict(scores)
            yield from (ImagePrediction(key, float(score), int(label))
                        for key, score, label in zip(pending_keys, scores.tolist(), labels.tolist()))
            for pending in (pending_keys, pending_crops, pending_corners):
                pending.clear()

    with progress(total=total, desc=desc, deadline=deadline) as bar, \
            torch_threads(predict_network_threads(workers)):
        # Decoding runs in worker processes while the main process scores; a worker decides
        # whether to decode when it starts on an image, so nothing is decoded after the deadline.
        for key, decoded, error in ordered_map(_decode_for_predict, ((key, data, want_corners) for key, data in items),
                                               workers, stop_at=deadline.stop_at() if deadline else None):
            bar.update(1)
            if error is not None:
                yield ImagePrediction(key, None, None, error)
            else:
                pending_crops.append(decoded[0])
                pending_corners.append(decoded[1])
                pending_keys.append(key)
                if len(pending_crops) >= batch_size:
                    yield from flush()
            if deadline is not None and deadline.expired():
                break
        yield from flush()


def predict_network_threads(workers: int) -> int:
    """Torch threads of the predict stage's main process while ``workers`` processes decode and compute features.

    Decoding and the corner features cost two to four times the network's time per image, and the workers
    already use every CPU: more network threads than a quarter of them only wait for a core (two threads
    beside two workers on two CPUs halved the network's rate). The scores do not depend on the number of
    threads (checked to the bit for TraceNet on 1, 2 and 4 threads).
    """
    return max(1, workers // 4)


def predict_task(task: str, deadline: Deadline, batch_size: int = 16) -> dict:
    """Write ``artifacts/<task>/predictions.csv`` with one label per predict row.

    Rows whose image cannot be decoded, whose parquet row group cannot be read,
    or that the time budget (or a SIGTERM) does not reach, are labelled real
    (0): a conservative rule that never accuses a photo without evidence. They
    are listed in a warning and in predict_report.json. The file exists, every
    row labelled real, as soon as the row ids are read, so a kill at any later
    moment still leaves one label per row; a SIGTERM writes the labels made so
    far and then ends the stage.
    """
    started = time.monotonic()
    _remove_stale_outputs(task)
    folder = split_dir(PREDICT_SPLIT)
    unreadable: list[Unreadable] = []
    ids_by_file = row_ids_by_file(folder, unreadable)  # fails early, with a clear message, on duplicate row ids
    all_ids = np.sort(known_row_ids(ids_by_file))
    write_predictions(predictions_path(task), all_ids, np.zeros(len(all_ids), dtype=np.int64))
    detector, source, predicted, undecodable = None, DetectorSource(None), {}, []
    with terminate_raises() as termination:
        try:
            detector, source = load_predict_detector(task)

            def items():
                for batch in iter_batches(folder, labelled=False, batch_size=64, unreadable=unreadable):
                    yield from zip(batch.row_id.tolist(), batch.images)

            if detector is not None:
                for result in predict_encoded(detector, items(), len(all_ids), f"predict {task}", deadline,
                                              batch_size):
                    if result.error is not None:
                        undecodable.append({"row_id": result.key, "error": result.error})
                    predicted[result.key] = 0 if result.error is not None else result.label
        except Terminated:
            log.warning("SIGTERM: writing the %d labels made so far; the other rows are labelled real (0)",
                        len(predicted))
        termination.armed = False  # a SIGTERM from here on waits until the file is written
        report = _write_predict_results(task, detector, source, all_ids, predicted, undecodable,
                                        _lost_rows(unreadable, ids_by_file, predicted), termination.received, started)
    if termination.received:
        raise Terminated(f"received SIGTERM; {predictions_path(task)} written, unscored rows labelled real (0)")
    return report


def _remove_stale_outputs(task: str) -> None:
    """Remove an earlier run's predictions before anything can fail: a grader must never read labels of other data."""
    for stale in (predictions_path(task), task_dir(task) / "predict_report.json"):
        if stale.exists():
            stale.unlink()
            log.info("removed the earlier run's %s", stale.name)


def _lost_rows(unreadable: list[Unreadable], ids_by_file: dict[str, np.ndarray], predicted: dict) -> list[dict]:
    """Each unreadable file or row group once, with the row ids it held (when they are known)."""
    lost = {}
    for record in unreadable:
        ids = ids_by_file.get(record.name, np.zeros(0, dtype=np.int64))[record.first_row : record.first_row + record.n_rows]
        known = [int(i) for i in ids if i != UNKNOWN_ROW_ID and int(i) not in predicted]
        entry = lost.setdefault(record.where(), {"where": record.where(), "error": record.error, "row_ids": [],
                                                 "n_rows_unknown_id": 0})
        entry["row_ids"] = sorted(set(entry["row_ids"]) | set(known))
        entry["n_rows_unknown_id"] = max(entry["n_rows_unknown_id"], int(np.sum(ids == UNKNOWN_ROW_ID)))
    return list(lost.values())


def _write_predict_results(task: str, detector: Detector | None, source: "DetectorSource", all_ids: np.ndarray,
                           predicted: dict, undecodable: list[dict], unreadable: list[dict], terminated: bool,
                           started: float) -> dict:
    """The CSV (every row id once: rows without a label get real, 0), the warnings and predict_report.json."""
    labels = np.array([predicted.get(int(row_id), 0) for row_id in all_ids], dtype=np.int64)
    write_predictions(predictions_path(task), all_ids, labels)
    unreadable_ids = {row_id for entry in unreadable for row_id in entry["row_ids"]}
    unscored = [] if detector is None else [
        int(row_id) for row_id in all_ids if int(row_id) not in predicted and int(row_id) not in unreadable_ids]
    if undecodable:
        log.warning("%d predict rows could not be decoded and were labelled real (0): row_ids %s",
                    len(undecodable), [u["row_id"] for u in undecodable])
    for entry in unreadable:
        if not entry["row_ids"] and not entry["n_rows_unknown_id"]:  # a file without a readable footer
            log.warning("%s is unreadable (%s): its rows and their row ids are unknown, so they cannot be in %s",
                        entry["where"], entry["error"], predictions_path(task).name)
            continue
        log.warning("predict rows in unreadable parquet data %s were labelled real (0): row_ids %s%s", entry["where"],
                    entry["row_ids"], f" and {entry['n_rows_unknown_id']} rows whose row_id is unreadable too"
                    if entry["n_rows_unknown_id"] else "")
    if unscored:
        log.warning("%s: %d rows labelled real (0) unscored: row_ids %s",
                    "SIGTERM" if terminated else "time budget ran out", len(unscored), unscored[:50])
    report = {
        "task": task, "detector": detector.kind if detector else None, "detector_task": source.task,
        "detector_fallback": source.fallback_reason, "n_rows": int(len(all_ids)),
        "n_predicted_ai": int(labels.sum()), "undecodable": undecodable, "unreadable": unreadable,
        "unscored_row_ids": unscored, "terminated": terminated,
        "seconds": time.monotonic() - started, "predictions": str(predictions_path(task)),
    }
    write_json(task_dir(task) / "predict_report.json", report)
    if source.task is not None and source.task != task:
        log.warning("%s holds the labels of the %s detector: %s", predictions_path(task).name, source.task,
                    source.fallback_reason)
    log.info("wrote %s: %d rows, %d labelled ai_generated", predictions_path(task), len(all_ids), int(labels.sum()))
    return report
