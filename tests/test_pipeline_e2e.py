"""The six stages end to end on the demo data, the way graders run them.

The shared ``demo_run`` fixture runs them through the harness: solution/ copied
into a fresh workspace, data mounted read-only, no network, each stage under
its (scaled) timeout.
"""
import csv
import json
import os

import pandas as pd
import pytest

from aidetect.detector import FUSION_WEIGHT

STAGES = ["clean", "prepare", "train", "predict", "train_augmented", "predict_augmented"]


def test_every_stage_succeeds_within_its_timeout(demo_run):
    assert [s["name"] for s in demo_run["stages"]] == STAGES
    for stage in demo_run["stages"]:
        assert stage["exit_code"] == 0, f"{stage['name']} failed:\n" + "\n".join(stage["tail"])
        assert not stage["timed_out"], f"{stage['name']} hit its timeout of {stage['timeout_seconds']}s"
        assert stage["wall_seconds"] < stage["timeout_seconds"]


def test_runs_isolated_with_read_only_data(demo_run):
    if demo_run["isolation"] == "none" and os.geteuid() != 0:
        pytest.skip("an ordinary user on a machine without unprivileged user namespaces cannot unshare "
                    "mount and network namespaces: " + "; ".join(demo_run["warnings"]))
    assert demo_run["isolation"].startswith("unshare"), demo_run.get("warnings")


