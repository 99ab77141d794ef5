"""The store contract, the one home of "what is a store": the :class:`TokenStore` read
interface, :func:`is_store`, the in-memory :class:`ArrayStore`, :func:`preloaded` (small stores
read once) and the train / val pair checks (:func:`check_store_pair`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from stego_probe.store.tokens import (
    TRANSFORM_BLOCK,
    Index,
    SampleSink,
    draw_tokens,
    pool_labels,
    soft_label_rows,
)


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
        self,
        n_tokens: int,
        seed: int = 0,
        with_labels: bool = False,
        images=None,
        soft_labels: bool = False,
        transform=None,
    ) -> np.ndarray | tuple[np.ndarray, ...]:
        """A seeded uniform sample of ``n_tokens`` tokens, float32 (n, C) (``(n, D)``: the
        tokens through ``transform``, applied block by block while drawing) [, int64 token
        labels (n,) if ``with_labels``] [, float32 soft token labels (n, K) if
        ``soft_labels``: each token's row of
        :func:`~stego_probe.store.tokens.soft_token_labels`]; all tokens, in random order, if
        there are fewer. A tuple whenever either flag is set; the flags and ``transform`` do
        not change which tokens are drawn."""
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
        self,
        n_tokens: int,
        seed: int = 0,
        with_labels: bool = False,
        images=None,
        soft_labels: bool = False,
        transform=None,
    ) -> np.ndarray | tuple[np.ndarray, ...]:
        """A seeded uniform sample of tokens: the draw of :meth:`FeatureStore.sample_tokens`
        (same seed and content, same tokens, whatever the flags), ``transform`` applied block
        by block as there (:class:`~stego_probe.store.tokens.SampleSink`).

        Returns:
            float32 (n, C) tokens (``(n, D)`` with ``transform``) [, int64 (n,) token labels if
            ``with_labels``] [, float32
            (n, K) soft token labels if ``soft_labels``
            (:func:`~stego_probe.store.tokens.soft_token_labels` of each token's image at its
            cell, computed for the drawn images only)]; a tuple whenever a flag is set.

        Raises:
            ValueError: ``soft_labels`` on a store without ``n_classes``.
        """
        if soft_labels and self.n_classes is None:
            raise ValueError(f"soft_labels: {self!r} records no n_classes")
        img, cell = draw_tokens(
            n_tokens, seed, self.n_images, self.grid, images, lambda i: np.arange(self.n_images)[i]
        )
        hw = self.grid[0] * self.grid[1]
        flat = self._tokens.reshape(self.n_images, hw, self.dim)
        if transform is None:
            out = np.asarray(flat[img, cell], dtype=np.float32)
        else:
            sink = SampleSink(img.size, self.dim, transform)
            for start in range(0, img.size, TRANSFORM_BLOCK):
                part = slice(start, start + TRANSFORM_BLOCK)
                sink.add(np.arange(start, min(start + TRANSFORM_BLOCK, img.size)),
                         flat[img[part], cell[part]])  # fmt: skip
            out = sink.result()
        if not (with_labels or soft_labels):
            return out
        result = [out]
        if with_labels:
            result.append(self.token_labels(slice(None)).reshape(self.n_images, hw)[img, cell])
        if soft_labels:
            result.append(
                soft_label_rows(self._all_labels(), img, cell, self.grid, int(self.n_classes))
            )
        return tuple(result)

    def _all_labels(self) -> np.ndarray:
        """(N, H, W) int64 labels without a copy (all -1 without labels, as :meth:`labels`)."""
        if self._labels is None:
            return np.broadcast_to(np.int64(-1), (self.n_images, *self.label_shape))
        return self._labels


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
