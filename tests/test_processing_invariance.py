"""What makes processing no evidence: several kinds of each processing, the consistency term, and the
weight of processed real photos in the classical model."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from PIL import Image, ImageFilter

from aidetect import augment as augment_module
from aidetect.augment import ROBUST, AugmentPolicy, image_view
from aidetect.cleaning import PreparedSplit
from aidetect.detector import view_weights
from aidetect.training import TrainConfig, iterate_batches, train_one_epoch
from aidetect.models import build_model

ONLY = AugmentPolicy("only", jpeg_p=0.0, jpeg_quality=(100, 100))  # changes nothing unless told
RGB = np.random.default_rng(0).integers(0, 256, size=(64, 80, 3), dtype=np.uint8)


def _views(policy, n=40):
    rng = np.random.default_rng(3)
    return [image_view(RGB, policy, rng) for _ in range(n)]


def test_the_robust_policy_blurs_with_every_kind_it_names():
    blurred = _views(replace(ONLY, blur_p=1.0, blur_sigma=(1.0, 1.0), blur_kinds=ROBUST.blur_kinds))
    pil = Image.fromarray(RGB)
    expected = {"gaussian": pil.filter(ImageFilter.GaussianBlur(1.0)), "box": pil.filter(ImageFilter.BoxBlur(1.0)),
                "median": pil.filter(ImageFilter.MedianFilter(3))}
    seen = {kind for view in blurred for kind, image in expected.items() if np.array_equal(view, np.asarray(image))}
    assert set(ROBUST.blur_kinds) == {"gaussian", "box", "median"} and seen == set(expected)


def test_the_robust_policy_re_encodes_with_every_codec_it_names(monkeypatch):
    used = []
    real_encode = augment_module.encode
    monkeypatch.setattr(augment_module, "encode", lambda image, codec, quality: used.append(codec)
                        or real_encode(image, codec, quality))
    _views(replace(ONLY, jpeg_p=1.0, jpeg_quality=(60, 60), codecs=ROBUST.codecs), n=20)
    assert set(used) == set(ROBUST.codecs) == {"jpeg", "webp"}


def test_a_policy_of_one_kind_draws_the_same_views_as_before_kinds_existed():
    # One kind draws no random number: the Task-2 policy's views, and every stored checkpoint's, stay as they were.
    one = replace(ONLY, blur_p=0.5, jpeg_p=0.5, jpeg_quality=(50, 90), noise_p=0.5)
    rng = np.random.default_rng(3)
    expected = []
    for _ in range(10):  # the drawing order of ``image_view`` with a single blur kind and codec
        image = Image.fromarray(RGB)
        if rng.random() < one.area_p:
            raise AssertionError("no area crop in this policy")
        if rng.random() < one.rescale_p:
            raise AssertionError("no rescaling in this policy")
        if rng.random() < one.blur_p:
            image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(*one.blur_sigma))))
        if rng.random() < one.colour_p:
            raise AssertionError("no colour change in this policy")
        array = np.asarray(image)
        if rng.random() < one.noise_p:
            array = np.clip(array + rng.normal(0.0, float(rng.uniform(*one.noise_sigma)), array.shape), 0, 255).astype(np.uint8)
        if rng.random() < one.jpeg_p:
            array = np.asarray(augment_module.jpeg(Image.fromarray(array), int(rng.integers(50, 90, endpoint=True))))
        expected.append(array)
    got = _views(one, n=10)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))


def _split(n=8):
    crops = np.random.default_rng(1).integers(0, 256, size=(n, 256, 256, 3), dtype=np.uint8)
    return PreparedSplit(name="train", crops=crops, source_class=np.arange(n) % 6)


def test_the_consistency_term_pairs_each_image_with_a_neutral_view_and_enters_the_loss():
    data, indices = _split(), np.arange(8)
    config = TrainConfig(policy="robust", width=8, batch_size=4)
    assert all(pair is None for *_, pair in iterate_batches(data, indices, config, 0))
    paired = replace(config, consistency_weight=1.0)
    batches = list(iterate_batches(data, indices, paired, 0))
    assert all(pair is not None and pair.shape == x.shape for x, _, _, pair in batches)

    def one_epoch(cfg, weight_seed=0):
        torch.manual_seed(weight_seed)
        model = build_model("tracenet", **cfg.model_kwargs())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # loss only: weights stay put
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        weights = (torch.tensor(1.0), torch.ones(6))
        return train_one_epoch(model, optimizer, scheduler, iterate_batches(data, indices, cfg, 0), cfg, weights,
                               None, 0.0, 2, 0)[0]

    # The pulled-together views cost something: a larger weight, a larger loss on the same batches and weights.
    assert one_epoch(replace(paired, consistency_weight=100.0)) > one_epoch(paired)


def test_processed_real_views_get_their_weight_and_nothing_else_does():
    labels = np.array([0, 1, 0, 1, 0, 0, 1, 1])  # four clean rows, then four view rows
    assert view_weights(labels, 4, 1.0) is None
    weights = view_weights(labels, 4, 2.5)
    assert weights.tolist() == [1, 1, 1, 1, 2.5, 2.5, 1, 1]


def test_no_early_stop_before_min_epochs(tmp_path):
    import time

    from aidetect.budget import Deadline
    from aidetect.training import fit

    rng = np.random.default_rng(4)
    data = PreparedSplit(name="train", crops=rng.integers(0, 256, size=(36, 64, 64, 3), dtype=np.uint8),
                         source_class=np.arange(36) % 6)
    config = TrainConfig(epochs=8, patience=1, width=4, batch_size=8, seed=1)  # noise: any epoch may be the best

    def epochs(min_epochs: int) -> int:
        _, result = fit(replace(config, min_epochs=min_epochs), data, tmp_path / str(min_epochs),
                        Deadline(600, start=time.monotonic()), reserve_seconds=0, resume=False)
        return result.epochs_run

    early = epochs(0)
    assert early < 6, "a patience of one epoch on noise should stop early; the test needs a seed where it does"
    assert epochs(6) >= 6
