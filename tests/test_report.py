"""The report builds itself from the result files: every number and every verdict from a file, 8 pages, 10 pt.

The builder's own checks run on the committed benchmark results (``benchmarks/results``): a run's
artifacts are assembled from the copies of its metrics and exploration committed there, so these
tests need no proxy data. The page and font checks build the report of the shared demo run.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from pypdf import PdfReader

REPO = Path(__file__).resolve().parents[1]

import build_report as br
from builder import explain_synthesis, results, story, targets

RESULTS = REPO / "benchmarks" / "results"
PROXY_RUN = "2026-12-01-proxy"  # the run whose metrics and exploration are committed beside its results


def pdf_text(path: Path) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(str(path)).pages)


def dominant_font_size(path: Path) -> float:
    """The font size (pt) of most characters in the PDF."""
    sizes = Counter()

    def visit(text, cm, tm, font, size):
        if text.strip():
            scale = math.hypot(tm[0], tm[1]) * math.hypot(cm[0], cm[1])
            sizes[round(size * scale, 1)] += len(text.strip())

    for page in PdfReader(str(path)).pages:
        page.extract_text(visitor_text=visit)
    return sizes.most_common(1)[0][0]


def tree_digest(folder: Path) -> dict:
    """{relative path: sha256} of every file under ``folder`` (empty when it does not exist)."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the committed proxy run as inputs ---------------------------------------------------------------


@pytest.fixture
def proxy_inputs(tmp_path) -> dict:
    """Artifacts assembled from the committed copies of the proxy run's files, and a copy of the results."""
    artifacts = tmp_path / "artifacts"
    (artifacts / "clean").mkdir(parents=True)
    for name in ("exploration.json", "cleaning.json"):
        shutil.copyfile(RESULTS / f"{PROXY_RUN}-exploration" / name, artifacts / "clean" / name)
    for task in ("task02", "task03"):
        (artifacts / task).mkdir()
        shutil.copyfile(RESULTS / f"{PROXY_RUN}-{task}-metrics.json", artifacts / task / "metrics.json")
    bench = tmp_path / "bench"
    bench.mkdir()
    for path in RESULTS.glob("*.json"):
        shutil.copyfile(path, bench / path.name)
    explain = tmp_path / "explain"
    explain.mkdir()
    shutil.copyfile(REPO / "explainability" / "output" / "summary.json", explain / "summary.json")
    return {"artifacts": artifacts, "bench": bench, "explain": explain}


def read(proxy_inputs):
    return results.read_inputs(proxy_inputs["artifacts"], proxy_inputs["bench"], proxy_inputs["explain"])


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def save(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data))


def set_split(proxy_inputs, task: str, split: str, key: str, value: float) -> None:
    """Change one split metric everywhere the report reads it: the run's metrics.json and the seed means."""
    path = proxy_inputs["artifacts"] / task / "metrics.json"
    m = load(path)
    m["splits"][split][key] = value
    save(path, m)
    robust_path = results.newest(proxy_inputs["bench"], "robustness-proxy")
    robust = load(robust_path)
    robust["splits"][task][split][key]["mean"] = value
    save(robust_path, robust)


def headline(proxy_inputs, task: str, split: str, key: str) -> float:
    """The number the abstract and the targets table state (the seed mean when several seeds ran)."""
    return targets.measured_value(read(proxy_inputs), task, split, key)[0]


