"""The plumbing demo dataset (tools/make_demo_data.py) has the course data layout and contract."""
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import make_demo_data

LABELLED = ["train", "calibration", "calibration_augmented", "validation", "validation_augmented"]
BASE = ["train", "calibration", "validation", "predict"]
ORDINARY_RESAMPLING = {name: getattr(Image.Resampling, name)
                       for name in ("NEAREST", "BILINEAR", "BICUBIC", "LANCZOS")}
# Rounding the low-resolution source and the result to uint8 alone leaves a mean absolute
# difference of up to about 0.4 grey levels between two implementations of the same resize.
ROUNDING_ERROR = 0.6


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    manifest = make_demo_data.make_demo_data(out, seed=0)
    return out, manifest


def read(out: Path, split: str) -> pa.Table:
    return pq.read_table(out / "data" / split / "part-0.parquet")


def file_hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_schemas(demo):
    out, _ = demo
    for split in LABELLED:
        schema = read(out, split).schema
        assert schema.names == ["image", "source_class"]
        assert schema.field("image").type == pa.binary()
        assert schema.field("source_class").type == pa.int8()
    predict = read(out, "predict").schema
    assert predict.names == ["row_id", "image"]
    assert predict.field("row_id").type == pa.int32() and predict.field("image").type == pa.binary()
    labels = pq.read_table(out / "labels" / "predict_labels.parquet").schema
    assert labels.names == ["row_id", "source_class", "generator"]
    assert labels.field("row_id").type == pa.int32()
    assert labels.field("source_class").type == pa.int8()
    assert labels.field("generator").type == pa.string()
    assert (out / "MANIFEST.json").is_file()
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def test_counts_match_manifest(demo):
    out, manifest = demo
    assert manifest["note"] == "plumbing demo, not a benchmark"
    assert sorted(manifest["generators"]) == ["1", "2", "3", "4", "5"]
    expected = {"train": (60, 12), "calibration": (40, 8), "validation": (40, 8), "predict": (40, 8)}
    for split in LABELLED:
        classes = read(out, split).column("source_class").to_pylist()
        by_class = Counter(str(c) for c in classes)
        assert manifest[split]["n"] == len(classes)
        assert {k: v for k, v in manifest[split]["by_class"].items() if v} == dict(by_class)
        n_real, n_generated = expected[split.replace("_augmented", "")]
        assert by_class == Counter({"0": n_real, **{str(c): n_generated for c in range(1, 6)}})
        assert [r["source_class"] for r in manifest["images"][split]] == classes
    for augmented, base in [("calibration_augmented", "calibration"), ("validation_augmented", "validation")]:
        assert (read(out, augmented).column("source_class").to_pylist()
                == read(out, base).column("source_class").to_pylist())


def test_every_image_decodes(demo):
    out, _ = demo
    for split in LABELLED + ["predict"]:
        for data in read(out, split).column("image").to_pylist():
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                assert min(image.size) >= 32


def test_predict_has_no_labels_and_labels_match_rows(demo):
    out, manifest = demo
    predict = read(out, "predict")
    assert "source_class" not in predict.column_names
    labels = pq.read_table(out / "labels" / "predict_labels.parquet")
    row_ids = predict.column("row_id").to_pylist()
    assert row_ids == list(range(len(row_ids)))
    assert labels.column("row_id").to_pylist() == row_ids
    by_class = Counter(str(c) for c in labels.column("source_class").to_pylist())
    assert {k: v for k, v in manifest["predict"]["by_class"].items() if v} == dict(by_class)
    generator_of = {int(c): g["name"] for c, g in manifest["generators"].items()}
    for source_class, generator in zip(labels.column("source_class").to_pylist(),
                                       labels.column("generator").to_pylist()):
        assert generator == generator_of.get(source_class, make_demo_data.REAL_SOURCE)


def test_source_photos_never_cross_splits(demo):
    _, manifest = demo
    photos = {split: {r["photo"] for r in manifest["images"][split]} for split in BASE}
    for i, first in enumerate(BASE):
        for second in BASE[i + 1:]:
            assert not photos[first] & photos[second], (first, second)
    stereo_pair = {"motorcycle_left", "motorcycle_right"}  # two views of one scene: one group
    assert sum(bool(photos[split] & stereo_pair) for split in BASE) <= 1
    for augmented, base in [("calibration_augmented", "calibration"), ("validation_augmented", "validation")]:
        augmented_photos = [r["photo"] for r in manifest["images"][augmented]]
        assert augmented_photos == [r["photo"] for r in manifest["images"][base]]


