"""Choosing the decision threshold with a guarantee on the false-positive rate.

The Neyman-Pearson umbrella rule (Tong, Feng and Li 2018): sort the scores of
the n real calibration images, t(1) <= ... <= t(n), take the smallest k with
P(Binomial(n, 1 - alpha) >= k) <= delta and call an image generated when its
score exceeds t(k). Then P(true FPR > alpha) <= delta, for any score.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

from .settings import DETECTION

log = logging.getLogger(__name__)


@dataclass
class Threshold:
    """A calibrated decision rule: ``score > value`` means the positive class."""

    value: float
    max_fpr: float
    confidence: float  # 1 - delta
    n_calibration: int
    order_statistic_k: int  # 1-based rank of the threshold among the sorted scores
    empirical_fpr: float  # share of calibration negatives above the threshold
    guaranteed: bool  # False when n is too small for the rule and the max was used

    def to_dict(self) -> dict:
        return asdict(self)

    def predict(self, scores) -> np.ndarray:
        return (np.asarray(scores) > self.value).astype(np.int64)


def min_calibration_size(max_fpr: float, delta: float) -> int:
    """Smallest n for which the rule exists: n >= log(delta) / log(1 - alpha)."""
    return math.ceil(math.log(delta) / math.log(1.0 - max_fpr))


def order_statistic_rank(n: int, max_fpr: float, delta: float) -> int | None:
    """Smallest k in 1..n with P(Bin(n, 1 - max_fpr) >= k) <= delta, or None."""
    from scipy.stats import binom  # here, not at the top: the predict stages never need scipy.stats (1 s to import)

    ks = np.arange(1, n + 1)
    # P(Bin >= k) = sf(k - 1)
    violation = binom.sf(ks - 1, n, 1.0 - max_fpr)
    feasible = np.nonzero(violation <= delta)[0]
    return int(ks[feasible[0]]) if feasible.size else None


_WARNED_TOO_FEW: set[tuple[int, float, float]] = set()


def calibrate_threshold(scores_negative, max_fpr: float = DETECTION.max_fpr,
                        delta: float = DETECTION.delta) -> Threshold:
    """Threshold on negative-class scores so that P(true FPR > max_fpr) <= delta.

    With too few negatives for the rule, falls back to the largest negative
    score (empirical FPR 0) and marks the result as not guaranteed.
    """
    scores = np.sort(np.asarray(scores_negative, dtype=np.float64))
    scores = scores[np.isfinite(scores)]
    n = scores.size
    if n == 0:
        raise ValueError("no negative calibration scores: cannot calibrate a threshold")
    k = order_statistic_rank(n, max_fpr, delta)
    guaranteed = k is not None
    if not guaranteed:
        # Once per process and setting: attribution calibrates dozens of score sets of the same size, and
        # the Threshold it returns says "not guaranteed" for each of them anyway.
        if (n, max_fpr, delta) not in _WARNED_TOO_FEW:
            _WARNED_TOO_FEW.add((n, max_fpr, delta))
            log.warning(
                "only %d negative calibration images; the order-statistic rule needs %d for FPR <= %.2f "
                "with confidence %.2f; using the largest score",
                n, min_calibration_size(max_fpr, delta), max_fpr, 1 - delta,
            )
        k = n
    value = float(scores[k - 1])
    return Threshold(
        value=value,
        max_fpr=max_fpr,
        confidence=1.0 - delta,
        n_calibration=int(n),
        order_statistic_k=int(k),
        empirical_fpr=float(np.mean(scores > value)),
        guaranteed=guaranteed,
    )


def calibrate_on_several(score_sets: dict[str, np.ndarray], max_fpr: float = DETECTION.max_fpr,
                         delta: float = DETECTION.delta) -> tuple[Threshold, dict]:
    """One threshold that keeps the bound on each set (e.g. clean and augmented).

    Each set gets its own order-statistic threshold at ``delta``; the largest
    wins, so the bound holds for each distribution separately.
    """
    per_set = {name: calibrate_threshold(s, max_fpr, delta) for name, s in score_sets.items()}
    name = max(per_set, key=lambda key: per_set[key].value)
    return per_set[name], {key: t.to_dict() for key, t in per_set.items()}
