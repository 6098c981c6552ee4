#!/usr/bin/env python3
"""Build the PDF report from the files of a run: the single command for the final report.

    python report/build_report.py --artifacts runs/proxy/artifacts --bench benchmarks/results \
        --explain explainability/output --out report/report.pdf

It reads a pipeline run's artifacts (exploration, both tasks' metrics and detectors), the newest
benchmark result of each kind in ``--bench`` (``<date>-<kind>.json``) and the explanations'
``summary.json``; it never re-runs anything. The logic lives in ``report/builder/``: typed readers
of the result files (``results``), the targets table (``targets``), verdict words chosen from the
numbers (``judge``), tables and sentences (``run_tables``, ``story``, ``sections``,
``explain_synthesis``), plots (``plots``) and the Typst build (``render``).

Before writing anything it checks that the inputs of a final report exist, and exits with status 2
and a list of what is missing otherwise (``--allow-missing`` builds a draft in which every absent
number reads "not run"). Plots, ``data.json`` and ``report.typ`` go into ``--build``; the PDF at
``--out`` is replaced only by a report within the page limit.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPORT_DIR = Path(__file__).resolve().parent
REPO = REPORT_DIR.parent
from builder.fmt import NOT_AVAILABLE, NOT_RUN, fmt_interval, fmt_rate  # noqa: F401
from builder.markup import escape_typst, inline_markdown, markdown_to_typst, typst_string  # noqa: F401
from builder.render import (MAX_PAGES, TEMPLATE, ReportError, placeholder_problems, read_team,  # noqa: F401
                            template_body_size)
from builder.render import build_report as _build
from builder.results import UNDER_PROCESSING_RULE, missing_inputs  # noqa: F401
from builder.sections import SAME_RULE_VALUES, same_rule_section  # noqa: F401

DEFAULT_BUILD = REPORT_DIR / "build"


def build_report(artifacts: Path, bench: Path | None, explain: Path | None, out: Path,
                 build: Path = DEFAULT_BUILD, max_pages: int = MAX_PAGES) -> dict:
    return _build(artifacts, bench, explain, out, build, max_pages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=REPO / "solution" / "artifacts", help="artifacts folder of the run")
    parser.add_argument("--bench", type=Path, default=REPO / "benchmarks" / "results", help="benchmark results folder")
    parser.add_argument("--explain", type=Path, default=REPO / "explainability" / "output",
                        help="explainability output folder (summary.json and figures)")
    parser.add_argument("--out", type=Path, default=REPORT_DIR / "report.pdf", help="the PDF to write")
    parser.add_argument("--build", type=Path, default=DEFAULT_BUILD, help="folder for plots and intermediate files")
    parser.add_argument("--allow-missing", action="store_true",
                        help="build a draft even when inputs are missing (their numbers read 'not run')")
    args = parser.parse_args(argv)
    missing = missing_inputs(args.artifacts, args.bench, args.explain)
    if missing and not args.allow_missing:
        print("build_report: error: the report's inputs are incomplete, nothing was written:\n  - "
              + "\n  - ".join(missing) + "\n(pass --allow-missing for a draft with 'not run' gaps)", file=sys.stderr)
        return 2
    team = read_team()
    if team["placeholder"]:
        print("build_report: warning: report/team.json still holds placeholder names or student ID; "
              "edit it before submitting", file=sys.stderr)
    try:
        result = build_report(args.artifacts, args.bench, args.explain, args.out, args.build)
    except ReportError as exc:
        print(f"build_report: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {result['pdf']} ({result['pages']} pages, {result['figures']} figures"
          + (f"; left out to fit: {', '.join(result['dropped'])}" if result["dropped"] else "") + ")")
    for source in result["sources"]:
        if source["status"] != "read":
            print(f"  {source['status']}: {source['what']} ({source['path']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
