"""Model files hold numbers only: a shared one runs no code when loaded, and scores as the model that wrote it."""
from __future__ import annotations

import builtins
import json
import pickle
from dataclasses import asdict

import numpy as np
import pytest
import torch

from aidetect.classical import ClassicalDetector
from aidetect.detector import FusedScorer, load_detector
from aidetect.features import FEATURE_NAMES
from aidetect.modelfiles import (CLASSICAL_FILE, CLASSICAL_FORMAT, NETWORK_FILE, UnsafeModelFile, load_checkpoint,
                                 load_classical, save_classical, save_network)
from aidetect.models import build_model
from aidetect.paths import environment
from aidetect.training import TrainConfig, load_model

SMALL_NET = TrainConfig(width=8)


def fitted_boosting(n: int = 300) -> tuple[ClassicalDetector, np.ndarray]:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
    labels = (features[:, 0] + 0.5 * features[:, 1] + rng.normal(scale=0.5, size=n) > 0).astype(int)
    features[::13, 2] = np.nan  # missing values take the side the tree learned for them
    model = ClassicalDetector("boosting")
    model.classifier.set_params(max_iter=30)
    return model.fit_features(features, labels), features


def small_network() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(SMALL_NET.arch, **SMALL_NET.model_kwargs()).eval()


class CodeOnLoad:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_the_classical_model_file_scores_as_the_fitted_model_to_the_bit(tmp_path):
    model, features = fitted_boosting()
    save_classical(tmp_path / CLASSICAL_FILE, model)

    loaded = load_classical(tmp_path / CLASSICAL_FILE)

    assert np.array_equal(loaded.classifier.predict_proba(features), model.classifier.predict_proba(features))
    assert np.array_equal(loaded.score_features(features), model.score_features(features))


def test_the_network_file_gives_the_same_logits(tmp_path):
    network = small_network()
    save_network(tmp_path / NETWORK_FILE, network.state_dict(), {"arch": SMALL_NET.arch, "config": asdict(SMALL_NET)})
    crops = torch.rand(4, 3, 64, 64)

    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / NETWORK_FILE)(crops), network(crops))


@pytest.mark.parametrize("name", [CLASSICAL_FILE, NETWORK_FILE, "checkpoint_last.pt"])
def test_a_model_file_that_would_run_code_is_refused_without_running_it(tmp_path, name):
    marker = tmp_path / "code-ran"
    path = tmp_path / name
    if name.endswith(".pt"):
        torch.save({"model": CodeOnLoad(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(CodeOnLoad(marker)))
    load = {CLASSICAL_FILE: load_classical, NETWORK_FILE: load_model, "checkpoint_last.pt": load_checkpoint}[name]

    with pytest.raises(UnsafeModelFile, match="refused"):
        load(path)
    assert not marker.exists()


def test_a_detector_that_names_a_pickle_is_refused_with_the_way_out(tmp_path):
    marker = tmp_path / "code-ran"
    folder = tmp_path / "artifacts" / "task02"
    folder.mkdir(parents=True)
    (folder / "fallback.pkl").write_bytes(pickle.dumps(CodeOnLoad(marker)))
    (folder / "detector.json").write_text(json.dumps({"kind": "classical", "weights": "fallback.pkl", "threshold": {
        "value": 0.0, "max_fpr": 0.2, "confidence": 0.95, "n_calibration": 0, "order_statistic_k": 0,
        "empirical_fpr": 0.0, "guaranteed": False}}))

    with environment(AMLS_ARTIFACTS_DIR=str(tmp_path / "artifacts")), \
            pytest.raises(UnsafeModelFile, match="pickle.*convert_artifacts.py"):
        load_detector("task02")
    assert not marker.exists()


@pytest.mark.parametrize("change, message", [
    (lambda f: f.update(format="sklearn.pickle/1"), "not a classical model file"),
    (lambda f: f.update(kind="os.system"), "unknown classical model kind"),
    (lambda f: f["trees"][0]["left"].__setitem__(0, 10**6), "child index is out of range"),
    (lambda f: f["trees"][0].update(value="__import__('os')"), "same, non-zero length|must be a list"),
])
def test_a_classical_model_file_not_as_written_is_refused(tmp_path, change, message):
    model, _ = fitted_boosting(60)
    save_classical(tmp_path / CLASSICAL_FILE, model)
    fields = json.loads((tmp_path / CLASSICAL_FILE).read_text())
    assert fields["format"] == CLASSICAL_FORMAT
    change(fields)
    (tmp_path / CLASSICAL_FILE).write_text(json.dumps(fields))

    with pytest.raises(UnsafeModelFile, match=message):
        load_classical(tmp_path / CLASSICAL_FILE)


def test_the_converter_turns_an_old_detector_into_safe_files_with_the_same_scores(tmp_path):
    from convert_artifacts import main as convert

    model, _ = fitted_boosting()
    network = small_network()
    folder = tmp_path / "artifacts" / "task02"
    folder.mkdir(parents=True)
    (folder / "fallback.pkl").write_bytes(pickle.dumps(model))
    torch.save({"model": network.state_dict(), "arch": SMALL_NET.arch, "config": asdict(SMALL_NET), "epoch": 3,
                "holdout_score": 0.5}, folder / "model_best.pt")
    stats = {"network_mean": 0.1, "network_std": 2.0, "classical_mean": -0.3, "classical_std": 1.5}
    threshold = {"value": 0.25, "max_fpr": 0.2, "confidence": 0.95, "n_calibration": 100, "order_statistic_k": 90,
                 "empirical_fpr": 0.1, "guaranteed": True}
    (folder / "detector.json").write_text(json.dumps({
        "kind": "fusion", "weights": "model_best.pt", "threshold": threshold,
        "fusion": {"weight": 0.3, "stats": stats, "classical": "fallback.pkl"}}))
    crops = np.random.default_rng(1).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    before = FusedScorer(network, model, 0.3, stats).score(crops)

    assert convert([str(tmp_path / "artifacts"), "--remove-old"]) == 0

    assert sorted(p.name for p in folder.iterdir()) == ["detector.json", CLASSICAL_FILE, NETWORK_FILE]
    with environment(AMLS_ARTIFACTS_DIR=str(tmp_path / "artifacts")):
        detector = load_detector("task02")
    assert np.array_equal(detector.score(crops), before)
