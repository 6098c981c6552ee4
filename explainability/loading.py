"""What the explanations read: a run's detectors and its validation crops.

Everything comes from ``solution/aidetect`` (the same loading, decoding and
scoring code the stages use), pointed at one run's artifacts and data folders.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
SOLUTION = REPO / "solution"
if str(SOLUTION) not in sys.path:
    sys.path.insert(0, str(SOLUTION))

from aidetect.cleaning import load_prepared  # noqa: E402
from aidetect.detector import Detector, load_detector  # noqa: E402
from aidetect.models import to_tensor  # noqa: E402
from aidetect.paths import clean_dir, prepared_dir  # noqa: E402

ENV_KEYS = ("AMLS_ARTIFACTS_DIR", "AMLS_DATA_DIR")


@contextlib.contextmanager
def pointing_at(artifacts: Path, data: Path):
    """Make the package's path functions resolve to this run's folders, restored afterwards."""
    saved = {key: os.environ.get(key) for key in ENV_KEYS}
    os.environ["AMLS_ARTIFACTS_DIR"] = str(Path(artifacts).resolve())
    os.environ["AMLS_DATA_DIR"] = str(Path(data).resolve())
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class TaskModel:
    """One task's active detector seen as a function of float pixels in [0, 1]."""

    task: str
    detector: Detector

    @property
    def kind(self) -> str:
        return self.detector.kind

    @property
    def threshold(self) -> float:
        return float(self.detector.threshold.value)

    @property
    def network(self) -> torch.nn.Module | None:
        """The TraceNet inside the detector (alone or in the fusion), or None for the classical fallback."""
        return self.detector.network

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) floats -> (B,) scores on the detector's own scale (its threshold applies).

        Differentiable through the network. The classical model sees the same
        pixels rounded to uint8, as in the pipeline; in the fusion its share is
        a constant for gradients, so gradient methods explain the network part.
        """
        def classical(model) -> torch.Tensor:
            crops = (x.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            return torch.from_numpy(model.score(crops)).float()

        if self.kind == "network":
            return self.network(x.contiguous(memory_format=torch.channels_last))
        if self.kind == "fusion":
            fused, stats = self.detector.scorer, self.detector.scorer.stats
            network = (self.network(x.contiguous(memory_format=torch.channels_last)) - stats["network_mean"]) / stats["network_std"]
            other = (classical(fused.classical) - stats["classical_mean"]) / stats["classical_std"]
            return fused.weight * network + (1 - fused.weight) * other
        return classical(self.detector.scorer)

    def score(self, crops: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Logits of uint8 crops (N, H, W, 3), exactly as the predict stages compute them."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                out.append(self.logits(to_tensor(np.array(crops[start : start + batch_size]))).numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    def predict(self, scores: np.ndarray) -> np.ndarray:
        return self.detector.threshold.predict(scores)


def load_task_model(task: str) -> TaskModel:
    """The active detector of ``artifacts/<task>`` (PipelineError when there is none)."""
    detector = load_detector(task)
    if detector.network is not None:
        # channels_last is 1.4x faster for this CNN on CPU and changes no number.
        detector.network.to(memory_format=torch.channels_last).eval()
        for parameter in detector.network.parameters():
            parameter.requires_grad_(False)
    return TaskModel(task, detector)


@dataclass
class ValidationSet:
    """The prepared crops of one labelled split, with their origin and file metadata."""

    split: str
    crops: np.ndarray  # (N, 256, 256, 3) uint8, memory-mapped
    source_class: np.ndarray  # (N,) int64
    index: pd.DataFrame | None  # (file, row) of each crop in data/<split>
    metadata: pd.DataFrame | None  # clean/metadata.parquet rows aligned with the crops

    def __len__(self) -> int:
        return len(self.source_class)


def load_validation(split: str = "validation") -> ValidationSet:
    prepared = load_prepared(split)
    index_path = prepared_dir() / split / "index.parquet"
    index = pd.read_parquet(index_path) if index_path.exists() else None
    metadata = None
    metadata_path = clean_dir() / "metadata.parquet"
    if index is not None and metadata_path.exists():
        table = pd.read_parquet(metadata_path)
        table = table[table["split"] == split].drop_duplicates(["file", "row"])
        aligned = index.merge(table, on=["file", "row"], how="left", validate="one_to_one")
        if len(aligned) == len(prepared) and aligned["source_class"].notna().all():
            metadata = aligned
    return ValidationSet(split, prepared.crops, prepared.source_class, index, metadata)
