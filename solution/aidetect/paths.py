"""The one place that knows where data and artifacts live.

Paths resolve from the package's own folder (``solution/``), so the stages work
from any working directory. Tests and tools can redirect them with the
environment variables ``AMLS_DATA_DIR`` and ``AMLS_ARTIFACTS_DIR``.
"""
from __future__ import annotations

import os
from pathlib import Path

SOLUTION_DIR = Path(__file__).resolve().parents[1]

LABELLED_SPLITS = ("train", "calibration", "calibration_augmented", "validation", "validation_augmented")
PREDICT_SPLIT = "predict"
EVALUATION_SPLITS = ("validation", "validation_augmented")


def data_dir() -> Path:
    return Path(os.environ.get("AMLS_DATA_DIR", SOLUTION_DIR / "data"))


def artifacts_dir() -> Path:
    return Path(os.environ.get("AMLS_ARTIFACTS_DIR", SOLUTION_DIR / "artifacts"))


def split_dir(split: str) -> Path:
    return data_dir() / split


def clean_dir() -> Path:
    """Outputs of clean.py: exploration statistics, figures and the cleaning recipe."""
    return artifacts_dir() / "clean"


def prepared_dir() -> Path:
    """Outputs of prepare.py: model-ready crops per labelled split."""
    return artifacts_dir() / "prepared"


def task_dir(task: str) -> Path:
    """``task02`` (plain detector) or ``task03`` (robust detector)."""
    return artifacts_dir() / task


def predictions_path(task: str) -> Path:
    return task_dir(task) / "predictions.csv"
