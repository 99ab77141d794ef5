"""Provenance helpers: file hashes, package version, git SHA, compatibility checks."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from stego_probe import __version__


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks (works for multi-GB weight files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def git_sha(path: str | os.PathLike | None = None) -> str | None:
    """Commit SHA of the git checkout containing ``path`` (default: this package), or None."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_info() -> dict:
    """Version of stego_probe (and git SHA when run from a checkout) for provenance records."""
    return {"stego_probe_version": __version__, "git_sha": git_sha()}


def differing_keys(expected: Mapping, actual: Mapping, keys: Iterable[str]) -> list[str]:
    """The keys of ``keys`` (in order) whose values differ between the two mappings (a missing
    key counts as None).

    Examples:
        >>> differing_keys({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}, ["a", "b", "c"])
        ['b', 'c']
    """
    return [k for k in keys if expected.get(k) != actual.get(k)]


def check_compatible(
    expected: Mapping, actual: Mapping, keys: Iterable[str], what: str = "inputs"
) -> None:
    """Raise ``ValueError`` listing every key in ``keys`` whose values differ.

    Args:
        expected: provenance of the existing artefact (store, projection, results).
        actual: provenance of the new input.
        keys: the keys that must agree.
        what: a name for the error message (e.g. the store path).
    """
    diffs = [
        f"{k}: {expected.get(k)!r} != {actual.get(k)!r}"
        for k in differing_keys(expected, actual, keys)
    ]
    if diffs:
        raise ValueError(f"refusing to mix incompatible {what}: " + "; ".join(diffs))
