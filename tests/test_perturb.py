"""The perturbation library of the robustness benchmark, and leave-one-family-out training that really
leaves the family out."""
from __future__ import annotations

import json

import numpy as np
import pytest

from stagerun import encode, noise_image, write_labelled_file

import aidetect.augment as augment_module
from aidetect.augment import NEUTRAL, ROBUST, TRAINING_FAMILIES, augment, image_view, without
from aidetect.cleaning import build_recipe, load_prepared, prepare_split, shift_split
from aidetect.detector import calibration_split_names
from aidetect.perturb import FAMILIES, calibration_families, perturb
from aidetect.training import TrainConfig


def _photo(seed=0, shape=(120, 160, 3)) -> np.ndarray:
    """Smooth content plus sensor-like noise: every family has something to change."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    base = 128 + 60 * np.sin(xx / 9.0)[..., None] * np.cos(yy / 13.0)[..., None] + rng.normal(0, 6, shape)
    return base.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_is_deterministic_per_seed_and_changes_pixels(name):
    rgb = _photo()
    for strength in FAMILIES[name].strengths:
        a, b = perturb(rgb, name, strength, 3), perturb(rgb, name, strength, 3)
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
        assert np.array_equal(a, b), f"{name}@{strength} differs between two calls with the same seed"
        assert a.shape != rgb.shape or not np.array_equal(a, rgb), f"{name}@{strength} changed nothing"


def test_families_have_a_strength_axis_and_name_only_known_training_families():
    for family in FAMILIES.values():
        assert len(family.strengths) == 3 and family.moderate == family.strengths[1]
        assert family.trained_as is None or family.trained_as in TRAINING_FAMILIES
    unseen = [f for f in FAMILIES.values() if f.trained_as is None]
    assert len(unseen) >= len(FAMILIES) // 3, "a third of the families must be ones no training step applies"
    assert {f.trained_as for f in FAMILIES.values()} - {None} == set(TRAINING_FAMILIES)


def test_a_policy_without_a_family_never_applies_it(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("JPEG applied although the family was left out")

    monkeypatch.setattr(augment_module, "jpeg", forbidden)
    rng = np.random.default_rng(0)
    crop = _photo(shape=(256, 256, 3))
    for policy in (without(ROBUST, ["jpeg"]), without(NEUTRAL, ["jpeg"])):
        for _ in range(40):
            augment(crop, policy, rng)
            image_view(crop, policy, rng)
    with pytest.raises(ValueError, match="unknown training families"):
        without(ROBUST, ["sharpen"])


def test_train_config_leaves_the_family_out_of_both_policies():
    robust, neutral = TrainConfig(policy="robust", exclude_families=("jpeg", "blur")).policies()
    assert robust.jpeg_p == robust.blur_p == neutral.jpeg_p == 0.0
    assert robust.rescale_p == ROBUST.rescale_p > 0


def test_a_left_out_family_is_not_calibrated_on():
    everything = calibration_split_names("task03")
    without_rescale = calibration_split_names("task03", ("rescale",))
    rescaled = {shift_split(f.name) for f in FAMILIES.values() if f.trained_as == "rescale"}
    assert rescaled <= set(everything) and not rescaled & set(without_rescale)
    assert calibration_split_names("task02") == ("calibration",)
    assert all(f.trained_as != "rescale" for f in calibration_families(("rescale",)))


def test_prepare_views_follow_the_policy_they_are_given(tmp_path, monkeypatch):
    """The leave-one-family-out benchmark re-prepares the training views without the family: they must change."""
    images = [encode(noise_image(300, 240, seed=i), "PNG") for i in range(4)]
    write_labelled_file(tmp_path / "data" / "train" / "part-0.parquet", images, [0, 1, 0, 1])
    other = [encode(noise_image(200, 200, seed=100 + i), "PNG") for i in range(2)]
    write_labelled_file(tmp_path / "data" / "calibration" / "part-0.parquet", other, [0, 1])  # a required split
    monkeypatch.setenv("AMLS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    recipe = build_recipe()
    prepare_split("train", recipe, seed=0)
    full = load_prepared("train")
    prepare_split("train", recipe, seed=0, view_policy=without(ROBUST, list(TRAINING_FAMILIES)))
    none = load_prepared("train")
    assert np.array_equal(np.asarray(full.crops), np.asarray(none.crops)), "the stored crops must not change"
    assert not np.allclose(full.views, none.views)
    info = json.loads((tmp_path / "artifacts" / "prepared" / "train" / "info.json").read_text())
    assert info["n"] == 4


def test_prepare_stores_the_calibration_reals_under_each_covered_family(tmp_path, monkeypatch):
    import time

    from aidetect.budget import Deadline
    from aidetect.cleaning import prepare_calibration_shift, shift_splits_present

    images = [encode(noise_image(300, 260, seed=i), "JPEG") for i in range(6)]
    write_labelled_file(tmp_path / "data" / "calibration" / "part-0.parquet", images, [0, 0, 0, 0, 1, 2])
    other = [encode(noise_image(200, 200, seed=100 + i), "PNG") for i in range(2)]
    write_labelled_file(tmp_path / "data" / "train" / "part-0.parquet", other, [0, 1])  # a required split
    monkeypatch.setenv("AMLS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    recipe = build_recipe()
    info = prepare_calibration_shift(recipe, seed=0, deadline=Deadline(600, start=time.monotonic()))
    assert info == {"families": [f.name for f in calibration_families()], "n": 4, "truncated": False, "failed": 0}
    assert len(shift_splits_present()) == len(calibration_families())
    jpeg, blur = load_prepared(shift_split("jpeg")), load_prepared(shift_split("gaussian_blur"))
    assert len(jpeg) == len(blur) == 4 and (jpeg.source_class == 0).all() and len(jpeg.corners) == 4
    assert not np.array_equal(np.asarray(jpeg.crops), np.asarray(blur.crops))
    # A deadline already spent: nothing is processed, and the run records that the deadline decided it.
    info = prepare_calibration_shift(recipe, seed=0, deadline=Deadline(1, start=time.monotonic() - 10))
    assert info["truncated"] and info["n"] == 0
    stored = json.loads((tmp_path / "artifacts" / "prepared" / shift_split("jpeg") / "info.json").read_text())
    assert stored["truncated"] and stored["time_bound_decisions"][0]["stage"] == "prepare"


def test_task03_threshold_is_the_largest_over_the_calibration_and_processed_sets():
    from aidetect.detector import _calibrate

    rng = np.random.default_rng(0)
    names = calibration_split_names("task03")
    scores = {name: rng.normal(i, 1.0, 40) for i, name in enumerate(names)}  # later sets score higher
    labels = {name: np.zeros(40, dtype=np.int64) for name in names}
    task03, per_set = _calibrate(scores, labels, "task03")
    assert set(per_set) == set(names) and task03.value == max(t["value"] for t in per_set.values())
    task02, per_set02 = _calibrate(scores, labels, "task02")
    assert set(per_set02) == {"calibration"} and task02.value < task03.value
    _, without_blur = _calibrate(scores, labels, "task03", ("blur",))
    assert shift_split("gaussian_blur") not in without_blur and shift_split("jpeg") in without_blur
