"""Figure 3 (PROTOCOL §7.4): the cumulative PCA explained variance per dataset."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from stego_probe.plots.labels import DATASET_TITLES, is_vit_backbone, table_backbones
from stego_probe.plots.style import theme
from stego_probe.plots.tables import aggregate_seeds, prepare_results

#: Figure 3 line order and palette index.
PCA_SPECTRUM_ORDER = {"cityscapes27": 0, "potsdam3": 1, "cocostuff27": 2}
_SPECTRUM_TICKS = (0, 1 / 16, 0.25, 0.5, 0.75, 1)


def _spectrum_axis(ax, widths: Mapping[str, int], backbones: Sequence[str]) -> None:
    """Figure 3's x ticks and label from the recorded widths (number of components C).

    One width: the ticks are component counts (0, C/16, ..., C) and the label gives C. Several:
    the paper's fractions of the width, with each dataset's width in the label. The width is
    written ``D_ViT`` only when every backbone is a ViT, ``C`` otherwise.
    """
    vit = bool(backbones) and all(is_vit_backbone(b) for b in backbones)
    sym = r"D_\mathregular{ViT}" if vit else "C"
    distinct = sorted(set(widths.values()))
    if len(distinct) == 1:
        w = distinct[0]
        labels = [f"{f * w:g}" for f in _SPECTRUM_TICKS]
        ax.set_xticks(list(_SPECTRUM_TICKS), labels)
        ax.set_xlabel(f"Number of Components (of ${sym}={w}$)")
        return
    labels = [
        "0",
        rf"$\frac{{{sym}}}{{16}}$",
        rf"$\frac{{{sym}}}{{4}}$",
        rf"$\frac{{{sym}}}{{2}}$",
        rf"$\frac{{3{sym}}}{{4}}$",
        rf"${sym}$",
    ]
    ax.set_xticks(list(_SPECTRUM_TICKS), labels)
    per = ", ".join(f"{DATASET_TITLES.get(ds, ds)} {w}" for ds, w in widths.items())
    ax.set_xlabel(f"Number of Components\n(${sym}$: {per})")


def plot_pca_spectrum(
    df: pd.DataFrame, *, n_points: int = 768, where: Mapping | None = None
) -> Figure:
    """Figure 3 (PROTOCOL §7.4): cumulative PCA explained variance per dataset.

    Uses rows ``method == "pca"``, ``metric == "explained_variance_ratio"`` with ``dim`` = the
    component index 1..C (all components must be present) and ``value`` = the ratio (averaged over
    seeds if several). Each curve's component axis is normalised to [0, 1] and linearly
    interpolated onto ``n_points`` points, so a 384-component spectrum is stretched to the 768 one.
    Lines: Cityscapes, Potsdam, Cocostuff (palette 0, 1, 2), then other datasets (3, 4, ...).
    x ticks: with one width C (the number of components) the component counts 0, C/16, C/4,
    C/2, 3C/4, C and the label "Number of Components (of C=64)"; with several widths the
    paper's fractions and each dataset's width in the label. The width is written ``D_ViT`` only
    when every backbone is a ViT.

    Args:
        df: results rows.
        n_points: interpolation grid size (the reference uses 768).
        where: column filters applied first.

    Returns:
        Figure (4.2 × 3 in) with one axes.

    Raises:
        ValueError: no such rows, or a dataset's component indices are not 1..C.
    """
    d = prepare_results(df, where)
    d = d[(d["metric"] == "explained_variance_ratio") & (d["method"] == "pca") & d["dim"].notna()]
    if not len(d):
        raise ValueError("no results rows with method='pca', metric='explained_variance_ratio'")
    agg = aggregate_seeds(d, ["dataset", "dim"])
    present = list(agg["dataset"].unique())
    order = [ds for ds in PCA_SPECTRUM_ORDER if ds in present]
    order += sorted(ds for ds in present if ds not in PCA_SPECTRUM_ORDER)
    spare = iter(range(3, 100))
    new_x = np.linspace(0, 1, int(n_points))
    widths: dict[str, int] = {}
    with theme() as palette:
        fig = Figure(figsize=(4.2, 3))
        ax = fig.subplots()
        for ds in order:
            g = agg[agg["dataset"] == ds].sort_values("dim")
            comp = g["dim"].to_numpy(float)
            if not np.array_equal(comp, np.arange(1, len(comp) + 1)):
                raise ValueError(
                    f"explained_variance_ratio rows of {ds!r}: dim must be the component indices "
                    f"1..{len(comp)}, got {comp.astype(int).tolist()[:10]}..."
                )
            widths[ds] = len(comp)
            cum = np.cumsum(g["mean"].to_numpy(float))
            x = np.linspace(0, 1, len(cum))
            y = np.interp(new_x, x, cum)
            ci = PCA_SPECTRUM_ORDER[ds] if ds in PCA_SPECTRUM_ORDER else next(spare)
            ax.plot(new_x, y, color=palette[ci % len(palette)], label=DATASET_TITLES.get(ds, ds))
        _spectrum_axis(ax, widths, table_backbones(d))
        ax.set_ylabel("Explained Variance")
        fig.tight_layout()
        ax.legend()
    return fig
