"""KNN positives for STEGO training (PROTOCOL §3.5), from a feature store.

Each image gets a global descriptor ``g = normalize(mean_{h,w} f)`` from its stored tokens; an
exact FAISS inner-product search (cosine similarity) over all descriptors gives its ``k`` nearest
images. By default the image itself is removed *by index* (Q8), so with exact duplicates the
anchor cannot leak in as its own positive; ``knn_self_rank0=True`` keeps the reference table, whose
rank 0 is (normally) the image itself.

The table can be cached in a directory, keyed by the store's provenance (backbone, weights hash,
patch size, resolution, crop, split, dataset) and the options, so it is recomputed exactly when
any of them changes (Q7).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from stego_probe.fileio import atomic_write, canonical_json, to_jsonable

#: Store provenance fields that identify the features the neighbours are computed from.
KEY_FIELDS = ("backbone", "weights_sha256", "patch_size", "res", "crop", "split", "dataset")


def pooled_descriptors(
    store,
    batch_size: int = 64,
    dropout: float = 0.0,
    random_state: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Per-image descriptors ``normalize(mean_{h,w} tokens)``, (N, C) float32, unit L2 rows.

    Args:
        store: a feature store (``n_images``, ``tokens(slice) -> (n, h, w, C)``).
        batch_size: images read per store access.
        dropout: if > 0, apply a ``Dropout2d(dropout)`` channel mask to each image before pooling
            (reference parity, Q5: the reference extracts KNN features with dropout on). Channel
            dropout commutes with average pooling, so it is applied to the pooled vector.
        random_state: seed of the dropout masks.
        progress: show a tqdm bar.

    Raises:
        ValueError: NaN or inf tokens (the message names the store, the image index and its
            id; :func:`~stego_probe.projections.base.check_store_tokens`).
    """
    from stego_probe.projections.base import check_store_tokens

    n = int(store.n_images)
    out = None
    for a in tqdm(range(0, n, batch_size), desc="knn descriptors", disable=not progress):
        t = np.asarray(store.tokens(slice(a, min(a + batch_size, n))), dtype=np.float32)
        check_store_tokens(store, np.arange(a, a + len(t)), t)
        g = t.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
        if out is None:
            out = np.empty((n, g.shape[1]), dtype=np.float32)
        out[a : a + len(g)] = g
    if out is None:
        raise ValueError(f"store {getattr(store, 'path', store)!r} holds no images")
    if dropout > 0:
        keep = np.random.default_rng(random_state).random(out.shape) >= dropout
        out = out * keep / np.float32(1.0 - dropout)
    out = np.ascontiguousarray(out, dtype=np.float32)
    faiss.normalize_L2(out)
    return out


def sibling_groups(ids) -> np.ndarray:
    """Group index per image: five-crop ids ``"<id>_c<k>"`` of one source image share a group.

    Ids without the ``_c<k>`` suffix form their own group. Returns (N,) int64.
    """
    stems = [re.sub(r"_c\d+$", "", str(i)) for i in ids]
    _, inv = np.unique(np.asarray(stems, dtype=object).astype(str), return_inverse=True)
    return inv.astype(np.int64)