@pytest.mark.parametrize("task", ["task02", "task03"])
def test_predictions_are_complete_and_valid(demo_run, task):
    entry = demo_run["tasks"][task]
    assert entry["valid"], entry["problems"]
    expected = set(pd.read_parquet(demo_run["data_root"] / "data" / "predict")["row_id"].tolist())
    with open(demo_run["artifacts"] / task / "predictions.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["row_id", "predicted_label"]
    ids = [int(r[0]) for r in rows[1:]]
    assert sorted(ids) == sorted(expected)
    assert {r[1] for r in rows[1:]} <= {"0", "1"}


@pytest.mark.parametrize("task", ["task02", "task03"])
def test_network_is_trained_and_calibrated(demo_run, task):
    metrics = json.loads((demo_run["artifacts"] / task / "metrics.json").read_text())
    # The network was trained and scored, and the packaged detector fuses it with the classical model.
    assert metrics["fit"]["epochs_run"] >= 1 and "network_splits" in metrics and "classical_splits" in metrics
    assert metrics["detector"] == "fusion" and metrics["fusion"]["weight"] == FUSION_WEIGHT
    # The classical part scored the calibration images on their corner crops, as predict does.
    assert metrics["fusion"]["classical_crops"] == "corners"
    assert json.loads((demo_run["artifacts"] / task / "detector.json").read_text())["classical_crops"] == "corners"
    threshold = metrics["threshold"]
    assert threshold["guaranteed"] and threshold["max_fpr"] == 0.2 and threshold["confidence"] == 0.95
    # The threshold comes from the calibration images, so their empirical FPR is below the cap.
    assert metrics["splits"]["calibration"]["fpr"] <= 0.2
    # Checked independently on validation: the calibrated FPR holds there too.
    assert metrics["splits"]["validation"]["fpr"] <= 0.2
    # The detector has learned something on the demo's generator fingerprints.
    assert metrics["splits"]["validation"]["roc_auc"] > 0.6


def test_task03_threshold_keeps_the_bound_on_calibration_reals_under_processing(demo_run):
    """Task 3's promise is an FPR that survives processing: its threshold is the largest of the per-set
    thresholds over the calibration splits and the calibration reals processed by each covered family."""
    from aidetect.calibration import min_calibration_size
    from aidetect.cleaning import SHIFT_DIR

    metrics = json.loads((demo_run["artifacts"] / "task03" / "metrics.json").read_text())
    sets = json.loads((demo_run["artifacts"] / "task03" / "detector.json").read_text())["calibration_sets"]
    processed = {name: t for name, t in sets.items() if name.startswith(SHIFT_DIR + "/")}
    made = json.loads((demo_run["artifacts"] / "prepared" / SHIFT_DIR / "jpeg" / "info.json").read_text())
    if made["n"] >= min_calibration_size(0.2, 0.05):
        assert processed, "prepare made calibration reals under processing, but Task 3 did not calibrate on them"
    else:  # a loaded machine left prepare no time for enough of them: Task 3 must say so, not use a few
        assert not processed and made["time_bound_decisions"]
        assert any(d["decision"].startswith("calibration reals under processing")
                   for d in metrics["time_bound_decisions"])
    assert metrics["threshold"]["value"] >= max(t["value"] for t in sets.values()) - 1e-12
    assert set(metrics["calibration_under_processing"]) == {n.split("/", 1)[1] for n in processed}
    assert {"calibration", "calibration_augmented"} <= set(sets)
    for family, result in metrics["calibration_under_processing"].items():
        assert result["fpr"] <= 0.2, family
    task02 = json.loads((demo_run["artifacts"] / "task02" / "detector.json").read_text())["calibration_sets"]
    assert set(task02) == {"calibration"}  # the plain detector calibrates on clean images only


def test_train_augmented_says_it_starts_from_the_given_weights(demo_run):
    """The log line only; that the weights are Task 2's is checked by
    tests/test_promises.py::test_task03_training_starts_from_the_task02_best_weights."""
    log = (demo_run["out_dir"] / "logs" / "train_augmented.log").read_text()
    assert "starting tracenet from the given weights" in log


def test_the_predict_split_fpr_is_compatible_with_the_cap_and_memory_stays_below_4_gb(demo_run):
    """The harness scores the labelled demo predict split: its 40 real images are too few to show FPR <= 0.20,
    but a one-sided 95 % Clopper-Pearson lower bound above 0.20 would show the cap broken."""
    from aidetect.metrics import clopper_pearson

    for task in ("task02", "task03"):
        scores = demo_run["tasks"][task]["scores"]
        assert scores["n"] == 80 and scores["n_unscored_missing_prediction"] == 0
        matrix = scores["confusion_matrix"]
        reals = matrix["fp"] + matrix["tn"]
        assert reals == 40 and scores["fpr"] == pytest.approx(matrix["fp"] / reals)
        lower = clopper_pearson(matrix["fp"], reals, 0.90)[0]
        assert lower <= 0.2, f"{task}: {matrix['fp']} of {reals} real predict images called generated"
        assert 0.0 <= scores["recall_ai"] <= 1.0
    for stage in demo_run["stages"]:
        assert stage["peak_rss_mb"] < 4096


def test_predict_scores_an_image_as_its_calibration_twin_was_scored(demo_run, monkeypatch):
    """The predict stages rebuild, from the raw bytes, the centre crop and corner features prepare stored."""
    import numpy as np

    from aidetect.cleaning import load_prepared
    from aidetect.detector import _decode_for_predict, load_detector
    from aidetect.features import CornerFeatures

    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(demo_run["artifacts"]))
    monkeypatch.setenv("AMLS_DATA_DIR", str(demo_run["data_root"] / "data"))
    prepared = load_prepared("calibration")
    assert prepared.corners is not None and len(prepared.corners) == len(prepared)
    assert not (demo_run["artifacts"] / "prepared" / "train" / "corner_offsets.npy").exists()
    raw = pd.read_parquet(demo_run["data_root"] / "data" / "calibration")
    decoded = [_decode_for_predict((i, data, True))[1] for i, data in enumerate(raw["image"][:12])]
    # The first kept images of the split, in order (the demo data has nothing to drop there).
    assert all(np.array_equal(crop, prepared.crops[i]) for i, (crop, _) in enumerate(decoded))
    detector = load_detector("task03")
    from_predict = detector.score(np.stack([d[0] for d in decoded]), corners=CornerFeatures.stack([d[1] for d in decoded]))
    rows = prepared.corners.offsets[12]
    stored = CornerFeatures(prepared.corners.features[:rows], prepared.corners.offsets[:13])
    from_prepare = detector.score(np.asarray(prepared.crops[:12]), corners=stored)
    assert np.allclose(from_predict, from_prepare)
    # Without corners the classical model scores the centre crop alone: a different number for larger images.
    assert not np.allclose(detector.score(np.asarray(prepared.crops[:12])), from_prepare)
