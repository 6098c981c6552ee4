"""The course's reference timing script (docs/contract.md, "The reference runtime").

A synthetic in-memory training benchmark: a six-conv CNN (k = 32) trained with AdamW on one fixed
random batch of 128 images at 224x224.  After ``--warmup`` (default 10) warm-up steps, ``--steps``
(default 35) training steps are timed with ``time.perf_counter`` and the result is printed as
``elapsed_seconds=...``.  The course rule: "Your training may take at most 5x this on your machine."

Run it with the default arguments to obtain the official reference number; ``--steps``/``--warmup``
only exist for quick smoke checks (the per-step time is printed too).  ``--json PATH`` also writes
the measurement as JSON (elapsed_seconds, threads, steps, warmup, cpu, date, ...).

    python benchmarks/reference_runtime.py                       # the reference (~35 steps)
    python benchmarks/reference_runtime.py --json benchmarks/results/reference_runtime.json
    python benchmarks/reference_runtime.py --steps 2 --warmup 1  # smoke check
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn


def build_model(k: int = 32) -> nn.Sequential:
    """Six 3x3 convolutions (padding 1, each + ReLU), two max-pools, GAP, linear 4k -> 2."""
    return nn.Sequential(
        nn.Conv2d(3, k, 3, padding=1), nn.ReLU(),
        nn.Conv2d(k, k, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(k, 2 * k, 3, padding=1), nn.ReLU(),
        nn.Conv2d(2 * k, 2 * k, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * k, 4 * k, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4 * k, 4 * k, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * k, 2),
    )


def cpu_name() -> str:
    """Best-effort CPU model name (Linux /proc/cpuinfo, else platform)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=35, help="timed training steps (default 35)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up steps (default 10)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the measurement as JSON to PATH")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")

    torch.manual_seed(0)
    threads = min(8, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)

    k = 32
    model = build_model(k)
    x = torch.randn(128, 3, 224, 224)
    y = torch.randint(0, 2, (128,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step() -> None:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()

    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - start

    print(f"elapsed_seconds={elapsed:.3f}")
    print(f"seconds_per_step={elapsed / args.steps:.3f} (steps={args.steps}, warmup={args.warmup}, "
          f"threads={threads})")

    if args.json is not None:
        record = {
            "elapsed_seconds": elapsed,
            "threads": threads,
            "steps": args.steps,
            "warmup": args.warmup,
            "seconds_per_step": elapsed / args.steps,
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, args.json)
    return elapsed


if __name__ == "__main__":
    main()
