"""Which generator made an image, or none we know: attribution with open-set rejection.

The trained detector (Task 3's network, else Task 2's) already answers more than
"real or generated": its source head was trained jointly to name the source
(0 real, 1..5 generators), and its 128-d embedding can be classified without
any training by the nearest class centroid (L2 to the mean embedding of each
class on the prepared train crops).

An image from a source we never saw should get neither label. Each image gets
an outlier score (higher = less like any known source):

* ``centroid_distance``: L2 distance to the nearest class centroid;
* ``max_softmax``: 1 - the largest softmax probability of the source head;
* ``energy``: -logsumexp of the source logits (Liu et al. 2020).

The threshold on a score is calibrated on known-class calibration images with
the same Neyman-Pearson order-statistic rule as the detector, at a 1 % cap:
P(share of known images called outliers > 1 %) <= delta. The rule needs 299
images for that; with fewer, ``calibrate_threshold`` falls back to the largest
score and says ``guaranteed: false``. What such a threshold does guarantee is
reported as ``rate_bound_95``: the exceedance rate of the k-th of n order
statistics is Beta(n - k + 1, k) distributed, so its 95 % quantile bounds the
true rate with 95 % confidence (1.6 % for the max of 183 images).

Final label: ``outlier`` when the score exceeds the threshold, else the known
class. The metric of the attribution challenges, per known class c,
``score_c = TPR_c / (1 + W * FPR_c)`` (one-vs-rest rates of the final label;
an outlier label is a miss for its true class and a false positive for none),
macro-averaged over the known classes. The spec gives no W; the default
W = 1 weighs a false attribution rate like a miss rate, and the per-class
rates are stored so that any W can be recomputed.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp
from scipy.stats import beta

from .budget import Deadline
from .calibration import Threshold, calibrate_on_several, calibrate_threshold
from .cleaning import PreparedSplit, load_prepared, prepared_splits
from .crops import CROP_SIZE, square_crop
from .dataio import atomic_path, iter_batches, read_row_ids, write_json
from .decode import decode_rgb
from .errors import DataError, DecodeError, PipelineError
from .labels import SOURCE_CLASSES, SOURCE_NAMES
from .metrics import clopper_pearson
from .models import to_tensor
from .paths import EVALUATION_SPLITS, PREDICT_SPLIT, artifacts_dir, split_dir, task_dir
from .progress import progress

log = logging.getLogger(__name__)

OUTLIER = -1
LABEL_NAMES = {**SOURCE_NAMES, OUTLIER: "outlier"}
OUTLIER_MAX_FPR = 0.01  # at most 1 % of known-source images may be called outliers ...
OUTLIER_DELTA = 0.05  # ... with 95 % confidence
DEFAULT_W = 1.0
OUTLIER_SCORES = ("centroid_distance", "max_softmax", "energy")
DEFAULT_OUTLIER_SCORE = "centroid_distance"  # the training-free one (RESEARCH.md)
CLASSIFIERS = ("head", "centroid")
MODEL_TASKS = ("task03", "task02")  # the robust model first
EMBED_BATCH = 16


def attribution_dir() -> Path:
    """Outputs of attribute.py: predictions, metrics, figures."""
    return artifacts_dir() / "attribution"


# --- network outputs ----------------------------------------------------------------


@dataclass
class Embedded:
    """What the network says about a set of crops."""

    binary_logit: np.ndarray  # (N,)
    source_logit: np.ndarray  # (N, 6)
    embedding: np.ndarray  # (N, D)

    def __len__(self):
        return len(self.binary_logit)


@torch.no_grad()
def embed(model: torch.nn.Module, crops, deadline: Deadline | None = None, desc: str | None = "embed",
          batch_size: int = EMBED_BATCH, index: np.ndarray | None = None) -> Embedded:
    """Network outputs for the crops (uint8 (N, H, W, 3), e.g. a CropFile), or for ``crops[index]``.

    Reads one batch at a time, so a split on disk is never loaded whole.
    Stops early (returning the first rows only) if ``deadline`` expires. No
    progress bar when ``desc`` is None.
    """
    model.eval()
    outs = [[], [], []]
    total = len(crops) if index is None else len(index)
    bar_context = progress(total=total, desc=desc, deadline=deadline) if desc else contextlib.nullcontext()
    with bar_context as bar:
        for start in range(0, total, batch_size):
            if deadline is not None and deadline.expired():
                log.warning("%s: time budget ran out after %d of %d crops", desc, start, total)
                break
            rows = slice(start, start + batch_size) if index is None else index[start : start + batch_size]
            batch = np.asarray(crops[rows])
            for store, value in zip(outs, model.forward_all(to_tensor(batch))):
                store.append(value.numpy().astype(np.float64))
            if bar is not None:
                bar.update(len(batch))
    if not outs[0]:
        dim = getattr(model, "embedding_dim", 0)
        return Embedded(np.zeros(0), np.zeros((0, len(SOURCE_CLASSES))), np.zeros((0, dim)))
    return Embedded(*(np.concatenate(o) for o in outs))


# --- the two attributors ------------------------------------------------------------


@dataclass
class CentroidClassifier:
    """Nearest class centroid by L2 distance in the embedding space; no training beyond the means."""

    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def fit(self, embeddings: np.ndarray, labels: np.ndarray, classes=None) -> "CentroidClassifier":
        labels = np.asarray(labels)
        wanted = np.unique(labels) if classes is None else np.asarray(classes)
        present = [c for c in wanted if (labels == c).any()]
        missing = sorted(set(wanted.tolist()) - set(present))
        if missing:
            log.warning("no embedded training image of class(es) %s: they get no centroid", missing)
        if not present:
            raise DataError("no labelled embeddings to compute class centroids from")
        self.classes = np.asarray(present, dtype=np.int64)
        self.centroids = np.stack([embeddings[labels == c].mean(axis=0) for c in self.classes])
        return self

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, K) L2 distances to the class centroids."""
        diff = embeddings[:, None, :] - self.centroids[None, :, :]
        return np.sqrt(np.einsum("nkd,nkd->nk", diff, diff))

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        return self.classes[np.argmin(self.distances(embeddings), axis=1)]

    def outlier_score(self, embeddings: np.ndarray) -> np.ndarray:
        return self.distances(embeddings).min(axis=1)

    def distinguishability(self, embeddings: np.ndarray, labels: np.ndarray) -> dict:
        """Per class: mean distance to the other centroids over the mean distance of its members to its own.

        A ratio well above 1 means the class sits apart from the others
        relative to its own spread; near 1, its members are as close to other
        centroids as to their own.
        """
        between = np.sqrt(((self.centroids[:, None] - self.centroids[None]) ** 2).sum(-1))
        out = {}
        for i, c in enumerate(self.classes):
            members = embeddings[np.asarray(labels) == c]
            inter = float(np.delete(between[i], i).mean()) if len(self.classes) > 1 else float("nan")
            intra = float(np.linalg.norm(members - self.centroids[i], axis=1).mean()) if len(members) else float("nan")
            out[str(int(c))] = {"n": int(len(members)), "inter_centroid": inter, "intra_spread": intra,
                                "ratio": inter / intra if intra > 0 else float("nan")}
        ratios = [v["ratio"] for v in out.values() if np.isfinite(v["ratio"])]
        return {"per_class": out, "mean_ratio": float(np.mean(ratios)) if ratios else float("nan")}

    def to_dict(self) -> dict:
        return {"classes": self.classes.tolist(), "centroids": self.centroids.tolist()}


