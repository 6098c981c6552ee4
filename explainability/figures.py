"""The figures: one function per figure, each under 300 KB, drawn at the size it is printed.

Figures are laid out for an A4 page (6.85 in across both columns) with no text under 7 pt, and
saved at print resolution: plots as PNG, figures of photographs as high-quality JPEG when their
PNG would exceed the size limit (a colour palette would band the photos and the colour bars).
Heat maps are drawn over a grey copy of the crop with their own colour bar; every figure says in
its title what its numbers are.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

from aidetect.labels import SOURCE_NAMES  # noqa: E402
from aidetect.metrics import clopper_pearson  # noqa: E402

MAX_BYTES = 290_000
DPI = 220  # print resolution of a figure drawn at its printed size
PAGE_INCHES = 6.85  # both columns of the report's A4 page
MIN_FONT = 7.0
plt.rcParams.update({"font.size": 7.5, "axes.titlesize": 8, "axes.labelsize": 7.5, "legend.fontsize": 7,
                     "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.titlesize": 8.5})
TASK_COLOURS = {"task02": "tab:blue", "task03": "tab:orange"}
METHOD_COLOURS = {"gradcam": "tab:red", "integrated_gradients": "tab:purple", "occlusion": "tab:green"}
METHOD_NAMES = {"gradcam": "Grad-CAM", "integrated_gradients": "Integrated Gradients", "occlusion": "Occlusion"}
TASK_NAMES = {"task02": "Task 2 (plain)", "task03": "Task 3 (robust)"}


def _png(fig, dpi: int) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=0, optimize=True)
    return buffer.getvalue()


# The JPEG settings tried, in order, when a figure's PNG is over MAX_BYTES: (dpi, quality).
JPEG_STEPS = ((DPI, 92), (DPI, 85), (180, 85), (150, 80), (120, 80), (100, 75))


def save(fig, path: Path) -> Path:
    """Write ``fig`` under ``MAX_BYTES``: PNG at print resolution when it fits, else a high-quality JPEG
    (full colour; the file then ends in ``.jpg``). Returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data, suffix = _png(fig, DPI), ".png"
    if len(data) > MAX_BYTES:
        drawn = {DPI: data}  # drawing the figure is the slow part: once per resolution, decoded once
        images = {}
        for dpi, quality in JPEG_STEPS:
            if dpi not in images:
                images[dpi] = Image.open(io.BytesIO(drawn.get(dpi) or _png(fig, dpi))).convert("RGB")
            data, suffix = _jpeg(images[dpi], quality), ".jpg"
            if len(data) <= MAX_BYTES:
                break
    plt.close(fig)
    target = path.with_suffix(suffix)
    for stale in {path.with_suffix(".png"), path.with_suffix(".jpg")} - {target}:
        stale.unlink(missing_ok=True)
    tmp = target.with_suffix(".tmp" + suffix)
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def legend_below(ax, ncol: int = 2) -> None:
    """The legend under the axes, where it cannot cover a bar or a line."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=ncol, frameon=False, fontsize=MIN_FONT)


def figure_legend(fig, axes, ncol: int = 3) -> None:
    """One legend for the whole figure, below its panels (entries of ``axes``, each label once)."""
    handles, labels = {}, []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    fig.legend([handles[label] for label in labels], labels, loc="outside lower center", ncol=ncol, frameon=False,
               fontsize=MIN_FONT)


def source_name(source: int | str) -> str:
    return SOURCE_NAMES.get(int(source), str(source)).replace("generator_", "gen ")


def _grey(crop: np.ndarray) -> np.ndarray:
    return np.asarray(crop, dtype=np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0


def _limit(heat: np.ndarray) -> float:
    """Symmetric colour limit: the 99.5th percentile of |values| (a few extreme pixels do not wash out the rest)."""
    top = float(np.percentile(np.abs(heat), 99.5)) if heat.size else 0.0
    return top if top > 0 else 1e-12


def _signed_panel(fig, ax, heat: np.ndarray, title: str, unit: str, limit: float | None = None):
    """A signed map: red pushes towards "generated", blue towards "real", white is neutral."""
    limit = _limit(heat) if limit is None else limit
    image = ax.imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, format="%.2g")
    bar.ax.tick_params(labelsize=MIN_FONT)
    bar.set_label(unit, fontsize=MIN_FONT)
    return image


def _crop_panel(ax, crop, title):
    ax.imshow(crop)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def smoothed(heat: np.ndarray, sigma: float) -> np.ndarray:
    return gaussian_filter(np.asarray(heat, dtype=np.float64), sigma) if sigma > 0 else heat


# --- attribution figures -------------------------------------------------------------


METHOD_UNITS = {"gradcam": "logit - threshold per cell", "integrated_gradients": "logit per pixel",
                "occlusion": "logit drop when blurred"}


def attribution_panels(path: Path, task: str, rows: list[dict], methods: list[str], explained: str) -> Path:
    """Rows of images: the crop, then each method's signed map of the generated logit.

    ``rows``: {"crop", "title", "maps": {method: signed map}}.
    """
    n_cols = 1 + len(methods)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(PAGE_INCHES, (PAGE_INCHES / n_cols) * len(rows) + 0.4),
                             squeeze=False, constrained_layout=True)
    for r, row in enumerate(rows):
        _crop_panel(axes[r, 0], row["crop"], row["title"])
        for c, method in enumerate(methods, start=1):
            sigma = 2.0 if method == "integrated_gradients" else 0.0
            _signed_panel(fig, axes[r, c], smoothed(row["maps"][method], sigma),
                          METHOD_NAMES[method] + (" (smoothed)" if sigma else ""), METHOD_UNITS[method])
    fig.suptitle(f"{TASK_NAMES.get(task, task)}: attributions of the {explained} "
                 "(red: towards generated, blue: towards real)")
    return save(fig, path)


def mean_attention(path: Path, task: str, real_map: np.ndarray, generated_map: np.ndarray, counts: dict,
                   cell_px: int) -> Path:
    """Mean centred Grad-CAM of real vs generated images, and their difference (maps in units per cell)."""
    fig, axes = plt.subplots(1, 3, figsize=(PAGE_INCHES, 2.5), constrained_layout=True)
    limit = max(_limit(real_map), _limit(generated_map))
    for ax, heat, name in ((axes[0], real_map, "real"), (axes[1], generated_map, "generated")):
        total = heat.sum() / cell_px**2  # each cell's value is spread over its cell_px x cell_px pixels
        _signed_panel(fig, ax, heat, f"{name} (n={counts[name]}): sum {total:+.2f}\n(mean logit \u2212 threshold)",
                      f"logit \u2212 thr. per {cell_px}\u00d7{cell_px} cell", limit)
    # The overall offset (generated images sum higher) would fill the whole panel; remove it to show where
    # the two classes' evidence is placed differently.
    pattern = (generated_map - generated_map.mean()) - (real_map - real_map.mean())
    _signed_panel(fig, axes[2], pattern, "generated \u2212 real, means removed\n(where the classes differ)",
                  "difference per cell")
    for ax in axes:
        ax.set_xticks([0, 128, 255])
        ax.set_yticks([0, 128, 255])
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{TASK_NAMES.get(task, task)}: mean Grad-CAM over the validation crops\n"
                 "(red: towards generated, blue: towards real)")
    return save(fig, path)


def error_gallery(path: Path, task: str, sections: list[dict], threshold: float) -> Path:
    """Most confident false positives and false negatives, each crop above its Grad-CAM map when available.

    ``sections``: {"title", "items": [{"crop", "score", "source", "map" or None}]}. The maps of a
    section share one colour scale and one colour bar, so the crops stay large at print size.
    """
    n_cols = max(1, max(len(s["items"]) for s in sections))
    has_maps = any(item.get("map") is not None for s in sections for item in s["items"])
    rows_per = 2 if has_maps else 1
    panel = (PAGE_INCHES - 0.6) / n_cols
    fig, axes = plt.subplots(rows_per * len(sections), n_cols,
                             figsize=(PAGE_INCHES, (panel + 0.22) * rows_per * len(sections) + 0.45),
                             squeeze=False, constrained_layout=True)
    for s, section in enumerate(sections):
        maps = [item["map"] for item in section["items"] if item.get("map") is not None]
        limit = max((_limit(m) for m in maps), default=1e-12)
        image = None
        for c in range(n_cols):
            top_ax = axes[rows_per * s, c]
            bottom_ax = axes[rows_per * s + 1, c] if has_maps else None
            if c >= len(section["items"]):
                top_ax.axis("off")
                if bottom_ax is not None:
                    bottom_ax.axis("off")
                continue
            item = section["items"][c]
            _crop_panel(top_ax, item["crop"], f"{source_name(item['source'])}, score {item['score']:.2f}")
            if c == 0:
                top_ax.set_ylabel(section["title"], fontsize=MIN_FONT)
            if bottom_ax is not None:
                if item.get("map") is None:
                    bottom_ax.axis("off")
                else:
                    image = bottom_ax.imshow(item["map"], cmap="RdBu_r", vmin=-limit, vmax=limit)
                    bottom_ax.set_xticks([])
                    bottom_ax.set_yticks([])
                    if c == 0:
                        bottom_ax.set_ylabel("Grad-CAM", fontsize=MIN_FONT)
        if image is not None:
            bar = fig.colorbar(image, ax=list(axes[rows_per * s + 1]), fraction=0.02, pad=0.01, format="%.2g")
            bar.ax.tick_params(labelsize=MIN_FONT)
            bar.set_label(METHOD_UNITS["gradcam"], fontsize=MIN_FONT)
        if not section["items"]:
            axes[rows_per * s, 0].text(0.5, 0.5, "none", ha="center", va="center")
    fig.suptitle(f"{TASK_NAMES.get(task, task)}: most confident errors at the calibrated threshold "
                 f"(score > {threshold:.2f} = generated)\nmaps: red towards generated, blue towards real")
    return save(fig, path)


def deletion_curves(path: Path, deletions: dict[str, dict]) -> Path:
    """Mean generated logit as blocks are blurred away, attribution order vs random order, per task."""
    tasks = list(deletions)
    fig, axes = plt.subplots(1, len(tasks), figsize=(PAGE_INCHES, 3.0), squeeze=False,
                             constrained_layout=True)
    for ax, task in zip(axes[0], tasks):
        summary = deletions[task]
        fractions = np.asarray(summary["fractions"]) * 100
        for method, curve in summary["mean_logit"].items():
            ax.plot(fractions, curve, marker="o", ms=3, color=METHOD_COLOURS.get(method),
                    label=f"{METHOD_NAMES.get(method, method)} (area {summary['auc'][method]:.2f})")
        seeds = np.asarray(summary["random_mean_logit_by_seed"])
        ax.fill_between(fractions, seeds.min(axis=0), seeds.max(axis=0), color="grey", alpha=0.3)
        ax.plot(fractions, summary["random_mean_logit"], color="black", ls="--",
                label=f"random order, {len(seeds)} seeds (area {summary['auc_random']:.2f})")
        if summary.get("threshold") is not None:
            ax.axhline(summary["threshold"], color="grey", ls=":", lw=1, label="calibrated threshold")
        ax.set_xlabel(f"share of {summary.get('block_px', 8)}x{summary.get('block_px', 8)} blocks replaced by "
                      "their blur (%)")
        ax.set_ylabel(summary.get("y_label", "mean score"))
        ax.set_title(f"{TASK_NAMES.get(task, task)}: {summary['n_images']} generated images", fontsize=8)
        legend_below(ax, ncol=1)
        ax.grid(alpha=0.3)
    fig.suptitle("Deletion test: blocks blurred most-attributed first;\na faithful map falls faster than random order",
                 )
    return save(fig, path)


# --- audits ---------------------------------------------------------------------------


ABLATION_NAMES = {"none": "nothing zeroed", "without_npr_residual": "without NPR", "without_srm_residuals": "without SRM",
                  "without_rgb": "without colour\n(residuals only)", "rgb_only": "colour only\n(no residuals)"}


def network_auc(entry: dict) -> float:
    """The network's own ROC AUC (a fusion also reports the fused score's, which the classical part props up)."""
    value = entry.get("network_roc_auc", entry.get("roc_auc"))
    return np.nan if value is None else value


def channel_ablation(path: Path, results: dict[str, dict]) -> Path:
    """ROC AUC, recall and FPR with groups of the network's input channels zeroed, per task."""
    tasks = list(results)
    names = [n for n in ABLATION_NAMES if any(n in r for r in results.values())]
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_INCHES, 2.9), constrained_layout=True)
    x = np.arange(len(names))
    width = 0.8 / max(1, len(tasks))
    for t, task in enumerate(tasks):
        offset = (t - (len(tasks) - 1) / 2) * width
        entry = results[task]
        auc = [network_auc(entry[n]) if n in entry else np.nan for n in names]
        axes[0].bar(x + offset, auc, width=width, color=TASK_COLOURS.get(task), label=TASK_NAMES.get(task, task))
        recall = [entry[n]["recall_ai"] if n in entry else np.nan for n in names]
        fpr = [entry[n]["fpr"] if n in entry else np.nan for n in names]
        axes[1].plot(x, recall, marker="o", color=TASK_COLOURS.get(task), label=f"{TASK_NAMES.get(task, task)}: recall")
        axes[1].plot(x, fpr, marker="s", ls="--", color=TASK_COLOURS.get(task),
                     label=f"{TASK_NAMES.get(task, task)}: false-positive rate")
    axes[0].axhline(0.5, color="grey", ls=":", lw=1)
    axes[0].set_ylim(0, 1.02)
    axes[0].set_ylabel("ROC AUC of the network (threshold-free)")
    axes[0].set_title("what the network alone can still rank", fontsize=8)
    axes[1].set_title("decisions of the whole detector at its threshold", fontsize=8)
    axes[1].set_ylim(-0.03, 1.03)
    axes[1].set_ylabel("share at the calibrated threshold")
    for ax in axes:
        ax.set_xticks(x, [ABLATION_NAMES[n] for n in names], fontsize=8)
        ax.set_xlabel("input channels zeroed at the front end")
        ax.grid(alpha=0.3, axis="y")
        legend_below(ax)
    fig.suptitle("Traces or colour? The network with groups of its fixed input channels zeroed (validation)",
                 )
    return save(fig, path)


