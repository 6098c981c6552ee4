"""The report's own plots, drawn at print size: every label at least 7 pt, legends outside the data."""
from __future__ import annotations

from pathlib import Path

from .fmt import dig, is_number

TASK_LABEL = {"task02": "Task 2", "task03": "Task 3"}
TASK_COLOUR = {"task02": "#1f77b4", "task03": "#d62728"}
COLUMN_INCHES = 3.35  # one column of the two-column A4 layout
PAGE_INCHES = 6.85  # both columns
MIN_FONT = 7.0


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7.5,
                         "xtick.labelsize": 7.5, "ytick.labelsize": 7.5, "figure.dpi": 250})
    return plt


# Families shown in the robustness figure: trained ones and ones no training step applies.
ROBUSTNESS_FAMILIES = ("jpeg", "webp", "downscale", "gaussian_blur", "median", "sharpen", "shot_noise", "chain")


def plot_robustness_curves(robustness, path: Path) -> bool:
    """FPR and recall at equal FPR (0.20) of both packaged detectors against each family's strength."""
    if robustness is None or not robustness.per_condition:
        return False
    families = [f for f in ROBUSTNESS_FAMILIES if f in robustness.families]
    if not families:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(families), figsize=(PAGE_INCHES, 3.0), sharey="row")
    for col, family in enumerate(families):
        info = robustness.families[family]
        strengths = list(info.get("strengths") or [])
        labels = ["0"] + [f"{s:g}" for s in strengths]
        for row, (metric, ylabel) in enumerate((("fpr", "FPR"), ("recall_at_fpr_0.2", "recall @ FPR 0.2"))):
            ax = axes[row][col]
            for task in ("task02", "task03"):
                conditions = robustness.per_condition.get(task) or {}
                ys = [dig(conditions, "clean@0.0", metric, "mean")]
                ys += [dig(conditions, f"{family}@{float(s)}", metric, "mean") if f"{family}@{float(s)}" in conditions
                       else dig(conditions, f"{family}@{s}", metric, "mean") for s in strengths]
                ys = [y if is_number(y) else float("nan") for y in ys]
                ax.plot(range(len(ys)), ys, marker="o", ms=2.5, lw=1.1, color=TASK_COLOUR[task],
                        label=TASK_LABEL[task])
            if metric == "fpr":
                ax.axhline(0.2, color="black", lw=0.7, ls="--")
                ax.set_ylim(0, 1.0)
                unseen = info.get("trained_as") is None
                ax.set_title(family.replace("_", " ") + ("\nnever trained" if unseen else "\ntrained"),
                             fontsize=7, fontweight="bold" if unseen else "normal")
            else:
                ax.set_ylim(0.4, 1.0)
                ax.set_xlabel(info.get("unit", ""), fontsize=7)
            ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=90)
            ax.tick_params(axis="x", pad=1)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(ylabel)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=2, frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 0.93), w_pad=0.2, h_pad=0.4)
    fig.savefig(path)
    plt.close(fig)
    return True


FORMAT_COLOURS = {"JPEG": "#4c72b0", "PNG": "#dd8452", "WEBP": "#55a868"}


def plot_exploration(exploration: dict | None, path: Path) -> bool:
    """Per source class of the training split: share of each file format, and the share of square images."""
    by_class = dig(exploration, "splits", "train", "by_source_class")
    if not isinstance(by_class, dict) or not by_class:
        return False
    plt = _pyplot()
    classes = list(by_class)
    short = ["real" if c == "real" else c.replace("generator_", "gen ") for c in classes]
    fig, (ax_fmt, ax_sq) = plt.subplots(1, 2, figsize=(COLUMN_INCHES, 1.9), gridspec_kw={"width_ratios": (3, 2)},
                                        layout="constrained")
    bottoms = [0.0] * len(classes)
    formats = sorted({f for c in classes for f in (by_class[c].get("formats") or {})})
    for fmt in formats:
        shares = []
        for c in classes:
            counts = by_class[c].get("formats") or {}
            total = sum(counts.values()) or 1
            shares.append(counts.get(fmt, 0) / total)
        ax_fmt.bar(short, shares, bottom=bottoms, color=FORMAT_COLOURS.get(fmt, "grey"), label=fmt, width=0.75)
        bottoms = [b + s for b, s in zip(bottoms, shares)]
    ax_fmt.set_ylabel("file format")
    ax_fmt.set_ylim(0, 1)
    fig.legend(loc="outside upper center", ncol=3, frameon=False, fontsize=7, handlelength=1, columnspacing=0.8)
    ax_sq.bar(short, [by_class[c].get("square_share") or 0 for c in classes], color="#8172b2", width=0.75)
    ax_sq.set_ylim(0, 1)
    ax_sq.set_ylabel("square share")
    for ax in (ax_fmt, ax_sq):
        ax.tick_params(axis="x", labelrotation=60, pad=1)
        ax.grid(axis="y", alpha=0.3)
    fig.savefig(path)
    plt.close(fig)
    return True
