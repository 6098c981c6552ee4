"""Exploration on a tiny, deliberately biased dataset in the course layout.

Real photos are JPEGs of varied, non-square sizes; "generated" images are
square PNGs, so file metadata alone gives the class away, which is exactly
what the shortcut probe has to report.
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image


from aidetect.budget import Deadline
from aidetect.explore import estimate_jpeg_quality, ijg_table, image_metadata, run_exploration

REAL_SIZES = [(96, 64), (80, 60), (120, 72), (64, 96), (100, 75), (90, 60), (72, 54), (110, 70)]
FIGURES = ("class_distribution.png", "size_scatter.png", "aspect_filesize_hist.png", "format_mode_share.png",
           "jpeg_quality.png", "examples.png", "shortcut_probe.png")


def _picture(width: int, height: int, seed: int) -> Image.Image:
    """A smooth gradient with some noise: compresses like a photo, not like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height) + 64], axis=2)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _write_split(folder: Path, images: list[bytes], classes: list[int]) -> None:
    folder.mkdir(parents=True)
    frame = pd.DataFrame({"image": images, "source_class": np.array(classes, dtype=np.int8)})
    frame.to_parquet(folder / "part-0.parquet", index=False)


@pytest.fixture
def biased_data(tmp_path, monkeypatch):
    """train: 8 JPEG reals (q 75 / 95), 8 square PNG fakes, 1 corrupt row, 1 duplicate row;
    validation: 4 + 4 of the same kind, one of them byte-identical to a train image."""
    real = [_encode(_picture(w, h, i), "JPEG", quality=75 if i % 2 == 0 else 95) for i, (w, h) in enumerate(REAL_SIZES)]
    fake = [_encode(_picture(s, s, 100 + i), "PNG") for i, s in enumerate([48, 64, 48, 64, 56, 48, 64, 56])]
    corrupt = real[1][:200]  # a truncated JPEG: the header parses, the pixels do not
    train_images = real + fake + [corrupt, real[0]]
    train_classes = [0] * 8 + [1, 2] * 4 + [1, 0]
    validation_images = [_encode(_picture(w, h, 50 + i), "JPEG", quality=90) for i, (w, h) in enumerate(REAL_SIZES[:4])]
    validation_images += [_encode(_picture(s, s, 150 + i), "PNG") for i, s in enumerate([48, 64, 56])] + [fake[0]]
    validation_classes = [0] * 4 + [1, 2, 1, 1]

    data = tmp_path / "data"
    _write_split(data / "train", train_images, train_classes)
    _write_split(data / "validation", validation_images, validation_classes)
    _write_split(data / "predict", [real[2]], [0])  # must never be read
    monkeypatch.setenv("AMLS_DATA_DIR", str(data))
    return tmp_path


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_jpeg_quality_estimate_matches_the_encoder_setting(quality):
    data = _encode(_picture(128, 96, quality), "JPEG", quality=quality)
    row = image_metadata(data)
    assert row["format"] == "JPEG" and row["decodable"]
    assert abs(row["jpeg_quality"] - quality) <= 3
    assert row["jpeg_standard_table"]
    assert estimate_jpeg_quality(ijg_table(quality)) == pytest.approx(quality, abs=1)


def test_image_metadata_describes_storage_and_survives_bad_bytes():
    png = image_metadata(_encode(_picture(64, 32, 0), "PNG"))
    assert (png["format"], png["mode"], png["width"], png["height"]) == ("PNG", "RGB", 64, 32)
    assert png["aspect"] == 2.0 and png["jpeg_quality"] is None and png["exif_present"] is False
    assert 0 <= png["saturation_mean"] <= 1 and png["laplacian_abs_mean"] > 0

    broken = image_metadata(b"definitely not an image")
    assert broken["decodable"] is False and broken["error"] and broken["format"] == "unknown"
    assert image_metadata(None)["decodable"] is False