def shortcut_overview(path: Path, audits: dict[str, dict]) -> Path:
    """Per variant and task: mean logit shift, and the share labelled generated, for real and generated images."""
    tasks = list(audits)
    variants = list(next(iter(audits.values()))["variants"])
    fig, axes = plt.subplots(len(tasks), 2, figsize=(PAGE_INCHES, 2.6 * len(tasks)), squeeze=False, constrained_layout=True)
    x = np.arange(len(variants))
    for row, task in zip(axes, tasks):
        audit = audits[task]["variants"]
        for offset, name, colour in ((-0.2, "real", "tab:green"), (0.2, "generated", "tab:red")):
            shifts = [audit[v][name].get("mean_shift", np.nan) for v in variants]
            row[0].bar(x + offset, shifts, width=0.4, color=colour, label=f"{name} images")
        row[0].axhline(0, color="black", lw=0.8)
        row[0].set_ylabel("mean score change")
        row[0].set_title(f"{TASK_NAMES.get(task, task)}: score shift after the change", fontsize=8)
        labels = ["original"] + variants
        for name, colour, what in (("real", "tab:green", "real: false-positive rate"),
                                   ("generated", "tab:red", "generated: recall")):
            first = audit[variants[0]][name]
            if first.get("n", 0) == 0:
                continue
            values = [first["share_generated_before"]] + [audit[v][name]["share_generated_after"] for v in variants]
            row[1].plot(np.arange(len(labels)), values, marker="o", color=colour, label=what)
        row[1].axhline(0.2, color="grey", ls=":", lw=1, label="FPR cap 0.2")
        row[1].set_ylim(-0.03, 1.03)
        row[1].set_ylabel("share labelled generated")
        row[1].set_title(f"{TASK_NAMES.get(task, task)}: decisions at the calibrated threshold", fontsize=8)
        row[1].set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        row[0].set_xticks(x, variants, rotation=30, ha="right", fontsize=8)
        for ax in row:
            ax.grid(alpha=0.3, axis="y")
    figure_legend(fig, list(axes[0]), ncol=5)
    fig.suptitle("Shortcut audit: validation originals re-encoded, resized, re-cropped or framed,\n"
                 "then decoded and cropped by the pipeline's own code")
    return save(fig, path)


