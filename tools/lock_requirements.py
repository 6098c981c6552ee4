"""Write solution/constraints.txt: every package that solution/requirements.txt pulls in, at the version installed.

    .venv/bin/python tools/lock_requirements.py [--requirements solution/requirements.txt] [--out solution/constraints.txt]

The lock is read from the running interpreter's environment (the dev virtualenv, which
``make setup`` installs with this same file as constraints): the requirements, then the
requirements of each, recursively, as this Linux / Python 3.11 platform evaluates their markers.
torch and torchvision are not in requirements.txt (the Dockerfile installs them from PyTorch's
CPU-only index) and so not in the lock. The Dockerfile installs ``-r requirements.txt -c
constraints.txt``; requirements-dev.txt applies the same constraints to the dev virtualenv.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import re
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
HEADER = """\
# The runtime dependencies of the six stages with every transitive package pinned, as installed in the dev
# virtualenv (Linux, Python 3.11). Written by tools/lock_requirements.py; do not edit by hand.
# Used as constraints by solution/Dockerfile and requirements-dev.txt.
"""


def normalise(name: str) -> str:
    """PEP 503 normalisation of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def top_level_requirements(path: Path) -> list[str]:
    names = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(Requirement(line).name)
    return names


def transitive_pins(names: list[str]) -> dict[str, str]:
    """{distribution name: installed version} of ``names`` and everything they require here."""
    environment = {**default_environment(), "extra": ""}
    pins: dict[str, str] = {}
    pending = list(names)
    while pending:
        name = pending.pop()
        if normalise(name) in {normalise(n) for n in pins}:
            continue
        dist = importlib.metadata.distribution(name)
        pins[dist.metadata["Name"]] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                pending.append(requirement.name)
    return pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requirements", type=Path, default=REPO / "solution" / "requirements.txt")
    parser.add_argument("--out", type=Path, default=REPO / "solution" / "constraints.txt")
    args = parser.parse_args(argv)
    pins = transitive_pins(top_level_requirements(args.requirements))
    lines = [f"{name}=={version}" for name, version in sorted(pins.items(), key=lambda kv: normalise(kv[0]))]
    args.out.write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({len(lines)} packages)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
