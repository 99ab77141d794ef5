"""An open feature store's layout: the group attributes parsed and checked against the arrays,
the sizes and blocks they give, and where each block lives (the base of
:class:`~stego_probe.store.FeatureStore`)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from stego_probe.store.format import (
    CHECKSUM_ALGORITHM,
    CHECKSUMS,
    FLIPPED,
    FORMAT,
    IDS,
    LABELS,
    READABLE_FORMAT_VERSIONS,
    SUCCESS_MARKER,
    TOKENS,
    WRITTEN,
    StoreCorruptError,
    meta_file,
    read_meta,
)
from stego_probe.store.paths import url_to_fs


class StoreLayout:
    """The zarr group of a feature store with its ``layout`` attributes parsed: sizes, block
    geometry, provenance, the arrays (opened once) and the checks of the attributes against
    them. Reads no data; :class:`~stego_probe.store.FeatureStore` builds on it.

    Args:
        group: the open zarr group.
        path: the store's normalized path or URL (names it in messages).
        mode: ``"r"`` or ``"r+"``.

    Raises:
        ValueError: not a feature store, or a format version this stego_probe cannot read.
        StoreCorruptError: malformed ``layout`` attributes.
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
        self._compress_labels = bool(layout.get("compress_labels", True))
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
        self._arrays: dict = {}

    def _data_names(self) -> list[str]:
        """The arrays covered by checksums, in column order of a new store."""
        return [TOKENS] + ([FLIPPED] if self._has_flipped else []) + [LABELS, IDS]

    def _check_arrays(self) -> None:
        """Open every array and check it against the ``layout`` attributes (shape, chunks,
        shards, dtype); a mismatch is a :class:`StoreCorruptError` naming the attribute, its
        value and what the array holds. Arrays missing from an incomplete store are allowed
        (a creation killed half-way; ``"r+"`` creates them)."""
        fs, root = url_to_fs(self.path)
        n, (h, w), c, (H, W) = self._n_images, self._grid, self._dim, self._label_shape
        ci, si, nb = self._chunk_images, self._shard_images, self.n_blocks
        lay = self._attrs["layout"]
        names = [TOKENS, LABELS, IDS, WRITTEN]
        if self._has_flipped:
            names.insert(1, FLIPPED)
        if self._checksummed:
            names.append(CHECKSUMS)
        complete = bool(self._attrs.get("complete", False))
        for name in names:
            if not fs.exists(f"{root}/{name}/zarr.json"):
                if complete:
                    raise StoreCorruptError(
                        self.path, f"array {name} is missing ({meta_file(self.path, name)})"
                    )
                continue
            read_meta(fs, root, self.path, name, "array")
            try:
                arr = self._arrays[name] = self._group[name]
            except Exception as e:  # noqa: BLE001 - re-raised naming the file
                raise StoreCorruptError(
                    self.path,
                    f"{meta_file(self.path, name)}: zarr cannot open it ({type(e).__name__}: "
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

            if name in (TOKENS, FLIPPED):
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
            elif name == LABELS:
                if len(shape) != 3:
                    bad("label_shape", lay["label_shape"], f"a {len(shape)}-d array")
                if shape[0] != n:
                    bad("n_images", n, f"{shape[0]} label maps")
                if shape[1:] != (H, W):
                    bad("label_shape", lay["label_shape"], f"{shape[1]}x{shape[2]} label maps")
                if chunks[0] != ci:
                    bad("chunk_images", ci, f"chunks of {chunks[0]} images")
            elif name == IDS:
                if shape != (n,):
                    bad("n_images", n, f"{shape[0] if shape else 0} ids")
                if chunks != (self.block_images,):
                    bad("chunk_images", ci, f"id chunks of {chunks[0]}")
            elif name == WRITTEN:
                if shape != (nb,):
                    bad(
                        "n_images",
                        n,
                        f"{shape[0] if shape else 0} block markers; n_images / chunk_images / "
                        f"shard_images give {nb} blocks",
                    )
            elif name == CHECKSUMS:
                k = len(self._checksum_names)
                if shape != (nb, k) or chunks != (1, k):
                    bad(
                        "checksums",
                        lay.get("checksums"),
                        f"chunks {chunks}; expected shape ({nb}, {k}) with chunks (1, {k})",
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
        fs, root = url_to_fs(self.path)
        return bool(self._group.attrs.get("complete", False)) and fs.exists(
            f"{root}/{SUCCESS_MARKER}"
        )

    def _arr(self, name: str):
        """The zarr array ``name`` (opened once and cached)."""
        arr = self._arrays.get(name)
        if arr is None:
            arr = self._arrays[name] = self._group[name]
        return arr

    def done_blocks(self) -> np.ndarray:
        """bool array (n_blocks,): which blocks are completely written."""
        if WRITTEN not in self._arrays and WRITTEN not in self._group:
            return np.zeros(self.n_blocks, dtype=bool)  # creation was interrupted
        return np.asarray(self._arr(WRITTEN)[:], dtype=bool)

    def block_range(self, b: int) -> tuple[int, int]:
        """Image range ``[start, stop)`` of block ``b``."""
        if not 0 <= b < self.n_blocks:
            raise IndexError(f"{self.path}: block {b} out of range [0, {self.n_blocks})")
        start = b * self.block_images
        return start, min(start + self.block_images, self._n_images)

    def _block_key(self, name: str, b: int) -> str:
        """fsspec path of the file (chunk or shard) holding block ``b`` of array ``name``."""
        _, root = url_to_fs(self.path)
        arr = self._arr(name)
        coords = (b,) + (0,) * (len(arr.shape) - 1)
        return f"{root}/{name}/{arr.metadata.encode_chunk_key(coords)}"
