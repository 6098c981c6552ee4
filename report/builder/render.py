"""From the inputs to the PDF: collect every value, table and figure, write data.json, compile with Typst."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from . import explain_synthesis, plots, run_tables, sections, story, targets
from .fmt import NOT_RUN, dig, table
from .results import Inputs, read_inputs

REPORT_DIR = Path(__file__).resolve().parents[1]
REPO = REPORT_DIR.parent
TEMPLATE = REPORT_DIR / "template.typ"
TEAM_FILE = REPORT_DIR / "team.json"
MAX_PAGES = 8
PLACEHOLDER_ID = "0000000"


class ReportError(RuntimeError):
    """The report cannot be built (missing inputs, Typst error, over the page limit)."""


def placeholder_problems(team: dict) -> list[str]:
    """What in report/team.json is still a placeholder (empty when the team data is real)."""
    problems = []
    members = team.get("members") or []
    if not members:
        problems.append("no team members")
    if any(str(m).strip().lower().startswith("team member") or not str(m).strip() for m in members):
        problems.append("placeholder member names")
    student_id = str(team.get("student_id", "")).strip()
    if not student_id or set(student_id) == {"0"}:
        problems.append(f"placeholder student ID {student_id!r}")
    return problems


def read_team(path: Path = TEAM_FILE) -> dict:
    team = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    members = [m if isinstance(m, str) else str(m.get("name", "?")) for m in team.get("members", [])]
    student_id = str(team.get("student_id", PLACEHOLDER_ID))
    return {"members": members or ["(no team members in report/team.json)"], "student_id": student_id,
            "placeholder": bool(placeholder_problems({"members": members, "student_id": student_id}))}


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


def collect(inputs: Inputs, build: Path) -> dict:
    """Everything the template shows, formatted, and the figures it may use."""
    values, tables, figures = {}, {}, {}
    values.update(run_tables.code_values())
    values.update(run_tables.exploration_values(inputs.exploration, inputs.cleaning))
    values.update(run_tables.model_values(inputs.metrics, inputs.detectors))
    values.update(story.data_values(inputs))
    values.update(story.task3_values(inputs))
    values.update(explain_synthesis.explain_values(inputs.summary))
    tables.update(run_tables.exploration_tables(inputs.exploration, inputs.cleaning))
    tables.update(run_tables.model_tables(inputs.metrics, inputs.detectors))
    tables["families"] = run_tables.families_table(inputs.families)
    tables["ablation"] = story.ablation_table(inputs)
    all_aims = targets.aims(inputs)
    tables["targets"] = targets.targets_table(all_aims)
    values.update(story.abstract_values(inputs, all_aims))
    values.update(story.timing_values(all_aims))
    values.update(story.conclusion_values(inputs, all_aims))
    same = inputs.same
    same_section = sections.same_rule_section(
        {t: {"own_rule": same.own_rule[t], "rules": same.rules[t]} for t in same.rules} if same else None)
    values.update(same_section["values"])
    tables.update(same_section["tables"])
    tables.setdefault("same_rule", table(["detector", "rule", "thr.", "val.: recall / FPR", "augm.: recall / FPR",
                                          "oracle (augm.)"], [[NOT_RUN] * 6]))
    attribution = inputs.attribution
    attr = sections.attribution_section(attribution.main if attribution else None,
                                        attribution.logo if attribution else None,
                                        attribution.predict_scored if attribution else None)
    values.update(attr["values"])
    tables.update(attr["tables"])
    values["attr.source"] = attribution.path.name.replace(".json", "") if attribution else NOT_RUN
    if not inputs.artifacts.is_dir():
        values["attr.run_note"] = NOT_RUN
    elif attribution and attribution.used(inputs.artifacts, REPO):
        values["attr.run_note"] = f"run on this pipeline run's detectors by the attribution benchmark ({values['attr.source']})"
    elif attribution and "attribution" not in [p.name for p in inputs.artifacts.iterdir()]:
        values["attr.run_note"] = ("not run on this report's pipeline run; the numbers below come from an earlier proxy run "
                                   f"({values['attr.source']}) and its own attribution training")
    else:
        values["attr.run_note"] = "run on this pipeline run"
    proxy = inputs.proxy
    values["bench.source"] = proxy.path.name.replace(".json", "") if proxy else NOT_RUN
    values["bench.cpu"] = (proxy.cpu or "?") if proxy else NOT_RUN

    folder = build / "fig"
    folder.mkdir(parents=True, exist_ok=True)
    figures["exploration"] = "fig/exploration.png" if plots.plot_exploration(
        inputs.exploration, folder / "exploration.png") else None
    figures["robustness_curves"] = "fig/robustness_curves.png" if plots.plot_robustness_curves(
        inputs.robustness, folder / "robustness_curves.png") else None
    for path, name, caption in explain_synthesis.explain_figure_sources(inputs.explain, inputs.summary):
        figures[name] = _copy_figure(path, build, name)
        values[f"caption.{name}"] = caption
    for _, name, caption in explain_synthesis.EXPLAIN_FIGURES:
        figures.setdefault(name, None)
        values.setdefault(f"caption.{name}", caption)

    has = {"families": inputs.families is not None, "same_rule": bool(same_section["tables"]),
           "robustness": inputs.robustness is not None, "attribution": attribution is not None,
           "logo": bool(attribution and attribution.logo), "summary": inputs.summary is not None}
    return {"team": read_team(), "values": values, "tables": tables, "figures": figures, "has": has,
            "inputs": input_list(inputs), "not_run": NOT_RUN}


def input_list(inputs: Inputs) -> list[dict]:
    """The report's inputs, by file name, for the source list at its end."""
    out = []
    for entry in inputs.used:
        path = Path(entry["path"]) if entry["path"] else None
        name = path.name if path else "?"
        if path and inputs.artifacts in path.parents:
            name = path.relative_to(inputs.artifacts).as_posix()
        out.append({"what": entry["what"], "file": name.replace("/", "/\u200b"), "status": entry["status"]})
    return out


