"""Writing a feature store: creation with every array pre-allocated, blocks written then
marked, blocks invalidated for re-extraction, the store marked complete (a layer of
:class:`~stego_probe.store.FeatureStore`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Self

import numpy as np

from stego_probe.fileio import to_jsonable
from stego_probe.labels import IGNORE
from stego_probe.store.format import (
    CHECKSUM_ALGORITHM,
    CHECKSUMS,
    FLIPPED,
    FORMAT,
    FORMAT_VERSION,
    IDS,
    LABELS,
    NO_CHECKSUM,
    SUCCESS_MARKER,
    TOKENS,
    WRITTEN,
    StoreCorruptError,
    block_checksum,
    read_meta,
)
from stego_probe.store.integrity import StoreIntegrity
from stego_probe.store.paths import normalize_path, url_to_fs


class StoreWriter(StoreIntegrity):
    """The writing half of :class:`~stego_probe.store.FeatureStore`: :meth:`create`,
    :meth:`write_block`, :meth:`invalidate_blocks`, :meth:`mark_complete` (``"r+"`` handles).
    A block is written whole, then its checksums, then its ``written`` marker."""

    # ------------------------------------------------------------------ creation
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
        compress_labels: bool = True,
        token_dtype: str = "float16",
        overwrite: bool = False,
    ) -> Self:
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
            compress_labels: zstd-compress labels (default: segmentation maps shrink 10-50x).
                ``False`` stores them raw: reading labels costs no decoding (2.2x faster
                alone; ``iter_batches`` about 3 % faster on 2 busy cores, within the
                run-to-run spread), for ``H * W * 2`` more bytes per image (+8-17 % disk next
                to float16 ViT tokens; ``docs/store.md``).
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
        fs, root = url_to_fs(path)
        if fs.exists(root):
            if fs.exists(f"{root}/zarr.json"):
                if not overwrite:
                    raise FileExistsError(
                        f"{path}: a store exists already; open it with FeatureStore.open or "
                        f"pass overwrite=True (`extract --overwrite`)"
                    )
                try:
                    attrs = read_meta(fs, root, path, "", "group").get("attributes", {})
                except StoreCorruptError:
                    # an unreadable root zarr.json: overwrite only what looks like our store
                    ours = fs.exists(f"{root}/{WRITTEN}/zarr.json")
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
            "compress_labels": bool(compress_labels),
            "token_dtype": token_dtype,
            "label_dtype": "int16" if n_classes is None or n_classes <= 32766 else "int32",
            "checksums": {
                "algorithm": CHECKSUM_ALGORITHM,
                "arrays": [TOKENS] + ([FLIPPED] if flipped else []) + [LABELS, IDS],
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

    def _ensure_arrays(self) -> None:
        """Create any array missing from the group (a creation killed half-way)."""
        from zarr.codecs import ZstdCodec

        # membership tests, not listing: listing warns about the non-zarr _SUCCESS file
        existing = {
            name
            for name in (TOKENS, FLIPPED, LABELS, IDS, WRITTEN, CHECKSUMS)
            if name in self._group
        }
        n, (h, w), c = self._n_images, self._grid, self._dim
        ci, si = self._chunk_images, self._shard_images
        bi = self.block_images
        tok_comp = ZstdCodec(level=1) if self._compress_tokens else None
        specs = {
            TOKENS: dict(
                shape=(n, h, w, c),
                dtype=self._attrs["layout"].get("token_dtype", "float16"),
                compressors=tok_comp,
                fill_value=0,
            ),
            LABELS: dict(
                shape=(n, *self._label_shape),
                dtype=self._attrs["layout"].get("label_dtype", "int16"),
                compressors=ZstdCodec(level=3) if self._compress_labels else None,
                fill_value=IGNORE,
            ),
            IDS: dict(shape=(n,), dtype=str, fill_value=""),
        }
        if self._has_flipped:
            specs[FLIPPED] = dict(specs[TOKENS])
        for name, spec in specs.items():
            if name in existing:
                continue
            rest = spec["shape"][1:]
            self._group.create_array(
                name,
                chunks=(ci, *rest) if name != IDS else (bi,),
                shards=(si, *rest) if (si and name != IDS) else None,
                **spec,
            )
        if self._checksummed and CHECKSUMS not in existing:
            k = len(self._checksum_names)
            self._group.create_array(
                CHECKSUMS,
                shape=(self.n_blocks, k),
                chunks=(1, k),
                dtype="int64",
                fill_value=NO_CHECKSUM,
                compressors=None,
            )
        if WRITTEN not in existing:
            self._group.create_array(
                WRITTEN,
                shape=(self.n_blocks,),
                chunks=(1,),
                dtype="bool",
                fill_value=False,
                compressors=None,
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
        tdtype = self._arr(TOKENS).dtype
        data = {TOKENS: tokens.astype(tdtype, copy=False)}
        if tokens_flipped is not None:
            data[FLIPPED] = tokens_flipped.astype(tdtype, copy=False)
        data[LABELS] = labels.astype(self._arr(LABELS).dtype, copy=False)
        data[IDS] = np.asarray([str(i) for i in ids], dtype=object)
        for name, values in data.items():
            self._arr(name)[start:stop] = values
            self._forget(name, b)
        # Then the checksums of exactly what was written, then the marker: a block is
        # "written" only once all of its data and its checksums are.
        if self._checksummed:
            row = np.asarray([block_checksum(data[nm]) for nm in self._checksum_names], np.int64)
            self._arr(CHECKSUMS)[b] = row
        self._arr(WRITTEN)[b] = True

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
        fs, root = url_to_fs(self.path)
        self._group.attrs["complete"] = False
        self._attrs["complete"] = False
        if fs.exists(f"{root}/{SUCCESS_MARKER}"):
            fs.rm(f"{root}/{SUCCESS_MARKER}")
        for b in blocks:
            self._arr(WRITTEN)[b] = False
            if self._checksummed:
                self._arr(CHECKSUMS)[b] = NO_CHECKSUM
            for name in self._data_names():
                self._forget(name, b)
                key = self._block_key(name, b)
                if fs.exists(key):
                    fs.rm(key)
        self._done_cache = None

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
        fs, root = url_to_fs(self.path)
        fs.pipe_file(f"{root}/{SUCCESS_MARKER}", b"")
