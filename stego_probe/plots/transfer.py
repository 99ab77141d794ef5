"""The transfer figure: a probe's metric versus D per eval dataset, in-domain against transferred.

:func:`plot_transfer` draws the rows of :func:`stego_probe.transfer.run_transfer` (those with
``fit_dataset`` / ``eval_dataset``); the D axis (:func:`stego_probe.plots.dims.dim_ticks`),
palette, series colours and legend are those of the other metric-over-D figures
(:mod:`stego_probe.plots.dims`, :mod:`stego_probe.plots.style`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from stego_probe.plots.dims import format_dim_axis
from stego_probe.plots.labels import (
    METRIC_LABELS,
    RAW_METHODS,
    errorbar_note,
    legend_title,
    method_label,
)
from stego_probe.plots.style import (
    finish_legend,
    legend_rect_bottom,
    series_style,
    theme,
    title_chars,
)
from stego_probe.plots.tables import aggregate_seeds, prepare_results

_XLABEL = "\n" + r"Embedding Dimension $D$"  # as the other metric-over-D figures


#: Markers of the transferred series, one per fit dataset of a panel (in name order).
TRANSFER_MARKERS = ("s", "^", "D", "v", "P", "*")
_PROBE_NAMES = {"kmeans": "k-means probe", "linear": "linear probe", "cluster": "cluster probe"}


def plot_transfer(
    df: pd.DataFrame,
    *,
    probe: str = "kmeans",
    metric: str = "miou",
    methods=None,
    where: Mapping | None = None,
) -> Figure:
    """Transfer figure: ``metric`` of ``probe`` versus D, one panel per eval dataset.

        In each panel (titled by the eval dataset's name, the ``eval_dataset`` column) one colour
        per method (the Figure 4 palette, :func:`series_style`): a solid line for the in-domain rows
        (``fit_dataset == eval_dataset``) and a dashed line per other fit dataset (the projection
        fitted on that dataset's train store; markers :data:`TRANSFER_MARKERS` tell several fit
        datasets apart). The raw features (``dino``, the identity: nothing is fitted) are drawn
    in-domain only, since their transferred rows repeat the in-domain ones. Points are the mean over seeds, with ±1 sample std bars when a point has
        several seeds (the legend title says so, :func:`errorbar_note`). x: log axis with ticks
        3·2^k, as the other metric-over-D figures.

        Args:
            df: results rows with the transfer columns (:func:`stego_probe.transfer.run_transfer`);
                rows without a ``fit_dataset`` / ``eval_dataset`` are ignored.
            probe: the probe drawn (``kmeans``: the unsupervised protocol; ``linear``, ``cluster``).
            metric: the metric drawn (``miou``, ``accuracy`` ...).
            methods: restrict to these methods (default: all in the rows).
            where: column -> value (or list of values) filters applied first.

        Returns:
            Figure with one axis per eval dataset (in the table's order of first appearance) and a
            shared legend at lower centre.

        Raises:
            ValueError: no transfer rows of ``probe`` / ``metric`` to draw.
    """
    d = prepare_results(df, where)
    for col in ("fit_dataset", "eval_dataset"):
        if col not in d.columns:
            raise ValueError(f"plot_transfer: the table has no {col!r} column (no transfer rows)")
    d = d[
        (d["probe"] == probe)
        & (d["metric"] == metric)
        & d["dim"].notna()
        & (d["fit_dataset"] != "")
        & (d["eval_dataset"] != "")
    ]
    if methods is not None:
        d = d[d["method"].isin(list(methods))]
    # the raw features (identity) have nothing fitted: transferred rows repeat the in-domain ones
    d = d[~(d["method"].isin(RAW_METHODS) & (d["fit_dataset"] != d["eval_dataset"]))]
    if not len(d):
        raise ValueError(
            f"plot_transfer: no transfer rows (fit_dataset / eval_dataset set) with probe "
            f"{probe!r} and metric {metric!r}"
        )
    agg = aggregate_seeds(d, ["eval_dataset", "fit_dataset", "method", "crf", "mode", "dim"])
    evals = list(dict.fromkeys(d["eval_dataset"]))
    ncols = len(evals)
    width, height = max(4.2 * ncols, 6.0), 4.6
    mname = METRIC_LABELS.get(metric, metric).replace("\n", " ")
    with theme() as palette:
        fig = Figure(figsize=(width, height))
        axs = fig.subplots(1, ncols, sharex=True, squeeze=False)[0]
        legend: dict = {}
        for c, ev in enumerate(evals):
            ax = axs[c]
            sub = agg[agg["eval_dataset"] == ev]
            others = sorted(set(sub["fit_dataset"]) - {ev})
            for (fit, method), g in sub.groupby(["fit_dataset", "method"], sort=True):
                style = series_style(method, False)
                g = g.sort_values("dim")
                multi = bool((g["n"] > 1).any())
                own = fit == ev
                marker = style.marker if own else TRANSFER_MARKERS[
                    others.index(fit) % len(TRANSFER_MARKERS)
                ]  # fmt: skip
                label = method_label(method, d) + (" (in-domain)" if own else f" (fitted on {fit})")
                cont = ax.errorbar(
                    g["dim"].to_numpy(float),
                    g["mean"].to_numpy(float),
                    yerr=np.nan_to_num(g["std"].to_numpy(float), nan=0.0) if multi else None,
                    fmt=marker + ("-" if own else "--"),
                    color=palette[style.color],
                    markerfacecolor=None if own else "none",
                    capsize=3 if multi else 0,
                    label=label,
                    gid="in-domain" if own else "transferred",
                    zorder=3 if own else 2,
                )
                legend.setdefault(label, (style.order + (0 if own else 0.5), cont))
            ax.set_title(f"({chr(ord('a') + c)}) evaluated on {ev}")
            ax.set_xlabel(_XLABEL)
            if c == 0:
                ax.set_ylabel(f"{_PROBE_NAMES.get(probe, probe)} {mname}")
        format_dim_axis(axs, agg["dim"])
        ncol = 3 if width >= 9 else 2
        notes = ["solid: in-domain, dashed: projection fitted on another dataset"]
        notes += errorbar_note(agg["n"])
        title = legend_title(d, notes, title_chars(width))
        bottom = legend_rect_bottom(len(legend) + ncol * (title.count("\n") + 1), ncol, height)
        fig.tight_layout(rect=[0, bottom, 1, 1], w_pad=1)
        finish_legend(fig, legend, title, loc="lower center", ncol=ncol)
    return fig
