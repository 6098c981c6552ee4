#!/usr/bin/env python3
"""Build the PDF report from the files of a run: the single command for the final report.

    python report/build_report.py --artifacts solution/artifacts --bench benchmarks/results \
        --explain explainability/output --out report/report.pdf

What it reads (each input is optional; a missing file shows "not run" where its numbers go,
never a stale value):

* ``ARTIFACTS/clean/exploration.json``, ``clean/cleaning.json``, ``clean/figures/*.png``;
* ``ARTIFACTS/task02/metrics.json`` and ``task03/metrics.json`` (plus ``detector.json`` and
  ``predict_report.json``);
* ``ARTIFACTS/attribution/metrics.json`` (attribution and open set; else the ``attribution``
  entry of a benchmark result);
* ``BENCH/*.json`` (benchmark results, ``*-proxy.json`` first), found by their keys: the harness
  scorecard (``stages`` with wall time and memory, ``tasks`` with the scores on the labelled
  predict split), ``reference`` (the reference runtime), ``families`` (model-family comparison),
  ``flipped`` (shortcut-flipped predict split), ``attribution``, ``logo`` and
  ``predict_scored`` (attribution benchmark), and figures in ``BENCH/figures/``;
* ``EXPLAIN/summary.json``, ``EXPLAIN/discussion.md`` and the figures they name.

Design constants (crop size, augmentation ranges, alpha and delta, feature counts) are read from
the code in ``solution/aidetect``, never typed into the template.

What it writes: plots it makes and copies of the figures it uses, ``data.json`` (every number
cell, already formatted) and ``report.typ`` into the build folder (default ``report/build/``),
then compiles ``report/template.typ`` with Typst and moves the PDF to ``--out``. The report must
fit in ``MAX_PAGES`` pages: when it does not, optional figures are dropped step by step; when it
still does not, the build fails with a clear error and leaves no PDF at ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable

REPORT_DIR = Path(__file__).resolve().parent
REPO = REPORT_DIR.parent
SOLUTION = REPO / "solution"

TEMPLATE = REPORT_DIR / "template.typ"
TEAM_FILE = REPORT_DIR / "team.json"
DEFAULT_BUILD = REPORT_DIR / "build"
MAX_PAGES = 8
REFERENCE_FACTOR = 5  # training may take at most 5x the course's reference runtime (SPEC.md)
NOT_RUN = "not run"
NOT_AVAILABLE = "n/a"  # the file exists but does not hold this number (or it is undefined, e.g. NaN)
PLACEHOLDER_ID = "0000000"

TASKS = ("task02", "task03")
TASK_NAMES = {"task02": "Task 2 (plain)", "task03": "Task 3 (robust)"}
EVAL_SPLITS = ("validation", "validation_augmented")
CLASS_KEYS = ("real", "generator_1", "generator_2", "generator_3", "generator_4", "generator_5")
CLASS_SHORT = ("real", "gen 1", "gen 2", "gen 3", "gen 4", "gen 5")
EXPLORATION_FIGURES = ("class_distribution", "size_scatter", "format_mode_share", "jpeg_quality")


class ReportError(RuntimeError):
    """The report cannot be built (e.g. it exceeds the page limit)."""


def warn(message: str) -> None:
    print(f"build_report: warning: {message}", file=sys.stderr)


# --- formatting: the one place that decides how a number looks in the report -------------------


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_rate(x, digits: int = 3) -> str:
    """A rate or score in [0, 1] as in the report's tables: ``0.853``."""
    return f"{x:.{digits}f}" if _is_number(x) else NOT_AVAILABLE


def fmt_interval(interval) -> str:
    """A 95 % interval: ``[0.012, 0.187]``."""
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and all(_is_number(v) for v in interval):
        return f"[{interval[0]:.3f}, {interval[1]:.3f}]"
    return NOT_AVAILABLE


def fmt_percent(x, digits: int = 0) -> str:
    return f"{100 * x:.{digits}f} %" if _is_number(x) else NOT_AVAILABLE


def fmt_int(x) -> str:
    return f"{int(x):,}".replace(",", "\u2009") if _is_number(x) else NOT_AVAILABLE


def fmt_float(x, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if _is_number(x) else NOT_AVAILABLE


def fmt_seconds(x) -> str:
    if not _is_number(x):
        return NOT_AVAILABLE
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def fmt_params(n) -> str:
    if not _is_number(n):
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


# --- Typst escaping and a small Markdown converter --------------------------------------------

# Characters that start markup in Typst (strong, emph, raw, math, code, labels, references,
# content blocks, escapes, non-breaking space, comments, headings, lists, dashes).
_TYPST_SPECIAL = set("\\#$*_`<>@[]~/=-+")


def escape_typst(text: str) -> str:
    """Plain text -> Typst markup that shows exactly this text."""
    out = "".join("\\" + ch if ch in _TYPST_SPECIAL else ch for ch in str(text))
    # "1. " at the start of a line would open a numbered list.
    return re.sub(r"(?m)^(\s*\d+)\.", r"\1\\.", out)


def typst_string(text: str) -> str:
    """A Typst string literal."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_INLINE = re.compile(
    r"(?P<code>`[^`]+`)"
    r"|(?P<image>!\[[^\]]*\]\([^)]*\))"
    r"|(?P<link>\[(?P<link_text>[^\]]+)\]\((?P<link_url>[^)\s]+)(?:\s+\"[^\"]*\")?\))"
    r"|(?P<strong>\*\*(?P<strong_text>.+?)\*\*|__(?P<strong_text2>.+?)__)"
    r"|(?P<emph>(?<![\w*])\*(?P<emph_text>[^*\s](?:[^*]*[^*\s])?)\*(?![\w*])"
    r"|(?<![\w_])_(?P<emph_text2>[^_\s](?:[^_]*[^_\s])?)_(?![\w_]))"
)


def inline_markdown(text: str) -> str:
    """Inline Markdown (code, bold, italic, links) -> Typst markup; everything else escaped."""
    out, pos = [], 0

    def plain(segment: str) -> str:
        escaped = escape_typst(segment)
        # Right after "#strong[...]" etc., "(", "[", "." or ";" would continue the expression.
        if out and out[-1].startswith("#") and escaped[:1] in ("(", "[", ".", ";"):
            escaped = "\\" + escaped
        return escaped

    for match in _INLINE.finditer(text):
        out.append(plain(text[pos:match.start()]))
        pos = match.end()
        if match.group("code"):
            code = match.group("code")[1:-1]
            if len(code) > 20:  # long paths: allow line breaks after separators
                code = re.sub(r"([/_.])", "\\1\u200b", code)
            out.append(f"#raw({typst_string(code)})")
        elif match.group("image"):
            continue  # images are handled as blocks
        elif match.group("link"):
            out.append(inline_markdown(match.group("link_text")))
        elif match.group("strong"):
            inner = match.group("strong_text") or match.group("strong_text2")
            out.append(f"#strong[{inline_markdown(inner)}]")
        else:
            inner = match.group("emph_text") or match.group("emph_text2")
            out.append(f"#emph[{inline_markdown(inner)}]")
    out.append(plain(text[pos:]))
    return "".join(out)


_IMAGE_LINE = re.compile(r"^\s*!\[(?P<alt>[^\]]*)\]\((?P<path>[^)\s]+)(?:\s+\"[^\"]*\")?\)\s*$")
_LIST_ITEM = re.compile(r"^(?P<indent>\s*)(?P<marker>[-*+]|\d+[.)])\s+(?P<text>.*)$")
_HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<text>.*?)\s*#*\s*$")


def markdown_to_typst(markdown: str, image_block=None) -> str:
    """A Markdown document -> Typst markup for the body of a report section.

    Headings become bold run-in lines (the section heading is the report's), paragraphs,
    bullet and numbered lists, fenced code, pipe tables and inline markup are converted;
    every other character is escaped. ``image_block(alt, path)`` returns Typst markup for an
    image line (or "" to drop it).
    """
    lines = markdown.replace("\r\n", "\n").split("\n")
    blocks: list[str] = []
    paragraph: list[str] = []
    i = 0

    def flush():
        if paragraph:
            blocks.append(inline_markdown(" ".join(s.strip() for s in paragraph)))
            paragraph.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```") or stripped.startswith("~~~"):
            flush()
            fence, code = stripped[:3], []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence):
                code.append(lines[i])
                i += 1
            blocks.append(f"#raw(block: true, {typst_string(chr(10).join(code))})")
            i += 1
            continue
        if not stripped:
            flush()
            i += 1
            continue
        heading = _HEADING.match(stripped)
        if heading:
            flush()
            if not (len(heading.group("hashes")) == 1 and not blocks):  # drop a leading title
                blocks.append(f"#heading(level: 2, numbering: none, outlined: false)[{inline_markdown(heading.group('text'))}]")
            i += 1
            continue
        image = _IMAGE_LINE.match(line)
        if image:
            flush()
            if image_block is not None:
                block = image_block(image.group("alt"), image.group("path"))
                if block:
                    blocks.append(block)
            i += 1
            continue
        if stripped.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-{2,}:?", c) for c in cells if c):
                    rows.append(cells)
                i += 1
            if rows:
                ncols = max(len(r) for r in rows)
                cells = []
                for r, row in enumerate(rows):
                    for c in range(ncols):
                        text = inline_markdown(row[c]) if c < len(row) else ""
                        cells.append(f"[#strong[{text}]]" if r == 0 else f"[{text}]")
                blocks.append(f"#md-table({ncols}, {', '.join(cells)})")
            continue
        item = _LIST_ITEM.match(line)
        # A bullet list may interrupt a paragraph, a numbered one only when it starts at 1 (CommonMark).
        if item and paragraph and (item.group("marker")[0] in "-*+" or item.group("marker")[:-1] == "1"):
            flush()
        if item and not paragraph:
            items = []
            while i < len(lines):
                current = _LIST_ITEM.match(lines[i])
                if current:
                    marker = "+" if current.group("marker")[0].isdigit() else "-"
                    depth = len(current.group("indent").expandtabs(4)) // 2
                    items.append([depth, marker, current.group("text")])
                elif lines[i].strip() and lines[i].startswith((" ", "\t")) and items:
                    items[-1][2] += " " + lines[i].strip()  # continuation of an item
                else:
                    break
                i += 1
            blocks.append("\n".join("  " * depth + f"{marker} {inline_markdown(text)}" for depth, marker, text in items))
            continue
        paragraph.append(line)
        i += 1
    flush()
    return "\n\n".join(blocks)


# --- reading the inputs ---------------------------------------------------------------------


class Sources:
    """Optional JSON inputs, and a record of what was found for the report's source list."""

    def __init__(self):
        self.used: list[dict] = []

    def json(self, path: Path, what: str) -> Any:
        path = Path(path)
        if not path.is_file():
            self.used.append({"what": what, "path": str(path), "status": NOT_RUN})
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            warn(f"{path}: unreadable ({exc}); treated as not run")
            self.used.append({"what": what, "path": str(path), "status": "unreadable"})
            return None
        self.used.append({"what": what, "path": str(path), "status": "read"})
        return data


def _walk(obj, depth: int = 0, max_depth: int = 4):
    """Every dict inside ``obj`` (itself included), breadth by depth."""
    if depth > max_depth:
        return
    if isinstance(obj, dict):
        yield obj
        for value in obj.values():
            yield from _walk(value, depth + 1, max_depth)
    elif isinstance(obj, list):
        for value in obj[:50]:
            yield from _walk(value, depth + 1, max_depth)


def find_scorecard(documents: list) -> dict | None:
    """The harness scorecard: a dict with a "stages" list of records with wall times."""
    for doc in documents:
        for node in _walk(doc):
            stages = node.get("stages")
            if isinstance(stages, list) and stages and all(isinstance(s, dict) for s in stages) \
                    and any("wall_seconds" in s for s in stages):
                return node
    return None


def find_reference(documents: list) -> dict | None:
    """The reference runtime measurement: a dict with ``elapsed_seconds``."""
    for doc in documents:
        if isinstance(doc, dict):
            for key in ("reference", "reference_runtime"):
                node = doc.get(key)
                if isinstance(node, dict) and _is_number(node.get("elapsed_seconds")):
                    return node
                if _is_number(node):
                    return {"elapsed_seconds": node}
    for doc in documents:
        for node in _walk(doc, max_depth=2):
            if _is_number(node.get("elapsed_seconds")):
                return node
    return None


def _looks_like_family(record) -> bool:
    return isinstance(record, dict) and any(k in record for k in ("splits", "validation", "recall_ai", "metrics"))


def find_families(documents: list) -> list[dict] | None:
    """Model-family comparison records: ``families`` as a dict of records (by name) or a list of records."""
    for doc in documents:
        for node in _walk(doc, max_depth=3):
            families = node.get("families")
            if isinstance(families, dict) and families and all(_looks_like_family(r) for r in families.values()):
                return [{"name": name, **rec} for name, rec in families.items()]
            if isinstance(families, list) and families and all(_looks_like_family(r) for r in families):
                return families
    return None


def find_key(documents: list, key: str, max_depth: int = 2):
    """The first value stored under ``key`` in any benchmark document."""
    for doc in documents:
        for node in _walk(doc, max_depth=max_depth):
            if key in node:
                return node[key]
    return None


def _family_metric(record: dict, split: str, key: str):
    for path in ((split, key), ("splits", split, key), ("metrics", split, key), ("metrics", "splits", split, key),
                 ("results", split, key)):
        value = dig(record, *path)
        if value is not None:
            return value
    return record.get(key) if split == "validation" and _is_number(record.get(key)) else None


def _family_seconds(record: dict):
    for key in ("train_seconds", "fit_seconds", "training_seconds", "seconds", "wall_seconds"):
        for path in ((key,), ("timing", key), ("fit", key)):
            value = dig(record, *path)
            if _is_number(value):
                return value
    return None


def _family_name(record: dict) -> str:
    for key in ("name", "family", "model", "label", "arch"):
        if isinstance(record.get(key), str):
            return record[key]
    return "?"


def load_bench(bench_dir: Path | None, sources: Sources) -> list:
    """All benchmark result documents: ``*-proxy.json`` first, newest first."""
    if bench_dir is None or not Path(bench_dir).is_dir():
        sources.used.append({"what": "benchmarks", "path": str(bench_dir), "status": NOT_RUN})
        return []
    files = sorted(Path(bench_dir).glob("*.json"), key=lambda p: (not p.stem.endswith("-proxy"), -p.stat().st_mtime))
    docs = [sources.json(path, "benchmark") for path in files]
    if not files:
        sources.used.append({"what": "benchmarks", "path": str(bench_dir), "status": NOT_RUN})
    return [d for d in docs if d is not None]


# --- plots ---------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
                         "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.dpi": 200})
    return plt


