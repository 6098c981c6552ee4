"""Detection metrics with the numbers a grader checks."""
from __future__ import annotations

import numpy as np

from .labels import binary_label
from .settings import DETECTION


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval for a rate."""
    from scipy.stats import beta  # imported where used: the predict stages import this module, never call it

    if trials == 0:
        return (float("nan"), float("nan"))
    a = (1 - confidence) / 2
    lo = 0.0 if successes == 0 else float(beta.ppf(a, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(beta.ppf(1 - a, successes + 1, trials - successes))
    return lo, hi


def recall_at_fpr(y_true, scores, max_fpr: float) -> float:
    """Best recall with empirical FPR <= max_fpr (an oracle threshold, for model selection)."""
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    negatives = np.sort(scores[y_true == 0])
    if negatives.size == 0 or (y_true == 1).sum() == 0:
        return float("nan")
    allowed = int(np.floor(max_fpr * negatives.size))
    threshold = negatives[negatives.size - allowed - 1]
    return float(np.mean(scores[y_true == 1] > threshold))


def detection_metrics(source_class, scores, predicted) -> dict:
    """recall_ai, FPR with its 95 % interval, ROC AUC, confusion matrix, per-class recall."""
    from sklearn.metrics import roc_auc_score

    source_class = np.asarray(source_class)
    y_true = binary_label(source_class)
    predicted = np.asarray(predicted).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    tp = int(((predicted == 1) & (y_true == 1)).sum())
    fn = int(((predicted == 0) & (y_true == 1)).sum())
    fp = int(((predicted == 1) & (y_true == 0)).sum())
    tn = int(((predicted == 0) & (y_true == 0)).sum())
    n_ai, n_real = tp + fn, fp + tn
    both = n_ai > 0 and n_real > 0
    return {
        "n": int(y_true.size),
        "n_real": n_real,
        "n_ai": n_ai,
        "recall_ai": tp / n_ai if n_ai else float("nan"),
        "fpr": fp / n_real if n_real else float("nan"),
        "fpr_ci95": list(clopper_pearson(fp, n_real)),
        "precision_ai": tp / (tp + fp) if tp + fp else float("nan"),
        "accuracy": (tp + tn) / y_true.size if y_true.size else float("nan"),
        "balanced_accuracy": (tp / n_ai + tn / n_real) / 2 if both else float("nan"),
        "roc_auc": float(roc_auc_score(y_true, scores)) if both else float("nan"),
        "recall_at_fpr_0.2_oracle": recall_at_fpr(y_true, scores, DETECTION.max_fpr),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "recall_per_class": {
            str(int(c)): float(np.mean(predicted[source_class == c] == 1))
            for c in np.unique(source_class) if c >= 1
        },
    }
