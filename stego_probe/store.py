"""The feature store: backbone patch tokens of one dataset split, on zarr v3.

One store holds the features of one (dataset, split, backbone, resolution, crop). Layout (a zarr
v3 group, on a local path or any fsspec URL such as ``s3://`` or ``memory://``)::

    <store>/
      zarr.json          group attributes: format, format_version, layout, provenance, complete
      tokens/            float16 (N, h, w, C), chunks of ``chunk_images`` images, uncompressed
      tokens_flipped/    float16 (N, h, w, C), optional: features of the horizontally flipped
                         images, flipped back (evaluation-mode flip average, PROTOCOL §4.4)
      labels/            int16 (N, H, W) (int32 when K > 32766), zstd; -1 = ignore
      ids/               variable-length UTF-8 strings (N,)
      checksums/         int64 (n_blocks, n_arrays), one zarr chunk per block: CRC-32 of the
                         decoded content of each array's slice of the block (-1 = none)
      written/           bool (n_blocks,), one zarr chunk per block: the progress markers
      _SUCCESS           written last, only when every block is written

A *block* is the unit of writing: one chunk, or one shard when ``shard_images`` is set. The
extractor writes a block's ``tokens``, ``tokens_flipped``, ``labels`` and ``ids``, then its
``checksums`` row, and only then sets ``written[block]``; a restarted extraction rewrites exactly
the blocks whose marker is not set. Readers refuse an incomplete store unless asked
(``allow_incomplete=True``), check the ``layout`` attributes against the arrays on open, and
verify each block's checksums the first time a handle reads it: damage raises
:class:`StoreCorruptError` naming the store, array and image range (``stego-probe verify STORE
--repair`` re-extracts the damaged blocks; see :mod:`stego_probe.verify`). Stores of format
version 1 (no checksums) open read-only with a warning that they cannot be verified.

See ``docs/store.md`` for the guarantees and a worked example.
"""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import numpy as np

from stego_probe.fileio import to_jsonable as to_jsonable  # re-export: its old home
from stego_probe.labels import IGNORE

FORMAT = "stego_probe.feature_store"
#: Format written by this version: 2 adds the ``checksums`` array (version 1 stores still open,
#: read-only and unverifiable).
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
SUCCESS_MARKER = "_SUCCESS"
CHECKSUM_ALGORITHM = "crc32"

_TOKENS = "tokens"
_FLIPPED = "tokens_flipped"
_LABELS = "labels"
_IDS = "ids"
_WRITTEN = "written"
_CHECKSUMS = "checksums"
_NO_CHECKSUM = -1

# paths of format-1 stores already warned about (one warning per process and store)
_WARNED_UNVERIFIABLE: set[str] = set()


class StoreCorruptError(ValueError):
    """A feature store's content or metadata is damaged (checksum mismatch, missing or
    undecodable chunk, layout attributes that disagree with the arrays, unreadable
    ``zarr.json``).

    Attributes:
        path: the store.
        array: the damaged array (``None`` for store-level damage).
        block: the damaged block (``None`` for store-level damage).
        images: ``(start, stop)`` image range of the block (``None`` for store-level damage).
        reason: what is wrong, without the location.
    """

    def __init__(
        self,
        path: str,
        reason: str,
        array: str | None = None,
        block: int | None = None,
        images: tuple[int, int] | None = None,
    ) -> None:
        self.path = path
        self.array = array
        self.block = block
        self.images = images
        self.reason = reason
        if block is None:
            msg = f"{path}: damaged feature store: {reason}"
        else:
            where = f"{array} images {images[0]}..{images[1] - 1} (block {block})"
            msg = (
                f"{path}: damaged feature store: {where}: {reason}; run `stego-probe verify "
                f"{path} --repair` to re-extract the damaged blocks"
            )
        super().__init__(msg)


def block_checksum(a: np.ndarray) -> int:
    """CRC-32 of an array's decoded content, as stored in the ``checksums`` array.

    Numeric arrays: the CRC of their little-endian C-order bytes (so the dtype the store holds:
    float16 / float32 tokens, int16 / int32 labels). String arrays (ids): the CRC of the UTF-8
    JSON list of the strings.

    Examples:
        >>> block_checksum(np.zeros(4, np.int16)) == block_checksum(np.zeros(4, np.int16))
        True
        >>> block_checksum(np.asarray(["a", "b"], dtype=object)) != block_checksum(
        ...     np.asarray(["ab", ""], dtype=object))
        True
    """
    a = np.asarray(a)
    if a.dtype.kind in "OUST":
        payload = json.dumps([str(x) for x in a.tolist()], ensure_ascii=False).encode("utf-8")
        return zlib.crc32(payload)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


Index = int | slice | Sequence[int] | np.ndarray