def plot_training_curves(metrics: dict, path: Path) -> bool:
    """Loss and holdout score per epoch of both tasks, from ``fit.history``."""
    histories = {task: dig(m, "fit", "history") for task, m in metrics.items() if m}
    histories = {t: h for t, h in histories.items() if isinstance(h, list) and h}
    if not histories:
        return False
    plt = _pyplot()
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(3.4, 1.65))
    colours = {"task02": "tab:blue", "task03": "tab:orange"}
    for task, history in histories.items():
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
        loss = [h.get("loss") if _is_number(h.get("loss")) else float("nan") for h in history]
        score = [h.get("holdout_score") if _is_number(h.get("holdout_score")) else float("nan") for h in history]
        label = TASK_NAMES[task].split(" (")[0]
        ax_loss.plot(epochs, loss, marker=".", ms=3, lw=1, color=colours[task], label=label)
        ax_score.plot(epochs, score, marker=".", ms=3, lw=1, color=colours[task], label=label)
        best = dig(metrics[task], "fit", "best_epoch")
        if _is_number(best) and 1 <= best <= len(history):
            ax_score.plot([best], [score[int(best) - 1]], marker="*", ms=7, color=colours[task], ls="none")
    ax_loss.set(xlabel="epoch", ylabel="training loss")
    ax_score.set(xlabel="epoch", ylabel="holdout score")
    ax_score.legend(loc="lower right", frameon=False)
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
    fig.tight_layout(pad=0.3)
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_robustness(metrics: dict, path: Path) -> bool:
    """Recall and FPR (with 95 % interval) of Task 2 and Task 3 on both validation splits."""
    if not any(metrics.values()):
        return False
    plt = _pyplot()
    fig, (ax_recall, ax_fpr) = plt.subplots(1, 2, figsize=(3.4, 1.75))
    width = 0.38
    colours = {"task02": "tab:blue", "task03": "tab:orange"}
    for offset, task in zip((-width / 2, width / 2), TASKS):
        m = metrics.get(task)
        recalls, fprs, errors = [], [], [[], []]
        for split in EVAL_SPLITS:
            rec = dig(m, "splits", split) or {}
            recall, fpr = rec.get("recall_ai"), rec.get("fpr")
            recalls.append(recall if _is_number(recall) else 0.0)
            fprs.append(fpr if _is_number(fpr) else 0.0)
            ci = rec.get("fpr_ci95")
            ok = _is_number(fpr) and isinstance(ci, list) and len(ci) == 2 and all(_is_number(c) for c in ci)
            errors[0].append(max(0.0, fpr - ci[0]) if ok else 0.0)
            errors[1].append(max(0.0, ci[1] - fpr) if ok else 0.0)
        xs = [i + offset for i in range(len(EVAL_SPLITS))]
        label = TASK_NAMES[task].split(" (")[0] + ("" if m else " (not run)")
        ax_recall.bar(xs, recalls, width, color=colours[task], label=label)
        ax_fpr.bar(xs, fprs, width, color=colours[task], yerr=errors, capsize=2, error_kw={"lw": 0.8})
        for x, value in zip(xs, recalls):
            ax_recall.text(x, value + 0.02, f"{value:.2f}" if m else "-", ha="center", va="bottom", fontsize=6)
    ax_fpr.axhline(0.2, color="black", lw=0.8, ls="--")
    ax_fpr.text(1.55, 0.205, "limit", ha="right", va="bottom", fontsize=6)
    ax_recall.set(ylim=(0, 1.12), ylabel="recall (AI images)")
    ax_fpr.set(ylim=(0, 0.5), ylabel="FPR (real images)")
    for ax in (ax_recall, ax_fpr):
        ax.set_xticks(range(len(EVAL_SPLITS)), ["validation", "val. augm."])
        ax.grid(axis="y", alpha=0.3)
    ax_recall.legend(loc="lower left", frameon=True, fontsize=6)
    fig.tight_layout(pad=0.3)
    fig.savefig(path)
    plt.close(fig)
    return True


# --- collecting the report's data -------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]], align: str | None = None, note: str | None = None,
           groups: list | None = None) -> dict:
    """A table for the template; ``groups`` = [[label, span], ...] adds a spanning header row above."""
    align = align or ("l" + "r" * (len(header) - 1))
    return {"header": header, "rows": rows, "align": align, "note": note, "groups": groups}


def _share_text(counts: dict | None) -> str:
    """Format/mode counts -> "JPEG" or "PNG 67 % / JPEG 33 %"."""
    if not isinstance(counts, dict) or not counts:
        return NOT_AVAILABLE
    total = sum(v for v in counts.values() if _is_number(v))
    if total <= 0:
        return NOT_AVAILABLE
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    if len(ordered) == 1:
        return str(ordered[0][0])
    return " / ".join(f"{k} {100 * v / total:.0f} %" for k, v in ordered[:3])


