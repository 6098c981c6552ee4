"""Attribution and open set (``aidetect/attribution.py``, ``attribute.py``).

The stage test runs ``attribute.py`` on a copy of the shared demo run's artifacts. The
demo run may end without a network (its training budget is seconds); the fixture then
trains a two-epoch one, because attribution needs an embedding and the stage is meant
to run after a trained network exists.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta, binom

REPO = Path(__file__).resolve().parents[1]
SOLUTION = REPO / "solution"

from aidetect.attribution import (  # noqa: E402  (conftest puts solution/ on the path)
    CLASSIFIERS,
    FINGERPRINT_COLUMNS,
    OUTLIER,
    OUTLIER_DELTA,
    OUTLIER_MAX_FPR,
    OUTLIER_SCORES,
    CentroidClassifier,
    Embedded,
    attribution_score,
    calibrate_outlier_threshold,
    evaluate_held_out,
    fit_open_set,
    rate_bound,
    select_outlier_score,
)
from aidetect.calibration import calibrate_threshold  # noqa: E402
from aidetect.modelfiles import NETWORK_FILE  # noqa: E402
from aidetect.paths import pointing_at  # noqa: E402

ALLOWED_LABELS = {"real", "generator_1", "generator_2", "generator_3", "generator_4", "generator_5", "outlier"}


# --- the metric and the pieces, on hand-made numbers -----------------------------------------


def test_attribution_score_counts_outliers_as_misses_and_unknowns_as_false_positives():
    true = np.array([0, 0, 1, 1, 2, 2, 9, 9])  # 9: a source outside the known classes
    labels = np.array([0, OUTLIER, 1, 1, 1, 2, OUTLIER, 2])
    result = attribution_score(true, labels, known=(0, 1, 2), w=1.0)
    per = result["per_class"]
    assert per["0"]["tpr"] == 0.5 and per["0"]["fpr"] == 0.0
    assert per["1"]["tpr"] == 1.0 and per["1"]["fpr"] == pytest.approx(1 / 6)
    assert per["2"]["tpr"] == 0.5 and per["2"]["fpr"] == pytest.approx(1 / 6)  # the unknown called 2
    assert per["1"]["score"] == pytest.approx(1.0 / (1 + 1 / 6))
    assert result["macro_score"] == pytest.approx(np.mean([v["score"] for v in per.values()]))
    assert result["outlier_rate_known"] == pytest.approx(1 / 6)
    assert result["outlier_rate_unknown"] == 0.5
    assert attribution_score(true, labels, (0, 1, 2), w=5.0)["macro_score"] < result["macro_score"]


def test_nearest_centroid_classifies_separated_clusters_and_rates_them_distinguishable():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, size=(3, 8))
    labels = np.repeat([0, 3, 5], 40)
    embeddings = centres[np.repeat([0, 1, 2], 40)] + rng.normal(0, 1, size=(120, 8))
    clf = CentroidClassifier().fit(embeddings, labels)
    assert clf.classes.tolist() == [0, 3, 5]
    assert np.mean(clf.predict(embeddings) == labels) == 1.0
    ratios = clf.distinguishability(embeddings, labels)
    assert all(v["ratio"] > 3 for v in ratios["per_class"].values())
    far = centres.mean(axis=0, keepdims=True) + 100.0
    assert clf.outlier_score(far)[0] > clf.outlier_score(embeddings).max()


def test_rate_bound_of_the_fallback_and_of_the_rule():
    few = calibrate_threshold(np.arange(183.0), OUTLIER_MAX_FPR, 0.05)  # fewer than the 299 the rule needs
    assert not few.guaranteed and few.order_statistic_k == 183
    assert rate_bound(few) == pytest.approx(1 - 0.05 ** (1 / 183))
    enough = calibrate_threshold(np.arange(1000.0), OUTLIER_MAX_FPR, 0.05)
    assert enough.guaranteed and rate_bound(enough) <= OUTLIER_MAX_FPR + 1e-9


def test_outlier_threshold_keeps_its_cap_on_fresh_known_scores():
    """The guarantee, checked on a distribution we can sample: n = 400 >= 299, so it is guaranteed."""
    rng = np.random.default_rng(1)
    threshold, summary = calibrate_outlier_threshold({"a": rng.gamma(2.0, size=400), "b": rng.gamma(2.0, size=400)})
    assert summary["guaranteed_all_sets"]
    fresh = rng.gamma(2.0, size=200_000)
    assert np.mean(threshold.predict(fresh)) <= OUTLIER_MAX_FPR


# --- the stage on the demo run ----------------------------------------------------------------


def _ensure_network(artifacts: Path) -> str:
    """Make sure task02 or task03 holds a network; train two epochs if the demo run had no time to."""
    from aidetect.attribution import load_network
    from aidetect.budget import Deadline
    from aidetect.calibration import calibrate_threshold as calibrate
    from aidetect.cleaning import load_prepared
    from aidetect.detector import (
        DELTA,
        MAX_FPR,
        TASK02_CONFIG,
        save_detector_description,
    )
    from aidetect.paths import task_dir
    from aidetect.training import fit, score_crops, with_overrides

    try:
        return load_network()[0]
    except Exception:
        pass
    config = with_overrides(TASK02_CONFIG, epochs=2, patience=2)
    model, result = fit(config, load_prepared("train"), task_dir("task02"), Deadline(90, start=time.monotonic()), 5.0)
    calibration = load_prepared("calibration")
    real = np.asarray(calibration.crops[calibration.source_class == 0])
    threshold = calibrate(score_crops(model, real), MAX_FPR, DELTA)
    save_detector_description("task02", "network", NETWORK_FILE, threshold, {"arch": config.arch})
    return load_network()[0]


@pytest.fixture(scope="module")
def attribution_run(demo_run, demo_root, tmp_path_factory):
    """attribute.py on a copy of the demo run's artifacts: (artifacts folder, process, model task)."""
    artifacts = tmp_path_factory.mktemp("attribution") / "artifacts"
    shutil.copytree(demo_run["artifacts"], artifacts)
    env = {**os.environ, "AMLS_ARTIFACTS_DIR": str(artifacts), "AMLS_DATA_DIR": str(demo_root / "data"),
           "MPLBACKEND": "Agg"}
    with pointing_at(artifacts, demo_root / "data"):
        task = _ensure_network(artifacts)
    proc = subprocess.run([sys.executable, "attribute.py", "--timeout_seconds", "240"], cwd=SOLUTION, env=env,
                          capture_output=True, text=True, timeout=300)
    return artifacts, proc, task


