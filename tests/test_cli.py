"""``aidetect score`` and ``Detector.predict_images`` label images as the predict stages do."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd

from stagerun import encode, noise_image, package_env, read_predictions, run_stage, write_labelled_file

from aidetect import cli
from aidetect.detector import Detector
from aidetect.labels import BINARY_NAMES
from aidetect.paths import shipped_model_dir
from aidetect.settings import DETECTION


def score_json(capsys, *args) -> list[dict]:
    assert cli.main(["score", *map(str, args), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_api_the_command_and_the_predict_stage_give_the_same_labels(demo_root, tmp_path, capsys):
    folder = shipped_model_dir("task02")
    artifacts = tmp_path / "artifacts"
    shutil.copytree(folder, artifacts / "task02")
    predict_dir = demo_root / "data" / "predict"
    stage = run_stage("predict", demo_root / "data", artifacts, timeout=600)
    assert stage.returncode == 0, stage.output[-3000:]
    assert f"settings: {DETECTION}" in stage.stdout  # the operating point, logged as the stage starts
    from_stage = dict(read_predictions(artifacts / "task02" / "predictions.csv"))
    raw = pd.read_parquet(predict_dir)

    api = Detector.load(folder).predict_images(list(raw["image"]))
    command = score_json(capsys, predict_dir, "--model", folder)

    assert [p.error for p in api] == [None] * len(raw)
    assert {int(r): p.label for r, p in zip(raw["row_id"], api)} == from_stage
    assert len(set(from_stage.values())) == 2, "both labels occur, so the comparison can fail"
    by_row = {int(row["image"].rsplit("#row_id=", 1)[1]): row for row in command}
    assert {r: row["label"] for r, row in by_row.items()} == {r: BINARY_NAMES[v] for r, v in from_stage.items()}
    assert [by_row[int(r)]["score"] for r in raw["row_id"]] == [p.score for p in api]


def test_unreadable_inputs_are_listed_with_their_error_and_the_rest_scored(tmp_path, capsys):
    good = tmp_path / "photos" / "noise.png"
    good.parent.mkdir()
    good.write_bytes(encode(noise_image(80, 60), "PNG"))
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "photos" / "notes.txt").write_text("a folder's other files are not images")
    labelled = write_labelled_file(tmp_path / "split.parquet", [encode(noise_image(70, 50, 1), "JPEG"), None], [0, 1])
    (tmp_path / "other.parquet").write_bytes(b"PAR1 not really")

    rows = score_json(capsys, tmp_path / "photos", labelled, tmp_path / "other.parquet")  # the shipped detector

    by_name = {row["image"]: row for row in rows}
    assert sorted(by_name) == sorted([str(good), str(tmp_path / "photos" / "broken.jpg"), f"{labelled}#row=0",
                                      f"{labelled}#row=1", str(tmp_path / "other.parquet")])
    for name in (str(good), f"{labelled}#row=0"):
        assert by_name[name]["label"] in ("real", "ai_generated") and by_name[name]["error"] is None
    for name in (str(tmp_path / "photos" / "broken.jpg"), f"{labelled}#row=1", str(tmp_path / "other.parquet")):
        assert by_name[name]["label"] is None and by_name[name]["error"], name


def test_a_usage_error_is_the_only_failure_status(tmp_path):
    image = tmp_path / "noise.png"
    image.write_bytes(encode(noise_image(64, 64), "PNG"))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "aidetect", "score", *map(str, args)], capture_output=True,
                              text=True, env=package_env(), timeout=300)

    scored = run(image, "--task", "task02", "--format", "csv")
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert scored.stdout.splitlines()[0] == "image,score,label,error"
    assert scored.stdout.splitlines()[1].startswith(f"{image},")
    missing = run(tmp_path / "missing.png")
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    no_detector = run(image, "--model", tmp_path)
    assert no_detector.returncode == 2 and "cannot load the detector" in no_detector.stderr