def exploration_tables(exploration: dict | None, cleaning: dict | None) -> dict:
    tables = {}
    splits = dig(exploration, "splits") or {}
    rows = []
    for split, stats in splits.items():
        counts = [cell(stats, ("by_source_class", c, "count"), fmt_int) for c in CLASS_KEYS]
        kept = dig(cleaning, "kept_per_split_and_class", split)
        kept_text = NOT_RUN if cleaning is None else (fmt_int(sum(kept.values())) if isinstance(kept, dict) else NOT_AVAILABLE)
        rows.append([split.replace("_", " "), *counts, cell(stats, ("all", "count"), fmt_int), kept_text])
    if not rows:
        rows = [[NOT_RUN] + [NOT_RUN] * 8]
    tables["split_counts"] = _table(["split", *CLASS_SHORT, "all", "kept"], rows)

    train = dig(splits, "train", "by_source_class")
    augmented = dig(splits, "validation_augmented", "by_source_class")

    def per_class(source, fn):
        if exploration is None:
            return [NOT_RUN] * len(CLASS_KEYS)
        return [fn(dig(source, c)) if isinstance(dig(source, c), dict) else NOT_AVAILABLE for c in CLASS_KEYS]

    def median_size(s):
        w, h = dig(s, "width", "median"), dig(s, "height", "median")
        return f"{w:.0f}\u00d7{h:.0f}" if _is_number(w) and _is_number(h) else NOT_AVAILABLE

    def jpeg_q(s):
        q = dig(s, "jpeg_quality", "median")
        return f"{q:.0f}" if _is_number(q) else "no JPEG"

    def kbytes(s):
        b = dig(s, "file_size_bytes", "median")
        return f"{b / 1000:.0f}" if _is_number(b) else NOT_AVAILABLE

    rows = [
        ["file format", *per_class(train, lambda s: _share_text(s.get("formats")))],
        ["colour mode", *per_class(train, lambda s: _share_text(s.get("modes")))],
        ["median size (px)", *per_class(train, median_size)],
        ["square images", *per_class(train, lambda s: fmt_percent(s.get("square_share")))],
        ["distinct sizes", *per_class(train, lambda s: fmt_int(s.get("distinct_sizes")))],
        ["median file size (kB)", *per_class(train, kbytes)],
        ["JPEG quality (median)", *per_class(train, jpeg_q)],
        ["EXIF present", *per_class(train, lambda s: fmt_percent(s.get("exif_share")))],
        ["ICC profile present", *per_class(train, lambda s: fmt_percent(s.get("icc_share")))],
        ["format, val. augmented", *per_class(augmented, lambda s: _share_text(s.get("formats")))],
        ["JPEG quality, val. augm.", *per_class(augmented, jpeg_q)],
    ]
    tables["characteristics"] = _table(["characteristic (train split)", *CLASS_SHORT], rows, align="l" + "c" * 6)

    probe = dig(exploration, "shortcut_probe")
    rows = []
    if probe is None:
        rows.append([NOT_RUN] * 5)
    else:
        def probe_row(name, records):
            out = [name]
            for split in EVAL_SPLITS:
                rec = dig(records, split)
                out += [cell(rec, ("balanced_accuracy",)) if rec is not None else NOT_AVAILABLE,
                        cell(rec, ("roc_auc",)) if rec is not None else NOT_AVAILABLE]
            return out

        rows.append(probe_row("all cues (random forest)", probe.get("evaluation")))
        groups = list((probe.get("cue_groups") or {}).keys()) or list(dig(probe, "single_cue", "validation") or {})
        for group in groups:
            rows.append(probe_row(group.replace("_", " "),
                                  {s: dig(probe, "single_cue", s, group) for s in EVAL_SPLITS}))
    tables["shortcut"] = _table(["metadata cue", "bal. acc.", "AUC", "bal. acc.", "AUC"], rows,
                                groups=[["", 1], ["validation", 2], ["val. augmented", 2]])
    return tables


def _model_name(text) -> str:
    """"RandomForestClassifier(n_estimators=200, ...)" -> "random forest (200 trees)"."""
    if not isinstance(text, str) or not text:
        return NOT_AVAILABLE
    name = text.split("(")[0].replace("Classifier", "")
    name = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).lower()
    trees = re.search(r"n_estimators=(\d+)", text)
    return f"{name} ({trees.group(1)} trees)" if trees else name


def exploration_values(exploration: dict | None, cleaning: dict | None) -> dict:
    values = {}
    train_all = dig(exploration, "splits", "train", "all")
    values["data.train_images"] = cell(train_all, ("count",), fmt_int)
    values["data.train_real"] = cell(exploration, ("splits", "train", "by_label", "real", "count"), fmt_int)
    values["data.train_ai"] = cell(exploration, ("splits", "train", "by_label", "ai_generated", "count"), fmt_int)
    values["data.n_splits"] = fmt_int(len(dig(exploration, "splits") or {})) if exploration else NOT_RUN
    values["data.duplicates_within"] = cell(exploration, ("duplicates", "total_within_split_duplicate_rows"), fmt_int)
    values["data.duplicates_across"] = cell(exploration, ("duplicates", "total_cross_split_shared_images"), fmt_int)
    values["data.undecodable"] = cell(exploration, ("undecodable", "total"), fmt_int)
    values["data.truncated"] = ("yes" if exploration.get("truncated") else "no") if exploration else NOT_RUN
    values["data.explore_seconds"] = cell(exploration, ("seconds",), fmt_seconds)
    for label in ("real", "ai_generated"):
        stats = dig(exploration, "splits", "train", "by_label", label)
        values[f"data.{label}.formats"] = _share_text(dig(stats, "formats")) if exploration else NOT_RUN
        values[f"data.{label}.square"] = cell(stats, ("square_share",), fmt_percent) if exploration else NOT_RUN
    probe = dig(exploration, "shortcut_probe")
    values["probe.model"] = _model_name(dig(probe, "model")) if exploration else NOT_RUN
    for split in EVAL_SPLITS:
        values[f"probe.{split}.auc"] = cell(probe, ("evaluation", split, "roc_auc")) if exploration else NOT_RUN
        values[f"probe.{split}.bal_acc"] = cell(probe, ("evaluation", split, "balanced_accuracy")) if exploration else NOT_RUN
        strongest = dig(probe, "strongest_cue", split)
        values[f"probe.{split}.strongest"] = (str(strongest).replace("_", " ") if strongest else NOT_AVAILABLE) \
            if exploration else NOT_RUN
    strength = dig(probe, "evaluation", "validation", "balanced_accuracy")
    if exploration is None:
        values["probe.abstract"] = "We test whether file format, size and JPEG quality alone would reveal the class"
    elif _is_number(strength) and strength >= 0.8:
        values["probe.abstract"] = (f"We show that file format, size and JPEG quality alone would reveal the class "
                                    f"(a metadata-only probe reaches a balanced accuracy of {fmt_rate(strength)})")
    else:
        values["probe.abstract"] = (f"We test whether file format, size and JPEG quality alone reveal the class "
                                    f"(here a metadata-only probe reaches a balanced accuracy of {fmt_rate(strength)})")
    values["clean.n_images"] = cell(cleaning, ("n_images",), fmt_int)
    values["clean.n_kept"] = cell(cleaning, ("n_kept",), fmt_int)
    if cleaning is None:
        values["clean.dropped"] = NOT_RUN
    else:
        dropped = cleaning.get("dropped_by_reason") or {}
        values["clean.dropped"] = "; ".join(f"{reason}: {count}" for reason, count in dropped.items()) \
            if dropped else "none"
    return values


def _split_row(label: str, split_label: str, record: dict | None, source_missing: bool) -> list[str]:
    keys = [("recall_ai",), ("fpr",), ("fpr_ci95",), ("precision_ai",), ("balanced_accuracy",), ("roc_auc",),
            ("recall_at_fpr_0.2_oracle",)]
    if source_missing:
        return [label, split_label] + [NOT_RUN] * len(keys)
    fmts = [fmt_rate, fmt_rate, fmt_interval, fmt_rate, fmt_rate, fmt_rate, fmt_rate]
    return [label, split_label] + [cell(record, k, f) if record is not None else NOT_AVAILABLE for k, f in zip(keys, fmts)]


METRIC_HEADER = ["recall AI", "FPR", "FPR 95 % CI", "precision", "bal. acc.", "ROC AUC", "recall\u2009@0.2 (oracle)"]


DEPLOYED = "\u2009*"  # marks the deployed detector in the tables


def model_variants(metrics: dict | None) -> list[tuple[str, dict | None]]:
    """(label, per-split metrics) of the network, the classical model and their fusion, the deployed one marked.

    Reads both schemas of metrics.json: ``network_splits`` / ``classical_splits`` beside the
    deployed ``splits``, or the older ``splits`` / ``fallback_splits``.
    """
    m = metrics or {}
    deployed = m.get("detector")
    network = m.get("network_splits") or (m.get("splits") if deployed == "network" else None)
    classical = m.get("classical_splits") or m.get("fallback_splits") or (
        m.get("splits") if deployed == "classical" else None)
    variants = [("TraceNet CNN" + (DEPLOYED if deployed == "network" else ""), network),
                ("features + logistic regr." + (DEPLOYED if deployed == "classical" else ""), classical)]
    if deployed == "fusion" or m.get("fusion") is not None and deployed != "network":
        variants.append(("fusion of both" + (DEPLOYED if deployed == "fusion" else ""),
                         m.get("splits") if deployed == "fusion" else None))
    return variants


