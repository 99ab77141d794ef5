"""Fingerprints of what a cached sweep projection was fitted on.

:func:`store_fingerprint` identifies the fit data (a feature store or an array);
:func:`projection_inputs` is the whole record of a point's fit (method, ``D``, seed,
``method_kwargs`` and the fit data), stored in each cached file under ``projections/`` and
compared on reuse (:mod:`stego_probe.sweep.fit`).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from stego_probe.fileio import canonical_json, to_jsonable
from stego_probe.sweep.config import SweepConfig
from stego_probe.sweep.points import Point


def store_fingerprint(source) -> dict:
    """What identifies the data a projection is fitted on, for the cache in ``projections/``.

    For a feature store: the sha256 of its provenance, its layout (images, grid, width), the
    sha256 of its sample ids, a checksum summary when the store records one, and the
    modification times of its ``zarr.json`` / ``_SUCCESS`` (rewritten when the store is
    extracted again or repaired). For an array: its shape and the sha256 of its bytes.

    Returns:
        a JSON-able dict; equal dicts mean "the same fit data" (``{}`` for None).
    """
    if source is None:
        return {}
    from stego_probe.store import is_store

    if not is_store(source):
        arr = np.ascontiguousarray(np.asarray(source))
        return {
            "array_shape": list(arr.shape),
            "array_sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
        }
    prov = dict(getattr(source, "provenance", None) or {})
    out: dict = {
        "provenance_sha256": _sha256_json(prov),
        "n_images": int(source.n_images),
        "grid": list(getattr(source, "grid", ()) or ()),
        "dim": getattr(source, "dim", None),
    }
    try:
        out["ids_sha256"] = _sha256_json(list(source.ids))
    except Exception:  # a duck-typed store without ids
        out["ids_sha256"] = None
    out["checksums_sha256"] = _checksums_sha256(str(getattr(source, "path", "")))
    out["mtimes"] = _store_mtimes(str(getattr(source, "path", "")))
    return out


def _checksums_sha256(path: str) -> str | None:
    """sha256 of a store's per-block ``checksums`` array (None for a store without one)."""
    if not path:
        return None
    try:
        import zarr

        group = zarr.open_group(path, mode="r", zarr_format=3)
        if "checksums" not in group:
            return None
        return hashlib.sha256(np.ascontiguousarray(group["checksums"][...]).tobytes()).hexdigest()
    except Exception:  # not a zarr store we can read: the other fields identify it
        return None


def _sha256_json(obj) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def _store_mtimes(path: str) -> dict:
    """Modification times (ns, or fsspec's ``mtime``) of a store's ``zarr.json`` and
    ``_SUCCESS`` (None where unknown)."""
    out = {}
    for name in ("zarr.json", "_SUCCESS"):
        value = None
        try:
            if "://" in path:
                import fsspec

                fs, root = fsspec.core.url_to_fs(path)
                info = fs.info(f"{root.rstrip('/')}/{name}")
                value = info.get("mtime", info.get("created"))
                value = str(value) if value is not None else None
            elif path:
                value = os.stat(os.path.join(path, name)).st_mtime_ns
        except (OSError, ValueError, ImportError):
            value = None
        out[name] = value
    return out


def projection_inputs(config: SweepConfig, point: Point, train_store, val_store=None) -> dict:
    """The fingerprint of everything a cached sweep projection depends on: method, ``D``
    (PCA: none, one fit serves every ``D``), seed, the method's ``method_kwargs`` and the fit
    data (:func:`store_fingerprint` of the train store; STEGO also of the val store its
    checkpoint is selected on). Recorded as ``provenance["sweep_inputs"]`` in the cached file;
    a cache whose record differs is refitted."""
    out = {
        "method": point.method,
        "dim": None if point.method == "pca" else int(point.dim),
        "seed": int(point.seed),
        "method_kwargs": config.method_kwargs.get(point.method, {}),
        "train": store_fingerprint(train_store),
    }
    if point.method == "stego":
        out["val"] = store_fingerprint(val_store)
    return to_jsonable(out)