def shortcut_by_source(path: Path, task: str, audit: dict) -> Path:
    """Heat table: share labelled generated after each change, per source class (colour = change)."""
    variants = list(audit["variants"])
    sources = sorted({s for v in variants for s in audit["variants"][v]["per_source"]}, key=int)
    before = np.array([[audit["variants"][variants[0]]["per_source"][s]["share_generated_before"]] for s in sources])
    after = np.array([[audit["variants"][v]["per_source"][s]["share_generated_after"] for v in variants] for s in sources])
    table = np.hstack([before, after])
    change = table - before
    fig, ax = plt.subplots(figsize=(min(PAGE_INCHES, 0.55 * len(variants) + 2.4), 0.3 * len(sources) + 1.6), constrained_layout=True)
    image = ax.imshow(change, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            ax.text(j, i, f"{table[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(np.arange(len(variants) + 1), ["original"] + variants, rotation=30, ha="right", fontsize=8)
    counts = [audit["variants"][variants[0]]["per_source"][s]["n"] for s in sources]
    ax.set_yticks(np.arange(len(sources)), [f"{source_name(s)} (n={n})" for s, n in zip(sources, counts)], fontsize=8)
    fig.colorbar(image, ax=ax, label="change in share labelled generated")
    ax.set_title(f"{TASK_NAMES.get(task, task)}: share labelled generated per source after each change\n"
                 "(real row = false-positive rate, generator rows = recall)", fontsize=8)
    return save(fig, path)


def frequency_curves(path: Path, summaries: dict[str, dict]) -> Path:
    """Recall, false-positive rate and ROC AUC after low- and high-pass filtering, per task."""
    fig, axes = plt.subplots(2, 2, figsize=(PAGE_INCHES, 4.8), constrained_layout=True)
    for column, kind in enumerate(("low_pass", "high_pass")):
        for task, summary in summaries.items():
            cutoffs = sorted(summary.get(kind, {}), key=float)
            if not cutoffs:
                continue
            x = [float(c) for c in cutoffs]
            colour = TASK_COLOURS.get(task)
            name = TASK_NAMES.get(task, task)
            axes[0, column].plot(x, [summary[kind][c]["recall_ai"] for c in cutoffs], marker="o", color=colour,
                                 label=f"{name}: recall")
            axes[0, column].plot(x, [summary[kind][c]["fpr"] for c in cutoffs], marker="s", ls="--", color=colour,
                                 label=f"{name}: false-positive rate")
            axes[0, column].axhline(summary["unfiltered"]["recall_ai"], color=colour, lw=0.8, alpha=0.5)
            auc = [summary[kind][c]["roc_auc"] for c in cutoffs]
            axes[1, column].plot(x, auc, marker="o", color=colour, label=f"{name}")
            axes[1, column].axhline(summary["unfiltered"]["roc_auc"], color=colour, lw=0.8, alpha=0.5)
        label = "kept: |f| \u2264 cut-off" if kind == "low_pass" else "kept: |f| > cut-off, + mean colour"
        axes[0, column].set_title(f"{kind.replace('_', '-')} ({label})", fontsize=8)
        axes[0, column].set_ylabel("share flagged")
        axes[0, column].set_ylim(-0.03, 1.03)
        axes[1, column].set_ylabel("ROC AUC")
        axes[1, column].axhline(0.5, color="grey", ls=":", lw=1)
        axes[1, column].set_ylim(0.0, 1.02)
        for ax in axes[:, column]:
            ax.set_xlabel("cut-off (share of Nyquist)")
            ax.grid(alpha=0.3)
    figure_legend(fig, [axes[0, 0]], ncol=2)
    fig.suptitle("Which frequencies carry the evidence (thin lines: unfiltered crops)")
    return save(fig, path)


def _pool2(array: np.ndarray) -> np.ndarray:
    """2x2 mean pooling: halves the noise and the file size of a spectrum image."""
    h, w = array.shape[0] // 2 * 2, array.shape[1] // 2 * 2
    return array[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def spectra(path: Path, spectra_: dict) -> Path:
    spectra_ = {**spectra_, "real": _pool2(spectra_["real"]), "generated": _pool2(spectra_["generated"])}
    fig, axes = plt.subplots(1, 4, figsize=(PAGE_INCHES, 2.1), constrained_layout=True,
                             gridspec_kw={"width_ratios": [1, 1, 1, 1.25]})
    low = min(float(spectra_["real"].min()), float(spectra_["generated"].min()))
    high = max(float(spectra_["real"].max()), float(spectra_["generated"].max()))
    extent = (-0.5, 0.5, 0.5, -0.5)
    for ax, name in zip(axes[:2], ("real", "generated")):
        image = ax.imshow(spectra_[name], cmap="viridis", vmin=low, vmax=high, extent=extent, interpolation="nearest")
        ax.set_title(f"mean log10 power, {name} (n={spectra_['counts'][name]})", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    difference = spectra_["generated"] - spectra_["real"]
    limit = float(np.percentile(np.abs(difference), 99.5)) or 1e-6
    image = axes[2].imshow(difference, cmap="RdBu_r", vmin=-limit, vmax=limit, extent=extent, interpolation="nearest")
    axes[2].set_title("generated - real (log10 power)", fontsize=8)
    fig.colorbar(image, ax=axes[2], fraction=0.046, pad=0.02)
    for ax in axes[:3]:
        ax.set_xlabel("horizontal frequency (cycles/pixel)")
        ax.set_ylabel("vertical frequency")
    for source, profile in spectra_["radial"].items():
        axes[3].plot(spectra_["radial_frequency"], profile, label=source_name(source),
                     color="black" if source == "0" else None, lw=2 if source == "0" else 1)
    axes[3].set_xlabel("radial frequency (fraction of Nyquist)")
    axes[3].set_ylabel("mean log10 power")
    axes[3].set_title("azimuthal average per source", fontsize=8)
    axes[3].legend(fontsize=7)
    axes[3].grid(alpha=0.3)
    fig.suptitle("Spectra of the validation crops (luma, Hann window)")
    return save(fig, path)


def per_source_rates(path: Path, rates: dict[str, dict]) -> Path:
    """Share labelled generated per source class at each task's threshold, with 95 % Clopper-Pearson intervals.

    ``rates``: {task: {source: (n_labelled_generated, n)}}.
    """
    tasks = list(rates)
    sources = sorted({s for r in rates.values() for s in r}, key=int)
    fig, ax = plt.subplots(figsize=(min(PAGE_INCHES, 0.7 * len(sources) + 1.6), 2.5), constrained_layout=True)
    width = 0.8 / max(1, len(tasks))
    for t, task in enumerate(tasks):
        hits = [rates[task].get(s, (0, 0)) for s in sources]
        share = np.array([k / n if n else np.nan for k, n in hits])
        intervals = np.array([clopper_pearson(k, n) if n else (np.nan, np.nan) for k, n in hits])
        x = np.arange(len(sources)) + (t - (len(tasks) - 1) / 2) * width
        ax.bar(x, share, width=width, color=TASK_COLOURS.get(task), label=TASK_NAMES.get(task, task),
               yerr=np.vstack([share - intervals[:, 0], intervals[:, 1] - share]), capsize=3)
    counts = [max(n for _, n in (rates[t].get(s, (0, 0)) for t in tasks)) for s in sources]
    ax.set_xticks(np.arange(len(sources)), [f"{source_name(s)}\n(n={n})" for s, n in zip(sources, counts)], fontsize=8)
    ax.axhline(0.2, color="grey", ls=":", lw=1, label="FPR cap 0.2 (real)")
    ax.set_ylabel("share labelled generated")
    ax.set_ylim(0, 1.05)
    ax.set_title("Validation: false-positive rate (real) and recall per generator, 95 % intervals", fontsize=8)
    legend_below(ax)
    ax.grid(alpha=0.3, axis="y")
    return save(fig, path)


def image_statistics(path: Path, task: str, table, scores: np.ndarray, predicted: np.ndarray, threshold: float) -> Path:
    """Score against texture and brightness (errors marked), and the error rate per original format."""
    labels = (table["source_class"].to_numpy() >= 1).astype(int)
    wrong = predicted != labels
    has_format = "format" in table
    fig, axes = plt.subplots(1, 3 if has_format else 2, figsize=(PAGE_INCHES, 2.5), constrained_layout=True)
    for ax, column, scale in ((axes[0], "texture", "log"), (axes[1], "brightness", "linear")):
        for label, colour, name in ((0, "tab:green", "real"), (1, "tab:red", "generated")):
            member = labels == label
            ax.scatter(table[column][member & ~wrong], scores[member & ~wrong], s=12, color=colour, alpha=0.6,
                       label=f"{name}, correct")
            ax.scatter(table[column][member & wrong], scores[member & wrong], s=40, color=colour, marker="x",
                       label=f"{name}, error")
        ax.axhline(threshold, color="black", ls=":", lw=1, label="threshold")
        ax.set_xscale(scale)
        if scale == "log":
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel({"texture": "texture: mean |Laplacian| of the crop's luma",
                       "brightness": "brightness: mean luma of the crop (0-255)"}[column])
        ax.set_ylabel("detector score (> threshold = generated)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if has_format:
        formats = table["format"].fillna("unknown").astype(str).to_numpy()
        kinds = sorted(set(formats))
        x = np.arange(len(kinds))
        for offset, label, colour, name in ((-0.2, 0, "tab:green", "real: FP rate"),
                                            (0.2, 1, "tab:red", "generated: miss rate")):
            member = labels == label
            rates = [np.mean(wrong[member & (formats == k)]) if (member & (formats == k)).any() else np.nan for k in kinds]
            counts = [int((member & (formats == k)).sum()) for k in kinds]
            bars = axes[2].bar(x + offset, rates, width=0.4, color=colour, label=name)
            for bar, n in zip(bars, counts):
                if n:
                    axes[2].text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, f"n={n}",
                                 ha="center", fontsize=7)
        axes[2].set_xticks(x, kinds)
        axes[2].set_ylim(0, 1.05)
        axes[2].set_xlabel("format of the original file")
        axes[2].set_ylabel("error rate")
        axes[2].legend(fontsize=7)
        axes[2].grid(alpha=0.3, axis="y")
    fig.suptitle(f"{TASK_NAMES.get(task, task)}: errors against image statistics (validation)")
    return save(fig, path)