def test_targets_table_shows_the_numbers_of_the_result_files(proxy_inputs):
    aims = {a.key: a for a in targets.aims(read(proxy_inputs))}
    robust = load(results.newest(proxy_inputs["bench"], "robustness-proxy"))
    assert len(robust["runs"]) >= 3  # headline numbers are means over seeds
    split_means = {t: {s: {k: v["mean"] for k, v in metrics.items()} for s, metrics in splits.items()}
                   for t, splits in robust["splits"].items()}
    for task in ("task02", "task03"):
        for split in ("validation", "validation_augmented"):
            aim = aims[f"{task}.{split}.fpr"]
            cell = robust["splits"][task][split]["fpr"]
            assert aim.value == cell["mean"]
            assert aim.shown == f"{br.fmt_rate(cell['mean'])} \u00b1 {br.fmt_rate(cell['std'])}"
            assert aim.met == (cell["mean"] <= 0.2)
    assert aims["task02.recall"].value == split_means["task02"]["validation"]["recall_ai"]
    assert aims["task03.recall"].value == split_means["task03"]["validation_augmented"]["recall_ai"]
    auc_gap = split_means["task03"]["validation_augmented"]["roc_auc"] - split_means["task02"]["validation_augmented"]["roc_auc"]
    assert aims["auc.gap"].value == pytest.approx(auc_gap)

    proxy = load(results.newest(proxy_inputs["bench"], "proxy"))
    reference = proxy["reference"]["elapsed_seconds"]
    walls = {s["name"]: s["wall_seconds"] for s in proxy["harness"]["stages"]}
    for stage in ("train", "train_augmented"):
        assert aims[f"runtime.{stage}"].value == pytest.approx(walls[stage] / reference)
        assert aims[f"runtime.{stage}"].shown.startswith(f"{walls[stage] / reference:.2f}")
    peak = max(s["peak_rss_mb"] for s in proxy["harness"]["stages"])
    assert aims["memory"].shown == f"{peak / 1000:.1f}"  # rounded, not truncated

    worst = max(robust["summary"]["held_out_moderate"].items(), key=lambda kv: kv[1]["task03"]["fpr"]["mean"])
    assert aims["heldout.fpr"].value == worst[1]["task03"]["fpr"]["mean"]
    assert worst[0] in aims["heldout.fpr"].shown
    same = load(results.newest(proxy_inputs["bench"], "same-calibration-proxy"))["same_rule"]
    rule = results.UNDER_PROCESSING_RULE
    recall = {t: same[t]["rules"][rule]["splits"]["validation_augmented"]["recall_ai"] for t in ("task02", "task03")}
    assert aims["equal.rule"].value == pytest.approx(recall["task03"] - recall["task02"])
    eq = {t: robust["splits"][t]["validation_augmented"]["recall_at_fpr_0.2"]["mean"] for t in ("task02", "task03")}
    assert aims["equal.fpr"].value == pytest.approx(eq["task03"] - eq["task02"])
    # The table shows the same cells.
    table = targets.targets_table(list(aims.values()))
    assert [row[3] for row in table["rows"]] == [a.shown for a in aims.values()]
    assert [row[4] for row in table["rows"]] == [{True: "met", False: "missed"}[a.met] for a in aims.values()]


def verdicts(proxy_inputs) -> dict:
    inputs = read(proxy_inputs)
    aims = targets.aims(inputs)
    values = {}
    values.update(story.abstract_values(inputs, aims))
    values.update(story.conclusion_values(inputs, aims))
    values.update(story.task3_values(inputs))
    values.update(story.timing_values(aims))
    values.update(explain_synthesis.explain_values(inputs.summary))
    return values


def test_judgement_sentences_follow_the_numbers(proxy_inputs):
    values = verdicts(proxy_inputs)
    fpr = headline(proxy_inputs, "task03", "validation_augmented", "fpr")
    assert ("keeps the FPR under" in values["abs.t3_aug"]) == (fpr <= 0.2)
    assert br.fmt_rate(fpr) in values["abs.t3_aug"]

    # Task 3 now over the cap on the augmented split: every sentence that said "keeps" must say "exceeds".
    set_split(proxy_inputs, "task03", "validation_augmented", "fpr", 0.3)
    changed = verdicts(proxy_inputs)
    assert "exceeds the 0.2 FPR cap (0.300)" in changed["abs.t3_aug"]
    assert "the robust one exceeds the 0.2 FPR cap (0.300)" in changed["concl.sentence"]
    assert "keeps" not in changed["cmp.aug.t3cap"]


def test_recall_cost_is_only_claimed_when_task3_recall_is_lower(proxy_inputs):
    lower = (headline(proxy_inputs, "task03", "validation_augmented", "recall_ai")
             < headline(proxy_inputs, "task02", "validation_augmented", "recall_ai"))
    assert verdicts(proxy_inputs)["abs.cost"].endswith("costs recall") == lower
    set_split(proxy_inputs, "task03", "validation_augmented", "recall_ai", 0.99)
    assert not verdicts(proxy_inputs)["abs.cost"].endswith("costs recall")


def test_equal_rule_verdict_flips_when_task2_wins(proxy_inputs):
    path = results.newest(proxy_inputs["bench"], "same-calibration-proxy")
    assert "Task 3 beats Task 2" in verdicts(proxy_inputs)["abs.equal"]
    same = load(path)
    rule = results.UNDER_PROCESSING_RULE
    same["same_rule"]["task02"]["rules"][rule]["splits"]["validation_augmented"]["recall_ai"] = 0.99
    save(path, same)
    changed = verdicts(proxy_inputs)
    assert "Task 3 trails Task 2" in changed["abs.equal"]
    assert "trails the plain one" in changed["concl.sentence"]


