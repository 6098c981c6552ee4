"""The "targets at a glance" table: each course aim and each of our own, met or missed, with its number."""
from __future__ import annotations

from dataclasses import dataclass

from .fmt import NOT_RUN, dig, fmt_rate, is_number, table
from .judge import met, met_word
from .results import UNDER_PROCESSING_RULE, Inputs

MAX_FPR = 0.2
REFERENCE_FACTOR = 5  # training may take at most 5x the course's reference runtime
MEMORY_AIM_MB = 4000  # our own aim: every stage fits a 4 GB machine


@dataclass(frozen=True)
class Aim:
    key: str
    what: str
    whose: str  # "course" or "ours"
    goal: str  # "<= 0.20", ">= 0.8"
    value: float | None  # the number compared with the goal
    shown: str  # how the value appears in the table (may add context)
    source: str  # file the number comes from

    @property
    def met(self) -> bool | None:
        return met(self.value, self.goal)


def _split(inputs: Inputs, task: str, split: str, key: str):
    return dig(inputs.metrics.get(task), "splits", split, key)


def measured_value(inputs: Inputs, task: str, split: str, key: str) -> tuple[float | None, str, str]:
    """(value, shown, source) of a split metric: the mean over seeds with its spread when the robustness
    runs cover several seeds (headline numbers are seed means), else the run's own metrics.json."""
    robust = inputs.robustness
    cell = dig(robust.splits, task, split, key) if robust and robust.n_runs > 1 else None
    if cell and is_number(cell.get("mean")):
        return (cell["mean"], f"{fmt_rate(cell['mean'])} \u00b1 {fmt_rate(cell.get('std'))}",
                f"{robust.path.name} ({robust.n_runs} seeds)")
    value = _split(inputs, task, split, key)
    return value, fmt_rate(value), f"artifacts/{task}/metrics.json"


def aims(inputs: Inputs) -> list[Aim]:
    """Every target, in the order of the course's tasks."""
    out = []
    for task, name in (("task02", "Task 2"), ("task03", "Task 3")):
        for split, label in (("validation", "validation"), ("validation_augmented", "validation_augmented")):
            # The course caps the FPR of both tasks; Task 2 on the augmented split is our own aim.
            whose = "ours" if (task, split) == ("task02", "validation_augmented") else "course"
            fpr, shown, source = measured_value(inputs, task, split, "fpr")
            out.append(Aim(f"{task}.{split}.fpr", f"{name}: FPR on {label}", whose, f"<= {MAX_FPR:.2f}", fpr,
                           shown, source))
    recall2, shown, source = measured_value(inputs, "task02", "validation", "recall_ai")
    out.append(Aim("task02.recall", "Task 2: recall on validation", "course", ">= 0.8", recall2, shown, source))
    recall3, shown, source = measured_value(inputs, "task03", "validation_augmented", "recall_ai")
    out.append(Aim("task03.recall", "Task 3: recall on validation_augmented", "course", ">= 0.6", recall3, shown,
                   source))
    auc2, _, _ = measured_value(inputs, "task02", "validation_augmented", "roc_auc")
    auc3, _, source = measured_value(inputs, "task03", "validation_augmented", "roc_auc")
    gap = auc3 - auc2 if is_number(auc2) and is_number(auc3) else None
    out.append(Aim("auc.gap", "ROC AUC on validation_augmented, Task 3 minus Task 2", "ours", ">= 0", gap,
                   f"{gap:+.3f} ({fmt_rate(auc3)} vs {fmt_rate(auc2)})" if gap is not None else NOT_RUN, source))
    proxy = inputs.proxy
    ref = proxy.reference_seconds if proxy else None
    for stage, name in (("train", "Task 2"), ("train_augmented", "Task 3")):
        wall = proxy.stage(stage).wall_seconds if proxy and proxy.stage(stage) else None
        ratio = wall / ref if is_number(wall) and is_number(ref) and ref > 0 else None
        out.append(Aim(f"runtime.{stage}", f"{name} training time / reference runtime", "course",
                       f"<= {REFERENCE_FACTOR}", ratio,
                       f"{ratio:.2f}\u00d7 ({wall:.0f} s / {ref:.0f} s)" if ratio is not None else NOT_RUN,
                       proxy.path.name if proxy else NOT_RUN))
    peak = proxy.peak_mb if proxy else None
    out.append(Aim("memory", "Peak memory of any stage (GB)", "ours", f"<= {MEMORY_AIM_MB / 1000:g}",
                   peak / 1000 if is_number(peak) else None,
                   f"{peak / 1000:.1f}" if is_number(peak) else NOT_RUN, proxy.path.name if proxy else NOT_RUN))
    robust = inputs.robustness
    worst = robust.worst_held_out("fpr") if robust else None
    if worst:
        family, row = worst
        value = dig(row, "task03", "fpr", "mean")
        source = str(row.get("task03_source", "")).replace("trained without", "w/o")
        shown = f"{fmt_rate(value)} ({family.replace('_', ' ')}, {source})"
    else:
        value, shown = None, NOT_RUN
    out.append(Aim("heldout.fpr", "Task 3: worst FPR on a held-out family", "ours", f"<= {MAX_FPR:.2f}",
                   value, shown, robust.path.name if robust else NOT_RUN))
    same = inputs.same
    r3 = same.split("task03", UNDER_PROCESSING_RULE, "validation_augmented") if same else None
    r2 = same.split("task02", UNDER_PROCESSING_RULE, "validation_augmented") if same else None
    gap = (r3["recall_ai"] - r2["recall_ai"]) if r3 and r2 else None
    out.append(Aim("equal.rule", "Task 3 minus Task 2 recall, same threshold rule (val. augm.)", "ours", ">= 0",
                   gap, f"{gap:+.3f} ({fmt_rate(r3['recall_ai'])} vs {fmt_rate(r2['recall_ai'])})" if gap is not None
                   else NOT_RUN, same.path.name if same else NOT_RUN))
    o3 = robust.mean("task03", "validation_augmented", "recall_at_fpr_0.2") if robust else None
    o2 = robust.mean("task02", "validation_augmented", "recall_at_fpr_0.2") if robust else None
    gap = o3 - o2 if is_number(o3) and is_number(o2) else None
    out.append(Aim("equal.fpr", "Task 3 minus Task 2 recall at equal FPR 0.20 (val. augm.)", "ours", ">= 0", gap,
                   f"{gap:+.3f} ({fmt_rate(o3)} vs {fmt_rate(o2)})" if gap is not None else NOT_RUN,
                   robust.path.name if robust else NOT_RUN))
    return out


def targets_table(all_aims: list[Aim]) -> dict:
    rows = [[a.what, a.whose, a.goal.replace("<=", "\u2264").replace(">=", "\u2265"), a.shown, met_word(a.met)]
            for a in all_aims]
    return table(["target", "aim of", "goal", "value", "status"], rows, align="llrrl")


def tally(all_aims: list[Aim]) -> dict:
    return {"met": sum(a.met is True for a in all_aims), "missed": sum(a.met is False for a in all_aims),
            "total": len(all_aims)}
