"""Break the code on purpose, one named breakage at a time, and check that a test notices.

Each breakage is a small text edit of one promise of the specification (the
calibrated threshold, one label per row, writes only under artifacts/, atomic
writes, reproducible training, ...). The repository (its tracked and untracked,
not ignored files) is copied to a temporary folder; the real files are never
touched. For each breakage the edit is applied to the copy, only the tests that
guard that promise run (``pytest -x``: the first failure is enough), and the
edit is undone. A breakage is *killed* when a test fails, and *survived* when
they all pass.

The demo run of the six stages (a few minutes) is made once, with the unbroken
code, by a baseline run of every selected test (which must all pass), and then
reused through ``AMLS_TEST_DEMO_RUN`` (see tests/conftest.py). The guarding
tests are chosen so that each redoes the broken step itself (a predict, a start
of training, a write) instead of only reading the demo run's files; a breakage
that needs the whole run made again says so with ``fresh_demo_run``.

    python tools/mutation_check.py [--only NAME,...] [--out benchmarks/results/DATE-mutation-check.json]

Exit status 0 when every breakage was killed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Breakage:
    name: str
    promise: str
    edits: list[tuple[str, str, str]]  # (file, old text, new text); old must occur exactly once
    tests: list[str]  # pytest node ids or files, relative to the repository
    keyword: str | None = None  # pytest -k expression, to pick tests inside the files
    fresh_demo_run: bool = False
    origin: str = "own"  # "issue 21" for the breakages of the table


DETECTOR = "solution/aidetect/detector.py"
DATAIO = "solution/aidetect/dataio.py"
PROMISES = "tests/test_promises.py"
KILL_WRITES = "tests/test_kill_writes.py"

BREAKAGES = [
    # --- the six of the table ---------------------------------------------
    Breakage(
        "predict-labels-score-above-zero", "predict labels a row 1 exactly when its score exceeds the calibrated threshold",
        [(DETECTOR, "labels = detector.threshold.predict(scores)",
          "labels = (np.asarray(scores) > 0).astype(np.int64)")],
        [f"{PROMISES}::test_predict_labels_are_the_calibrated_threshold_applied_to_the_scores"], origin="issue 21"),
    Breakage(
        "unreached-rows-get-no-label", "every row_id gets exactly one label, also when the deadline did not reach it",
        [(DETECTOR, "    write_predictions(predictions_path(task), all_ids, labels)\n",
          "    reached = np.array([int(r) in predicted for r in all_ids], dtype=bool)\n"
          "    write_predictions(predictions_path(task), all_ids[reached], labels[reached])\n")],
        [f"{PROMISES}::test_an_exhausted_deadline_still_labels_every_row_once_and_names_the_unscored_rows"],
        origin="issue 21"),
    Breakage(
        "predictions-copied-under-solution", "a stage writes only under artifacts/",
        [(DATAIO, '    with atomic_path(target) as tmp:\n        tmp.write_text("\\n".join(lines) + "\\n")\n',
          '    with atomic_path(target) as tmp:\n        tmp.write_text("\\n".join(lines) + "\\n")\n'
          '    (Path(__file__).resolve().parents[1] / f"last_{target.name}").write_text("\\n".join(lines) + "\\n")\n')],
        [f"{PROMISES}::test_the_predict_stages_write_nothing_outside_artifacts_as_graders_run_them"],
        origin="issue 21"),
    Breakage(
        "network-seed-includes-process-id", "training twice with the same data and seed gives the same model",
        [("solution/aidetect/training.py", "    torch.manual_seed(config.seed)\n",
          "    torch.manual_seed(config.seed + __import__('os').getpid())\n")],
        ["tests/test_isolation_determinism.py::test_training_twice_in_two_processes_gives_identical_models_and_scores"],
        origin="issue 21"),
    Breakage(
        "save-torch-in-place", "a kill during a checkpoint write leaves the previous checkpoint usable",
        [(DATAIO, "    with atomic_path(target) as tmp:\n        torch.save(obj, tmp)\n",
          "    Path(target).parent.mkdir(parents=True, exist_ok=True)\n    torch.save(obj, target)\n")],
        [f"{KILL_WRITES}::test_a_kill_while_a_checkpoint_is_rewritten_leaves_the_previous_checkpoint"],
        origin="issue 21"),
    Breakage(
        "deletion-removes-blocks-in-random-order", "the deployed attribution map is faithful (deletion test)",
        [("explainability/attributions.py", 'orders[i] = shuffled[np.argsort(-row[shuffled], kind="stable")]',
          "orders[i] = shuffled")],
        ["tests/test_deletion_faithfulness.py::test_gradcam_removes_evidence_faster_than_random_order_by_a_stated_margin[task02]"],
        origin="issue 21"),
    # --- own breakages of the specification's promises ------------------------------
    Breakage(
        "threshold-one-rank-low", "P(true FPR > 0.2) <= 0.05: the Neyman-Pearson order statistic, exactly",
        [("solution/aidetect/calibration.py", "    value = float(scores[k - 1])\n", "    value = float(scores[max(0, k - 2)])\n")],
        ["tests/test_calibration.py"]),
    Breakage(
        "csv-drops-the-first-row", "predictions.csv holds every row_id exactly once",
        [(DATAIO, "for r, l in zip(row_ids, labels)]", "for r, l in zip(row_ids[1:], labels[1:])]")],
        [f"{PROMISES}::test_predict_labels_are_the_calibrated_threshold_applied_to_the_scores"]),
    Breakage(
        "label-mapping-inverted", "label 0 is real (source_class 0), 1 is ai_generated (source_class >= 1)",
        [("solution/aidetect/labels.py", "return (np.asarray(source_class) >= 1).astype(np.int64)",
          "return (np.asarray(source_class) < 1).astype(np.int64)")],
        ["tests/test_core.py"]),
    Breakage(
        "calibrated-on-validation", "the threshold is calibrated on calibration/, validation/ stays independent",
        [(DETECTOR, 'TASK_CALIBRATION_SPLITS = {"task02": ("calibration",), "task03": ("calibration", "calibration_augmented")}',
          'TASK_CALIBRATION_SPLITS = {"task02": ("validation",), "task03": ("validation", "validation_augmented")}')],
        [f"{PROMISES}::test_the_threshold_is_the_rule_applied_to_the_calibration_reals_scores"]),
    Breakage(
        "detector-json-written-in-place", "a kill while detector.json is rewritten leaves the previous detector usable",
        [(DETECTOR, '    write_json(task_dir(task) / "detector.json",\n',
          '    (lambda path, obj: (path.parent.mkdir(parents=True, exist_ok=True),\n'
          '                        path.write_text(__import__("json").dumps(obj))))(task_dir(task) / "detector.json",\n')],
        [f"{KILL_WRITES}::test_a_kill_while_detector_json_is_rewritten_leaves_the_previous_detector"]),
    Breakage(
        "predictions-csv-written-in-place", "a kill while predictions.csv is written leaves a complete file or none",
        [(DATAIO, '    with atomic_path(target) as tmp:\n        tmp.write_text("\\n".join(lines) + "\\n")\n',
          '    Path(target).parent.mkdir(parents=True, exist_ok=True)\n'
          '    Path(target).write_text("\\n".join(lines) + "\\n")\n')],
        [f"{KILL_WRITES}::test_predict_killed_while_writing_the_final_csv_leaves_the_complete_first_one",
         f"{KILL_WRITES}::test_predict_killed_while_writing_the_first_csv_leaves_no_partial_file"]),
    Breakage(
        "predict-ignores-the-deadline", "predict ends within its timeout: it stops scoring at its deadline",
        [(DETECTOR, "workers, stop_at=deadline.stop_at() if deadline else None)", "workers, stop_at=None)"),
         (DETECTOR, "            if deadline is not None and deadline.expired():\n                break\n", "")],
        [f"{PROMISES}::test_an_exhausted_deadline_still_labels_every_row_once_and_names_the_unscored_rows"]),
    Breakage(
        "unscored-rows-called-generated", "a row without a score is labelled real (0), never accused",
        [(DETECTOR, "labels = np.array([predicted.get(int(row_id), 0) for row_id in all_ids], dtype=np.int64)",
          "labels = np.array([predicted.get(int(row_id), 1) for row_id in all_ids], dtype=np.int64)")],
        [f"{PROMISES}::test_an_exhausted_deadline_still_labels_every_row_once_and_names_the_unscored_rows"]),
    Breakage(
        "predict-scores-centre-crops-only", "predict scores an image the way its calibration twin was scored",
        [(DETECTOR, "    want_corners = detector.scores_corner_crops", "    want_corners = False")],
        [f"{PROMISES}::test_predict_labels_are_the_calibrated_threshold_applied_to_the_scores"]),
    Breakage(
        "predictions-file-only-at-the-end", "a kill at any moment after the row ids are read leaves every row labelled",
        [(DETECTOR, "    write_predictions(predictions_path(task), all_ids, np.zeros(len(all_ids), dtype=np.int64))\n", "")],
        [KILL_WRITES], keyword="killed_at_any_moment"),
    Breakage(
        "failed-predict-keeps-stale-predictions", "a predict stage that fails leaves no earlier run's labels behind",
        [(DETECTOR, "    _remove_stale_outputs(task)\n", "")],
        ["tests/test_bad_inputs.py"], keyword="refuses_a_broken_contract"),
    Breakage(
        "prepare-keeps-half-written-files", "a stage killed while it writes leaves nothing behind that a rerun keeps",
        [(DATAIO, "    remove_leftover_temporaries(target)\n", "")],
        [KILL_WRITES], keyword="prepare_killed"),
    Breakage(
        "workers-outlive-a-killed-stage", "a stage killed at its timeout leaves no process behind",
        [("solution/aidetect/parallel.py", "    _die_with_parent(parent)\n", "")],
        [KILL_WRITES], keyword="killed_at_any_moment and scoring"),
    Breakage(
        "task03-trains-from-scratch", "Task 3 continues from the Task-2 checkpoint",
        [("solution/aidetect/stages.py", 'init_from=task_dir("task02") / NETWORK_FILE', "init_from=None")],
        [f"{PROMISES}::test_task03_training_starts_from_the_task02_best_weights"]),
]


def repository_files(repo: Path) -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, check=True,
                            capture_output=True).stdout.decode()
    return [name for name in listed.split("\0") if name and (repo / name).is_file()]


def copy_repository(repo: Path, dst: Path) -> None:
    for name in repository_files(repo):
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target)


def apply(copy: Path, breakage: Breakage) -> dict[str, str]:
    """Apply the edits; returns the original text of each edited file (to undo them)."""
    originals = {}
    for file, old, new in breakage.edits:
        path = copy / file
        current = path.read_text()
        originals.setdefault(file, current)
        count = current.count(old)
        if count != 1:
            raise SystemExit(f"breakage {breakage.name}: the text to replace occurs {count} times in {file} "
                             f"(the code changed; update the breakage):\n{old}")
        path.write_text(current.replace(old, new))
    return originals


def undo(copy: Path, originals: dict[str, str]) -> None:
    for file, text in originals.items():
        (copy / file).write_text(text)


def pytest_command(tests: list[str], keyword: str | None, first_failure: bool) -> list[str]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf"]
    if first_failure:
        command.append("-x")
    if keyword:
        command += ["-k", keyword]
    return command + tests


def run_tests(copy: Path, tests: list[str], keyword: str | None, demo_cache: Path | None, first_failure: bool,
              timeout: float) -> dict:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("AMLS_TEST_DEMO_RUN", None)
    if demo_cache is not None:
        env["AMLS_TEST_DEMO_RUN"] = str(demo_cache)
    started = time.monotonic()
    try:
        result = subprocess.run(pytest_command(tests, keyword, first_failure), cwd=copy, env=env, capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        output, code = result.stdout + result.stderr, result.returncode
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        code = None
    end_processes_in(copy)
    failed = [line.split(" ", 2)[1] for line in output.splitlines() if line.startswith("FAILED ")]
    summary = next((line for line in reversed(output.splitlines()) if " in " in line and ("passed" in line or
                    "failed" in line or "error" in line)), "")
    errors = [line for line in output.splitlines() if line.startswith("E  ")][:30]  # why the first test failed
    return {"exit_code": code, "seconds": round(time.monotonic() - started, 1), "failed": failed,
            "summary": summary.strip("= "), "errors": errors, "tail": output.splitlines()[-40:]}


def end_processes_in(folder: Path) -> list[int]:
    """SIGKILL every process still working in ``folder``: a breakage such as ``workers-outlive-a-killed-stage``
    leaves workers behind, which would hold memory and slow the breakages after it. Returns their ids."""
    ended = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")).is_relative_to(folder.resolve()) and int(proc.name) != os.getpid():
                os.kill(int(proc.name), signal.SIGKILL)
                ended.append(int(proc.name))
        except (OSError, ValueError):
            continue  # gone, or not ours to read
    return ended


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def write_markdown(path: Path, record: dict) -> None:
    lines = [f"# Mutation check, {record['date'][:10]}", "",
             f"Machine: {record['machine']['hostname']}, {record['machine']['cpu_model']}, "
             f"{record['machine']['nproc']} CPUs; load average {record['load_average_before']} before, "
             f"{record['load_average_after']} after.", "",
             f"Command: `{record['command']}` (commit {record['git_commit']}, "
             f"{'with uncommitted changes' if record['git_dirty'] else 'clean tree'}).", "",
             f"Baseline (unbroken code, every selected test): {record['baseline']['summary']} "
             f"in {record['baseline']['seconds']} s.", "",
             f"**{record['killed']} of {len(record['breakages'])} breakages killed"
             f"{', survived: ' + ', '.join(record['survived']) if record['survived'] else ''}"
             f"{', not checked: ' + ', '.join(record['not_checked']) if record['not_checked'] else ''}.**", "",
             "| breakage | origin | promise | tests run | result | first failing test | seconds |",
             "|---|---|---|---|---|---|---|"]
    for b in record["breakages"]:
        tests = "<br>".join(t.replace("tests/", "") for t in b["tests"])
        first = b["failed"][0].replace("tests/", "") if b["failed"] else ""
        lines.append(f"| `{b['name']}` | {b['origin']} | {b['promise']} | {tests} | **{b['result']}** | {first} | "
                     f"{b['seconds']} |")
    lines += ["", "Each breakage is a text edit of a copy of the repository (see `tools/mutation_check.py` for the "
              "exact edits); only the listed tests ran, stopping at the first failure. The demo run of the six stages "
              "was made once with the unbroken code and reused; every listed test redoes the broken step itself.", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, help="comma-separated breakage names (default: all)")
    parser.add_argument("--out", default=None, help="result JSON (a .md beside it); default "
                        "benchmarks/results/<today>-mutation-check.json")
    parser.add_argument("--workdir", default=None, help="folder for the copy and the demo run (default: a temp dir)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="do not run the selected tests on the unbroken copy (the demo run must exist)")
    parser.add_argument("--baseline-last", action="store_true",
                        help="run the baseline after the breakages (results of the breakages come sooner)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per pytest run")
    parser.add_argument("--list", action="store_true", help="list the breakages and exit")
    args = parser.parse_args(argv)

    breakages = BREAKAGES
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {b.name for b in BREAKAGES}
        if unknown:
            parser.error(f"unknown breakages: {sorted(unknown)}")
        breakages = [b for b in BREAKAGES if b.name in wanted]
    if args.list:
        for b in breakages:
            print(f"{b.name:45s} {b.origin:9s} {b.promise}")
        return 0
    today = datetime.now().strftime("%Y-%m-%d")
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"{today}-mutation-check.json"
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mutation_check_"))
    copy, demo_cache = work / "repo", work / "demo_cache"
    if copy.exists():
        shutil.rmtree(copy)
    copy_repository(REPO, copy)
    print(f"copy of the repository in {copy}", flush=True)
    load_before = load_average()

    all_tests = sorted({t for b in breakages for t in b.tests})
    if args.skip_baseline and not (demo_cache / "run" / "scorecard.json").exists():
        print(f"no demo run in {demo_cache}: a test that needs one makes it with the broken code", flush=True)
    if args.skip_baseline or args.baseline_last:
        baseline = {"summary": "skipped" if args.skip_baseline else "not yet run", "seconds": 0, "exit_code": None,
                    "failed": []}
    else:
        print(f"baseline: {len(all_tests)} test selections on the unbroken copy", flush=True)
        baseline = run_tests(copy, all_tests, None, demo_cache, first_failure=False, timeout=args.timeout * 2)
        print(f"baseline: {baseline['summary']} in {baseline['seconds']} s", flush=True)
        if baseline["exit_code"] != 0:
            print("\n".join(baseline["tail"]), flush=True)
            print("some selected tests fail on the unbroken code: their breakages are not checked", flush=True)

    results = []
    for breakage in breakages:
        failing = [f for f in baseline["failed"] if any(f.startswith(test) for test in breakage.tests)]
        if failing or (baseline["exit_code"] not in (0, None) and not baseline["failed"]):
            entry = asdict(breakage) | {"result": "not checked (its tests fail on the unbroken code)",
                                        "failed": failing, "seconds": 0, "summary": "", "exit_code": None}
            entry["edits"] = [{"file": f, "old": o, "new": n} for f, o, n in breakage.edits]
            results.append(entry)
            print(f"{breakage.name}: not checked, failing on the unbroken code: {failing}", flush=True)
            continue
        originals = apply(copy, breakage)
        try:
            cache = None
            if not breakage.fresh_demo_run:  # a private copy: a broken test must not change the shared run
                cache = work / "demo_cache_used"
                if cache.exists():
                    shutil.rmtree(cache)
                if demo_cache.exists():
                    shutil.copytree(demo_cache, cache, symlinks=True)
            outcome = run_tests(copy, breakage.tests, breakage.keyword, cache, first_failure=True,
                                timeout=args.timeout)
        finally:
            undo(copy, originals)
        outcome["result"] = ("survived" if outcome["exit_code"] == 0 else
                             "inconclusive (timeout)" if outcome["exit_code"] is None else "killed")
        entry = asdict(breakage) | outcome
        entry["edits"] = [{"file": f, "old": o, "new": n} for f, o, n in breakage.edits]
        results.append(entry)
        print(f"{breakage.name}: {outcome['result']} ({outcome['summary']}, {outcome['seconds']} s)"
              f"{' by ' + outcome['failed'][0] if outcome['failed'] else ''}", flush=True)

        save(out, argv, load_before, baseline, results)  # after each breakage: a partial result survives a stop

    if args.baseline_last and not args.skip_baseline:
        print(f"baseline: {len(all_tests)} test selections on the unbroken copy", flush=True)
        baseline = run_tests(copy, all_tests, None, demo_cache, first_failure=False, timeout=args.timeout * 2)
        print(f"baseline: {baseline['summary']} in {baseline['seconds']} s", flush=True)
        for entry in results:
            failing = [f for f in baseline["failed"] if any(f.startswith(test) for test in entry["tests"])]
            if failing and entry["result"] == "killed":
                entry["result"] = "not checked (its tests fail on the unbroken code too)"
                entry["baseline_failed"] = failing
    record = save(out, argv, load_before, baseline, results)
    print(f"{record['killed']} of {len(results)} breakages killed; survived: {record['survived'] or 'none'}; "
          f"wrote {out}", flush=True)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not record["survived"] else 1


def save(out: Path, argv, load_before, baseline: dict, results: list[dict]) -> dict:
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()  # noqa: E731
    record = {
        "schema_version": 1,
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"hostname": socket.gethostname(), "cpu_model": cpu_model(), "nproc": os.cpu_count(),
                    "python": platform.python_version()},
        "command": " ".join(["python", "tools/mutation_check.py", *(argv if argv is not None else sys.argv[1:])]),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain")),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "baseline": {k: baseline.get(k) for k in ("summary", "seconds", "exit_code", "failed")},
        "killed": sum(r["result"] == "killed" for r in results),
        "survived": [r["name"] for r in results if r["result"] == "survived"],
        "not_checked": [r["name"] for r in results if r["result"] not in ("killed", "survived")],
        "breakages": results,
    }
    from aidetect.provenance import portable  # a committed result names no machine path

    record = portable(record)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    write_markdown(out.with_suffix(".md"), record)
    return record


if __name__ == "__main__":
    sys.exit(main())
