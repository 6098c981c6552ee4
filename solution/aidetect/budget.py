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


# Memory: a stage with its worker processes must stay under STAGE_MEMORY_TARGET whatever the input and the
# number of CPUs (under --cpus 8 there would be eight workers). Each worker may hold one image's decoding at
# its bound (decode.MAX_DECODE_BYTES, 280 MB) plus its crops, features and the pages it writes after the fork;
# the main process holds torch, the detector and the batches (1.3 GB at most on the proxy's images, 1.7 GB on
# 1024-pixel PNGs, measured by benchmarks/throughput.py).
STAGE_MEMORY_TARGET = 4 * 2**30
MAIN_PROCESS_BYTES = 1792 * 2**20
WORKER_BYTES = 400 * 2**20


def memory_limit() -> int | None:
    """Bytes this process's cgroup may use (``docker run --memory``), or None."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # cgroup v1 writes a huge number for "no limit"
            return int(text)
    return None


def memory_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes, or None."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def worker_processes(cpus: int | None = None) -> int:
    """Worker processes for decoding and features: one per usable CPU, fewer when their worst-case memory
    beside the main process would exceed the smallest of the stage's target, the cgroup limit and the memory
    available now."""
    cpus = available_cpus() if cpus is None else cpus
    budget = min(b for b in (STAGE_MEMORY_TARGET, memory_limit(), memory_available()) if b is not None)
    fit = int((budget - MAIN_PROCESS_BYTES) // WORKER_BYTES)
    return max(1, min(cpus, fit))


def configure_threads(with_torch: bool = True) -> int:
    """Give torch one thread per usable CPU (a container sees all host cores). ``with_torch=False`` only counts
    them: a stage that never runs a network is spared torch's import (2-3 s of every start)."""
    threads = int(os.environ.get("AMLS_THREADS", available_cpus()))
    if not with_torch:
        return threads
    import torch

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
