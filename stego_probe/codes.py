"""Codes: their two layouts, checks, flattening, normalisation, chunking and upsampling.

A *code* is what a probe reads: the per-token output of a projection (or the raw backbone
tokens). Probes, the evaluation pipeline and the distinctness measures accept codes in two
layouts:

* image layout ``(N, D, h, w)`` (torch convention; per-token outputs come back as ``(N, h, w)``),
* token layout ``(M, D)`` (sklearn / FAISS convention; per-token outputs come back as ``(M,)``).

Both numpy arrays and torch tensors (any device, any float dtype) are accepted. Everything that
reaches FAISS is float32 and C-contiguous, which is what FAISS requires.

Upsampling to label resolution is bilinear with ``align_corners=False`` (PROTOCOL §4.4: code
first, then probe): :func:`upsample_codes` on arrays, :func:`upsample` on tensors, with
:func:`check_size` validating the target size; :func:`bilinear_matrix` is its 1-D weight matrix. Importing this module does not import torch
(the torch helpers import it on first use).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


def to_numpy(x, name: str = "codes") -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor or array-like) as a numpy array without copying
    when possible. Torch tensors are detached and moved to the CPU.

    Args:
        x: array-like of any shape and dtype.
        name: argument name used in error messages.

    Returns:
        np.ndarray with the shape of ``x``.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except Exception as e:
        raise ValueError(f"{name}: expected an array or tensor, got {type(x).__name__}") from e


#: Values per block when :func:`all_finite` scans a large array (its temporary mask is this
#: many bytes, not one per value of the whole array).
FINITE_BLOCK = 1 << 24


def all_finite(x: np.ndarray) -> bool:
    """Whether a float array holds no NaN or +-inf, scanned in blocks of ``FINITE_BLOCK``
    values so that the check of a large sample costs 16 MB, not a byte per value.

    Examples:
        >>> all_finite(np.ones((3, 4))), all_finite(np.array([1.0, np.nan]))
        (True, False)
    """
    x = np.asarray(x)
    if x.dtype.kind not in "fc":
        return True
    if x.size <= FINITE_BLOCK or not x.flags.c_contiguous:
        return bool(np.isfinite(x).all())
    flat = x.reshape(-1)
    return all(
        bool(np.isfinite(flat[i : i + FINITE_BLOCK]).all())
        for i in range(0, flat.size, FINITE_BLOCK)
    )


def check_finite(x, name: str = "codes", hint: str = ""):
    """Raise ``ValueError`` naming ``name`` if the float array or tensor ``x`` holds NaN or
    +-inf; return ``x`` unchanged. The one finite check of the package.

    numpy arrays are scanned in blocks (:func:`all_finite`); a torch tensor with one reduction
    on its device, copied to the host only when it is not finite. Integer inputs pass.

    Args:
        x: numpy array or torch tensor of any shape.
        name: what to call ``x`` in the message (e.g. ``"train store runs/train codes"``).
        hint: appended to the message (e.g. ``" (tokens to project)"``).

    Returns:
        ``x``.

    Raises:
        ValueError: ``{name}: expected finite values, found 3 NaN or infinite value(s) (2 NaN,
            1 inf), first in row 17 of shape (200, 5){hint}`` (the row along the first axis).

    Examples:
        >>> check_finite(np.array([[1.0, np.inf]]), "x")
        Traceback (most recent call last):
        ...
        ValueError: x: expected finite values, found 1 NaN or infinite value(s) (0 NaN, 1 inf), first in row 0 of shape (1, 2)
    """
    if type(x).__module__.split(".")[0] == "torch":
        import torch

        if not x.is_floating_point() or bool(torch.isfinite(x).all()):
            return x
        arr = to_numpy(x, name)  # on the host (bfloat16 upcast)
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "fc" or all_finite(arr):
            return x
    bad = ~np.isfinite(arr)
    n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
    row = int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0]) if arr.ndim else 0
    raise ValueError(
        f"{name}: expected finite values, found {int(bad.sum())} NaN or infinite value(s) "
        f"({n_nan} NaN, {n_inf} inf), first in row {row} of shape {tuple(arr.shape)}{hint}"
    )


def flatten_codes(codes, name: str = "codes") -> tuple[np.ndarray, tuple[int, ...]]:
    """Bring codes to the token layout ``(M, D)`` float32 C-contiguous, checking them.

    Args:
        codes: ``(N, D, h, w)`` or ``(M, D)`` numpy array / torch tensor of real numbers.
        name: argument name used in error messages.

    Returns:
        ``(flat, lead_shape)``: ``flat`` is ``(M, D)`` float32 C-contiguous with
        ``M = N*h*w`` (token order: image, row, column); ``lead_shape`` is ``(N, h, w)`` or
        ``(M,)``, the shape per-token outputs should be reshaped to.

    Raises:
        ValueError: wrong number of dimensions, non-numeric dtype, zero width, NaN or inf.

    Examples:
        >>> flat, lead = flatten_codes(np.zeros((2, 5, 3, 4)))
        >>> flat.shape, lead
        ((24, 5), (2, 3, 4))
    """
    x = to_numpy(codes, name)
    if x.dtype.kind not in "fiub":
        raise ValueError(f"{name}: expected a real-valued array, got dtype {x.dtype}")
    if x.ndim == 4:
        n, d, h, w = x.shape
        lead = (n, h, w)
        x = x.transpose(0, 2, 3, 1).reshape(-1, d)
    elif x.ndim == 2:
        lead = (x.shape[0],)
    else:
        raise ValueError(
            f"{name}: expected shape (N, D, h, w) or (M, D), got {tuple(x.shape)} ({x.ndim}-D)"
        )
    if x.shape[1] == 0:
        raise ValueError(f"{name}: code width D must be >= 1, got shape {tuple(x.shape)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    check_finite(x, name)
    return x, lead


def l2_normalize(x: np.ndarray, eps: float = 1e-12, copy: bool = True) -> np.ndarray:
    """L2-normalise the rows of a token matrix, like ``torch.nn.functional.normalize``.

    Rows with norm below ``eps`` are divided by ``eps`` (so all-zero rows stay zero).

    Args:
        x: ``(M, D)`` float array.
        eps: lower bound of the divisor.
        copy: if False and ``x`` is float32 C-contiguous, normalise in place.

    Returns:
        ``(M, D)`` float32 C-contiguous array with unit-norm (or zero) rows.
    """
    if copy:
        out = np.array(x, dtype=np.float32, order="C", copy=True)
    else:
        out = np.ascontiguousarray(x, dtype=np.float32)
    if out.ndim != 2:
        raise ValueError(f"l2_normalize: expected a (M, D) array, got shape {out.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", out, out, dtype=np.float64))
    out /= np.maximum(norms, eps).astype(np.float32)[:, None]
    return out


def iter_chunks(x: np.ndarray, chunk_size: int) -> Iterator[tuple[slice, np.ndarray]]:
    """Iterate over row blocks of ``x``.

    Args:
        x: array with a leading axis of length ``M``.
        chunk_size: number of rows per block (>= 1).

    Yields:
        ``(rows, block)`` with ``rows`` a slice into the leading axis and ``block = x[rows]``
        (a view).
    """
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
    for start in range(0, len(x), chunk_size):
        rows = slice(start, min(start + chunk_size, len(x)))
        yield rows, x[rows]


def is_array_like(x) -> bool:
    """True for numpy arrays and torch tensors (single inputs), False for other iterables."""
    return isinstance(x, np.ndarray) or (hasattr(x, "detach") and hasattr(x, "shape"))


def lead_shape(codes, name: str = "codes") -> tuple[int, ...]:
    """Shape of per-token outputs for ``codes``: ``(N, h, w)`` for ``(N, D, h, w)``, ``(M,)``
    for ``(M, D)``. Raises ``ValueError`` for any other number of dimensions."""
    shape = tuple(int(s) for s in codes.shape)
    if len(shape) == 4:
        return (shape[0], shape[2], shape[3])
    if len(shape) == 2:
        return (shape[0],)
    raise ValueError(f"{name}: expected shape (N, D, h, w) or (M, D), got {shape}")


def _array_blocks(x, chunk_size: int, name: str) -> Iterator[np.ndarray]:
    """Flattened ``(m, D)`` float32 blocks of one array, cut *before* flattening so that a large
    (e.g. float16) array is never copied as a whole."""
    if x.ndim == 4:
        per_image = max(1, int(x.shape[2]) * int(x.shape[3]))
        step = max(1, chunk_size // per_image)
        for start in range(0, x.shape[0], step):
            flat, _ = flatten_codes(x[start : start + step], name)
            for _, chunk in iter_chunks(flat, chunk_size):
                yield chunk
    else:
        lead_shape(x, name)
        for start in range(0, x.shape[0], chunk_size):
            flat, _ = flatten_codes(x[start : start + chunk_size], name)
            yield flat


def iter_code_chunks(source, chunk_size: int = 1_000_000, name: str = "codes") -> Iterator:
    """Yield checked ``(m, D)`` float32 token blocks from an array or from an iterable of arrays.

    This is how probes read out-of-core data: pass a generator of code blocks (each ``(M_i, D)``
    or ``(N_i, D, h, w)``) instead of one array. Blocks are cut to at most ``chunk_size``
    tokens (an image-layout block is cut between images, so a block holds at least one image).
    Token order is preserved (image, row, column).

    Args:
        source: a ``(N, D, h, w)`` / ``(M, D)`` array or tensor, or an iterable of them.
        chunk_size: maximum number of tokens per yielded block (one image at least).
        name: argument name used in error messages.

    Yields:
        ``(m, D)`` float32 C-contiguous arrays; the width ``D`` is checked to be the same for
        all blocks, and every block is checked for NaN / inf.
    """
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
    single = is_array_like(source)
    if not single and not isinstance(source, Iterable):
        raise ValueError(
            f"{name}: expected an array, a tensor or an iterable of them, got {type(source).__name__}"
        )
    blocks: Iterable = [source] if single else source
    width = None
    for i, block in enumerate(blocks):
        label = name if single else f"{name}[{i}]"
        x = to_numpy(block, label)
        for chunk in _array_blocks(x, chunk_size, label):
            if width is None:
                width = chunk.shape[1]
            elif chunk.shape[1] != width:
                raise ValueError(
                    f"{label}: code width {chunk.shape[1]} differs from the first block's {width}"
                )
            yield chunk


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The ``(n_out, n_in)`` float64 matrix of 1-D bilinear interpolation, ``align_corners=False``.

    Row ``i`` holds the weights of output sample ``i`` (at most two non-zeros, on adjacent
    inputs, summing to one), computed as :func:`torch.nn.functional.interpolate` does for a
    given output size: source coordinate ``max(0, (i + 0.5) * n_in / n_out - 0.5)``, clamped to
    the last input sample. 2-D upsampling ``(h, w) -> (H, W)`` is ``A_h @ x @ A_w.T`` with
    ``A_h = bilinear_matrix(h, H)``, ``A_w = bilinear_matrix(w, W)``. Numpy only (no torch).

    Args:
        n_in: input length (>= 1).
        n_out: output length (>= 1); smaller than ``n_in`` for downsampling.

    Returns:
        float64 array (n_out, n_in).

    Raises:
        ValueError: a size below one.

    Examples:
        >>> bilinear_matrix(2, 4).tolist()
        [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]]
    """
    n_in, n_out = int(n_in), int(n_out)
    if n_in < 1 or n_out < 1:
        raise ValueError(f"bilinear_matrix: expected positive sizes, got {n_in} -> {n_out}")
    dst = np.arange(n_out, dtype=np.float64)
    src = np.maximum((dst + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    a = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(a, (rows, i0), 1.0 - frac)
    np.add.at(a, (rows, i1), frac)
    return a


def upsample_codes(codes, size: tuple[int, int]):
    """Bilinearly upsample image-layout codes to label resolution (``align_corners=False``).

    This is the evaluation upsampling of the protocol (code first, then probe): linear probes
    commute with it, cluster probes do not.

    Args:
        codes: ``(N, D, h, w)`` numpy array or torch tensor.
        size: target ``(H, W)``.

    Returns:
        ``(N, D, H, W)`` float32 numpy array (the input itself, as float32, if already that size).
    """
    import torch
    import torch.nn.functional as F

    x = to_numpy(codes, "codes")
    if x.ndim != 4:
        raise ValueError(f"codes: expected shape (N, D, h, w) to upsample, got {x.shape}")
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[2:]) == size:
        return np.ascontiguousarray(x, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad():
        out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return out.numpy()


def as_code_tensor(codes, device="cpu", name: str = "codes"):
    """Check codes and return them as a float32 torch tensor on ``device``.

    Args:
        codes: ``(N, D, h, w)`` or ``(M, D)`` numpy array or torch tensor, real-valued.
        device: torch device.
        name: argument name for error messages.

    Returns:
        float32 tensor of the same shape (shares memory with a float32 CPU input).

    Raises:
        ValueError: wrong number of dimensions, zero width, empty, NaN or inf.

    Examples:
        >>> tuple(as_code_tensor(np.zeros((2, 3, 4, 4), dtype=np.float16)).shape)
        (2, 3, 4, 4)
    """
    import torch

    if isinstance(codes, torch.Tensor):
        t = codes.detach()
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.uint8)):
            raise ValueError(f"{name}: expected a real-valued tensor, got dtype {t.dtype}")
        t = t.to(device=device, dtype=torch.float32)
        check_finite(t, name)
    else:
        x = to_numpy(codes, name)
        if x.dtype.kind not in "fiub":
            raise ValueError(f"{name}: expected a real-valued array, got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        check_finite(x, name)
        t = torch.from_numpy(x).to(device)
    if t.ndim not in (2, 4):
        raise ValueError(
            f"{name}: expected shape (N, D, h, w) or (M, D), got {tuple(t.shape)} ({t.ndim}-D)"
        )
    if t.shape[1] == 0:
        raise ValueError(f"{name}: code width D must be >= 1, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one image / token, got shape {tuple(t.shape)}")
    return t


def check_size(size, codes) -> tuple[int, int] | None:
    """Validate an upsampling target ``size`` for ``codes``.

    Args:
        size: ``(H, W)`` (any two integers) or None.
        codes: the codes to upsample (anything with ``.shape``): ``(N, D, h, w)`` when ``size``
            is given.

    Returns:
        ``(H, W)`` as ints, or None when there is nothing to do (``size`` is None or equals the
        code grid ``(h, w)``).

    Raises:
        ValueError: ``size`` for token-layout codes, or a non-positive ``H`` / ``W``.

    Examples:
        >>> check_size((8, 6), np.zeros((1, 3, 4, 4))), check_size((4, 4), np.zeros((1, 3, 4, 4)))
        ((8, 6), None)
    """
    if size is None:
        return None
    shape = tuple(int(s) for s in codes.shape)
    if len(shape) != 4:
        raise ValueError(
            f"size: only image-layout codes (N, D, h, w) can be upsampled, got {shape}"
        )
    size = (int(size[0]), int(size[1]))
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"size: expected a positive (H, W), got {size}")
    return None if size == shape[2:] else size


def upsample(x, size: tuple[int, int] | None):
    """Bilinear upsampling of a tensor ``(N, C, h, w) -> (N, C, H, W)``, ``align_corners=False``.

    Args:
        x: ``(N, C, h, w)`` float torch tensor (codes, logits or scores: bilinear interpolation
            is linear, so upsampling affine scores equals scoring the upsampled code).
        size: ``(H, W)``, or None for the identity (see :func:`check_size`).

    Returns:
        ``(N, C, H, W)`` tensor (``x`` itself when ``size`` is None).
    """
    if size is None:
        return x
    import torch.nn.functional as F

    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
