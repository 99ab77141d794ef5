"""Label conventions, in one place.

Labels are int64 class ids in ``[0, K)``. Every other value (-1, 255, >= K) means *ignore* and is
excluded from every loss and metric. The canonical ignore value written by stego_probe is
:data:`IGNORE` (-1).
"""

from __future__ import annotations

import numpy as np

IGNORE = -1
#: Raw label values accepted as "ignore" by label checks (``check_labels(..., ignore=)``) besides
#: the canonical -1: the 255 of many label PNGs.
IGNORE_VALUES = (IGNORE, 255)


def valid_mask(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Boolean mask of pixels whose label lies in ``[0, n_classes)``.

    Args:
        labels: integer array of any shape.
        n_classes: number of classes ``K``.

    Returns:
        bool array with the shape of ``labels``.
    """
    labels = np.asarray(labels)
    return (labels >= 0) & (labels < n_classes)


def canonicalize(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Return ``labels`` as int64 with every value outside ``[0, n_classes)`` set to :data:`IGNORE`.

    Args:
        labels: integer array of any shape.
        n_classes: number of classes ``K``.

    Returns:
        int64 array, same shape, values in ``[0, K) ∪ {-1}``.
    """
    out = np.asarray(labels).astype(np.int64, copy=True)
    out[~valid_mask(out, n_classes)] = IGNORE
    return out


def check_labels(
    labels: np.ndarray,
    n_classes: int,
    ignore_values: tuple[int, ...] = (IGNORE,),
    source: str = "labels",
) -> np.ndarray:
    """Validate raw labels and return them canonicalised (ignore -> -1).

    Values in ``[0, K)`` are classes; values listed in ``ignore_values`` are ignored; anything
    else is an error, because it usually means the wrong label map or the wrong ``n_classes``.

    Args:
        labels: integer array of any shape.
        n_classes: number of classes ``K``.
        ignore_values: raw values that mean "ignore".
        source: what to name in the error message (a file path, an argument name).

    Returns:
        int64 array, same shape, values in ``[0, K) ∪ {-1}``.

    Raises:
        ValueError: if a value is neither a class id nor an ignore value.
    """
    arr = np.asarray(labels)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{source}: labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = ~valid_mask(arr, n_classes) & ~np.isin(arr, np.asarray(ignore_values, dtype=np.int64))
    if bad.any():
        vals = np.unique(arr[bad])[:10].tolist()
        raise ValueError(
            f"{source}: label values {vals} are outside [0, {n_classes}) and are not an ignore "
            f"value {list(ignore_values)}; check n_classes and the label map"
        )
    return canonicalize(arr, n_classes)
