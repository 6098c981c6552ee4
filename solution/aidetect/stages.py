"""The six stages as functions; the scripts in ``solution/`` only call ``run_stage``."""
from __future__ import annotations

import argparse
import logging
import sys
import time

from .budget import Deadline, configure_threads
from .errors import PipelineError
from .paths import artifacts_dir, data_dir, task_dir

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
    from .detector import TASK02_CONFIG, train_task

    train_task("task02", deadline, TASK02_CONFIG)


def predict(deadline: Deadline) -> None:
    from .detector import predict_task

    predict_task("task02", deadline)


def train_augmented(deadline: Deadline) -> None:
    from .detector import TASK03_CONFIG, train_task

    train_task("task03", deadline, TASK03_CONFIG, init_from=task_dir("task02") / "model_best.pt")


def predict_augmented(deadline: Deadline) -> None:
    from .detector import predict_task

    predict_task("task03", deadline)


def attribute(deadline: Deadline) -> None:
    """Not graded: which generator made each predict image, or an unknown one (attribute.py)."""
    from .attribution import run_attribution

    run_attribution(deadline)


STAGES = {f.__name__: f for f in (clean, prepare, train, predict, train_augmented, predict_augmented, attribute)}


def run_stage(name: str, argv: list[str] | None = None) -> int:
    """Parse ``--timeout_seconds``, run stage ``name`` under its deadline, return the exit status."""
    parser = argparse.ArgumentParser(prog=f"{name}.py", description=f"Stage '{name}' of the AI-image detector.")
    parser.add_argument("--timeout_seconds", type=float, required=True,
                        help="the stage is killed after this many seconds; it saves its work and exits before")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    deadline = Deadline(args.timeout_seconds)
    threads = configure_threads()
    log.info("stage %s: data %s, artifacts %s, %d threads, timeout %.0fs", name, data_dir(), artifacts_dir(),
             threads, args.timeout_seconds)
    started = time.monotonic()
    try:
        STAGES[name](deadline)
    except PipelineError as exc:
        log.error("stage %s failed: %s", name, exc)
        return 2
    log.info("stage %s done in %.1fs (%s)", name, time.monotonic() - started, deadline.describe())
    return 0
