"""The robustness comparison runs (benchmarks/robustness.py) on the demo run: scored as predict scores, with targets."""
import json
from pathlib import Path

import numpy as np

import robustness


def test_robustness_bench_scores_families_as_predict_does_and_lists_its_targets(demo_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "artifacts").symlink_to(demo_run["artifacts"])
    out = tmp_path / "robust.json"
    assert robustness.main(["--data", str(demo_run["data_root"]), "--runs", str(run), str(run), "--out", str(out),
                            "--families", "sharpen", "--no-lofo", "--max-images", "24",
                            "--workdir", str(tmp_path / "work")]) == 0
    result = json.loads(out.read_text())
    assert result["schema_version"] == robustness.SCHEMA_VERSION
    assert {t["name"].split(" (")[0] for t in result["targets"]} >= {"Task 3 FPR on validation",
                                                                      "Task 3 recall on validation_augmented"}
    assert all({"name", "value", "goal", "met"} <= set(t) for t in result["targets"])
    # The clean condition is the validation split scored by the packaged detector at its own threshold:
    # the same labels as the predict stage would give those images.
    from aidetect.detector import load_detector
    from aidetect.paths import pointing_at

    images, source = robustness.load_split(demo_run["data_root"], "validation", 24)
    views = robustness.processed_views(images, [robustness.CLEAN], tmp_path / "work" / "cache")
    with pointing_at(demo_run["artifacts"], demo_run["data_root"] / "data"):
        detector = load_detector("task03")
    crops, corners = views[robustness.CLEAN]
    predicted = detector.threshold.predict(detector.score(crops, corners=corners))
    y = source >= 1
    clean = result["per_run"][0]["task03"]["conditions"]["clean@0.0"]
    assert clean["fpr"] == np.mean(predicted[~y]) and clean["recall"] == np.mean(predicted[y])
    assert set(result["summary"]["per_condition"]["task02"]) == {"clean@0.0", "sharpen@50", "sharpen@100", "sharpen@200"}
    for figure in result["figures"].values():
        assert (tmp_path / figure).stat().st_size > 10_000