def test_generated_images_never_reuse_a_real_crop(demo):
    _, manifest = demo
    for split in BASE:
        boxes = [(r["photo"], tuple(r["box"])) for r in manifest["images"][split]]
        assert len(boxes) == len(set(boxes))


def test_format_and_size_do_not_give_the_class_away(demo):
    out, _ = demo
    formats, modes, shapes = {}, {}, {}
    for split in LABELLED:
        table = read(out, split)
        for data, source_class in zip(table.column("image").to_pylist(),
                                      table.column("source_class").to_pylist()):
            group = "real" if source_class == 0 else "generated"
            with Image.open(io.BytesIO(data)) as image:
                formats.setdefault(group, Counter())[image.format] += 1
                modes.setdefault(group, set()).add(image.mode)
                shapes.setdefault(group, []).append(image.size)
    for group in ("real", "generated"):
        assert set(formats[group]) == {"JPEG", "PNG", "WEBP"}, formats[group]
        assert {"L", "P", "RGBA", "RGB"} <= modes[group], modes[group]
        assert any(w != h for w, h in shapes[group])
    for side in (0, 1):
        real = [s[side] for s in shapes["real"]]
        generated = [s[side] for s in shapes["generated"]]
        assert abs(sum(real) / len(real) - sum(generated) / len(generated)) < 40


def test_same_seed_gives_identical_files(demo, tmp_path):
    out, manifest = demo
    again = make_demo_data.make_demo_data(tmp_path / "again", seed=0)
    assert again == manifest
    assert file_hashes(tmp_path / "again") == file_hashes(out)


def test_cli_skips_existing_dataset(demo, capsys):
    out, _ = demo
    train = out / "data" / "train" / "part-0.parquet"
    before = train.stat().st_mtime_ns
    assert make_demo_data.main(["--out", str(out)]) == 0
    assert "exists" in capsys.readouterr().out
    assert train.stat().st_mtime_ns == before


def difference_beyond_gain_and_offset(image: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute difference (grey levels) left after the best per-channel gain and offset
    mapping ``reference`` onto ``image``: a brightness or contrast change does not count."""
    errors = []
    for channel in range(image.shape[2]):
        target = image[:, :, channel].ravel().astype(np.float64)
        design = np.c_[reference[:, :, channel].ravel(), np.ones(target.size)]
        coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
        errors.append(np.abs(target - design @ coefficients).mean())
    return float(np.mean(errors))


def test_no_generator_is_an_ordinary_resize_of_its_source():
    """Users up-scale real photos with ordinary filters, so a demo generator that is one of them
    would teach the detector to call processed real photos generated: each generator must leave
    a trace that a PIL resize of its low-resolution source (plus any gain and offset) does not."""
    photos = make_demo_data.load_photos()
    fingerprints = make_demo_data.make_fingerprints(seed=0)
    crops = {"astronaut": photos["astronaut"][96:224, 160:352],  # colour, a face on a smooth ground
             "camera": photos["camera"][200:328, 120:312]}  # grey, fine texture
    for generator, (name, _) in make_demo_data.GENERATORS.items():
        for photo, crop in crops.items():
            for factor in make_demo_data.DOWNSCALE_FACTORS:
                generated = make_demo_data.apply_generator(generator, crop, factor, fingerprints)
                low = make_demo_data.downscale_area(crop.astype(np.float64), factor)
                low = Image.fromarray(np.clip(np.rint(low), 0, 255).astype(np.uint8))
                for filter_name, resampling in ORDINARY_RESAMPLING.items():
                    resized = np.asarray(low.resize((crop.shape[1], crop.shape[0]), resampling))
                    difference = difference_beyond_gain_and_offset(generated, resized)
                    assert difference > ROUNDING_ERROR, (name, photo, factor, filter_name, difference)


def test_a_dataset_written_by_other_generator_code_is_not_reused(demo, tmp_path):
    root, _ = demo
    out = tmp_path / "copy"
    import shutil

    shutil.copytree(root, out)
    assert make_demo_data.is_current(out)
    manifest = json.loads((out / "MANIFEST.json").read_text())
    manifest["generator_code"] = "an older script"
    (out / "MANIFEST.json").write_text(json.dumps(manifest))
    assert not make_demo_data.is_current(out)
