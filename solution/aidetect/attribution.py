"""Which generator made an image, or none we know: attribution with open-set rejection.

The trained detector (Task 3's network, else Task 2's) already answers more than
"real or generated": its source head was trained jointly to name the source
(0 real, 1..5 generators), and its 128-d penultimate embedding describes each
image. Three spaces describe an image here:

* ``network``: that embedding, as it is;
* ``fingerprint``: classical generator traces of the same crop (``aidetect.features``:
  peaks of the high-pass spectrum at the up-sampling periods, the radial power
  spectrum, residual statistics), standardised on the train crops;
* ``joint``: both, each block standardised and scaled to the same total variance,
  so neither dominates a distance by its dimension.

Known-class attribution: the source head, the nearest class centroid in the
network space, a shared-covariance Gaussian (linear discriminant) or a logistic
regression in the joint space; the one with the best macro F1 on the known-class
calibration images is deployed.

An image from a source we never saw should get no known label. Candidate outlier
scores (higher = less like any known source), ``<rule>/<space>``:

* ``centroid``: L2 distance to the nearest class centroid;
* ``mahalanobis``: class-conditional Gaussians with one shared covariance
  (Ledoit-Wolf shrinkage), the smallest Mahalanobis distance (Lee et al. 2018);
* ``gaussian_margin``: how little the nearest of those Gaussians beats the second
  (minus the gap of their squared distances): an image between known classes;
* ``knn``: distance to the k-th nearest known training image (Sun et al. 2022);
* ``max_softmax/head`` and ``energy/head``: 1 - the largest softmax probability and
  -logsumexp of the source logits over the known classes (Liu et al. 2020).

Which score is deployed is decided without any unknown generator: each known
generator in turn plays the unknown (``select_outlier_score``: fit on the other
known classes of train, rank on the calibration images), and the score with the
best mean outlier AUROC over those rotations wins. The network itself has seen
the generator that plays the unknown, so the rotation flatters the network-based
scores; the leave-one-generator-out benchmark measures what that costs.

The threshold is calibrated on known generated calibration images with the same
Neyman-Pearson order-statistic rule as the detector, at a 1 % cap:
P(share of known generated images called outliers > 1 %) <= delta. The rule needs
299 images for that; with fewer, ``calibrate_threshold`` falls back to the largest
score and says ``guaranteed: false``. What such a threshold does guarantee is
reported as ``rate_bound_95``: the exceedance rate of the k-th of n order
statistics is Beta(n - k + 1, k) distributed, so its 95 % quantile bounds the
true rate with 95 % confidence (1 - 0.05^(1/n) for the largest of n).

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
from .calibration import (
    Threshold,
    calibrate_on_several,
    calibrate_threshold,
    min_calibration_size,
)
from .cleaning import PreparedSplit, load_prepared, prepared_splits
from .crops import CROP_SIZE, square_crop
from .dataio import atomic_path, iter_batches, read_row_ids, write_json
from .decode import decode_rgb
from .errors import DataError, DecodeError, PipelineError
from .modelfiles import NETWORK_FILE
from .settings import DETECTION
from .features import FEATURE_GROUPS, FEATURE_NAMES, image_features
from .labels import SOURCE_CLASSES, SOURCE_NAMES
from .metrics import clopper_pearson
from .models import to_tensor
from .paths import EVALUATION_SPLITS, PREDICT_SPLIT, artifacts_dir, split_dir, task_dir
from .progress import progress

log = logging.getLogger(__name__)

OUTLIER = -1
LABEL_NAMES = {**SOURCE_NAMES, OUTLIER: "outlier"}
OUTLIER_MAX_FPR = 0.01  # at most 1 % of known generated images may be called outliers ...
OUTLIER_DELTA = 0.05  # ... with 95 % confidence
DEFAULT_W = 1.0
SPACES = ("network", "fingerprint", "joint")
FINGERPRINT_GROUPS = ("periodic", "spectrum", "residual")
FINGERPRINT_COLUMNS = [FEATURE_NAMES.index(n) for g in FINGERPRINT_GROUPS for n in FEATURE_GROUPS[g]]
KNN_K = 5
# Every candidate outlier score, named "<rule>/<space>"; the first three are the scores of the first attributor.
OUTLIER_SCORES = (
    "centroid/network", "max_softmax/head", "energy/head",
    "mahalanobis/network", "gaussian_margin/network", "knn/network",
    "mahalanobis/fingerprint", "knn/fingerprint",
    "centroid/joint", "mahalanobis/joint", "gaussian_margin/joint", "knn/joint",
)


def rule_and_space(name: str) -> tuple[str, str]:
    """(rule, space) of an outlier score's name."""
    if name not in OUTLIER_SCORES:
        raise KeyError(name)
    rule, space = name.split("/")
    return rule, space
CLASSIFIERS = ("head", "centroid", "gaussian", "logistic")
MODEL_TASKS = ("task03", "task02")  # the robust model first
EMBED_BATCH = 16


def attribution_dir() -> Path:
    """Outputs of attribute.py: predictions, metrics, figures."""
    return artifacts_dir() / "attribution"


# --- network outputs and fingerprints -----------------------------------------------