def knn_search(
    desc: np.ndarray,
    k: int = 30,
    exclude_self: bool = True,
    groups: np.ndarray | None = None,
    block_size: int = 4096,
    progress: bool = False,
) -> np.ndarray:
    """Top-``k`` neighbours by inner product (exact FAISS ``IndexFlatIP``), (N, k) int64.

    Args:
        desc: (N, C) float32 descriptors (unit rows give cosine similarity).
        k: neighbours per row, most similar first.
        exclude_self: drop row i's own index from its neighbours (default); otherwise keep it
            where the search puts it (rank 0 unless there are duplicates).
        groups: optional (N,) group ids; every index of row i's group is excluded (siblings).
            Implies self exclusion.
        block_size: rows searched per FAISS call.
    """
    desc = np.ascontiguousarray(desc, dtype=np.float32)
    if desc.ndim != 2:
        raise ValueError(f"desc must be (N, C), got shape {desc.shape}")
    n = desc.shape[0]
    if groups is None and exclude_self:
        groups = np.arange(n)
    if groups is not None:
        groups = np.asarray(groups, dtype=np.int64)
        if groups.shape != (n,):
            raise ValueError(f"groups must have shape ({n},), got {groups.shape}")
        extra = int(np.bincount(groups).max())
    else:
        extra = 0
    if not 1 <= k <= n - extra:
        raise ValueError(
            f"k={k} neighbours requested but only {n - extra} candidates per image "
            f"({n} images, {extra} excluded per row); use a smaller k"
        )
    index = faiss.IndexFlatIP(desc.shape[1])
    index.add(desc)
    out = np.empty((n, k), dtype=np.int64)
    for a in tqdm(range(0, n, block_size), desc="knn search", disable=not progress):
        rows = np.arange(a, min(a + block_size, n))
        _, idx = index.search(desc[rows], min(k + extra, n))
        if groups is None:
            out[rows] = idx[:, :k]
            continue
        drop = (idx < 0) | (groups[np.clip(idx, 0, None)] == groups[rows][:, None])
        # A stable sort on the drop flag moves the kept neighbours to the front, in rank order.
        order = np.argsort(drop, axis=1, kind="stable")
        out[rows] = np.take_along_axis(idx, order, axis=1)[:, :k]
        if np.take_along_axis(drop, order, axis=1)[:, :k].any():  # pragma: no cover - guarded
            raise RuntimeError("FAISS returned fewer valid neighbours than requested")
    return out


def _prov_get(prov: dict, key: str):
    """``prov[key]``, else the first nested dict's value for ``key`` (provenance may be nested)."""
    if key in prov:
        return prov[key]
    for v in prov.values():
        if isinstance(v, dict) and key in v:
            return v[key]
    return None


def knn_key(store, **options) -> dict:
    """JSON-able key identifying a KNN table: the store's feature identity + the options."""
    prov = dict(getattr(store, "provenance", None) or {})
    ids = [str(i) for i in getattr(store, "ids", None) or []]
    key = {f: _prov_get(prov, f) for f in KEY_FIELDS}
    key["n_images"] = int(store.n_images)
    key["ids_sha256"] = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    key.update(options)
    return to_jsonable(key)


def save_knns(path: str | os.PathLike, nns: np.ndarray, key: dict) -> None:
    """Write ``nns`` (N, k) int64 and its ``key`` to an ``.npz`` file (atomic rename)."""
    nns, key_json = np.asarray(nns, dtype=np.int64), canonical_json(key)
    atomic_write(path, lambda tmp: np.savez(tmp, nns=nns, key=key_json), suffix=".npz")


class KNNCacheError(ValueError):
    """A KNN file that cannot be read as a table: truncated, corrupt, or of the wrong shape."""


#: What a KNN file must be (for error messages).
KNN_FILE_EXPECTED = "an .npz written by save_knns with arrays 'nns' (N, k) int64 and 'key' (JSON)"