def _draw_tokens(n, seed, n_images: int, grid, images, resolve) -> tuple[np.ndarray, np.ndarray]:
    """The tokens ``sample_tokens(n, seed, images=images)`` draws: (image (n,), cell (n,)) int64,
    ``cell`` a flat index into the ``h * w`` grid. ``resolve(idx) -> int array`` turns an index
    array into image indices (None when it selects nothing). Shared by every store class so that
    the same seed draws the same tokens from the same content."""
    if not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    rng = np.random.default_rng(seed)
    N = int(n_images)
    if images is None:
        img_idx = np.arange(N, dtype=np.int64)
    elif isinstance(images, int | np.integer):
        if not 0 < int(images) <= N:
            raise ValueError(f"images: expected an int in [1, {N}], got {images!r}")
        img_idx = np.sort(rng.choice(N, size=int(images), replace=False)).astype(np.int64)
    else:
        img_idx = resolve(np.asarray(images))
        if img_idx is None or img_idx.size == 0:
            raise ValueError("images: expected a non-empty 1-D index array")
        img_idx = np.unique(img_idx)
    hw = int(grid[0]) * int(grid[1])
    total = img_idx.size * hw
    n = min(int(n), total)
    flat = rng.choice(total, size=n, replace=False) if n < total else rng.permutation(total)
    return img_idx[flat // hw], flat % hw


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


def _fs(path: str):
    """(fsspec filesystem, path inside it) for a local path or URL."""
    import fsspec

    return fsspec.core.url_to_fs(path)


def pool_labels(
    labels: np.ndarray, grid: tuple[int, int], n_classes: int | None = None
) -> np.ndarray:
    """Pool pixel labels to a token grid by per-cell majority over valid pixels.

    Pixel ``(y, x)`` belongs to cell ``(y * h // H, x * w // W)``; with ``H = h * p`` this is the
    ``p x p`` patch under each token. This is an *approximation* of "the class of a token": a
    token's receptive field is the whole image, and a cell straddling a boundary gets the class
    covering most of its valid pixels (ties go to the smaller class id).

    Args:
        labels: int array (n, H, W); classes in ``[0, n_classes)``, everything else ignored.
        grid: token grid ``(h, w)``, ``h <= H`` and ``w <= W``.
        n_classes: ``K``; ``None`` uses ``labels.max() + 1``.

    Returns:
        int64 array (n, h, w): the majority class of each cell, -1 where a cell has no valid
        pixel.

    Examples:
        >>> lab = np.array([[[0, 0, 1, -1], [0, 1, -1, -1]]])
        >>> pool_labels(lab, (1, 2), n_classes=2)
        array([[[0, 1]]])
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels: expected shape (n, H, W), got {labels.shape}")
    n, H, W = labels.shape
    h, w = int(grid[0]), int(grid[1])
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(f"grid: expected 0 < (h, w) <= label shape {(H, W)}, got {(h, w)}")
    labels = labels.astype(np.int64, copy=False)
    if n_classes is None:
        n_classes = int(labels.max()) + 1 if labels.size else 0
    K = int(n_classes)
    out = np.full((n, h, w), IGNORE, dtype=np.int64)
    if K <= 0 or n == 0:
        return out
    cell = ((np.arange(H) * h) // H)[:, None] * w + ((np.arange(W) * w) // W)[None, :]
    flat_cell = (np.arange(n)[:, None, None] * (h * w) + cell[None]).ravel()
    flat_lab = labels.ravel()
    valid = (flat_lab >= 0) & (flat_lab < K)
    counts = np.bincount(flat_cell[valid] * K + flat_lab[valid], minlength=n * h * w * K).reshape(
        n * h * w, K
    )
    best = counts.argmax(axis=1)
    best[counts.sum(axis=1) == 0] = IGNORE
    return best.reshape(n, h, w)


def to_float32(a: np.ndarray) -> np.ndarray:
    """float16 -> float32 via torch's vectorised (and threaded) conversion, about 2x faster than
    numpy's ``astype`` for large arrays; other dtypes use ``astype``."""
    if a.dtype != np.float16 or a.size < 1 << 16:
        return a.astype(np.float32)
    import torch

    out = np.empty(a.shape, dtype=np.float32)
    src = np.ascontiguousarray(a)
    if not src.flags.writeable:
        src = src.copy()
    torch.from_numpy(out).copy_(torch.from_numpy(src))
    return out


def _meta_file(path: str, name: str) -> str:
    return f"{path}/{name}/zarr.json" if name else f"{path}/zarr.json"


_META_KEYS = {
    "group": ("zarr_format", "node_type", "attributes"),
    "array": ("zarr_format", "node_type", "shape", "data_type", "chunk_grid", "codecs"),
}


def _read_meta(fs, root: str, path: str, name: str, kind: str) -> dict:
    """The parsed ``zarr.json`` of the group (``name=""``) or of array ``name``; a
    :class:`StoreCorruptError` naming the file and what was expected when it is not a zarr v3
    ``kind`` ("group" / "array") document."""
    file = _meta_file(path, name)
    key = f"{root}/{name}/zarr.json" if name else f"{root}/zarr.json"
    expected = (
        "the zarr v3 group metadata of a feature store (keys zarr_format, node_type, attributes)"
        if kind == "group"
        else f"zarr v3 array metadata (keys {', '.join(_META_KEYS['array'])})"
    )
    try:
        raw = fs.cat_file(key)
    except FileNotFoundError:
        raise StoreCorruptError(path, f"{file} is missing; expected {expected}") from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        why = "is empty" if not raw.strip() else f"is not valid JSON ({e})"
        raise StoreCorruptError(path, f"{file} {why}; expected {expected}") from None
    missing = [k for k in _META_KEYS[kind] if not isinstance(doc, dict) or k not in doc]
    if missing or doc.get("zarr_format") != 3 or doc.get("node_type") != kind:
        got = (
            f"missing {', '.join(missing)}"
            if missing
            else (f"zarr_format={doc.get('zarr_format')!r}, node_type={doc.get('node_type')!r}")
        )
        raise StoreCorruptError(path, f"{file} is incomplete or wrong ({got}); expected {expected}")
    return doc


class FeatureStore:
    """Patch tokens, labels and ids of one dataset split, stored as a zarr v3 group.

    Create with :meth:`create` (the extractor does this) or open with :meth:`open`. Readers get
    float32 tokens ``(n, h, w, C)`` (stored as float16) and int64 labels ``(n, H, W)`` at the
    evaluation resolution (-1 = ignore).

    Attributes:
        path: the local path (absolute) or URL of the store.
        mode: ``"r"`` (read only) or ``"r+"`` (writable).

    Examples:
        >>> import numpy as np
        >>> fs = FeatureStore.create("memory://doc/store", n_images=2, grid=(2, 2), dim=3,
        ...                          label_shape=(4, 4), provenance={"n_classes": 2},
        ...                          chunk_images=2, overwrite=True)
        >>> fs.write_block(0, np.ones((2, 2, 2, 3)), np.zeros((2, 4, 4), int), ["a", "b"])
        >>> fs.mark_complete()
        >>> store = FeatureStore.open("memory://doc/store")
        >>> store.tokens(slice(0, 2)).shape, store.ids
        ((2, 2, 2, 3), ['a', 'b'])
    """

    def __init__(self, group, path: str, mode: str) -> None:
        self._group = group
        self.path = path
        self.mode = mode
        attrs = dict(group.attrs)
        if attrs.get("format") != FORMAT:
            raise ValueError(
                f"{path}: not a stego_probe feature store (zarr group attribute format="
                f"{attrs.get('format')!r}, expected {FORMAT!r})"
            )
        version = attrs.get("format_version")
        if version not in READABLE_FORMAT_VERSIONS:
            raise ValueError(
                f"{path}: feature store format version {version!r} is not supported by this "
                f"stego_probe (expected one of {list(READABLE_FORMAT_VERSIONS)}); re-extract "
                f"the store"
            )
        self._attrs = attrs
        self._version = int(version)
        layout = attrs.get("layout")
        if not isinstance(layout, Mapping):
            raise StoreCorruptError(
                path, f"zarr.json attribute 'layout': expected an object, got {layout!r}"
            )

        def get(key, conv, *, default=None, required=True):
            if key not in layout:
                if required:
                    raise StoreCorruptError(path, f"layout attribute {key!r} is missing")
                return default
            try:
                return conv(layout[key])
            except (TypeError, ValueError, IndexError) as e:
                raise StoreCorruptError(
                    path, f"layout attribute {key}={layout[key]!r} is malformed ({e})"
                ) from None

        def pos_int(v):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError("expected a positive int")
            return int(v)

        def pair(v):
            if not isinstance(v, list | tuple) or len(v) != 2:
                raise ValueError("expected [int, int]")
            return (pos_int(v[0]), pos_int(v[1]))

        self._n_images = get("n_images", pos_int)
        self._grid = get("grid", pair)
        self._dim = get("dim", pos_int)
        self._label_shape = get("label_shape", pair)
        self._chunk_images = get("chunk_images", pos_int)
        self._shard_images = get(
            "shard_images", lambda v: None if v is None else pos_int(v), required=False
        )
        self._has_flipped = bool(layout.get("flipped", False))
        self._compress_tokens = bool(layout.get("compress_tokens", False))
        self._checksummed = self._version >= 2
        self._checksum_names: list[str] = []
        if self._checksummed:
            cs = layout.get("checksums")
            names = cs.get("arrays") if isinstance(cs, Mapping) else None
            if (
                not isinstance(cs, Mapping)
                or cs.get("algorithm") != CHECKSUM_ALGORITHM
                or not isinstance(names, list)
                or sorted(names) != sorted(self._data_names())
            ):
                raise StoreCorruptError(
                    path,
                    f"layout attribute checksums={cs!r} is malformed (expected "
                    f"{{'algorithm': {CHECKSUM_ALGORITHM!r}, 'arrays': {self._data_names()}}})",
                )
            self._checksum_names = list(names)
        self._ids_cache: list[str] | None = None
        self._arrays: dict = {}
        # Per-handle verification state: blocks whose checksum was checked, per array.
        self._verified: dict[str, set[int]] = {}
        self._verify_lock = threading.Lock()
        self._done_cache: np.ndarray | None = None

    def _data_names(self) -> list[str]:
        """The arrays covered by checksums, in column order of a new store."""
        return [_TOKENS] + ([_FLIPPED] if self._has_flipped else []) + [_LABELS, _IDS]

    # ------------------------------------------------------------------ creation / opening
    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """True when ``path`` holds a zarr group (a feature store or a half-created one)."""
        path = normalize_path(path)
        fs, root = _fs(path)
        return fs.exists(f"{root}/zarr.json")

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        n_images: int,
        grid: tuple[int, int],
        dim: int,
        label_shape: tuple[int, int],
        provenance: Mapping,
        chunk_images: int = 32,
        shard_images: int | None = None,
        flipped: bool = False,
        compress_tokens: bool = False,
        token_dtype: str = "float16",
        overwrite: bool = False,
    ) -> FeatureStore:
        """Create an empty store with all arrays pre-allocated (nothing is marked written).

        Args:
            path: local directory or fsspec URL (``memory://``, ``s3://`` ...).
            n_images: ``N``, the number of images (crops) the store will hold.
            grid: token grid ``(h, w)``.
            dim: token width ``C``.
            label_shape: ``(H, W)`` of the stored labels (the transform's ``res``).
            provenance: JSON-able description of dataset, backbone, transform (stored in the
                group attributes; see ``docs/store.md`` for the keys the extractor writes).
                ``n_classes`` and ``class_names`` are read from here.
            chunk_images: images per zarr chunk (the unit of reading).
            shard_images: if set, images per shard (a multiple of ``chunk_images``); a shard is
                then the unit of writing. ``None``: no sharding, one file per chunk.
            flipped: also allocate ``tokens_flipped``.
            compress_tokens: zstd-compress tokens (float features barely compress; off by
                default because it costs time for ~10% space).
            token_dtype: ``"float16"`` (default; half the disk) or ``"float32"`` (parity runs,
                PROTOCOL §2.7).
            overwrite: replace an existing feature store at ``path``.

        Returns:
            the store, opened ``"r+"``.

        Raises:
            FileExistsError: a store exists at ``path`` and ``overwrite`` is False.
            ValueError: bad sizes, or ``path`` is a non-empty directory that is not a store.
        """
        import zarr

        path = normalize_path(path)
        for name, v in (("n_images", n_images), ("dim", dim), ("chunk_images", chunk_images)):
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if token_dtype not in ("float16", "float32"):
            raise ValueError(f"token_dtype: expected 'float16' or 'float32', got {token_dtype!r}")
        grid = tuple(int(g) for g in grid)
        label_shape = tuple(int(s) for s in label_shape)
        if len(grid) != 2 or min(grid) <= 0:
            raise ValueError(f"grid: expected (h, w) positive ints, got {grid!r}")
        if len(label_shape) != 2 or min(label_shape) <= 0:
            raise ValueError(f"label_shape: expected (H, W) positive ints, got {label_shape!r}")
        if shard_images is not None:
            if shard_images <= 0 or shard_images % chunk_images:
                raise ValueError(
                    f"shard_images: expected a positive multiple of chunk_images="
                    f"{chunk_images}, got {shard_images!r}"
                )
        fs, root = _fs(path)
        if fs.exists(root):
            if fs.exists(f"{root}/zarr.json"):
                if not overwrite:
                    raise FileExistsError(
                        f"{path}: a store exists already; open it with FeatureStore.open or "
                        f"pass overwrite=True (`extract --overwrite`)"
                    )
                try:
                    attrs = _read_meta(fs, root, path, "", "group").get("attributes", {})
                except StoreCorruptError:
                    # an unreadable root zarr.json: overwrite only what looks like our store
                    ours = fs.exists(f"{root}/{_WRITTEN}/zarr.json")
                    attrs = {"format": FORMAT} if ours else {}
                if attrs.get("format") != FORMAT:
                    raise ValueError(
                        f"{path}: holds a zarr group that is not a stego_probe feature store; "
                        f"refusing to overwrite it"
                    )
                fs.rm(root, recursive=True)
            elif fs.isdir(root) and fs.ls(root):
                raise ValueError(
                    f"{path}: exists and is not an empty directory nor a feature store; choose "
                    f"another store path"
                )
        provenance = to_jsonable(dict(provenance))
        n_classes = provenance.get("n_classes")
        layout = {
            "n_images": int(n_images),
            "grid": list(grid),
            "dim": int(dim),
            "label_shape": list(label_shape),
            "chunk_images": int(chunk_images),
            "shard_images": None if shard_images is None else int(shard_images),
            "flipped": bool(flipped),
            "compress_tokens": bool(compress_tokens),
            "token_dtype": token_dtype,
            "label_dtype": "int16" if n_classes is None or n_classes <= 32766 else "int32",
            "checksums": {
                "algorithm": CHECKSUM_ALGORITHM,
                "arrays": [_TOKENS] + ([_FLIPPED] if flipped else []) + [_LABELS, _IDS],
            },
        }
        attrs = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "layout": layout,
            "provenance": provenance,
            "complete": False,
        }
        group = zarr.open_group(path, mode="w", attributes=attrs, zarr_format=3)
        store = cls(group, path, "r+")
        store._ensure_arrays()
        return store

    @classmethod
    def open(
        cls, path: str | os.PathLike, mode: str = "r", allow_incomplete: bool = False
    ) -> FeatureStore:
        """Open an existing store.

        Args:
            path: local directory or fsspec URL.
            mode: ``"r"`` (read only) or ``"r+"`` (resume writing; implies
                ``allow_incomplete``).
            allow_incomplete: read a store whose extraction has not finished; images not yet
                written read as zeros (tokens) and -1 (labels), see :meth:`done_blocks`.

        Raises:
            FileNotFoundError: nothing at ``path``.
            ValueError: not a feature store, or incomplete and ``allow_incomplete`` is False.
        """
        import zarr

        if mode not in ("r", "r+"):
            raise ValueError(f"mode: expected 'r' or 'r+', got {mode!r}")
        path = normalize_path(path)
        if not cls.exists(path):
            raise FileNotFoundError(f"{path}: no feature store there (no zarr.json)")
        fs, root = _fs(path)
        _read_meta(fs, root, path, "", "group")  # a one-line error for a damaged zarr.json
        try:
            group = zarr.open_group(path, mode=mode, zarr_format=3)
        except Exception as e:  # noqa: BLE001 - re-raised naming the file
            raise StoreCorruptError(
                path, f"{_meta_file(path, '')}: zarr cannot open it ({type(e).__name__}: {e})"
            ) from None
        store = cls(group, path, mode)
        store._check_arrays()
        if not store._checksummed:
            if mode == "r+":
                raise ValueError(
                    f"{path}: feature store format version {store._version} (no checksums) "
                    f"cannot be written by this stego_probe; re-extract it with `stego-probe "
                    f"extract ... --overwrite`"
                )
            if path not in _WARNED_UNVERIFIABLE:
                _WARNED_UNVERIFIABLE.add(path)
                warnings.warn(
                    f"{path}: feature store format version {store._version} has no checksums: "
                    f"its content cannot be verified (a damaged chunk may read back as data); "
                    f"re-extract it (`stego-probe extract ... --overwrite`) to add them",
                    UserWarning,
                    stacklevel=2,
                )
        if mode == "r+":
            store._ensure_arrays()
        elif not allow_incomplete and not store.complete:
            done = store.done_blocks()
            raise ValueError(
                f"{path}: feature store is incomplete ({int(done.sum())}/{done.size} blocks "
                f"written); rerun the same `stego-probe extract` command to finish it, or open "
                f"with allow_incomplete=True (Python; `stego-probe info` shows it as it is)"
            )
        return store

    def _check_arrays(self) -> None:
        """Open every array and check it against the ``layout`` attributes (shape, chunks,
        shards, dtype); a mismatch is a :class:`StoreCorruptError` naming the attribute, its
        value and what the array holds. Arrays missing from an incomplete store are allowed
        (a creation killed half-way; ``"r+"`` creates them)."""
        fs, root = _fs(self.path)
        n, (h, w), c, (H, W) = self._n_images, self._grid, self._dim, self._label_shape
        ci, si, nb = self._chunk_images, self._shard_images, self.n_blocks
        lay = self._attrs["layout"]
        names = [_TOKENS, _LABELS, _IDS, _WRITTEN]
        if self._has_flipped:
            names.insert(1, _FLIPPED)
        if self._checksummed:
            names.append(_CHECKSUMS)
        complete = bool(self._attrs.get("complete", False))
        for name in names:
            if not fs.exists(f"{root}/{name}/zarr.json"):
                if complete:
                    raise StoreCorruptError(
                        self.path, f"array {name} is missing ({_meta_file(self.path, name)})"
                    )
                continue
            _read_meta(fs, root, self.path, name, "array")
            try:
                arr = self._arrays[name] = self._group[name]
            except Exception as e:  # noqa: BLE001 - re-raised naming the file
                raise StoreCorruptError(
                    self.path,
                    f"{_meta_file(self.path, name)}: zarr cannot open it ({type(e).__name__}: "
                    f"{e}); expected zarr v3 array metadata",
                ) from None
            shape, chunks, shards = tuple(arr.shape), tuple(arr.chunks), arr.shards

            def bad(attr, value, holds, name=name, shape=shape):
                raise StoreCorruptError(
                    self.path,
                    f"layout attribute {attr}={value!r} does not match array {name}: it holds "
                    f"{holds} (shape {shape}); the zarr.json attributes were edited or the "
                    f"array replaced",
                )

            if name in (_TOKENS, _FLIPPED):
                if len(shape) != 4:
                    bad("dim", c, f"a {len(shape)}-d array, expected (N, h, w, C)")
                if shape[0] != n:
                    bad("n_images", n, f"{shape[0]} images")
                if shape[1:3] != (h, w):
                    bad("grid", lay["grid"], f"a {shape[1]}x{shape[2]} token grid")
                if shape[3] != c:
                    bad("dim", c, f"tokens of width {shape[3]}")
                if chunks[0] != ci:
                    bad("chunk_images", ci, f"chunks of {chunks[0]} images")
                if (None if shards is None else shards[0]) != si:
                    got = "no shards" if shards is None else f"shards of {shards[0]} images"
                    bad("shard_images", si, got)
                tdt = lay.get("token_dtype", "float16")
                if str(arr.dtype) != tdt:
                    bad("token_dtype", tdt, f"{arr.dtype} tokens")
            elif name == _LABELS:
                if len(shape) != 3:
                    bad("label_shape", lay["label_shape"], f"a {len(shape)}-d array")
                if shape[0] != n:
                    bad("n_images", n, f"{shape[0]} label maps")
                if shape[1:] != (H, W):
                    bad("label_shape", lay["label_shape"], f"{shape[1]}x{shape[2]} label maps")
                if chunks[0] != ci:
                    bad("chunk_images", ci, f"chunks of {chunks[0]} images")
            elif name == _IDS:
                if shape != (n,):
                    bad("n_images", n, f"{shape[0] if shape else 0} ids")
                if chunks != (self.block_images,):
                    bad("chunk_images", ci, f"id chunks of {chunks[0]}")
            elif name == _WRITTEN:
                if shape != (nb,):
                    bad(
                        "n_images",
                        n,
                        f"{shape[0] if shape else 0} block markers; n_images / chunk_images / "
                        f"shard_images give {nb} blocks",
                    )
            elif name == _CHECKSUMS:
                k = len(self._checksum_names)
                if shape != (nb, k) or chunks != (1, k):
                    bad(
                        "checksums",
                        lay.get("checksums"),
                        f"chunks {chunks}; expected shape ({nb}, {k}) with chunks (1, {k})",
                    )

    def _ensure_arrays(self) -> None:
        """Create any array missing from the group (a creation killed half-way)."""
        from zarr.codecs import ZstdCodec

        # membership tests, not listing: listing warns about the non-zarr _SUCCESS file
        existing = {
            name
            for name in (_TOKENS, _FLIPPED, _LABELS, _IDS, _WRITTEN, _CHECKSUMS)
            if name in self._group
        }
        n, (h, w), c = self._n_images, self._grid, self._dim
        ci, si = self._chunk_images, self._shard_images
        bi = self.block_images
        tok_comp = ZstdCodec(level=1) if self._compress_tokens else None
        specs = {
            _TOKENS: dict(
                shape=(n, h, w, c),
                dtype=self._attrs["layout"].get("token_dtype", "float16"),
                compressors=tok_comp,
                fill_value=0,
            ),
            _LABELS: dict(
                shape=(n, *self._label_shape),
                dtype=self._attrs["layout"].get("label_dtype", "int16"),
                compressors=ZstdCodec(level=3),
                fill_value=IGNORE,
            ),
            _IDS: dict(shape=(n,), dtype=str, fill_value=""),
        }
        if self._has_flipped:
            specs[_FLIPPED] = dict(specs[_TOKENS])
        for name, spec in specs.items():
            if name in existing:
                continue
            rest = spec["shape"][1:]
            self._group.create_array(
                name,
                chunks=(ci, *rest) if name != _IDS else (bi,),
                shards=(si, *rest) if (si and name != _IDS) else None,
                **spec,
            )
        if self._checksummed and _CHECKSUMS not in existing:
            k = len(self._checksum_names)
            self._group.create_array(
                _CHECKSUMS,
                shape=(self.n_blocks, k),
                chunks=(1, k),
                dtype="int64",
                fill_value=_NO_CHECKSUM,
                compressors=None,
            )
        if _WRITTEN not in existing:
            self._group.create_array(
                _WRITTEN,
                shape=(self.n_blocks,),
                chunks=(1,),
                dtype="bool",
                fill_value=False,
                compressors=None,
            )

    # ------------------------------------------------------------------ properties
    @property
    def n_images(self) -> int:
        """``N``, the number of images (crops) in the store."""
        return self._n_images

    def __len__(self) -> int:
        return self._n_images

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(h, w)``."""
        return self._grid

    @property
    def dim(self) -> int:
        """Token width ``C``."""
        return self._dim

    @property
    def label_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the stored labels."""
        return self._label_shape

    @property
    def chunk_images(self) -> int:
        """Images per zarr chunk (the unit of reading)."""
        return self._chunk_images

    @property
    def block_images(self) -> int:
        """Images per block, the unit of writing (the shard when sharded, else the chunk)."""
        return int(self._shard_images or self._chunk_images)

    @property
    def n_blocks(self) -> int:
        """Number of blocks, ``ceil(N / block_images)``."""
        return math.ceil(self._n_images / self.block_images)

    @property
    def has_flipped(self) -> bool:
        """Whether the store holds ``tokens_flipped``."""
        return self._has_flipped

    @property
    def provenance(self) -> dict:
        """The provenance dict written at creation (JSON types: tuples are lists)."""
        return dict(self._attrs.get("provenance", {}))

    @property
    def n_classes(self) -> int | None:
        """``K`` from the provenance (None if unknown)."""
        k = self._attrs.get("provenance", {}).get("n_classes")
        return None if k is None else int(k)

    @property
    def class_names(self) -> list[str] | None:
        """Class names from the provenance (None if unknown)."""
        names = self._attrs.get("provenance", {}).get("class_names")
        return None if names is None else list(names)

    @property
    def complete(self) -> bool:
        """True once every block is written and the ``_SUCCESS`` marker exists."""
        fs, root = _fs(self.path)
        return bool(self._group.attrs.get("complete", False)) and fs.exists(
            f"{root}/{SUCCESS_MARKER}"
        )

    @property
    def ids(self) -> list[str]:
        """The ``N`` sample ids in store order (``""`` for images not written yet)."""
        if self._ids_cache is None or self.mode == "r+":
            ids = [str(s) for s in self._read_range(_IDS, 0, self._n_images).tolist()]
            if self.mode == "r":
                self._ids_cache = ids
            return ids
        return list(self._ids_cache)

    def _arr(self, name: str):
        """The zarr array ``name`` (opened once and cached)."""
        arr = self._arrays.get(name)
        if arr is None:
            arr = self._arrays[name] = self._group[name]
        return arr

    def done_blocks(self) -> np.ndarray:
        """bool array (n_blocks,): which blocks are completely written."""
        if _WRITTEN not in self._arrays and _WRITTEN not in self._group:
            return np.zeros(self.n_blocks, dtype=bool)  # creation was interrupted
        return np.asarray(self._arr(_WRITTEN)[:], dtype=bool)

    def block_range(self, b: int) -> tuple[int, int]:
        """Image range ``[start, stop)`` of block ``b``."""
        if not 0 <= b < self.n_blocks:
            raise IndexError(f"{self.path}: block {b} out of range [0, {self.n_blocks})")
        start = b * self.block_images
        return start, min(start + self.block_images, self._n_images)

    def __repr__(self) -> str:
        p = self._attrs.get("provenance", {})
        return (
            f"FeatureStore({self.path!r}, n_images={self._n_images}, grid={self._grid}, "
            f"dim={self._dim}, backbone={p.get('backbone')!r}, complete={self.complete})"
        )

    # ------------------------------------------------------------------ writing
    def write_block(
        self,
        b: int,
        tokens: np.ndarray,
        labels: np.ndarray,
        ids: Sequence[str],
        tokens_flipped: np.ndarray | None = None,
    ) -> None:
        """Write block ``b`` completely, then mark it written.

        Args:
            b: block index in ``[0, n_blocks)``.
            tokens: (m, h, w, C) float (cast to float16), ``m`` = size of block ``b``.
            labels: (m, H, W) int, -1 = ignore.
            ids: ``m`` sample ids.
            tokens_flipped: (m, h, w, C) float, required iff the store has ``tokens_flipped``.
        """
        if self.mode != "r+":
            raise ValueError(f"{self.path}: store is opened read-only (mode={self.mode!r})")
        start, stop = self.block_range(b)
        m = stop - start
        exp_t = (m, *self._grid, self._dim)
        exp_l = (m, *self._label_shape)
        tokens = np.asarray(tokens)
        labels = np.asarray(labels)
        if tokens.shape != exp_t:
            raise ValueError(f"{self.path}: block {b} tokens: expected {exp_t}, got {tokens.shape}")
        if labels.shape != exp_l:
            raise ValueError(f"{self.path}: block {b} labels: expected {exp_l}, got {labels.shape}")
        if len(ids) != m:
            raise ValueError(f"{self.path}: block {b} ids: expected {m}, got {len(ids)}")
        if self._has_flipped != (tokens_flipped is not None):
            raise ValueError(
                f"{self.path}: tokens_flipped must be given iff the store was created with "
                f"flipped=True (it was created with flipped={self._has_flipped})"
            )
        if tokens_flipped is not None:
            tokens_flipped = np.asarray(tokens_flipped)
            if tokens_flipped.shape != exp_t:
                raise ValueError(
                    f"{self.path}: block {b} tokens_flipped: expected {exp_t}, got "
                    f"{tokens_flipped.shape}"
                )
        tdtype = self._arr(_TOKENS).dtype
        data = {_TOKENS: tokens.astype(tdtype, copy=False)}
        if tokens_flipped is not None:
            data[_FLIPPED] = tokens_flipped.astype(tdtype, copy=False)
        data[_LABELS] = labels.astype(self._arr(_LABELS).dtype, copy=False)
        data[_IDS] = np.asarray([str(i) for i in ids], dtype=object)
        for name, values in data.items():
            self._arr(name)[start:stop] = values
            self._forget(name, b)
        # Then the checksums of exactly what was written, then the marker: a block is
        # "written" only once all of its data and its checksums are.
        if self._checksummed:
            row = np.asarray([block_checksum(data[nm]) for nm in self._checksum_names], np.int64)
            self._arr(_CHECKSUMS)[b] = row
        self._arr(_WRITTEN)[b] = True

    def invalidate_blocks(self, blocks: Sequence[int]) -> None:
        """Mark ``blocks`` not written (``"r+"`` only), so that the next extraction into this
        store (``stego-probe extract`` with the store's inputs) recomputes exactly them.

        The store is marked incomplete first (attribute and ``_SUCCESS``), then each block's
        marker and checksums are cleared and its chunk (or shard) files deleted, so a damaged
        file never survives into the re-extracted block.

        Args:
            blocks: block indices in ``[0, n_blocks)``.
        """
        if self.mode != "r+":
            raise ValueError(f"{self.path}: store is opened read-only (mode={self.mode!r})")
        blocks = sorted({int(b) for b in blocks})
        for b in blocks:
            self.block_range(b)  # IndexError for a bad block
        if not blocks:
            return
        fs, root = _fs(self.path)
        self._group.attrs["complete"] = False
        self._attrs["complete"] = False
        if fs.exists(f"{root}/{SUCCESS_MARKER}"):
            fs.rm(f"{root}/{SUCCESS_MARKER}")
        for b in blocks:
            self._arr(_WRITTEN)[b] = False
            if self._checksummed:
                self._arr(_CHECKSUMS)[b] = _NO_CHECKSUM
            for name in self._data_names():
                self._forget(name, b)
                key = self._block_key(name, b)
                if fs.exists(key):
                    fs.rm(key)
        self._done_cache = None

    def _block_key(self, name: str, b: int) -> str:
        """fsspec path of the file (chunk or shard) holding block ``b`` of array ``name``."""
        _, root = _fs(self.path)
        arr = self._arr(name)
        coords = (b,) + (0,) * (len(arr.shape) - 1)
        return f"{root}/{name}/{arr.metadata.encode_chunk_key(coords)}"

    def mark_complete(self) -> None:
        """Mark the store complete (attribute + ``_SUCCESS`` file); all blocks must be written."""
        if self.mode != "r+":
            raise ValueError(f"{self.path}: store is opened read-only (mode={self.mode!r})")
        done = self.done_blocks()
        if not done.all():
            missing = np.flatnonzero(~done)[:10].tolist()
            raise ValueError(
                f"{self.path}: cannot mark complete, blocks {missing} "
                f"({int((~done).sum())} in all) are not written"
            )
        self._group.attrs["complete"] = True
        self._attrs["complete"] = True
        fs, root = _fs(self.path)
        fs.pipe_file(f"{root}/{SUCCESS_MARKER}", b"")

    # ------------------------------------------------------------------ verification
    def _forget(self, name: str, b: int) -> None:
        with self._verify_lock:
            self._verified.get(name, set()).discard(b)

    def _corrupt(self, name: str, b: int, reason: str) -> StoreCorruptError:
        return StoreCorruptError(self.path, reason, array=name, block=b, images=self.block_range(b))

    def _get(self, name: str, lo: int, hi: int) -> np.ndarray:
        """``arr[lo:hi]`` of array ``name``; a chunk zarr cannot decode (truncated, garbled)
        is a :class:`StoreCorruptError` naming the block that fails."""
        arr = self._arr(name)
        try:
            return arr[lo:hi]
        except Exception as e:  # noqa: BLE001 - re-raised naming store, array and images
            first = e
        bi = self.block_images
        for b in range(lo // bi, (max(hi, lo + 1) - 1) // bi + 1):
            s, t = self.block_range(b)
            try:
                arr[max(s, lo) : min(t, hi)]
            except Exception as e:  # noqa: BLE001
                raise self._corrupt(
                    name, b, f"its chunk cannot be decoded ({type(e).__name__}: {e})"
                ) from None
        raise StoreCorruptError(
            self.path, f"array {name} images {lo}..{hi - 1} cannot be read ({first})"
        ) from first

    def _done(self, strict: bool = False) -> np.ndarray:
        """``done_blocks()``, read once per read-only handle. Reads of a complete store skip
        the markers (every block must be written; the checksums cover the data) unless
        ``strict`` (``verify`` checks the markers too)."""
        if not strict and self.mode == "r" and self._attrs.get("complete"):
            return np.ones(self.n_blocks, dtype=bool)
        if self.mode == "r+" or self._done_cache is None:
            done = self.done_blocks()
            if self.mode == "r+":
                return done
            self._done_cache = done
        return self._done_cache

    def _check_block_data(
        self, name: str, b: int, data: np.ndarray, strict: bool = False
    ) -> str | None:
        """Why block ``b`` of array ``name`` (its decoded content ``data``) is damaged, or
        None when it matches its checksum (or is an unwritten block of an incomplete store,
        which reads as fill values by design)."""
        if not self._done(strict)[b] and self._done_cache is not None:
            self._done_cache = None  # another process may have written it since: look again
        if not self._done(strict)[b]:
            if self._attrs.get("complete"):
                return "the store is marked complete but this block has no written marker"
            return None
        if not self._checksummed:
            return None
        row = np.asarray(self._arr(_CHECKSUMS)[b])
        expected = int(row[self._checksum_names.index(name)])
        if expected == _NO_CHECKSUM:
            return "its checksum is missing (the checksums chunk was deleted or never written)"
        got = block_checksum(data)
        if got == expected:
            return None
        fs, _ = _fs(self.path)
        why = f"checksum mismatch (stored {expected:08x}, content {got:08x})"
        if not fs.exists(self._block_key(name, b)):
            why += "; its chunk file is missing (it reads back as fill values)"
        return why

    def _verify(self, name: str, b: int, data: np.ndarray) -> None:
        reason = self._check_block_data(name, b, data)
        if reason is not None:
            raise self._corrupt(name, b, reason)
        if not self._done()[b]:
            return  # unwritten (incomplete store): nothing compared, so not "verified"
        with self._verify_lock:
            self._verified.setdefault(name, set()).add(b)

    def _unverified(self, name: str, b0: int, b1: int) -> list[int]:
        if not self._checksummed:
            return []
        done = self._verified.get(name, set())
        return [b for b in range(b0, b1 + 1) if b not in done]

    def _read_range(self, name: str, lo: int, hi: int) -> np.ndarray:
        """Images ``[lo, hi)`` of array ``name``, every block they touch verified (once per
        handle). A block not verified yet is read whole (what zarr decodes anyway, for
        unsharded stores), checksummed, and the requested part returned."""
        if hi <= lo:
            return self._get(name, lo, lo)
        bi = self.block_images
        todo = self._unverified(name, lo // bi, (hi - 1) // bi)
        if not todo:
            return self._get(name, lo, hi)
        rlo = min(lo, todo[0] * bi)
        rhi = max(hi, min(self._n_images, (todo[-1] + 1) * bi))
        data = self._get(name, rlo, rhi)
        for b in todo:
            s, t = self.block_range(b)
            self._verify(name, b, data[s - rlo : t - rlo])
        return data[lo - rlo : hi - rlo]

    def _verify_blocks(self, name: str, blocks: Iterator[int] | Sequence[int]) -> None:
        """Verify ``blocks`` of array ``name`` (those not verified by this handle yet)."""
        if not self._checksummed:
            return
        for b in sorted(set(int(x) for x in blocks)):
            if b not in self._verified.get(name, set()):
                s, t = self.block_range(b)
                self._verify(name, b, self._get(name, s, t))

    def check_block(self, b: int) -> list[tuple[str, str]]:
        """Check block ``b`` of every array: decode, checksum, written marker.

        Used by :func:`stego_probe.verify.verify_store`; does not raise for damage.

        Returns:
            ``[(array, reason), ...]`` for the damaged arrays of the block (empty when the block
            is intact). Format-1 stores (no checksums) report decode errors, and chunk files
            missing from written blocks (they read back as fill values).
        """
        s, t = self.block_range(b)
        problems = []
        fs, _ = _fs(self.path)
        for name in self._data_names():
            try:
                data = self._get(name, s, t)
            except StoreCorruptError as e:
                problems.append((name, e.reason))
                continue
            reason = self._check_block_data(name, b, data, strict=True)
            if reason is None and not self._checksummed and self._done(True)[b]:
                if not fs.exists(self._block_key(name, b)):
                    reason = (
                        "its chunk file is missing (it reads back as fill values; without "
                        "checksums an intact all-fill block cannot be told apart)"
                    )
            if reason is not None:
                problems.append((name, reason))
            else:
                with self._verify_lock:
                    self._verified.setdefault(name, set()).add(b)
        return problems

    @property
    def checksummed(self) -> bool:
        """Whether the store has per-block checksums (format version 2 and later)."""
        return self._checksummed

    # ------------------------------------------------------------------ reading
    def _resolve(self, idx: Index) -> tuple[slice | None, np.ndarray | None]:
        """Index -> (contiguous slice, None) or (None, int64 array of indices)."""
        n = self._n_images
        if isinstance(idx, int | np.integer) and not isinstance(idx, bool):
            i = int(idx)
            if not -n <= i < n:
                raise IndexError(f"{self.path}: image index {i} out of range [0, {n})")
            i %= n
            return slice(i, i + 1), None
        if isinstance(idx, slice):
            start, stop, step = idx.indices(n)
            if step == 1:
                return slice(start, max(start, stop)), None
            return None, np.arange(start, stop, step, dtype=np.int64)
        arr = np.asarray(idx)
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise ValueError(f"{self.path}: boolean index must have shape ({n},)")
            return None, np.flatnonzero(arr)
        if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(
                f"{self.path}: index: expected an int, a slice or a 1-D int array, got "
                f"{arr.dtype} array of shape {arr.shape}"
            )
        arr = arr.astype(np.int64)
        if arr.size and (arr.min() < -n or arr.max() >= n):
            raise IndexError(f"{self.path}: image index out of range [0, {n})")
        return None, arr % n if arr.size else arr

    def _read(self, name: str, idx: Index) -> np.ndarray:
        arr = self._arr(name)
        sl, ind = self._resolve(idx)
        if sl is not None:
            return self._read_range(name, sl.start, sl.stop)
        if ind.size == 0:
            return np.empty((0, *arr.shape[1:]), dtype=arr.dtype)
        uniq, inv = np.unique(ind, return_inverse=True)
        if uniq[-1] - uniq[0] + 1 == uniq.size:
            data = self._read_range(name, int(uniq[0]), int(uniq[-1]) + 1)
        else:
            self._verify_blocks(name, np.unique(uniq // self.block_images).tolist())
            try:
                data = arr.oindex[uniq]
            except Exception:  # noqa: BLE001 - locate the undecodable block
                for b in np.unique(uniq // self.block_images).tolist():
                    self._get(name, *self.block_range(b))
                raise
        return data[inv]

    def tokens(self, idx: Index, flipped: bool = False) -> np.ndarray:
        """Tokens of images ``idx``.

        Args:
            idx: int, slice, 1-D int array or (N,) bool mask.
            flipped: read ``tokens_flipped`` (features of the flipped image, flipped back).

        Returns:
            float32 array (n, h, w, C); an int ``idx`` gives n = 1.
        """
        name = self._flipped_name() if flipped else _TOKENS
        return to_float32(self._read(name, idx))

    def _flipped_name(self) -> str:
        if not self._has_flipped:
            raise ValueError(
                f"{self.path}: store has no tokens_flipped; extract with flipped=True (CLI: "
                f"--flipped) for the evaluation-mode flip average"
            )
        return _FLIPPED

    def labels(self, idx: Index) -> np.ndarray:
        """Labels of images ``idx``: int64 array (n, H, W), classes in ``[0, K)``, -1 = ignore."""
        return self._read(_LABELS, idx).astype(np.int64)

    def token_labels(self, idx: Index) -> np.ndarray:
        """Labels pooled to the token grid: int64 array (n, h, w).

        Per-cell majority over the valid pixels under each token, -1 where a cell has no valid
        pixel (see :func:`pool_labels`; an approximation of a token's class).
        """
        return pool_labels(self._read(_LABELS, idx), self._grid, self.n_classes)

    def _chunk_reader(
        self, names: Sequence[str], start: int, stop: int, step: int
    ) -> Iterator[tuple[int, int, list[np.ndarray]]]:
        """Read ``names`` in ranges ``[s, s + step)`` with one range prefetched in a thread;
        the first array (tokens) comes back as float32, the others as int64."""
        ranges = [(s, min(s + step, stop)) for s in range(start, stop, step)]
        if not ranges:
            return

        def read(r):
            # converted here, in the prefetch thread, overlapping with the consumer
            t = to_float32(self._read_range(names[0], r[0], r[1]))
            return [t] + [self._read_range(nm, r[0], r[1]).astype(np.int64) for nm in names[1:]]

        with ThreadPoolExecutor(max_workers=1) as pool:
            fut = pool.submit(read, ranges[0])
            for k, r in enumerate(ranges):
                data = fut.result()
                if k + 1 < len(ranges):
                    fut = pool.submit(read, ranges[k + 1])
                yield r[0], r[1], data

    def iter_batches(
        self,
        batch_size: int,
        progress: bool = False,
        flipped: bool = False,
        start: int = 0,
        stop: int | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        """Iterate over the store in order, lazily, chunk by chunk (the next read is prefetched).

        Args:
            batch_size: images per batch (the last batch may be smaller); independent of the
                chunk size, so any batch size yields the same concatenated arrays.
            progress: show a tqdm bar.
            flipped: yield ``tokens_flipped`` in place of ``tokens``. For the evaluation-mode
                flip average iterate ``zip(s.iter_batches(b), s.iter_batches(b, flipped=True))``.
            start, stop: image range to iterate (default: all).

        Yields:
            ``(tokens float32 (b, h, w, C), labels int64 (b, H, W), ids list[str])``.
        """
        if not isinstance(batch_size, int | np.integer) or batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        stop = self._n_images if stop is None else min(int(stop), self._n_images)
        start = max(0, int(start))
        tok_name = self._flipped_name() if flipped else _TOKENS
        ci = self._chunk_images
        # Read whole chunks, at least one batch at a time, aligned to chunk boundaries.
        step = ci * max(1, math.ceil(batch_size / ci))
        first = (start // ci) * ci
        ids_all = self.ids
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=max(0, stop - start), unit="img", desc="read store")
        buf_t: list[np.ndarray] = []
        buf_l: list[np.ndarray] = []
        buffered = 0
        pos = start  # first image index not yet yielded
        try:
            for s, e, (t, lab) in self._chunk_reader([tok_name, _LABELS], first, stop, step):
                lo = max(s, start)
                t, lab = t[lo - s :], lab[lo - s :]
                buf_t.append(t)
                buf_l.append(lab)
                buffered += e - lo
                while buffered >= batch_size or (e >= stop and buffered > 0):
                    take = min(batch_size, buffered)
                    bt = np.concatenate(buf_t) if len(buf_t) > 1 else buf_t[0]
                    bl = np.concatenate(buf_l) if len(buf_l) > 1 else buf_l[0]
                    yield (
                        bt[:take],
                        bl[:take],
                        ids_all[pos : pos + take],
                    )
                    if bar is not None:
                        bar.update(take)
                    buffered -= take
                    buf_t, buf_l = ([bt[take:]], [bl[take:]]) if buffered else ([], [])
                    pos += take
        finally:
            if bar is not None:
                bar.close()

    def sample_tokens(
        self,
        n: int,
        seed: int = 0,
        with_labels: bool = False,
        images: int | Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """A seeded uniform sample of tokens, reading only the chunks that hold them.

        Tokens are drawn uniformly without replacement from all ``h * w`` tokens of the chosen
        images; only the chunks containing drawn tokens are read, one at a time, so memory
        stays at one chunk plus the output.

        Args:
            n: number of tokens; if it exceeds the available tokens, all of them are returned
                (in random order).
            seed: random seed; the same seed gives the same tokens in the same order.
            with_labels: also return each token's label (:meth:`token_labels` of its cell).
            images: which images to draw from: ``None`` all; an int ``k``: ``k`` images chosen
                at random with ``seed`` (the reference fits PCA on "the first 5,000 images" of a
                shuffled cache, PROTOCOL §6.2); an index array: those images.

        Returns:
            float32 array (n, C) [, int64 array (n,) of token labels, -1 = no valid pixel].
        """
        img, cell = _draw_tokens(
            n, seed, self._n_images, self._grid, images, lambda i: self._resolve(i)[1]
        )
        n, hw = img.size, self._grid[0] * self._grid[1]
        out = np.empty((n, self._dim), dtype=np.float32)
        lab_out = np.empty(n, dtype=np.int64) if with_labels else None
        ci = self._chunk_images
        chunk = img // ci
        order = np.argsort(chunk, kind="stable")
        bounds = np.flatnonzero(np.diff(chunk[order])) + 1
        for pos in np.split(order, bounds):
            if pos.size == 0:
                continue
            lo, hi = int(img[pos].min()), int(img[pos].max()) + 1
            t = np.asarray(self._read_range(_TOKENS, lo, hi)).reshape(hi - lo, hw, self._dim)
            out[pos] = t[img[pos] - lo, cell[pos]]
            if lab_out is not None:
                tl = pool_labels(self._read_range(_LABELS, lo, hi), self._grid, self.n_classes)
                lab_out[pos] = tl.reshape(hi - lo, hw)[img[pos] - lo, cell[pos]]
        if with_labels:
            return out, lab_out
        return out

    # ------------------------------------------------------------------ summary
    def size_bytes(self) -> int:
        """Bytes the store occupies (sum of its files / objects)."""
        fs, root = _fs(self.path)
        return int(fs.du(root, total=True))

    def info(self) -> dict:
        """A JSON-able summary: sizes, layout, completeness, key provenance, bytes on disk."""
        p = self.provenance
        done = self.done_blocks()
        return {
            "path": self.path,
            "n_images": self._n_images,
            "grid": list(self._grid),
            "dim": self._dim,
            "label_shape": list(self._label_shape),
            "complete": self.complete,
            "blocks_written": int(done.sum()),
            "n_blocks": int(done.size),
            "chunk_images": self._chunk_images,
            "shard_images": self._shard_images,
            "flipped": self._has_flipped,
            "dataset": p.get("dataset"),
            "split": p.get("split"),
            "backbone": p.get("backbone"),
            "weights": p.get("weights"),
            "weights_sha256": p.get("weights_sha256"),
            "res": p.get("res"),
            "crop": p.get("crop"),
            "n_classes": self.n_classes,
            "class_names": self.class_names,
            "size_bytes": self.size_bytes(),
        }


# ---------------------------------------------------------------------------------------------
# the store contract: what every reader of tokens needs
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class TokenStore(Protocol):
    """The read interface every consumer of a store relies on (projections, probes, evaluation,
    STEGO training, sweeps). :class:`FeatureStore` (on disk) and :class:`ArrayStore` (in memory)
    implement it; :func:`is_store` is the check used to tell a store from an array.

    Attributes:
        n_images: ``N``.
        grid: token grid ``(h, w)``.
        dim: token width ``C``.
        label_shape: label resolution ``(H, W)``.
        n_classes: ``K`` (None when not recorded).
        ids: the ``N`` sample ids.
        provenance: JSON-able dict (backbone, weights_sha256, dataset, split, n_classes, ...).
        path: where the store lives (None for an in-memory store); names it in messages.
    """

    n_images: int
    grid: tuple[int, int]
    dim: int
    label_shape: tuple[int, int]
    n_classes: int | None
    ids: list[str]
    provenance: dict
    path: str | None

    def tokens(self, idx: Index) -> np.ndarray:
        """float32 (n, h, w, C) tokens of images ``idx`` (int, slice or int array)."""
        ...

    def labels(self, idx: Index) -> np.ndarray:
        """int64 (n, H, W) labels, -1 = ignore."""
        ...

    def token_labels(self, idx: Index) -> np.ndarray:
        """int64 (n, h, w) labels pooled to the token grid (:func:`pool_labels`)."""
        ...

    def iter_batches(
        self, batch_size: int, progress: bool = False, flipped: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        """``(tokens (b, h, w, C), labels (b, H, W), ids)`` in order."""
        ...

    def sample_tokens(
        self, n: int, seed: int = 0, with_labels: bool = False, images=None
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """A seeded uniform sample of tokens, float32 (n, C) [, int64 token labels (n,)]."""
        ...


def is_store(obj) -> bool:
    """True if ``obj`` is a store (:class:`TokenStore`) rather than an array: it has
    ``n_images`` and a callable ``tokens(idx) -> (n, h, w, C)``, the least every store reader
    uses. Arrays, tensors and None are not stores.

    Examples:
        >>> is_store(ArrayStore(np.zeros((2, 1, 1, 3)))), is_store(np.zeros((2, 3)))
        (True, False)
    """
    return hasattr(obj, "n_images") and callable(getattr(obj, "tokens", None))


class ArrayStore:
    """An in-memory store: the :class:`TokenStore` interface over arrays.

    Args:
        tokens: (N, h, w, C) tokens (kept as given, read back as float32; float16 halves the
            memory).
        labels: optional (N, H, W) int labels, -1 = ignore; without labels every pixel is
            ignored (label shape = token grid).
        n_classes: ``K`` (also recorded in the default provenance).
        ids: N sample ids (default ``"0" .. "N-1"``).
        provenance: provenance dict (default ``{"n_classes": n_classes}``).
        path: names the store the arrays were read from in messages (None: "in-memory").

    Examples:
        >>> s = ArrayStore(np.ones((4, 2, 2, 3)), np.zeros((4, 4, 4), int), n_classes=2)
        >>> s.tokens([0, 1]).shape, s.token_labels(0).shape, s.sample_tokens(5).shape
        ((2, 2, 2, 3), (1, 2, 2), (5, 3))
    """

    has_flipped = False

    def __init__(self, tokens, labels=None, n_classes=None, ids=None, provenance=None, path=None):
        t = np.asarray(tokens)
        if t.ndim != 4:
            raise ValueError(f"tokens: expected (N, h, w, C), got shape {t.shape}")
        self._tokens = t
        self._labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        if self._labels is not None and (self._labels.ndim != 3 or len(self._labels) != len(t)):
            raise ValueError(f"labels: expected ({len(t)}, H, W), got shape {self._labels.shape}")
        self.n_images, self.grid, self.dim = len(t), tuple(t.shape[1:3]), int(t.shape[3])
        self.n_classes = n_classes
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(t))]
        self.provenance = dict(provenance or {"n_classes": n_classes})
        self.class_names = self.provenance.get("class_names")
        self.label_shape = self.grid if self._labels is None else tuple(self._labels.shape[1:])
        self.path = path

    def __len__(self) -> int:
        return self.n_images

    def __repr__(self) -> str:
        return (
            f"ArrayStore(n_images={self.n_images}, grid={self.grid}, dim={self.dim}, "
            f"label_shape={self.label_shape})"
        )

    @staticmethod
    def _index(idx):
        return [idx] if isinstance(idx, int | np.integer) else idx

    def tokens(self, idx: Index, flipped: bool = False) -> np.ndarray:
        """(n, h, w, C) float32 tokens of images ``idx`` (int, slice or int array)."""
        if flipped:
            raise ValueError(f"{self!r}: an ArrayStore has no tokens_flipped")
        return np.array(self._tokens[self._index(idx)], dtype=np.float32)  # a copy

    def labels(self, idx: Index) -> np.ndarray:
        """(n, H, W) int64 labels of images ``idx`` (all -1 without labels)."""
        idx = self._index(idx)
        if self._labels is None:
            return np.full((len(self._tokens[idx]), *self.label_shape), -1, dtype=np.int64)
        return np.array(self._labels[idx])  # a copy

    def token_labels(self, idx: Index) -> np.ndarray:
        """(n, h, w) int64 labels pooled to the token grid (the labels as they are when they
        are at token resolution already)."""
        lab = self.labels(idx)
        if tuple(lab.shape[1:]) == tuple(self.grid):
            return lab
        return pool_labels(lab, self.grid, self.n_classes)

    def iter_batches(
        self,
        batch_size: int,
        progress: bool = False,
        flipped: bool = False,
        start: int = 0,
        stop: int | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        """``(tokens float32 (b, h, w, C), labels int64 (b, H, W), ids)`` in order, as
        :meth:`FeatureStore.iter_batches`."""
        from tqdm.auto import tqdm

        if int(batch_size) < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        stop = self.n_images if stop is None else min(int(stop), self.n_images)
        starts = range(int(start), stop, int(batch_size))
        for a in tqdm(starts, desc="read", disable=not progress, leave=False):
            sl = slice(a, min(a + int(batch_size), stop))
            tokens = self.tokens(sl, flipped=True) if flipped else self.tokens(sl)
            yield tokens, self.labels(sl), self.ids[sl]

    def sample_tokens(
        self, n: int, seed: int = 0, with_labels: bool = False, images=None
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """A seeded uniform sample of tokens: the draw of :meth:`FeatureStore.sample_tokens`
        (same seed and content, same tokens). Returns float32 (n, C) [, int64 (n,)]."""
        img, cell = _draw_tokens(
            n, seed, self.n_images, self.grid, images, lambda i: np.arange(self.n_images)[i]
        )
        hw = self.grid[0] * self.grid[1]
        flat = self._tokens.reshape(self.n_images, hw, self.dim)
        out = np.asarray(flat[img, cell], dtype=np.float32)
        if not with_labels:
            return out
        return out, self.token_labels(slice(None)).reshape(self.n_images, hw)[img, cell]


def preloaded(store, limit_bytes: float, token_labels: bool = False):
    """``store`` itself, or an in-memory :class:`ArrayStore` copy when it is small.

    A store whose tokens (as float32) and labels (int64, pixel or token grid) fit in
    ``limit_bytes`` is read once; its tokens are kept as float16 when that is lossless (a
    :class:`FeatureStore` stores float16) and checked finite here, once
    (:func:`~stego_probe.projections.base.check_store_tokens`, naming the store and the image).
    A store returned as is (too large, or an :class:`ArrayStore` already) is *not* checked: the
    caller checks its batches as they are read (``copy is not store`` tells which).

    Args:
        store: a :class:`TokenStore`.
        limit_bytes: the size limit.
        token_labels: keep the labels pooled to the token grid (``labels(idx)`` of the copy is
            then ``store.token_labels(idx)``).

    Returns:
        the store or an :class:`ArrayStore` with its ids, provenance and path.
    """
    if isinstance(store, ArrayStore):
        return store
    from stego_probe.projections.base import check_store_tokens

    h, w = store.grid
    H, W = (h, w) if token_labels else tuple(store.label_shape)
    if store.n_images * (h * w * store.dim * 4 + H * W * 8) > limit_bytes:
        return store
    everything = slice(0, store.n_images)
    tokens = store.tokens(everything)
    check_store_tokens(store, np.arange(store.n_images), tokens)
    half = tokens.astype(np.float16)
    if np.array_equal(half.astype(np.float32), tokens):
        tokens = half
    labels = store.token_labels(everything) if token_labels else store.labels(everything)
    return ArrayStore(
        tokens,
        labels,
        n_classes=store.n_classes,
        ids=store.ids,
        provenance=store.provenance,
        path=getattr(store, "path", None),
    )


#: Provenance keys that must agree between a training and a validation store (where recorded).
STORE_PAIR_KEYS = (
    "backbone",
    "weights_sha256",
    "dataset",
    "n_classes",
    "patch_size",
    "embed_dim",
)


def store_pair_differences(train_store, val_store, keys: Sequence[str] = STORE_PAIR_KEYS) -> list:
    """Every reason the two stores cannot be used as the training and the validation split of
    one evaluation: differing provenance ``keys`` (those recorded in either), an empty store, a
    store without ``n_classes``, different token widths. An empty list when they fit."""
    from stego_probe.provenance import differing_keys

    tp, vp = dict(train_store.provenance), dict(val_store.provenance)
    out = [
        f"{k}: {tp.get(k)!r} != {vp.get(k)!r}"
        for k in differing_keys(tp, vp, [k for k in keys if k in tp or k in vp])
    ]
    for s, what in ((train_store, "train"), (val_store, "val")):
        if int(s.n_images) < 1:
            out.append(f"{what} store is empty (no images)")
        if s.n_classes is None:
            out.append(f"{what} store's provenance has no n_classes")
    if int(train_store.dim) != int(val_store.dim):
        out.append(f"token width C: {train_store.dim} != {val_store.dim}")
    return out


def check_store_pair(train_store, val_store, keys: Sequence[str] = STORE_PAIR_KEYS) -> None:
    """Raise ``ValueError`` listing every difference (:func:`store_pair_differences`) that keeps
    ``train_store`` and ``val_store`` from being evaluated together (same backbone, weights,
    dataset, classes, patch size, width; neither empty).

    Examples:
        >>> a = ArrayStore(np.zeros((2, 1, 1, 3)), n_classes=2)
        >>> check_store_pair(a, ArrayStore(np.zeros((2, 1, 1, 4)), n_classes=3))
        Traceback (most recent call last):
        ...
        ValueError: refusing to mix incompatible train store in-memory ArrayStore and val store in-memory ArrayStore: n_classes: 2 != 3; token width C: 3 != 4
    """
    diffs = store_pair_differences(train_store, val_store, keys)
    if diffs:
        from stego_probe.projections.base import store_label

        raise ValueError(
            f"refusing to mix incompatible train store {_where(train_store, store_label)} and "
            f"val store {_where(val_store, store_label)}: " + "; ".join(diffs)
        )


def _where(store, store_label) -> str:
    path = getattr(store, "path", None)
    return str(path) if path is not None else store_label(store)
