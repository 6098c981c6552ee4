"""The same-rule comparison of Task 2 and Task 3 (benchmarks/same_calibration.py) on the demo run's artifacts.

One run of the benchmark (it scores every evaluated split with both detectors) on a copy of the demo run
whose Task-2 threshold was moved: Task 3 must reproduce its packaged threshold, Task 2 must be reported as not
reproducing the moved one, and its own rule must give back the threshold the demo run calibrated.
"""
import json
import shutil

import same_calibration

MOVED_BY = 0.5


def test_each_task_own_rule_gives_its_calibrated_threshold_and_a_moved_one_is_reported(demo_run, tmp_path,
                                                                                       monkeypatch):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(demo_run["artifacts"], artifacts)
    description = artifacts / "task02" / "detector.json"
    data = json.loads(description.read_text())
    calibrated = {"task02": data["threshold"]["value"],
                  "task03": json.loads((artifacts / "task03" / "detector.json").read_text())["threshold"]["value"]}
    data["threshold"]["value"] += MOVED_BY
    description.write_text(json.dumps(data))
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(artifacts))  # restored after the test
    out = tmp_path / "same.json"

    assert same_calibration.main(["--artifacts", str(artifacts), "--out", str(out)]) == 1  # task02 was moved

    result = json.loads(out.read_text())
    sets = json.loads((artifacts / "task03" / "detector.json").read_text())["calibration_sets"]
    # Task 3's rule includes the processed calibration reals when prepare had time for enough of them.
    task03_rule = same_calibration.UNDER_PROCESSING if any("/" in name for name in sets) \
        else "calibration + calibration_augmented"
    for task, own in (("task02", "calibration"), ("task03", task03_rule)):
        r = result["same_rule"][task]
        assert r["own_rule"] == own
        assert abs(r["rules"][own]["threshold"] - calibrated[task]) < 1e-6  # the rule gives the calibrated value
        # keeping the bound on one more set of reals can only raise the threshold
        thresholds = [r["rules"][rule]["threshold"] for rule in same_calibration.rules() if rule in r["rules"]]
        assert thresholds == sorted(thresholds) and len(thresholds) >= 2
        for rule in r["rules"]:
            assert set(r["rules"][rule]["splits"]) == set(same_calibration.EVALUATED)
    assert result["same_rule"]["task03"]["reproduces_packaged"]
    assert not result["same_rule"]["task02"]["reproduces_packaged"]
    assert abs(result["same_rule"]["task02"]["packaged_threshold"] - calibrated["task02"] - MOVED_BY) < 1e-6
    table = out.with_suffix(".md").read_text()
    assert "does NOT reproduce" in table
    rows = len(result["same_rule"]["task02"]["rules"])
    assert table.count("| task02 |") == rows and table.count("| task03 |") == rows