def model_tables(metrics: dict, detectors: dict, families: list | None) -> dict:
    tables = {}
    m2 = metrics.get("task02")
    rows = []
    for label, record_splits in model_variants(m2):
        for split in EVAL_SPLITS:
            name = split.replace("_", " ").replace("validation augmented", "val. augmented")
            rows.append(_split_row(label, name, dig(record_splits, split), m2 is None or record_splits is None))
    course = None
    for record in families or []:
        if "baseline" in _family_name(record).lower() or "course" in _family_name(record).lower():
            course = record
    for split in EVAL_SPLITS:
        name = split.replace("_", " ").replace("validation augmented", "val. augmented")
        if course is None:
            rows.append(_split_row("course baseline CNN", name, None, True))
        else:
            rec = {k: _family_metric(course, split, k) for k in
                   ("recall_ai", "fpr", "fpr_ci95", "precision_ai", "balanced_accuracy", "roc_auc",
                    "recall_at_fpr_0.2_oracle")}
            rows.append(_split_row("course baseline CNN", name, rec, False))
    rows.sort(key=lambda r: (r[1] != "validation",))
    tables["task2_models"] = _table(["model", "split", *METRIC_HEADER], rows, align="ll" + "r" * 7)

    if families:
        rows = []
        for record in families:
            row = [FAMILY_LABELS.get(_family_name(record), _family_name(record).replace("_", " "))]
            for split in EVAL_SPLITS:
                row += [fmt_rate(_family_metric(record, split, "recall_ai")) if _family_metric(record, split, "recall_ai") is not None else NOT_AVAILABLE,
                        fmt_rate(_family_metric(record, split, "fpr")) if _family_metric(record, split, "fpr") is not None else NOT_AVAILABLE,
                        fmt_rate(_family_metric(record, split, "roc_auc")) if _family_metric(record, split, "roc_auc") is not None else NOT_AVAILABLE]
            row.append(fmt_seconds(_family_seconds(record)))
            rows.append(row)
    else:
        rows = [[NOT_RUN] * 8]
    tables["families"] = _table(["model family", "recall", "FPR", "AUC", "recall", "FPR", "AUC", "train s"], rows,
                                groups=[["", 1], ["validation", 3], ["val. augmented", 3], ["", 1]])

    rows = []
    for task in TASKS:
        m = metrics.get(task)
        for split in EVAL_SPLITS:
            name = split.replace("_", " ").replace("validation augmented", "val. augmented")
            rows.append(_split_row(TASK_NAMES[task], name, dig(m, "splits", split), m is None))
    tables["robustness"] = _table(["detector", "split", *METRIC_HEADER], rows, align="ll" + "r" * 7)

    rows = []
    for task in TASKS:
        m = metrics.get(task)
        for split in EVAL_SPLITS:
            name = split.replace("_", " ").replace("validation augmented", "val. augmented")
            per_class = dig(m, "splits", split, "recall_per_class")
            cells = [cell(per_class, (str(c),)) if m is not None and per_class is not None
                     else (NOT_RUN if m is None else NOT_AVAILABLE) for c in range(1, 6)]
            rows.append([TASK_NAMES[task].split(" (")[0], name, *cells])
    tables["per_class"] = _table(["detector", "split", *CLASS_SHORT[1:]], rows, align="ll" + "r" * 5)

    rows = []
    labels = [("calibration split(s)", None), ("threshold (score)", ("threshold", "value")),
              ("real calibration images n", ("threshold", "n_calibration")),
              ("order statistic k", ("threshold", "order_statistic_k")),
              ("empirical FPR on calibration", ("threshold", "empirical_fpr")),
              ("guarantee holds (n large enough)", ("threshold", "guaranteed")),
              ("FPR on validation", ("splits", "validation", "fpr")),
              ("95 % CI (Clopper-Pearson)", ("splits", "validation", "fpr_ci95")),
              ("FPR on val. augmented", ("splits", "validation_augmented", "fpr")),
              ("95 % CI (Clopper-Pearson) ", ("splits", "validation_augmented", "fpr_ci95"))]
    for label, path in labels:
        row = [label.strip()]
        for task in TASKS:
            m = metrics.get(task)
            if m is None:
                row.append(NOT_RUN)
            elif path is None:
                sets = dig(detectors.get(task), "calibration_sets") or {}
                names = {"calibration": "calib.", "calibration_augmented": "calib. augm."}
                row.append(" + ".join(names.get(s, s.replace("_", " ")) for s in sets) or NOT_AVAILABLE)
            elif path[-1] == "fpr_ci95":
                row.append(cell(m, path, fmt_interval))
            elif path[-1] == "guaranteed":
                value = dig(m, *path)
                row.append(NOT_AVAILABLE if value is None else ("yes" if value else "no"))
            elif path[-1] in ("n_calibration", "order_statistic_k"):
                row.append(cell(m, path, fmt_int))
            elif path[-1] == "value":
                row.append(cell(m, path, lambda x: f"{x:.3f}"))
            else:
                row.append(cell(m, path))
        rows.append(row)
    tables["calibration"] = _table(["", "Task 2", "Task 3"], rows)
    return tables


def model_values(metrics: dict, detectors: dict, predict_reports: dict, reference: dict | None,
                 scorecard: dict | None) -> dict:
    values = {}
    for task in TASKS:
        m = metrics.get(task)
        p = task[-1]  # "2" / "3"
        kind = (m or {}).get("detector")
        weight = dig(m, "fusion", "weight")
        values[f"t{p}.fusion_weight"] = fmt_float(weight) if m is not None else NOT_RUN
        values[f"t{p}.detector"] = NOT_RUN if m is None else {
            "network": "the TraceNet CNN",
            "classical": "the classical model (the network did not finish)",
            "fusion": (f"the fusion of the TraceNet CNN and the classical model (each score standardised on the "
                       f"real holdout images, weight {fmt_float(weight)} on the network)"),
        }.get(kind, str(kind))
        for split in EVAL_SPLITS:
            s = "val" if split == "validation" else "aug"
            for key in ("recall_ai", "fpr", "roc_auc", "balanced_accuracy", "precision_ai", "recall_at_fpr_0.2_oracle"):
                values[f"t{p}.{s}.{key}"] = cell(m, ("splits", split, key))
            values[f"t{p}.{s}.fpr_ci95"] = cell(m, ("splits", split, "fpr_ci95"), fmt_interval)
            values[f"t{p}.{s}.n_real"] = cell(m, ("splits", split, "n_real"), fmt_int)
            values[f"t{p}.{s}.n_ai"] = cell(m, ("splits", split, "n_ai"), fmt_int)
            values[f"t{p}.{s}.fp"] = cell(m, ("splits", split, "confusion", "fp"), fmt_int)
        values[f"t{p}.threshold"] = cell(m, ("threshold", "value"), lambda x: f"{x:.3f}")
        values[f"t{p}.n_cal"] = cell(m, ("threshold", "n_calibration"), fmt_int)
        values[f"t{p}.k"] = cell(m, ("threshold", "order_statistic_k"), fmt_int)
        values[f"t{p}.cal_fpr"] = cell(m, ("threshold", "empirical_fpr"))
        values[f"t{p}.max_fpr"] = cell(m, ("threshold", "max_fpr"), lambda x: f"{x:g}")
        values[f"t{p}.delta"] = cell(m, ("threshold", "confidence"), lambda x: f"{1 - x:.2g}")
        values[f"t{p}.train_images"] = cell(m, ("train_images",), fmt_int)
        values[f"t{p}.seconds"] = cell(m, ("seconds",), fmt_seconds)
        fit = dig(m, "fit")
        if m is None:
            values[f"t{p}.fit_sentence"] = f"Training: {NOT_RUN}."
        elif not isinstance(fit, dict):
            values[f"t{p}.fit_sentence"] = ("No network finished training in this run, so the calibrated classical "
                                            "fallback was deployed.")
        else:
            values[f"t{p}.fit_sentence"] = (
                f"It ran {cell(fit, ('epochs_run',), fmt_int)} epochs in {fmt_seconds(epoch_seconds_total(m))} s "
                f"(best epoch {cell(fit, ('best_epoch',), fmt_int)}; stopped: {fit.get('stopped_because', NOT_AVAILABLE)}).")
        history = dig(m, "fit", "history") or []
        epoch_secs = [h.get("seconds") for h in history if isinstance(h, dict) and _is_number(h.get("seconds"))]
        values[f"t{p}.epoch_seconds"] = fmt_seconds(sum(epoch_secs) / len(epoch_secs)) if epoch_secs else (
            NOT_RUN if m is None else NOT_AVAILABLE)
        config = dig(m, "config") or {}
        values[f"t{p}.rgb_note"] = "; the colour image itself is appended to them" if config.get("with_rgb") else ""
        for key in ("epochs", "batch_size", "lr", "weight_decay", "source_loss_weight", "patience", "holdout_fraction",
                    "clean_fraction", "width", "policy", "arch", "seed", "stem_stride"):
            values[f"t{p}.config.{key}"] = NOT_RUN if m is None else (
                NOT_AVAILABLE if key not in config else (f"{config[key]:g}" if _is_number(config[key]) else str(config[key])))
        predict = predict_reports.get(task)
        values[f"t{p}.predict.rows"] = cell(predict, ("n_rows",), fmt_int)
        values[f"t{p}.predict.ai"] = cell(predict, ("n_predicted_ai",), fmt_int)
        values[f"t{p}.predict.seconds"] = cell(predict, ("seconds",), fmt_seconds)
        values[f"t{p}.params"] = fmt_params(count_parameters(dig(m, "config")))
        # Scores of the predictions file on the labelled predict split (harness scorecard).
        scores = dig(scorecard, "tasks", task, "scores")
        for key in ("recall_ai", "fpr", "accuracy"):
            values[f"t{p}.holdout.{key}"] = NOT_RUN if scores is None else cell(scores, (key,))
        values[f"t{p}.holdout.n"] = NOT_RUN if scores is None else cell(scores, ("n",), fmt_int)

    # Robust calibration: which calibration sets, and which one set the threshold.
    for task in TASKS:
        detector = detectors.get(task)
        sets = dig(detector, "calibration_sets") or {}
        p = task[-1]
        for name in ("calibration", "calibration_augmented"):
            values[f"t{p}.calset.{name}.threshold"] = cell(sets, (name, "value"), lambda x: f"{x:.3f}") \
                if detector else NOT_RUN
        processed = {k.split("/", 1)[1]: v for k, v in sets.items() if "/" in k}
        values[f"t{p}.calset.processed"] = (", ".join(f"{k.replace('_', ' ')} {v['value']:.3f}"
                                                      for k, v in processed.items()) or "none") \
            if detector else NOT_RUN
        if sets:
            winner = max(sets, key=lambda k: sets[k].get("value", -math.inf))
            values[f"t{p}.calset.winner"] = winner.split("/")[-1].replace("_", " ") + \
                (" (processed calibration reals)" if "/" in winner else "")
        else:
            values[f"t{p}.calset.winner"] = NOT_RUN if detector is None else NOT_AVAILABLE

    # Comparisons in words, from the numbers.
    def delta_sentence(split):
        a = dig(metrics.get("task02"), "splits", split, "recall_ai")
        b = dig(metrics.get("task03"), "splits", split, "recall_ai")
        if not (_is_number(a) and _is_number(b)):
            return NOT_RUN
        diff = b - a
        verb = "raises" if diff > 0.0005 else ("lowers" if diff < -0.0005 else "keeps")
        return f"{verb} recall from {fmt_rate(a)} to {fmt_rate(b)} ({diff:+.3f})"

    values["cmp.val"] = delta_sentence("validation")
    values["cmp.aug"] = delta_sentence("validation_augmented")

    # Timing against the reference runtime.
    ref = dig(reference, "elapsed_seconds")
    values["ref.seconds"] = fmt_seconds(ref) if _is_number(ref) else NOT_RUN
    values["ref.budget"] = fmt_seconds(REFERENCE_FACTOR * ref) if _is_number(ref) else NOT_RUN
    values["ref.threads"] = cell(reference, ("threads",), fmt_int)
    values["ref.cpu"] = str(dig(reference, "cpu") or NOT_AVAILABLE) if reference else NOT_RUN
    stage_wall = {s.get("name"): s for s in (dig(scorecard, "stages") or []) if isinstance(s, dict)}
    for task, stage in (("task02", "train"), ("task03", "train_augmented")):
        p = task[-1]
        wall = dig(stage_wall, stage, "wall_seconds")
        own = epoch_seconds_total(metrics.get(task))
        used = wall if _is_number(wall) else (own if _is_number(own) else dig(metrics.get(task), "seconds"))
        values[f"t{p}.train_time_source"] = ("stage wall time under the harness" if _is_number(wall) else
                                             "sum of the epoch times" if _is_number(own) else "stage's own clock")
        values[f"t{p}.train_wall"] = fmt_seconds(used) if _is_number(used) else NOT_RUN
        values[f"t{p}.ref_ratio"] = (f"{used / ref:.1f}\u00d7" if _is_number(used) and _is_number(ref) and ref > 0
                                     else NOT_RUN)
    source = values["t2.train_time_source"]
    if _is_number(ref):
        values["timing.sentence"] = (
            f"The course's reference runtime on this machine is {values['ref.seconds']} s "
            f"({values['ref.threads']} threads), so training may take {values['ref.budget']} s "
            f"({REFERENCE_FACTOR}\u00d7 the reference). Training took {values['t2.train_wall']} s for Task 2 "
            f"({values['t2.ref_ratio']} the reference) and {values['t3.train_wall']} s for Task 3 "
            f"({values['t3.ref_ratio']}; {source}).")
    else:
        values["timing.sentence"] = (
            f"Training took {values['t2.train_wall']} s for Task 2 and {values['t3.train_wall']} s for Task 3 "
            f"({source}). The course's reference runtime is {NOT_RUN} in these results, so the ratio to it "
            f"(at most {REFERENCE_FACTOR}\u00d7 is allowed) cannot be given here.")
    return values


