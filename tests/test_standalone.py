"""The repository stands alone: a fresh clone names nothing outside itself.

No tracked file points at the development machine's shared folder or at a machine path, except the
Makefile's one documented default of ``DATA``; committed results name their data by name and content
hash (``benchmarks/result_files.py``), and no benchmark script has a default outside the repository.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

from result_files import data_identity, describe_data, portable  # noqa: E402

# Spelt in pieces, so that this file does not name them itself.
SHARED = ".." + "/shared"
MACHINE = "/" + "work/"
TMP = "/" + "tmp/"
DOCUMENTED_DEFAULT = ("Makefile", "DATA ?= " + SHARED + "/proxy")
RESULT_FOLDERS = ("benchmarks/results/", "explainability/output/")


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.splitlines() if (REPO / name).is_file()]


def offending_lines(name: str, needles: tuple[str, ...]) -> list[str]:
    text = (REPO / name).read_bytes().decode("utf-8", errors="replace")
    return [f"{name}:{number}: {line.strip()[:160]}" for number, line in enumerate(text.splitlines(), 1)
            if any(needle in line for needle in needles) and (name, line.strip()) != DOCUMENTED_DEFAULT]


def test_no_tracked_file_names_the_shared_folder_or_a_machine_path():
    found = [hit for name in tracked_files() for hit in offending_lines(name, (SHARED, MACHINE))]
    assert not found, "tracked files name paths outside the repository:\n" + "\n".join(found)


def test_the_makefile_keeps_its_one_documented_default():
    lines = (REPO / "Makefile").read_text().splitlines()
    assert DOCUMENTED_DEFAULT[1] in lines
    index = lines.index(DOCUMENTED_DEFAULT[1])
    assert lines[index - 1].startswith("#"), "the default of DATA is documented by a comment above it"


def test_committed_results_name_no_temporary_path():
    found = [hit for name in tracked_files() if name.startswith(RESULT_FOLDERS) for hit in offending_lines(name, (TMP,))]
    assert not found, "committed results name temporary paths:\n" + "\n".join(found)


def test_no_script_defaults_to_a_folder_beside_the_repository():
    pattern = re.compile(r"""parents?\b[^\n]*/\s*["']shared["']""")
    found = [name for name in tracked_files() if name.endswith(".py") and pattern.search((REPO / name).read_text())]
    assert not found, f"scripts with a default outside the repository: {found}"


def test_a_result_names_its_data_by_content_not_by_path(tmp_path):
    root = tmp_path / "somedata"
    (root / "data" / "train").mkdir(parents=True)
    (root / "data" / "train" / "part-0.parquet").write_bytes(b"not really parquet, but bytes to hash")
    identity = data_identity(root)
    assert identity == data_identity(root / "data"), "the root and its data/ folder are the same data"
    assert describe_data(identity) == f"somedata (content hash {identity['sha1']})"
    (root / "data" / "train" / "part-0.parquet").write_bytes(b"other bytes")
    assert data_identity(root)["sha1"] != identity["sha1"]

    result = {"data_root": str(root), "log": f"stage clean: data {root}/data",
              "python": str(REPO / ".venv" / "bin" / "python"), "repo": str(REPO)}
    assert portable(result, [root]) == {"data_root": "somedata", "log": "stage clean: data somedata/data",
                                        "python": ".venv/bin/python", "repo": "."}


def test_the_makefile_gives_each_target_one_recipe():
    """A merge that duplicates a target makes make drop one recipe with only a warning."""
    import subprocess

    result = subprocess.run(["make", "-n", "help-does-not-exist"], cwd=REPO, capture_output=True, text=True)
    assert "overriding recipe" not in result.stderr and "ignoring old recipe" not in result.stderr, result.stderr
