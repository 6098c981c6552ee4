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
import pickle
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .budget import Deadline
from .calibration import Threshold, calibrate_on_several
from .classical import ClassicalDetector
from .cleaning import PreparedSplit, load_prepared, prepared_splits
from .crops import CROP_SIZE, square_crop
from .dataio import atomic_path, iter_batches, read_json, read_row_ids, write_json, write_predictions
from .decode import decode_rgb
from .errors import DataError, DecodeError, PipelineError
from .labels import binary_label
from .metrics import detection_metrics
from .parallel import ordered_map
from .paths import EVALUATION_SPLITS, PREDICT_SPLIT, predictions_path, split_dir, task_dir
from .progress import progress
from .training import TrainConfig, fit, load_model, score_crops

log = logging.getLogger(__name__)

MAX_FPR = 0.20
DELTA = 0.05  # P(true FPR > MAX_FPR) <= DELTA
SEED = 0

TASK02_CONFIG = TrainConfig(policy="neutral", with_rgb=True, epochs=60, patience=12, lr=2e-3, seed=SEED)
TASK03_CONFIG = TrainConfig(policy="robust", with_rgb=True, clean_fraction=0.3, epochs=30, patience=10, lr=1e-3,
                            seed=SEED)
TASK_CALIBRATION_SPLITS = {"task02": ("calibration",), "task03": ("calibration", "calibration_augmented")}
REPORT_SPLITS = ("calibration", "calibration_augmented", "validation", "validation_augmented")


# --- detectors as files -------------------------------------------------------------


class Detector:
    """A scoring function plus its calibrated threshold."""

    def __init__(self, kind: str, scorer, threshold: Threshold, info: dict):
        self.kind, self.scorer, self.threshold, self.info = kind, scorer, threshold, info

    def score(self, crops: np.ndarray, deadline: Deadline | None = None, desc: str = "score") -> np.ndarray:
        if self.kind == "network":
            return score_crops(self.scorer, crops, 16, deadline, desc)
        return self.scorer.score(crops)

    def predict(self, crops: np.ndarray) -> np.ndarray:
        return self.threshold.predict(self.score(crops))


def save_detector_description(task: str, kind: str, weights: str, threshold: Threshold, extra: dict) -> None:
    write_json(task_dir(task) / "detector.json",
               {"kind": kind, "weights": weights, "threshold": threshold.to_dict(), **extra})


def load_detector(task: str) -> Detector:
    folder = task_dir(task)
    path = folder / "detector.json"
    if not path.exists():
        raise PipelineError(f"no trained detector at {path}")
    description = read_json(path)
    threshold = Threshold(**description["threshold"])
    weights = folder / description["weights"]
    if description["kind"] == "network":
        scorer = load_model(weights)
    else:
        with open(weights, "rb") as handle:
            scorer = pickle.load(handle)
    return Detector(description["kind"], scorer, threshold, description)


# --- training a task ----------------------------------------------------------------


def _load_optional(split: str) -> PreparedSplit | None:
    return load_prepared(split) if split in prepared_splits() else None


def _real_scores(detector_score, splits: dict[str, PreparedSplit], names) -> dict[str, np.ndarray]:
    sets = {}
    for name in names:
        data = splits.get(name)
        if data is None:
            continue
        real = data.source_class == 0
        sets[name] = detector_score(np.asarray(data.crops[real]), name)
    if not sets:
        raise DataError(f"no real images in the calibration splits {names}: cannot calibrate a threshold")
    return sets


def fit_fallback(task: str, train: PreparedSplit, splits: dict[str, PreparedSplit]) -> Detector:
    """The classical detector, fitted and calibrated in seconds, saved as the active detector."""
    t0 = time.monotonic()
    model = ClassicalDetector("logistic").fit(np.asarray(train.crops), binary_label(train.source_class))
    threshold, per_set = calibrate_on_several(
        _real_scores(lambda crops, _: model.score(crops), splits, TASK_CALIBRATION_SPLITS[task]), MAX_FPR, DELTA)
    folder = task_dir(task)
    with atomic_path(folder / "fallback.pkl") as tmp, open(tmp, "wb") as handle:
        pickle.dump(model, handle)
    save_detector_description(task, "classical", "fallback.pkl", threshold,
                              {"calibration_sets": per_set, "fit_seconds": time.monotonic() - t0})
    log.info("fallback classical detector ready in %.1fs (threshold %.3f)", time.monotonic() - t0, threshold.value)
    return Detector("classical", model, threshold, {})


def evaluate(detector: Detector, splits: dict[str, PreparedSplit], deadline: Deadline | None) -> dict:
    """Metrics at the calibrated threshold on every prepared evaluation split."""
    results = {}
    for name in REPORT_SPLITS:
        data = splits.get(name)
        if data is None or len(data) == 0:
            continue
        scores = detector.score(np.asarray(data.crops), deadline, desc=f"evaluate {name}")
        results[name] = detection_metrics(data.source_class, scores, detector.threshold.predict(scores))
    return results


