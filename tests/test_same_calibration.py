"""The same-rule comparison of Task 2 and Task 3 (benchmarks/same_calibration.py) on the demo run's artifacts."""
import json
from pathlib import Path

import same_calibration


def test_each_task_own_rule_reproduces_its_packaged_threshold(demo_run, tmp_path, monkeypatch):
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(demo_run["artifacts"]))  # restored after the test
    out = tmp_path / "same.json"
    assert same_calibration.main(["--artifacts", str(demo_run["artifacts"]), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    sets = json.loads((demo_run["artifacts"] / "task03" / "detector.json").read_text())["calibration_sets"]
    # Task 3's rule includes the processed calibration reals when prepare had time for enough of them.
    task03_rule = same_calibration.UNDER_PROCESSING if any("/" in name for name in sets) \
        else "calibration + calibration_augmented"
    for task, own in (("task02", "calibration"), ("task03", task03_rule)):
        r = result["same_rule"][task]
        assert r["own_rule"] == own and r["reproduces_packaged"]
        assert abs(r["rules"][own]["threshold"] - r["packaged_threshold"]) < 1e-6
        # keeping the bound on one more set of reals can only raise the threshold
        thresholds = [r["rules"][rule]["threshold"] for rule in same_calibration.rules() if rule in r["rules"]]
        assert thresholds == sorted(thresholds) and len(thresholds) >= 2
        for rule in r["rules"]:
            assert set(r["rules"][rule]["splits"]) == set(same_calibration.EVALUATED)
    table = out.with_suffix(".md").read_text()
    rows = len(result["same_rule"]["task02"]["rules"])
    assert table.count("| task02 |") == rows and table.count("| task03 |") == rows


def test_a_threshold_that_is_not_the_packaged_one_is_reported(demo_run, tmp_path, monkeypatch):
    artifacts = tmp_path / "artifacts"
    import shutil

    shutil.copytree(demo_run["artifacts"], artifacts)
    description = artifacts / "task02" / "detector.json"
    data = json.loads(description.read_text())
    data["threshold"]["value"] += 0.5
    description.write_text(json.dumps(data))
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(artifacts))
    out = tmp_path / "same.json"
    assert same_calibration.main(["--artifacts", str(artifacts), "--out", str(out)]) == 1
    assert not json.loads(out.read_text())["same_rule"]["task02"]["reproduces_packaged"]
    assert "does NOT reproduce" in out.with_suffix(".md").read_text()