def load_knns(path: str | os.PathLike, key: dict | None = None) -> np.ndarray:
    """Read a table written by :func:`save_knns`, (N, k) int64; if ``key`` is given it must
    match the file's.

    The table is checked against the key stored with it: shape ``(n_images, k)`` and every
    index in ``[0, n_images)``.

    Raises:
        FileNotFoundError: no such file.
        KNNCacheError: (a ``ValueError``) the file is truncated, corrupt or not a KNN file, or
            its table does not have the shape / index range its key says; the message names the
            file and what was expected.
        ValueError: the file's key differs from ``key`` (the differing fields are listed).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"KNN file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [a for a in ("nns", "key") if a not in z.files]
            if missing:
                raise KNNCacheError(
                    f"{path}: not a stego_probe KNN file (no array {missing[0]!r}); "
                    f"expected {KNN_FILE_EXPECTED}"
                )
            stored = json.loads(str(z["key"]))
            nns = z["nns"]
    except KNNCacheError:
        raise
    except Exception as e:  # noqa: BLE001 - zip, zlib, npy-header and JSON errors alike
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise KNNCacheError(
            f"{path}: unreadable KNN file (truncated or corrupt: {type(e).__name__}: "
            f"{reason}); expected {KNN_FILE_EXPECTED}"
        ) from e
    if not isinstance(stored, dict):
        raise KNNCacheError(f"{path}: KNN key is not a JSON object; expected {KNN_FILE_EXPECTED}")
    n, k = stored.get("n_images"), stored.get("k")
    if nns.ndim != 2 or not np.issubdtype(nns.dtype, np.integer) or nns.shape != (n, k):
        raise KNNCacheError(
            f"{path}: KNN table is {nns.dtype} of shape {nns.shape}; expected int64 of shape "
            f"(n_images, k) = ({n}, {k}) as its key says"
        )
    if nns.size and (int(nns.min()) < 0 or int(nns.max()) >= n):
        raise KNNCacheError(
            f"{path}: KNN table holds indices outside [0, {n}) (range {int(nns.min())}.."
            f"{int(nns.max())}); expected image indices of the {n} images"
        )
    if key is not None and stored != to_jsonable(key):
        diff = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
        raise ValueError(f"{path}: KNN table was computed for other inputs (differs in {diff})")
    return nns.astype(np.int64)


def compute_knns(
    store,
    k: int = 30,
    *,
    knn_self_rank0: bool = False,
    exclude_siblings: bool = False,
    dropout: float = 0.0,
    random_state: int = 0,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    block_size: int = 4096,
    progress: bool = False,
) -> np.ndarray:
    """KNN table of a training store, (N, k) int64, most similar first.

    Args:
        store: feature store of the training split *as used for training* (five-crop etc.).
        k: neighbours per image (the reference stores 30 and draws positives from the first 7).
        knn_self_rank0: reference parity (Q8): keep the image itself in the table (rank 0);
            training then draws from ranks 1..7. Default: self removed by index, ranks 0..6.
        exclude_siblings: also remove the other crops ``"<id>_c<k>"`` of the same source image.
        dropout: channel-dropout probability applied before pooling (parity with Q5: 0.1).
        random_state: seed of that dropout.
        cache_dir: if given, load ``knn_<hash>.npz`` from it when the key matches, else compute
            and save it there. A cached file that is truncated, corrupt or for other inputs
            (:func:`load_knns` raises) is recomputed and replaced, with a warning naming it.

    Returns:
        (N, k) int64 neighbour indices, most similar first.
    """
    if knn_self_rank0 and exclude_siblings:
        raise ValueError("knn_self_rank0=True (reference table) cannot exclude siblings")
    opts = dict(
        k=int(k),
        knn_self_rank0=bool(knn_self_rank0),
        exclude_siblings=bool(exclude_siblings),
        dropout=float(dropout),
        random_state=int(random_state) if dropout > 0 else None,
    )
    key = knn_key(store, **opts)
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"knn_{digest}.npz"
        if path.exists():
            try:
                return load_knns(path, key)
            except ValueError as e:  # truncated / corrupt / foreign: never read it as data
                warnings.warn(f"{e}; recomputing it", UserWarning, stacklevel=2)
    desc = pooled_descriptors(store, batch_size, dropout, random_state, progress)
    groups = sibling_groups(store.ids) if exclude_siblings else None
    nns = knn_search(
        desc,
        k,
        exclude_self=not knn_self_rank0,
        groups=groups,
        block_size=block_size,
        progress=progress,
    )
    if path is not None:
        save_knns(path, nns, key)
    return nns