def head_predict(source_logit: np.ndarray, known) -> np.ndarray:
    """Argmax of the source head over the known classes only."""
    known = np.asarray(known)
    return known[np.argmax(source_logit[:, known], axis=1)]


def outlier_scores(emb: Embedded, centroids: CentroidClassifier, known) -> dict[str, np.ndarray]:
    """Every outlier score (higher = less like a known source); softmax and energy over the known logits."""
    logits = emb.source_logit[:, np.asarray(known)]
    log_norm = logsumexp(logits, axis=1)
    max_prob = np.exp(logits.max(axis=1) - log_norm)
    return {
        "centroid_distance": centroids.outlier_score(emb.embedding),
        "max_softmax": 1.0 - max_prob,
        "energy": -log_norm,
    }


def known_class_prediction(emb: Embedded, centroids: CentroidClassifier, known, classifier: str) -> np.ndarray:
    if classifier == "head":
        return head_predict(emb.source_logit, known)
    if classifier == "centroid":
        return centroids.predict(emb.embedding)
    raise ValueError(f"unknown classifier {classifier!r}; known: {', '.join(CLASSIFIERS)}")


def final_labels(predicted_known: np.ndarray, scores: np.ndarray, threshold: Threshold) -> np.ndarray:
    """The known class, or OUTLIER where the outlier score exceeds the threshold."""
    return np.where(threshold.predict(scores) == 1, OUTLIER, predicted_known).astype(np.int64)


