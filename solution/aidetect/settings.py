"""The detector's settings: the operating point every stage works to, in one frozen record.

``DETECTION`` is logged when a stage starts and stored in each task's
metrics.json. ``AMLS_SEED`` seeds a whole run (prepare's crops and views, both
trainings): the benchmarks train several seeds of the same pipeline to report a
spread. The graders' container does not set it, so a graded run uses seed 0.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field


def run_seed() -> int:
    value = os.environ.get("AMLS_SEED", "0")
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"AMLS_SEED must be an integer, not {value!r}") from None


@dataclass(frozen=True)
class DetectionSettings:
    # The course's constraint: at most this false-positive rate on real photos ...
    max_fpr: float = 0.20
    # ... with probability at least 1 - delta over the draw of the calibration images.
    delta: float = 0.05
    # The network's share of the fused score. It cannot be fitted on the holdout, which also chose the
    # network's best epoch and so flatters it. Checked on a holdout carved from the proxy's train split
    # (``benchmarks/robust_training.py``, Task 3 with the broad processing policy): shares 0.2 / 0.3 / 0.5 gave
    # worst FPR over the never-trained perturbation families 0.114 / 0.203 / 0.418 and mean ROC AUC over all
    # families 0.858 / 0.865 / 0.868; the network alone is the part that reads strong noise as generated.
    fusion_weight: float = 0.3
    seed: int = field(default_factory=run_seed)


DETECTION = DetectionSettings()
