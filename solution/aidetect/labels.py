"""The one place that knows the label mapping."""
from __future__ import annotations

import numpy as np

REAL = 0
AI_GENERATED = 1
BINARY_NAMES = {REAL: "real", AI_GENERATED: "ai_generated"}

SOURCE_CLASSES = (0, 1, 2, 3, 4, 5)
SOURCE_NAMES = {0: "real", 1: "generator_1", 2: "generator_2", 3: "generator_3", 4: "generator_4", 5: "generator_5"}


def binary_label(source_class) -> np.ndarray:
    """0 for real photos (source_class 0), 1 for any generator (source_class >= 1)."""
    return (np.asarray(source_class) >= 1).astype(np.int64)


def is_known_source(source_class) -> np.ndarray:
    return np.isin(np.asarray(source_class), SOURCE_CLASSES)