def epoch_seconds_total(metrics: dict | None):
    """Seconds of all training epochs, across resumptions (``fit.seconds`` counts the last process only)."""
    history = dig(metrics, "fit", "history")
    seconds = [h.get("seconds") for h in history or [] if isinstance(h, dict) and _is_number(h.get("seconds"))]
    return sum(seconds) if seconds else dig(metrics, "fit", "seconds")


def count_parameters(config: dict | None):
    """Trainable parameters of the network a run's TrainConfig describes (the code's default without one)."""
    try:
        from aidetect.models import build_model
        from aidetect.training import TrainConfig

        known = set(TrainConfig.__dataclass_fields__)
        train_config = TrainConfig(**{k: v for k, v in (config or {}).items() if k in known})
        model = build_model(train_config.arch, **train_config.model_kwargs())
        return sum(p.numel() for p in model.parameters())
    except Exception as exc:  # the report still builds without torch or the package
        warn(f"cannot count the network's parameters: {exc}")
        return None


def code_values() -> dict:
    """Design constants read from the code the run used (never typed into the report)."""
    values = {}
    try:
        from aidetect import augment, calibration, cleaning, crops, detector, features

        values["code.crop"] = str(crops.CROP_SIZE)
        values["code.train_crop"] = str(crops.TRAIN_CROP)
        values["code.grid"] = str(crops.GRID)
        values["code.min_side"] = str(cleaning.MIN_TRAIN_SIDE)
        values["code.min_side_upscale"] = f"{crops.CROP_SIZE / cleaning.MIN_TRAIN_SIDE:g}"
        values["code.n_features"] = str(len(features.FEATURE_NAMES))
        for group, names in features.FEATURE_GROUPS.items():
            values[f"code.features.{group}"] = str(len(names))
        values["code.max_fpr"] = f"{detector.MAX_FPR:g}"
        values["code.delta"] = f"{detector.DELTA:g}"
        values["code.min_cal"] = str(calibration.min_calibration_size(detector.MAX_FPR, detector.DELTA))
        for policy in (augment.NEUTRAL, augment.ROBUST):
            prefix = f"code.{policy.name}"
            values[f"{prefix}.jpeg_p"] = f"{policy.jpeg_p:g}"
            values[f"{prefix}.jpeg_q"] = f"{policy.jpeg_quality[0]}\u2013{policy.jpeg_quality[1]}"
            values[f"{prefix}.blur_p"] = f"{policy.blur_p:g}"
            values[f"{prefix}.blur_sigma"] = f"{policy.blur_sigma[0]:g}\u2013{policy.blur_sigma[1]:g}"
            values[f"{prefix}.rescale_p"] = f"{policy.rescale_p:g}"
            values[f"{prefix}.rescale"] = f"{policy.rescale[0]:g}\u2013{policy.rescale[1]:g}"
            values[f"{prefix}.noise_p"] = f"{policy.noise_p:g}"
            values[f"{prefix}.noise_sigma"] = f"{policy.noise_sigma[0]:g}\u2013{policy.noise_sigma[1]:g}"
            values[f"{prefix}.colour_p"] = f"{policy.colour_p:g}"
            values[f"{prefix}.area_p"] = f"{policy.area_p:g}"
            values[f"{prefix}.area"] = f"{policy.area[0]:g}\u2013{policy.area[1]:g}"
        values["code.train_views"] = str(cleaning.TRAIN_VIEWS)
        values["code.view_window"] = str(cleaning.VIEW_WINDOW)
        logistic = __import__("aidetect.classical", fromlist=["make_classifier"]).make_classifier("logistic")
        values["code.logistic_c"] = f"{logistic[-1].C:g}"
    except Exception as exc:  # the report still builds without the package
        warn(f"cannot read design constants from solution/aidetect: {exc}")
    try:
        from aidetect.models import CourseBaselineCNN

        values["code.baseline_params"] = fmt_params(sum(p.numel() for p in CourseBaselineCNN().parameters()))
    except Exception:
        values["code.baseline_params"] = NOT_AVAILABLE
    return values


def timing_table(scorecard: dict | None, metrics: dict) -> dict:
    rows = []
    stages = dig(scorecard, "stages")
    if isinstance(stages, list) and stages:
        for stage in stages:
            status = "ok" if stage.get("ok") else ("timeout" if stage.get("timed_out") else "failed")
            rows.append([str(stage.get("name", "?")).replace("_", " "), fmt_int(stage.get("timeout_seconds")),
                         fmt_seconds(stage.get("wall_seconds")), fmt_int(stage.get("peak_rss_mb")), status])
        rows.append(["total", "", fmt_seconds(scorecard.get("total_wall_seconds")), "", ""])
    else:
        rows.append(["all stages (harness)", NOT_RUN, NOT_RUN, NOT_RUN, NOT_RUN])
    note = None
    if scorecard is not None:
        note = (f"Harness run: {scorecard.get('cpu_model', '?')}, {scorecard.get('threads_for_cpus8', '?')} threads, "
                f"isolation {scorecard.get('isolation', '?')}, timeout scale {scorecard.get('timeout_scale', '?')}.")
    return _table(["stage", "timeout s", "wall s", "peak MB", "status"], rows, note=note)


def holdout_table(scorecard: dict | None, flipped: dict | None, halves: dict | None = None) -> dict:
    """Scores of the predictions files on the labelled predict split, its shortcut-flipped copy and the flip's halves."""
    rows = []
    sources = [("predict", dig(scorecard, "tasks"), scorecard is None)]
    if flipped is not None:
        sources.append(("flipped", flipped, False))
    for half, tasks in (halves or {}).items():
        if isinstance(tasks, dict):
            sources.append((f"flip: {half}", tasks, False))
    for name, tasks, missing in sources:
        for task in TASKS:
            label = TASK_NAMES[task].split(" (")[0]
            scores = dig(tasks, task, "scores")
            valid = dig(tasks, task, "valid")
            if missing:
                rows.append([label, name, *[NOT_RUN] * 5])
                continue
            rows.append([label, name, NOT_AVAILABLE if valid is None else ("yes" if valid else "NO"),
                         *(cell(scores, (key,), fmt) if scores else NOT_AVAILABLE for key, fmt in
                           (("n", fmt_int), ("recall_ai", fmt_rate), ("fpr", fmt_rate), ("accuracy", fmt_rate)))])
    return _table(["detector", "split", "valid", "n", "recall AI", "FPR", "acc."], rows, align="llcrrrr")


