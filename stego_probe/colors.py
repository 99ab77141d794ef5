"""Colour maps for label images: Cityscapes-27 and the 512-entry PASCAL VOC map.

Cityscapes-27 uses the Cityscapes colours of its 27 classes; every other dataset uses the PASCAL
VOC bit-interleaved colour map with 512 entries (PROTOCOL §7.5). In both maps the ignore label
-1 takes the **last** entry, as NumPy negative indexing does in the reference.

Examples:
    >>> import numpy as np
    >>> from stego_probe.colors import colorize, voc_colormap
    >>> voc_colormap()[1].tolist()
    [128, 0, 0]
    >>> colorize(np.array([[0, 1], [-1, 2]])).shape
    (2, 2, 3)
"""

from __future__ import annotations

import numpy as np

#: Cityscapes-27 colours, label id 0..26, then the colour of the ignore label -1 (black).
CITYSCAPES_COLORMAP = np.array(
    [
        (128, 64, 128),
        (244, 35, 232),
        (250, 170, 160),
        (230, 150, 140),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (180, 165, 180),
        (150, 100, 100),
        (150, 120, 90),
        (153, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 0, 90),
        (0, 0, 110),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
        (0, 0, 0),
    ],
    dtype=np.uint8,
)
CITYSCAPES_COLORMAP.setflags(write=False)


def voc_colormap(n: int = 512) -> np.ndarray:
    """The PASCAL VOC colour map.

    Entry ``i`` is built bit by bit: starting with ``v = i``, for bit position ``s = 7, 6, ..., 0``
    bit ``s`` of channel ``c`` (R, G, B) is set to bit ``c`` of ``v``, then ``v`` is shifted
    right by 3. The lowest three bits of ``i`` therefore become the most significant colour bits.

    Args:
        n: number of entries (>= 1); the reference uses 512.

    Returns:
        uint8 array (n, 3), RGB.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"voc_colormap: n must be >= 1, got {n}")
    idx = np.arange(n, dtype=np.int64)
    cmap = np.zeros((n, 3), dtype=np.int64)
    v = idx.copy()
    for s in range(7, -1, -1):
        for c in range(3):
            cmap[:, c] |= ((v >> c) & 1) << s
        v >>= 3
    return cmap.astype(np.uint8)


def colormap_for(dataset: str | None) -> np.ndarray:
    """The colour map a dataset's figures use.

    Args:
        dataset: dataset key; ``"cityscapes27"`` gets :data:`CITYSCAPES_COLORMAP`, anything else
            (including ``None``) the 512-entry VOC map.

    Returns:
        uint8 array (n, 3); the last entry is the colour of the ignore label -1.
    """
    if dataset == "cityscapes27":
        return CITYSCAPES_COLORMAP.copy()
    return voc_colormap(512)


def colorize(
    labels: np.ndarray, dataset: str | None = None, cmap: np.ndarray | None = None
) -> np.ndarray:
    """Colour a label image.

    Args:
        labels: integer array (H, W) (any shape works) with values in ``[-1, n)``, where ``n`` is
            the number of colour-map entries; -1 (ignore) takes the last entry.
        dataset: picks the colour map via :func:`colormap_for` when ``cmap`` is not given.
        cmap: explicit uint8 colour map (n, 3).

    Returns:
        uint8 array (H, W, 3).

    Raises:
        ValueError: non-integer labels, or values outside ``[-1, n)`` (e.g. a raw 255 ignore value
            with the 28-entry Cityscapes map: canonicalise labels with
            :func:`stego_probe.labels.canonicalize` first).
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"colorize: labels must be an integer array, got dtype {labels.dtype}")
    cmap = colormap_for(dataset) if cmap is None else np.asarray(cmap)
    if cmap.ndim != 2 or cmap.shape[1] != 3:
        raise ValueError(f"colorize: cmap must have shape (n, 3), got {cmap.shape}")
    n = cmap.shape[0]
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < -1 or hi >= n:
            raise ValueError(
                f"colorize: labels must lie in [-1, {n}) for a {n}-entry colour map, "
                f"got values in [{lo}, {hi}] (canonicalise raw ignore values such as 255 to -1 "
                "with stego_probe.labels.canonicalize)"
            )
    return cmap.astype(np.uint8)[labels]