def test_attribute_stage_writes_one_valid_label_per_predict_row(attribution_run, demo_run, demo_root):
    artifacts, proc, _ = attribution_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    predictions = pd.read_csv(artifacts / "attribution" / "predictions.csv")
    assert list(predictions.columns) == ["row_id", "predicted_source"]
    expected = pd.read_parquet(demo_root / "data" / "predict", columns=["row_id"])["row_id"]
    assert sorted(predictions["row_id"].tolist()) == sorted(expected.tolist())
    assert predictions["row_id"].is_unique
    assert set(predictions["predicted_source"]) <= ALLOWED_LABELS

    metrics = json.loads((artifacts / "attribution" / "metrics.json").read_text())
    deployed = metrics["deployed"]["classifier"]
    for split in ("validation", "validation_augmented"):
        result = metrics["splits"][split]
        for clf in CLASSIFIERS:
            assert np.asarray(result["closed_set"][clf]["confusion"]).shape == (6, 6)
            assert 0.0 <= result["closed_set"][clf]["accuracy"] <= 1.0
        assert set(result["open_set"][deployed]) == set(OUTLIER_SCORES)
        assert (artifacts / "attribution" / "figures" / f"confusion_{split}.png").stat().st_size > 0
    assert set(metrics["calibration"]) == set(OUTLIER_SCORES)
    assert metrics["deployed"]["outlier_score"] == metrics["outlier_score_selection"]["chosen"]
    assert metrics["predict"]["n_rows"] == len(expected)
    # The six graded outputs are untouched.
    for task in ("task02", "task03"):
        original = demo_run["artifacts"] / task / "predictions.csv"
        if original.exists():
            assert (artifacts / task / "predictions.csv").read_bytes() == original.read_bytes()