UNDER_PROCESSING_RULE = "calibration + calibration_augmented + calibration reals under processing"
SAME_RULE_NAMES = {"calibration": "clean", "calibration + calibration_augmented": "both",
                   UNDER_PROCESSING_RULE: "processed"}
SAME_RULE_VALUES = ("same.clean.gap_val", "same.clean.gap_aug", "same.strict.gap_val", "same.strict.gap_aug",
                    "same.t3.aug_oracle")


def same_rule_section(same_rule) -> dict:
    """Task 2 and Task 3 under both threshold rules (``benchmarks/same_calibration.py``): table and sentence values."""
    if not isinstance(same_rule, dict) or not all(isinstance(same_rule.get(t), dict) for t in TASKS):
        return {"tables": {}, "values": {key: NOT_RUN for key in SAME_RULE_VALUES}}
    rows, recall = [], {}
    for task in TASKS:
        own = same_rule[task].get("own_rule")
        for rule, result in (same_rule[task].get("rules") or {}).items():
            splits = dig(result, "splits") or {}
            rows.append([TASK_NAMES[task].split(" (")[0], SAME_RULE_NAMES.get(rule, rule) + (" *" if rule == own else ""),
                         cell(result, ("threshold",), lambda x: fmt_float(x, 3)),
                         *(f"{cell(splits, (s, 'recall_ai'))} / {cell(splits, (s, 'fpr'))}"
                           for s in ("validation", "validation_augmented")),
                         cell(splits, ("validation_augmented", "recall_at_fpr_0.2_oracle"))])
            for s in ("validation", "validation_augmented"):
                recall[(task, rule, s)] = dig(splits, s, "recall_ai")
    values = {}
    for short, rule in (("clean", "calibration"), ("strict", UNDER_PROCESSING_RULE)):
        for s, key in (("validation", "val"), ("validation_augmented", "aug")):
            a, b = recall.get(("task03", rule, s)), recall.get(("task02", rule, s))
            values[f"same.{short}.gap_{key}"] = f"{a - b:+.3f}" if _is_number(a) and _is_number(b) else NOT_AVAILABLE
    values["same.t3.aug_oracle"] = cell(same_rule, ("task03", "rules", UNDER_PROCESSING_RULE, "splits",
                                                    "validation_augmented", "recall_at_fpr_0.2_oracle"))
    table = _table(["detector", "rule", "thr.", "val.: recall / FPR", "augm.: recall / FPR",
                    "oracle (augm.)"], rows, align="llrrrr",
                   note="Rule: the calibration sets whose real images keep the bound (clean: calibration; "
                        "both: also calibration_augmented; processed: also the calibration reals processed by each "
                        "family Task 3 trains on); * = the detector's own rule. Oracle: the best recall "
                        "of any threshold at an empirical FPR <= 0.20 on validation_augmented; thr. = threshold.")
    return {"tables": {"same_rule": table}, "values": values}


def find_robustness(documents: list) -> dict | None:
    """The newest robustness comparison result (``benchmarks/robustness.py``)."""
    return next((d for d in documents if isinstance(d, dict) and "leave_one_family_out" in d
                 and isinstance(d.get("targets"), list)), None)


def robustness_bench_section(result: dict | None) -> dict:
    """The targets table and the sentence values of the robustness comparison runs."""
    keys = ("robust.runs", "robust.families", "robust.unseen", "robust.lofo", "robust.met", "robust.targets")
    if result is None:
        return {"tables": {}, "values": {key: NOT_RUN for key in keys}}
    rows = [[t["name"], NOT_AVAILABLE if t["value"] is None else fmt_float(t["value"], 3), t["goal"],
             {True: "yes", False: "no", None: NOT_AVAILABLE}[t["met"]]] for t in result["targets"]]
    families = result.get("families") or {}
    values = {"robust.runs": str(len(result.get("runs") or [])), "robust.families": str(len(families)),
              "robust.unseen": str(sum(f.get("trained_as") is None for f in families.values())),
              "robust.lofo": str(len(result.get("leave_one_family_out") or {})),
              "robust.met": str(sum(bool(t["met"]) for t in result["targets"])),
              "robust.targets": str(len(result["targets"]))}
    table = _table(["target (proxy; mean over seeds)", "value", "goal", "met"], rows, align="lrrr")
    return {"tables": {"targets": table}, "values": values}


# --- generic rendering of JSON whose schema is owned elsewhere ---------------------------------


def _label(key: str) -> str:
    return str(key).replace("_", " ")


def _format_any(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return fmt_int(value)
    if _is_number(value):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, float):
        return NOT_AVAILABLE
    return str(value)


def scalar_rows(data, max_rows: int = 14, max_depth: int = 2, skip=("seconds", "seed", "version")) -> list[list[str]]:
    """(dotted key, value) rows of the numeric leaves of a JSON document."""
    rows = []

    def visit(obj, prefix, depth):
        if len(rows) >= max_rows:
            return
        if isinstance(obj, dict):
            for key, value in obj.items():
                if isinstance(value, (dict, list)):
                    if depth < max_depth and isinstance(value, dict):
                        visit(value, f"{prefix}{_label(key)} / ", depth + 1)
                elif (_is_number(value) or isinstance(value, bool)) and not any(s in str(key) for s in skip):
                    rows.append([f"{prefix}{_label(key)}", _format_any(value)])
                    if len(rows) >= max_rows:
                        return

    visit(data, "", 0)
    return rows


# --- attribution and open set ----------------------------------------------------------------

FAMILY_LABELS = {
    "classical_logistic": "features + logistic regr.", "classical_boosting": "features + gradient boosting",
    "tracenet": "TraceNet (high-pass)", "tracenet_rgb": "TraceNet + RGB input", "course_baseline": "course baseline CNN",
}
SCORE_LABELS = {"centroid_distance": "centroid distance", "max_softmax": "max. softmax", "energy": "energy",
                "energy/head": "energy (source head)", "max_softmax/head": "max. softmax (source head)"}


def _class_label(key) -> str:
    key = str(key)
    return "real" if key == "0" else (f"gen {key}" if key.isdigit() else _label(key))


def attribution_section(main: dict | None, logo: list | None, predict_scored: dict | None) -> dict:
    """Values and tables of the attribution / open-set section (schema of ``aidetect.attribution``)."""
    values, tables = {}, {}
    missing = main is None
    deployed = dig(main, "deployed") or {}
    classifier, score_name = deployed.get("classifier"), deployed.get("outlier_score")
    values["attr.model"] = NOT_RUN if missing else str(dig(main, "model_task") or NOT_AVAILABLE)
    values["attr.classifier"] = NOT_RUN if missing else {"head": "the source head", "centroid": "the nearest centroid"}.get(
        classifier, str(classifier or NOT_AVAILABLE))
    values["attr.score"] = NOT_RUN if missing else SCORE_LABELS.get(score_name, str(score_name or NOT_AVAILABLE))
    values["attr.w"] = cell(main, ("w",), lambda x: f"{x:g}")
    values["attr.cap"] = cell(main, ("outlier_max_fpr",), fmt_percent)
    values["attr.n_cal"] = cell(main, ("deployed", "threshold", "n_calibration"), fmt_int)
    values["attr.guaranteed"] = NOT_RUN if missing else (
        {True: "holds", False: "does not hold (too few images; the largest score is used)"}.get(
            dig(main, "calibration", score_name, "guaranteed_all_sets"), NOT_AVAILABLE))
    values["attr.rate_bound"] = cell(main, ("calibration", score_name, "rate_bound_95"), lambda x: fmt_percent(x, 1)) \
        if not missing else NOT_RUN
    values["attr.selection_split"] = cell(main, ("classifier_selection", "split"), lambda x: str(x).replace("_", " "))
    values["attr.predict_macro"] = cell(predict_scored, ("open_set", "macro_score"))
    values["attr.predict_acc"] = cell(predict_scored, ("closed_set_with_outliers_as_errors", "accuracy"))
    values["attr.predict_n"] = cell(predict_scored, ("n",), fmt_int)

    splits = {k: v for k, v in (dig(main, "splits") or {}).items() if isinstance(v, dict)}
    measures = [
        ("source head: accuracy", ("closed_set", "head", "accuracy"), fmt_rate),
        ("source head: macro F1", ("closed_set", "head", "macro_f1"), fmt_rate),
        ("nearest centroid: accuracy", ("closed_set", "centroid", "accuracy"), fmt_rate),
        ("nearest centroid: macro F1", ("closed_set", "centroid", "macro_f1"), fmt_rate),
        ("distinguishability (mean)", ("distinguishability", "mean_ratio"), fmt_float),
        ("open set: macro score", ("deployed", "macro_score"), fmt_rate),
        ("open set: known called outlier", ("deployed", "outlier_rate_known"), lambda x: fmt_percent(x, 1)),
    ]
    if splits:
        rows = [[label, *(cell(result, path, fmt) for result in splits.values())] for label, path, fmt in measures]
        header = ["", *(k.replace("_", " ").replace("validation augmented", "val. augmented") for k in splits)]
    else:
        rows = [[label, NOT_RUN] for label, _, _ in measures]
        header = ["", "validation"]
    tables["attr_splits"] = _table(header, rows)

    rows = []
    validation = dig(main, "splits", "validation")
    per_class = dig(validation, "open_set", classifier, score_name, "per_class") or {}
    ratios = dig(validation, "distinguishability", "per_class") or {}
    for key in sorted(set(per_class) | set(ratios), key=lambda k: (not str(k).isdigit(), str(k))):
        rows.append([_class_label(key), cell(per_class, (key, "n"), fmt_int), cell(per_class, (key, "tpr")),
                     cell(per_class, (key, "fpr")), cell(per_class, (key, "score")),
                     cell(ratios, (key, "ratio"), fmt_float)])
    if not rows:
        rows = [[NOT_RUN] * 6]
    tables["attr_classes"] = _table(["class", "n", "TPR", "FPR", "score", "inter/intra"], rows)

    rows = []
    for run in logo or []:
        split = dig(run, "splits", "validation")
        if not isinstance(split, dict):
            continue
        score = dig(run, "deployed", "outlier_score") or "centroid_distance"  # the run's own deployed score
        rows.append([f"gen {run.get('held_out', '?')}", cell(split, ("held_out", "n"), fmt_int),
                     cell(split, ("held_out", "flagged_generated")),
                     cell(split, ("known_generators", "flagged_generated")), cell(split, ("real", "fpr")),
                     cell(split, ("held_out", "binary_roc_auc_vs_real")),
                     cell(split, ("held_out", "rejected_outlier", score)),
                     cell(split, ("known_outlier_rate", score)),
                     cell(split, ("held_out", "outlier_roc_auc", score))])
    if not rows:
        rows = [[NOT_RUN] * 9]
    tables["logo"] = _table(["held out", "n", "flagged", "known flagged", "real FPR", "AUC vs real", "rejected",
                             "known rejected", "outlier AUC"], rows)
    epochs = [dig(run, "fit", "epochs_run") for run in logo or []]
    epochs = sorted({int(e) for e in epochs if _is_number(e)})
    values["logo.epochs"] = NOT_RUN if not logo else (
        NOT_AVAILABLE if not epochs else str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}\u2013{epochs[-1]}")
    return {"values": values, "tables": tables}


