"""The classical model family: engineered features + a scikit-learn classifier.

It also serves as the quick fallback detector: train.py fits it in seconds,
before the network, so the predict stages always have a calibrated model.
"""
from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .features import CornerFeatures, batch_features


def make_classifier(kind: str = "logistic"):
    """``logistic`` (the fallback: fast, stable) or ``boosting`` (stronger, slower)."""
    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=5000, class_weight="balanced"))
    if kind == "boosting":
        return HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, class_weight="balanced", random_state=0)
    raise ValueError(f"unknown classical model {kind!r}")


class ClassicalDetector:
    """fit(crops, y) / score(crops) -> log-odds of 'generated'."""

    def __init__(self, kind: str = "logistic"):
        self.kind = kind
        self.classifier = make_classifier(kind)

    def fit_features(self, features: np.ndarray, y: np.ndarray,
                     sample_weight: np.ndarray | None = None) -> "ClassicalDetector":
        """Fit on feature rows; ``sample_weight`` multiplies the balanced class weights row by row."""
        fit_params = {}
        if sample_weight is not None:
            step = "logisticregression__" if self.kind == "logistic" else ""
            fit_params[f"{step}sample_weight"] = sample_weight
        # One thread: on a few thousand rows, OpenMP threads fighting the
        # training process for the cores made the fit ~10x slower, not faster.
        with threadpool_limits(1):
            self.classifier.fit(features, y, **fit_params)
        return self

    def fit(self, crops: np.ndarray, y: np.ndarray) -> "ClassicalDetector":
        return self.fit_features(batch_features(crops), y)

    def score_features(self, features: np.ndarray) -> np.ndarray:
        with threadpool_limits(1):
            proba = self.classifier.predict_proba(features)[:, 1]
        proba = np.clip(proba, 1e-7, 1 - 1e-7)
        return np.log(proba / (1 - proba))

    def score(self, crops: np.ndarray) -> np.ndarray:
        return self.score_features(batch_features(crops))

    def score_images(self, corners: CornerFeatures) -> np.ndarray:
        """One score per image: the mean log-odds of its corner crops."""
        if len(corners) == 0:
            return np.zeros(0)
        per_crop = self.score_features(corners.features)
        return np.array([part.mean() for part in np.split(per_crop, corners.offsets[1:-1])])
