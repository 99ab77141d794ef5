"""Figures from arrays rather than tables: 2-D maps of patch features and qualitative grids.

The 2-D coordinates are computed by :func:`stego_probe.embedding.embedding_2d`; this module
only draws them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from stego_probe.colors import colormap_for
from stego_probe.plots.style import theme


def _class_legend(fig, present: Iterable[int], cmap: np.ndarray, class_names, max_entries: int):
    present = [int(k) for k in present if k >= 0][:max_entries]
    if not present:
        return None
    handles = [Patch(color=cmap[k] / 255.0) for k in present]
    names = [
        class_names[k] if class_names is not None and k < len(class_names) else str(k)
        for k in present
    ]
    return fig.legend(handles, names, loc="lower center", ncol=min(6, len(present)), fontsize=8)


def plot_embedding_map(
    points2d_by_method: Mapping[str, np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    dataset: str | None = None,
    point_size: float = 4.0,
    max_legend: int = 30,
) -> Figure:
    """Side-by-side 2-D maps of patch features coloured by class (e.g. DINO versus STEGO).

    Args:
        points2d_by_method: name -> float array (M, 2) of coordinates (from
            :func:`stego_probe.embedding.embedding_2d`),
            one panel each, in insertion order; all share the same M points.
        labels: int array (M,) class per point; points with a negative label (ignore) are not
            drawn.
        class_names: names for the legend (default: class ids).
        dataset: picks the colour map (:func:`stego_probe.colors.colormap_for`).
        point_size: scatter marker size.
        max_legend: at most this many classes in the legend.

    Returns:
        Figure with one axes per method and a class legend.
    """
    if not points2d_by_method:
        raise ValueError("points2d_by_method: expected at least one name -> (M, 2) array")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels: expected an integer array (M,), got {labels.dtype} {labels.shape}"
        )
    cmap = colormap_for(dataset)
    if labels.size and labels.max() >= len(cmap) - 1:
        raise ValueError(f"labels: class ids must be < {len(cmap) - 1} for this colour map")
    keep = labels >= 0
    colors = cmap[np.where(keep, labels, 0)] / 255.0
    n = len(points2d_by_method)
    with theme():
        fig = Figure(figsize=(4.0 * n, 4.6))
        axs = fig.subplots(1, n, squeeze=False)[0]
        for ax, (name, pts) in zip(axs, points2d_by_method.items()):
            pts = np.asarray(pts, dtype=float)
            if pts.shape != (labels.shape[0], 2):
                raise ValueError(
                    f"points2d_by_method[{name!r}]: expected shape ({labels.shape[0]}, 2), "
                    f"got {pts.shape}"
                )
            ax.scatter(pts[keep, 0], pts[keep, 1], c=colors[keep], s=point_size, linewidths=0)
            ax.set_title(str(name))
            ax.set_xticks([])
            ax.set_yticks([])
        present = np.unique(labels[keep])
        n_leg = min(len(present), max_legend)
        bottom = 0.06 + 0.05 * math.ceil(n_leg / 6) if n_leg else 0.0
        fig.tight_layout(rect=[0, bottom, 1, 1])
        _class_legend(fig, present, cmap, class_names, max_legend)
    return fig


def plot_qualitative(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    dataset: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Qualitative grid: one row per image; columns image, ground truth, each prediction.

    Label images are coloured with :func:`stego_probe.colors.colorize` (Cityscapes map for
    ``cityscapes27``, the VOC map otherwise; ignore -1 takes the map's last entry).

    Args:
        images: uint8 array (N, H, W, 3).
        labels: int array (N, H, W), classes in [0, K) and -1 = ignore.
        predictions: name -> int array (N, H, W) in label space (after matching).
        dataset: dataset key that picks the colour map.
        class_names: if given, a legend of the classes that appear.

    Returns:
        Figure with N × (2 + len(predictions)) axes.
    """
    from stego_probe.colors import colorize

    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"images: expected uint8 array (N, H, W, 3), got {images.dtype} {images.shape}"
        )
    if labels.shape != images.shape[:3]:
        raise ValueError(f"labels: expected shape {images.shape[:3]}, got {labels.shape}")
    preds = {}
    for name, p in predictions.items():
        p = np.asarray(p)
        if p.shape != labels.shape:
            raise ValueError(f"predictions[{name!r}]: expected shape {labels.shape}, got {p.shape}")
        preds[str(name)] = p
    cmap = colormap_for(dataset)
    columns = [("Image", None), ("Ground truth", labels)] + list(preds.items())
    n, ncols = images.shape[0], len(columns)
    present = set(np.unique(labels).tolist())
    for p in preds.values():
        present |= set(np.unique(p).tolist())
    with theme():
        extra = 0.6 if class_names is not None else 0.0
        fig = Figure(figsize=(2.2 * ncols, 2.2 * n + extra))
        axs = fig.subplots(n, ncols, squeeze=False)
        for i in range(n):
            for j, (title, arr) in enumerate(columns):
                ax = axs[i, j]
                ax.imshow(images[i] if arr is None else colorize(arr[i], cmap=cmap))
                ax.set_axis_off()
                if i == 0:
                    ax.set_title(title)
        rect_bottom = extra / (2.2 * n + extra) if extra else 0.0
        fig.tight_layout(rect=[0, rect_bottom, 1, 1])
        if class_names is not None:
            _class_legend(fig, sorted(present), cmap, class_names, 60)
    return fig
