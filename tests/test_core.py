"""Units the stages rely on: crops, augmentation, features, metrics, budget, models."""
import os
import pickle
import signal
import time

import numpy as np
import pytest
import torch

from aidetect.augment import NEUTRAL, ROBUST, augment
from aidetect.budget import Deadline, available_cpus, safety_margin
from aidetect.cropfile import CropFile
from aidetect.classical import ClassicalDetector
from aidetect.crops import CROP_SIZE, TRAIN_CROP, corner_crops, square_crop
from aidetect.errors import DataError, PipelineError
from aidetect.features import FEATURE_NAMES, CornerFeatures, image_features
from aidetect.metrics import clopper_pearson, detection_metrics
from aidetect.models import build_model, to_tensor


def test_square_crop_keeps_native_pixels_on_the_8_pixel_grid():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    crop = square_crop(image)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    top, left = (375 - 256) // 2 // 8 * 8, (500 - 256) // 2 // 8 * 8
    assert np.array_equal(crop, image[top:top + 256, left:left + 256])
    random_crop = square_crop(image, rng=np.random.default_rng(3))
    matches = [(t, l) for t in range(0, 120, 8) for l in range(0, 245, 8)
               if np.array_equal(random_crop, image[t:t + 256, l:l + 256])]
    assert matches, "random crops must also sit on the 8-pixel grid"


def test_corner_crops_are_native_grid_aligned_and_as_many_as_are_distinct():
    image = np.random.default_rng(1).integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    crops = corner_crops(image)
    bottom, right = (375 - 256) // 8 * 8, (500 - 256) // 8 * 8
    expected = [image[t:t + 256, l:l + 256] for t in (0, bottom) for l in (0, right)]
    assert len(crops) == 4 and all(np.array_equal(c, e) for c, e in zip(crops, expected))
    assert len(corner_crops(image[:256, :256])) == 1
    assert len(corner_crops(image[:256, :])) == 2
    assert [c.shape for c in corner_crops(image[:40, :90])] == [(CROP_SIZE, CROP_SIZE, 3)] * 2  # up-scaled first


def test_classical_image_scores_are_the_mean_log_odds_of_their_corner_crops():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, len(FEATURE_NAMES)))
    model = ClassicalDetector("logistic").fit_features(features, np.arange(60) % 2)
    per_image = [features[:4], features[4:5], features[5:7]]
    corners = CornerFeatures.stack(per_image)
    expected = [model.score_features(rows).mean() for rows in per_image]
    assert np.allclose(model.score_images(corners), expected)
    assert model.score_images(CornerFeatures.stack([])).shape == (0,)
    with pytest.raises(ValueError, match="inconsistent corner features"):
        CornerFeatures(features[:7], np.array([0, 4, 4, 7]))  # an image without rows
    with pytest.raises(ValueError, match="inconsistent corner features"):
        CornerFeatures(features[:7], np.array([0, 4, 6]))  # rows nobody owns


def test_small_images_are_upscaled_to_the_crop():
    assert square_crop(np.zeros((40, 90, 3), np.uint8)).shape == (CROP_SIZE, CROP_SIZE, 3)


@pytest.mark.parametrize("policy", [NEUTRAL, ROBUST])
def test_augment_gives_training_crops_of_fixed_size(policy):
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    views = [augment(crop, policy, rng) for _ in range(20)]
    assert all(v.shape == (TRAIN_CROP, TRAIN_CROP, 3) and v.dtype == np.uint8 for v in views)
    assert len({v.tobytes() for v in views}) == 20


def test_augment_is_reproducible_with_the_same_seed():
    crop = np.random.default_rng(0).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    a = augment(crop, ROBUST, np.random.default_rng(5))
    b = augment(crop, ROBUST, np.random.default_rng(5))
    assert np.array_equal(a, b)


def test_features_are_finite_and_named():
    rgb = np.random.default_rng(0).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    features = image_features(rgb)
    assert features.shape == (len(FEATURE_NAMES),) and np.isfinite(features).all()
    flat = np.full((256, 256, 3), 128, np.uint8)
    assert np.isfinite(image_features(flat)).all()


def test_detection_metrics_counts():
    source = np.array([0, 0, 0, 0, 1, 2, 3, 4])
    predicted = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    scores = predicted + 0.1 * np.arange(8)
    m = detection_metrics(source, scores, predicted)
    assert m["confusion"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 3}
    assert m["fpr"] == 0.25 and m["recall_ai"] == 0.75
    assert m["recall_per_class"] == {"1": 1.0, "2": 1.0, "3": 0.0, "4": 1.0}
    lo, hi = m["fpr_ci95"]
    assert lo < 0.25 < hi


