"""Decoding and cropping on every usable CPU, in order.

Decoding is the slow part of preparing and predicting on large images
(a 1024-pixel PNG takes tens of milliseconds), and it is independent per image,
so a process pool does it while the main process writes or scores.
"""
from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator

from .budget import available_cpus

log = logging.getLogger(__name__)


def ordered_map(function: Callable, items: Iterable, workers: int | None = None, chunksize: int = 4,
                window_size: int = 128) -> Iterator:
    """``map(function, items)`` in worker processes (in order); in-process for one CPU.

    ``function`` must be a module-level function; it should catch its own
    per-item errors and return them as values, so one bad image never stops the
    stream. If a worker process dies (killed for memory, say), the items it
    had not returned and all later ones are computed in this process instead:
    the stream never hangs and never loses an item.
    """
    workers = available_cpus() if workers is None else workers
    if workers <= 1:
        yield from map(function, items)
        return
    iterator = iter(items)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        # Bounded windows: mapping everything at once would read all input and buffer
        # every result, so memory would grow with the split and late items could not be skipped.
        while True:
            window = list(itertools.islice(iterator, window_size))
            if not window:
                return
            done = 0
            try:
                for result in pool.map(function, window, chunksize=chunksize):
                    done += 1
                    yield result
            except BrokenProcessPool:
                log.warning("a worker process died; computing the remaining items in this process")
                yield from map(function, window[done:])
                yield from map(function, iterator)
                return
