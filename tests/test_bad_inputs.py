"""Nothing a dataset can hold breaks the pipeline: odd images, odd parquet files, odd labels.

Decoding (``aidetect.decode``) turns every readable image into HxWx3 uint8 and
refuses the rest with a DecodeError, quickly and without exhausting memory.
The predict stage labels the refused rows real (0), lists them, and still writes
every row_id exactly once; a file that breaks the data contract stops it with a
one-line message naming the file and column. The cleaning recipe drops and
reports training labels outside 0..5.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from stagerun import (SOLUTION, assert_complete, encode, fresh_artifacts, noise_image, package_env, run_stage,
                      write_labelled_file, write_predict_file)

from aidetect.budget import Deadline
from aidetect.decode import MAX_PIXELS, decode_rgb
from aidetect.errors import DataError, DecodeError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
# The official predict budget: these tests are about odd inputs, not time, so the deadline must not bind even
# on a busy machine (starting the interpreter alone took 57 s at load 7 under nice 15). It costs nothing when
# the stage ends early.
PREDICT_TIMEOUT = 600


# --- odd image files ----------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` grey pixels (the classic bomb header)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1))) + _png_chunk(b"IEND", b""))


def compressible_png(width: int, height: int) -> bytes:
    """A complete, valid all-black grey PNG, streamed through zlib so the pixels never sit in memory."""
    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the pixels
    body = b"".join(compressor.compress(row * 500) for _ in range(height // 500))
    body += compressor.compress(row * (height % 500)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def frames(fmt: str) -> bytes:
    first, *rest = [Image.new("RGB", (16, 12), colour) for colour in (RED, GREEN, BLUE)]
    animation = {"duration": 100, "loop": 0} if fmt == "GIF" else {}
    return encode(first, fmt, save_all=True, append_images=rest, **animation)


def exif_rotated() -> bytes:
    """40 wide, 20 high as stored, red block at the stored top-left, EXIF orientation 6 (rotate 90 CW)."""
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    image.paste(RED, (0, 0, 6, 6))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def palette_with_transparency() -> bytes:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))
    return encode(image, "PNG", transparency=0)


def sixteen_bit() -> bytes:
    pixels = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100).astype(np.uint16)
    return encode(Image.fromarray(pixels), "PNG")  # stored as a 16-bit grey PNG, opens as I;16


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (10, 6), (0, 255, 0, 0)), "JPEG", quality=95)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


JPEG = encode(noise_image(64, 48, 1), "JPEG", quality=90)
PNG = encode(noise_image(64, 48, 2), "PNG")

# name -> (bytes, expected (height, width) or None when the image must be refused)
DECODABLE = {
    "jpeg": (lambda: JPEG, (48, 64)),
    "png": (lambda: PNG, (48, 64)),
    "webp": (lambda: encode(noise_image(30, 20, 3), "WEBP", quality=90), (20, 30)),
    "grey L png": (lambda: encode(noise_image(30, 20, 4, "L"), "PNG"), (20, 30)),
    "grey L jpeg": (lambda: encode(noise_image(30, 20, 4, "L"), "JPEG"), (20, 30)),
    "bilevel 1": (lambda: encode(noise_image(30, 20, 4, "1"), "PNG"), (20, 30)),
    "palette P": (lambda: encode(noise_image(30, 20, 5).convert("P"), "PNG"), (20, 30)),
    "palette with transparency": (palette_with_transparency, (8, 8)),
    "RGBA": (lambda: encode(noise_image(30, 20, 6, "RGBA"), "PNG"), (20, 30)),
    "LA": (lambda: encode(noise_image(30, 20, 7, "LA"), "PNG"), (20, 30)),
    "16-bit I;16 png": (sixteen_bit, (20, 30)),
    "float F tiff": (lambda: encode(Image.fromarray(np.linspace(-1, 3, 600, dtype=np.float32).reshape(20, 30)), "TIFF"),
                     (20, 30)),
    "CMYK jpeg": (cmyk_jpeg, (6, 10)),
    "1x1": (lambda: encode(Image.new("RGB", (1, 1), GREEN), "PNG"), (1, 1)),
    "2x3": (lambda: encode(noise_image(2, 3, 8), "JPEG"), (3, 2)),
    "animated gif": (lambda: frames("GIF"), (12, 16)),
    "multi-frame tiff": (lambda: frames("TIFF"), (12, 16)),
    "exif rotation": (exif_rotated, (40, 20)),
}
UNDECODABLE = {
    "None": lambda: None,
    "zero bytes": lambda: b"",
    "truncated jpeg": lambda: truncated(JPEG),
    "truncated png": lambda: truncated(PNG),
    "random bytes": lambda: np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
    "text file": lambda: b"row_id,predicted_label\nthis is not an image\n" * 20,
    "pdf header": lambda: b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<<>>\n%%EOF\n",
    "png header claiming 50000x50000": lambda: png_claiming(50_000, 50_000),
    "valid all-black png of 7000x7000": lambda: compressible_png(7000, 7000),
}


@pytest.mark.parametrize("name", list(DECODABLE))
def test_decode_gives_rgb_uint8_for_every_mode_and_format(name):
    make, (height, width) = DECODABLE[name]
    rgb = decode_rgb(make())
    assert rgb.dtype == np.uint8 and rgb.shape == (height, width, 3)
    assert rgb.flags["C_CONTIGUOUS"] and rgb.flags["WRITEABLE"]


@pytest.mark.parametrize("name", list(UNDECODABLE))
def test_decode_refuses_what_is_not_an_image_with_a_decode_error(name):
    started = time.monotonic()
    with pytest.raises(DecodeError) as info:
        decode_rgb(UNDECODABLE[name]())
    assert str(info.value) and "BytesIO" not in str(info.value)  # says why, for the predict report
    if name in ("random bytes", "text file", "pdf header"):
        assert str(info.value).startswith("not an image format PIL reads")
    assert time.monotonic() - started < 5


def test_decode_keeps_what_the_pixels_say():
    assert (decode_rgb(DECODABLE["1x1"][0]()) == GREEN).all()
    # the first frame of an animation or a multi-page file
    assert (decode_rgb(frames("GIF")) == RED).all()
    assert (decode_rgb(frames("TIFF")) == RED).all()
    # 16-bit grey spans the 8-bit range, not clipped to white
    grey = decode_rgb(sixteen_bit())
    assert grey[0, 0, 0] == 0 and 200 < grey.max() <= 255 and (grey[..., 0] == grey[..., 2]).all()
    # transparent palette entries and CMYK come out as colours, not garbage
    palette = decode_rgb(palette_with_transparency())
    assert (palette[:, :4] == BLUE).all() and (palette[:, 4:] == RED).all()  # alpha dropped, colour kept
    assert tuple(decode_rgb(cmyk_jpeg())[3, 5]) == pytest.approx((255, 0, 255), abs=8)


def test_decode_applies_the_exif_rotation():
    rgb = decode_rgb(exif_rotated())
    assert rgb.shape == (40, 20, 3)  # stored 40 wide x 20 high, displayed 20 wide x 40 high
    top_right, top_left = rgb[:4, -4:].reshape(-1, 3).mean(0), rgb[:4, :4].reshape(-1, 3).mean(0)
    assert top_right[0] > 200 and top_right[1] < 60  # orientation 6: the stored top-left is now top-right
    assert top_left.min() > 200  # white


def test_a_jpeg_without_its_end_marker_is_refused_as_truncated():
    """PIL reads the last entropy-coded bytes only with LOAD_TRUNCATED_IMAGES, which decode.py keeps off:
    such a file is refused (and its predict row labelled real), never decoded from partly made-up pixels."""
    assert JPEG[-2:] == b"\xff\xd9"
    with pytest.raises(DecodeError, match="truncated"):
        decode_rgb(JPEG[:-2])


BOMB_PROBE = textwrap.dedent("""
    import sys, time
    from aidetect.decode import decode_rgb
    from aidetect.errors import DecodeError
    def hwm():
        return [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
    data = open(sys.argv[1], "rb").read()
    before, started = hwm(), time.monotonic()
    try:
        decode_rgb(data)
        outcome = "decoded"
    except DecodeError as exc:
        outcome = "refused: " + str(exc)
    print(outcome)
    print(round(time.monotonic() - started, 3), round(hwm() - before, 1))
""")


@pytest.mark.parametrize("width, height", [(50_000, 50_000), (10_000, 10_000), (7000, 7000)])
def test_decompression_bomb_is_refused_fast_and_in_little_memory(tmp_path, width, height):
    """50000x50000 (header only) and complete, highly compressible PNGs above MAX_PIXELS."""
    assert width * height > MAX_PIXELS
    data = png_claiming(width, height) if width == 50_000 else compressible_png(width, height)
    assert len(data) < 1_000_000  # a few hundred kB that would decode to 50 MB - 2.5 GB
    (tmp_path / "bomb.png").write_bytes(data)
    script = tmp_path / "probe.py"
    script.write_text(BOMB_PROBE.format(solution=str(SOLUTION)))
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "bomb.png")], capture_output=True, text=True,
                            timeout=60, env=package_env())
    assert result.returncode == 0, result.stderr
    outcome, numbers = result.stdout.strip().splitlines()[-2:]
    seconds, extra_mb = map(float, numbers.split())
    assert outcome.startswith("refused") and ("bomb" in outcome or "exceeds" in outcome), outcome
    assert seconds < 2.0
    assert extra_mb < 50, f"refusing the bomb took {extra_mb} MB"


@pytest.mark.parametrize("width, height", [(50_000, 50_000), (10_000, 10_000), (7000, 7000)])
def test_the_header_scan_of_clean_py_refuses_bombs_too(width, height):
    from aidetect.decode import read_size

    data = png_claiming(width, height) if width == 50_000 else compressible_png(width, height)
    with pytest.raises(DecodeError, match="bomb|exceeds"):
        read_size(data)
    assert read_size(PNG) == (64, 48)


STRIP_PROBE = textwrap.dedent("""
    import sys
    from PIL import Image
    import io, numpy as np
    from aidetect.decode import decode_rgb
    from aidetect.crops import CROP_SIZE, square_crop
    def hwm():
        return [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
    buffer = io.BytesIO()
    Image.new("RGB", (1000, 1), (10, 20, 30)).save(buffer, "PNG")
    rgb = decode_rgb(buffer.getvalue())
    before = hwm()
    crop = square_crop(rgb, CROP_SIZE)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3), crop.shape
    print(round(hwm() - before, 1))
""")


def test_a_thin_strip_is_cropped_without_blowing_up_memory(tmp_path):
    script = tmp_path / "strip.py"
    script.write_text(STRIP_PROBE.format(solution=str(SOLUTION)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                            env=package_env())
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[-1]) < 100, f"cropping a 1000x1 image took {result.stdout.split()[-1]} MB"


# --- the predict stage on odd data ----------------------------------------------------


def predict_in_process(data_dir: Path, artifacts: Path, monkeypatch) -> dict:
    """predict_task as predict.py calls it, in this process (saves the interpreter start)."""
    from aidetect.detector import predict_task

    monkeypatch.setenv("AMLS_DATA_DIR", str(data_dir))
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(artifacts))
    return predict_task("task02", Deadline(60, start=time.monotonic()))


def test_predict_survives_every_odd_image_and_loses_no_row(detector_artifacts, tmp_path):
    good = {name: make() for name, (make, _) in DECODABLE.items()}
    bad = {name: make() for name, make in UNDECODABLE.items()}
    bad["valid all-black png of 10000x10000"] = compressible_png(10_000, 10_000)
    rng = np.random.default_rng(0)
    names = list(good) + list(bad)
    row_ids = (rng.permutation(len(names)) * 7 + 1000).tolist()  # scattered, not 0..n-1, not sorted
    images = [good.get(n, bad.get(n)) for n in names]
    data = tmp_path / "data"
    write_predict_file(data / "predict" / "part-0.parquet", row_ids, images)
    artifacts = fresh_artifacts(detector_artifacts, tmp_path)

    result = run_stage("predict", data, artifacts, timeout=PREDICT_TIMEOUT)

    assert result.returncode == 0, result.output[-3000:]
    assert "Traceback" not in result.output
    labels = assert_complete(artifacts / "task02" / "predictions.csv", row_ids)
    expected_bad = {rid for rid, n in zip(row_ids, names) if n in bad}
    report = json.loads((artifacts / "task02" / "predict_report.json").read_text())
    assert {u["row_id"] for u in report["undecodable"]} == expected_bad
    assert all(u["error"] for u in report["undecodable"])
    assert all(labels[rid] == 0 for rid in expected_bad)
    assert report["n_rows"] == len(names) and report["unscored_row_ids"] == []
    warning = next(line for line in result.stdout.splitlines() if "could not be decoded" in line)
    assert all(str(rid) in warning for rid in expected_bad)
    assert result.peak_rss_mb < 2500, f"predict peaked at {result.peak_rss_mb:.0f} MB"


def test_predict_reads_many_files_extra_columns_any_order_and_empty_files(detector_artifacts, tmp_path):
    data, ids, next_id = tmp_path / "data", [], 0
    layouts = [
        dict(order=["row_id", "image"]),
        dict(order=["image", "row_id"]),
        dict(extra={"caption": pa.array(["a", "b", "c"]), "width": pa.array([1, 2, 3], pa.int64())},
             order=["caption", "image", "width", "row_id"]),
        dict(row_id_type=pa.int64(), image_type=pa.large_binary()),
        dict(),  # an empty file
    ]
    for k, layout in enumerate(layouts):
        n = 0 if k == 4 else 3
        file_ids = list(range(next_id + 50 * k, next_id + 50 * k + n))
        write_predict_file(data / "predict" / f"part-{k}.parquet", file_ids,
                           [encode(noise_image(40, 30, 10 + i), "PNG") for i in range(n)], **layout)
        ids += file_ids
    (data / "predict" / "_SUCCESS").write_text("")  # what Spark leaves beside its parquet files
    (data / "predict" / "README.txt").write_text("not data")
    artifacts = fresh_artifacts(detector_artifacts, tmp_path)

    result = run_stage("predict", data, artifacts, timeout=PREDICT_TIMEOUT)

    assert result.returncode == 0, result.output[-3000:]
    assert_complete(artifacts / "task02" / "predictions.csv", ids)
    assert json.loads((artifacts / "task02" / "predict_report.json").read_text())["undecodable"] == []


def test_predict_with_zero_rows_writes_the_header_only(detector_artifacts, tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_predict_file(data / "predict" / "part-0.parquet", [], [])
    artifacts = fresh_artifacts(detector_artifacts, tmp_path)
    report = predict_in_process(data, artifacts, monkeypatch)
    assert report["n_rows"] == 0
    assert (artifacts / "task02" / "predictions.csv").read_text() == "row_id,predicted_label\n"


def test_predict_stops_on_a_missing_column_naming_file_and_column(detector_artifacts, tmp_path):
    data = tmp_path / "data"
    write_predict_file(data / "predict" / "part-0.parquet", [0, 1], [PNG, JPEG])
    write_predict_file(data / "predict" / "part-1.parquet", [2, 3], [PNG, JPEG], order=["row_id"],
                       extra={"picture": pa.array([PNG, JPEG])})
    artifacts = fresh_artifacts(detector_artifacts, tmp_path)

    result = run_stage("predict", data, artifacts, timeout=PREDICT_TIMEOUT)

    assert result.returncode == 2
    assert "Traceback" not in result.output
    error = [line for line in result.stdout.splitlines() if " ERROR " in line]
    assert len(error) == 1 and "part-1.parquet" in error[0] and "missing column 'image'" in error[0], error
    assert not (artifacts / "task02" / "predictions.csv").exists()


@pytest.mark.parametrize("case, message", [
    ("row_id as string", r"part-0.parquet: column 'row_id' has type string, expected integer"),
    ("image as string", r"part-0.parquet: column 'image' has type string, expected binary"),
    ("duplicate row_ids", r"duplicate row_id values \[1, 7\]"),
    ("duplicate row_ids across files", r"duplicate row_id values \[2\]"),
    ("missing row_id", r"part-0.parquet: row_id is missing \(null\) in 1 row"),
])
def test_predict_refuses_a_broken_contract_with_a_clear_error(detector_artifacts, tmp_path, monkeypatch, case,
                                                              message):
    predict = tmp_path / "data" / "predict"
    if case == "row_id as string":
        write_predict_file(predict / "part-0.parquet", ["0", "1"], [PNG, JPEG], row_id_type=pa.string())
    elif case == "image as string":
        write_predict_file(predict / "part-0.parquet", [0, 1], ["a", "b"], image_type=pa.string())
    elif case == "duplicate row_ids":
        write_predict_file(predict / "part-0.parquet", [1, 7, 1, 3, 7], [PNG] * 5)
    elif case == "duplicate row_ids across files":
        write_predict_file(predict / "part-0.parquet", [1, 2], [PNG] * 2)
        write_predict_file(predict / "part-1.parquet", [2, 3], [PNG] * 2)
    else:
        write_predict_file(predict / "part-0.parquet", [0, None, 2], [PNG] * 3)
    artifacts = fresh_artifacts(detector_artifacts, tmp_path)
    stale = [artifacts / "task02" / name for name in ("predictions.csv", "predict_report.json")]
    for path in stale:  # an earlier run's outputs, made on other data
        path.write_text("row_id,predicted_label\n99,1\n" if path.suffix == ".csv" else "{}")
    with pytest.raises(DataError, match=message):
        predict_in_process(tmp_path / "data", artifacts, monkeypatch)
    assert [path.name for path in stale if path.exists()] == []  # a grader must not read the earlier labels


# --- odd training labels ------------------------------------------------------------


def test_recipe_drops_and_reports_source_classes_outside_0_to_5(tmp_path, monkeypatch):
    from aidetect.cleaning import build_recipe, prepare_split, summarise_recipe

    images = [encode(noise_image(48, 40, 100 + i), "PNG") for i in range(10)] + [None, truncated(JPEG)]
    classes = [0, 1, 2, 3, 4, 5, -1, 6, 99, None, 1, 2]
    write_labelled_file(tmp_path / "data" / "train" / "part-0.parquet", images, classes)
    write_labelled_file(tmp_path / "data" / "calibration" / "part-0.parquet",
                        [encode(noise_image(48, 40, 200 + i), "PNG") for i in range(2)], [0, 1])
    monkeypatch.setenv("AMLS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AMLS_ARTIFACTS_DIR", str(tmp_path / "artifacts"))

    recipe = build_recipe()

    train = recipe[recipe["split"] == "train"].sort_values("row")
    assert train["keep"].tolist()[:11] == [True] * 6 + [False] * 5
    assert set(train["reason"].iloc[6:10]) == {"source_class outside 0..5"}
    assert train["reason"].iloc[10].startswith("undecodable: ")
    summary = summarise_recipe(recipe)
    assert summary["dropped_by_reason"]["source_class outside 0..5"] == 4
    assert {6, 7, 8, 9, 10} <= {r["row"] for r in summary["dropped_rows"]}
    kept = summary["kept_per_split_and_class"]["train"]
    assert sorted(kept) == [str(c) for c in range(6)] and sum(kept.values()) == train["keep"].sum()
    # prepare.py decodes only the kept rows; one whose pixels fail (the truncated JPEG, if the
    # recipe kept it from its readable header) is skipped and reported, never a crash.
    info = prepare_split("train", recipe, seed=0)
    assert info["n"] == 6 and info["per_class"] == {str(c): 1 for c in range(6)}
    if train["keep"].iloc[11]:
        assert [f["row"] for f in info["decode_failures"]] == [11]


def test_apply_rules_orders_the_reasons():
    from aidetect.cleaning import RECIPE_COLUMNS, apply_rules

    rows = [  # split, sha1, source_class, width, height, keep, reason
        ("train", "a", 0, 64, 64, True, ""),
        ("train", "a", 1, 64, 64, True, ""),  # same bytes as the row before
        ("train", "b", 7, 64, 64, True, ""),  # unknown class
        ("train", "c", 2, 64, 64, True, ""),  # also in calibration
        ("train", "d", 3, 16, 64, True, ""),  # too small
        ("train", "e", 4, 0, 0, False, "undecodable: broken"),
        ("calibration", "c", 2, 64, 64, True, ""),
        ("calibration", "f", 0, 16, 16, True, ""),  # small is fine outside train
    ]
    scans = pd.DataFrame([dict(zip(["split", "sha1", "source_class", "width", "height", "keep", "reason"], r),
                               file="part-0.parquet", row=i) for i, r in enumerate(rows)])[RECIPE_COLUMNS]
    recipe = apply_rules(scans)
    assert recipe["keep"].tolist() == [True, False, False, False, False, False, True, True]
    assert recipe["reason"].tolist()[1:6] == [
        "exact duplicate within the split", "source_class outside 0..5",
        "identical to a calibration/validation image", "smaller than 32 px", "undecodable: broken"]
