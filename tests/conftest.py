"""Shared fixtures: the demo dataset and one demo run of the six stages through the harness.

The demo run is the expensive part of the suite (a few minutes), so it happens
once per session and every test that needs trained artifacts reads it. Its stages
get a fresh, empty HOME and TMPDIR and their workspace is kept, so a test can
check that no stage wrote outside ``artifacts/``.

``AMLS_TEST_DEMO_RUN=<folder>`` keeps the demo dataset and the demo run in that
folder and reuses them when a complete run is already there: the mutation check
(``tools/mutation_check.py``) makes the run once with the unbroken code and then
runs, for each breakage, only tests that exercise the broken code themselves.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOLUTION = REPO / "solution"

os.environ.setdefault("MPLBACKEND", "Agg")

# Timeouts of the demo run as a share of the official ones (600 s -> 60 s, 1800 s -> 180 s).
DEMO_TIMEOUT_SCALE = float(os.environ.get("AMLS_TEST_TIMEOUT_SCALE", "0.1"))


DEMO_RUN_CACHE = os.environ.get("AMLS_TEST_DEMO_RUN")
# Environment variables that would let a stage's caches bypass the HOME it is given.
HOME_OVERRIDES = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR", "TORCH_HOME")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run the tests marked slow (make test-slow)")


def pytest_collection_modifyitems(config, items):
    """Tests marked slow are skipped, with the reason, unless --run-slow: the suite checks the same promise
    more cheaply, and stays under ten minutes on the 2-core machine."""
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow real-conditions twin; run with --run-slow (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The embedded demo dataset (course layout plus labels/), generated once."""
    from make_demo_data import make_demo_data

    if DEMO_RUN_CACHE:
        root = Path(DEMO_RUN_CACHE) / "demo"
        if not (root / "MANIFEST.json").exists():
            shutil.rmtree(root, ignore_errors=True)
            make_demo_data(root, seed=0)
        return root
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, seed=0)
    return root


def _grade_with_fresh_home(demo_root: Path, out: Path) -> dict:
    """The six stages through the harness; the stages see an empty HOME and TMPDIR under ``out``."""
    from aidetect.paths import environment
    from grade import copy_build_context, grade

    copy_build_context(str(SOLUTION), str(out / "expected_copy"))  # what the harness copies, by the same rules
    given = {"HOME": out / "home", "TMPDIR": out / "tmp"}
    for folder in given.values():
        folder.mkdir(parents=True)
    with environment(**{key: str(folder) for key, folder in given.items()}, **dict.fromkeys(HOME_OVERRIDES)):
        return grade(str(demo_root), str(SOLUTION), workspace=str(out / "ws"), timeout_scale=DEMO_TIMEOUT_SCALE,
                     out=str(out / "scorecard.json"), artifacts_out=str(out / "artifacts"), keep_workspace=True,
                     quiet=True)


@pytest.fixture(scope="session")
def demo_run(demo_root, tmp_path_factory) -> dict:
    """The six stages on the demo data through the grading harness (read-only data, no network).

    Returns the scorecard with ``artifacts`` (a copy of solution/artifacts), ``data_root``,
    ``out_dir`` (logs), ``solution_copy`` (the kept workspace copy the stages ran in),
    ``expected_copy`` (what the harness copied in, untouched) and ``given_dirs`` (HOME, TMPDIR).
    """
    if DEMO_RUN_CACHE and (Path(DEMO_RUN_CACHE) / "run" / "scorecard.json").exists():
        out = Path(DEMO_RUN_CACHE) / "run"
        scorecard = json.loads((out / "scorecard.json").read_text())
    else:
        out = Path(DEMO_RUN_CACHE) / "run" if DEMO_RUN_CACHE else tmp_path_factory.mktemp("demo_run")
        if DEMO_RUN_CACHE:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
        scorecard = _grade_with_fresh_home(demo_root, out)
    scorecard["artifacts"] = out / "artifacts"
    scorecard["data_root"] = demo_root
    scorecard["out_dir"] = out
    scorecard["solution_copy"] = out / "ws" / "solution"
    scorecard["expected_copy"] = out / "expected_copy"
    scorecard["given_dirs"] = {"HOME": out / "home", "TMPDIR": out / "tmp"}
    return scorecard


@pytest.fixture(scope="module")
def detector_artifacts(demo_run, tmp_path_factory) -> Path:
    """The trained task02 detector of the demo run, without its predictions."""
    from stagerun import task_detector_only

    return task_detector_only(demo_run["artifacts"], tmp_path_factory.mktemp("detector"))