def test_run_exploration_writes_summary_probe_and_figures(biased_data):
    out_dir = biased_data / "artifacts" / "clean"
    started = time.monotonic()
    summary = run_exploration(["train", "validation"], out_dir, Deadline(600, start=time.monotonic()))
    assert time.monotonic() - started < 20

    on_disk = json.loads((out_dir / "exploration.json").read_text())
    assert on_disk["shortcut_probe"] == summary["shortcut_probe"]
    assert summary["truncated"] is False
    assert summary["rows_read"] == {"train": 18, "validation": 8}

    train = summary["splits"]["train"]
    assert train["all"]["count"] == 18
    real, fake = train["by_source_class"]["real"], train["by_source_class"]["generator_1"]
    assert real["formats"] == {"JPEG": 9} and real["square_share"] == 0.0
    assert fake["formats"]["PNG"] == 4 and fake["square_share"] == 1.0
    assert set(real["width"]) == {"min", "p05", "median", "p95", "max"}
    assert 72 <= real["jpeg_quality"]["min"] and real["jpeg_quality"]["max"] <= 98
    assert fake["jpeg_quality"] is None
    for key in ("modes", "aspect", "file_size_bytes", "exif_share", "icc_share", "pixel_stats_mean"):
        assert key in real

    assert summary["undecodable"]["total"] == 1
    (bad,) = summary["undecodable"]["rows"]
    assert (bad["split"], bad["file"], bad["row"]) == ("train", "part-0.parquet", 16)

    duplicates = summary["duplicates"]
    assert duplicates["within_split"]["train"]["duplicate_rows"] == 1
    assert duplicates["across_splits"]["train~validation"]["shared_images"] == 1
    assert duplicates["across_splits"]["train~validation"]["label_conflicts"] == 0

    probe = summary["shortcut_probe"]["evaluation"]["validation"]
    assert probe["accuracy"] >= 0.9 and probe["roc_auc"] >= 0.9
    assert probe["majority_baseline_accuracy"] == 0.5
    cues = summary["shortcut_probe"]["single_cue"]["validation"]
    assert cues["format"]["accuracy"] == 1.0 and cues["exif"]["balanced_accuracy"] == 0.5
    assert summary["shortcut_probe"]["strongest_cue"]["validation"] in cues

    rows = pd.read_parquet(out_dir / "metadata.parquet")
    assert len(rows) == 26 and set(rows["split"]) == {"train", "validation"}
    assert {"split", "file", "row", "source_class", "jpeg_quality", "sha1"} <= set(rows.columns)
    train_quality = rows[(rows["split"] == "train") & (rows["source_class"] == 0)].head(8)["jpeg_quality"]
    assert np.allclose(train_quality, [75, 95] * 4, atol=3)

    for name in FIGURES:
        path = out_dir / "figures" / name
        assert path.is_file() and 0 < path.stat().st_size < 200_000, name
    assert sorted(summary["figures"]) == sorted(FIGURES)
    assert not list((biased_data / "data").rglob("*.json"))


def test_exploration_stops_early_but_still_writes_when_the_budget_is_short(biased_data):
    nearly_spent = Deadline(100, start=time.monotonic() - 80)  # 12 s left of 100 s: below the 30 % reserve
    out_dir = biased_data / "out"
    summary = run_exploration(["train", "validation"], out_dir, nearly_spent)
    assert summary["truncated"] is True
    assert json.loads((out_dir / "exploration.json").read_text())["truncated"] is True
    assert (out_dir / "metadata.parquet").is_file()


def test_exploration_refuses_the_unlabelled_split_and_the_data_folder(biased_data):
    with pytest.raises(ValueError):
        run_exploration(["predict"], biased_data / "out", Deadline(600, start=time.monotonic()))
    with pytest.raises(ValueError):
        run_exploration(["train"], biased_data / "data" / "stats", Deadline(600, start=time.monotonic()))
