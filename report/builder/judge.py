"""Words that depend on numbers: every judgement sentence of the report is chosen here from the values.

A sentence such as "Task 3 keeps the FPR under the cap" must change when the result does; the
template never types such a verdict itself.
"""
from __future__ import annotations

from .fmt import NOT_RUN, fmt_rate, is_number

TIE = 0.0005  # differences below this are shown as "equal" at the report's three decimals


def met(value, goal: str) -> bool | None:
    """Whether ``value`` meets a goal written ``"<= 0.20"`` or ``">= 0.8"`` (None without a value)."""
    if not is_number(value):
        return None
    op, limit = goal.split()
    limit = float(limit)
    return value <= limit + 1e-12 if op == "<=" else value >= limit - 1e-12


def met_word(ok: bool | None) -> str:
    return {True: "met", False: "missed", None: NOT_RUN}[ok]


def cap_phrase(fpr, cap: float) -> str:
    """"keeps the FPR under the 0.2 cap (0.042)" or "exceeds the 0.2 cap (FPR 0.236)"."""
    if not is_number(fpr):
        return f"has no FPR ({NOT_RUN})"
    if fpr <= cap:
        return f"keeps the FPR under the {cap:g} cap ({fmt_rate(fpr)})"
    return f"exceeds the {cap:g} FPR cap ({fmt_rate(fpr)})"


def change_verb(before, after, up: str = "raises", down: str = "lowers", same: str = "keeps") -> str:
    if not (is_number(before) and is_number(after)):
        return NOT_RUN
    diff = after - before
    return up if diff > TIE else (down if diff < -TIE else same)


def change_phrase(what: str, before, after) -> str:
    """"raises recall from 0.406 to 0.564 (+0.158)"."""
    if not (is_number(before) and is_number(after)):
        return f"{what}: {NOT_RUN}"
    return f"{change_verb(before, after)} {what} from {fmt_rate(before)} to {fmt_rate(after)} ({after - before:+.3f})"


def better_word(a, b, higher_is_better: bool = True, better: str = "beats", worse: str = "trails",
                tie: str = "matches") -> str:
    """How ``a`` compares with ``b``."""
    if not (is_number(a) and is_number(b)):
        return NOT_RUN
    diff = (a - b) if higher_is_better else (b - a)
    return better if diff > TIE else (worse if diff < -TIE else tie)


def share_word(value, high: float = 0.8, low: float = 0.6) -> str:
    """"strong" / "moderate" / "weak" for a balanced accuracy or AUC."""
    if not is_number(value):
        return NOT_RUN
    return "strong" if value >= high else ("moderate" if value >= low else "weak")
