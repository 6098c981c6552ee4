"""Decoding and cropping on every usable CPU, in order.

Decoding is the slow part of preparing and predicting on large images
(a 1024-pixel PNG takes tens of milliseconds), and it is independent per image,
so a process pool does it while the main process writes or scores.
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
from typing import Callable, Iterable, Iterator

from .budget import available_cpus


def ordered_map(function: Callable, items: Iterable, workers: int | None = None, chunksize: int = 4,
                window_size: int = 128) -> Iterator:
    """``map(function, items)`` in worker processes (in order); in-process for one CPU.

    ``function`` must be a module-level function; it should catch its own
    per-item errors and return them as values, so one bad image never stops the
    stream.
    """
    workers = available_cpus() if workers is None else workers
    if workers <= 1:
        yield from map(function, items)
        return
    context = mp.get_context("fork")
    iterator = iter(items)
    with context.Pool(workers) as pool:
        # Bounded windows: Pool.imap would read all input at once and buffer every
        # result, so memory would grow with the split and late items could not be skipped.
        while True:
            window = list(itertools.islice(iterator, window_size))
            if not window:
                return
            yield from pool.imap(function, window, chunksize=chunksize)