def first_file(patterns: Iterable[tuple[Path | None, str]]) -> Path | None:
    """The first existing file among (folder, glob pattern) pairs, newest first within a folder."""
    for folder, pattern in patterns:
        if folder is not None and Path(folder).is_dir():
            matches = sorted(Path(folder).glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
            if matches:
                return matches[0]
    return None


# --- explainability and attribution ----------------------------------------------------------


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def explain_figures(summary, explain_dir: Path | None) -> list[dict]:
    """Figures the explainability summary names (with captions), else every PNG in the folder."""
    found, seen = [], set()

    def add(path_text, caption):
        if not explain_dir:
            return
        path = Path(path_text)
        for candidate in (path, explain_dir / path, explain_dir / path.name, explain_dir / "figures" / path.name):
            if candidate.is_file() and candidate.suffix.lower() in _IMAGE_SUFFIXES:
                key = candidate.resolve()
                if key not in seen:
                    seen.add(key)
                    found.append({"source": candidate, "caption": caption})
                return

    def visit(obj, caption=None, depth=0):
        if depth > 5:
            return
        if isinstance(obj, dict):
            text = next((obj[k] for k in ("caption", "title", "description", "what") if isinstance(obj.get(k), str)), None)
            for key, value in obj.items():
                if isinstance(value, str) and value.lower().endswith(_IMAGE_SUFFIXES):
                    add(value, text or _label(Path(value).stem))
                else:
                    visit(value, text, depth + 1)
        elif isinstance(obj, list):
            for value in obj:
                if isinstance(value, str) and value.lower().endswith(_IMAGE_SUFFIXES):
                    add(value, caption if caption and len(obj) == 1 else _label(Path(value).stem))
                else:
                    visit(value, caption, depth + 1)

    visit(summary)
    if not found and explain_dir and explain_dir.is_dir():
        for path in sorted(explain_dir.rglob("*")):
            if path.suffix.lower() in _IMAGE_SUFFIXES:
                add(str(path), _label(path.stem))
    for fig in found:
        fig["caption"] = explain_caption(fig["source"].stem, fig["caption"])
    # One figure of each kind first (the final model's), then the second variants.
    found.sort(key=lambda fig: explain_rank(fig["source"].stem))
    seen_kinds: dict[int, int] = {}
    for fig in found:
        kind = explain_rank(fig["source"].stem)[0]
        fig["variant"] = seen_kinds.get(kind, 0)
        seen_kinds[kind] = fig["variant"] + 1
    return sorted(found, key=lambda fig: (fig["variant"], explain_rank(fig["source"].stem)))


# Explainability figures by importance for the report (file-name fragments), with their captions.
EXPLAIN_FIGURES = (
    ("gradcam_mean", "Mean Grad-CAM evidence on real and on generated validation crops"),
    ("channel_ablation", "Traces or colour? ROC AUC and decisions with groups of the fixed input channels zeroed"),
    ("shortcut_audit", "Shortcut audit: score change under re-encoding (PNG/JPEG), resizing, aspect crops and borders"),
    ("errors", "False positives and false negatives, with their Grad-CAM maps"),
    ("deletion_curves", "Deletion test: the score as the most-attributed pixels are removed first, against random order"),
    ("attributions", "Grad-CAM, Integrated Gradients and occlusion on sample crops"),
    ("frequency_filtering", "The score under low- and high-pass filtering of the crops"),
    ("spectra", "Mean spectra of real and generated crops"),
    ("per_source", "Rates per source at the calibrated threshold"),
    ("image_statistics", "Errors against image statistics"),
    ("shortcut_by_source", "Shortcut audit per source"),
)


def explain_rank(stem: str) -> tuple:
    """Sort key: the figure's importance, the final (Task 3) model's figure before Task 2's."""
    rank = next((i for i, (key, _) in enumerate(EXPLAIN_FIGURES) if key in stem), len(EXPLAIN_FIGURES))
    return (rank, 0 if "task03" in stem else 1, stem)


def explain_caption(stem: str, fallback: str) -> str:
    caption = next((text for key, text in EXPLAIN_FIGURES if key in stem), None)
    if caption is None:
        return fallback
    task = next((TASK_NAMES[t] for t in TASKS if t in stem), None)
    return f"{caption}{f', {task}' if task else ''}."


# --- the build -----------------------------------------------------------------------------


def read_team(path: Path = TEAM_FILE) -> dict:
    team = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    members = [m if isinstance(m, str) else str(m.get("name", "?")) for m in team.get("members", [])]
    student_id = str(team.get("student_id", PLACEHOLDER_ID))
    if not members or student_id == PLACEHOLDER_ID or any(m.startswith("Team member") for m in members):
        warn(f"{path} still holds placeholder names or student ID: edit it before submitting")
    return {"members": members or ["(no team members in report/team.json)"], "student_id": student_id}


def template_body_size(template: Path = TEMPLATE) -> str:
    """The body font size the template sets (its single ``#let body-size = ...`` line)."""
    match = re.search(r"^#let body-size = (\S+)", template.read_text(encoding="utf-8"), re.M)
    if not match:
        raise ReportError(f"{template} does not define '#let body-size = ...'")
    return match.group(1)


def _copy_figure(source: Path, build: Path, name: str) -> str:
    folder = build / "fig"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}{source.suffix.lower()}"
    shutil.copyfile(source, target)
    return f"fig/{target.name}"


# Figures dropped, in this order, when the report does not fit in MAX_PAGES pages.
COMPACTION_STEPS = (
    {"explain_max": 4},
    {"explain_max": 3},
    {"drop": ("jpeg_quality",), "explain_max": 3},
    {"drop": ("jpeg_quality",), "explain_max": 2},
    {"drop": ("jpeg_quality", "class_distribution"), "explain_max": 2},
    {"drop": ("jpeg_quality", "class_distribution", "format_mode_share"), "explain_max": 2},
    {"drop": ("jpeg_quality", "class_distribution", "format_mode_share", "size_scatter"), "explain_max": 1},
    {"drop": ("jpeg_quality", "class_distribution", "format_mode_share", "size_scatter"), "explain_max": 0},
)


