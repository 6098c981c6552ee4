"""Shared fixtures: the demo dataset and one demo run of the six stages through the harness.

The demo run is the expensive part of the suite (a few minutes), so it happens
once per session and every test that needs trained artifacts reads it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOLUTION = REPO / "solution"
for path in (SOLUTION, REPO / "tools", REPO):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

os.environ.setdefault("MPLBACKEND", "Agg")

# Timeouts of the demo run as a share of the official ones (600 s -> 60 s, 1800 s -> 180 s).
DEMO_TIMEOUT_SCALE = float(os.environ.get("AMLS_TEST_TIMEOUT_SCALE", "0.1"))


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The embedded demo dataset (course layout plus labels/), generated once."""
    from make_demo_data import make_demo_data

    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, seed=0)
    return root


@pytest.fixture(scope="session")
def demo_run(demo_root, tmp_path_factory) -> dict:
    """The six stages on the demo data through the grading harness (read-only data, no network).

    Returns the scorecard with ``artifacts`` (a copy of solution/artifacts) and ``data_root``.
    """
    from grade import grade

    out = tmp_path_factory.mktemp("demo_run")
    scorecard = grade(
        str(demo_root), str(SOLUTION), workspace=str(out / "ws"), timeout_scale=DEMO_TIMEOUT_SCALE,
        out=str(out / "scorecard.json"), artifacts_out=str(out / "artifacts"), quiet=True,
    )
    scorecard["artifacts"] = out / "artifacts"
    scorecard["data_root"] = demo_root
    scorecard["out_dir"] = out
    return scorecard


@pytest.fixture(scope="module")
def detector_artifacts(demo_run, tmp_path_factory) -> Path:
    """The trained task02 detector of the demo run, without its predictions."""
    from stagerun import task_detector_only

    return task_detector_only(demo_run["artifacts"], tmp_path_factory.mktemp("detector"))
