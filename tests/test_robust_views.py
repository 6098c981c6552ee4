"""Robust views of whole training images: made in prepare, learnt from by the Task-3 classical model."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from stagerun import encode, noise_image, write_labelled_file

from aidetect.augment import MIN_VIEW_SIDE, AugmentPolicy, image_view
from aidetect.cleaning import (TRAIN_VIEWS, PreparedSplit, build_recipe, load_prepared, plan_training,
                               prepare_split, view_features)
from aidetect.detector import classical_training_features
from aidetect.errors import DataError
from aidetect.features import FEATURE_NAMES

ONLY = AugmentPolicy("only", jpeg_p=0.0, jpeg_quality=(100, 100))  # changes nothing unless told


def test_image_view_down_scales_and_cuts_the_whole_image():
    rgb = np.random.default_rng(0).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)
    assert np.array_equal(image_view(rgb, ONLY, rng), rgb)
    half = image_view(rgb, replace(ONLY, rescale_p=1.0, rescale=(0.5, 0.5)), rng)
    assert half.shape == (150, 200, 3) and half.dtype == np.uint8
    part = image_view(rgb, replace(ONLY, area_p=1.0, area=(0.5, 0.5)), rng)
    assert part.shape == (150, 200, 3)
    assert any(np.array_equal(part, rgb[t:t + 150, l:l + 200]) for t in range(151) for l in range(201))
    tiny = image_view(rgb[:20, :30], replace(ONLY, rescale_p=1.0, rescale=(0.1, 0.1)), rng)
    assert min(tiny.shape[:2]) == MIN_VIEW_SIDE
    jpeg = image_view(rgb, replace(ONLY, jpeg_p=1.0, jpeg_quality=(30, 30)), rng)
    assert jpeg.shape == rgb.shape and not np.array_equal(jpeg, rgb)


def test_view_features_are_reproducible_finite_and_differ_between_views():
    rgb = np.random.default_rng(2).integers(0, 256, size=(200, 260, 3), dtype=np.uint8)
    a, b = view_features(rgb, 7), view_features(rgb, 7)
    assert a.shape == (TRAIN_VIEWS, len(FEATURE_NAMES)) and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a, view_features(rgb, 8))


def test_plan_training_gives_up_views_before_images():
    assert plan_training(100, 1000.0, 0.5, 1.0) == (100, 1.0)
    images, share = plan_training(100, 100.0, 0.5, 1.0)  # 50 s for the images, 50 s for half the views
    assert images == 100 and share == pytest.approx(0.5)
    assert plan_training(100, 40.0, 0.5, 1.0) == (80, 0.0)
    assert plan_training(100, -5.0, 0.5, 1.0) == (0, 0.0)


def _small_training_split(root):
    images = [encode(noise_image(300 + 8 * i, 240, seed=i), "PNG") for i in range(12)]
    write_labelled_file(root / "data" / "train" / "part-0.parquet", images, [i % 6 for i in range(12)])
    other = [encode(noise_image(200, 200, seed=100 + i), "PNG") for i in range(2)]
    write_labelled_file(root / "data" / "calibration" / "part-0.parquet", other, [0, 1])  # a required split


def test_prepare_stores_views_of_training_images_and_leaves_their_crops_alone(tmp_path, monkeypatch):
    _small_training_split(tmp_path)
    monkeypatch.setenv("AMLS_DATA_DIR", str(tmp_path / "data"))
    stored = {}
    for share in (1.0, 0.5, 0.0):
        monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(tmp_path / f"artifacts-{share}"))
        info = prepare_split("train", build_recipe(), seed=0, view_share=share)
        stored[share] = load_prepared("train")
        assert info["view_share"] == share and info["views_made"] == np.isfinite(stored[share].views[:, 0, 0]).sum()
    full, half, none = stored[1.0], stored[0.5], stored[0.0]
    assert full.views.shape == (12, TRAIN_VIEWS, len(FEATURE_NAMES)) and np.isfinite(full.views).all()
    assert np.isnan(none.views).all()
    made = np.isfinite(half.views).all(axis=(1, 2))
    assert 0 < made.sum() < 12, "a share of 0.5 of 12 images should leave some with and some without views"
    assert np.array_equal(half.views[made], full.views[made])  # the same views, whoever else gets some
    for other in (half, none):
        assert np.array_equal(np.asarray(other.crops[:]), np.asarray(full.crops[:]))


def test_prepared_views_of_the_wrong_shape_or_unreadable_are_refused(tmp_path, monkeypatch):
    _small_training_split(tmp_path)
    monkeypatch.setenv("AMLS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    prepare_split("train", build_recipe(), seed=0)
    np.save(tmp_path / "artifacts" / "prepared" / "train" / "view_features.npy", np.zeros((5, 2, 3), np.float32))
    with pytest.raises(DataError, match="view features of shape"):
        load_prepared("train")
    (tmp_path / "artifacts" / "prepared" / "train" / "view_features.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match="unreadable view features"):
        load_prepared("train")


def test_task03_classical_model_learns_from_the_stored_views_and_task02_ignores_them():
    rng = np.random.default_rng(0)
    n = 10
    crops = rng.integers(0, 256, size=(n, 256, 256, 3), dtype=np.uint8)
    views = rng.normal(size=(n, TRAIN_VIEWS, len(FEATURE_NAMES))).astype(np.float32)
    views[[1, 4]] = np.nan  # prepare had no time for these two
    train = PreparedSplit("train", crops, np.arange(n) % 6, views=views)
    indices = np.arange(1, n)  # image 0 is in the holdout
    features, labels = classical_training_features("task03", train, indices, seed=0)
    with_views = [i for i in indices if i not in (1, 4)]
    assert len(features) == len(indices) + TRAIN_VIEWS * len(with_views)
    assert np.allclose(features[len(indices):], views[with_views].reshape(-1, len(FEATURE_NAMES)))
    assert labels.tolist() == [int(i % 6 > 0) for i in indices] + [int(i % 6 > 0) for i in with_views for _ in range(2)]
    plain, _ = classical_training_features("task02", train, indices, seed=0)
    assert len(plain) == 2 * len(indices)  # a neutral view of each stored crop
    train.views[:] = np.nan  # no views at all (e.g. prepared by older code): one robust view per stored crop
    fallback, _ = classical_training_features("task03", train, indices, seed=0)
    assert len(fallback) == 2 * len(indices)
    assert np.array_equal(fallback[: len(indices)], features[: len(indices)])
