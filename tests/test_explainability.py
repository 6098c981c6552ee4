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
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
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
    for task in ("task02", "task03"):  # detectors whose weights are gone: loading fails after the check
        for weights in (artifacts / task).glob("*.pt"):
            weights.unlink()
        (artifacts / task / "fallback.pkl").unlink(missing_ok=True)
    with pytest.raises(Exception):
        explain.main(["--artifacts", str(artifacts), "--data", str(Path(demo_run["data_root"]) / "data"),
                      "--out", str(out), "--timeout_seconds", "120"])
    assert json.loads((out / "summary.json").read_text()) == {"earlier": True}
    assert not explain.build_folder(out).exists()
