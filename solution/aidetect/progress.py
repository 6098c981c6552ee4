"""Progress bars that show the ETA and the time budget left."""
from __future__ import annotations

import contextlib
import sys

from tqdm import tqdm


class _BudgetBar(tqdm):
    def __init__(self, *args, deadline=None, **kwargs):
        self._deadline = deadline
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self):
        d = super().format_dict
        if self._deadline is not None:
            d["postfix"] = f"budget left {max(0, self._deadline.remaining()):.0f}s" + (
                f", {d['postfix']}" if d.get("postfix") else "")
        return d


@contextlib.contextmanager
def progress(total: int, desc: str, deadline=None):
    """A tqdm bar on stderr; in logs (no terminal) it prints a line every 15 s."""
    interactive = sys.stderr.isatty()
    bar = _BudgetBar(
        total=total, desc=desc, deadline=deadline, file=sys.stderr, dynamic_ncols=interactive,
        mininterval=0.5 if interactive else 15.0, ascii=not interactive,
    )
    try:
        yield bar
    finally:
        bar.close()