def test_outlier_cap_holds_on_exchangeable_held_out_known_images(attribution_run, monkeypatch):
    """Known generated images called outliers stay within what the calibration rule promises.

    The promise needs held-out images exchangeable with the calibration ones. The demo's
    validation images come from other photos than its calibration images (a group-aware
    split), so the test holds out a random half of the known generated calibration images
    instead, scored by the stage's network with the deployed score fitted on train, and
    calibrates on the other half. Under exchangeability the true rate p of the k-th of n
    sorted scores is Beta(n - k + 1, k) and the held-out count is Binomial(m, p): we fail
    only beyond the 99.9 % binomial quantile at the 99.9 % bound on p, so a correct rule
    fails with probability below 0.2 %, while a threshold far above the cap fails.
    """
    from aidetect.attribution import embed_with_fingerprint, load_network, make_scorer
    from aidetect.cleaning import load_prepared

    artifacts, proc, _ = attribution_run
    assert proc.returncode == 0
    metrics = json.loads((artifacts / "attribution" / "metrics.json").read_text())
    for cal in metrics["calibration"].values():
        for t in cal["per_set"].values():  # on its own calibration images the rule never exceeds the cap
            assert t["empirical_rate_at_final"] <= OUTLIER_MAX_FPR

    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(artifacts))
    _, model, _ = load_network()
    train, calibration = load_prepared("train"), load_prepared("calibration")
    train_emb = embed_with_fingerprint(model, train.crops, desc=None)
    generated = np.flatnonzero(calibration.source_class != 0)
    cal_emb = embed_with_fingerprint(model, calibration.crops, desc=None, index=generated)
    scores = make_scorer(metrics["deployed"]["outlier_score"]).fit(train_emb, train.source_class).score(cal_emb)
    order = np.random.default_rng(0).permutation(len(generated))
    fit_half, held_half = order[: len(order) // 2], order[len(order) // 2 :]
    threshold = calibrate_threshold(scores[fit_half], OUTLIER_MAX_FPR, OUTLIER_DELTA)
    n, k, m = threshold.n_calibration, threshold.order_statistic_k, len(held_half)
    p_bound = beta.ppf(0.999, n - k + 1, k)
    rejected = int(threshold.predict(scores[held_half]).sum())
    assert rejected <= binom.ppf(0.999, m, p_bound), (rejected, m, p_bound)
    loose = calibrate_threshold(scores[fit_half], 0.7, 0.5)  # the check has power: a 70 % threshold is caught
    assert int(loose.predict(scores[held_half]).sum()) > binom.ppf(0.999, m, p_bound)


def test_leave_one_generator_out_reduced_run_reports_its_fields(attribution_run, tmp_path, monkeypatch):
    artifacts, _, _ = attribution_run
    from aidetect.attribution import leave_one_generator_out, logo_config
    from aidetect.budget import Deadline
    from aidetect.cleaning import load_prepared
    from aidetect.detector import TASK02_CONFIG

    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(artifacts))
    evaluation = {"validation": load_prepared("validation")}
    result = leave_one_generator_out(3, logo_config(TASK02_CONFIG, epochs=2), load_prepared("train"),
                                     {"calibration": load_prepared("calibration")}, evaluation, tmp_path / "logo",
                                     Deadline(60, start=time.monotonic()))
    assert result["held_out"] == 3 and 3 not in result["known"]
    assert 1 <= result["fit"]["epochs_run"] <= 2
    assert result["binary_threshold"]["max_fpr"] == 0.2
    held = result["splits"]["validation"]["held_out"]
    assert held["n"] > 0 and 0.0 <= held["flagged_generated"] <= 1.0
    assert set(held["rejected_outlier"]) == set(OUTLIER_SCORES)
    assert all(0.0 <= v <= 1.0 for v in held["rejected_outlier"].values())
    assert result["deployed"]["outlier_score"] in OUTLIER_SCORES
    assert set(result["splits"]["validation"]["known_outlier_rate"]) == set(OUTLIER_SCORES)
    assert "3" not in result["outlier_score_selection"]["pseudo_unknowns"]


# --- the choice of score never sees the held-out generator -------------------------------------


