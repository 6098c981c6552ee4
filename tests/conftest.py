"""Shared fixtures: the demo dataset and one demo run of the six stages through the harness.

The demo run is the expensive part of the suite (a few minutes), so it happens once per session, in
a process of its own (``demorun.py``), and every test that needs trained artifacts reads it. Its
stages get a fresh, empty HOME and TMPDIR and their workspace is kept, so a test can check that no
stage wrote outside ``artifacts/``.

``make test`` runs the suite in two worker processes (pytest-xdist, ``--dist loadfile``: the tests of
a file share its module fixtures in one worker); the first worker to start makes the demo run and
the other waits for the same files.

``AMLS_TEST_DEMO_RUN=<folder>`` keeps the demo dataset and the demo run in that
folder and reuses them when a complete run is already there: the mutation check
(``tools/mutation_check.py``) makes the run once with the unbroken code and then
runs, for each breakage, only tests that exercise the broken code themselves.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from demorun import SharedDemoRun, data_done, run_done

os.environ.setdefault("MPLBACKEND", "Agg")
DEMO_RUN_ENVIRONMENT = dict(os.environ)  # the demo run runs alone: as the suite runs without workers
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the two cores: torch's OpenMP threads (in a worker and in the stages it starts) then
    # wait for a busy core by sleeping, not spinning. Scheduling only: no result changes.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEMO_RUN_CACHE = os.environ.get("AMLS_TEST_DEMO_RUN")


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


@pytest.fixture(scope="session", autouse=True)
def shared_demo_run(request, tmp_path_factory) -> SharedDemoRun:
    """The session's demo run, made at the first test when any test needs it (by one worker for all)."""
    if DEMO_RUN_CACHE:
        location = Path(DEMO_RUN_CACHE)
    else:
        base = tmp_path_factory.getbasetemp()
        # Under pytest-xdist each worker has its own folder in the session's; the run is shared from there.
        location = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "demo_shared"
    run = SharedDemoRun(location, DEMO_RUN_ENVIRONMENT)
    if any("demo_root" in item.fixturenames for item in request.session.items):  # demo_run needs it too
        # Every test waits for it: its stages run under deadlines (a tenth of the official timeouts) that a
        # test running beside it could make binding, and the trained models would then depend on the load.
        run.wait_for(run_done)
    yield run
    run.finish()


@pytest.fixture(scope="session")
def demo_root(shared_demo_run) -> Path:
    """The embedded demo dataset (course layout plus labels/), generated once."""
    shared_demo_run.wait_for(data_done)
    return shared_demo_run.location / "demo"


@pytest.fixture(scope="session")
def demo_run(demo_root, shared_demo_run) -> dict:
    """The six stages on the demo data through the grading harness (read-only data, no network).

    Returns the scorecard with ``artifacts`` (a copy of solution/artifacts), ``data_root``,
    ``out_dir`` (logs), ``solution_copy`` (the kept workspace copy the stages ran in),
    ``expected_copy`` (what the harness copied in, untouched) and ``given_dirs`` (HOME, TMPDIR).
    """
    shared_demo_run.wait_for(run_done)
    out = shared_demo_run.location / "run"
    scorecard = shared_demo_run.scorecard()
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
