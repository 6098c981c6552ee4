"""Decoding and cropping on every usable CPU, in order.

Decoding is the slow part of preparing and predicting on large images
(a 1024-pixel PNG takes tens of milliseconds), and it is independent per image,
so a process pool does it while the main process writes or scores.
"""
from __future__ import annotations

import functools
import itertools
import logging
import multiprocessing as mp
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator

from .budget import worker_processes

log = logging.getLogger(__name__)


class Skipped:
    """What a worker returns for an item whose work would have started after the stop time."""


_STOP = None  # in a worker: the pool's stop event, set when the consumer stops reading


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this worker when the stage that started it dies.

    A stage killed with SIGKILL (the grader at its timeout, the kernel out of memory) cannot stop its pool,
    and the workers would wait forever on its queue, holding their memory."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the workers end with the pool as before
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _init_worker(stop, parent: int) -> None:
    global _STOP
    _STOP = stop
    _die_with_parent(parent)
    # A SIGTERM handler of the parent (the predict stage's) is not the worker's business.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _until(function: Callable, stop_at: float | None, item):
    """Run ``function(item)`` unless the stop time has passed or the consumer stopped, decided as work starts."""
    if (stop_at is not None and time.monotonic() >= stop_at) or (_STOP is not None and _STOP.is_set()):
        return Skipped()
    return function(item)


def ordered_map(function: Callable, items: Iterable, workers: int | None = None, chunksize: int = 4,
                window_size: int = 128, stop_at: float | None = None) -> Iterator:
    """``map(function, items)`` in worker processes (in order); in-process for one worker.

    ``workers`` defaults to ``budget.worker_processes()``: one per usable CPU, as memory allows.

    ``function`` must be a module-level function; it should catch its own
    per-item errors and return them as values, so one bad image never stops the
    stream. If a worker process dies (killed for memory, say), the items it
    had not returned and all later ones are computed in this process instead:
    the stream never hangs and never loses an item.

    With ``stop_at`` (a ``time.monotonic()`` reading, see ``Deadline.stop_at``)
    each item is checked when work on it starts, not when it was queued: the
    stream ends at the first item that would start late, and items already
    queued cost nothing. When the consumer stops reading (deadline, SIGTERM,
    error), queued items are dropped, not computed.
    """
    task = functools.partial(_until, function, stop_at)
    workers = worker_processes() if workers is None else workers
    if workers <= 1:
        yield from _until_skipped(map(task, items))
        return
    iterator = iter(items)
    stop = mp.get_context("fork").Event()
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init_worker,
                               initargs=(stop, os.getpid()))
    try:
        # Bounded windows: mapping everything at once would read all input and buffer
        # every result, so memory would grow with the split.
        while True:
            window = list(itertools.islice(iterator, window_size))
            if not window:
                return
            done = 0
            try:
                for result in pool.map(task, window, chunksize=chunksize):
                    if isinstance(result, Skipped):
                        return
                    done += 1
                    yield result
            except BrokenProcessPool:
                log.warning("a worker process died; computing the remaining items in this process")
                yield from _until_skipped(map(task, itertools.chain(window[done:], iterator)))
                return
    finally:
        stop.set()  # workers skip whatever they still hold
        pool.shutdown(wait=True, cancel_futures=True)


def _until_skipped(results: Iterator) -> Iterator:
    for result in results:
        if isinstance(result, Skipped):
            return
        yield result