def rate_bound(threshold: Threshold, confidence: float = 0.95) -> float:
    """Upper bound on the true exceedance rate that holds with ``confidence`` (for exchangeable data).

    The share of the distribution above the k-th of n sorted scores is
    Beta(n - k + 1, k); with k = n (the fallback) the bound is 1 - (1 - c)^(1/n).
    """
    n, k = threshold.n_calibration, threshold.order_statistic_k
    return float(beta.ppf(confidence, n - k + 1, k))


def calibrate_outlier_threshold(score_sets: dict[str, np.ndarray], max_fpr: float = OUTLIER_MAX_FPR,
                                delta: float = OUTLIER_DELTA) -> tuple[Threshold, dict]:
    """One threshold that keeps the cap on every calibration set (the largest per-set threshold)."""
    threshold, per_set = calibrate_on_several(score_sets, max_fpr, delta)
    for name, scores in score_sets.items():
        # The bound of each set at the chosen (largest) threshold: rank of that value among the set.
        own = Threshold(**per_set[name])
        per_set[name]["rate_bound_95"] = rate_bound(own)
        per_set[name]["empirical_rate_at_final"] = float(np.mean(np.asarray(scores) > threshold.value))
    summary = {
        "threshold": threshold.to_dict(),
        "guaranteed_all_sets": bool(all(p["guaranteed"] for p in per_set.values())),
        "rate_bound_95": float(max(p["rate_bound_95"] for p in per_set.values())),
        "per_set": per_set,
    }
    return threshold, summary


# --- metrics ------------------------------------------------------------------------


def confusion(true: np.ndarray, predicted: np.ndarray, rows, cols) -> list[list[int]]:
    true, predicted = np.asarray(true), np.asarray(predicted)
    return [[int(((true == r) & (predicted == c)).sum()) for c in cols] for r in rows]


def closed_set_metrics(true: np.ndarray, predicted: np.ndarray, classes=SOURCE_CLASSES) -> dict:
    """Accuracy, macro F1 over the classes present, per-class recall and the confusion matrix."""
    from sklearn.metrics import f1_score

    true, predicted = np.asarray(true), np.asarray(predicted)
    present = [c for c in classes if (true == c).any()]
    return {
        "n": int(true.size),
        "accuracy": float(np.mean(true == predicted)) if true.size else float("nan"),
        "macro_f1": float(f1_score(true, predicted, labels=present, average="macro", zero_division=0))
        if present else float("nan"),
        "recall_per_class": {str(c): float(np.mean(predicted[true == c] == c)) for c in present},
        "confusion_labels": list(classes),
        "confusion": confusion(true, predicted, classes, classes),
    }


def attribution_score(true: np.ndarray, labels: np.ndarray, known, w: float = DEFAULT_W) -> dict:
    """Challenge metric: mean over known classes of TPR_c / (1 + W * FPR_c), plus the outlier rates.

    Images of classes outside ``known`` are the unknowns: their right label
    is OUTLIER, and any known label they get is a false positive of that class.
    """
    true, labels = np.asarray(true), np.asarray(labels)
    per_class = {}
    for c in known:
        positive = true == c
        if not positive.any():
            continue
        tpr = float(np.mean(labels[positive] == c))
        fpr = float(np.mean(labels[~positive] == c)) if (~positive).any() else 0.0
        per_class[str(int(c))] = {"n": int(positive.sum()), "tpr": tpr, "fpr": fpr, "score": tpr / (1 + w * fpr)}
    is_known = np.isin(true, np.asarray(known))
    rejected_known = int((labels[is_known] == OUTLIER).sum())
    n_unknown = int((~is_known).sum())
    result = {
        "w": w,
        "macro_score": float(np.mean([v["score"] for v in per_class.values()])) if per_class else float("nan"),
        "per_class": per_class,
        "n_known": int(is_known.sum()),
        "outlier_rate_known": rejected_known / max(1, int(is_known.sum())),
        "outlier_rate_known_ci95": list(clopper_pearson(rejected_known, int(is_known.sum()))),
        "n_unknown": n_unknown,
        "outlier_rate_unknown": float(np.mean(labels[~is_known] == OUTLIER)) if n_unknown else float("nan"),
    }
    return result