@dataclass
class Embedded:
    """What the network (and, once attached, the fingerprint features) say about a set of crops."""

    binary_logit: np.ndarray  # (N,)
    source_logit: np.ndarray  # (N, 6)
    embedding: np.ndarray  # (N, D)
    fingerprint: np.ndarray | None = None  # (N, len(FINGERPRINT_COLUMNS))

    def __len__(self):
        return len(self.binary_logit)

    def rows(self, index) -> Embedded:
        fingerprint = None if self.fingerprint is None else self.fingerprint[index]
        return Embedded(self.binary_logit[index], self.source_logit[index], self.embedding[index], fingerprint)

    @staticmethod
    def concat(parts: list[Embedded]) -> Embedded:
        fingerprints = [p.fingerprint for p in parts]
        return Embedded(np.concatenate([p.binary_logit for p in parts]),
                        np.concatenate([p.source_logit for p in parts]),
                        np.concatenate([p.embedding for p in parts]),
                        None if any(f is None for f in fingerprints) else np.concatenate(fingerprints))


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


def _fingerprint_row(crop: np.ndarray) -> np.ndarray:
    return image_features(crop)[FINGERPRINT_COLUMNS]


def fingerprint_features(crops, index: np.ndarray | None = None, deadline: Deadline | None = None,
                         workers: int | None = None) -> np.ndarray:
    """(N, len(FINGERPRINT_COLUMNS)) periodic, spectral and residual features of ``crops`` (or ``crops[index]``).

    On every usable CPU (``workers`` None) or ``workers`` processes; stops at the
    deadline, returning the first rows only.
    """
    from .features import PARALLEL_MIN_CROPS
    from .parallel import ordered_map

    index = np.arange(len(crops)) if index is None else np.asarray(index)
    if len(index) < PARALLEL_MIN_CROPS:
        workers = 1
    stop_at = deadline.stop_at() if deadline is not None else None
    rows = [row for row in ordered_map(_fingerprint_row, (np.asarray(crops[i]) for i in index), workers,
                                       chunksize=8, stop_at=stop_at)]
    if len(rows) < len(index):
        log.warning("fingerprint features: time budget ran out after %d of %d crops", len(rows), len(index))
    return np.stack(rows) if rows else np.zeros((0, len(FINGERPRINT_COLUMNS)))


def embed_with_fingerprint(model: torch.nn.Module, crops, deadline: Deadline | None = None,
                           desc: str | None = "embed", index: np.ndarray | None = None) -> Embedded:
    """``embed`` and the fingerprint features of the same rows (truncated together under a deadline)."""
    emb = embed(model, crops, deadline, desc, index=index)
    rows = np.arange(len(emb)) if index is None else np.asarray(index)[: len(emb)]
    fingerprint = fingerprint_features(crops, rows, deadline)
    emb = emb.rows(slice(0, len(fingerprint)))
    emb.fingerprint = fingerprint
    return emb


# --- spaces, classifiers and outlier scores -------------------------------------------


class EmbeddingSpace:
    """Maps an ``Embedded`` to the rows of one space (``SPACES``); standardisation fitted on train."""

    def __init__(self, kind: str):
        if kind not in SPACES:
            raise ValueError(f"unknown space {kind!r}; known: {', '.join(SPACES)}")
        self.kind = kind

    def fit(self, emb: Embedded) -> EmbeddingSpace:
        from sklearn.preprocessing import StandardScaler

        if self.kind in ("fingerprint", "joint"):
            if emb.fingerprint is None:
                raise ValueError(f"the {self.kind} space needs fingerprint features")
            self.fingerprint_scaler_ = StandardScaler().fit(emb.fingerprint)
        if self.kind == "joint":
            self.network_scaler_ = StandardScaler().fit(emb.embedding)
        return self

    def transform(self, emb: Embedded) -> np.ndarray:
        if self.kind == "network":
            return emb.embedding
        fingerprint = np.clip(self.fingerprint_scaler_.transform(emb.fingerprint), -10, 10)
        if self.kind == "fingerprint":
            return fingerprint
        network = self.network_scaler_.transform(emb.embedding)
        # Unit total variance per block: 45 fingerprint columns weigh as much as 128 network ones.
        return np.hstack([network / np.sqrt(network.shape[1]), fingerprint / np.sqrt(fingerprint.shape[1])])


@dataclass
class CentroidClassifier:
    """Nearest class centroid by L2 distance in an embedding space; no training beyond the means."""

    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def fit(self, embeddings: np.ndarray, labels: np.ndarray, classes=None) -> CentroidClassifier:
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


