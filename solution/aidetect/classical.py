"""The classical model family: engineered features + a scikit-learn classifier.

It also serves as the quick fallback detector: train.py fits it in seconds,
before the network, so the predict stages always have a calibrated model.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.special import expit
from threadpoolctl import threadpool_limits

from .features import CornerFeatures, batch_features

if TYPE_CHECKING:
    from sklearn.ensemble import HistGradientBoostingClassifier


def make_classifier(kind: str = "logistic"):
    """``logistic`` (the fallback: fast, stable) or ``boosting`` (stronger, slower)."""
    # scikit-learn is imported only to fit: a saved model is scored with numpy (BoostedTrees), and the predict
    # stages start a second sooner without it.
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=5000, class_weight="balanced"))
    if kind == "boosting":
        return HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, class_weight="balanced", random_state=0)
    raise ValueError(f"unknown classical model {kind!r}")


class ClassicalDetector:
    """fit(crops, y) / score(crops) -> log-odds of 'generated'.

    ``classifier`` is the scikit-learn model while it is fitted here, or the
    ``BoostedTrees`` it became when read from a model file: both score alike.
    """

    def __init__(self, kind: str = "logistic", classifier=None):
        self.kind = kind
        self.classifier = make_classifier(kind) if classifier is None else classifier

    def to_dict(self) -> dict:
        """The fitted model as plain numbers (``modelfiles.save_classical`` writes them as JSON)."""
        if self.kind != "boosting":
            raise ValueError(f"only the boosting model has a file format, not {self.kind!r}")
        trees = self.classifier if isinstance(self.classifier, BoostedTrees) else \
            BoostedTrees.from_sklearn(self.classifier)
        return {"kind": self.kind, **trees.to_dict()}

    @classmethod
    def from_dict(cls, fields: dict) -> "ClassicalDetector":
        kind = fields.get("kind") if isinstance(fields, dict) else None
        if kind != "boosting":
            raise ValueError(f"unknown classical model kind {kind!r}")
        return cls("boosting", BoostedTrees.from_dict(fields))

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


class BoostedTrees:
    """A fitted binary ``HistGradientBoostingClassifier`` as plain arrays, scored with numpy.

    ``predict_proba`` walks the trees as scikit-learn's ``_predict_from_raw_data``
    does (``x <= threshold`` goes left, a missing value follows
    ``missing_go_to_left``) and adds the leaf values to the baseline in the same
    order, so the probabilities equal scikit-learn's to the bit. The arrays are
    all there is to save: a model file of them holds no code.
    """

    FIELDS = {"feature": np.intp, "threshold": np.float64, "missing_go_to_left": bool, "left": np.intp,
              "right": np.intp, "is_leaf": bool, "value": np.float64}

    def __init__(self, baseline: float, trees: list[dict[str, np.ndarray]], n_features: int):
        self.baseline, self.trees, self.n_features = float(baseline), trees, int(n_features)

    @classmethod
    def from_sklearn(cls, model: HistGradientBoostingClassifier) -> "BoostedTrees":
        if len(model.classes_) != 2 or model.n_trees_per_iteration_ != 1:
            raise ValueError("only a binary HistGradientBoostingClassifier can be exported")
        if model.is_categorical_ is not None and np.any(model.is_categorical_):
            raise ValueError("categorical features are not supported")
        trees = []
        for (predictor,) in model._predictors:
            nodes = predictor.nodes
            trees.append({"feature": nodes["feature_idx"], "threshold": nodes["num_threshold"],
                          "missing_go_to_left": nodes["missing_go_to_left"], "left": nodes["left"],
                          "right": nodes["right"], "is_leaf": nodes["is_leaf"], "value": nodes["value"]})
        baseline = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)[0]
        return cls(baseline, [cls._typed(tree) for tree in trees], model.n_features_in_)

    @classmethod
    def _typed(cls, tree: dict) -> dict[str, np.ndarray]:
        return {name: np.asarray(tree[name]).astype(dtype) for name, dtype in cls.FIELDS.items()}

    def to_dict(self) -> dict:
        return {"baseline": self.baseline, "n_features": self.n_features,
                "trees": [{name: tree[name].tolist() for name in self.FIELDS} for tree in self.trees]}

    @classmethod
    def from_dict(cls, fields: dict) -> "BoostedTrees":
        """The model from ``to_dict``'s fields; a ValueError names the first field that is not as written."""
        n_features = _typed_value(fields, "n_features", int)
        baseline = _typed_value(fields, "baseline", float)
        trees = [cls._checked_tree(tree, n_features, i) for i, tree in enumerate(_typed_value(fields, "trees", list))]
        return cls(baseline, trees, n_features)

    @classmethod
    def _checked_tree(cls, tree, n_features: int, index: int) -> dict[str, np.ndarray]:
        if not isinstance(tree, dict) or set(tree) != set(cls.FIELDS):
            raise ValueError(f"tree {index}: expected the fields {sorted(cls.FIELDS)}")
        lists = [tree[name] for name in cls.FIELDS]
        if any(not isinstance(v, list) for v in lists) or len({len(v) for v in lists}) != 1 or not lists[0]:
            raise ValueError(f"tree {index}: every field must be a list of the same, non-zero length")
        if any(not all(isinstance(x, (int, float)) for x in v) for v in lists):
            raise ValueError(f"tree {index}: every value must be a number")
        typed = cls._typed(tree)
        n_nodes = len(typed["value"])
        splits = ~typed["is_leaf"]
        for name in ("left", "right"):
            if np.any((typed[name][splits] <= np.flatnonzero(splits)) | (typed[name][splits] >= n_nodes)):
                raise ValueError(f"tree {index}: a '{name}' child index is out of range")
        if np.any((typed["feature"][splits] < 0) | (typed["feature"][splits] >= n_features)):
            raise ValueError(f"tree {index}: a feature index is out of range")
        return typed

    def _flat(self) -> dict[str, np.ndarray]:
        """Every tree's nodes in one array per field, child indices made global, and each tree's root."""
        if getattr(self, "_nodes", None) is None:
            sizes = np.array([len(tree["value"]) for tree in self.trees])
            roots = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
            nodes = {name: np.concatenate([tree[name] for tree in self.trees]) for name in self.FIELDS}
            for name in ("left", "right"):
                nodes[name] = np.where(nodes["is_leaf"], np.arange(len(nodes[name])),
                                       nodes[name] + np.repeat(roots, sizes))  # a leaf leads to itself
            self._nodes, self._roots = nodes, roots
        return self._nodes

    def raw_predict(self, features: np.ndarray) -> np.ndarray:
        X = np.asarray(features, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features per row, got shape {X.shape}")
        nodes = self._flat()
        flat_x = X.reshape(-1)
        # All trees walk all rows together, one level a step; a row at a leaf stays there.
        node = np.repeat(self._roots[:, None], len(X), axis=1)
        row_start = (np.arange(len(X)) * self.n_features)[None, :]
        while not nodes["is_leaf"][node].all():
            x = flat_x[row_start + nodes["feature"][node]]
            left = np.where(np.isnan(x), nodes["missing_go_to_left"][node], x <= nodes["threshold"][node])
            node = np.where(left, nodes["left"][node], nodes["right"][node])
        raw = np.zeros(len(X), dtype=np.float64)
        raw += self.baseline
        for values in nodes["value"][node]:  # tree by tree, in scikit-learn's order of addition
            raw += values
        return raw

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        p = expit(self.raw_predict(features))
        return np.column_stack([1 - p, p])


def _typed_value(fields: dict, name: str, kind: type):
    value = fields.get(name) if isinstance(fields, dict) else None
    kinds = (int, float) if kind is float else kind
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise ValueError(f"field '{name}' must be a {kind.__name__}, not {type(value).__name__}")
    return value
