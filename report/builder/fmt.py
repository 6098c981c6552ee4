"""How a number looks in the report: the one place that formats values and table cells."""
from __future__ import annotations

import math

NOT_RUN = "not run"
NOT_AVAILABLE = "n/a"  # the file exists but does not hold this number (or it is undefined, e.g. NaN)


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_rate(x, digits: int = 3) -> str:
    """A rate or score in [0, 1] as in the report's tables: ``0.853``."""
    return f"{x:.{digits}f}" if is_number(x) else NOT_AVAILABLE


def fmt_interval(interval) -> str:
    """A 95 % interval: ``[0.012, 0.187]``."""
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and all(is_number(v) for v in interval):
        return f"[{interval[0]:.3f}, {interval[1]:.3f}]"
    return NOT_AVAILABLE


def fmt_percent(x, digits: int = 0) -> str:
    return f"{100 * x:.{digits}f} %" if is_number(x) else NOT_AVAILABLE


def fmt_int(x) -> str:
    return f"{int(x):,}".replace(",", "\u2009") if is_number(x) else NOT_AVAILABLE


def fmt_float(x, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if is_number(x) else NOT_AVAILABLE


def fmt_seconds(x) -> str:
    if not is_number(x):
        return NOT_AVAILABLE
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def fmt_params(n) -> str:
    if not is_number(n):
        return NOT_AVAILABLE
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def dig(obj, *path):
    """``obj[path[0]][path[1]]...`` or None when any step is missing."""
    for key in path:
        if isinstance(obj, dict) and key in obj:
            obj = obj[key]
        elif isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj):
            obj = obj[key]
        else:
            return None
    return obj


def cell(source, path: tuple, fmt=fmt_rate) -> str:
    """A table cell: "not run" without the source file, "n/a" without the number, else ``fmt``."""
    if source is None:
        return NOT_RUN
    value = dig(source, *path)
    return NOT_AVAILABLE if value is None else fmt(value)



def table(header: list[str], rows: list[list[str]], align: str | None = None, note: str | None = None,
          groups: list | None = None) -> dict:
    """A table for the template; ``groups`` = [[label, span], ...] adds a spanning header row above."""
    align = align or ("l" + "r" * (len(header) - 1))
    return {"header": header, "rows": rows, "align": align, "note": note, "groups": groups}