class SharedGaussian:
    """Class-conditional Gaussians with one shared (Ledoit-Wolf shrunk) covariance: a linear discriminant."""

    def fit(self, x: np.ndarray, labels: np.ndarray) -> SharedGaussian:
        from sklearn.covariance import LedoitWolf

        labels = np.asarray(labels)
        self.classes_ = np.unique(labels)
        self.means_ = np.stack([x[labels == c].mean(axis=0) for c in self.classes_])
        centred = x - self.means_[np.searchsorted(self.classes_, labels)]
        self.precision_ = LedoitWolf(assume_centered=True).fit(centred).precision_
        return self

    def distances(self, x: np.ndarray) -> np.ndarray:
        """(N, K) squared Mahalanobis distances to the class means."""
        diff = x[:, None, :] - self.means_[None]
        return np.einsum("nkd,de,nke->nk", diff, self.precision_, diff)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmin(self.distances(x), axis=1)]

    def outlier_score(self, x: np.ndarray) -> np.ndarray:
        return self.distances(x).min(axis=1)

    def margin_score(self, x: np.ndarray) -> np.ndarray:
        """Minus the gap between the two smallest squared distances (higher = more ambiguous)."""
        nearest = np.sort(self.distances(x), axis=1)
        return nearest[:, 0] - nearest[:, 1] if nearest.shape[1] > 1 else nearest[:, 0]


def head_scores(source_logit: np.ndarray, known) -> dict[str, np.ndarray]:
    """``max_softmax`` and ``energy`` over the logits of the known classes (higher = less known)."""
    logits = source_logit[:, np.asarray(known)]
    log_norm = logsumexp(logits, axis=1)
    return {"max_softmax": 1.0 - np.exp(logits.max(axis=1) - log_norm), "energy": -log_norm}


class OutlierScorer:
    """One candidate outlier score: fitted on known-class train rows, higher = less like a known source."""

    def __init__(self, rule: str, space: str, k: int = KNN_K):
        self.rule, self.space, self.k = rule, space, k

    def fit(self, emb: Embedded, labels: np.ndarray) -> OutlierScorer:
        from sklearn.neighbors import NearestNeighbors

        self.known_ = np.unique(labels)
        if self.space == "head":
            return self
        self.space_ = EmbeddingSpace(self.space).fit(emb)
        x = self.space_.transform(emb)
        if self.rule == "centroid":
            self.model_ = CentroidClassifier().fit(x, labels)
        elif self.rule in ("mahalanobis", "gaussian_margin"):
            self.model_ = SharedGaussian().fit(x, labels)
        elif self.rule == "knn":
            self.model_ = NearestNeighbors(n_neighbors=min(self.k, len(x))).fit(x)
        else:
            raise ValueError(f"unknown outlier rule {self.rule!r}")
        return self

    def score(self, emb: Embedded) -> np.ndarray:
        if self.space == "head":
            return head_scores(emb.source_logit, self.known_)[self.rule]
        x = self.space_.transform(emb)
        if self.rule == "knn":
            return self.model_.kneighbors(x)[0][:, -1]
        if self.rule == "gaussian_margin":
            return self.model_.margin_score(x)
        return self.model_.outlier_score(x)


def make_scorer(name: str) -> OutlierScorer:
    rule, space = rule_and_space(name)
    return OutlierScorer(rule, space)


class KnownClassifier:
    """Names the known class: ``head`` (argmax of the source head over the known classes), ``centroid``
    (nearest centroid, network space), ``gaussian`` or ``logistic`` (joint space)."""

    def __init__(self, kind: str):
        if kind not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {kind!r}; known: {', '.join(CLASSIFIERS)}")
        self.kind = kind

    def fit(self, emb: Embedded, labels: np.ndarray) -> KnownClassifier:
        from sklearn.linear_model import LogisticRegression

        self.known_ = np.unique(labels)
        if self.kind == "head":
            return self
        self.space_ = EmbeddingSpace("network" if self.kind == "centroid" else "joint").fit(emb)
        x = self.space_.transform(emb)
        if self.kind == "centroid":
            self.model_ = CentroidClassifier().fit(x, labels)
        elif self.kind == "gaussian":
            self.model_ = SharedGaussian().fit(x, labels)
        else:
            self.model_ = LogisticRegression(C=1.0, max_iter=3000).fit(x, labels)
        return self

    def predict(self, emb: Embedded) -> np.ndarray:
        if self.kind == "head":
            return self.known_[np.argmax(emb.source_logit[:, self.known_], axis=1)]
        return np.asarray(self.model_.predict(self.space_.transform(emb)), dtype=np.int64)


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
    """One threshold that keeps the cap on every calibration set (the largest per-set threshold).

    The summary says whether the rule's guarantee holds on every set, the
    smallest set size it needs, and ``rate_bound_95``: the bound that the
    chosen threshold does give, the worst over the sets.
    """
    threshold, per_set = calibrate_on_several(score_sets, max_fpr, delta)
    for name, scores in score_sets.items():
        # A set's bound at the chosen threshold: the final threshold is at least its own order statistic.
        own = Threshold(**per_set[name])
        per_set[name]["rate_bound_95"] = rate_bound(own, 1 - delta)
        per_set[name]["empirical_rate_at_final"] = float(np.mean(np.asarray(scores) > threshold.value))
    guaranteed = bool(all(p["guaranteed"] for p in per_set.values()))
    bound = float(max(p["rate_bound_95"] for p in per_set.values()))
    summary = {
        "threshold": threshold.to_dict(),
        "guaranteed_all_sets": guaranteed,
        "min_images_for_guarantee": min_calibration_size(max_fpr, delta),
        "rate_bound_95": bound,
        "statement": (f"at most {100 * max_fpr:g} % of known generated images called outliers, with "
                      f"{100 * (1 - delta):g} % confidence" if guaranteed else
                      f"too few calibration images for a {100 * max_fpr:g} % guarantee (the rule needs "
                      f"{min_calibration_size(max_fpr, delta)} per set; smallest set "
                      f"{min(p['n_calibration'] for p in per_set.values())}): the bound achieved is "
                      f"{100 * bound:.1f} % with {100 * (1 - delta):g} % confidence"),
        "per_set": per_set,
    }
    return threshold, summary


