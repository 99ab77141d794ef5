"""The feature store class: :class:`FeatureStore` opens a store and reads tokens, labels, ids
and token samples from it (writing: :mod:`stego_probe.store.writer`; verification:
:mod:`stego_probe.store.integrity`; layout: :mod:`stego_probe.store.layout`)."""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from stego_probe.store.format import (
    FLIPPED,
    IDS,
    LABELS,
    TOKENS,
    StoreCorruptError,
    meta_file,
    read_meta,
)
from stego_probe.store.paths import normalize_path, url_to_fs
from stego_probe.store.tokens import (
    Index,
    SampleSink,
    cast_into,
    draw_tokens,
    pool_labels,
    soft_label_rows,
    to_float32,
    to_int64,
)
from stego_probe.store.writer import StoreWriter

# paths of format-1 stores already warned about (one warning per process and store)
_WARNED_UNVERIFIABLE: set[str] = set()

# the codec chain of an array whose chunk files hold its raw little-endian values
_RAW_CODECS = ({"name": "bytes", "configuration": {"endian": "little"}},)
# dtypes read straight from chunk files (tokens, labels)
_DIRECT_DTYPES = (
    np.dtype(np.float16),
    np.dtype(np.float32),
    np.dtype(np.int16),
    np.dtype(np.int32),
)


def _zstd_content_size(frame: bytes) -> int | None:
    """The decompressed size a zstd frame's header records (RFC 8878, 3.1.1.1), or None when it
    records none or ``frame`` is not a zstd frame."""
    if len(frame) < 6 or int.from_bytes(frame[:4], "little") != 0xFD2FB528:
        return None
    fhd = frame[4]
    fcs_flag, single = fhd >> 6, (fhd >> 5) & 1
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]  # window descriptor, dictionary id
    size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if size == 0 or len(frame) < pos + size:
        return None
    value = int.from_bytes(frame[pos : pos + size], "little")
    return value + 256 if size == 2 else value


def _zstd_level(codecs: tuple) -> int | None:
    """The zstd level of a codec chain ``bytes (little-endian) + zstd``, else None."""
    if len(codecs) != 2 or codecs[:1] != _RAW_CODECS or codecs[1].get("name") != "zstd":
        return None
    return int(codecs[1].get("configuration", {}).get("level", 0))


def _read_exactly(f, offset: int, dst: np.ndarray) -> bool:
    """Fill C-contiguous ``dst`` with the bytes of unbuffered file ``f`` from ``offset``;
    False when the file ends first (replaced or damaged since it was checked)."""
    view = memoryview(dst).cast("B")
    f.seek(offset)
    while view.nbytes:
        got = f.readinto(view)
        if not got:
            return False
        view = view[got:]
    return True