# Figures left out, in this order, when the report does not fit in MAX_PAGES pages.
OPTIONAL_FIGURES = ("explain_frequency", "explain_shortcuts")


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


def build_report(artifacts: Path, bench: Path | None, explain: Path | None, out: Path, build: Path,
                 max_pages: int = MAX_PAGES) -> dict:
    """Build the PDF at ``out``; returns {"pdf", "pages", "dropped", "sources", "figures"}. Raises ReportError.

    Everything is written into ``build`` first; ``out`` is replaced only by a PDF within the page limit.
    """
    out, build = Path(out), Path(build)
    shutil.rmtree(build / "fig", ignore_errors=True)
    for name in ("data.json", "report.typ", "report.pdf"):
        (build / name).unlink(missing_ok=True)
    (build / "fig").mkdir(parents=True)
    inputs = read_inputs(Path(artifacts), bench, explain)
    data = collect(inputs, build)
    dropped: list[str] = []
    steps = [[]] + [list(OPTIONAL_FIGURES[:i + 1]) for i in range(len(OPTIONAL_FIGURES))]
    pages = None
    for drop in steps:
        shown = dict(data, figures={k: (None if k in drop else v) for k, v in data["figures"].items()},
                     dropped=drop)
        pdf = compile_typst(build, shown)
        pages = page_count(pdf)
        if pages <= max_pages:
            dropped = drop
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            shutil.copyfile(pdf, tmp)
            os.replace(tmp, out)
            return {"pdf": out, "pages": pages, "dropped": dropped, "sources": inputs.used,
                    "figures": sum(v is not None for v in shown["figures"].values())}
    raise ReportError(
        f"the report has {pages} pages even with the optional figures dropped; the limit is {max_pages}. "
        f"Shorten report/template.typ and build again; the over-long PDF is at {build / 'report.pdf'}, "
        f"nothing was written to {out}")


__all__ = ["MAX_PAGES", "ReportError", "TEMPLATE", "build_report", "collect", "dig", "read_team",
           "template_body_size", "placeholder_problems"]