def outlier_auroc(true: np.ndarray, score: np.ndarray, known) -> float:
    """ROC AUC of an outlier score for unknown (positive) against known images."""
    from sklearn.metrics import roc_auc_score

    unknown = ~np.isin(np.asarray(true), np.asarray(known))
    if unknown.all() or not unknown.any():
        return float("nan")
    return float(roc_auc_score(unknown.astype(int), score))


# --- the attributor as a whole ------------------------------------------------------


@dataclass
class Attributor:
    """A network, its class centroids and the calibrated outlier thresholds."""

    model: torch.nn.Module
    task: str
    known: tuple
    centroids: CentroidClassifier
    thresholds: dict  # score name -> Threshold
    calibration: dict  # score name -> summary (per set, bounds)
    classifier: str = "head"
    outlier_score: str = DEFAULT_OUTLIER_SCORE
    info: dict = field(default_factory=dict)

    def label(self, emb: Embedded, classifier: str | None = None, score: str | None = None) -> np.ndarray:
        classifier, score = classifier or self.classifier, score or self.outlier_score
        predicted = known_class_prediction(emb, self.centroids, self.known, classifier)
        return final_labels(predicted, outlier_scores(emb, self.centroids, self.known)[score], self.thresholds[score])

    def describe(self) -> dict:
        return {
            "model_task": self.task, "known_classes": list(self.known), "classifier": self.classifier,
            "outlier_score": self.outlier_score, "outlier_max_fpr": OUTLIER_MAX_FPR, "delta": OUTLIER_DELTA,
            "thresholds": {k: t.to_dict() for k, t in self.thresholds.items()},
            "centroids": self.centroids.to_dict(), **self.info,
        }


def load_network(tasks=MODEL_TASKS) -> tuple[str, torch.nn.Module, dict]:
    """The first task whose active detector is a network: (task, model, detector description)."""
    from .detector import load_detector

    reasons = []
    for task in tasks:
        try:
            detector = load_detector(task)
        except Exception as exc:  # a missing or unreadable detector: try the next
            reasons.append(f"{task}: {exc}")
            continue
        if detector.network is not None:
            return task, detector.network, detector.info
        # The holdout may have preferred the classical model; the trained network still has an embedding.
        best = task_dir(task) / "model_best.pt"
        if best.exists():
            from .training import load_model

            return task, load_model(best), detector.info
        reasons.append(f"{task}: the active detector is {detector.kind}, without an embedding")
    raise PipelineError("no trained network to attribute with (" + "; ".join(reasons) + "): run train.py first")


def stratified_subset(source_class: np.ndarray, per_class: int | None, seed: int = 0) -> np.ndarray:
    """Indices of at most ``per_class`` images of every class (all when None), in ascending order."""
    if per_class is None:
        return np.arange(len(source_class))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(source_class):
        members = np.flatnonzero(source_class == c)
        chosen.extend(rng.choice(members, size=min(per_class, len(members)), replace=False).tolist())
    return np.sort(np.asarray(chosen, dtype=np.int64))


def fit_attributor(model: torch.nn.Module, task: str, train: PreparedSplit, calibration: dict[str, PreparedSplit],
                   known=SOURCE_CLASSES, deadline: Deadline | None = None, train_per_class: int | None = None,
                   select_on: str | None = None) -> tuple[Attributor, dict]:
    """Centroids from ``train``, thresholds from ``calibration`` (known classes only), classifier choice.

    The classifier (source head or centroids) is the one with the higher
    macro F1 on the first calibration split, so validation stays untouched.
    Returns the attributor and the calibration embeddings (reused by callers).
    """
    known = tuple(int(c) for c in known)
    keep = np.flatnonzero(np.isin(train.source_class, known))
    keep = keep[stratified_subset(train.source_class[keep], train_per_class)]
    train_emb = embed(model, train.crops, deadline, "embed train", index=keep)
    train_labels = train.source_class[keep][: len(train_emb)]
    centroids = CentroidClassifier().fit(train_emb.embedding, train_labels, known)
    known = tuple(int(c) for c in centroids.classes)

    cal_emb, cal_labels = {}, {}
    for name, data in calibration.items():
        members = np.flatnonzero(np.isin(data.source_class, known))
        cal_emb[name] = embed(model, data.crops, deadline, f"embed {name}", index=members)
        cal_labels[name] = data.source_class[members][: len(cal_emb[name])]
    if not any(len(e) for e in cal_emb.values()):
        raise DataError(f"no known-class calibration images in {list(calibration)}: cannot calibrate")

    thresholds, summaries = {}, {}
    for score in OUTLIER_SCORES:
        sets = {name: outlier_scores(e, centroids, known)[score] for name, e in cal_emb.items() if len(e)}
        thresholds[score], summaries[score] = calibrate_outlier_threshold(sets)

    select_on = select_on or next(name for name, e in cal_emb.items() if len(e))
    selection = {
        clf: closed_set_metrics(cal_labels[select_on],
                                known_class_prediction(cal_emb[select_on], centroids, known, clf), known)["macro_f1"]
        for clf in CLASSIFIERS
    }
    classifier = "centroid" if selection["centroid"] > selection["head"] else "head"
    info = {
        "train_images_for_centroids": {str(c): int((train_labels == c).sum()) for c in known},
        "distinguishability_train": centroids.distinguishability(train_emb.embedding, train_labels),
        "classifier_selection": {"split": select_on, "macro_f1": selection, "chosen": classifier},
    }
    attributor = Attributor(model, task, known, centroids, thresholds, summaries, classifier, DEFAULT_OUTLIER_SCORE,
                            info)
    return attributor, {"embedded": cal_emb, "labels": cal_labels}


