"""Block verification: every block's checksums checked the first time a handle reads it, and
:meth:`check_block` for ``stego-probe verify`` (a layer of
:class:`~stego_probe.store.FeatureStore`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np

from stego_probe.store.format import CHECKSUMS, NO_CHECKSUM, StoreCorruptError, block_checksum
from stego_probe.store.layout import StoreLayout
from stego_probe.store.paths import url_to_fs


class StoreIntegrity(StoreLayout):
    """A :class:`StoreLayout` whose reads are verified: ``_read_range`` checks each block it
    touches against its checksums once per handle (damage raises :class:`StoreCorruptError`
    naming the store, array and image range), ``check_block`` reports damage without raising.
    """

    def __init__(self, group, path: str, mode: str) -> None:
        super().__init__(group, path, mode)
        # Per-handle verification state: blocks whose checksum was checked, per array.
        self._verified: dict[str, set[int]] = {}
        self._verify_lock = threading.Lock()
        self._done_cache: np.ndarray | None = None

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
        row = np.asarray(self._arr(CHECKSUMS)[b])
        expected = int(row[self._checksum_names.index(name)])
        if expected == NO_CHECKSUM:
            return "its checksum is missing (the checksums chunk was deleted or never written)"
        got = block_checksum(data)
        if got == expected:
            return None
        fs, _ = url_to_fs(self.path)
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
        fs, _ = url_to_fs(self.path)
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