def test_explanation_verdicts_follow_the_summary(proxy_inputs):
    values = verdicts(proxy_inputs)
    summary = load(proxy_inputs["explain"] / "summary.json")
    jpeg = summary["tasks"]["task03"]["shortcut_audit"]["variants"]["jpeg_q75"]["generated"]
    assert values["abs.explain"].startswith("The explanations find a compression cue") == (
        jpeg["share_generated_after"] < jpeg["share_generated_before"])
    deletion = summary["tasks"]["task03"]["attributions"]["deletion"]
    assert ("out of distribution" in values["ex.deletion"]) == (
        deletion["mean_logit_fully_blurred"] > deletion["mean_logit_original"])
    # Reverse both findings: the sentences must reverse.
    jpeg["share_generated_after"] = jpeg["share_generated_before"] + 0.1
    deletion["mean_logit_fully_blurred"] = deletion["mean_logit_original"] - 1.0
    save(proxy_inputs["explain"] / "summary.json", summary)
    changed = verdicts(proxy_inputs)
    assert changed["abs.explain"].startswith("The explanations find no compression cue")
    assert "out of distribution" not in changed["ex.deletion"] and "lowers" in changed["ex.baseline"]


def test_ablation_rows_come_from_result_files(proxy_inputs):
    rows = story.ablation_rows(read(proxy_inputs))
    assert rows, "no modelling choice backed by a result"
    fusion = next(r for r in rows if r[0].startswith("fusion"))
    proxy = load(results.newest(proxy_inputs["bench"], "proxy"))
    parts = proxy["components"]["task02"]
    assert fusion[3] == br.fmt_rate(parts["packaged: fusion"]["validation"]["roc_auc"])
    for row in rows:
        assert row[5] in ("better", "worse", "equal")
        assert (RESULTS / row[6]).is_file()


def test_every_template_value_is_generated(proxy_inputs, tmp_path):
    status = br.main(["--artifacts", str(proxy_inputs["artifacts"]), "--bench", str(proxy_inputs["bench"]),
                      "--explain", str(proxy_inputs["explain"]), "--out", str(tmp_path / "report.pdf"),
                      "--build", str(tmp_path / "build")])
    assert status == 0
    data = json.loads((tmp_path / "build" / "data.json").read_text())
    shown = set(re.findall(r'#val\("([^"]+)"\)', br.TEMPLATE.read_text()))
    assert shown and shown <= set(data["values"]), shown - set(data["values"])
    text = " ".join(pdf_text(tmp_path / "report.pdf").split())
    assert "stand-in dataset" in text
    assert len(PdfReader(str(tmp_path / "report.pdf")).pages) <= br.MAX_PAGES


# --- safe commands ------------------------------------------------------------------------------------