def test_clopper_pearson_edges():
    assert clopper_pearson(0, 10)[0] == 0.0
    assert clopper_pearson(10, 10)[1] == 1.0
    lo, hi = clopper_pearson(14, 72)
    assert 0.10 < lo < 0.195 < hi < 0.31


def test_deadline_keeps_a_margin():
    deadline = Deadline(100, start=time.monotonic())
    assert deadline.margin == safety_margin(100) == 8.0
    assert deadline.remaining() <= 92.0
    assert Deadline(1800).margin == 120.0
    assert 1 <= available_cpus() <= 8


@pytest.mark.parametrize("arch", ["tracenet", "course_baseline"])
def test_models_are_fully_convolutional_with_two_heads(arch):
    model = build_model(arch).eval()
    for size in (128, 256, 200):
        x = to_tensor(np.zeros((2, size, size, 3), np.uint8))
        binary, source, embedding = model.forward_all(x)
        assert binary.shape == (2,) and source.shape == (2, 6) and embedding.shape[0] == 2
    with torch.no_grad():
        assert model(x).shape == (2,)


def test_tracenet_front_end_ignores_flat_colour_without_rgb():
    model = build_model("tracenet").eval()
    flat = torch.full((1, 3, 64, 64), 0.3)
    assert model.front(flat)[:, :6, 4:-4, 4:-4].abs().max() < 1e-6


def _square_or_die(x: int) -> int:
    if x == 37 and os.getpid() != _PARENT_PID:  # a worker killed mid-stream, as the OOM killer would
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


_PARENT_PID = os.getpid()


def test_ordered_map_survives_a_killed_worker_without_hanging_or_losing_items():
    from aidetect.parallel import ordered_map

    assert list(ordered_map(_square_or_die, range(300), workers=2, window_size=64)) == [x * x for x in range(300)]


def test_load_model_refuses_a_checkpoint_that_lacks_an_architecture_field(tmp_path):
    from dataclasses import asdict

    from aidetect.modelfiles import save_network
    from aidetect.training import TrainConfig, load_model

    config = TrainConfig(arch="tracenet", width=8)
    model = build_model("tracenet", **config.model_kwargs())
    fields = asdict(config)
    save_network(tmp_path / "ok.safetensors", model.state_dict(), {"arch": "tracenet", "config": fields})
    assert load_model(tmp_path / "ok.safetensors") is not None
    del fields["stem_stride"]  # as saved by code from before the field existed
    save_network(tmp_path / "old.safetensors", model.state_dict(), {"arch": "tracenet", "config": fields})
    with pytest.raises(PipelineError, match="stem_stride"):
        load_model(tmp_path / "old.safetensors")


def _resident_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_crop_file_indexes_like_the_array_it_stores(tmp_path):
    stored = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "crops.npy", stored)
    crops, expected = CropFile(tmp_path / "crops.npy", n=40), stored[:40]
    for key in (3, -1, slice(2, 9), slice(None, None, 3), [5, 6, 7, 1, 2, 30], np.array([4, 4, 5]),
                expected[:, 0, 0, 0] > 100, [], slice(39, 100), slice(10, 2)):
        assert np.array_equal(crops[key], expected[key]), key
    assert crops.shape == expected.shape and len(crops) == 40
    assert np.array_equal(np.asarray(crops), expected) and np.array_equal(np.stack(list(crops)), expected)
    assert np.array_equal(pickle.loads(pickle.dumps(crops))[7], expected[7])
    with pytest.raises(IndexError):
        crops[40]
    with pytest.raises(DataError, match="60 expected"):
        CropFile(tmp_path / "crops.npy", n=60)


def test_walking_through_a_crop_file_keeps_resident_memory_flat(tmp_path):
    """The reason CropFile exists: a memory map keeps every page it has served resident."""
    n = 400  # 78 MB of 256-px crops
    np.save(tmp_path / "crops.npy", np.full((n, CROP_SIZE, CROP_SIZE, 3), 7, dtype=np.uint8))

    def growth(crops) -> float:
        before = _resident_mb()
        total = 0
        for start in range(0, n, 16):
            total += int(np.asarray(crops[start : start + 16])[:, 0, 0, 0].sum())
        assert total == 7 * n
        return _resident_mb() - before

    mapped = growth(np.load(tmp_path / "crops.npy", mmap_mode="r"))
    read = growth(CropFile(tmp_path / "crops.npy"))
    assert mapped > 60, f"the memory map grew by only {mapped:.0f} MB: this check no longer shows anything"
    assert read < 15, f"reading through CropFile grew resident memory by {read:.0f} MB"
