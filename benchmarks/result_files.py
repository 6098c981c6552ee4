"""What a committed benchmark result says about itself, and how it is written: JSON, a markdown table beside it."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path


def header() -> dict:
    """Date, the command as run, and the machine."""
    from reference_runtime import cpu_name

    return {"date": time.strftime("%Y-%m-%d"), "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"cpu": cpu_name(), "nproc": os.cpu_count(), "host": platform.node()}}


def write(out: str | Path, result: dict, markdown: str) -> None:
    """``out`` (JSON) and the same name with ``.md``; the table is printed too."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