def test_missing_inputs_exit_nonzero_and_leave_the_committed_report_untouched(tmp_path):
    before = tree_digest(REPO / "report")
    run = subprocess.run([sys.executable, str(REPO / "report" / "build_report.py"), "--artifacts",
                          str(tmp_path / "no_run")], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "nothing was written" in run.stderr and "no_run" in run.stderr
    assert tree_digest(REPO / "report") == before


def test_missing_inputs_write_nothing_at_out(tmp_path):
    status = br.main(["--artifacts", str(tmp_path / "none"), "--bench", str(tmp_path / "none"),
                      "--explain", str(tmp_path / "none"), "--out", str(tmp_path / "report.pdf"),
                      "--build", str(tmp_path / "build")])
    assert status == 2
    assert not (tmp_path / "report.pdf").exists() and not (tmp_path / "build").exists()


def test_allow_missing_builds_a_draft_with_not_run_everywhere(tmp_path):
    empty = tmp_path / "artifacts"
    empty.mkdir()
    status = br.main(["--artifacts", str(empty), "--bench", str(tmp_path / "none"), "--explain", str(tmp_path / "none"),
                      "--out", str(tmp_path / "report.pdf"), "--build", str(tmp_path / "build"), "--allow-missing"])
    assert status == 0
    text = pdf_text(tmp_path / "report.pdf")
    assert text.count(br.NOT_RUN) > 20
    data = json.loads((tmp_path / "build" / "data.json").read_text())
    for row in data["tables"]["robustness"]["rows"]:
        assert set(row[2:]) == {br.NOT_RUN}


# --- the demo run's report -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_report(demo_run, tmp_path_factory):
    """The report of the demo run, without benchmark results or explanations (a draft)."""
    out = tmp_path_factory.mktemp("report")
    result = br.build_report(demo_run["artifacts"], None, None, out / "report.pdf", build=out / "build")
    return {"result": result, "pdf": out / "report.pdf", "text": pdf_text(out / "report.pdf"),
            "artifacts": Path(demo_run["artifacts"])}


def test_report_is_a_pdf_of_at_most_eight_pages(demo_report):
    pdf = demo_report["pdf"]
    assert pdf.is_file() and pdf.read_bytes()[:5] == b"%PDF-"
    pages = len(PdfReader(str(pdf)).pages)
    assert pages == demo_report["result"]["pages"]
    assert 1 <= pages <= br.MAX_PAGES == 8


def test_report_shows_task02_validation_numbers_of_the_run(demo_report):
    metrics = json.loads((demo_report["artifacts"] / "task02" / "metrics.json").read_text())
    validation = metrics["splits"]["validation"]
    text = demo_report["text"]
    assert br.fmt_interval(validation["fpr_ci95"]) in text
    abstract = text.split("Targets at a glance")[0]
    assert br.fmt_rate(validation["recall_ai"]) in abstract and br.fmt_rate(validation["fpr"]) in abstract


def test_body_font_size_is_10pt(demo_report):
    assert br.template_body_size() == "10pt"
    assert re.search(r"#set text\(size: body-size\b", br.TEMPLATE.read_text())
    assert dominant_font_size(demo_report["pdf"]) == 10.0


def test_over_long_report_fails_and_writes_nothing(demo_run, tmp_path):
    with pytest.raises(br.ReportError, match="pages"):
        br.build_report(demo_run["artifacts"], None, None, tmp_path / "report.pdf", build=tmp_path / "build", max_pages=1)
    assert not (tmp_path / "report.pdf").exists()


NASTY = r"Cost: 5 $ # * _ ` < > @ [x] ~ // /* = - + \ 50% a_b_c *not bold* and 1. not a list"
NASTY_MD = NASTY.replace("*not bold* ", "")  # in Markdown, *...* is emphasis


def _compile_markup(tmp_path: Path, markup: str) -> str:
    import typst

    source = tmp_path / "t.typ"
    source.write_text('#set page(width: 16cm, height: auto)\n'
                      '#let md-table(n, ..cells) = table(columns: n, ..cells.pos())\n' + markup + "\n")
    typst.compile(str(source), output=str(tmp_path / "t.pdf"), root=str(tmp_path), ignore_system_fonts=True)
    return pdf_text(tmp_path / "t.pdf")


def test_escaped_text_shows_verbatim(tmp_path):
    text = _compile_markup(tmp_path, br.escape_typst(NASTY))
    assert " ".join(text.split()) == NASTY


def test_markdown_discussion_converts_and_compiles(tmp_path):
    markdown = "\n".join([
        "# Title that the section heading replaces", "",
        "Grad-CAM is **diffuse** and *texture-wide*; see `fig_1.png` and [the paper](https://x.org/a_b).",
        NASTY_MD, "", "**Bold**(paren) `code`.next *emph*[bracket]", "", "## Failure cases", "",
        "- first item with $math$", "  continued", "1. numbered", "",
        "| method | AUC |", "|---|---:|", "| occlusion | 0.42 |", "", "```", "code # $ *", "```",
    ])
    text = " ".join(_compile_markup(tmp_path, br.markdown_to_typst(markdown)).split())
    assert "Title that" not in text
    assert "Grad-CAM is diffuse and texture-wide; see fig_1.png and the paper." in text
    assert NASTY_MD in text
    assert "Bold(paren) code.next emph[bracket]" in text
    assert "first item with $math$ continued" in text
    assert "occlusion 0.42" in text and "code # $ *" in text


def test_template_has_no_markup_traps():
    template = br.TEMPLATE.read_text()
    # "#val(...);" swallows the semicolon; "2024. " at a line start opens a numbered list.
    assert not re.search(r'#val\("[^"]+"\);', template)
    assert not re.search(r"(?m)^\s*\d+\.\s", template)
    # "#val(...)(" or "#val(...)[" would continue the call.
    assert not re.search(r'#val\("[^"]+"\)[(\[]', template)


def test_same_rule_section_compares_both_tasks_under_each_rule():
    def rule(recall_val, recall_aug, oracle=0.5):
        split = {"recall_ai": recall_val, "fpr": 0.1}
        return {"threshold": 1.0, "splits": {"validation": split, "validation_augmented":
                                             {"recall_ai": recall_aug, "fpr": 0.2, "recall_at_fpr_0.2_oracle": oracle}}}

    strict = br.UNDER_PROCESSING_RULE
    same = {"task02": {"own_rule": "calibration", "rules": {"calibration": rule(0.96, 0.85),
                                                            "calibration + calibration_augmented": rule(0.90, 0.75),
                                                            strict: rule(0.88, 0.70)}},
            "task03": {"own_rule": strict,
                       "rules": {"calibration": rule(0.95, 0.81),
                                 "calibration + calibration_augmented": rule(0.93, 0.80),
                                 strict: rule(0.92, 0.79, oracle=0.78)}}}
    section = br.same_rule_section(same)
    assert len(section["tables"]["same_rule"]["rows"]) == 6
    assert sum(row[1].endswith(" *") for row in section["tables"]["same_rule"]["rows"]) == 2
    values = section["values"]
    assert (values["same.strict.gap_val"], values["same.strict.gap_aug"]) == ("+0.040", "+0.090")
    assert (values["same.clean.gap_val"], values["same.clean.gap_aug"]) == ("-0.010", "-0.040")
    assert values["same.t3.aug_oracle"] == "0.780"
    assert set(values) == set(br.SAME_RULE_VALUES)
    for missing in (None, {"task02": same["task02"]}):
        section = br.same_rule_section(missing)
        assert section["tables"] == {} and set(section["values"]) == set(br.SAME_RULE_VALUES)
        assert set(section["values"].values()) == {br.NOT_RUN}


def test_report_plots_have_readable_text(proxy_inputs, tmp_path, monkeypatch):
    """The report's own plots are drawn at their printed width with no text under 7 pt."""
    import matplotlib.text

    from builder import plots

    inputs = read(proxy_inputs)
    drawn = []
    monkeypatch.setattr("matplotlib.figure.Figure.savefig", lambda fig, *a, **k: drawn.append(fig))
    assert plots.plot_exploration(inputs.exploration, tmp_path / "a.png")
    assert plots.plot_robustness_curves(inputs.robustness, tmp_path / "b.png")
    for fig in drawn:
        fig.canvas.draw()
        assert fig.get_size_inches()[0] <= plots.PAGE_INCHES + 1e-6
        small = [t.get_text() for t in fig.findobj(matplotlib.text.Text)
                 if t.get_visible() and t.get_text().strip() and t.get_fontsize() < plots.MIN_FONT]
        assert not small, small


def test_in_distribution_deletion_verdict_follows_the_summary():
    entry = {"best_method": "gradcam", "best_beats_random": True, "best_auc_gain_over_random": 0.3, "n_images": 12,
             "mean_logit_original": 1.0, "mean_logit_fully_blurred": 0.5}
    assert "still removes evidence faster than random" in explain_synthesis.resampled_sentence(entry)
    entry["best_beats_random"] = False
    assert "not shown to be faithful" in explain_synthesis.resampled_sentence(entry)
    assert "not run" in explain_synthesis.resampled_sentence(None)


def test_feature_group_sentence_names_the_group_that_matters():
    result = {"groups": {"spectrum": {"auc_drop_mean": 0.01}, "noise": {"auc_drop_mean": 0.12}},
              "network": {"auc_drop_mean": 0.05}}
    sentence = explain_synthesis.feature_groups_sentence(result)
    assert sentence.endswith("leans most on its noise features") and "+0.050" in sentence
    assert "not run" in explain_synthesis.feature_groups_sentence(None)


def test_attribution_result_knows_the_run_it_used(tmp_path):
    """The attribution note may only say "this run" for a result computed on this run's detectors."""
    run = tmp_path / "runs" / "proxy-x" / "artifacts"
    run.mkdir(parents=True)
    (tmp_path / "runs" / "proxy").symlink_to(tmp_path / "runs" / "proxy-x")
    named = results.Attribution(tmp_path / "a.json", {}, [], None, "runs/proxy/artifacts")
    assert named.used(run, tmp_path)
    assert not named.used(tmp_path / "other", tmp_path)
    assert not results.Attribution(tmp_path / "a.json", {}, [], None, None).used(run, tmp_path)