def _synthetic(n_per_class: int, seed: int, shift: float = 4.0) -> tuple[Embedded, np.ndarray]:
    """Six classes of network outputs and fingerprints, each class around its own centre."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(6), n_per_class)
    centres = np.random.default_rng(99).normal(0, shift, size=(6, 16))
    fp_centres = np.random.default_rng(98).normal(0, shift, size=(6, len(FINGERPRINT_COLUMNS)))
    embedding = centres[labels] + rng.normal(size=(len(labels), 16))
    fingerprint = fp_centres[labels] + rng.normal(size=(len(labels), len(FINGERPRINT_COLUMNS)))
    logits = np.eye(6)[labels] * 3 + rng.normal(size=(len(labels), 6))
    return Embedded(logits[:, 1] - logits[:, 0], logits, embedding, fingerprint), labels


def test_selection_and_fit_refuse_labels_outside_the_known_classes():
    emb, labels = _synthetic(12, 0)
    with pytest.raises(ValueError, match="outside the known classes"):
        select_outlier_score(emb, labels, emb, labels, known=(0, 1, 2, 3, 4))
    with pytest.raises(ValueError, match="outside the known classes"):
        fit_open_set(emb, labels, {"calibration": emb}, {"calibration": labels}, known=(0, 1, 2, 3, 4))


def test_held_out_generator_never_reaches_the_selection(monkeypatch):
    """Fails if the held-out generator's labels or images reach the fit or the choice of score.

    A spy records every label array the selection receives; and scrambling the held-out
    generator's train and calibration images must change neither the choice nor a threshold.
    """
    from aidetect import attribution

    train, train_labels = _synthetic(20, 1)
    cal, cal_labels = _synthetic(15, 2)
    val, val_labels = _synthetic(10, 3)
    seen = []
    original = attribution.select_outlier_score

    def spy(train_emb, train_lab, cal_emb, cal_lab, known, *args, **kwargs):
        seen.append((set(np.unique(train_lab).tolist()), set(np.unique(cal_lab).tolist()), tuple(known),
                     len(train_emb), len(cal_emb)))
        return original(train_emb, train_lab, cal_emb, cal_lab, known, *args, **kwargs)

    monkeypatch.setattr(attribution, "select_outlier_score", spy)
    run = evaluate_held_out(2, train, train_labels, {"calibration": cal}, {"calibration": cal_labels},
                            {"validation": val}, {"validation": val_labels})
    assert len(seen) == 1
    train_seen, cal_seen, known, n_train, n_cal = seen[0]
    assert 2 not in train_seen and 2 not in cal_seen and 2 not in known
    assert n_train == int((train_labels != 2).sum()) and n_cal == int((cal_labels != 2).sum())

    scrambled_train, scrambled_cal = train.rows(slice(None)), cal.rows(slice(None))
    rng = np.random.default_rng(5)
    for emb, labels in ((scrambled_train, train_labels), (scrambled_cal, cal_labels)):
        held = labels == 2
        emb.embedding[held] = rng.normal(0, 50, size=emb.embedding[held].shape)
        emb.fingerprint[held] = rng.normal(0, 50, size=emb.fingerprint[held].shape)
        emb.source_logit[held] = rng.normal(0, 50, size=emb.source_logit[held].shape)
    again = evaluate_held_out(2, scrambled_train, train_labels, {"calibration": scrambled_cal},
                              {"calibration": cal_labels}, {"validation": val}, {"validation": val_labels})
    assert again["outlier_score_selection"] == run["outlier_score_selection"]
    assert again["deployed"] == run["deployed"]
    for name in OUTLIER_SCORES:
        assert again["outlier_thresholds"][name]["threshold"] == run["outlier_thresholds"][name]["threshold"]
    # The held-out generator is in the evaluation, and a well-separated one is ranked as unknown.
    held = run["splits"]["validation"]["held_out"]
    assert held["n"] == 10
    assert held["outlier_roc_auc"][run["deployed"]["outlier_score"]] > 0.9


# --- the 1 % rule's bound ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [75, 111, 183, 298])
def test_outlier_bound_matches_its_formula_when_too_few_images(n):
    """Below 299 images the rule falls back to the largest score; its bound is 1 - delta^(1/n)."""
    rng = np.random.default_rng(n)
    _, summary = calibrate_outlier_threshold({"calibration": rng.normal(size=n),
                                              "calibration_augmented": rng.normal(size=n + 10)})
    assert not summary["guaranteed_all_sets"]
    assert summary["min_images_for_guarantee"] == 299
    assert summary["per_set"]["calibration"]["order_statistic_k"] == n
    assert summary["rate_bound_95"] == pytest.approx(1 - OUTLIER_DELTA ** (1 / n))
    assert "too few calibration images" in summary["statement"] and f"{100 * (1 - 0.05 ** (1 / n)):.1f} %" \
        in summary["statement"]


@pytest.mark.parametrize("n", [299, 500, 2000])
def test_outlier_bound_matches_its_formula_when_guaranteed(n):
    """With enough images: bound = Beta(n - k + 1, k) 95 % quantile at the rule's k, and at most the cap."""
    from aidetect.calibration import order_statistic_rank

    _, summary = calibrate_outlier_threshold({"calibration": np.random.default_rng(n).normal(size=n)})
    k = order_statistic_rank(n, OUTLIER_MAX_FPR, OUTLIER_DELTA)
    assert summary["guaranteed_all_sets"] and summary["per_set"]["calibration"]["order_statistic_k"] == k
    assert summary["rate_bound_95"] == pytest.approx(beta.ppf(1 - OUTLIER_DELTA, n - k + 1, k))
    assert summary["rate_bound_95"] <= OUTLIER_MAX_FPR + 1e-12
    assert binom.sf(k - 1, n, 1 - OUTLIER_MAX_FPR) <= OUTLIER_DELTA


def test_open_set_says_when_it_needs_fingerprints():
    emb, labels = _synthetic(12, 4)
    open_set = fit_open_set(emb, labels, {"calibration": emb}, {"calibration": labels}, known=tuple(range(6)))
    for kind in CLASSIFIERS:
        for score in OUTLIER_SCORES:
            open_set.classifier_kind, open_set.outlier_score = kind, score
            expected = kind in ("gaussian", "logistic") or score.split("/")[1] in ("fingerprint", "joint")
            assert open_set.needs_fingerprint == expected
            without = Embedded(emb.binary_logit, emb.source_logit, emb.embedding, None)
            if not expected:  # what predict relies on: labelling works without fingerprint features
                assert len(open_set.label(without)) == len(labels)