def train_task(task: str, deadline: Deadline, config: TrainConfig, init_from: Path | None = None) -> dict:
    """Fallback first, then the network; calibrate, evaluate, write metrics.json."""
    started = time.monotonic()
    train = load_prepared("train")
    splits = {name: _load_optional(name) for name in REPORT_SPLITS}
    splits = {k: v for k, v in splits.items() if v is not None}
    if "calibration" not in splits:
        raise DataError("the calibration split is missing from artifacts/prepared: run prepare.py")

    fallback = fit_fallback(task, train, splits)
    n_eval = sum(len(s) for s in splits.values())
    # Time to score the evaluation splits after training: measured on 32 crops, doubled for safety.
    probe = np.asarray(splits["calibration"].crops[:32])
    from .models import build_model

    t0 = time.monotonic()
    score_crops(build_model(config.arch, **config.model_kwargs()), probe, desc="timing probe")
    per_image = (time.monotonic() - t0) / max(1, len(probe))
    reserve = 2.0 * per_image * n_eval + 10.0
    log.info("keeping %.0fs after training for calibration and evaluation of %d images", reserve, n_eval)

    init_state = None
    if init_from is not None:
        if init_from.exists():
            import torch

            init_state = torch.load(init_from, weights_only=False)["model"]
        else:
            log.warning("no checkpoint at %s to continue from; training from scratch", init_from)

    network, fit_result = None, None
    if deadline.remaining() > reserve + 30:
        network, fit_result = fit(config, train, task_dir(task), deadline, reserve, init_state=init_state)
    else:
        log.warning("no time left to train the network (%s); keeping the fallback", deadline.describe())

    detector = fallback
    if network is not None and (task_dir(task) / "model_best.pt").exists():
        score = lambda crops, name: score_crops(network, crops, 16, deadline, f"calibrate {name}")  # noqa: E731
        threshold, per_set = calibrate_on_several(
            _real_scores(score, splits, TASK_CALIBRATION_SPLITS[task]), MAX_FPR, DELTA)
        detector = Detector("network", network, threshold, {})
        save_detector_description(task, "network", "model_best.pt", threshold, {
            "arch": config.arch, "calibration_sets": per_set, "fit": asdict(fit_result)})
    metrics = {
        "task": task,
        "detector": detector.kind,
        "seed": config.seed,
        "config": asdict(config),
        "threshold": detector.threshold.to_dict(),
        "splits": evaluate(detector, splits, None),
        "fallback_splits": evaluate(fallback, splits, None) if detector is not fallback else None,
        "fit": asdict(fit_result) if fit_result else None,
        "train_images": len(train),
        "seconds": time.monotonic() - started,
    }
    write_json(task_dir(task) / "metrics.json", metrics)
    for name, m in metrics["splits"].items():
        log.info("%s %s: recall_ai %.3f, FPR %.3f, ROC AUC %.3f", task, name, m["recall_ai"], m["fpr"], m["roc_auc"])
    return metrics


# --- prediction ---------------------------------------------------------------------


def _decode_for_predict(item: tuple) -> tuple:
    """Worker: (row_id, bytes, skip) -> (row_id, canonical crop or None, error or None)."""
    row_id, data, skip = item
    if skip:
        return row_id, None, None
    try:
        return row_id, square_crop(decode_rgb(data), CROP_SIZE), None
    except DecodeError as exc:
        return row_id, None, str(exc)
    except Exception as exc:  # one bad row must never cost the others their label
        return row_id, None, f"{type(exc).__name__}: {exc}"


def predict_task(task: str, deadline: Deadline, batch_size: int = 16) -> dict:
    """Write ``artifacts/<task>/predictions.csv`` with one label per predict row.

    Rows whose image cannot be decoded, or that the time budget does not reach,
    are labelled real (0): a conservative rule that never accuses a photo
    without evidence. They are listed in a warning and in predict_report.json.
    """
    started = time.monotonic()
    try:
        detector = load_detector(task)
    except Exception as exc:
        detector = None
        log.error("no usable %s detector (%s): every row will be labelled real (0)", task, exc)
    row_ids, labels, undecodable, unscored = [], [], [], []
    pending_ids, pending_crops = [], []

    def flush():
        if pending_crops:
            scores = detector.score(np.stack(pending_crops), None, "predict batch")
            labels.extend(detector.threshold.predict(scores).tolist())
            row_ids.extend(pending_ids)
            pending_ids.clear()
            pending_crops.clear()

    folder = split_dir(PREDICT_SPLIT)
    total = len(read_row_ids(folder))  # fails early, with a clear message, on duplicate row ids

    def items():
        for batch in iter_batches(folder, labelled=False, batch_size=64):
            for row_id, data in zip(batch.row_id.tolist(), batch.images):
                # Past the deadline nothing more is decoded: the rows still get a label below.
                yield row_id, data, detector is None or deadline.expired()

    with progress(total=total, desc=f"predict {task}", deadline=deadline) as bar:
        # Decoding runs in worker processes while the main process scores.
        for row_id, crop, error in ordered_map(_decode_for_predict, items()):
            bar.update(1)
            if error is not None:
                undecodable.append({"row_id": row_id, "error": error})
            elif crop is None or deadline.expired():
                if detector is not None:
                    unscored.append(row_id)
            else:
                pending_crops.append(crop)
                pending_ids.append(row_id)
                if len(pending_crops) >= batch_size:
                    flush()
                continue
            row_ids.append(row_id)
            labels.append(0)
    flush()
    row_ids = np.asarray(row_ids, dtype=np.int64)
    order = np.argsort(row_ids, kind="stable")
    write_predictions(predictions_path(task), row_ids[order], np.asarray(labels)[order])
    if undecodable:
        log.warning("%d predict rows could not be decoded and were labelled real (0): row_ids %s",
                    len(undecodable), [u["row_id"] for u in undecodable])
    if unscored:
        log.warning("time budget ran out: %d rows labelled real (0) unscored: row_ids %s", len(unscored), unscored[:50])
    report = {
        "task": task, "detector": detector.kind if detector else None, "n_rows": int(len(row_ids)),
        "n_predicted_ai": int(np.sum(labels)), "undecodable": undecodable, "unscored_row_ids": unscored,
        "seconds": time.monotonic() - started, "predictions": str(predictions_path(task)),
    }
    write_json(task_dir(task) / "predict_report.json", report)
    log.info("wrote %s: %d rows, %d labelled ai_generated", predictions_path(task), len(row_ids), int(np.sum(labels)))
    return report
