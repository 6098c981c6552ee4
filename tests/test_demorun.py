"""The suite's shared demo run (tests/demorun.py): made once for all workers, and a failure is reported, not waited on."""
from __future__ import annotations

import pytest
from filelock import FileLock

from demorun import SharedDemoRun, data_done


def test_a_worker_that_finds_the_run_under_way_waits_for_it_instead_of_making_it_again(tmp_path):
    owner = FileLock(str(tmp_path / ".lock"))
    owner.acquire()  # another worker is making the run
    try:
        run = SharedDemoRun(tmp_path)
        run.start()
        assert not run.making
        (tmp_path / "demo").mkdir()
        (tmp_path / "demo" / "MANIFEST.json").write_text("{}")  # the owner's demo data is complete
        run.wait_for(data_done)  # returns without starting anything
        assert not run.making
    finally:
        owner.release()


def test_a_demo_run_that_fails_ends_the_wait_with_its_log(tmp_path):
    (tmp_path / "demo").write_text("a file where the demo dataset's folder should be")
    run = SharedDemoRun(tmp_path)
    with pytest.raises(RuntimeError, match="ended without its output") as failure:
        run.wait_for(data_done)
    assert "Error" in str(failure.value)  # the background process's traceback, from its log
    assert not run.making  # finished: the lock is free for the next attempt
    lock = FileLock(str(tmp_path / ".lock"))
    lock.acquire(timeout=0)  # raises Timeout if the failed run still held it
    lock.release()
