"""The threshold rule: the numbers the literature gives, and the guarantee it promises."""
import numpy as np
import pytest

from aidetect.calibration import calibrate_on_several, calibrate_threshold, min_calibration_size, order_statistic_rank


@pytest.mark.parametrize("n, expected_fpr", [(106, 0.132), (200, 0.150), (500, 0.168), (1000, 0.178)])
def test_empirical_fpr_matches_the_published_price_of_the_guarantee(n, expected_fpr):
    scores = np.random.default_rng(0).normal(size=n)
    threshold = calibrate_threshold(scores, max_fpr=0.2, delta=0.05)
    assert threshold.guaranteed
    assert threshold.empirical_fpr == pytest.approx(expected_fpr, abs=0.0015)
    assert threshold.predict(scores).mean() == pytest.approx(threshold.empirical_fpr)


def test_minimum_calibration_sizes():
    assert min_calibration_size(0.2, 0.05) == 14
    assert min_calibration_size(0.01, 0.05) == 299
    assert order_statistic_rank(13, 0.2, 0.05) is None
    assert order_statistic_rank(14, 0.2, 0.05) == 14


def test_too_few_negatives_fall_back_to_the_maximum_and_say_so():
    threshold = calibrate_threshold([0.1, 0.5, 0.3], max_fpr=0.2, delta=0.05)
    assert not threshold.guaranteed
    assert threshold.value == 0.5 and threshold.empirical_fpr == 0.0


def test_the_guarantee_holds_on_fresh_samples():
    """Over many calibrations, the true FPR exceeds the cap in at most ~delta of them."""
    rng = np.random.default_rng(1)
    violations = 0
    trials = 400
    for _ in range(trials):
        threshold = calibrate_threshold(rng.normal(size=72), max_fpr=0.2, delta=0.05)
        true_fpr = 1 - __import__("scipy.stats", fromlist=["norm"]).norm.cdf(threshold.value)
        violations += true_fpr > 0.2
    assert violations / trials <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / trials)


def test_several_sets_take_the_strictest_threshold():
    rng = np.random.default_rng(2)
    clean, shifted = rng.normal(size=100), rng.normal(loc=1.0, size=100)
    threshold, per_set = calibrate_on_several({"clean": clean, "augmented": shifted})
    assert threshold.value == max(t["value"] for t in per_set.values())
    assert threshold.predict(shifted).mean() <= 0.2


def test_non_finite_scores_are_ignored_and_empty_input_is_an_error():
    threshold = calibrate_threshold(np.r_[np.arange(20.0), np.nan], max_fpr=0.2, delta=0.05)
    assert threshold.n_calibration == 20
    with pytest.raises(ValueError):
        calibrate_threshold([])
