"""Model files that hold numbers only, so that loading a shared one cannot run code.

- a network's weights: ``safetensors`` (tensors and a string table; the
  architecture and its settings go into that table as JSON);
- the classical model: JSON of its fitted trees (``ClassicalDetector.to_dict``);
- a training checkpoint (``checkpoint_last.pt``, for resume): a torch file of
  tensors, numbers, strings, lists and dicts, read with ``weights_only=True``,
  whose unpickler builds no other object.

Python's ``pickle`` (and ``torch.load(weights_only=False)``) can run any code
named in the file, so nothing here reads it; ``tools/convert_artifacts.py``
turns an artifacts folder written in that older way into these formats.
"""
from __future__ import annotations

import json
from pathlib import Path

from .dataio import atomic_path
from .errors import PipelineError

NETWORK_FILE = "model_best.safetensors"
CLASSICAL_FILE = "fallback.json"
CHECKPOINT_FILE = "checkpoint_last.pt"
CLASSICAL_FORMAT = "aidetect.classical/1"
PICKLE_SUFFIXES = (".pkl", ".pickle")
CONVERT_HINT = "convert the folder with tools/convert_artifacts.py"


class UnsafeModelFile(PipelineError):
    """A model file that is not in a format that holds numbers only, or does not hold what it should."""


def save_network(path: Path, state_dict: dict, metadata: dict) -> None:
    """The network's tensors, and ``metadata`` (JSON-serialisable: architecture, config, epoch) beside them."""
    from safetensors.torch import save

    tensors = {name: tensor.detach().contiguous() for name, tensor in state_dict.items()}
    with atomic_path(path) as tmp:
        tmp.write_bytes(save(tensors, metadata={"aidetect": json.dumps(metadata)}))


def load_network_file(path: Path) -> tuple[dict, dict]:
    """(state dict, metadata) of a network file written by ``save_network``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        raise UnsafeModelFile(f"{path} is not a .safetensors file: network weights are read only from "
                              f"safetensors files ({CONVERT_HINT})")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {}).get("aidetect", "null"))
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnsafeModelFile(f"{path} is not a readable safetensors file ({exc}): refused") from None
    if not isinstance(metadata, dict):
        raise UnsafeModelFile(f"{path} has no aidetect metadata (architecture and settings): refused")
    return state_dict, metadata


def save_classical(path: Path, model) -> None:
    with atomic_path(path) as tmp:  # compact: the trees are data, not for reading
        tmp.write_text(json.dumps({"format": CLASSICAL_FORMAT, **model.to_dict()}, separators=(",", ":")))


def load_classical(path: Path):
    """The ``ClassicalDetector`` of a JSON file written by ``save_classical``."""
    from .classical import ClassicalDetector

    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise UnsafeModelFile(f"{path} is a pickle file, which can run code when it is loaded: refused "
                              f"({CONVERT_HINT} if you trust it)")
    try:
        fields = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as exc:
        raise UnsafeModelFile(f"{path} is not a JSON model file ({type(exc).__name__}): refused") from None
    if not isinstance(fields, dict) or fields.get("format") != CLASSICAL_FORMAT:
        found = fields.get("format") if isinstance(fields, dict) else type(fields).__name__
        raise UnsafeModelFile(f"{path} is not a classical model file of format {CLASSICAL_FORMAT!r} "
                              f"(found {found!r}): refused")
    try:
        return ClassicalDetector.from_dict({k: v for k, v in fields.items() if k != "format"})
    except ValueError as exc:
        raise UnsafeModelFile(f"{path}: {exc}: refused") from None


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint, read by torch's restricted unpickler (tensors and plain Python values only)."""
    import pickle

    import torch

    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeModelFile(f"{path} holds objects other than tensors and plain values ({first}): "
                              "refused") from None
    if not isinstance(checkpoint, dict):
        raise UnsafeModelFile(f"{path} is not a checkpoint dict: refused")
    return checkpoint
