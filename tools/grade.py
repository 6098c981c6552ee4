#!/usr/bin/env python3
"""Grading harness: run the six stages of ``solution/`` the way the graders do, without Docker.

What the graders do (see ``docs/contract.md``): build the image from ``solution/``
(``COPY . /workspace/solution``), mount their dataset read-only at ``solution/data/``, run
``docker run --cpus 8`` without network, and call six scripts in order, each killed after the
timeout it receives on the command line.  Then they score ``artifacts/task02/predictions.csv``
and ``artifacts/task03/predictions.csv`` on the hidden holdout that replaces ``data/predict/``.

This harness reproduces that on the bare machine:

* the solution folder is copied into a fresh workspace (``<ws>/solution``) honouring
  ``solution/.dockerignore`` with Docker's own matching rules (``*``, ``?``, ``[...]``, ``**``,
  ``!`` exceptions; a pattern matches a path or any of its parent directories; patterns are
  anchored at the build-context root, so ``__pycache__`` only excludes the top-level one and
  ``**/__pycache__`` excludes them everywhere - exactly like ``docker build``);
* each stage runs as ``python <stage>.py --timeout_seconds T`` (``T = max(1, round(official *
  scale))``) from inside ``<ws>/solution`` with the harness's own interpreter, inside
  ``unshare --mount --net --fork`` (new mount and network namespaces: no network, only a DOWN
  loopback), where ``ROOT/data`` is bind-mounted READ-ONLY at ``<ws>/solution/data``; an
  ordinary user runs it rootless, inside a user namespace (``unshare --user --map-root-user``);
  if ``unshare``/``mount`` are not permitted (no user namespaces) it falls back to no isolation
  (``data`` becomes a symlink, nothing is read-only, network is available) and says so;
* the stage is killed after ``T`` seconds: SIGTERM to its whole process group at ``T``, SIGKILL
  ``grace`` seconds later (default 5 s); after the stage's main process ends, any process it left
  behind is SIGKILLed (a container dies with its main process);
* peak memory: the process tree (unshare -> python -> its children) is polled every 0.2 s:
  ``peak_rss_tree_sampled_mb`` is the largest sum of RSS over all processes of the tree (psutil;
  it may miss spikes shorter than 0.2 s and counts shared pages once per process);
  ``peak_rss_max_process_mb`` is the largest single-process peak, from the kernel's high-water
  marks: ``VmHWM`` of /proc/<pid>/status of every process seen (a high-water mark, so spikes
  between polls are not missed) and ``ru_maxrss`` of ``wait4`` (covers the last moments and
  short-lived children; it is only used when above the harness's own peak RSS, because the
  kernel carries the spawning process's high-water mark over into the first exec'd child);
  ``peak_rss_mb`` is the larger of the two; ``peak_pss_tree_sampled_mb`` is the largest sum of PSS
  (proportional set size: a page shared by k processes counts 1/k in each) over the tree, sampled
  at most once per ``PSS_SECONDS`` because reading it costs ~13 ms per GB-sized process. Forked
  workers share most of their pages with the parent, so the RSS sum counts the parent several times
  and the PSS sum is the tree's actual footprint;
* ``--cpus 8``: a container with a CPU quota still sees every host core; we record
  ``threads_for_cpus8 = min(8, os.cpu_count())`` and, if more than 8 cores are available, pin the
  stage to 8 of them with ``taskset``.  ``OMP_NUM_THREADS`` & co. are removed from the
  environment (the image does not set them), ``PYTHONDONTWRITEBYTECODE=1`` and
  ``PYTHONUNBUFFERED=1`` are set like in the image.

Usage::

    python tools/grade.py --data DATA_ROOT [--solution solution] [--workspace DIR]
        [--timeout-scale 1.0] [--stages all|clean,prepare,...] [--out scorecard.json]
        [--keep-workspace] [--artifacts-out DIR] [--grace 5] [--no-isolation]
        [--loopback-up] [--reuse-artifacts] [--quiet]

Exit code 0 if both prediction files are valid, 1 otherwise.  The core is importable:
``grade(data_root, solution_dir, workspace=None, timeout_scale=1.0, stages=None, out=None)``.
"""
from __future__ import annotations

import argparse
import collections
import csv
import datetime as _dt
import glob
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Iterable

try:  # psutil is in the dev requirements; without it the memory poll is disabled.
    import psutil  # type: ignore
except Exception:  # pragma: no cover
    psutil = None  # type: ignore

SCHEMA_VERSION = 1

#: (name, script, official timeout in seconds), in the order the graders run them.
STAGES: list[tuple[str, str, int]] = [
    ("clean", "clean.py", 600),
    ("prepare", "prepare.py", 600),
    ("train", "train.py", 1800),
    ("predict", "predict.py", 600),
    ("train_augmented", "train_augmented.py", 1800),
    ("predict_augmented", "predict_augmented.py", 600),
]
STAGE_NAMES = [s[0] for s in STAGES]

#: task -> (predictions path relative to the solution folder, stage that writes it)
TASKS = {
    "task02": ("artifacts/task02/predictions.csv", "predict"),
    "task03": ("artifacts/task03/predictions.csv", "predict_augmented"),
}
PRED_HEADER = "row_id,predicted_label"
FPR_LIMIT = 0.20
SPLITS = ["train", "calibration", "calibration_augmented", "validation",
          "validation_augmented", "predict"]

#: thread-count variables that the python:3.11-slim image does not set; removed from the env.
THREAD_ENV_VARS = ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                   "NUMEXPR_NUM_THREADS", "NUMEXPR_MAX_THREADS", "VECLIB_MAXIMUM_THREADS",
                   "TORCH_NUM_THREADS", "PYTHONPATH"]

