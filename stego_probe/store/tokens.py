"""Token and label arrays as every store class reads them: the index type, the seeded token
draw, labels pooled to the token grid, fast float16 -> float32."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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


#: Arrays of at least this many float16 values are converted by torch (vectorised, on the
#: intra-op threads of the thread policy); smaller ones by numpy (torch's per-call cost dominates).
TORCH_CAST_MIN = 1 << 16


def cast_into(dst: np.ndarray, src: np.ndarray) -> None:
    """Write ``src`` converted to ``dst``'s dtype into ``dst`` (same shape), exactly as
    :func:`to_float32` converts it.

    float16 -> float32 (exact for every value) of a C-contiguous ``dst`` from
    :data:`TORCH_CAST_MIN` values on runs through torch, about 2x numpy's conversion;
    everything else through ``np.copyto``. ``src`` may be a read-only or memory-mapped array.

    Args:
        dst: the output array (n, ...), typically float32.
        src: array of the same shape.
    """
    if src.shape != dst.shape:
        raise ValueError(f"src: expected shape {dst.shape}, got {src.shape}")
    if (
        src.dtype == np.float16
        and dst.dtype == np.float32
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


def to_float32(a: np.ndarray) -> np.ndarray:
    """float16 -> float32 via torch's vectorised (and threaded) conversion, about 2x faster than
    numpy's ``astype`` for large arrays (:func:`cast_into`); other dtypes use ``astype``.

    Examples:
        >>> to_float32(np.array([1.5, -2.0], dtype=np.float16))
        array([ 1.5, -2. ], dtype=float32)
    """
    a = np.asarray(a)
    if a.dtype != np.float16 or a.size < TORCH_CAST_MIN:
        return a.astype(np.float32)
    out = np.empty(a.shape, dtype=np.float32)
    cast_into(out, a)
    return out
