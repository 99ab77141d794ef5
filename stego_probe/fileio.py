"""File mechanics with one home: atomic writes and the JSON-safe conversion.

* :func:`atomic_write` -- write a file so that readers see the old content or the new one, never a
  half-written file (temporary file in the same folder, ``fsync``, ``os.replace``).
* :func:`to_jsonable` -- numpy scalars / arrays, tensors, paths and tuples to plain JSON types,
  so that a fresh provenance dict compares equal to one read back from JSON.
* :func:`canonical_json` -- the sorted-keys JSON text of :func:`to_jsonable` (for equality checks
  that must tell ``1`` from ``1.0`` from ``True``, and for hashing).

Examples:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "meta.json"
    >>> _ = atomic_write(path, canonical_json({"dims": (3, np.int64(6))}))
    >>> path.read_text()
    '{"dims": [3, 6]}'
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["TMP_MARKER", "atomic_write", "canonical_json", "is_temp_file", "to_jsonable"]

#: Part of every temporary file name :func:`atomic_write` uses (``.<name>.<random>.tmp<ext>``).
TMP_MARKER = ".tmp"


def _temp_name(path: Path, suffix: str | None) -> Path:
    ext = path.suffix if suffix is None else suffix
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_MARKER}{ext}")


def is_temp_file(path: str | os.PathLike, target: str | None = None) -> bool:
    """Whether ``path`` is a temporary file left by an interrupted :func:`atomic_write` (of the
    file named ``target`` if given), e.g. to clean a folder before resuming."""
    name = Path(path).name
    prefix = "." if target is None else f".{target}."
    return name.startswith(prefix) and TMP_MARKER in name[len(prefix) :]


def atomic_write(
    path: str | os.PathLike,
    content: bytes | str | Callable[[Path], Any],
    *,
    encoding: str = "utf-8",
    suffix: str | None = None,
    fsync: bool = True,
) -> Path:
    """Write ``path`` atomically: readers see the old file or the complete new one.

    The content goes to a temporary file in the same folder (so the rename never crosses file
    systems), is flushed to disk (``fsync``), and replaces ``path`` with ``os.replace``. If
    writing fails (the writer raises, the disk is full, the process is interrupted before the
    rename), ``path`` keeps its old content and the temporary file is removed (except after a
    hard kill; :func:`is_temp_file` recognises those leftovers).

    Args:
        path: the destination; its parent folders are created.
        content: ``bytes`` (written as is), ``str`` (written as text in ``encoding``), or a
            writer ``callback(tmp_path)`` that writes the file at ``tmp_path`` itself (e.g.
            ``torch.save(obj, tmp)``, ``fig.savefig(tmp)``, ``np.savez(tmp, ...)``, a download);
            an exception from it aborts the write and is re-raised.
        encoding: text encoding for ``str`` content.
        suffix: the temporary file's extension (default: ``path``'s, so writers that choose the
            format from the extension, or append one as ``np.savez`` does, write the right file).
        fsync: flush the file (and, where supported, its folder) to disk before returning.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: ``content`` is not bytes, str or callable.
    """
    path = Path(path)
    if not isinstance(content, bytes | bytearray | memoryview | str) and not callable(content):
        raise TypeError(
            f"atomic_write({path}): content must be bytes, str or a writer callback(tmp_path), "
            f"got {type(content).__name__}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path, suffix)
    try:
        # O_EXCL reserves the name; mode 0o666 lets the umask decide, as for a plain open()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            if not callable(content):
                f.write(content.encode(encoding) if isinstance(content, str) else content)
        if callable(content):
            content(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if fsync:
        _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Flush a folder entry (the rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse fsync on folders
        pass
    finally:
        os.close(fd)


def to_jsonable(obj: Any) -> Any:
    """``obj`` with plain JSON types only (recursively): what ``json.loads(json.dumps(obj))``
    would give, for objects ``json`` cannot write too.

    Mappings become dicts with ``str`` keys, tuples / lists / sets lists (sets sorted when their
    items allow it), numpy arrays, numpy scalars and tensors their ``tolist()`` values, paths
    ``os.fspath`` strings; ``None``, ``str``, ``int``, ``float`` and ``bool`` stay; anything else
    becomes ``str(obj)``. Provenance is stored as JSON: comparing a fresh provenance dict with a
    stored one only works after both went through this conversion.

    Examples:
        >>> import numpy as np
        >>> from pathlib import Path
        >>> to_jsonable({"size": (96, 128), "w": np.float32(0.5), 1: [Path("a/b"), np.arange(2)]})
        {'size': [96, 128], 'w': 0.5, '1': ['a/b', [0, 1]]}
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, set | frozenset):
        items = [to_jsonable(v) for v in obj]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=repr)
    if obj is None or type(obj) in (str, int, float, bool):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    tolist = getattr(obj, "tolist", None)  # numpy arrays / scalars, torch tensors
    if callable(tolist):
        return to_jsonable(tolist())
    for base in (bool, int, float, str):  # subclasses (IntEnum, str enums, ...): their value
        if isinstance(obj, base):
            return str.__str__(obj) if base is str else base(obj)
    return str(obj)


def canonical_json(obj: Any, **dumps_kw: Any) -> str:
    """``json.dumps(to_jsonable(obj), sort_keys=True)``: one text per value, for equality checks
    and hashes (unlike ``==`` on the converted values, it tells ``1`` from ``1.0`` and ``True``).

    Examples:
        >>> canonical_json({"b": (1,), "a": None}), canonical_json(1) == canonical_json(True)
        ('{"a": null, "b": [1]}', False)
    """
    return json.dumps(to_jsonable(obj), sort_keys=True, **dumps_kw)
