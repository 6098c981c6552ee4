"""How results name their data and the paths of the machine that made them.

A committed result names its data by name and content hash (``data_identity``), never by a path on the
machine that ran it: ``portable`` rewrites such paths before anything is written.
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the repository (this file is solution/aidetect/provenance.py)


def data_identity(data_root: str | Path) -> dict:
    """The data by name and content hash of its parquet files (never by path).

    ``data_root`` holds ``data/<split>/*.parquet``; its ``data/`` folder itself is accepted too and
    gives the same identity. The hash covers every parquet file's path below the root and bytes.
    """
    root = Path(data_root).resolve()
    if root.name == "data" and not (root / "data").is_dir():
        root = root.parent
    digest = hashlib.sha1()
    for path in sorted((root / "data").rglob("*.parquet")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(hashlib.sha1(path.read_bytes()).digest())
    return {"name": root.name, "sha1": digest.hexdigest()[:16]}


def describe_data(identity: dict) -> str:
    """How a result names its data in prose: ``proxy (content hash 51e38a9d17331369)``."""
    return f"{identity['name']} (content hash {identity['sha1']})"


def _replacements(data_roots) -> list[tuple[str, str]]:
    """Machine paths and what a committed result says instead, the longest first."""
    pairs = []
    for given in data_roots:
        given = Path(given)
        root = given.parent if given.name == "data" and not (given / "data").is_dir() else given
        name = root.resolve().name
        pairs.append((str(root.resolve()), name))
        if "/" in str(root):  # a bare name is the name already
            pairs.append((str(root), name))
    pairs += [(str(REPO) + "/", ""), (str(REPO), "."), (tempfile.gettempdir().rstrip("/") + "/", "$TMPDIR/")]
    pairs = [(old, new) for old, new in pairs if old not in ("", ".", "..")]
    return sorted(set(pairs), key=lambda pair: -len(pair[0]))


def portable(value, data_roots=()):
    """``value`` (JSON-like, or a string) with machine paths rewritten: each data root by its name, the
    repository's absolute path by a relative one, the temporary directory by ``$TMPDIR``."""
    pairs = _replacements(data_roots)

    def rewrite(item):
        if isinstance(item, str):
            for old, new in pairs:
                item = item.replace(old, new)
            return item
        if isinstance(item, dict):
            return {rewrite(k) if isinstance(k, str) else k: rewrite(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [rewrite(v) for v in item]
        return item

    return rewrite(value)
