"""The submission packs itself: the right files, nothing of data or runs, under 20 MB, and it refuses when incomplete."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

import make_submission as ms


@pytest.fixture
def fake_repo(tmp_path) -> Path:
    """A copy of the repository's solution and explainability code, plus a dummy report and clutter to leave out."""
    repo = tmp_path / "repo"
    clutter = shutil.ignore_patterns("data", "artifacts", "__pycache__", "*.pyc", ".pytest_cache", "output")
    shutil.copytree(REPO / "solution", repo / "solution", ignore=clutter)
    if (REPO / "explainability").is_dir():
        shutil.copytree(REPO / "explainability", repo / "explainability", ignore=clutter)
    (repo / "explainability").mkdir(exist_ok=True)
    (repo / "explainability" / "explain.py").write_text("print('explain')\n")
    (repo / "report").mkdir()
    (repo / "report" / "report.pdf").write_bytes(b"%PDF-1.7\n% dummy report\n%%EOF\n")
    (repo / "report" / "team.json").write_text(json.dumps({"members": ["Ada Lovelace", "Alan Turing"],
                                                           "student_id": "1234567"}))
    # Clutter that must never reach the zip.
    (repo / "solution" / "data" / "train").mkdir(parents=True)
    (repo / "solution" / "data" / "train" / "part-0.parquet").write_bytes(b"x" * 1000)
    (repo / "solution" / "artifacts" / "task02").mkdir(parents=True)
    (repo / "solution" / "artifacts" / "task02" / "model_best.pt").write_bytes(b"x" * 1000)
    (repo / "solution" / "aidetect" / "__pycache__").mkdir(parents=True, exist_ok=True)
    (repo / "solution" / "aidetect" / "__pycache__" / "models.cpython-311.pyc").write_bytes(b"x")
    (repo / "solution" / ".pytest_cache").mkdir()
    (repo / "solution" / ".pytest_cache" / "README.md").write_text("cache")
    output = repo / "explainability" / "output"
    output.mkdir(parents=True, exist_ok=True)
    (output / "summary.json").write_text("{}")
    (output / "gradcam.png").write_bytes(b"\x89PNG small figure")
    (output / "cache.npy").write_bytes(b"x" * 1000)
    return repo


def names_in(zip_path: Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.testzip() is None
        return archive.namelist()


def test_zip_holds_report_solution_and_explainability_code(fake_repo, tmp_path):
    target = ms.make_submission("1234567", tmp_path / "out", repo=fake_repo)
    assert target.name == "AMLS_Exercise_1234567.zip"
    names = names_in(target)
    for required in ms.REQUIRED:
        assert required in names
    assert "solution/Dockerfile" in names and "solution/.dockerignore" in names
    assert "solution/aidetect/models.py" in names
    assert "explainability/explain.py" in names
    assert "explainability/output/summary.json" in names and "explainability/output/gradcam.png" in names
    assert target.stat().st_size < 20_000_000


def test_zip_leaves_out_data_artifacts_and_caches(fake_repo, tmp_path):
    names = names_in(ms.make_submission("1234567", tmp_path, repo=fake_repo))
    for name in names:
        parts = name.split("/")
        assert not {"data", "artifacts", "__pycache__", ".pytest_cache"} & set(parts[:-1]), name
        assert not name.endswith((".pyc", ".pt", ".npy", ".parquet")), name
    # Only the report, the solution and the explainability folder, at the top.
    assert {name.split("/")[0] for name in names} == {"report.pdf", "solution", "explainability"}


@pytest.mark.parametrize("missing", ["report/report.pdf", "solution/Dockerfile", "solution/requirements.txt",
                                     "solution/train_augmented.py"])
def test_refuses_when_a_required_file_is_missing(fake_repo, tmp_path, missing):
    (fake_repo / missing).unlink()
    with pytest.raises(ms.SubmissionError, match="missing"):
        ms.make_submission("1234567", tmp_path / "out", repo=fake_repo)
    out = tmp_path / "out"
    assert not out.exists() or not list(out.glob("*.zip"))


def test_refuses_when_over_the_size_limit(fake_repo, tmp_path):
    with pytest.raises(ms.SubmissionError, match="MB"):
        ms.make_submission("1234567", tmp_path, repo=fake_repo, max_bytes=1_000)
    assert not list(tmp_path.glob("AMLS_Exercise_*"))


def test_command_line_refuses_with_a_clear_message(tmp_path, capsys):
    status = ms.main(["--id", "0000000", "--out", str(tmp_path), "--report", str(tmp_path / "no_report.pdf")])
    assert status == 1
    assert "refused" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.zip"))


def test_rejects_an_id_that_is_no_file_name(fake_repo, tmp_path):
    with pytest.raises(ms.SubmissionError, match="student ID"):
        ms.make_submission("../x", tmp_path, repo=fake_repo)


@pytest.mark.parametrize("team", [
    {"members": ["Team member 1", "Team member 2"], "student_id": "1234567"},
    {"members": ["Ada Lovelace"], "student_id": "0000000"},
    {"members": [], "student_id": "1234567"},
])
def test_refuses_placeholder_team_data_naming_team_json(fake_repo, tmp_path, team):
    (fake_repo / "report" / "team.json").write_text(json.dumps(team))
    with pytest.raises(ms.SubmissionError, match="report/team.json"):
        ms.make_submission("1234567", tmp_path / "out", repo=fake_repo)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.zip"))


def test_the_committed_team_file_is_checked_by_the_command(tmp_path, capsys):
    team = json.loads((REPO / "report" / "team.json").read_text())
    status = ms.main(["--out", str(tmp_path)])
    if any(str(m).startswith("Team member") for m in team.get("members", [])):
        assert status == 1 and "report/team.json" in capsys.readouterr().err
        assert not list(tmp_path.glob("*.zip"))


def test_refuses_an_id_other_than_the_team_files(fake_repo, tmp_path):
    with pytest.raises(ms.SubmissionError, match="team.json"):
        ms.make_submission("7654321", tmp_path, repo=fake_repo)


def test_refuses_a_zip_with_data_inside(tmp_path):
    names = list(ms.REQUIRED) + ["explainability/explain.py", "solution/data/train/part-0.parquet"]
    with pytest.raises(ms.SubmissionError, match="data"):
        ms.check_contents(names)
