"""The report builds itself from the files of a run: numbers from the run, gaps marked "not run", 8 pages, 10 pt."""
from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from pypdf import PdfReader

REPO = Path(__file__).resolve().parents[1]

import build_report as br


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


@pytest.fixture(scope="module")
def demo_report(demo_run, tmp_path_factory):
    """The report of the demo run, with the demo scorecard as benchmark and no explainability output."""
    out = tmp_path_factory.mktemp("report")
    bench = out / "bench"
    bench.mkdir()
    scorecard = Path(demo_run["out_dir"]) / "scorecard.json"
    if scorecard.is_file():
        shutil.copyfile(scorecard, bench / "harness-demo.json")
    explain = out / "explain_empty"
    explain.mkdir()
    result = br.build_report(demo_run["artifacts"], bench, explain, out / "report.pdf", build=out / "build")
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
    assert br.fmt_rate(validation["recall_ai"]) in text
    assert br.fmt_rate(validation["fpr"]) in text
    assert br.fmt_interval(validation["fpr_ci95"]) in text
    # The abstract states both, in the report's format.
    abstract = text.split("Data exploration")[0]
    assert br.fmt_rate(validation["recall_ai"]) in abstract and br.fmt_rate(validation["fpr"]) in abstract


def test_body_font_size_is_10pt(demo_report):
    assert br.template_body_size() == "10pt"
    assert re.search(r"#set text\(size: body-size\b", br.TEMPLATE.read_text())
    assert dominant_font_size(demo_report["pdf"]) == 10.0


def test_missing_source_shows_not_run(demo_report):
    text = demo_report["text"]
    explain_section = text.split("Explainability")[-1].split("Attribution and open set")[0]
    assert br.NOT_RUN in explain_section
    assert any(s["status"] == br.NOT_RUN and "discussion" in s["what"] for s in demo_report["result"]["sources"])


def test_empty_artifacts_still_build_with_not_run_everywhere(tmp_path):
    empty = tmp_path / "artifacts"
    empty.mkdir()
    status = br.main(["--artifacts", str(empty), "--bench", str(tmp_path / "none"), "--explain", str(tmp_path / "none"),
                      "--out", str(tmp_path / "report.pdf"), "--build", str(tmp_path / "build")])
    assert status == 0
    text = pdf_text(tmp_path / "report.pdf")
    assert text.count(br.NOT_RUN) > 20
    # No number of another run can appear: every rate cell of the metric tables is "not run".
    data = json.loads((tmp_path / "build" / "data.json").read_text())
    shown = set(re.findall(r'#val\("([^"]+)"\)', br.TEMPLATE.read_text()))
    assert shown and shown <= set(data["values"])
    for row in data["tables"]["robustness"]["rows"]:
        assert set(row[2:]) == {br.NOT_RUN}


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
