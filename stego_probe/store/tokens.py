"""Token and label arrays as every store class reads them: the index type, the seeded token
draw, labels pooled to the token grid (hard: :func:`pool_labels`; soft, the class mass under
bilinear upsampling: :func:`soft_token_labels`), a token sample transformed while it is drawn
(:class:`SampleSink`), fast float16 -> float32 and label -> int64 conversion."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stego_probe.codes import bilinear_matrix
from stego_probe.labels import IGNORE

Index = int | slice | Sequence[int] | np.ndarray


def draw_tokens(n, seed, n_images: int, grid, images, resolve) -> tuple[np.ndarray, np.ndarray]:
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


#: Rows per call of a ``sample_tokens(transform=...)`` transform (:class:`SampleSink`).
TRANSFORM_BLOCK = 65536


class SampleSink:
    """The ``(n, D)`` float32 output of a token sample collected piece by piece, in any order.

    Without ``transform`` the pieces are the sample itself (``D = C``). With one, the drawn
    rows are buffered up to :data:`TRANSFORM_BLOCK`, put back in sample order, transformed
    together and scattered: the raw ``(n, C)`` sample never exists whole, memory is the output,
    one block of raw rows and the transform's intermediates for one block. A sample of at most
    one block is transformed in one call, in sample order, as ``transform(sample)`` would be.

    Args:
        n: rows of the sample.
        dim: ``C``, the width of the raw rows.
        transform: None, or a callable ``(m, C) float32 -> (m, D)`` (e.g. a projection's
            ``transform``), applied to blocks of rows; ``D`` is taken from its first output.

    Examples:
        >>> sink = SampleSink(3, 2, lambda r: r.sum(1, keepdims=True))
        >>> sink.add(np.array([2, 0]), np.array([[1.0, 2.0], [3.0, 4.0]]))
        >>> sink.add(np.array([1]), np.array([[5.0, 6.0]]))
        >>> sink.result().ravel().tolist()
        [7.0, 11.0, 3.0]
    """

    def __init__(self, n: int, dim: int, transform=None) -> None:
        self.n, self.dim, self.transform = int(n), int(dim), transform
        self.out = np.empty((self.n, self.dim), np.float32) if transform is None else None
        self._pos: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._buffered = 0

    def add(self, pos: np.ndarray, rows: np.ndarray) -> None:
        """Rows ``rows`` (m, C) of the sample at positions ``pos`` (m,)."""
        if self.transform is None:
            self.out[pos] = rows
            return
        start = 0
        while start < len(pos):  # fill the buffer to exactly one block, then transform it
            piece = slice(start, start + TRANSFORM_BLOCK - self._buffered)
            self._pos.append(np.asarray(pos[piece]))
            self._rows.append(np.asarray(rows[piece], dtype=np.float32))
            self._buffered += len(self._pos[-1])
            start += len(self._pos[-1])
            if self._buffered >= TRANSFORM_BLOCK:
                self._flush()

    def _flush(self) -> None:
        if not self._pos:
            return
        pos, rows = np.concatenate(self._pos), np.concatenate(self._rows)
        self._pos, self._rows, self._buffered = [], [], 0
        order = np.argsort(pos, kind="stable")
        self._put(pos[order], self.transform(rows[order]))

    def _put(self, pos: np.ndarray, codes) -> None:
        codes = np.asarray(codes, dtype=np.float32)
        if codes.ndim != 2 or codes.shape[0] != len(pos):
            raise ValueError(
                f"sample_tokens: transform must map (m, C) rows to (m, D), got shape "
                f"{codes.shape} for {len(pos)} rows"
            )
        if self.out is None:
            self.out = np.empty((self.n, codes.shape[1]), np.float32)
        elif codes.shape[1] != self.out.shape[1]:
            raise ValueError(
                f"sample_tokens: transform returned width {codes.shape[1]}, earlier "
                f"{self.out.shape[1]}"
            )
        self.out[pos] = codes

    def result(self) -> np.ndarray:
        """The ``(n, D)`` float32 sample (every position must have been added)."""
        self._flush()
        if self.out is None:  # nothing drawn: the transform's width from no rows
            self._put(np.empty(0, np.int64), self.transform(np.empty((0, self.dim), np.float32)))
        return self.out


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


#: Bytes of temporaries :func:`soft_token_labels` aims at per block of images (at least one
#: image per block).
SOFT_LABEL_BLOCK_BYTES = 100 * 2**20


def _check_label_grid(labels, grid) -> tuple[np.ndarray, int, int]:
    """``labels`` as an (n, H, W) integer array and ``grid`` as ``(h, w)``, validated as
    :func:`pool_labels` validates them (plus the integer dtype)."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels: expected shape (n, H, W), got {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise ValueError(f"labels: expected an integer array, got dtype {labels.dtype}")
    H, W = labels.shape[1:]
    h, w = int(grid[0]), int(grid[1])
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(f"grid: expected 0 < (h, w) <= label shape {(H, W)}, got {(h, w)}")
    return labels, h, w


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two taps of every row of :func:`~stego_probe.codes.bilinear_matrix` ``(n_out,
    n_in)``: ``(i0, w0, i1, w1)``, each (n_out,), with ``A[r] = w0[r] e_i0[r] + w1[r] e_i1[r]``
    (``w1 = 0`` where the row has a single non-zero)."""
    a = bilinear_matrix(n_in, n_out)
    rows = np.arange(n_out)
    i0 = np.argmax(a > 0, axis=1)  # the first non-zero: 1 - frac > 0 always
    i1 = np.minimum(i0 + 1, n_in - 1)
    w0 = a[rows, i0]
    w1 = np.where(i1 > i0, a[rows, i1], 0.0)
    return i0, w0, i1, w1


def soft_token_labels(labels: np.ndarray, grid: tuple[int, int], n_classes: int) -> np.ndarray:
    """Soft token labels: the class mass each token receives under bilinear upsampling.

    The linear probe scores tokens and upsamples the ``(h, w)`` score maps to the ``(H, W)``
    labels bilinearly (``align_corners=False``, separable weights ``A_h = bilinear_matrix(h,
    H)`` (H, h) and ``A_w = bilinear_matrix(w, W)`` (W, w)). The soft label of token
    ``(ty, tx)`` for class ``k`` is

        ``T[ty, tx, k] = sum of A_h[py, ty] * A_w[px, tx] over valid pixels (py, px) of class k``,

    i.e. the adjoint of bilinear upsampling applied to the one-hot labels (the gradient with
    respect to ``x`` of ``sum(F.interpolate(x, (H, W), mode="bilinear", align_corners=False) *
    onehot)``). Valid pixels have a label in ``[0, K)``; everything else (-1, 255, ``>= K``)
    is ignored. Since every row of ``A`` sums to one, ``T[i].sum()`` is the number of valid
    pixels of image ``i`` (up to rounding).

    When ``H = h * p`` (and likewise for ``W``), pixel row ``py`` weighs ``max(0, 1 - |(py +
    0.5) / p - (ty + 0.5)|)`` on token row ``ty`` (a tent over the pixels within one token pitch
    of the token centre, so neighbouring tokens share the pixels between their centres), pixels
    beyond the outermost token centres weigh 1 on the edge token, and every token's weights sum
    to ``p`` per axis: a fully labelled image gives each token a class mass of ``p * p``, the
    pixel count of the patch :func:`pool_labels` votes over. With ``p = 1`` ``T`` is the one-hot
    encoding of the labels (zero rows at ignored pixels).

    Computed without a dense one-hot: the ``W`` axis is contracted with ``np.bincount`` over the
    (at most two) taps of each pixel column, the ``H`` axis with a matmul by ``A_h^T``, images in
    blocks so that temporaries stay near :data:`SOFT_LABEL_BLOCK_BYTES` (about 100 MB; one
    image at least).

    Args:
        labels: int array (n, H, W).
        grid: token grid ``(h, w)``, ``0 < h <= H`` and ``0 < w <= W``.
        n_classes: ``K`` (>= 1).

    Returns:
        float32 array (n, h, w, K).

    Raises:
        ValueError: ``labels`` not a 3-D integer array, ``grid`` outside the label shape,
            ``n_classes`` below one.

    Examples:
        >>> lab = np.array([[[0, 0, 1, -1], [0, 1, -1, 255]]])
        >>> soft_token_labels(lab, (1, 2), n_classes=2)[0, 0].tolist()
        [[2.75, 1.0], [0.25, 1.0]]
        >>> float(soft_token_labels(lab, (1, 2), n_classes=2).sum())  # 5 valid pixels
        5.0
    """
    labels, h, w = _check_label_grid(labels, grid)
    if not isinstance(n_classes, int | np.integer) or int(n_classes) < 1:
        raise ValueError(f"n_classes: expected a positive int, got {n_classes!r}")
    K = int(n_classes)
    n, H, W = labels.shape
    out = np.empty((n, h, w, K), dtype=np.float32)
    if n == 0:
        return out
    ah_t = np.ascontiguousarray(bilinear_matrix(h, H).T)  # (h, H)
    i0, w0, i1, w1 = _taps(w, W)
    taps = [(i0, w0)] + ([(i1, w1)] if w1.any() else [])
    # per image: int64 index + float64 weight + bool mask per pixel and tap, plus the
    # (H, w, K) float64 partial sums (a bincount result and a sum) and the float64 output
    per_image = H * W * (len(taps) * 16 + 16) + H * w * K * 16 + h * w * K * 8
    step = max(1, SOFT_LABEL_BLOCK_BYTES // per_image)
    for a in range(0, n, step):
        lab = labels[a : a + step].astype(np.int64, copy=False)
        m = len(lab)
        valid = (lab >= 0) & (lab < K)
        cls = np.where(valid, lab, 0)
        # flat index ((image, py), tx, k) of the (m * H, w, K) partial sums
        row = (np.arange(m * H, dtype=np.int64) * (w * K)).reshape(m, H, 1)
        g = np.zeros(m * H * w * K, dtype=np.float64)
        for col, wt in taps:
            idx = row + (col * K)[None, None, :] + cls
            g += np.bincount(
                idx.ravel(), weights=(valid * wt[None, None, :]).ravel(), minlength=g.size
            )
        t = np.matmul(ah_t, g.reshape(m, H, w * K))  # (m, h, w * K)
        out[a : a + m] = t.reshape(m, h, w, K)
    return out


def soft_label_rows(
    labels: np.ndarray, image: np.ndarray, cell: np.ndarray, grid: tuple[int, int], n_classes: int
) -> np.ndarray:
    """The :func:`soft_token_labels` rows of drawn tokens, computed for the images drawn only.

    Args:
        labels: int array (m, H, W) (a store's labels or one chunk of them; may be a memory map).
        image: int array (n,), each token's image as an index into ``labels``.
        cell: int array (n,), each token's flat cell ``ty * w + tx``.
        grid: token grid ``(h, w)``.
        n_classes: ``K``.

    Returns:
        float32 array (n, K): row ``j`` is ``soft_token_labels(labels)[image[j]]`` at cell
        ``cell[j]``.
    """
    image, cell = np.asarray(image, dtype=np.int64), np.asarray(cell, dtype=np.int64)
    K = int(n_classes)
    out = np.empty((image.size, K), dtype=np.float32)
    if image.size == 0:
        return out
    hw = int(grid[0]) * int(grid[1])
    uniq, inv = np.unique(image, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    # blocks of distinct images whose (b, h, w, K) float32 soft labels stay near the budget
    step = max(1, SOFT_LABEL_BLOCK_BYTES // max(1, hw * K * 4))
    for a in range(0, uniq.size, step):
        b = min(a + step, uniq.size)
        lo, hi = np.searchsorted(inv[order], [a, b])
        pos = order[lo:hi]
        soft = soft_token_labels(np.asarray(labels[uniq[a:b]]), grid, K).reshape(b - a, hw, K)
        out[pos] = soft[inv[pos] - a, cell[pos]]
    return out


#: Arrays of at least this many values are converted by torch (vectorised, on the intra-op
#: threads of the thread policy); smaller ones by numpy (torch's per-call cost dominates).
TORCH_CAST_MIN = 1 << 16

#: The conversions :func:`cast_into` hands to torch (every one exact): float16 tokens to float32,
#: int16 / int32 labels to int64.
_TORCH_CASTS = {
    (np.dtype(np.float16), np.dtype(np.float32)),
    (np.dtype(np.int16), np.dtype(np.int64)),
    (np.dtype(np.int32), np.dtype(np.int64)),
}


def cast_into(dst: np.ndarray, src: np.ndarray) -> None:
    """Write ``src`` converted to ``dst``'s dtype into ``dst`` (same shape), exactly as
    :func:`to_float32` / :func:`to_int64` convert it.

    float16 -> float32 and int16 / int32 -> int64 (exact for every value) of a C-contiguous
    ``dst`` from :data:`TORCH_CAST_MIN` values on run through torch, 1.5-2x numpy's conversion;
    everything else through ``np.copyto``. ``src`` may be a read-only or memory-mapped array.

    Args:
        dst: the output array (n, ...), typically float32 or int64.
        src: array of the same shape.
    """
    if src.shape != dst.shape:
        raise ValueError(f"src: expected shape {dst.shape}, got {src.shape}")
    if (
        (src.dtype, dst.dtype) in _TORCH_CASTS
        and src.size >= TORCH_CAST_MIN
        and dst.flags.c_contiguous
    ):
        import torch

        src = np.ascontiguousarray(src)
        if not src.flags.writeable:  # torch warns about read-only arrays
            src = src.copy()
        torch.from_numpy(dst).copy_(torch.from_numpy(src))
    else:
        np.copyto(dst, src)


def _convert(a: np.ndarray, dtype) -> np.ndarray:
    a = np.asarray(a)
    dtype = np.dtype(dtype)
    if (a.dtype, dtype) not in _TORCH_CASTS or a.size < TORCH_CAST_MIN:
        return a.astype(dtype)
    out = np.empty(a.shape, dtype=dtype)
    cast_into(out, a)
    return out


def to_float32(a: np.ndarray) -> np.ndarray:
    """float16 -> float32 via torch's vectorised (and threaded) conversion, about 2x faster than
    numpy's ``astype`` for large arrays (:func:`cast_into`); other dtypes use ``astype``.

    Examples:
        >>> to_float32(np.array([1.5, -2.0], dtype=np.float16))
        array([ 1.5, -2. ], dtype=float32)
    """
    return _convert(a, np.float32)


def to_int64(a: np.ndarray) -> np.ndarray:
    """int16 / int32 labels -> int64 via torch's threaded conversion for large arrays, about
    1.5x numpy's ``astype`` (:func:`cast_into`); other dtypes use ``astype``.

    Examples:
        >>> to_int64(np.array([-1, 26], dtype=np.int16))
        array([-1, 26])
    """
    return _convert(a, np.int64)
