"""The mutation check's breakages still fit the code they break.

Each breakage of ``tools/mutation_check.py`` is a text edit that must match
exactly one place of the current code; when a refactor moves that text, the
check would stop at that breakage after an hour of work. This keeps the list in
step with the code, in a second, and checks that every guarding test exists.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from mutation_check import BREAKAGES, REPO, end_processes_in


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda b: b.name)
def test_every_edit_of_a_breakage_matches_exactly_one_place_of_the_code(breakage):
    edited = {}
    for file, old, new in breakage.edits:
        text = edited.get(file, (REPO / file).read_text())
        assert text.count(old) == 1, f"{breakage.name}: {file} holds its text {text.count(old)} times:\n{old}"
        edited[file] = text.replace(old, new)
    for file, text in edited.items():
        if file.endswith(".py"):
            ast.parse(text, filename=file)  # a broken copy that does not even parse would fail every test


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda b: b.name)
def test_every_guarding_test_of_a_breakage_exists(breakage):
    for selection in breakage.tests:
        file, _, name = selection.partition("::")
        assert (REPO / file).is_file(), f"{breakage.name}: no test file {file}"
        if name:
            assert name.split("[")[0] in _test_names(REPO / file), f"{breakage.name}: no test {selection}"


def test_breakage_names_are_unique_and_the_issue_table_is_covered():
    names = [b.name for b in BREAKAGES]
    assert len(names) == len(set(names))
    assert sum(b.origin == "issue 21" for b in BREAKAGES) >= 6
    assert sum(b.origin == "own" for b in BREAKAGES) >= 6


def test_processes_left_in_the_broken_copy_are_ended(tmp_path):
    """A breakage may leave a stage's workers running in the copy; they are ended before the next breakage."""
    inside, outside = tmp_path / "copy" / "solution", tmp_path / "elsewhere"
    inside.mkdir(parents=True)
    outside.mkdir()
    sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=folder)
                for folder in (inside, outside)]
    try:
        assert end_processes_in(tmp_path / "copy") == [sleepers[0].pid]
        assert sleepers[0].wait(timeout=10) != 0
        assert sleepers[1].poll() is None
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()
