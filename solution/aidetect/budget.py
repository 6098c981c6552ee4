"""The one place that knows the time budget of a stage.

A stage receives ``--timeout_seconds`` and is killed when it runs out. The
deadline keeps a safety margin so that the stage saves its work and exits 0
before the kill; every long loop asks ``deadline.remaining()``, and work
handed to other processes carries ``deadline.stop_at()``. A stage that writes
graded output also turns SIGTERM (``terminate_raises``) into an exception it
can catch to save what it has.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# The process may have started a little before the deadline object (imports).
_PROCESS_START = time.monotonic()


def safety_margin(timeout_seconds: float) -> float:
    """Seconds kept free at the end of a stage: 8 % of the budget, 5 s to 120 s.

    At least 5 s because ending a process (worker pools, interpreter exit) took 2-6 s on the 2-core
    machine after a stage had logged that it was done."""
    return min(120.0, max(5.0, 0.08 * timeout_seconds))


@dataclass
class Deadline:
    timeout_seconds: float
    start: float = field(default_factory=lambda: _PROCESS_START)

    @property
    def margin(self) -> float:
        return safety_margin(self.timeout_seconds)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        """Seconds left before the stage must have saved everything and exited."""
        return self.timeout_seconds - self.margin - self.elapsed()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def stop_at(self) -> float:
        """The ``time.monotonic()`` reading at which the deadline expires: the same clock in forked workers."""
        return self.start + self.timeout_seconds - self.margin

    def describe(self) -> str:
        return f"{self.elapsed():.0f}s used, {max(0.0, self.remaining()):.0f}s left of {self.timeout_seconds:.0f}s"


class Terminated(BaseException):
    """The stage received SIGTERM (a grader's or container's stop): save what there is and exit.

    Not an ``Exception``, like KeyboardInterrupt: the ``except Exception`` that keeps one bad file or
    image from stopping a loop must not swallow it."""


@dataclass
class TerminationGuard:
    """Whether SIGTERM came, and whether it may still interrupt the work (``armed``) or must wait (saving)."""

    received: bool = False
    armed: bool = True


@contextlib.contextmanager
def terminate_raises():
    """Inside the block the first SIGTERM raises ``Terminated`` while the guard is armed; later ones, or
    any while it is disarmed (the stage is saving), are only recorded in ``guard.received``. Forked
    worker processes that inherit the handler keep the default action: they just end."""
    owner, guard = os.getpid(), TerminationGuard()

    def handler(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        first = not guard.received
        guard.received = True
        if first and guard.armed:
            guard.armed = False
            raise Terminated("received SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield guard
    finally:
        signal.signal(signal.SIGTERM, previous)
def time_bound_decision(stage: str, decision: str, **details) -> dict:
    """Log a choice the deadline forced, and return its record for ``time_bound_decisions`` in metrics.json.

    Everything else in training is a function of the data and the seed; a
    model whose run made such a choice may differ on a busier or slower
    machine, and its metrics say so.
    """
    log.warning("time-bound decision in %s: %s (%s)", stage, decision,
                ", ".join(f"{key} {value}" for key, value in details.items()))
    return {"stage": stage, "decision": decision, **details}


def cpu_quota() -> float | None:
    """CPUs granted by a cgroup quota (``docker run --cpus``), or None."""
    for path in ("/sys/fs/cgroup/cpu.max",):
        try:
            quota, period = open(path).read().split()[:2]
            if quota != "max":
                return int(quota) / int(period)
        except (OSError, ValueError):
            pass
    try:
        quota = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        if quota > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cpus() -> int:
    """The CPUs this process may really use: affinity, cgroup quota, capped at 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    quota = cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, int(quota)))
    return max(1, min(8, cpus))


def configure_threads() -> int:
    """Give torch one thread per usable CPU (a container sees all host cores)."""
    import torch

    threads = int(os.environ.get("AMLS_THREADS", available_cpus()))
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process
    return threads


@contextlib.contextmanager
def torch_threads(threads: int):
    """Run the block with ``threads`` torch threads, then restore the previous number."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
