"""The six stages as functions; the scripts in ``solution/`` only call ``run_stage``."""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from .budget import Deadline, Terminated, configure_threads
from .errors import PipelineError
from .paths import artifacts_dir, data_dir, task_dir
from .settings import DETECTION

log = logging.getLogger("aidetect")


def clean(deadline: Deadline) -> None:
    from .cleaning import build_recipe, summarise_recipe, write_recipe
    from .dataio import write_json
    from .explore import run_exploration
    from .paths import clean_dir

    recipe = build_recipe(deadline)
    write_recipe(recipe)  # prepare.py needs this first; exploration may be cut short
    summary = summarise_recipe(recipe)
    write_json(clean_dir() / "cleaning.json", summary)
    log.info("cleaning recipe: %d of %d images kept; dropped: %s", summary["n_kept"], summary["n_images"],
             summary["dropped_by_reason"] or "none")
    splits = sorted(set(recipe["split"]))
    run_exploration(splits, clean_dir(), deadline)


def prepare(deadline: Deadline) -> None:
    from .cleaning import load_or_build_recipe, prepare_all
    from .settings import run_seed

    prepare_all(load_or_build_recipe(deadline), deadline, seed=run_seed())


def train(deadline: Deadline) -> None:
    from .detector import TASK02_CONFIG, require_trainable, train_task

    require_trainable("task02")
    train_task("task02", deadline, TASK02_CONFIG)


def predict(deadline: Deadline) -> None:
    from .detector import predict_task

    predict_task("task02", deadline)


def train_augmented(deadline: Deadline) -> None:
    from .detector import TASK03_CONFIG, require_trainable, train_task
    from .modelfiles import NETWORK_FILE

    require_trainable("task03")
    train_task("task03", deadline, TASK03_CONFIG, init_from=task_dir("task02") / NETWORK_FILE)


def predict_augmented(deadline: Deadline) -> None:
    from .detector import predict_task

    predict_task("task03", deadline)


def attribute(deadline: Deadline) -> None:
    """Not graded: which generator made each predict image, or an unknown one (attribute.py)."""
    from .attribution import run_attribution

    run_attribution(deadline)


STAGES = {f.__name__: f for f in (clean, prepare, train, predict, train_augmented, predict_augmented, attribute)}
WITHOUT_TORCH = {"clean", "prepare"}  # stages that decode and compute features only: no network


def run_stage(name: str, argv: list[str] | None = None) -> int:
    """Parse ``--timeout_seconds``, run stage ``name`` under its deadline, return the exit status."""
    parser = argparse.ArgumentParser(prog=f"{name}.py", description=f"Stage '{name}' of the AI-image detector.")
    parser.add_argument("--timeout_seconds", type=float, required=True,
                        help="the stage is killed after this many seconds; it saves its work and exits before")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("AMLS_LOG_LEVEL", "INFO").upper(), stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    deadline = Deadline(args.timeout_seconds)
    keep_caches_under_artifacts()
    threads = configure_threads(with_torch=name not in WITHOUT_TORCH)
    log.info("stage %s: data %s, artifacts %s, %d threads, timeout %.0fs", name, data_dir(), artifacts_dir(),
             threads, args.timeout_seconds)
    log.info("settings: %s", DETECTION)
    started = time.monotonic()
    try:
        STAGES[name](deadline)
    except PipelineError as exc:
        log.debug("traceback of the failure", exc_info=True)
        log.error("stage %s failed: %s", name, _one_line(str(exc)))
        return 2
    except Terminated as exc:
        log.warning("stage %s stopped: %s", name, exc)
        return 128 + 15  # the shell's status for an end by SIGTERM
    except KeyboardInterrupt:
        log.error("stage %s interrupted", name)
        return 130
    except Exception as exc:  # anything else: one line for the user, the traceback only at DEBUG level
        log.debug("traceback of the failure", exc_info=True)
        log.error("stage %s failed: %s", name, describe_failure(exc))
        return 1
    log.info("stage %s done in %.1fs (%s)", name, time.monotonic() - started, deadline.describe())
    return 0


def keep_caches_under_artifacts() -> None:
    """Point the caches of the libraries at ``artifacts/``: matplotlib writes its font cache under HOME and
    torch makes its inductor cache folder in TMPDIR (creating an optimizer is enough), and a stage writes only
    under ``artifacts/``. A folder the user chose through the same variable is kept."""
    caches = artifacts_dir() / ".cache"
    os.environ.setdefault("MPLCONFIGDIR", str(caches / "matplotlib"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(caches / "torchinductor"))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def describe_failure(exc: BaseException) -> str:
    """One line: what failed (the error, and where in the package), and what to do about it."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "aidetect" in Path(f.filename).parts]
    where = f" (in {Path(frames[-1].filename).name}:{frames[-1].lineno}, {frames[-1].name})" if frames else ""
    if isinstance(exc, MemoryError):
        advice = "out of memory: give the container more memory"
    elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        advice = "the disk is full: free space where artifacts/ lives"
    elif isinstance(exc, PermissionError):
        advice = "permission denied: artifacts/ must be writable and data/ readable"
    else:
        advice = ("unexpected error: check the data and the artifacts of the earlier stages, then run the stage "
                  "again; AMLS_LOG_LEVEL=DEBUG logs the traceback")
    return _one_line(f"{type(exc).__name__}: {exc}{where}; {advice}")