class FeatureStore(StoreWriter):
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
        super().__init__(group, path, mode)
        self._ids_cache: list[str] | None = None
        # per array: (chunk shape, dtype, chunk file of chunk k) when its chunks are raw files
        self._raw: dict[str, tuple | None] = {}

    # ------------------------------------------------------------------ opening
    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """True when ``path`` holds a zarr group (a feature store or a half-created one)."""
        path = normalize_path(path)
        fs, root = url_to_fs(path)
        return fs.exists(f"{root}/zarr.json")

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
        fs, root = url_to_fs(path)
        read_meta(fs, root, path, "", "group")  # a one-line error for a damaged zarr.json
        try:
            group = zarr.open_group(path, mode=mode, zarr_format=3)
        except Exception as e:  # noqa: BLE001 - re-raised naming the file
            raise StoreCorruptError(
                path, f"{meta_file(path, '')}: zarr cannot open it ({type(e).__name__}: {e})"
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

    @property
    def ids(self) -> list[str]:
        """The ``N`` sample ids in store order (``""`` for images not written yet)."""
        if self._ids_cache is None or self.mode == "r+":
            ids = [str(s) for s in self._read_range(IDS, 0, self._n_images).tolist()]
            if self.mode == "r":
                self._ids_cache = ids
            return ids
        return list(self._ids_cache)

    def __repr__(self) -> str:
        p = self._attrs.get("provenance", {})
        return (
            f"FeatureStore({self.path!r}, n_images={self._n_images}, grid={self._grid}, "
            f"dim={self._dim}, backbone={p.get('backbone')!r}, complete={self.complete})"
        )

    # ------------------------------------------------------------------ direct chunk reads
    def _raw_layout(self, name: str) -> tuple | None:
        """``(chunk shape, dtype, file_of(k), zstd level or None)`` when every chunk of array
        ``name`` is a plain file of its values, raw or zstd-compressed: a local store, chunks
        not sharded (the default), a little-endian machine, float16 / float32 tokens or int16 /
        int32 labels. Such chunks are read straight from their file (:meth:`_chunk_values`:
        raw ones mapped, compressed ones decoded by numcodecs) instead of through zarr: the
        same values without zarr's event loop and copies (labels: 18 -> 6 ms for 128
        224x224 images). None: read through zarr."""
        if name in self._raw:
            return self._raw[name]
        layout = None
        fs, root = url_to_fs(self.path)
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        if "file" in protocols and sys.byteorder == "little":
            meta = self._arr(name).metadata
            d = meta.to_dict()
            dtype = np.dtype(str(self._arr(name).dtype))
            codecs = tuple(d.get("codecs", ()))
            level = _zstd_level(codecs)
            if (
                (codecs == _RAW_CODECS or level is not None)
                and not d.get("storage_transformers")
                and d.get("chunk_grid", {}).get("name") == "regular"
                and dtype in _DIRECT_DTYPES
            ):
                shape = tuple(int(x) for x in meta.chunks)
                rest = (0,) * (len(shape) - 1)

                def file_of(k: int, meta=meta, prefix=f"{root}/{name}/", rest=rest) -> str:
                    return prefix + meta.encode_chunk_key((k, *rest))

                layout = (shape, dtype, file_of, level)
        self._raw[name] = layout
        return layout

    def _chunk_values(self, name: str, k: int) -> np.ndarray | None:
        """Chunk ``k`` of a direct array ``name`` (:meth:`_raw_layout`) ``(chunk_images,
        ...)``: a copy-on-write memory map of a raw chunk file, the decoded values of a
        compressed one; its block verified first (once per handle, as every read). None when
        the chunk file is missing, not of the chunk's size or does not decode (a block never
        written, or damage): the caller reads it through zarr, which fills it or names the
        damage.

        zarr replaces chunk files by renaming, so a mapped file is never truncated under the
        map; the map is released with the last view of it."""
        shape, dtype, file_of, level = self._raw[name]
        file = file_of(k)
        nbytes = math.prod(shape) * dtype.itemsize
        try:
            if level is None:
                if os.stat(file).st_size != nbytes:
                    return None
                values = np.memmap(file, dtype=dtype, mode="c", shape=shape)
            else:
                from numcodecs import Zstd

                with open(file, "rb") as f:
                    raw = f.read()
                if _zstd_content_size(raw) == nbytes:  # decoded straight into a writable array
                    values = np.empty(shape, dtype=dtype)
                    Zstd(level=level).decode(raw, out=values)
                else:  # size not in the frame header (or wrong): decode, then compare
                    data = Zstd(level=level).decode(raw)
                    if len(data) != nbytes:
                        return None
                    values = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
        except Exception:  # noqa: BLE001 - missing, short or undecodable: zarr names it
            return None
        if self._unverified(name, k, k):  # unsharded: block k is chunk k
            s, t = self.block_range(k)
            self._verify(name, k, values[: t - s])
        return values

    def _read_direct(self, name: str, lo: int, hi: int, dtype) -> np.ndarray:
        """Images ``[lo, hi)`` of array ``name`` converted to ``dtype`` (float32 tokens, int64
        labels), verified like every read; chunks of a direct array (:meth:`_raw_layout`) are
        converted straight from their file or decoded bytes into the output (one pass over
        the data)."""
        if self._raw_layout(name) is None or hi <= lo:
            data = self._read_range(name, lo, hi)
            return to_float32(data) if np.dtype(dtype) == np.float32 else to_int64(data)
        out = np.empty((hi - lo, *self._arr(name).shape[1:]), dtype=dtype)
        ci = self._chunk_images
        for k in range(lo // ci, (hi - 1) // ci + 1):
            s, e = max(lo, k * ci), min(hi, (k + 1) * ci)
            values = self._chunk_values(name, k)
            dst = out[s - lo : e - lo]
            if values is None:
                cast_into(dst, self._read_range(name, s, e))
            else:
                cast_into(dst, values[s - k * ci : e - k * ci])
        return out

    def _read_tokens_range(self, name: str, lo: int, hi: int) -> np.ndarray:
        """Images ``[lo, hi)`` of token array ``name`` as float32 ``(hi - lo, h, w, C)``."""
        return self._read_direct(name, lo, hi, np.float32)

    def _read_labels_range(self, lo: int, hi: int) -> np.ndarray:
        """Labels of images ``[lo, hi)`` as int64 ``(hi - lo, H, W)``."""
        return self._read_direct(LABELS, lo, hi, np.int64)

    def _chunk_source(self, name: str, k: int) -> np.ndarray | str | None:
        """Where images of chunk ``k`` of direct array ``name`` are copied from by
        :meth:`_read_tokens_indices`: the path of a raw chunk file whose block is verified
        already (or not checksummed) and of the chunk's size, else the chunk's values
        (:meth:`_chunk_values`, which verifies it), else None (read through zarr)."""
        shape, dtype, file_of, level = self._raw[name]
        if level is not None or self._unverified(name, k, k):
            return self._chunk_values(name, k)
        file = file_of(k)
        try:
            size = os.stat(file).st_size
        except FileNotFoundError:
            return None
        return file if size == math.prod(shape) * dtype.itemsize else None

    def _read_tokens_indices(self, name: str, ind: np.ndarray) -> np.ndarray:
        """Images ``ind`` (int64, any order, repeats allowed) of direct token array ``name``
        (:meth:`_raw_layout`) as float32, chunk by chunk in block order (every block they
        touch verified, once per handle): each run of consecutive images is copied into one
        buffer of the stored dtype (from a raw chunk's file with ``readinto``, from a decoded
        chunk's values, or through zarr for a missing one), which float16 stores then cast
        once. Only the images asked for are read, one chunk file open at a time, one decoded
        chunk held at a time.

        Reading the runs from the files rather than from fresh memory maps, and casting once
        instead of once per chunk, is what brings random batches level with a gather + cast
        from one long-lived memory map (0.80 -> 0.92-0.96, ``benchmarks/bench_store_read.py``)."""
        ci = self._chunk_images
        chunk = ind // ci
        starts = np.flatnonzero((np.diff(ind) != 1) | (np.diff(chunk) != 0)) + 1
        bounds = np.concatenate([[0], starts, [ind.size]]).tolist()
        runs: dict[int, list[tuple[int, int]]] = {}
        for j0, j1 in zip(bounds[:-1], bounds[1:], strict=True):
            runs.setdefault(int(chunk[j0]), []).append((j0, j1))
        dtype = self._raw[name][1]
        buf = np.empty((ind.size, *self._grid, self._dim), dtype=dtype)
        row = buf[0].nbytes if ind.size else 0
        for k in sorted(runs):  # block order, as the zarr path verifies
            src = self._chunk_source(name, k)
            if src is None:
                self._verify_blocks(name, [k])  # read through zarr: fill values or damage
            f = None
            if isinstance(src, str):
                try:
                    f = open(src, "rb", buffering=0)  # noqa: SIM115 - closed below
                except FileNotFoundError:  # removed since it was checked: through zarr
                    src = None
            try:
                for j0, j1 in runs[k]:
                    first = int(ind[j0])
                    local, dst = first - k * ci, buf[j0:j1]
                    if isinstance(src, np.ndarray):
                        dst[...] = src[local : local + j1 - j0]
                    elif f is None or not _read_exactly(f, local * row, dst):
                        dst[...] = self._read_range(name, first, first + j1 - j0)
            finally:
                if f is not None:
                    f.close()
        return buf if dtype == np.float32 else to_float32(buf)

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
        name = self._flipped_name() if flipped else TOKENS
        if self._raw_layout(name) is None:
            return to_float32(self._read(name, idx))
        sl, ind = self._resolve(idx)
        if sl is None and ind.size:
            if np.array_equal(ind, np.arange(ind[0], ind[0] + ind.size)):
                sl = slice(int(ind[0]), int(ind[0]) + ind.size)
            else:
                return self._read_tokens_indices(name, ind)
        if sl is None:
            return np.empty((0, *self._grid, self._dim), dtype=np.float32)
        return self._read_tokens_range(name, sl.start, sl.stop)

    def _flipped_name(self) -> str:
        if not self._has_flipped:
            raise ValueError(
                f"{self.path}: store has no tokens_flipped; extract with flipped=True (CLI: "
                f"--flipped) for the evaluation-mode flip average"
            )
        return FLIPPED

    def labels(self, idx: Index) -> np.ndarray:
        """Labels of images ``idx``: int64 array (n, H, W), classes in ``[0, K)``, -1 = ignore."""
        sl, ind = self._resolve(idx)
        if sl is not None:
            return self._read_labels_range(sl.start, sl.stop)
        return to_int64(self._read(LABELS, ind))

    def token_labels(self, idx: Index) -> np.ndarray:
        """Labels pooled to the token grid: int64 array (n, h, w).

        Per-cell majority over the valid pixels under each token, -1 where a cell has no valid
        pixel (see :func:`pool_labels`; an approximation of a token's class).
        """
        return pool_labels(self._read(LABELS, idx), self._grid, self.n_classes)

    def _chunk_reader(
        self, names: Sequence[str], start: int, stop: int, step: int
    ) -> Iterator[tuple[int, int, list[np.ndarray]]]:
        """Read ``names`` in ranges ``[s, s + step)``, the next range prefetched while the
        consumer works on this one; the first array (tokens) comes back as float32, the others
        (labels) as int64.

        Each array of a range is read by its own worker thread: the tokens' conversion (torch,
        on the intra-op threads) overlaps the labels' zstd decoding (single-threaded, GIL
        released), so a compressed label array costs about what a raw one would (0.67 ->
        0.82-0.93x a memmap read of raw labels, a store with raw labels ~3 % faster still,
        ``benchmarks/bench_store_read.py``)."""
        ranges = [(s, min(s + step, stop)) for s in range(start, stop, step)]
        if not ranges:
            return

        def read(name: str, r: tuple[int, int]) -> np.ndarray:
            if name == names[0]:
                return self._read_tokens_range(name, r[0], r[1])
            return self._read_direct(name, r[0], r[1], np.int64)

        with ThreadPoolExecutor(max_workers=len(names)) as pool:

            def submit(r):
                return [pool.submit(read, nm, r) for nm in names]

            futs = submit(ranges[0])
            for k, r in enumerate(ranges):
                data = [f.result() for f in futs]
                if k + 1 < len(ranges):
                    futs = submit(ranges[k + 1])
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
        tok_name = self._flipped_name() if flipped else TOKENS
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
            for s, e, (t, lab) in self._chunk_reader([tok_name, LABELS], first, stop, step):
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
        n_tokens: int,
        seed: int = 0,
        with_labels: bool = False,
        images: int | Sequence[int] | np.ndarray | None = None,
        soft_labels: bool = False,
        transform=None,
    ) -> np.ndarray | tuple[np.ndarray, ...]:
        """A seeded uniform sample of tokens, reading only the chunks that hold them.

        Tokens are drawn uniformly without replacement from all ``h * w`` tokens of the chosen
        images; only the chunks containing drawn tokens are read, one at a time, so memory
        stays at one chunk plus the output. The label flags do not change the draw.

        Args:
            n_tokens: number of tokens; if it exceeds the available tokens, all of them are returned
                (in random order).
            seed: random seed; the same seed gives the same tokens in the same order.
            with_labels: also return each token's label (:meth:`token_labels` of its cell).
            images: which images to draw from: ``None`` all; an int ``k``: ``k`` images chosen
                at random with ``seed`` (the reference fits PCA on "the first 5,000 images" of a
                shuffled cache, PROTOCOL §6.2); an index array: those images.
            soft_labels: also return each token's soft label, its row of
                :func:`~stego_probe.store.tokens.soft_token_labels` (the class mass the token
                receives under bilinear upsampling to the labels), computed per chunk for the
                drawn images only (the chunk's labels are read once for both label kinds).
            transform: None, or a callable ``(m, C) float32 -> (m, D)`` (e.g. a fitted
                projection's ``transform``) applied to the drawn tokens block by block as they
                are read (:class:`~stego_probe.store.tokens.SampleSink`), so that the raw
                ``(n, C)`` sample never exists whole: the first array returned is then the
                ``(n, D)`` transformed sample. The draw does not change.

        Returns:
            float32 array (n, C) (``(n, D)`` with ``transform``) [, int64 array (n,) of token
            labels, -1 = no valid pixel, if ``with_labels``] [, float32 array (n, K) of soft
            token labels if ``soft_labels``]; a tuple whenever a flag is set.

        Raises:
            ValueError: ``soft_labels`` on a store without ``n_classes``; a ``transform`` that
                does not return ``(m, D)`` rows.
        """
        if soft_labels and self.n_classes is None:
            raise ValueError(f"soft_labels: store {self.path} records no n_classes")
        img, cell = draw_tokens(
            n_tokens, seed, self._n_images, self._grid, images, lambda i: self._resolve(i)[1]
        )
        n, hw = img.size, self._grid[0] * self._grid[1]
        sink = SampleSink(n, self._dim, transform)
        lab_out = np.empty(n, dtype=np.int64) if with_labels else None
        soft_out = np.empty((n, int(self.n_classes)), dtype=np.float32) if soft_labels else None
        ci = self._chunk_images
        chunk = img // ci
        order = np.argsort(chunk, kind="stable")
        bounds = np.flatnonzero(np.diff(chunk[order])) + 1
        for pos in np.split(order, bounds):
            if pos.size == 0:
                continue
            lo, hi = int(img[pos].min()), int(img[pos].max()) + 1
            k = int(chunk[pos[0]])
            base = k * ci
            mapped = self._chunk_values(TOKENS, k) if self._raw_layout(TOKENS) else None
            if mapped is not None:  # gather the drawn tokens straight from the chunk
                t = mapped.reshape(ci, hw, self._dim)
                sink.add(pos, t[img[pos] - base, cell[pos]])
            else:
                t = np.asarray(self._read_range(TOKENS, lo, hi)).reshape(hi - lo, hw, self._dim)
                sink.add(pos, t[img[pos] - lo, cell[pos]])
            if with_labels or soft_labels:
                values = self._chunk_values(LABELS, k) if self._raw_layout(LABELS) else None
                if values is None:
                    labels = self._read_range(LABELS, lo, hi)
                else:
                    labels = values[lo - base : hi - base]
                if lab_out is not None:
                    tl = pool_labels(labels, self._grid, self.n_classes)
                    lab_out[pos] = tl.reshape(hi - lo, hw)[img[pos] - lo, cell[pos]]
                if soft_out is not None:
                    soft_out[pos] = soft_label_rows(
                        labels, img[pos] - lo, cell[pos], self._grid, int(self.n_classes)
                    )
        out = sink.result()
        if not (with_labels or soft_labels):
            return out
        return tuple(x for x in (out, lab_out, soft_out) if x is not None)

    # ------------------------------------------------------------------ summary
    def size_bytes(self) -> int:
        """Bytes the store occupies (sum of its files / objects)."""
        fs, root = url_to_fs(self.path)
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
            "compress_tokens": self._compress_tokens,
            "compress_labels": self._compress_labels,
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
