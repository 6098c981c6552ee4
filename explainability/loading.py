"""What the explanations read: a run's detectors and its validation crops.

Everything comes from ``solution/aidetect`` (the same loading, decoding and
scoring code the stages use), pointed at one run's artifacts and data folders.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from aidetect.cleaning import load_prepared
from aidetect.detector import Detector, classical_scores_of, load_detector
from aidetect.features import CornerFeatures
from aidetect.models import to_tensor
from aidetect.paths import clean_dir, prepared_dir


@dataclass
class TaskModel:
    """One task's active detector, and the part of it that the attribution maps explain.

    Three kinds of detector exist (``aidetect.detector``): ``network`` (the
    TraceNet logit), ``fusion`` (a weighted sum of the standardised TraceNet
    logit and classical log-odds) and ``classical`` (the fallback alone).
    ``score`` is always the full detector score that meets the threshold. The
    maps explain ``explained``: the network logit when there is a network
    (gradients exist only there), else the classical log-odds. For a fusion,
    ``network_thresholds`` turns the detector's threshold into each image's
    threshold on the network logit (the classical part held fixed), so a map
    of the network logit can still be read against the decision.
    """

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
        if self.kind == "network":
            return self.detector.scorer
        return getattr(self.detector.scorer, "network", None) if self.kind == "fusion" else None

    @property
    def classical(self):
        if self.kind == "classical":
            return self.detector.scorer
        return getattr(self.detector.scorer, "classical", None) if self.kind == "fusion" else None

    def explained(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) floats in [0, 1] -> (B,) explained scores; differentiable when a network exists.

        The classical model sees the same pixels rounded to uint8, as in the pipeline.
        """
        if self.network is not None:
            return self.network(x.contiguous(memory_format=torch.channels_last))
        crops = (x.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return torch.from_numpy(self.classical.score(crops)).float()

    def explained_scores(self, crops: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """``explained`` on uint8 crops (N, H, W, 3), in batches."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                out.append(self.explained(to_tensor(np.array(crops[start : start + batch_size]))).numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    def combine(self, explained_scores: np.ndarray, crops: np.ndarray | None = None,
                classical_scores: np.ndarray | None = None) -> np.ndarray:
        """The full detector score from the explained part (and, for a fusion, the classical part)."""
        if self.kind != "fusion":
            return explained_scores
        if classical_scores is None:
            classical_scores = self.classical.score(np.asarray(crops))
        return self.detector.scorer.combine(explained_scores, classical_scores)

    def classical_image_scores(self, data: "ValidationSet") -> np.ndarray:
        """The classical part's score of each image as the detector computes it (over its corner crops when
        the detector was calibrated that way); the perturbation analyses score single crops instead."""
        corners = data.corners if self.detector.scores_corner_crops else None
        return classical_scores_of(self.classical, np.asarray(data.crops), corners)

    def score(self, crops: np.ndarray) -> np.ndarray:
        """The full detector score of uint8 crops (each crop one image), the number the threshold applies to."""
        return self.combine(self.explained_scores(crops), crops)

    def network_thresholds(self, n: int, classical_scores: np.ndarray | None = None) -> np.ndarray:
        """Per image, the network logit at which the detector's decision flips."""
        if self.kind != "fusion":
            return np.full(n, self.threshold)
        scorer, stats = self.detector.scorer, self.detector.scorer.stats
        z_classical = (classical_scores - stats["classical_mean"]) / stats["classical_std"]
        z_needed = (self.threshold - (1 - scorer.weight) * z_classical) / scorer.weight
        return stats["network_mean"] + stats["network_std"] * z_needed

    def predict(self, scores: np.ndarray) -> np.ndarray:
        return self.detector.threshold.predict(scores)


def load_task_model(task: str) -> TaskModel:
    """The active detector of ``artifacts/<task>`` (PipelineError when there is none)."""
    model = TaskModel(task, load_detector(task))
    if model.network is not None:
        # channels_last is 1.4x faster for this CNN on CPU and changes no number.
        model.network.to(memory_format=torch.channels_last).eval()
        for parameter in model.network.parameters():
            parameter.requires_grad_(False)
    return model


@dataclass
class ValidationSet:
    """The prepared crops of one labelled split, with their origin and file metadata."""

    split: str
    crops: np.ndarray  # (N, 256, 256, 3) uint8; a CropFile (rows read on demand) when loaded from disk
    source_class: np.ndarray  # (N,) int64
    index: pd.DataFrame | None  # (file, row) of each crop in data/<split>
    metadata: pd.DataFrame | None  # clean/metadata.parquet rows aligned with the crops
    corners: CornerFeatures | None = None  # features of each image's corner crops (prepare.py)

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
    return ValidationSet(split, prepared.crops, prepared.source_class, index, metadata, prepared.corners)
