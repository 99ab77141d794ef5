"""One small name -> object registry, behind datasets, backbones, projections and probes.

Modelled on timm's ``register_model`` / ``list_models(filter)``: a :class:`Registry` of one
``kind`` maps names to objects (usually factories or classes) with free-form metadata per
entry; :meth:`Registry.get` of an unknown name raises a one-line :class:`UnknownNameError`
naming the kind, the name, a close match and the available names.

Examples:
    >>> models = Registry("model")
    >>> @models.register("tiny", width=8)
    ... def tiny():
    ...     return "a tiny model"
    >>> models.get("tiny")(), models.meta("tiny"), models.names("ti*"), "tiny" in models
    ('a tiny model', {'width': 8}, ['tiny'], True)
    >>> try:
    ...     models.get("tine")
    ... except KeyError as e:
    ...     print(e)
    unknown model 'tine' (did you mean 'tiny'?); known models: tiny
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Entry", "Registry", "UnknownNameError"]


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name: a ``KeyError`` (a lookup) and a ``ValueError`` (a bad argument),
    so callers may catch either; ``str()`` is the plain message (no ``KeyError`` quoting)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class Entry:
    """A registered object with its metadata (``meta``: free-form, e.g. a description)."""

    name: str
    obj: Any
    meta: dict = field(default_factory=dict)


class Registry:
    """Names -> objects of one ``kind`` (``"dataset"``, ``"backbone"``, ...), with metadata.

    Args:
        kind: what the entries are, used in error messages (``unknown dataset 'x'``).
        plural: the plural of ``kind`` in messages (default ``kind + "s"``).
        overwrite: default of :meth:`register`'s ``overwrite`` (re-registering a name replaces
            the entry when True, raises ``ValueError`` when False).
        sort: :meth:`names` (and error messages) list names sorted (default) or in registration
            order.
    """

    def __init__(
        self, kind: str, *, plural: str | None = None, overwrite: bool = False, sort: bool = True
    ) -> None:
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind: expected a non-empty string, got {kind!r}")
        self.kind = kind
        self.plural = plural or kind + "s"
        self.overwrite = bool(overwrite)
        self.sort = bool(sort)
        self._entries: dict[str, Entry] = {}

    def register(
        self, name: str, obj: Any = None, *, overwrite: bool | None = None, **meta: Any
    ) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, a decorator that registers its target.

        Args:
            name: a non-empty string.
            obj: the object (factory, class, ...); None: return a decorator.
            overwrite: replace an existing entry (default: the registry's ``overwrite``).
            **meta: metadata stored with the entry (:meth:`meta`).

        Returns:
            ``obj`` (or the decorator, which returns its target unchanged).

        Raises:
            ValueError: bad name, or ``name`` exists and overwriting is off.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name: expected a non-empty string, got {name!r}")
        if obj is None:

            def decorator(target: Any) -> Any:
                self.register(name, target, overwrite=overwrite, **meta)
                return target

            return decorator
        if name in self._entries and not (self.overwrite if overwrite is None else overwrite):
            raise ValueError(f"{self.kind} {name!r} is already registered (pass overwrite=True)")
        self._entries[name] = Entry(name, obj, dict(meta))
        return obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (:class:`UnknownNameError` if it is not registered)."""
        self.entry(name)
        del self._entries[name]

    def unknown(self, name: Any, extra: Iterable[str] = ()) -> UnknownNameError:
        """The error for an unknown ``name``: kind, name, a close match, the known names (and
        ``extra`` ones, e.g. a pattern such as ``timm:<model>`` that is not an entry)."""
        known = [*self.names(), *extra]
        close = difflib.get_close_matches(str(name), self.names(), n=1) if known else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        listing = ", ".join(known) if known else "none registered"
        return UnknownNameError(
            f"unknown {self.kind} {name!r}{hint}; known {self.plural}: {listing}"
        )

    def entry(self, name: str) -> Entry:
        """The :class:`Entry` of ``name`` (:class:`UnknownNameError` if unknown)."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.unknown(name) from None

    def get(self, name: str) -> Any:
        """The object registered under ``name`` (:class:`UnknownNameError` if unknown)."""
        return self.entry(name).obj

    def meta(self, name: str) -> dict:
        """A copy of the metadata of ``name`` (:class:`UnknownNameError` if unknown)."""
        return dict(self.entry(name).meta)

    def names(self, filter: str | None = None) -> list[str]:
        """Registered names (sorted, or in registration order for ``sort=False``); ``filter``:
        an ``fnmatch`` pattern (``"dino*"``)."""
        names = sorted(self._entries) if self.sort else list(self._entries)
        return names if filter is None else [n for n in names if fnmatch.fnmatchcase(n, filter)]

    def entries(self) -> list[Entry]:
        """All entries in registration order."""
        return list(self._entries.values())

    def find(self, predicate: Callable[[Entry], bool]) -> list[Entry]:
        """Entries (registration order) for which ``predicate(entry)`` is true."""
        return [e for e in self._entries.values() if predicate(e)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"
