"""Where a store lives: local paths and fsspec URLs (``s3://``, ``memory://`` ...)."""

from __future__ import annotations

import os


def _is_url(path: str) -> bool:
    return "://" in path


def normalize_path(path: str | os.PathLike) -> str:
    """A store location as text: a local path made absolute (``~`` expanded), a URL without
    its trailing ``/``; a ``ValueError`` for an empty path."""
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise ValueError(f"store path: expected a non-empty path or URL, got {path!r}")
    if _is_url(path):
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def url_to_fs(path: str):
    """(fsspec filesystem, path inside it) for a local path or URL."""
    import fsspec

    return fsspec.core.url_to_fs(path)