ISOLATION_FULL = "unshare(mount,net)+ro-bind"
ISOLATION_NONE = "none"
POLL_SECONDS = 0.2
PSS_SECONDS = 1.0  # PSS of the tree is read at most this often (it walks every page table)
TAIL_LINES = 30
MOUNT_FAIL_RC = 97  # exit code of the in-namespace shell when the read-only bind mount fails

_print_lock = threading.Lock()


# --------------------------------------------------------------------------- small helpers
def _say(msg: str, quiet: bool = False) -> None:
    if quiet:
        return
    with _print_lock:
        print(msg, flush=True)


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _atomic_write_text(path: str, text: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=os.path.basename(path), dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git_info(path: str) -> dict[str, Any]:
    info: dict[str, Any] = {"commit": None, "dirty": None, "repo": None}

    def run(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", path, *args], capture_output=True, text=True,
                               timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    top = run("rev-parse", "--show-toplevel")
    if not top:
        return info
    info["repo"] = top
    info["commit"] = run("rev-parse", "HEAD")  # None when the branch has no commit yet
    status = run("status", "--porcelain", "--untracked-files=no")
    info["dirty"] = None if status is None else bool(status)
    return info


def _cpu_affinity() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover
        return list(range(os.cpu_count() or 1))


def _cpulist(cpus: Iterable[int]) -> str:
    return ",".join(str(c) for c in cpus)


# --------------------------------------------------------------------------- .dockerignore
class DockerIgnore:
    """Docker's ``.dockerignore`` semantics (moby ``patternmatcher``), enough for real files.

    Patterns are cleaned (``filepath.Clean``), a leading ``/`` is dropped, ``#`` lines are
    comments, ``!`` marks an exception.  ``*`` matches within one path component, ``?`` one
    character, ``[...]`` a class, ``**`` any number of directories.  A path is excluded if the
    last pattern matching it (or one of its parent directories) is not an exception.
    """

    def __init__(self, lines: Iterable[str] = ()):
        self.patterns: list[tuple[bool, re.Pattern[str], str]] = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            neg = line.startswith("!")
            if neg:
                line = line[1:].strip()
            line = os.path.normpath(line).replace(os.sep, "/")
            if len(line) > 1 and line.startswith("/"):
                line = line.lstrip("/") or "/"
            if line in (".", ""):
                continue
            self.patterns.append((neg, re.compile(self._to_regex(line)), line))

    @classmethod
    def from_dir(cls, context_dir: str) -> "DockerIgnore":
        p = os.path.join(context_dir, ".dockerignore")
        if not os.path.isfile(p):
            return cls()
        with open(p, encoding="utf-8", errors="replace") as f:
            return cls(f.read().splitlines())

    @property
    def has_exceptions(self) -> bool:
        return any(neg for neg, _, _ in self.patterns)

    @staticmethod
    def _to_regex(pat: str) -> str:
        out = ["^"]
        i, n = 0, len(pat)
        while i < n:
            c = pat[i]
            if c == "*":
                if i + 1 < n and pat[i + 1] == "*":
                    i += 2
                    if i < n and pat[i] == "/":
                        i += 1
                    out.append(".*" if i >= n else "(.*/)?")
                    continue
                out.append("[^/]*")
            elif c == "?":
                out.append("[^/]")
            elif c == "[":
                j = pat.find("]", i + 2 if i + 1 < n and pat[i + 1] in "!^" else i + 1)
                if j == -1:
                    out.append(re.escape(c))
                else:
                    body = pat[i + 1:j]
                    if body.startswith("!"):
                        body = "^" + body[1:]
                    out.append("[" + body.replace("\\", "\\\\") + "]")
                    i = j
            elif c == "\\" and i + 1 < n:
                i += 1
                out.append(re.escape(pat[i]))
            else:
                out.append(re.escape(c))
            i += 1
        out.append("$")
        return "".join(out)

    def excluded(self, relpath: str) -> bool:
        relpath = relpath.replace(os.sep, "/").strip("/")
        parts = relpath.split("/")
        parents = ["/".join(parts[:k]) for k in range(1, len(parts))]
        matched = False
        for neg, rx, _ in self.patterns:
            if neg != matched:  # inclusion already matched, or exception that has nothing to undo
                continue
            hit = bool(rx.match(relpath)) or any(rx.match(p) for p in parents)
            if hit:
                matched = not neg
        return matched


def copy_build_context(src: str, dst: str, ignore: DockerIgnore | None = None,
                       always_skip_top: Iterable[str] = ("data",)) -> dict[str, Any]:
    """Copy ``src`` to ``dst`` like ``COPY . dst`` with a ``.dockerignore``.

    Top-level names in ``always_skip_top`` are skipped as well (``data`` is shadowed by the
    read-only dataset mount anyway).  Symlinks are copied as symlinks.
    """
    ignore = ignore or DockerIgnore.from_dir(src)
    skip_top = set(always_skip_top)
    n_files, excluded = 0, []
    os.makedirs(dst, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        rel_dir = os.path.relpath(dirpath, src)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        keep_dirs = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            full = os.path.join(dirpath, d)
            if (not rel_dir and d in skip_top) or (
                    ignore.excluded(rel) and not ignore.has_exceptions):
                excluded.append(rel + "/")
                continue
            if os.path.islink(full):  # symlink to a directory: copy the link itself
                if not ignore.excluded(rel):
                    os.symlink(os.readlink(full), os.path.join(dst, rel))
                    n_files += 1
                else:
                    excluded.append(rel)
                continue
            if not ignore.excluded(rel):
                os.makedirs(os.path.join(dst, rel), exist_ok=True)
            keep_dirs.append(d)
        dirnames[:] = keep_dirs
        for fn in sorted(filenames):
            rel = f"{rel_dir}/{fn}" if rel_dir else fn
            if (not rel_dir and fn in skip_top) or ignore.excluded(rel):
                excluded.append(rel)
                continue
            s, t = os.path.join(dirpath, fn), os.path.join(dst, rel)
            os.makedirs(os.path.dirname(t), exist_ok=True)
            if os.path.islink(s):
                os.symlink(os.readlink(s), t)
            else:
                shutil.copy2(s, t)
            n_files += 1
    return {"files_copied": n_files, "excluded": excluded,
            "dockerignore_patterns": [("!" if neg else "") + p for neg, _, p in ignore.patterns]}


# --------------------------------------------------------------------------- isolation
def unshare_argv() -> list[str]:
    """``unshare`` with new mount and network namespaces. An ordinary user also needs a user namespace in
    which it is root (``--map-root-user``): the mounts are then allowed, and files it writes stay its own."""
    rootless = ["--user", "--map-root-user"] if os.geteuid() != 0 else []
    return ["unshare", *rootless, "--mount", "--net", "--fork"]


def probe_isolation(data_src: str, data_dst: str) -> tuple[bool, str]:
    """True if ``unshare --mount --net`` plus a read-only bind mount work here."""
    if not shutil.which("unshare") or not shutil.which("mount"):
        return False, "unshare or mount not found"
    script = (f"mount --bind {shlex.quote(data_src)} {shlex.quote(data_dst)} && "
              f"mount -o remount,bind,ro {shlex.quote(data_dst)} && "
              f"test -d {shlex.quote(data_dst)} && ! touch {shlex.quote(data_dst)}/.grade_probe "
              f"2>/dev/null")
    try:
        r = subprocess.run([*unshare_argv(), "sh", "-c", script],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"unshare failed: {e}"
    if r.returncode != 0:
        return False, f"unshare/mount not permitted (rc={r.returncode}): {r.stderr.strip()[:300]}"
    return True, ""


# --------------------------------------------------------------------------- running a stage
def _vm_hwm_kb(pid: int | str) -> int | None:
    """Kernel high-water mark of a process' resident memory (VmHWM, KiB)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _tree(proc_ps: Any) -> list[Any]:
    try:
        return [proc_ps] + proc_ps.children(recursive=True)
    except Exception:
        return []


def _kill_tree(pgid: int, seen: dict[int, Any], sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for p in list(seen.values()):  # processes that left the group (setsid) but are still ours
        try:
            if p.is_running():
                p.send_signal(sig)
        except Exception:
            pass


def run_stage(name: str, script: str, official_timeout: int, *, sol_dir: str, data_src: str,
              isolated: bool, timeout_scale: float, grace: float, env: dict[str, str],
              pin_cpus: list[int] | None, log_path: str, loopback_up: bool = False,
              quiet: bool = False) -> dict[str, Any]:
    timeout = max(1, int(round(official_timeout * timeout_scale)))
    py_cmd = [sys.executable, script, "--timeout_seconds", str(timeout)]
    inner = (["taskset", "-c", _cpulist(pin_cpus)] if pin_cpus else []) + py_cmd
    if isolated:
        dst = os.path.join(sol_dir, "data")
        sh = (f"mount --bind {shlex.quote(data_src)} {shlex.quote(dst)} && "
              f"mount -o remount,bind,ro {shlex.quote(dst)} || "
              f"{{ echo 'grade.py: read-only bind mount of the data failed' >&2; "
              f"exit {MOUNT_FAIL_RC}; }}; ")
        if loopback_up:
            sh += "ip link set lo up 2>/dev/null || true; "
        sh += f"cd {shlex.quote(sol_dir)} && exec {shlex.join(inner)}"
        argv = [*unshare_argv(), "sh", "-c", sh]
    else:
        argv = inner
    rec: dict[str, Any] = {
        "name": name, "script": script,
        "command": f"python {script} --timeout_seconds {timeout}",
        "argv": argv,
        "official_timeout_seconds": official_timeout, "timeout_seconds": timeout,
        "started_at": _now_iso(), "wall_seconds": None, "exit_code": None, "signal": None,
        "timed_out": False, "killed": False, "ok": False,
        "peak_rss_mb": None, "peak_rss_tree_sampled_mb": None, "peak_rss_max_process_mb": None,
        "peak_pss_tree_sampled_mb": None,
        "log": log_path, "tail": [], "error": None,
    }
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    _say(f"==> [{name}] {rec['command']}  (killed after {timeout}s + {grace:g}s grace)", quiet)
    logf = open(log_path, "w", encoding="utf-8", errors="replace")
    logf.write(f"# {rec['command']}\n# argv: {shlex.join(argv)}\n# started {rec['started_at']}\n")
    logf.flush()
    own_hwm_kb = _vm_hwm_kb("self")
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(argv, cwd=sol_dir, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as e:
        rec["error"] = f"could not start: {e}"
        rec["wall_seconds"] = 0.0
        logf.write(rec["error"] + "\n")
        logf.close()
        rec["tail"] = [rec["error"]]
        _say(f"[{name}] {rec['error']}", quiet)
        return rec

    def reader() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            logf.write(line + "\n")  # the log keeps everything
            logf.flush()
            if "\r" in line:  # progress bars: show only the latest state
                line = [seg for seg in line.split("\r") if seg.strip()][-1:] or [""]
                line = line[0]
            tail.append(line if len(line) <= 2000 else line[:2000] + " ...[truncated]")
            _say(f"[{name}] {line}", quiet)

    th = threading.Thread(target=reader, name=f"reader-{name}", daemon=True)
    th.start()

    pgid = proc.pid
    ps_root = None
    if psutil is not None:
        try:
            ps_root = psutil.Process(proc.pid)
        except Exception:
            ps_root = None
    seen: dict[int, Any] = {}
    peak_sum = 0
    peak_pss = 0
    pss_due = t0
    peak_hwm_kb = 0
    deadline = t0 + timeout
    term_at: float | None = None
    kill_sent = False
    status, rusage = 0, None
    try:
        while True:
            wpid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if wpid == proc.pid:
                break
            if ps_root is not None:
                with_pss = time.monotonic() >= pss_due  # PSS walks page tables: not on every poll
                if with_pss:
                    pss_due = time.monotonic() + PSS_SECONDS
                total, total_pss = 0, 0
                for p in _tree(ps_root):
                    try:
                        if with_pss:
                            full = p.memory_full_info()
                            total += full.rss
                            total_pss += full.pss
                        else:
                            total += p.memory_info().rss
                        seen.setdefault(p.pid, p)
                    except Exception:
                        continue
                    peak_hwm_kb = max(peak_hwm_kb, _vm_hwm_kb(p.pid) or 0)
                peak_sum = max(peak_sum, total)
                peak_pss = max(peak_pss, total_pss)
            now = time.monotonic()
            if term_at is None and now >= deadline:
                rec["timed_out"] = True
                term_at = now
                _say(f"[{name}] !!! timeout after {timeout}s: SIGTERM to the stage's processes",
                     quiet)
                _kill_tree(pgid, seen, signal.SIGTERM)
            elif term_at is not None and not kill_sent and now >= term_at + grace:
                kill_sent = True
                rec["killed"] = True
                _say(f"[{name}] !!! still running {grace:g}s after SIGTERM: SIGKILL", quiet)
                _kill_tree(pgid, seen, signal.SIGKILL)
            nxt = term_at + grace if term_at is not None else deadline
            step = POLL_SECONDS if now - t0 > 2.0 else POLL_SECONDS / 4  # finer at the start
            time.sleep(max(0.01, min(step, nxt - time.monotonic())) if not kill_sent else step)
    except BaseException:  # Ctrl-C etc.: never leave a stage running behind us
        _kill_tree(pgid, seen, signal.SIGKILL)
        try:
            os.waitpid(proc.pid, 0)
        except ChildProcessError:
            pass
        logf.close()
        raise
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    # The container dies with its main process: kill whatever the stage left behind.
    _kill_tree(pgid, {k: v for k, v in seen.items() if k != proc.pid}, signal.SIGKILL)
    th.join(timeout=10)
    if proc.stdout is not None:
        try:
            proc.stdout.close()
        except OSError:
            pass
    rc = proc.returncode
    rec["wall_seconds"] = round(wall, 3)
    rec["exit_code"] = rc
    if rc is not None and rc < 0:
        try:
            rec["signal"] = signal.Signals(-rc).name
        except ValueError:
            rec["signal"] = str(-rc)
    if isolated and rc == MOUNT_FAIL_RC and any("bind mount of the data failed" in t for t in tail):
        rec["error"] = "read-only bind mount of the data failed"
    rec["ok"] = (rc == 0) and not rec["timed_out"]
    rec["peak_rss_tree_sampled_mb"] = round(peak_sum / 2**20, 1) if ps_root is not None else None
    rec["peak_pss_tree_sampled_mb"] = round(peak_pss / 2**20, 1) if ps_root is not None and peak_pss else None
    max_proc_kb = peak_hwm_kb
    # ru_maxrss (KiB) of the reaped unshare/python includes its reaped descendants, but also the
    # harness's own high-water mark (inherited at the first exec): only trust it above that.
    if rusage is not None and rusage.ru_maxrss > (own_hwm_kb or 0) * 1.02 + 1024:
        max_proc_kb = max(max_proc_kb, rusage.ru_maxrss)
    rec["peak_rss_max_process_mb"] = round(max_proc_kb / 1024, 1) if max_proc_kb else None
    # The tree's peak is at least the largest single process' peak (which the 0.2 s poll can
    # miss for short spikes), so report the larger of the two.
    known = [v for v in (rec["peak_rss_tree_sampled_mb"], rec["peak_rss_max_process_mb"])
             if v is not None]
    rec["peak_rss_mb"] = max(known) if known else None
    rec["tail"] = list(tail)
    logf.write(f"# finished: exit_code={rc} timed_out={rec['timed_out']} "
               f"wall={rec['wall_seconds']}s peak_rss_mb={rec['peak_rss_mb']}\n")
    logf.close()
    state = "OK" if rec["ok"] else ("TIMEOUT" if rec["timed_out"] else f"FAILED (exit {rc})")
    _say(f"<== [{name}] {state} in {wall:.1f}s, peak RSS {rec['peak_rss_mb']} MB", quiet)
    return rec


# --------------------------------------------------------------------------- predictions
def read_predict_ids(data_root: str) -> list[int]:
    import pyarrow.parquet as pq

    files = sorted(glob.glob(os.path.join(data_root, "data", "predict", "*.parquet")))
    ids: list[int] = []
    for f in files:
        ids.extend(int(x) for x in pq.read_table(f, columns=["row_id"]).column("row_id")
                   .to_pylist())
    return ids


def _examples(xs: list[Any], k: int = 5) -> str:
    shown = ", ".join(repr(x) for x in xs[:k])
    return shown + (", ..." if len(xs) > k else "")


_INT_RX = re.compile(r"^[+-]?\d+$")


def validate_predictions(path: str, expected_ids: Iterable[int]) -> tuple[dict[str, Any],
                                                                           dict[int, int]]:
    """Check a predictions CSV against the expected row ids.

    Returns (report, predictions) where predictions maps row_id -> label for the parseable rows
    (the first occurrence of a duplicated id).
    """
    expected = list(expected_ids)
    exp_set = set(expected)
    rep: dict[str, Any] = {"path": path, "exists": os.path.isfile(path), "valid": False,
                           "problems": [], "warnings": [], "n_rows": 0,
                           "n_expected": len(exp_set), "n_unique_ids": 0}
    preds: dict[int, int] = {}
    problems: list[str] = rep["problems"]
    if not rep["exists"]:
        problems.append("file missing")
        return rep, preds
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.append(f"not UTF-8: {e}")
        return rep, preds
    if text.startswith("\ufeff"):
        problems.append("file starts with a UTF-8 byte-order mark (header would not match)")
        text = text[1:]
    if "\r" in text:
        rep["warnings"].append("CRLF/CR line endings")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        problems.append("file is empty (no header)")
        return rep, preds
    if lines[0] != PRED_HEADER:
        problems.append(f"header is {lines[0]!r}, expected {PRED_HEADER!r}")
    body = lines[1:]
    rep["n_rows"] = len(body)
    bad_format, bad_id, bad_label, unknown, dups = [], [], [], [], []
    counts: collections.Counter[int] = collections.Counter()
    for ln, line in enumerate(body, start=2):
        parts = next(csv.reader([line])) if line else []
        if len(parts) != 2:
            bad_format.append(f"line {ln}: {line!r}")
            continue
        sid, slab = parts
        if not _INT_RX.match(sid):
            bad_id.append(f"line {ln}: {sid!r}")
            continue
        rid = int(sid)
        counts[rid] += 1
        if counts[rid] == 2:
            dups.append(rid)
        if rid not in exp_set and counts[rid] == 1:
            unknown.append(rid)
        if slab not in ("0", "1"):
            bad_label.append(f"line {ln}: {slab!r}")
            continue
        if rid not in preds:
            preds[rid] = int(slab)
    missing = [i for i in expected if i not in counts]
    missing = sorted(set(missing))
    rep["n_unique_ids"] = len(counts)
    if bad_format:
        problems.append(f"{len(bad_format)} malformed line(s) (need exactly 2 fields): "
                        f"{_examples(bad_format)}")
    if bad_id:
        problems.append(f"{len(bad_id)} non-integer row_id(s): {_examples(bad_id)}")
    if bad_label:
        problems.append(f"{len(bad_label)} label(s) not in {{0,1}}: {_examples(bad_label)}")
    if dups:
        problems.append(f"{len(dups)} duplicated row_id(s): {_examples(sorted(dups))}")
    if unknown:
        problems.append(f"{len(unknown)} row_id(s) not in data/predict: "
                        f"{_examples(sorted(unknown))}")
    if missing:
        problems.append(f"{len(missing)} row_id(s) of data/predict missing: "
                        f"{_examples(missing)}")
    if not expected:
        problems.append("data/predict holds no row ids (nothing to check against)")
    rep["valid"] = not problems
    if preds:
        n1 = sum(preds.values())
        rep["predicted_ai_rate"] = round(n1 / len(preds), 6)
    return rep, preds


def _rate(num: int, den: int) -> float | None:
    return None if den == 0 else round(num / den, 6)


def score_predictions(preds: dict[int, int], labels_path: str) -> dict[str, Any]:
    import numpy as np
    import pyarrow.parquet as pq

    tbl = pq.read_table(labels_path).to_pydict()
    rid = tbl["row_id"]
    cls = tbl["source_class"]
    gen = tbl.get("generator") or [None] * len(rid)
    keep = [i for i, r in enumerate(rid) if int(r) in preds]
    n_labels = len(rid)
    y_cls = np.array([int(cls[i]) for i in keep], dtype=np.int64)
    y = (y_cls >= 1).astype(np.int64)
    p = np.array([preds[int(rid[i])] for i in keep], dtype=np.int64)
    g = [str(gen[i]) if gen[i] is not None else "unknown" for i in keep]
    tp = int(((y == 1) & (p == 1)).sum())
    fn = int(((y == 1) & (p == 0)).sum())
    fp = int(((y == 0) & (p == 1)).sum())
    tn = int(((y == 0) & (p == 0)).sum())
    n = len(keep)
    recall_ai, fpr = _rate(tp, tp + fn), _rate(fp, fp + tn)
    out: dict[str, Any] = {
        "n": n, "n_labels": n_labels, "n_unscored_missing_prediction": n_labels - n,
        "recall_ai": recall_ai, "fpr": fpr, "accuracy": _rate(tp + tn, n),
        "precision_ai": _rate(tp, tp + fp),
        "balanced_accuracy": (None if recall_ai is None or fpr is None
                              else round((recall_ai + 1 - fpr) / 2, 6)),
        "fpr_limit": FPR_LIMIT,
        "group_note": "per group: recall = fraction predicted correctly (for real images the "
                      "true-negative rate), predicted_ai_rate = fraction predicted 1",
        "fpr_within_limit": None if fpr is None else bool(fpr <= FPR_LIMIT),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp,
                             "layout": "rows=true (real, ai), cols=predicted (real, ai)",
                             "matrix": [[tn, fp], [fn, tp]]},
    }

    def group(keys: list[Any]) -> dict[str, Any]:
        res: dict[str, Any] = {}
        for k in sorted(set(keys), key=lambda v: (str(type(v)), v)):
            m = np.array([kk == k for kk in keys], dtype=bool)
            cls_here = collections.Counter(y_cls[m].tolist())
            truth_ai = int(y[m].max()) if m.any() else 0
            n_k = int(m.sum())
            n_ai_pred = int(p[m].sum())
            correct = int((p[m] == y[m]).sum())
            res[str(k)] = {"n": n_k, "label": "ai_generated" if truth_ai else "real",
                           "source_classes": {str(c): v for c, v in sorted(cls_here.items())},
                           "predicted_ai_rate": _rate(n_ai_pred, n_k),
                           "recall": _rate(correct, n_k)}
        return res

    out["per_source_class"] = group(y_cls.tolist())
    out["per_generator"] = group(g)
    return out


def read_model_metrics(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except Exception as e:  # malformed or half-written
        return {"path": path, "error": f"unreadable: {type(e).__name__}: {e}"[:300]}
    if not isinstance(d, dict):
        return {"path": path, "error": "metrics.json is not a JSON object"}
    out: dict[str, Any] = {"path": path, "splits": d.get("splits"), "threshold": d.get("threshold")}
    if not isinstance(out["splits"], dict):
        out["error"] = "no 'splits' object"
    return out


# --------------------------------------------------------------------------- the harness
def _resolve_stages(stages: Any) -> list[str]:
    if stages is None or stages == "all":
        return list(STAGE_NAMES)
    if isinstance(stages, str):
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    names = list(stages)
    if any(s == "all" for s in names):
        return list(STAGE_NAMES)
    bad = [s for s in names if s not in STAGE_NAMES]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; choose from {STAGE_NAMES}")
    return [s for s in STAGE_NAMES if s in names]  # always in the official order


def _stage_env() -> tuple[dict[str, str], list[str]]:
    env = dict(os.environ)
    removed = [k for k in THREAD_ENV_VARS if k in env]
    for k in removed:
        env.pop(k)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env, removed


def _is_within(child: str, parent: str) -> bool:
    child, parent = os.path.realpath(child), os.path.realpath(parent)
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def grade(data_root: str, solution_dir: str, workspace: str | None = None,
          timeout_scale: float = 1.0, stages: Any = None, out: str | None = None, *,
          grace: float = 5.0, isolation: str = "auto", keep_workspace: bool = False,
          artifacts_out: str | None = None, reuse_artifacts: bool = False,
          loopback_up: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Run the selected stages of ``solution_dir`` on ``data_root`` and return the scorecard.

    ``isolation``: "auto" (unshare if permitted, else fall back) or "none" (force no isolation).
    Without ``keep_workspace`` the copied ``<ws>/solution`` is deleted at the end (the scorecard,
    logs and a copy of the predictions stay in the scorecard's folder; an auto-created workspace
    is deleted entirely when the scorecard lives elsewhere).
    """
    t_start = time.monotonic()
    data_root = os.path.realpath(data_root)
    solution_dir = os.path.realpath(solution_dir)
    data_src = os.path.join(data_root, "data")
    if not os.path.isdir(data_src):
        raise FileNotFoundError(f"{data_src} does not exist (expected ROOT/data/<split>/)")
    if not os.path.isdir(solution_dir):
        raise FileNotFoundError(f"solution folder {solution_dir} does not exist")
    if timeout_scale <= 0:
        raise ValueError("timeout_scale must be > 0")
    selected = _resolve_stages(stages)
    auto_ws = workspace is None
    ws = os.path.realpath(tempfile.mkdtemp(prefix="grade_ws_") if auto_ws else workspace)
    os.makedirs(ws, exist_ok=True)
    sol = os.path.join(ws, "solution")
    if _is_within(sol, solution_dir) or _is_within(solution_dir, sol):
        raise ValueError(f"workspace {ws} overlaps the solution folder {solution_dir}")
    out_path = os.path.realpath(out) if out else os.path.join(ws, "scorecard.json")
    out_dir = os.path.dirname(out_path)
    if _is_within(out_dir, sol):
        raise ValueError("--out must not be inside <workspace>/solution")
    logs_dir = os.path.join(out_dir, "logs")
    warnings: list[str] = []

    # ---- fresh copy of the build context
    kept_artifacts = None
    if os.path.lexists(sol):
        if reuse_artifacts and os.path.isdir(os.path.join(sol, "artifacts")):
            kept_artifacts = os.path.join(ws, f".artifacts_keep_{os.getpid()}")
            os.replace(os.path.join(sol, "artifacts"), kept_artifacts)
        shutil.rmtree(sol)
    copy_info = copy_build_context(solution_dir, sol)
    if kept_artifacts:
        if os.path.exists(os.path.join(sol, "artifacts")):
            shutil.rmtree(os.path.join(sol, "artifacts"))
        os.replace(kept_artifacts, os.path.join(sol, "artifacts"))
        warnings.append("reused artifacts/ from the previous run in this workspace")
    elif reuse_artifacts:
        warnings.append("--reuse-artifacts: no previous artifacts/ in the workspace")
    data_dst = os.path.join(sol, "data")
    os.makedirs(data_dst, exist_ok=True)  # empty mount point

    # ---- isolation
    isolated = False
    if isolation == "auto":
        isolated, why = probe_isolation(data_src, data_dst)
        if not isolated:
            warnings.append(f"no isolation: {why}; data/ is a writable symlink and the network "
                            f"is reachable")
    elif isolation == "none":
        warnings.append("no isolation (requested): data/ is a writable symlink and the network "
                        "is reachable")
    else:
        raise ValueError("isolation must be 'auto' or 'none'")
    if not isolated:
        os.rmdir(data_dst)
        os.symlink(data_src, data_dst)
    iso_name = ISOLATION_FULL if isolated else ISOLATION_NONE
    for w in warnings:
        _say(f"WARNING: {w}", quiet)

    # ---- CPUs
    ncpu = os.cpu_count() or 1
    affinity = _cpu_affinity()
    threads8 = min(8, ncpu)
    pin = affinity[:8] if len(affinity) > 8 else None
    if pin and not shutil.which("taskset"):
        warnings.append("more than 8 cores but taskset is missing: stage not pinned")
        pin = None
    env, env_removed = _stage_env()

    git = _git_info(solution_dir)
    card: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "date": _now_iso(),
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "nproc": ncpu,
        "cpus_available": len(affinity),
        "threads_for_cpus8": threads8,
        "cpu_pinning": f"taskset -c {_cpulist(pin)}" if pin else None,
        "isolation": iso_name,
        "network": ("none (new net namespace, loopback " + ("up" if loopback_up else "down") + ")"
                    if isolated else "host"),
        "data_mount": "read-only bind mount" if isolated else "writable symlink",
        "timeout_scale": timeout_scale,
        "kill_policy": f"SIGTERM to the process group at the timeout, SIGKILL {grace:g}s later; "
                       f"leftover processes SIGKILLed when the stage's main process ends",
        "grace_seconds": grace,
        "memory_measure": f"peak_rss_tree_sampled_mb: psutil poll every {POLL_SECONDS}s, sum "
                          f"of RSS over the stage process tree; peak_rss_max_process_mb: largest "
                          f"single-process peak from the kernel high-water marks (VmHWM of every "
                          f"polled process, and wait4 ru_maxrss when above the harness's own "
                          f"peak); peak_rss_mb: the larger of the two; peak_pss_tree_sampled_mb: "
                          f"sum of PSS over the tree (shared pages divided among their sharers), "
                          f"read at most every {PSS_SECONDS}s",
        "data_root": data_root,
        "solution_dir": solution_dir,
        "workspace": ws,
        "git": git,
        "git_commit": git.get("commit"),
        "python": sys.executable,
        "python_version": platform.python_version(),
        "env_set": {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"},
        "env_removed": env_removed,
        "build_context": copy_info,
        "stages_selected": selected,
        "warnings": warnings,
        "stages": [],
        "total_wall_seconds": None,
        "tasks": {},
        "all_valid": False,
        "scorecard_path": out_path,
    }

    # ---- the stages, in order; a failure does not stop the later ones
    official = {n: (s, t) for n, s, t in STAGES}
    try:
        for name in selected:
            script, t_off = official[name]
            rec = run_stage(name, script, t_off, sol_dir=sol, data_src=data_src,
                            isolated=isolated, timeout_scale=timeout_scale, grace=grace, env=env,
                            pin_cpus=pin, log_path=os.path.join(logs_dir, f"{name}.log"),
                            loopback_up=loopback_up, quiet=quiet)
            card["stages"].append(rec)
    except BaseException:  # interrupted: the running stage is already killed
        if not keep_workspace:
            shutil.rmtree(sol, ignore_errors=True)
            if auto_ws and not _is_within(out_dir, ws):
                shutil.rmtree(ws, ignore_errors=True)
        raise

    # ---- predictions
    try:
        expected = read_predict_ids(data_root)
    except Exception as e:
        expected = []
        warnings.append(f"could not read data/predict row ids: {e}")
    labels_path = os.path.join(data_root, "labels", "predict_labels.parquet")
    pred_dir = os.path.join(out_dir, "predictions")
    for task, (rel, _stage) in TASKS.items():
        path = os.path.join(sol, rel)
        rep, preds = validate_predictions(path, expected)
        entry: dict[str, Any] = {"predictions": rep, "valid": rep["valid"],
                                 "problems": rep["problems"], "scores": None,
                                 "model_metrics": read_model_metrics(
                                     os.path.join(sol, "artifacts", task, "metrics.json"))}
        if rep["exists"]:
            os.makedirs(pred_dir, exist_ok=True)
            copy_to = os.path.join(pred_dir, f"{task}_predictions.csv")
            shutil.copyfile(path, copy_to)
            entry["predictions_copy"] = copy_to
        if preds and os.path.isfile(labels_path):
            try:
                entry["scores"] = score_predictions(preds, labels_path)
            except Exception as e:
                entry["scores_error"] = f"{type(e).__name__}: {e}"
        card["tasks"][task] = entry
    card["all_valid"] = all(card["tasks"][t]["valid"] for t in TASKS)
    card["labels_path"] = labels_path if os.path.isfile(labels_path) else None

    if artifacts_out:
        src_art = os.path.join(sol, "artifacts")
        dst_art = os.path.realpath(artifacts_out)
        if os.path.isdir(src_art):
            if os.path.exists(dst_art):
                shutil.rmtree(dst_art)
            shutil.copytree(src_art, dst_art, symlinks=True)
            card["artifacts_copy"] = dst_art
        else:
            warnings.append("no artifacts/ folder to copy")

    card["total_wall_seconds"] = round(time.monotonic() - t_start, 3)
    card["workspace_kept"] = bool(keep_workspace)
    card["artifacts_path"] = os.path.join(sol, "artifacts") if keep_workspace else None
    _atomic_write_text(out_path, json.dumps(card, indent=2, sort_keys=False, default=str) + "\n")

    if not keep_workspace:
        shutil.rmtree(sol, ignore_errors=True)
        if auto_ws and not _is_within(out_dir, ws):
            shutil.rmtree(ws, ignore_errors=True)
    return card


# --------------------------------------------------------------------------- reporting
def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def summary_text(card: dict[str, Any]) -> str:
    lines = [
        "",
        f"Grading summary  ({card['date']}, {card['hostname']}, {card['cpu_model']}, "
        f"nproc={card['nproc']}, threads_for_cpus8={card['threads_for_cpus8']}, "
        f"isolation={card['isolation']}, timeout_scale={card['timeout_scale']})",
        f"{'stage':<18} {'timeout':>7} {'wall s':>8} {'exit':>5} {'timed out':>9} "
        f"{'peak MB':>8} {'tree MB':>8} {'max proc MB':>11}  status",
    ]
    for s in card["stages"]:
        status = "ok" if s["ok"] else ("TIMEOUT" if s["timed_out"] else "FAILED")
        if s.get("error"):
            status += f" ({s['error']})"
        lines.append(f"{s['name']:<18} {s['timeout_seconds']:>7} {_fmt(s['wall_seconds'], 1):>8} "
                     f"{_fmt(s['exit_code']):>5} {('yes' if s['timed_out'] else 'no'):>9} "
                     f"{_fmt(s['peak_rss_mb'], 0):>8} {_fmt(s['peak_rss_tree_sampled_mb'], 0):>8} "
                     f"{_fmt(s['peak_rss_max_process_mb'], 0):>11}"
                     f"  {status}")
    lines.append(f"total wall time: {_fmt(card['total_wall_seconds'], 1)} s")
    for task, e in card["tasks"].items():
        p = e["predictions"]
        head = f"{task}: predictions {'VALID' if e['valid'] else 'INVALID'} " \
               f"({p['n_rows']} rows, {p['n_expected']} expected)"
        lines.append(head)
        for prob in e["problems"][:8]:
            lines.append(f"    - {prob}")
        sc = e.get("scores")
        if sc:
            lines.append(f"    holdout: recall_ai={_fmt(sc['recall_ai'])} fpr={_fmt(sc['fpr'])} "
                         f"({'ok' if sc['fpr_within_limit'] else 'ABOVE'} <= {FPR_LIMIT}) "
                         f"accuracy={_fmt(sc['accuracy'])} n={sc['n']}")
            per = ", ".join(f"{k}:{_fmt(v['recall'], 2)}" for k, v in
                            sc["per_source_class"].items())
            lines.append(f"    recall per source_class: {per}")
        mm = e.get("model_metrics")
        if mm and isinstance(mm.get("splits"), dict):
            for split, m in mm["splits"].items():
                if isinstance(m, dict):
                    lines.append(f"    model's own {split}: recall_ai={_fmt(m.get('recall_ai'))} "
                                 f"fpr={_fmt(m.get('fpr'))} roc_auc={_fmt(m.get('roc_auc'))}")
            lines.append(f"    threshold: {_fmt(mm.get('threshold'), 4)}")
        elif mm and mm.get("error"):
            lines.append(f"    model metrics: {mm['error']}")
    for w in card["warnings"]:
        lines.append(f"WARNING: {w}")
    lines.append(f"scorecard:   {card['scorecard_path']}")
    for task, e in card["tasks"].items():
        where = e.get("predictions_copy") or f"(missing: {e['predictions']['path']})"
        lines.append(f"{task} predictions: {where}")
    if card.get("artifacts_path"):
        lines.append(f"artifacts:   {card['artifacts_path']}")
    if card.get("artifacts_copy"):
        lines.append(f"artifacts copy: {card['artifacts_copy']}")
    lines.append(f"logs:        {os.path.join(os.path.dirname(card['scorecard_path']), 'logs')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset root with data/<split>/*.parquet "
                    "(and optionally labels/predict_labels.parquet)")
    ap.add_argument("--solution", default="solution", help="solution folder (build context)")
    ap.add_argument("--workspace", default=None, help="workspace dir (default: a new temp dir)")
    ap.add_argument("--timeout-scale", type=float, default=1.0,
                    help="multiply the official timeouts (T = max(1, round(official*scale)))")
    ap.add_argument("--stages", default="all", help="all or a comma list of " +
                    ",".join(STAGE_NAMES))
    ap.add_argument("--out", default=None,
                    help="scorecard path (default <workspace>/scorecard.json)")
    ap.add_argument("--keep-workspace", action="store_true",
                    help="keep <workspace>/solution (with its artifacts) after grading")
    ap.add_argument("--artifacts-out", default=None, help="copy <ws>/solution/artifacts here")
    ap.add_argument("--grace", type=float, default=5.0,
                    help="seconds between SIGTERM (at the timeout) and SIGKILL (default 5)")
    ap.add_argument("--no-isolation", action="store_true",
                    help="do not use unshare (data writable, network reachable)")
    ap.add_argument("--loopback-up", action="store_true",
                    help="bring the loopback up inside the network namespace (docker --network "
                         "none has lo up); default: loopback down")
    ap.add_argument("--reuse-artifacts", action="store_true",
                    help="keep artifacts/ of a previous --keep-workspace run in the same "
                         "--workspace (e.g. to rerun only predict)")
    ap.add_argument("--quiet", action="store_true", help="do not stream the stage output")
    a = ap.parse_args(argv)
    try:
        _resolve_stages(a.stages)
    except ValueError as e:
        ap.error(str(e))
    if a.timeout_scale <= 0:
        ap.error("--timeout-scale must be > 0")

    def _on_term(signum: int, _frame: Any) -> None:  # clean up the running stage, like Ctrl-C
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _on_term)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background
        signal.signal(signal.SIGINT, signal.default_int_handler)

    sol = a.solution
    if not os.path.isdir(sol):
        alt = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), sol)
        if os.path.isdir(alt):
            sol = alt
    try:
        card = grade(a.data, sol, workspace=a.workspace, timeout_scale=a.timeout_scale,
                     stages=a.stages, out=a.out, grace=a.grace,
                     isolation="none" if a.no_isolation else "auto",
                     keep_workspace=a.keep_workspace, artifacts_out=a.artifacts_out,
                     reuse_artifacts=a.reuse_artifacts, loopback_up=a.loopback_up,
                     quiet=a.quiet)
    except KeyboardInterrupt as e:
        print(f"grade.py: interrupted ({e or 'Ctrl-C'}); the running stage was killed, "
              f"no scorecard written", file=sys.stderr, flush=True)
        return 130
    print(summary_text(card), flush=True)
    return 0 if card["all_valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
