"""Convert an artifacts folder written in the old model formats into the safe ones (``aidetect.modelfiles``).

Old runs saved the classical model as a pickle (``fallback.pkl``) and the
network as a torch pickle (``model_best.pt``). This tool reads them once, on
the user's word that the folder is trusted (a pickle can run code when
loaded), writes ``fallback.json`` and ``model_best.safetensors`` beside them,
points ``detector.json`` at the new files, and checks that the new files give
the same scores as the old ones: the classical model's probabilities on
random feature rows and the network's logits on random crops, to the bit.

    python tools/convert_artifacts.py ARTIFACTS_DIR [--remove-old]

Each task folder of ARTIFACTS_DIR holding a ``detector.json`` is converted; a
folder already in the new formats is left as it is.
"""
from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np
import torch

from aidetect.dataio import read_json, write_json
from aidetect.features import FEATURE_NAMES
from aidetect.modelfiles import (CHECKPOINT_FILE, CLASSICAL_FILE, NETWORK_FILE, load_checkpoint, load_classical,
                                 save_classical, save_network)
from aidetect.training import load_model

OLD_CLASSICAL, OLD_NETWORK = "fallback.pkl", "model_best.pt"


def convert_classical(old: Path, new: Path) -> float:
    """Write ``new`` from the pickled model ``old``; returns the largest score difference on random rows (0)."""
    with open(old, "rb") as handle:
        model = pickle.load(handle)  # trusted by the user of this tool: see the module's docstring
    save_classical(new, model)
    rows = np.random.default_rng(0).normal(size=(2000, len(FEATURE_NAMES))).astype(np.float32)
    rows[::17, ::5] = np.nan
    return float(np.max(np.abs(model.score_features(rows) - load_classical(new).score_features(rows))))


def convert_network(old: Path, new: Path) -> float:
    """Write ``new`` from the torch checkpoint ``old``; returns the largest logit difference on random crops (0)."""
    checkpoint = torch.load(old, weights_only=True, map_location="cpu")
    metadata = {key: value for key, value in checkpoint.items() if key != "model"}
    save_network(new, checkpoint["model"], metadata)
    from aidetect.models import build_model
    from aidetect.training import TrainConfig

    config = TrainConfig(**{**checkpoint["config"], "exclude_families": tuple(checkpoint["config"]
                                                                              .get("exclude_families", ()))})
    before = build_model(checkpoint["arch"], **config.model_kwargs())
    before.load_state_dict(checkpoint["model"])
    after = load_model(new)
    crops = torch.from_numpy(np.random.default_rng(0).random((8, 3, 96, 96), dtype=np.float32))
    with torch.no_grad():
        return float((before.eval()(crops) - after(crops)).abs().max())


def convert_task(folder: Path, remove_old: bool) -> list[str]:
    """Convert one task folder; returns what was done, one line each."""
    description = read_json(folder / "detector.json")
    named = {description["weights"], description.get("fusion", {}).get("classical")}
    if not named & {OLD_CLASSICAL, OLD_NETWORK}:
        return ["already in the safe formats: left as it is"]
    done = []
    if (folder / OLD_CLASSICAL).exists():
        diff = convert_classical(folder / OLD_CLASSICAL, folder / CLASSICAL_FILE)
        done.append(f"{OLD_CLASSICAL} -> {CLASSICAL_FILE}: largest score difference {diff:g}")
        if diff != 0:
            raise SystemExit(f"{folder}: the converted classical model scores differently ({diff:g})")
    if (folder / OLD_NETWORK).exists():
        diff = convert_network(folder / OLD_NETWORK, folder / NETWORK_FILE)
        done.append(f"{OLD_NETWORK} -> {NETWORK_FILE}: largest logit difference {diff:g}")
        if diff != 0:
            raise SystemExit(f"{folder}: the converted network scores differently ({diff:g})")
    if (folder / CHECKPOINT_FILE).exists():
        try:
            load_checkpoint(folder / CHECKPOINT_FILE)
            done.append(f"{CHECKPOINT_FILE} reads as plain tensors and values: kept")
        except Exception as exc:
            done.append(f"{CHECKPOINT_FILE} is not plain tensors and values ({exc}): a later training starts afresh")
    renamed = {OLD_CLASSICAL: CLASSICAL_FILE, OLD_NETWORK: NETWORK_FILE}
    description["weights"] = renamed.get(description["weights"], description["weights"])
    if "fusion" in description:
        description["fusion"]["classical"] = renamed.get(description["fusion"]["classical"],
                                                         description["fusion"]["classical"])
    write_json(folder / "detector.json", description)
    if remove_old:
        for name in renamed:
            (folder / name).unlink(missing_ok=True)
        done.append(f"removed {', '.join(renamed)}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", type=Path, help="an artifacts folder (its task folders hold detector.json)")
    parser.add_argument("--remove-old", action="store_true", help="delete the pickle files once converted")
    args = parser.parse_args(argv)
    folders = sorted(path.parent for path in args.artifacts.glob("*/detector.json"))
    if not folders:
        print(f"no task folder with a detector.json in {args.artifacts}", file=sys.stderr)
        return 2
    for folder in folders:
        for line in convert_task(folder, args.remove_old):
            print(f"{folder.name}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
