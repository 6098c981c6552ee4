"""What a committed benchmark result says about itself, and how it is written: JSON, a markdown table beside it.

A committed result names its data by name and content hash (``data_identity``), never by a path on the
machine that ran it: ``portable`` (``aidetect.provenance``) rewrites such paths before anything is written.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from aidetect.provenance import data_identity, describe_data, portable  # noqa: F401  (re-exported for the benchmarks)

REPO = Path(__file__).resolve().parents[1]


def header() -> dict:
    """Date, the command as run, and the machine."""
    from reference_runtime import cpu_name

    return {"date": time.strftime("%Y-%m-%d"), "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"cpu": cpu_name(), "nproc": os.cpu_count(), "host": platform.node()}}


def write(out: str | Path, result: dict, markdown: str, data_roots=()) -> None:
    """``out`` (JSON) and the same name with ``.md``, both through ``portable``; the table is printed too."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    markdown = portable(markdown, data_roots)
    out.write_text(json.dumps(portable(result, data_roots), indent=2))
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
