"""The demo run the suite shares: the demo dataset and the six stages on it through the harness.

It takes four minutes of the suite, so it runs once per session, in a process of its own. With
several pytest workers (``pytest -n 2``) the first worker to start becomes the run's owner and every
worker waits for the same files. Completeness is read from the files themselves: ``demo/MANIFEST.json``
is written last by the demo data generator, ``run/scorecard.json`` last by the harness.

Run as a script (``python tests/demorun.py <folder>``) it makes whatever of the two is missing in
``<folder>``: that is the background process.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

REPO = Path(__file__).resolve().parents[1]
SOLUTION = REPO / "solution"

# Timeouts of the demo run as a share of the official ones (600 s -> 60 s, 1800 s -> 180 s).
DEMO_TIMEOUT_SCALE = float(os.environ.get("AMLS_TEST_TIMEOUT_SCALE", "0.1"))
# Environment variables that would let a stage's caches bypass the HOME it is given.
HOME_OVERRIDES = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR", "TORCH_HOME")
# Longer than any demo run on the 2-core machine, to end a wait on a run that hangs.
WAIT_LIMIT_SECONDS = 1800


def data_done(location: Path) -> bool:
    return (location / "demo" / "MANIFEST.json").exists()


def run_done(location: Path) -> bool:
    return (location / "run" / "scorecard.json").exists()


def make(location: Path) -> None:
    """Make the demo dataset and the demo run under ``location``, keeping whichever is already complete."""
    from make_demo_data import make_demo_data

    root, out = location / "demo", location / "run"
    if not data_done(location):
        shutil.rmtree(root, ignore_errors=True)
        make_demo_data(root, seed=0)
    if not run_done(location):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        grade_with_fresh_home(root, out)


def grade_with_fresh_home(demo_root: Path, out: Path) -> dict:
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


class SharedDemoRun:
    """The demo run of ``location``, made at most once by whichever process of the session starts first.

    The owner holds ``location/.lock`` (an OS file lock: released if the owner dies) while its background
    process runs; the others know the run is over when they can take the lock.
    """

    def __init__(self, location: Path, environment: dict | None = None):
        self.location = location
        self.environment = environment  # of the background process (default: this process's)
        self.log = location / "demorun.log"
        self._lock = FileLock(str(location / ".lock"))
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start making what is missing in the background, unless it is complete or another process makes it."""
        self.location.mkdir(parents=True, exist_ok=True)
        if self._process is not None or run_done(self.location):
            return
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return  # another worker of this session makes it
        if run_done(self.location):
            self._lock.release()
            return
        with open(self.log, "w") as log:
            self._process = subprocess.Popen([sys.executable, __file__, str(self.location)], cwd=REPO,
                                             env=self.environment, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT)

    @property
    def making(self) -> bool:
        """Whether this process started the background run (and owns the lock)."""
        return self._process is not None

    def wait_for(self, done) -> None:
        """Block until ``done(location)`` holds; fail with the run's log if the run ended without it."""
        self.start()  # no-op when it is complete or under way
        deadline = time.monotonic() + WAIT_LIMIT_SECONDS
        while not done(self.location):
            if not self._running():
                if done(self.location):
                    break
                raise RuntimeError(f"the demo run ended without its output; its log ({self.log}):\n"
                                   + self._log_tail())
            if time.monotonic() > deadline:
                raise RuntimeError(f"the demo run is still not done after {WAIT_LIMIT_SECONDS} s; log: {self.log}")
            time.sleep(0.5)

    def finish(self) -> None:
        """Wait for the background process (other workers may still need its files) and free the lock."""
        if self._process is not None:
            self._process.wait()
            self._process = None
            self._lock.release()

    def scorecard(self) -> dict:
        return json.loads((self.location / "run" / "scorecard.json").read_text())

    def _running(self) -> bool:
        if self._process is not None:
            if self._process.poll() is None:
                return True
            self.finish()
            return False
        try:
            self._lock.acquire(timeout=0)  # free: nobody is making the run
        except Timeout:
            return True
        self._lock.release()
        return False

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


if __name__ == "__main__":
    # The import paths pytest gives the tests (pyproject.toml, [tool.pytest.ini_options] pythonpath).
    sys.path[:0] = [str(REPO / folder) for folder in ("solution", ".", "tests", "tools", "benchmarks", "report")]
    make(Path(sys.argv[1]))