def evaluate_split(attributor: Attributor, emb: Embedded, true: np.ndarray, w: float = DEFAULT_W) -> dict:
    """Closed-set metrics of both classifiers and open-set metrics of every (classifier, score) pair."""
    true = np.asarray(true)
    known = attributor.known
    closed = {clf: closed_set_metrics(true, known_class_prediction(emb, attributor.centroids, known, clf))
              for clf in CLASSIFIERS}
    open_set = {}
    for clf in CLASSIFIERS:
        open_set[clf] = {}
        for name in OUTLIER_SCORES:
            labels = attributor.label(emb, clf, name)
            entry = attribution_score(true, labels, known, w)
            entry["confusion_rows"] = list(SOURCE_CLASSES)
            entry["confusion_cols"] = list(known) + [OUTLIER]
            entry["confusion"] = confusion(true, labels, SOURCE_CLASSES, list(known) + [OUTLIER])
            open_set[clf][name] = entry
    deployed = open_set[attributor.classifier][attributor.outlier_score]
    return {
        "n": int(true.size),
        "closed_set": closed,
        "open_set": open_set,
        "deployed": {"classifier": attributor.classifier, "outlier_score": attributor.outlier_score,
                     "macro_score": deployed["macro_score"], "outlier_rate_known": deployed["outlier_rate_known"],
                     "accuracy_with_rejection": float(np.mean(attributor.label(emb) == true))},
        "distinguishability": attributor.centroids.distinguishability(emb.embedding, true),
    }


# --- figures ------------------------------------------------------------------------