# --- choosing the outlier score without the unknown -------------------------------------


def _check_known(known, **label_sets) -> None:
    known = {int(c) for c in known}
    for name, labels in label_sets.items():
        stray = sorted(set(np.unique(labels).tolist()) - known)
        if stray:
            raise ValueError(f"{name} holds class(es) {stray} outside the known classes {sorted(known)}: "
                             "labels of an unknown source must not reach the fit or the selection")


def outlier_auroc_against(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the ``positive`` rows (outliers) against the ``negative`` rows."""
    from sklearn.metrics import roc_auc_score

    if not positive.any() or not negative.any():
        return float("nan")
    keep = positive | negative
    return float(roc_auc_score(positive[keep].astype(int), scores[keep]))


def select_outlier_score(train: Embedded, train_labels: np.ndarray, calibration: Embedded,
                         calibration_labels: np.ndarray, known, candidates=OUTLIER_SCORES,
                         min_images: int = 3) -> dict:
    """The candidate score that best ranks a generator it was not fitted on, known classes only.

    Every known generator h with at least ``min_images`` train and calibration
    images plays the unknown once: each candidate is fitted on the train rows of
    the other known classes and scored on the calibration rows; its AUROC is that
    of h's calibration images against the other known generators'. The candidate
    with the highest mean AUROC wins (ties: the earlier candidate). Raises
    ValueError if any label outside ``known`` is passed.
    """
    train_labels, calibration_labels = np.asarray(train_labels), np.asarray(calibration_labels)
    _check_known(known, train_labels=train_labels, calibration_labels=calibration_labels)
    generators = [int(c) for c in known if c != 0]
    aurocs = {name: {} for name in candidates}
    for h in generators:
        if (train_labels == h).sum() < min_images or (calibration_labels == h).sum() < min_images:
            continue
        fit_rows = train_labels != h
        positive = calibration_labels == h
        negative = np.isin(calibration_labels, [g for g in generators if g != h])
        if not negative.any():
            continue
        for name in candidates:
            scorer = make_scorer(name).fit(train.rows(fit_rows), train_labels[fit_rows])
            aurocs[name][str(h)] = outlier_auroc_against(scorer.score(calibration), positive, negative)
    means = {name: float(np.nanmean(list(v.values()))) if v else float("nan") for name, v in aurocs.items()}
    ranked = [name for name in candidates if np.isfinite(means[name])]
    chosen = max(ranked, key=lambda name: means[name]) if ranked else candidates[0]
    return {"protocol": "each known generator in turn plays the unknown; mean outlier AUROC on calibration",
            "pseudo_unknowns": sorted({h for v in aurocs.values() for h in v}), "auroc": aurocs,
            "mean_auroc": means, "chosen": chosen}


# --- the fitted open set ----------------------------------------------------------------


@dataclass
class OpenSet:
    """Known-class classifier, every candidate outlier score with its 1 % threshold, and the choices made."""

    known: tuple
    classifiers: dict  # kind -> fitted KnownClassifier
    classifier_kind: str  # the deployed one
    scorers: dict  # score name -> fitted OutlierScorer
    thresholds: dict  # score name -> Threshold
    calibration: dict  # score name -> calibration summary (per set, bounds)
    outlier_score: str
    info: dict = field(default_factory=dict)

    @property
    def classifier(self) -> KnownClassifier:
        return self.classifiers[self.classifier_kind]

    @property
    def needs_fingerprint(self) -> bool:
        """Whether the deployed classifier or outlier score reads the fingerprint features."""
        return self.classifier_kind in ("gaussian", "logistic") or \
            rule_and_space(self.outlier_score)[1] in ("fingerprint", "joint")

    def scores(self, emb: Embedded) -> dict[str, np.ndarray]:
        return {name: scorer.score(emb) for name, scorer in self.scorers.items()}

    def label(self, emb: Embedded, score: str | None = None, predicted: np.ndarray | None = None) -> np.ndarray:
        score = score or self.outlier_score
        predicted = self.classifier.predict(emb) if predicted is None else predicted
        return final_labels(predicted, self.scorers[score].score(emb), self.thresholds[score])


def fit_open_set(train: Embedded, train_labels: np.ndarray, calibration: dict[str, Embedded],
                 calibration_labels: dict[str, np.ndarray], known, candidates=OUTLIER_SCORES,
                 classifiers=CLASSIFIERS) -> OpenSet:
    """Fit classifiers and scores on ``train``, thresholds and both choices on ``calibration`` (known classes only).

    ``calibration`` maps a set name (e.g. calibration, calibration_augmented) to
    its embedded known-class images. The classifier with the best macro F1 on
    all calibration images is deployed; the outlier score by ``select_outlier_score``;
    each score's threshold keeps the 1 % cap on the known generated images of
    every calibration set. Raises ValueError if any label outside ``known`` is passed.
    """
    known = tuple(int(c) for c in known)
    train_labels = np.asarray(train_labels)
    _check_known(known, train_labels=train_labels,
                 **{f"calibration_labels[{k}]": v for k, v in calibration_labels.items()})
    names = [k for k, e in calibration.items() if len(e)]
    if not names:
        raise DataError("no known-class calibration images: cannot calibrate")
    pooled = Embedded.concat([calibration[k] for k in names])
    pooled_labels = np.concatenate([np.asarray(calibration_labels[k]) for k in names])

    fitted = {kind: KnownClassifier(kind).fit(train, train_labels) for kind in classifiers}
    macro_f1 = {kind: closed_set_metrics(pooled_labels, clf.predict(pooled), known)["macro_f1"]
                for kind, clf in fitted.items()}
    chosen_classifier = max(classifiers, key=lambda kind: macro_f1[kind])

    scorers = {name: make_scorer(name).fit(train, train_labels) for name in candidates}
    thresholds, summaries = {}, {}
    for name, scorer in scorers.items():
        sets = {}
        for k in names:
            generated = np.asarray(calibration_labels[k]) != 0
            if generated.any():
                sets[k] = scorer.score(calibration[k].rows(generated))
        if not sets:
            raise DataError("no known generated calibration images: cannot calibrate the outlier threshold")
        thresholds[name], summaries[name] = calibrate_outlier_threshold(sets)
    selection = select_outlier_score(train, train_labels, pooled, pooled_labels, known, candidates)
    info = {"classifier_selection": {"split": "+".join(names), "macro_f1": macro_f1, "chosen": chosen_classifier},
            "outlier_score_selection": selection,
            "train_images": {str(c): int((train_labels == c).sum()) for c in known}}
    return OpenSet(known, fitted, chosen_classifier, scorers, thresholds, summaries, selection["chosen"], info)


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
    """A network and the open set fitted on its outputs."""

    model: torch.nn.Module
    task: str
    open_set: OpenSet
    centroids: CentroidClassifier  # network space, for the distinguishability ratios
    info: dict = field(default_factory=dict)

    @property
    def known(self) -> tuple:
        return self.open_set.known

    @property
    def outlier_score(self) -> str:
        return self.open_set.outlier_score

    @property
    def classifier(self) -> str:
        return self.open_set.classifier.kind

    def label(self, emb: Embedded, score: str | None = None) -> np.ndarray:
        return self.open_set.label(emb, score)

    def describe(self) -> dict:
        return {
            "model_task": self.task, "known_classes": list(self.known), "classifier": self.classifier,
            "outlier_score": self.outlier_score, "outlier_max_fpr": OUTLIER_MAX_FPR, "delta": OUTLIER_DELTA,
            "thresholds": {k: t.to_dict() for k, t in self.open_set.thresholds.items()},
            "centroids": self.centroids.to_dict(), **self.open_set.info, **self.info,
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
        best = task_dir(task) / NETWORK_FILE
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


def known_rows(embedded: dict[str, Embedded], labels: dict[str, np.ndarray], known) -> tuple[dict, dict]:
    """The rows of each set whose label is a known class (an unknown source's labels stay out of the fit)."""
    keep = {name: np.isin(labels[name], np.asarray(known)) for name in embedded}
    return ({name: e.rows(keep[name]) for name, e in embedded.items()},
            {name: np.asarray(labels[name])[keep[name]] for name in embedded})


def fit_attributor(model: torch.nn.Module, task: str, train: PreparedSplit, calibration: dict[str, PreparedSplit],
                   known=SOURCE_CLASSES, deadline: Deadline | None = None,
                   train_per_class: int | None = None) -> tuple[Attributor, dict]:
    """The open set of ``model`` fitted on ``train`` and calibrated on ``calibration``, known classes only.

    Returns the attributor and the calibration embeddings (reused by callers).
    """
    known = tuple(int(c) for c in known)
    keep = np.flatnonzero(np.isin(train.source_class, known))
    keep = keep[stratified_subset(train.source_class[keep], train_per_class)]
    train_emb = embed_with_fingerprint(model, train.crops, deadline, "embed train", index=keep)
    train_labels = train.source_class[keep][: len(train_emb)]
    known = tuple(int(c) for c in known if (train_labels == c).any())

    cal_emb, cal_labels = {}, {}
    for name, data in calibration.items():
        members = np.flatnonzero(np.isin(data.source_class, known))
        cal_emb[name] = embed_with_fingerprint(model, data.crops, deadline, f"embed {name}", index=members)
        cal_labels[name] = data.source_class[members][: len(cal_emb[name])]
    open_set = fit_open_set(train_emb, train_labels, cal_emb, cal_labels, known)
    centroids = CentroidClassifier().fit(train_emb.embedding, train_labels, known)
    info = {"distinguishability_train": centroids.distinguishability(train_emb.embedding, train_labels)}
    return Attributor(model, task, open_set, centroids, info), {"embedded": cal_emb, "labels": cal_labels}


def open_set_result(open_set: OpenSet, emb: Embedded, true: np.ndarray, w: float, score: str,
                    predicted: np.ndarray) -> dict:
    """Challenge metric, outlier rates and confusion matrix of one outlier score."""
    known = open_set.known
    labels = open_set.label(emb, score, predicted)
    entry = attribution_score(true, labels, known, w)
    generated = np.isin(true, [c for c in known if c != 0])
    entry["outlier_rate_known_generated"] = float(np.mean(labels[generated] == OUTLIER)) if generated.any() \
        else float("nan")
    entry["outlier_rate_real"] = float(np.mean(labels[true == 0] == OUTLIER)) if (true == 0).any() else float("nan")
    entry["confusion_rows"] = sorted(set(SOURCE_CLASSES) | set(np.unique(true).tolist()))
    entry["confusion_cols"] = list(known) + [OUTLIER]
    entry["confusion"] = confusion(true, labels, entry["confusion_rows"], entry["confusion_cols"])
    return entry


def evaluate_split(attributor: Attributor, emb: Embedded, true: np.ndarray, w: float = DEFAULT_W) -> dict:
    """Closed-set metrics of every classifier, open-set metrics of every outlier score with the deployed one."""
    true = np.asarray(true)
    open_set = attributor.open_set
    closed = {kind: closed_set_metrics(true, clf.predict(emb)) for kind, clf in open_set.classifiers.items()}
    predicted = open_set.classifier.predict(emb)
    open_results = {name: open_set_result(open_set, emb, true, w, name, predicted) for name in open_set.scorers}
    deployed = open_results[open_set.outlier_score]
    return {
        "n": int(true.size),
        "closed_set": closed,
        "open_set": {open_set.classifier.kind: open_results},
        "deployed": {"classifier": open_set.classifier.kind, "outlier_score": open_set.outlier_score,
                     "macro_score": deployed["macro_score"], "outlier_rate_known": deployed["outlier_rate_known"],
                     "outlier_rate_known_generated": deployed["outlier_rate_known_generated"],
                     "accuracy": closed[open_set.classifier_kind]["accuracy"],
                     "accuracy_with_rejection": float(np.mean(open_set.label(emb, None, predicted) == true))},
        "distinguishability": attributor.centroids.distinguishability(emb.embedding, true),
    }


# --- figures ------------------------------------------------------------------------


def plot_confusions(panels: list[tuple[str, list[list[int]], list, list]], path: Path) -> None:
    """Row-normalised confusion matrices with counts, one panel per (title, matrix, rows, cols)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, (title, matrix, rows, cols) in zip(axes[0], panels):
        counts = np.asarray(matrix, dtype=float)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(counts.shape[0]):
            for j in range(counts.shape[1]):
                if counts[i, j]:
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=10,
                            color="white" if share[i, j] > 0.6 else "black")
        short = {c: ("out" if c == OUTLIER else ("real" if c == 0 else f"g{c}")) for c in set(rows) | set(cols)}
        ax.set_xticks(range(len(cols)), [short[c] for c in cols], fontsize=10)
        ax.set_yticks(range(len(rows)), [short[c] for c in rows], fontsize=10)
        ax.set_xlabel("predicted", fontsize=10)
        ax.set_ylabel("true", fontsize=10)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=150)
    plt.close(fig)


def plot_split_confusions(name: str, result: dict, path: Path) -> None:
    """The deployed classifier on the known classes, and the deployed open set (known class or outlier)."""
    kind, score = result["deployed"]["classifier"], result["deployed"]["outlier_score"]
    deployed = result["open_set"][kind][score]
    closed = result["closed_set"][kind]
    panels = [
        (f"{name}\n{kind}: acc {closed['accuracy']:.2f}", closed["confusion"], closed["confusion_labels"],
         closed["confusion_labels"]),
        (f"{name}\nopen set ({score})", deployed["confusion"], deployed["confusion_rows"], deployed["confusion_cols"]),
    ]
    plot_confusions(panels, path)


def plot_score_distributions(panels: list[dict], path: Path) -> None:
    """Outlier-score histograms of known generated against held-out images, with the 1 % threshold.

    Each panel: ``title``, ``known`` and ``held_out`` scores, ``threshold``. Scores
    are ranked on the known ones first (a percentile scale), so panels of
    different scores share one axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(max(7.0, 2.9 * len(panels)), 3.1), squeeze=False, sharey=True)
    bins = np.linspace(0, 100, 21)
    for ax, panel in zip(axes[0], panels):
        reference = np.sort(np.asarray(panel["known"]))

        def percentile(x, reference=reference):
            return 100.0 * np.searchsorted(reference, np.asarray(x), side="right") / max(1, len(reference))

        ax.hist(percentile(panel["known"]), bins=bins, density=True, alpha=0.55, color="C0",
                label="known generated")
        ax.hist(percentile(panel["held_out"]), bins=bins, density=True, alpha=0.55, color="C3",
                label="held-out generator")
        ax.axvline(percentile([panel["threshold"]])[0], color="black", linestyle="--", linewidth=1.2,
                   label="1 % threshold")
        ax.set_title(f"{panel['title']}\nn = {len(panel['known'])} known, {len(panel['held_out'])} held out",
                     fontsize=10)
        ax.set_xlabel("percentile among known", fontsize=10)
        ax.tick_params(labelsize=9)
    axes[0][0].set_ylabel("density", fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=150)
    plt.close(fig)


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
            crops = np.stack(pending_crops)
            emb = embed(attributor.model, crops, None, desc=None)
            if attributor.open_set.needs_fingerprint:  # the slower half of the work, skipped when unused
                emb.fingerprint = fingerprint_features(crops, workers=1)
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
        # Keep the fit within about a third of the budget: time one batch (network and fingerprints) first.
        t0 = time.monotonic()
        embed_with_fingerprint(model, train.crops, None, None, index=np.arange(min(EMBED_BATCH, len(train))))
        per_image = (time.monotonic() - t0) / max(1, min(EMBED_BATCH, len(train)))
        per_class = None
        affordable = int(deadline.remaining() / 3 / max(per_image, 1e-4))
        if affordable < len(train):
            per_class = max(4, affordable // len(SOURCE_CLASSES))
            log.warning("time for about %d train embeddings only: at most %d per class for the open-set fit",
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
                     "threshold": attributor.open_set.thresholds[attributor.outlier_score].to_dict(),
                     "calibration": attributor.open_set.calibration[attributor.outlier_score]["statement"]},
        "calibration": attributor.open_set.calibration,
        **attributor.open_set.info, **attributor.info,
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
        emb = embed_with_fingerprint(model, data.crops, deadline, f"embed {name}")
        if len(emb) < len(data):
            log.warning("%s only partly embedded (%d of %d): not evaluated", name, len(emb), len(data))
            continue
        result = evaluate_split(attributor, emb, data.source_class, w)
        metrics["splits"][name] = result
        plot_split_confusions(name, result, figures / f"confusion_{name}.png")
        log.info("%s: %s acc %.3f; open set (%s) macro score %.3f, known generated called outlier %.3f", name,
                 attributor.classifier, result["deployed"]["accuracy"], attributor.outlier_score,
                 result["deployed"]["macro_score"], result["deployed"]["outlier_rate_known_generated"])
    metrics["seconds"] = time.monotonic() - started
    write_json(out_dir / "metrics.json", metrics)
    return metrics


# --- leave one generator out --------------------------------------------------------


def subset(data: PreparedSplit, mask: np.ndarray) -> PreparedSplit:
    index = np.flatnonzero(mask)
    return PreparedSplit(data.name, np.asarray(data.crops[index]), data.source_class[index])


def held_out_rates(held_out: int, open_set: OpenSet, emb: Embedded, true: np.ndarray, w: float,
                   binary_threshold: Threshold | None = None) -> dict:
    """What the open set of the known classes does with one evaluation split that holds generator ``held_out``."""
    from sklearn.metrics import roc_auc_score

    true = np.asarray(true)
    known = open_set.known
    g = true == held_out
    known_generated = np.isin(true, [c for c in known if c != 0])
    is_known = np.isin(true, known)
    real = true == 0
    scores = open_set.scores(emb)
    rejected = {name: open_set.thresholds[name].predict(s) for name, s in scores.items()}

    def share(mask, values):
        return float(values[mask].mean()) if mask.any() else float("nan")

    predicted = open_set.classifier.predict(emb)
    chosen = open_set.outlier_score
    result = {
        "held_out": {
            "n": int(g.sum()),
            "rejected_outlier": {name: share(g, r) for name, r in rejected.items()},
            "rejected_outlier_ci95": {name: list(clopper_pearson(int(r[g].sum()), int(g.sum())))
                                      for name, r in rejected.items()},
            "outlier_roc_auc": {name: outlier_auroc_against(s, g, known_generated) for name, s in scores.items()},
            "outlier_roc_auc_vs_all_known": {name: outlier_auroc_against(s, g, is_known) for name, s in scores.items()},
            "attributed_to": {str(c): int((predicted[g] == c).sum()) for c in known},
        },
        "known_generators": {"n": int(known_generated.sum()),
                             "rejected_outlier": {name: share(known_generated, r) for name, r in rejected.items()}},
        "real": {"n": int(real.sum()), "rejected_outlier": {name: share(real, r) for name, r in rejected.items()}},
        "known_outlier_rate": {name: share(is_known, r) for name, r in rejected.items()},
        "known_accuracy": float(np.mean(predicted[is_known] == true[is_known])) if is_known.any() else float("nan"),
        "open_set": {chosen: open_set_result(open_set, emb, true, w, chosen, predicted)},
        "score_samples": {"score": chosen, "threshold": open_set.thresholds[chosen].value,
                          "known_generated": scores[chosen][known_generated].tolist(),
                          "held_out": scores[chosen][g].tolist()},
    }
    if binary_threshold is not None:
        flagged = binary_threshold.predict(emb.binary_logit)
        real_or_g = real | g
        result["held_out"]["flagged_generated"] = share(g, flagged)
        result["held_out"]["flagged_generated_ci95"] = list(clopper_pearson(int(flagged[g].sum()), int(g.sum())))
        result["held_out"]["binary_roc_auc_vs_real"] = float(
            roc_auc_score(g[real_or_g].astype(int), emb.binary_logit[real_or_g])) if g.any() and real.any() \
            else float("nan")
        result["known_generators"]["flagged_generated"] = share(known_generated, flagged)
        result["real"]["fpr"] = share(real, flagged)
    return result


def evaluate_held_out(held_out: int, train: Embedded, train_labels: np.ndarray, calibration: dict[str, Embedded],
                      calibration_labels: dict[str, np.ndarray], evaluation: dict[str, Embedded],
                      evaluation_labels: dict[str, np.ndarray], w: float = DEFAULT_W,
                      binary_threshold: Threshold | None = None) -> dict:
    """Fit the open set on the known classes only, then measure it on splits that hold generator ``held_out``.

    ``train`` and ``calibration`` may hold the held-out generator's images: they
    are dropped here, before anything is fitted or selected, so neither the
    scores, the thresholds nor the choice of score ever see them.
    """
    if held_out not in SOURCE_CLASSES or held_out == 0:
        raise ValueError(f"held_out must be a generator class 1..5, not {held_out}")
    known = tuple(c for c in SOURCE_CLASSES if c != held_out)
    (train_k,), (train_labels_k,) = (v.values() for v in known_rows({"train": train}, {"train": train_labels}, known))
    cal_k, cal_labels_k = known_rows(calibration, calibration_labels, known)
    open_set = fit_open_set(train_k, train_labels_k, cal_k, cal_labels_k, known)
    return {
        "held_out": held_out, "held_out_name": SOURCE_NAMES[held_out], "known": list(known),
        "deployed": {"classifier": open_set.classifier_kind, "outlier_score": open_set.outlier_score},
        "outlier_thresholds": open_set.calibration,
        **open_set.info,
        "splits": {name: held_out_rates(held_out, open_set, emb, evaluation_labels[name], w, binary_threshold)
                   for name, emb in evaluation.items()},
    }


def leave_one_generator_out(held_out: int, config, train: PreparedSplit, calibration: dict[str, PreparedSplit],
                            evaluation: dict[str, PreparedSplit], out_dir: Path, deadline: Deadline,
                            fingerprints: dict[str, np.ndarray] | None = None,
                            binary_max_fpr: float = DETECTION.max_fpr, binary_delta: float = DETECTION.delta,
                            w: float = DEFAULT_W) -> dict:
    """Train a network without generator ``held_out``; is it flagged generated, and rejected as an outlier?

    (a) the binary detector of the reduced model, calibrated on the real images
    of the first calibration set (FPR <= ``binary_max_fpr``), flags the held-out
    generator's images as generated; (b) the open set of the known classes
    (``evaluate_held_out``) rejects them as outliers. ``fingerprints`` maps a
    split name to its crops' fingerprint features (computed when missing).
    """
    from .models import build_model
    from .training import fit

    started = time.monotonic()
    if held_out not in SOURCE_CLASSES or held_out == 0:
        raise ValueError(f"held_out must be a generator class 1..5, not {held_out}")
    fingerprints = dict(fingerprints or {})
    reduced = subset(train, train.source_class != held_out)
    splits = {"train": train, **calibration, **evaluation}
    n_after = sum(len(d) for d in splits.values())
    probe_model = build_model(config.arch, **config.model_kwargs())
    embed(probe_model, reduced.crops[:EMBED_BATCH], None, desc=None)  # warm-up
    t0 = time.monotonic()
    embed(probe_model, reduced.crops[:EMBED_BATCH], None, desc=None)
    reserve = 1.3 * (time.monotonic() - t0) / max(1, min(EMBED_BATCH, len(reduced))) * n_after + 5.0
    model, fit_result = fit(config, reduced, Path(out_dir), deadline, reserve, resume=False)

    embedded = {}
    for name, data in splits.items():
        embedded[name] = embed(model, data.crops, None, f"embed {name}")
        if name not in fingerprints:
            fingerprints[name] = fingerprint_features(data.crops)
        embedded[name].fingerprint = fingerprints[name]
    first = next(iter(calibration))
    real = calibration[first].source_class == 0
    binary_threshold = calibrate_threshold(embedded[first].binary_logit[real], binary_max_fpr, binary_delta)
    result = evaluate_held_out(
        held_out, embedded["train"], train.source_class,
        {name: embedded[name] for name in calibration}, {name: d.source_class for name, d in calibration.items()},
        {name: embedded[name] for name in evaluation}, {name: d.source_class for name, d in evaluation.items()},
        w, binary_threshold)
    return {
        **result,
        "config": asdict(config),
        "fit": {"best_epoch": fit_result.best_epoch, "epochs_run": fit_result.epochs_run,
                "stopped_because": fit_result.stopped_because, "holdout_score": fit_result.best_score,
                "seconds": fit_result.seconds},
        "train_images": len(reduced),
        "binary_threshold": binary_threshold.to_dict(),
        "seconds": time.monotonic() - started,
    }


def logo_config(base, epochs: int, patience: int | None = None):
    """The task config, shortened for leave-one-generator-out runs."""
    return replace(base, epochs=epochs, patience=patience if patience is not None else epochs)
