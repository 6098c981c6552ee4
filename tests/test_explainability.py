"""Explainability (``explainability/explain.py``) on the shared demo run.

One module-scoped run of the command's ``main`` on a copy of the demo run's
artifacts (small sample sizes, well under 90 s); the tests read its outputs.
The demo run is meant to train a network for Task 2 (alone, or fused with the
classical model): if it ended with the classical fallback, the gradient methods
cannot be checked, and the tests fail loudly instead of skipping.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from explainability import attributions, audit
from explainability.explain import main

MAX_FIGURE_BYTES = 300_000


@pytest.fixture(scope="module")
def explained(demo_run, tmp_path_factory) -> tuple[dict, Path]:
    artifacts = Path(demo_run["artifacts"])
    kind = json.loads((artifacts / "task02" / "detector.json").read_text())["kind"]
    assert kind in ("network", "fusion"), (
        f"the demo run's Task 2 detector is of kind {kind!r}, without a network (the classical fallback means its "
        "training was cut short), so Grad-CAM, Integrated Gradients and the deletion test cannot be checked")
    out = tmp_path_factory.mktemp("explain")
    summary = main(["--artifacts", str(artifacts), "--data", str(Path(demo_run["data_root"]) / "data"),
                    "--out", str(out), "--max-images", "4", "--max-occlusion-images", "1",
                    "--max-audit-images", "16", "--timeout_seconds", "600"])
    return summary, out


def expected_figures(summary: dict) -> list[str]:
    names = ["per_source_rates", "shortcut_audit", "deletion_curves", "frequency_filtering", "spectra"]
    if any(entry["kind"] != "classical" for entry in summary["tasks"].values()):
        names.append("channel_ablation")
    for task, entry in summary["tasks"].items():
        names += [f"{task}_errors", f"{task}_image_statistics", f"{task}_shortcut_by_source", f"{task}_attributions"]
        if entry["kind"] != "classical":
            names.append(f"{task}_gradcam_mean")
    return names


def test_every_analysis_writes_its_figures_numbers_and_discussion(explained):
    summary, out = explained
    assert summary["skipped"] == {}
    assert set(summary["tasks"]) == {"task02", "task03"}
    for name in expected_figures(summary):
        assert name in summary["figures"], f"figure {name} missing from summary.json"
        path = out / summary["figures"][name]
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" or path.read_bytes()[:3] == b"\xff\xd8\xff", path
        assert path.stat().st_size < MAX_FIGURE_BYTES, f"{path.name} is {path.stat().st_size} bytes"
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["figures"] == summary["figures"]
    for task, entry in on_disk["tasks"].items():
        for key in ("validation", "errors", "image_statistics", "gradcam", "shortcut_audit", "channel_ablation",
                    "attributions", "frequency"):
            assert key in entry, f"{task}: {key} missing"
        assert set(entry["frequency"]) >= {"unfiltered", "low_pass", "high_pass"}
        assert "jpeg_q50" in entry["shortcut_audit"]["variants"]
        if entry["kind"] == "classical":  # the fallback has no gradients, and says so
            assert "skipped" in entry["gradcam"]
            assert "skipped_gradient_methods" in entry["attributions"]
    assert "log10_power_difference_generated_minus_real" in on_disk["spectra"]
    discussion = (out / "discussion.md").read_text()
    assert "## 3. Are the maps faithful?" in discussion
    assert f"{100 * on_disk['tasks']['task02']['validation']['recall_ai']:.1f} %" in discussion


def test_the_deletion_summary_names_the_method_with_the_smallest_area_and_says_if_it_beats_random(explained):
    """What explain.py reports on its small sample (here 4 images: too few for a claim either way); that the
    deployed map beats random order by a stated margin is checked by tests/test_deletion_faithfulness.py."""
    summary, _ = explained
    deletion = summary["tasks"]["task02"]["attributions"]["deletion"]
    assert set(deletion["methods"]) >= {"gradcam", "integrated_gradients"}
    best = deletion["best_method"]
    assert deletion["auc"][best] == min(deletion["auc"].values())
    assert deletion["auc_random"] == pytest.approx(np.mean(deletion["auc_random_by_seed"]))
    assert deletion["best_beats_random"] == (deletion["auc"][best] < deletion["auc_random"])
    assert deletion["best_auc_gain_over_random"] == pytest.approx(deletion["auc_random"] - deletion["auc"][best])


def test_the_audit_sees_what_the_pipeline_sees(explained):
    """Re-decoded originals reproduce the prepared crops, and lossless re-encoding moves no score."""
    summary, _ = explained
    for task, entry in summary["tasks"].items():
        audit_ = entry["shortcut_audit"]
        assert audit_["original_matches_prepared"] == audit_["n_images"] > 0
        png = audit_["variants"]["png"]
        assert png["n_identical_crops"] == audit_["n_images"]
        assert png["real"]["mean_shift"] == 0 and png["generated"]["mean_shift"] == 0


def test_frequency_filters_and_block_removal_edge_cases():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    # The largest radial frequency is sqrt(2) x Nyquist: a low-pass above it keeps every pixel.
    assert np.array_equal(audit.frequency_filtered(crops, "low_pass", 1.5), crops)
    flat = audit.frequency_filtered(crops, "high_pass", 1.5)  # only the mean colour survives
    assert np.abs(flat.astype(int) - crops.mean(axis=(1, 2), keepdims=True).round().astype(int)).max() <= 1
    baseline = attributions.blurred(crops)
    order = rng.permutation((32 // attributions.BLOCK) ** 2)
    assert np.array_equal(attributions.with_blocks_removed(crops[0], baseline[0], order, 0), crops[0])
    assert np.array_equal(attributions.with_blocks_removed(crops[0], baseline[0], order, order.size), baseline[0])


def _digest(folder: Path) -> dict:
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_missing_inputs_fail_before_touching_the_committed_output(tmp_path):
    """`make explain` in a fresh clone (no run, no data): a clear error, the committed output byte-identical."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    committed = repo / "explainability" / "output"
    before = _digest(committed)
    run = subprocess.run([sys.executable, str(repo / "explainability" / "explain.py"), "--artifacts",
                          str(tmp_path / "no_run"), "--data", str(tmp_path / "no_data")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "cannot explain" in run.stderr and "no_run" in run.stderr and "Nothing was written" in run.stderr
    assert _digest(committed) == before
    assert not (committed.parent / f".{committed.name}.build").exists()


def test_a_failed_run_leaves_the_previous_output(demo_run, tmp_path):
    """An explanation run that fails midway removes its build folder and keeps the earlier outputs."""
    from explainability import explain

    out = tmp_path / "output"
    out.mkdir()
    (out / "summary.json").write_text('{"earlier": true}')
    artifacts = tmp_path / "artifacts"
    shutil.copytree(Path(demo_run["artifacts"]), artifacts)
    for task in ("task02", "task03"):  # detectors whose model files are gone: loading fails after the check
        for pattern in ("*.safetensors", "*.pt", "fallback.*"):
            for weights in (artifacts / task).glob(pattern):
                weights.unlink()
        assert [p.name for p in (artifacts / task).iterdir() if p.suffix not in (".json", ".csv")] == []
    with pytest.raises(Exception):
        explain.main(["--artifacts", str(artifacts), "--data", str(Path(demo_run["data_root"]) / "data"),
                      "--out", str(out), "--timeout_seconds", "120"])
    assert json.loads((out / "summary.json").read_text()) == {"earlier": True}
    assert not explain.build_folder(out).exists()


def _drawn(monkeypatch, draw) -> list:
    """The matplotlib figures ``draw`` saves (saving itself is skipped)."""
    from explainability import figures

    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.append(fig) or Path(path))
    draw(figures)
    return drawn


def _small_texts(fig, minimum: float) -> list[str]:
    import matplotlib.text

    return [f"{t.get_text()!r} at {t.get_fontsize():.1f} pt" for t in fig.findobj(matplotlib.text.Text)
            if t.get_visible() and t.get_text().strip() and t.get_fontsize() < minimum - 1e-6]


def test_figures_are_drawn_at_print_size_with_readable_text(monkeypatch):
    """No figure is wider than the page, and no label is under 7 pt there (colour bars included)."""
    repo = Path(__file__).resolve().parents[1]
    summary = json.loads((repo / "explainability" / "output" / "summary.json").read_text())
    tasks = summary["tasks"]
    rng = np.random.default_rng(0)
    crop = (rng.random((256, 256, 3)) * 255).astype(np.uint8)
    heat = rng.normal(size=(256, 256))
    sections = [{"title": "false positives", "items": [{"crop": crop, "score": 1.0, "source": 0, "map": heat}] * 2},
                {"title": "false negatives", "items": [{"crop": crop, "score": 0.1, "source": 1, "map": heat}] * 5}]

    def draw(figures):
        figures.channel_ablation(Path("a.png"), {t: v["channel_ablation"] for t, v in tasks.items()})
        figures.shortcut_overview(Path("b.png"), {t: v["shortcut_audit"] for t, v in tasks.items()})
        figures.frequency_curves(Path("c.png"), {t: v["frequency"] for t, v in tasks.items()})
        figures.deletion_curves(Path("d.png"), {t: v["attributions"]["deletion"] for t, v in tasks.items()})
        figures.error_gallery(Path("e.png"), "task03", sections, 1.0)
        figures.mean_attention(Path("f.png"), "task03", heat, heat, {"real": 1, "generated": 1}, 32)

    from explainability import figures as module

    for fig in _drawn(monkeypatch, draw):
        fig.canvas.draw()
        assert fig.get_size_inches()[0] <= module.PAGE_INCHES + 1e-6, fig.get_size_inches()
        assert not _small_texts(fig, module.MIN_FONT), _small_texts(fig, module.MIN_FONT)


def test_photo_figures_keep_full_colour(tmp_path):
    """A figure of photographs is saved in full colour (JPEG when PNG is too large), never as a 256-colour palette."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from explainability import figures

    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(1)
    photo = gaussian_filter(rng.random((400, 700, 3)), (3, 3, 0))  # smooth like a photograph, many colours
    fig, ax = plt.subplots(figsize=(figures.PAGE_INCHES, 4))
    ax.imshow(((photo - photo.min()) / np.ptp(photo) * 255).astype(np.uint8))
    path = figures.save(fig, tmp_path / "photos.png")
    assert path.stat().st_size <= figures.MAX_BYTES
    with Image.open(path) as image:
        assert image.mode in ("RGB", "RGBA"), image.mode


def test_grouped_permutation_importance_finds_the_informative_group():
    """A synthetic detector that reads one feature group and a network score: both lose AUC when shuffled."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 200)
    features = rng.normal(size=(400, 6))
    features[:, 0:2] += labels[:, None] * 1.5  # only group "traces" carries the class
    network = labels * 1.0 + rng.normal(size=400)
    weights = np.array([1.0, 1.0, 0, 0, 0, 0])

    result = audit.grouped_permutation_importance(
        lambda f: f @ weights, lambda net, cls: 0.3 * net + 0.7 * cls, features, network, labels,
        {"traces": [0, 1], "colour": [2, 3], "noise": [4, 5]}, np.random.default_rng(1), n_repeats=3)
    groups = result["groups"]
    assert groups["traces"]["auc_drop_mean"] > 0.1
    assert abs(groups["colour"]["auc_drop_mean"]) < 1e-9 and abs(groups["noise"]["auc_drop_mean"]) < 1e-9
    assert result["network"]["auc_drop_mean"] > 0.0
    assert result["baseline_auc"] > 0.9
