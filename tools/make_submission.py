#!/usr/bin/env python3
"""Pack the submission zip: ``AMLS_Exercise_<ID>.zip`` with the report, the solution and the explainability code.

    python tools/make_submission.py --id 1234567 [--out DIR]

Contents (paths inside the zip):

* ``report.pdf``: from ``report/report.pdf`` (build it first with ``report/build_report.py``);
* ``solution/``: the code, ``Dockerfile``, ``.dockerignore``, ``requirements.txt``, ``DOCKER.md``
  and any other source file, but no ``data/``, ``artifacts/``, caches, compiled files, virtualenvs
  or checkpoints;
* ``explainability/``: its code and text (``.py``, ``.md``), plus the results in
  ``explainability/output/``: ``.md`` and ``.json`` always, the figures (``.png``, ``.jpg``) only
  when they total at most 4 MB (else they are left out with a note: the report shows the main
  ones and the explainability code regenerates them from a run).

The zip is written atomically. The tool refuses (exit status 1, nothing written) when
``report/team.json`` still holds placeholder names or student ID (or names another ID than
``--id``), when a required file is missing, when the zip would hold data, artifacts or
checkpoints, or when it would exceed ``MAX_BYTES`` (20 MB, the course limit).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_BYTES = 20_000_000  # 20 MB, read strictly (decimal megabytes)
EXPLAIN_FIGURES_MAX_BYTES = 4_000_000  # explainability output figures are packed only below this total
STAGES = ("clean.py", "prepare.py", "train.py", "predict.py", "train_augmented.py", "predict_augmented.py")
REQUIRED = ("report.pdf", "solution/Dockerfile", "solution/requirements.txt",
            *(f"solution/{stage}" for stage in STAGES))

# Never packed, at any depth: run outputs, data, caches, environments, editor and OS clutter.
EXCLUDED_DIRS = {"data", "artifacts", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".venv",
                 "venv", ".git", ".ipynb_checkpoints", "build", "dist", "runs", "wandb", "lightning_logs"}
EXCLUDED_SUFFIXES = {".pyc", ".pyo", ".pt", ".pth", ".ckpt", ".npy", ".npz", ".pkl", ".parquet", ".zip",
                     ".egg-info", ".log", ".tmp", ".swp"}
EXCLUDED_NAMES = {".DS_Store", "Thumbs.db"}
EXPLAINABILITY_SUFFIXES = {".py", ".md"}
EXPLAIN_OUTPUT_TEXT_SUFFIXES = {".md", ".json"}
EXPLAIN_OUTPUT_FIGURE_SUFFIXES = {".png", ".jpg", ".jpeg"}
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
TEAM_FILE = Path("report") / "team.json"
FORBIDDEN_PARTS = {"data", "artifacts", "runs"}  # folders whose content must never be submitted


class SubmissionError(RuntimeError):
    """The submission cannot be packed (missing file, too large, bad ID)."""


def _excluded(relative: Path) -> bool:
    parts = relative.parts
    if any(part in EXCLUDED_DIRS or part.endswith(".egg-info") for part in parts[:-1]):
        return True
    name = parts[-1]
    return name in EXCLUDED_NAMES or any(name.endswith(suffix) for suffix in EXCLUDED_SUFFIXES)


def _tree(root: Path, arc_prefix: str, keep=lambda path: True) -> list[tuple[Path, str]]:
    """(file, name in the zip) for every packable file under ``root``, sorted."""
    if not root.is_dir():
        return []
    entries = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and not path.is_symlink() and not _excluded(relative) and keep(path):
            entries.append((path, f"{arc_prefix}/{relative.as_posix()}"))
    return entries


def collect_files(repo: Path = REPO, report: Path | None = None) -> list[tuple[Path, str]]:
    """Every (file, name in the zip) of the submission; raises SubmissionError when a required file is missing."""
    report = Path(report) if report else repo / "report" / "report.pdf"
    entries = []
    if report.is_file():
        entries.append((report, "report.pdf"))
    entries += _tree(repo / "solution", "solution")
    explain = repo / "explainability"
    output = explain / "output"
    entries += _tree(explain, "explainability", keep=lambda path: path.suffix.lower() in EXPLAINABILITY_SUFFIXES
                     and output not in path.parents)
    entries += _tree(output, "explainability/output",
                     keep=lambda path: path.suffix.lower() in EXPLAIN_OUTPUT_TEXT_SUFFIXES)
    figures = _tree(output, "explainability/output",
                    keep=lambda path: path.suffix.lower() in EXPLAIN_OUTPUT_FIGURE_SUFFIXES)
    figure_bytes = sum(path.stat().st_size for path, _ in figures)
    if figure_bytes <= EXPLAIN_FIGURES_MAX_BYTES:
        entries += figures
    else:
        print(f"make_submission: note: the {len(figures)} explainability figures ({figure_bytes / 1e6:.1f} MB) are "
              f"over {EXPLAIN_FIGURES_MAX_BYTES / 1e6:.0f} MB and are left out", file=sys.stderr)
    names = {name for _, name in entries}
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        hints = {"report.pdf": f"{report} (build it: python report/build_report.py)"}
        raise SubmissionError("required file(s) missing: " + ", ".join(hints.get(m, str(repo / m)) for m in missing))
    return entries


def read_team(repo: Path = REPO) -> dict:
    """``report/team.json``, refused while it holds placeholders (the report's title block shows it)."""
    path = Path(repo) / TEAM_FILE
    if not path.is_file():
        raise SubmissionError(f"{TEAM_FILE} is missing: it names the team members and the student ID")
    try:
        team = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SubmissionError(f"{TEAM_FILE} is not valid JSON: {exc}") from exc
    members = [str(m).strip() for m in team.get("members") or []]
    student_id = str(team.get("student_id", "")).strip()
    problems = []
    if not members or any(not m or m.lower().startswith("team member") for m in members):
        problems.append(f"member names {members}")
    if not student_id or set(student_id) == {"0"}:
        problems.append(f"student ID {student_id!r}")
    if problems:
        raise SubmissionError(f"{TEAM_FILE} still holds placeholder " + " and ".join(problems)
                              + ": enter the real names and ID, rebuild the report (make report), then pack again")
    return {"members": members, "student_id": student_id}


def check_contents(names: list[str]) -> None:
    """The zip's names: report, stage scripts, Dockerfile, manifests, explainability code; no data or runs."""
    missing = [name for name in REQUIRED if name not in names]
    if not any(n.startswith("explainability/") and n.endswith(".py") for n in names):
        missing.append("explainability/*.py")
    if missing:
        raise SubmissionError("the zip would lack " + ", ".join(missing))
    forbidden = [n for n in names if FORBIDDEN_PARTS & set(n.split("/")[:-1])
                 or any(n.endswith(suffix) for suffix in EXCLUDED_SUFFIXES)]
    if forbidden:
        raise SubmissionError("the zip would hold data, artifacts or checkpoints: " + ", ".join(forbidden[:5]))


def make_submission(student_id: str | None, out_dir: Path, repo: Path = REPO, report: Path | None = None,
                    max_bytes: int = MAX_BYTES) -> Path:
    """Write ``out_dir/AMLS_Exercise_<student_id>.zip`` and return its path (the ID defaults to team.json's)."""
    team = read_team(Path(repo))
    student_id = student_id or team["student_id"]
    if not ID_PATTERN.match(student_id or ""):
        raise SubmissionError(f"student ID {student_id!r} must be letters, digits, '-' or '_'")
    if student_id != team["student_id"]:
        raise SubmissionError(f"--id {student_id} differs from the student ID {team['student_id']} in {TEAM_FILE}, "
                              f"which the report shows")
    entries = collect_files(Path(repo), report)
    check_contents([name for _, name in entries])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"AMLS_Exercise_{student_id}.zip"
    tmp = target.with_name(target.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            for path, name in entries:
                archive.write(path, name)
        size = tmp.stat().st_size
        if size > max_bytes:
            largest = sorted(entries, key=lambda e: e[0].stat().st_size, reverse=True)[:5]
            raise SubmissionError(
                f"the zip would be {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit; largest files: "
                + ", ".join(f"{name} ({path.stat().st_size / 1e6:.1f} MB)" for path, name in largest))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--id", default=None,
                        help="student ID, used in the file name AMLS_Exercise_<ID>.zip (default: report/team.json's)")
    parser.add_argument("--out", type=Path, default=REPO, help="folder for the zip (default: the repository top)")
    parser.add_argument("--report", type=Path, default=None, help="the PDF to pack (default: report/report.pdf)")
    args = parser.parse_args(argv)
    try:
        target = make_submission(args.id, args.out, report=args.report)
    except SubmissionError as exc:
        print(f"make_submission: refused: {exc}", file=sys.stderr)
        return 1
    with zipfile.ZipFile(target) as archive:
        names = archive.namelist()
    print(f"wrote {target} ({target.stat().st_size / 1e6:.2f} MB, {len(names)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