def collect(artifacts: Path, bench: Path | None, explain: Path | None, build: Path) -> dict:
    """Everything the template shows, formatted, plus the figures it may use."""
    sources = Sources()
    exploration = sources.json(artifacts / "clean" / "exploration.json", "exploration")
    cleaning = sources.json(artifacts / "clean" / "cleaning.json", "cleaning")
    metrics = {task: sources.json(artifacts / task / "metrics.json", f"{task} metrics") for task in TASKS}
    detectors = {task: sources.json(artifacts / task / "detector.json", f"{task} detector") for task in TASKS}
    predict_reports = {task: sources.json(artifacts / task / "predict_report.json", f"{task} predictions report")
                       for task in TASKS}
    attribution = sources.json(artifacts / "attribution" / "metrics.json", "attribution")
    documents = load_bench(bench, sources)
    scorecard, reference, families = find_scorecard(documents), find_reference(documents), find_families(documents)
    summary = sources.json(explain / "summary.json", "explainability summary") if explain else None
    discussion_path = explain / "discussion.md" if explain else None
    discussion = discussion_path.read_text(encoding="utf-8") if discussion_path and discussion_path.is_file() else None
    sources.used.append({"what": "explainability discussion", "path": str(discussion_path),
                         "status": "read" if discussion is not None else NOT_RUN})

    values = {}
    values.update(code_values())
    values.update(exploration_values(exploration, cleaning))
    values.update(model_values(metrics, detectors, predict_reports, reference, scorecard))
    tables = {}
    tables.update(exploration_tables(exploration, cleaning))
    tables.update(model_tables(metrics, detectors, families))
    tables["timing"] = timing_table(scorecard, metrics)
    attribution_main = attribution if isinstance(attribution, dict) and "splits" in attribution else None
    if attribution_main is None:
        from_bench = find_key(documents, "attribution", max_depth=1)
        attribution_main = from_bench if isinstance(from_bench, dict) and "splits" in from_bench else None
    logo = find_key(documents, "logo", max_depth=1)
    logo = logo if isinstance(logo, list) and logo else None
    predict_scored = find_key(documents, "predict_scored", max_depth=1)
    attr = attribution_section(attribution_main, logo, predict_scored if isinstance(predict_scored, dict) else None)
    values.update(attr["values"])
    tables.update(attr["tables"])
    flipped = find_key(documents, "flipped", max_depth=1)
    halves = find_key(documents, "flip_decomposition", max_depth=1)
    same_rule = find_key(documents, "same_rule", max_depth=1)
    same = same_rule_section(same_rule)
    values.update(same["values"])
    tables.update(same["tables"])
    robust_bench = find_robustness(documents)
    robust = robustness_bench_section(robust_bench)
    values.update(robust["values"])
    tables.update(robust["tables"])
    tables["holdout"] = holdout_table(scorecard, flipped if isinstance(flipped, dict) else None,
                                      halves if isinstance(halves, dict) else None)

    figures = {}
    for name in EXPLORATION_FIGURES:
        source = artifacts / "clean" / "figures" / f"{name}.png"
        figures[name] = _copy_figure(source, build, name) if source.is_file() else None
    bench_figures = Path(bench) / "figures" if bench else None
    for name, patterns in (
            ("attr_confusion", [(artifacts / "attribution" / "figures", "confusion_validation.png"),
                                (bench_figures, "*confusion_validation.png")]),
            ("logo", [(bench_figures, "*logo-validation.png")])):
        found = first_file(patterns)
        figures[name] = _copy_figure(found, build, name) if found else None
    families_figure = Path(bench) / robust_bench["figures"]["fpr"] if robust_bench and bench else None
    figures["robust_families"] = _copy_figure(families_figure, build, "robust_families") \
        if families_figure and families_figure.is_file() else None
    figures["training_curves"] = "fig/training_curves.png" if plot_training_curves(
        {t: metrics[t] for t in TASKS}, build / "fig" / "training_curves.png") else None
    figures["robustness"] = "fig/robustness.png" if plot_robustness(
        {t: metrics[t] for t in TASKS}, build / "fig" / "robustness.png") else None

    explain_figs = []
    for i, fig in enumerate(explain_figures(summary, explain) if (summary is not None or discussion is not None) else []):
        explain_figs.append({"path": _copy_figure(fig["source"], build, f"explain_{i:02d}"),
                             "caption": fig["caption"], "source": str(fig["source"])})

    return {
        "roots": {"artifacts": artifacts, "benchmarks": bench, "explainability": explain},
        "team": read_team(), "sources": sources, "values": values, "tables": tables, "figures": figures,
        "explain_figures": explain_figs, "discussion": discussion, "summary": summary,
        "attribution": attribution, "families": families, "metrics": metrics,
        "has": {"exploration": exploration is not None, "cleaning": cleaning is not None,
                "task02": metrics["task02"] is not None, "task03": metrics["task03"] is not None,
                "network02": dig(metrics["task02"], "detector") == "network",
                "fusion02": dig(metrics["task02"], "detector") == "fusion",
                "network03": dig(metrics["task03"], "detector") == "network",
                "bench": bool(documents), "scorecard": scorecard is not None, "reference": reference is not None,
                "families": families is not None, "summary": summary is not None,
                "discussion": discussion is not None, "attribution": attribution_main is not None,
                "attribution_generic": attribution is not None and attribution_main is None,
                "logo": logo is not None, "flipped": isinstance(flipped, dict),
                "flip_halves": isinstance(halves, dict), "same_rule": bool(same["tables"]),
                "robust_bench": bool(robust["tables"])},
    }


def render_data(collected: dict, step: dict, explain_dir: Path | None, build: Path) -> dict:
    """The JSON the template reads, for one compaction step."""
    figures = dict(collected["figures"])
    dropped = [name for name in step.get("drop", ()) if figures.get(name)]
    for name in dropped:
        figures[name] = None
    explain_max = step.get("explain_max", 6)
    used_sources: set[str] = set()
    inline_count = [0]

    def image_block(alt: str, path_text: str) -> str:
        if explain_dir is None or inline_count[0] >= explain_max:
            return ""
        for fig in collected["explain_figures"]:
            if Path(fig["source"]).name == Path(path_text).name:
                inline_count[0] += 1
                used_sources.add(fig["source"])
                caption = alt or fig["caption"]
                width = "100%" if _is_wide(build / fig["path"]) else "55%"
                return (f"#figure(image({typst_string(fig['path'])}, width: {width}), "
                        f'caption: [{escape_typst(caption)}], placement: auto, scope: "parent")')
        return ""

    discussion = None
    if collected["discussion"] is not None:
        discussion = markdown_to_typst(collected["discussion"], image_block)
    remaining = [f for f in collected["explain_figures"] if f["source"] not in used_sources]
    explain_figs = [{"path": f["path"], "caption": f["caption"], "file": Path(f["source"]).name,
                     "wide": _is_wide(build / f["path"])}
                    for f in remaining[:max(0, explain_max - inline_count[0])]]

    attribution = collected["attribution"]
    return {
        "team": collected["team"],
        "values": collected["values"],
        "tables": collected["tables"],
        "figures": figures,
        "dropped_figures": dropped,  # left out to fit the page limit (not missing)
        "explain_figures": explain_figs,
        "discussion": discussion,
        "attribution_scalars": _table(["quantity", "value"], scalar_rows(attribution, max_rows=12))
        if attribution is not None else None,
        "has": collected["has"],
        "inputs": input_groups(collected["sources"].used, collected["roots"]),
        "not_run": NOT_RUN,
        "step": COMPACTION_STEPS.index(step),
    }


WIDE_ASPECT = 2.2  # figures wider than this (width / height) span both columns ...
WIDE_PIXELS = 900  # ... and so do figures drawn this wide (their lettering is too small for a column)


def _is_wide(path: Path) -> bool:
    try:
        from PIL import Image

        with Image.open(path) as image:
            return image.width >= WIDE_PIXELS or image.width / max(1, image.height) > WIDE_ASPECT
    except Exception:
        return False


def input_groups(used: list[dict], roots: dict[str, Path | None]) -> list[dict]:
    """The report's inputs grouped by folder: [{"folder", "files": [{"file", "status"}]}]."""
    groups = {name: {"name": name, "folder": _breakable(_short_path(str(root))) if root else NOT_RUN, "files": []}
              for name, root in roots.items()}
    for entry in used:
        path = Path(entry["path"])
        for name, root in roots.items():
            if root is not None and (path == Path(root) or Path(root) in path.parents):
                relative = path.relative_to(root).as_posix() if path != Path(root) else "."
                groups[name]["files"].append({"file": _breakable(relative), "status": entry["status"]})
                break
    return list(groups.values())


def _breakable(path: str) -> str:
    return path.replace("/", "/\u200b")


def _short_path(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def page_count(pdf: Path) -> int:
    from pypdf import PdfReader

    return len(PdfReader(str(pdf)).pages)


def compile_typst(build: Path, data: dict, template: Path = TEMPLATE) -> Path:
    import typst

    (build / "data.json").write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    shutil.copyfile(template, build / "report.typ")
    pdf = build / "report.pdf"
    try:
        typst.compile(str(build / "report.typ"), output=str(pdf), root=str(build), ignore_system_fonts=True)
    except Exception as exc:  # typst.TypstError carries the source location of the problem
        raise ReportError(f"Typst could not compile {build / 'report.typ'} (data in {build / 'data.json'}): {exc}") from exc
    return pdf


def build_report(artifacts: Path, bench: Path | None, explain: Path | None, out: Path,
                 build: Path = DEFAULT_BUILD, max_pages: int = MAX_PAGES) -> dict:
    """Build the PDF at ``out``; returns {"pdf", "pages", "step", "sources"}. Raises ReportError."""
    artifacts, out, build = Path(artifacts), Path(out), Path(build)
    bench = Path(bench) if bench else None
    explain = Path(explain) if explain else None
    # Clear only what an earlier build wrote (never the folder itself: --build may point anywhere).
    shutil.rmtree(build / "fig", ignore_errors=True)
    for name in ("data.json", "report.typ", "report.pdf"):
        (build / name).unlink(missing_ok=True)
    (build / "fig").mkdir(parents=True)
    collected = collect(artifacts, bench, explain, build)
    pages = None
    for step in COMPACTION_STEPS:
        pdf = compile_typst(build, render_data(collected, step, explain, build))
        pages = page_count(pdf)
        if pages <= max_pages:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            shutil.copyfile(pdf, tmp)
            os.replace(tmp, out)
            return {"pdf": out, "pages": pages, "step": COMPACTION_STEPS.index(step),
                    "sources": collected["sources"].used}
    raise ReportError(
        f"the report has {pages} pages even with every optional figure dropped; the limit is {max_pages}. "
        f"Shorten the text (e.g. {explain / 'discussion.md' if explain else 'the template'}) and build again; "
        f"the over-long PDF is at {build / 'report.pdf'}, nothing was written to {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=SOLUTION / "artifacts", help="artifacts folder of the run")
    parser.add_argument("--bench", type=Path, default=REPO / "benchmarks" / "results", help="benchmark results folder")
    parser.add_argument("--explain", type=Path, default=REPO / "explainability" / "output",
                        help="explainability output folder (summary.json, discussion.md, figures)")
    parser.add_argument("--out", type=Path, default=REPORT_DIR / "report.pdf", help="the PDF to write")
    parser.add_argument("--build", type=Path, default=DEFAULT_BUILD, help="folder for plots and intermediate files")
    args = parser.parse_args(argv)
    if not args.artifacts.is_dir():
        print(f"build_report: warning: artifacts folder {args.artifacts} does not exist; every run number "
              f"will read '{NOT_RUN}'", file=sys.stderr)
    try:
        result = build_report(args.artifacts, args.bench, args.explain, args.out, args.build)
    except ReportError as exc:
        print(f"build_report: error: {exc}", file=sys.stderr)
        return 1
    missing = [s for s in result["sources"] if s["status"] != "read"]
    print(f"wrote {result['pdf']} ({result['pages']} pages, compaction step {result['step']})")
    for s in missing:
        print(f"  {s['status']}: {s['what']} ({s['path']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
