"""One file format for every fitted estimator (probes and projections).

:func:`write_estimator` writes, and :func:`read_estimator` reads, an uncompressed ``.npz`` file
(``np.savez``; read with ``np.load(allow_pickle=False)``, so reading runs no code) holding:

* ``__meta__``: a JSON text ``{"format": "stego_probe.estimator", "version": 1, "kind":
  "probe" | "projection", "class": <class name>, "params": <constructor arguments>, "state":
  <fitted scalars, lists and dicts>, "provenance": <dict or null>}``;
* one array per fitted array, under the estimator's own names, each with its exact dtype
  (float64 statistics stay float64). A third-party model that only pickles (UMAP, h-NNE) is
  one ``uint8`` array of its pickle bytes; the estimator unpickles it only when trusted
  (``Projection.load(path, trust=True)``), never this module.

Files are written through :func:`stego_probe.fileio.atomic_write` (a temporary file in the same
folder, renamed into place; the parent folder is created), so a failed write leaves no file
and never a half-written one. The file name's extension is the caller's choice (probes use
``.npz``, the sweep's projection cache ``.pt``): the content is recognised, not the name.

Files written before this format still load, each through one reader that maps it onto the
same :class:`SavedEstimator` (so every estimator's ``load`` has one code path):

* :func:`_read_legacy_kmeans`: ``KMeansProbe.save`` ``.npz`` with a ``meta`` JSON entry;
* :func:`_read_legacy_probe`: ``ClusterLookupProbe`` / ``LinearProbe`` ``.npz`` with a
  ``__meta__`` JSON entry without ``format``;
* :func:`_read_legacy_projection_pt`: ``Projection.save`` ``torch.save`` dicts of format
  :data:`LEGACY_PROJECTION_FORMAT` (read with ``torch.load(weights_only=True)``).

Saved parameter and state names that were renamed (:data:`stego_probe.params.RENAMED`, e.g.
``n_train`` -> ``n_tokens``) are mapped to their new names for every format.

Examples:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "est.npz"
    >>> _ = write_estimator(path, kind="probe", cls_name="Toy", params={"k": 2},
    ...                     state={"n_features_in_": 3}, arrays={"w": np.eye(2)})
    >>> saved = read_estimator(path, kind="probe", expected="Toy")
    >>> saved.params, saved.state, saved.arrays["w"].dtype
    ({'k': 2}, {'n_features_in_': 3}, dtype('float64'))
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stego_probe.fileio import atomic_write, to_jsonable
from stego_probe.params import renamed_kwargs

__all__ = [
    "FORMAT",
    "KINDS",
    "LEGACY_PROJECTION_FORMAT",
    "META_KEY",
    "VERSION",
    "SavedEstimator",
    "read_estimator",
    "write_estimator",
]

#: ``format`` tag of the ``__meta__`` entry.
FORMAT = "stego_probe.estimator"
#: Version of the format written by :func:`write_estimator` (files of a newer one are refused).
VERSION = 1
#: The kinds of estimator a file can hold.
KINDS = ("probe", "projection")
#: Name of the JSON entry of the ``.npz`` file.
META_KEY = "__meta__"
#: ``format`` of the projection files ``torch.save``-d before this format (still read).
LEGACY_PROJECTION_FORMAT = "stego_probe.projection/v1"
#: Array names ``np.savez`` cannot take as keyword arguments (or that the format uses).
_RESERVED = frozenset({META_KEY, "file", "allow_pickle"})


@dataclass
class SavedEstimator:
    """The content of an estimator file, whatever format wrote it.

    Attributes:
        cls_name: the estimator's class name (``type(est).__name__``).
        params: its constructor arguments (renamed parameters under their new names).
        state: fitted JSON values (scalars, lists, dicts) by attribute name.
        arrays: fitted arrays by name, each with the dtype it was saved with.
        provenance: the fit-time provenance dict, or None.
        kind: ``"probe"`` or ``"projection"``.
        path: the file read.
        format: what wrote it: ``"stego_probe.estimator/1"``, ``"legacy-kmeans"``,
            ``"legacy-probe"`` or ``"legacy-projection-pt"``.
    """

    cls_name: str
    params: dict
    state: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    provenance: dict | None = None
    kind: str = "probe"
    path: Path | None = None
    format: str = f"{FORMAT}/{VERSION}"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")


def _as_array(name: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.hasobject:
        raise ValueError(
            f"arrays[{name!r}]: object arrays cannot be saved (they would need a pickle); "
            "store the bytes of a pickle as a uint8 array instead"
        )
    return arr


def write_estimator(
    path: str | os.PathLike,
    *,
    kind: str,
    cls_name: str,
    params: Mapping,
    state: Mapping,
    arrays: Mapping[str, Any],
    provenance: Mapping | None = None,
) -> Path:
    """Write a fitted estimator to ``path`` in the common format (see the module docstring).

    Args:
        path: the file (any extension; parent folders are created). Written atomically: on any
            failure no file is left (an existing one keeps its old content).
        kind: ``"probe"`` or ``"projection"``.
        cls_name: the estimator's class name.
        params: constructor arguments (JSON-able after :func:`~stego_probe.fileio.to_jsonable`).
        state: fitted non-array attributes (JSON-able likewise).
        arrays: ``{name: numpy array or tensor}``, saved with their exact dtype and shape;
            names must not be ``"__meta__"``, ``"file"`` or ``"allow_pickle"``, and object
            arrays are refused.
        provenance: the fit-time provenance dict, or None.

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: an unknown ``kind``, a reserved array name or an object array.
    """
    _check_kind(kind)
    path = Path(path)
    members = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or name in _RESERVED:
            raise ValueError(f"arrays: {name!r} is not a valid array name ({sorted(_RESERVED)})")
        members[name] = _as_array(name, value)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "class": str(cls_name),
        "params": to_jsonable(dict(params)),
        "state": to_jsonable(dict(state)),
        "provenance": None if provenance is None else to_jsonable(dict(provenance)),
    }
    members[META_KEY] = np.array(json.dumps(meta))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file handle: np.savez appends no ".npz"
            np.savez(f, **members)

    return atomic_write(path, write)


def read_estimator(
    path: str | os.PathLike,
    *,
    kind: str,
    expected: str | Callable[[str], bool] | None = None,
    what: str | None = None,
) -> SavedEstimator:
    """Read an estimator file written by :func:`write_estimator` or by an older ``save``.

    The kind and the class are checked from the file's header before its arrays are read
    (nothing in the file is ever unpickled here).

    Args:
        path: the file.
        kind: the kind of estimator expected, ``"probe"`` or ``"projection"``.
        expected: the class name expected, or a predicate ``accepts(cls_name) -> bool`` (e.g.
            "a subclass of"), or None (any class).
        what: the expected class as messages name it (default: ``expected`` when a name).

    Returns:
        a :class:`SavedEstimator`; renamed parameters / state entries carry their new names.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a stego_probe estimator file, a file of a newer format version, an
            estimator of the other kind, or of another class than ``expected``.
    """
    _check_kind(kind)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {path} does not exist")
    if what is None:
        what = expected if isinstance(expected, str) else kind
    try:
        npz = np.load(path, allow_pickle=False) if zipfile.is_zipfile(path) else None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise _not_ours(path, exc) from exc
    if npz is None or not any(n.endswith(".npy") for n in npz.zip.namelist()):
        if npz is not None:
            npz.close()
        saved = _read_legacy_projection_pt(path)  # or raises "not a stego_probe ... file"
        _check_header(saved, kind, expected, what)
        return _renamed(saved)
    with npz as z:
        if META_KEY in z.files:
            meta = _json_entry(z, META_KEY, path)
            if isinstance(meta, dict) and meta.get("format") == FORMAT:
                saved = _read_v1(meta, path)
            else:
                saved = _read_legacy_probe(meta, path)
            skip = {META_KEY}
        elif "meta" in z.files and "cluster_centers_" in z.files:
            saved = _read_legacy_kmeans(_json_entry(z, "meta", path), path)
            skip = {"meta"}
        else:
            raise _not_ours(path, f"no {META_KEY} entry")
        _check_header(saved, kind, expected, what)
        saved.arrays = {name: z[name] for name in z.files if name not in skip}
    return _renamed(saved)


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------


def _not_ours(path: Path, why: Any) -> ValueError:
    return ValueError(f"{path}: not a stego_probe estimator file ({why})")


def _json_entry(z, name: str, path: Path) -> Any:
    try:
        return json.loads(str(z[name]))
    except (ValueError, TypeError) as exc:
        raise _not_ours(path, f"its {name!r} entry is not JSON: {exc}") from exc


def _require(meta: Any, keys: tuple[str, ...], path: Path, what: str) -> None:
    missing = [k for k in keys if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise _not_ours(path, f"{what} without {', '.join(map(repr, missing))}")


def _read_v1(meta: dict, path: Path) -> SavedEstimator:
    """Header of a file of this format (arrays are read by :func:`read_estimator`)."""
    version = meta.get("version")
    if not isinstance(version, int) or version < 1:
        raise _not_ours(path, f"format version {version!r}")
    if version > VERSION:
        raise ValueError(
            f"{path}: written by a newer stego_probe (estimator format version {version}); this "
            f"version reads up to {VERSION}: upgrade stego_probe"
        )
    _require(meta, ("kind", "class", "params", "state"), path, "a header")
    return SavedEstimator(
        cls_name=str(meta["class"]),
        params=dict(meta["params"]),
        state=dict(meta["state"]),
        provenance=meta.get("provenance"),
        kind=str(meta["kind"]),
        path=path,
        format=f"{FORMAT}/{version}",
    )


def _read_legacy_kmeans(meta: dict, path: Path) -> SavedEstimator:
    """Header of a ``KMeansProbe`` file written before this format: ``meta`` = JSON
    ``{"params", "state"}``; its arrays (``cluster_centers_``, ``objective_redo_<i>``) have the
    names this format uses."""
    _require(meta, ("params", "state"), path, "a k-means 'meta' entry")
    return SavedEstimator(
        cls_name="KMeansProbe",
        params=dict(meta["params"]),
        state=dict(meta["state"]),
        kind="probe",
        path=path,
        format="legacy-kmeans",
    )


def _read_legacy_probe(meta: dict, path: Path) -> SavedEstimator:
    """Header of a ``ClusterLookupProbe`` / ``LinearProbe`` file written before this format:
    ``__meta__`` = JSON ``{"class", "params", "n_features_in", "n_steps", "seed"}`` (``seed``
    absent in the oldest files: ``random_state`` or 0); the arrays (``loss_history``, the
    parameters, ``extra:<name>``) keep their names."""
    _require(meta, ("class", "params", "n_features_in", "n_steps"), path, "a probe header")
    params = dict(meta["params"])
    seed = meta.get("seed", params.get("random_state") or 0)
    return SavedEstimator(
        cls_name=str(meta["class"]),
        params=params,
        state={
            "n_features_in_": meta["n_features_in"],
            "n_steps_": meta["n_steps"],
            "seed_": seed,
        },
        kind="probe",
        path=path,
        format="legacy-probe",
    )


def _read_legacy_projection_pt(path: Path) -> SavedEstimator:
    """A ``Projection.save`` file written before this format: ``torch.save`` of ``{"format":
    LEGACY_PROJECTION_FORMAT, "class", "method", "params" (JSON), "meta" (JSON fitted scalars:
    the state), "provenance" (JSON), "arrays" (name -> tensor)}``, read with
    ``torch.load(weights_only=True)`` (which cannot run code). Also the reader of last resort:
    a file it cannot read is "not a stego_probe estimator file"."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure: "not ours"
        raise _not_ours(path, f"neither an estimator .npz nor a torch file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != LEGACY_PROJECTION_FORMAT:
        raise _not_ours(path, "a torch file of another format")
    _require(payload, ("class", "params", "meta", "provenance", "arrays"), path, "a projection")
    try:
        params, state, provenance = (
            json.loads(payload[k]) for k in ("params", "meta", "provenance")
        )
    except (TypeError, ValueError) as exc:
        raise _not_ours(path, f"a projection entry is not JSON: {exc}") from exc
    arrays = {str(k): v.numpy() for k, v in dict(payload["arrays"]).items()}
    return SavedEstimator(
        cls_name=str(payload["class"]),
        params=params,
        state=state,
        arrays=arrays,
        provenance=provenance,
        kind="projection",
        path=path,
        format="legacy-projection-pt",
    )


def _check_header(
    saved: SavedEstimator, kind: str, expected: str | Callable[[str], bool] | None, what: str
) -> None:
    path = saved.path
    if saved.kind != kind:
        raise ValueError(
            f"{path}: holds a {saved.kind} ({saved.cls_name}), not a {kind}; load it with "
            f"{saved.cls_name}.load"
        )
    if expected is None:
        return
    ok = expected(saved.cls_name) if callable(expected) else saved.cls_name == expected
    if not ok:
        raise ValueError(f"{path}: holds a {saved.cls_name}, not a {what}")


def _renamed(saved: SavedEstimator) -> SavedEstimator:
    where = f"{saved.path}"
    saved.params = renamed_kwargs(saved.params, f"{where} params", warn=False)
    saved.state = renamed_kwargs(saved.state, f"{where} state", warn=False)
    return saved