def plot_confusions(panels: list[tuple[str, list[list[int]], list, list]], path: Path) -> None:
    """Row-normalised confusion matrices with counts, one panel per (title, matrix, rows, cols)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (title, matrix, rows, cols) in zip(axes[0], panels):
        counts = np.asarray(matrix, dtype=float)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(counts.shape[0]):
            for j in range(counts.shape[1]):
                if counts[i, j]:
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if share[i, j] > 0.6 else "black")
        short = {c: ("out" if c == OUTLIER else ("real" if c == 0 else f"g{c}")) for c in set(rows) | set(cols)}
        ax.set_xticks(range(len(cols)), [short[c] for c in cols])
        ax.set_yticks(range(len(rows)), [short[c] for c in rows])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)


def plot_split_confusions(name: str, result: dict, path: Path) -> None:
    deployed = result["open_set"][result["deployed"]["classifier"]][result["deployed"]["outlier_score"]]
    panels = [
        (f"{name}: source head (acc {result['closed_set']['head']['accuracy']:.2f})",
         result["closed_set"]["head"]["confusion"], list(SOURCE_CLASSES), list(SOURCE_CLASSES)),
        (f"{name}: nearest centroid (acc {result['closed_set']['centroid']['accuracy']:.2f})",
         result["closed_set"]["centroid"]["confusion"], list(SOURCE_CLASSES), list(SOURCE_CLASSES)),
        (f"{name}: open set, {result['deployed']['classifier']} + {result['deployed']['outlier_score']}",
         deployed["confusion"], deployed["confusion_rows"], deployed["confusion_cols"]),
    ]
    plot_confusions(panels, path)


# --- prediction ---------------------------------------------------------------------


def write_attributions(target: Path, row_ids: np.ndarray, labels: np.ndarray) -> None:
    """CSV ``row_id,predicted_source`` with names: real, generator_1..generator_5 or outlier."""
    lines = ["row_id,predicted_source"] + [f"{int(r)},{LABEL_NAMES[int(l)]}" for r, l in zip(row_ids, labels)]
    with atomic_path(target) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def predict_folder(attributor: Attributor | None, folder: Path, target: Path, deadline: Deadline,
                   batch_size: int = EMBED_BATCH) -> dict:
    """Label every row of ``folder`` (the predict split) and write ``target``.

    Rows that cannot be decoded, rows the time budget does not reach and all
    rows when there is no attributor get ``outlier``: "not attributable to a
    known source", which neither names a generator nor vouches for a photo.
    They are listed in a warning and in the returned report.
    """
    started = time.monotonic()
    row_ids, labels, undecodable, unscored = [], [], [], []
    pending_ids, pending_crops = [], []

    def flush():
        if pending_crops:
            emb = embed(attributor.model, np.stack(pending_crops), None, desc=None)
            labels.extend(attributor.label(emb).tolist())
            row_ids.extend(pending_ids)
            pending_ids.clear()
            pending_crops.clear()

    all_ids = read_row_ids(folder)  # fails early, with a clear message, on duplicate row ids
    with progress(total=len(all_ids), desc="attribute predict", deadline=deadline) as bar:
        for batch in iter_batches(folder, labelled=False, batch_size=64):
            for row_id, data in zip(batch.row_id.tolist(), batch.images):
                if attributor is None or deadline.expired():
                    if attributor is not None:
                        unscored.append(row_id)
                    row_ids.append(row_id)
                    labels.append(OUTLIER)
                    continue
                try:
                    pending_crops.append(square_crop(decode_rgb(data), CROP_SIZE))
                    pending_ids.append(row_id)
                except DecodeError as exc:
                    undecodable.append({"row_id": row_id, "error": str(exc)})
                    row_ids.append(row_id)
                    labels.append(OUTLIER)
                if len(pending_crops) >= batch_size:
                    flush()
            bar.update(len(batch.images))
    flush()
    unread = sorted(set(all_ids.tolist()) - set(row_ids))  # in parquet row groups that could not be read
    if unread:
        log.warning("%d predict rows in unreadable parquet data were labelled outlier: row_ids %s", len(unread), unread)
        row_ids.extend(unread)
        labels.extend([OUTLIER] * len(unread))
    row_ids = np.asarray(row_ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(row_ids, kind="stable")
    write_attributions(target, row_ids[order], labels[order])
    if undecodable:
        log.warning("%d predict rows could not be decoded and were labelled outlier: row_ids %s",
                    len(undecodable), [u["row_id"] for u in undecodable])
    if unscored:
        log.warning("time budget ran out: %d rows labelled outlier unscored: row_ids %s", len(unscored), unscored[:50])
    return {
        "n_rows": int(len(row_ids)),
        "per_label": {LABEL_NAMES[c]: int((labels == c).sum()) for c in list(SOURCE_CLASSES) + [OUTLIER]},
        "undecodable": undecodable, "unscored_row_ids": unscored, "predictions": str(target),
        "seconds": time.monotonic() - started,
    }


# --- the stage ----------------------------------------------------------------------


def run_attribution(deadline: Deadline, out_dir: Path | None = None, predict: bool = True,
                    w: float = DEFAULT_W) -> dict:
    """Fit the attributor, label ``data/predict``, evaluate on the validation splits; write under ``out_dir``.

    Order matters under a deadline: the predictions file first (complete even
    if everything else fails), metrics and figures after.
    """
    started = time.monotonic()
    out_dir = Path(out_dir) if out_dir is not None else attribution_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = out_dir / "predictions.csv"
    try:
        task, model, detector_info = load_network()
        from .detector import TASK_CALIBRATION_SPLITS

        available = set(prepared_splits())
        if "train" not in available:
            raise DataError("the prepared train split is missing: run prepare.py")
        calibration = {s: load_prepared(s) for s in TASK_CALIBRATION_SPLITS[task] if s in available}
        if not calibration:
            raise DataError(f"no prepared calibration split among {TASK_CALIBRATION_SPLITS[task]}: run prepare.py")
        train = load_prepared("train")
        # Keep the centroid step within about a third of the budget: time one batch first.
        t0 = time.monotonic()
        embed(model, train.crops[:EMBED_BATCH], None, desc=None)
        per_image = (time.monotonic() - t0) / max(1, min(EMBED_BATCH, len(train)))
        per_class = None
        affordable = int(deadline.remaining() / 3 / max(per_image, 1e-4))
        if affordable < len(train):
            per_class = max(4, affordable // len(SOURCE_CLASSES))
            log.warning("time for about %d train embeddings only: at most %d per class for the centroids",
                        affordable, per_class)
        attributor, _ = fit_attributor(model, task, train, calibration, deadline=deadline, train_per_class=per_class)
        attributor.info["detector_threshold"] = detector_info.get("threshold")
    except PipelineError as exc:
        log.error("no attributor (%s): every predict row will be labelled outlier", exc)
        if predict:
            predict_folder(None, split_dir(PREDICT_SPLIT), predictions, deadline)
        raise
    write_json(out_dir / "attributor.json", attributor.describe())
    report = predict_folder(attributor, split_dir(PREDICT_SPLIT), predictions, deadline) if predict else None

    metrics = {
        "model_task": task, "known_classes": list(attributor.known),
        "class_names": {str(k): v for k, v in LABEL_NAMES.items()},
        "w": w, "outlier_max_fpr": OUTLIER_MAX_FPR, "delta": OUTLIER_DELTA,
        "deployed": {"classifier": attributor.classifier, "outlier_score": attributor.outlier_score,
                     "threshold": attributor.thresholds[attributor.outlier_score].to_dict()},
        "calibration": attributor.calibration,
        **attributor.info,
        "splits": {}, "predict": report,
    }
    figures = out_dir / "figures"
    for name in EVALUATION_SPLITS:
        if name not in prepared_splits():
            continue
        if deadline.expired():
            log.warning("time budget ran out before evaluating %s", name)
            break
        data = load_prepared(name)
        emb = embed(model, data.crops, deadline, f"embed {name}")
        if len(emb) < len(data):
            log.warning("%s only partly embedded (%d of %d): not evaluated", name, len(emb), len(data))
            continue
        result = evaluate_split(attributor, emb, data.source_class, w)
        metrics["splits"][name] = result
        plot_split_confusions(name, result, figures / f"confusion_{name}.png")
        log.info("%s: head acc %.3f / macro F1 %.3f; centroid acc %.3f / macro F1 %.3f; open set (%s + %s) "
                 "macro score %.3f, known called outlier %.3f", name,
                 result["closed_set"]["head"]["accuracy"], result["closed_set"]["head"]["macro_f1"],
                 result["closed_set"]["centroid"]["accuracy"], result["closed_set"]["centroid"]["macro_f1"],
                 attributor.classifier, attributor.outlier_score, result["deployed"]["macro_score"],
                 result["deployed"]["outlier_rate_known"])
    metrics["seconds"] = time.monotonic() - started
    write_json(out_dir / "metrics.json", metrics)
    return metrics


# --- leave one generator out --------------------------------------------------------


def subset(data: PreparedSplit, mask: np.ndarray) -> PreparedSplit:
    index = np.flatnonzero(mask)
    return PreparedSplit(data.name, np.asarray(data.crops[index]), data.source_class[index])


def leave_one_generator_out(held_out: int, config, train: PreparedSplit, calibration: PreparedSplit,
                            evaluation: dict[str, PreparedSplit], out_dir: Path, deadline: Deadline,
                            binary_max_fpr: float = 0.2, binary_delta: float = 0.05, w: float = DEFAULT_W) -> dict:
    """Train without generator ``held_out``; how often is it flagged generated, and how often rejected?

    (a) the binary detector of the reduced model, calibrated on the real
    calibration images (FPR <= ``binary_max_fpr``), flags the held-out
    generator's images as generated; (b) the open-set scores, calibrated at
    1 % on the known-class calibration images, reject them as outliers. The
    same rates for the known classes are the comparison.
    """
    from .training import fit

    started = time.monotonic()
    if held_out not in SOURCE_CLASSES or held_out == 0:
        raise ValueError(f"held_out must be a generator class 1..5, not {held_out}")
    known = tuple(c for c in SOURCE_CLASSES if c != held_out)
    reduced = subset(train, train.source_class != held_out)
    n_after = len(reduced) + len(calibration) + sum(len(d) for d in evaluation.values())
    from .models import build_model

    probe_model = build_model(config.arch, **config.model_kwargs())
    embed(probe_model, reduced.crops[:EMBED_BATCH], None, desc=None)  # warm-up
    t0 = time.monotonic()
    embed(probe_model, reduced.crops[:EMBED_BATCH], None, desc=None)
    reserve = 1.3 * (time.monotonic() - t0) / max(1, min(EMBED_BATCH, len(reduced))) * n_after + 5.0
    model, fit_result = fit(config, reduced, Path(out_dir), deadline, reserve, resume=False)

    cal_known = subset(calibration, np.isin(calibration.source_class, known))
    attributor, cal = fit_attributor(model, f"logo_{held_out}", reduced, {calibration.name: cal_known}, known)
    cal_emb, cal_labels = cal["embedded"][calibration.name], cal["labels"][calibration.name]
    binary_threshold = calibrate_threshold(cal_emb.binary_logit[cal_labels == 0], binary_max_fpr, binary_delta)

    splits = {}
    for name, data in evaluation.items():
        emb = embed(model, data.crops, None, f"embed {name}")
        true = data.source_class
        flagged = binary_threshold.predict(emb.binary_logit)
        scores = outlier_scores(emb, attributor.centroids, known)
        rejected = {s: attributor.thresholds[s].predict(v) for s, v in scores.items()}
        per_class = {}
        for c in SOURCE_CLASSES:
            members = true == c
            if not members.any():
                continue
            per_class[str(c)] = {
                "n": int(members.sum()), "held_out": c == held_out,
                "flagged_generated": float(flagged[members].mean()),
                "rejected_outlier": {s: float(r[members].mean()) for s, r in rejected.items()},
            }
        known_generated = np.isin(true, [c for c in known if c != 0])
        g = true == held_out
        from sklearn.metrics import roc_auc_score

        real_or_g = (true == 0) | g
        splits[name] = {
            "per_class": per_class,
            "held_out": {
                "n": int(g.sum()),
                "flagged_generated": float(flagged[g].mean()) if g.any() else float("nan"),
                "flagged_generated_ci95": list(clopper_pearson(int(flagged[g].sum()), int(g.sum()))),
                "rejected_outlier": {s: float(r[g].mean()) if g.any() else float("nan") for s, r in rejected.items()},
                "binary_roc_auc_vs_real": float(roc_auc_score(g[real_or_g].astype(int), emb.binary_logit[real_or_g]))
                if g.any() and (true == 0).any() else float("nan"),
                "outlier_roc_auc": {s: outlier_auroc(true, v, known) for s, v in scores.items()},
            },
            "known_generators": {
                "flagged_generated": float(flagged[known_generated].mean()) if known_generated.any() else float("nan"),
                "rejected_outlier": {s: float(r[known_generated].mean()) if known_generated.any() else float("nan")
                                     for s, r in rejected.items()},
            },
            "real": {
                "fpr": float(flagged[true == 0].mean()) if (true == 0).any() else float("nan"),
                "rejected_outlier": {s: float(r[true == 0].mean()) if (true == 0).any() else float("nan")
                                     for s, r in rejected.items()},
            },
            "known_outlier_rate": {s: float(r[np.isin(true, known)].mean()) for s, r in rejected.items()},
            "open_set": {
                clf: attribution_score(true, attributor.label(emb, clf, DEFAULT_OUTLIER_SCORE), known, w)
                for clf in CLASSIFIERS
            },
        }
    return {
        "held_out": held_out, "held_out_name": SOURCE_NAMES[held_out], "known": list(known),
        "config": asdict(config),
        "fit": {"best_epoch": fit_result.best_epoch, "epochs_run": fit_result.epochs_run,
                "stopped_because": fit_result.stopped_because, "holdout_score": fit_result.best_score,
                "seconds": fit_result.seconds},
        "train_images": len(reduced),
        "binary_threshold": binary_threshold.to_dict(),
        "outlier_thresholds": {s: attributor.calibration[s] for s in OUTLIER_SCORES},
        "classifier_selection": attributor.info["classifier_selection"],
        "distinguishability_train": attributor.info["distinguishability_train"],
        "splits": splits,
        "seconds": time.monotonic() - started,
    }


def logo_config(base, epochs: int, patience: int | None = None):
    """The task config, shortened for leave-one-generator-out runs."""
    return replace(base, epochs=epochs, patience=patience if patience is not None else epochs)
