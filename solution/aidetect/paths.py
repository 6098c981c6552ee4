"""The one place that knows where data and artifacts live.

Paths resolve from the package's own folder (``solution/``), so the stages work
from any working directory. Tests and tools can redirect them with the
environment variables ``AMLS_DATA_DIR`` and ``AMLS_ARTIFACTS_DIR``.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

SOLUTION_DIR = Path(__file__).resolve().parents[1]

LABELLED_SPLITS = ("train", "calibration", "calibration_augmented", "validation", "validation_augmented")
# No model without train, no threshold without calibration; the other labelled splits only serve evaluation.
REQUIRED_SPLITS = ("train", "calibration")
PREDICT_SPLIT = "predict"
EVALUATION_SPLITS = ("validation", "validation_augmented")


def data_dir() -> Path:
    return Path(os.environ.get("AMLS_DATA_DIR", SOLUTION_DIR / "data"))


def artifacts_dir() -> Path:
    return Path(os.environ.get("AMLS_ARTIFACTS_DIR", SOLUTION_DIR / "artifacts"))


@contextlib.contextmanager
def environment(**values: str | None):
    """Set (or, for None, remove) these environment variables inside the ``with`` block, restored afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def pointing_at(artifacts: Path, data: Path):
    """Make every path function resolve to these folders inside the ``with`` block, restored afterwards."""
    with environment(AMLS_ARTIFACTS_DIR=str(Path(artifacts).resolve()), AMLS_DATA_DIR=str(Path(data).resolve())):
        yield


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


def shipped_model_dir(task: str) -> Path:
    """The trained detector shipped with the repository (``models/<task>``), which ``aidetect score`` uses."""
    return SOLUTION_DIR.parent / "models" / task
