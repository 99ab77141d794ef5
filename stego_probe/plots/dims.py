"""Figures of a metric versus the embedding dimension D (log axis, ticks 3·2^k).

* :func:`plot_metric_over_dims` — Figure 4 (mIoU) and Appendix Figure 1 (accuracy), with the
  published points as an optional overlay;
* :func:`plot_hnne_appendix` — Appendix Figure 2 (one dataset, h-NNE included, 2×2);
* :func:`plot_distinctness_over_dims`, :func:`plot_kmeans_convergence` — cluster-distinctness and
  k-means statistics, one panel per dataset and metric.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from stego_probe.plots.labels import (
    DATASET_TITLES,
    METRIC_LABELS,
    SeriesLabeller,
    backbone_method_label,
    dataset_order,
    dataset_title,
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
from stego_probe.plots.tables import aggregate_seeds, overlay_table, prepare_results

#: Metrics drawn by :func:`plot_distinctness_over_dims` by default.
DISTINCTNESS_METRICS = ("silhouette", "scatter_ratio", "centroid_margin", "kmeans_ari")
#: Metrics drawn by :func:`plot_kmeans_convergence`.
CONVERGENCE_METRICS = ("kmeans_iterations", "kmeans_ari", "kmeans_nmi")
#: Probes of the Figure 4 rows, in row order.
FIGURE4_PROBES = ("linear", "cluster", "kmeans")
_PROBE_YLABELS = {
    "linear": "Supervised\nLinear Probe {m}",
    "cluster": "Unsupervised\nCluster Probe {m}",
    "kmeans": "Unsupervised k-means\nProbe {m} (stego_probe)",
}
_XLABEL = "\n" + r"Embedding Dimension $D$"
_PROVENANCE = ("recorded", "paper")


def dim_ticks(dims: Iterable[float]) -> np.ndarray:
    """x ticks ``3 * 2**k`` covering the given dimensions (PROTOCOL §7.2: 3, 6, ..., 768).

    Args:
        dims: positive embedding dimensions.

    Returns:
        int64 array of ticks, ``k`` from ``max(0, floor(log2(min/3)))`` to ``ceil(log2(max/3))``.
    """
    d = np.asarray([float(x) for x in dims if np.isfinite(x) and x > 0])
    if d.size == 0:
        return 3 * 2 ** np.arange(0, 9, dtype=np.int64)
    kmin = max(0, math.floor(math.log2(d.min() / 3)))
    kmax = max(kmin, math.ceil(math.log2(d.max() / 3)))
    return 3 * 2 ** np.arange(kmin, kmax + 1, dtype=np.int64)


def format_dim_axis(axes: Iterable, dims: Iterable[float]) -> None:
    """The D axis of every metric-over-D figure on each of ``axes``: log2 scale, ticks
    :func:`dim_ticks` of ``dims``, plain integer labels."""
    ticks = dim_ticks(dims)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks)
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        fmt = ticker.ScalarFormatter()
        fmt.set_useOffset(False)
        fmt.set_scientific(False)
        ax.xaxis.set_major_formatter(fmt)
        ax.tick_params(axis="x", labelsize=9)


_FRACTION_XLABEL = "\n" + r"$D$ / backbone width $C$"


def format_fraction_axis(axes: Iterable, fractions: Iterable[float]) -> None:
    """The D / C axis of a ``x="fraction"`` figure: log2 scale, ticks ``2**-k`` covering
    ``fractions`` (labelled ``1/8``, ..., ``1``)."""
    f = np.asarray([float(v) for v in fractions if np.isfinite(v) and v > 0])
    kmax = max(0, math.ceil(-math.log2(f.min()))) if f.size else 8
    ticks = [2.0**-k for k in range(kmax, -1, -1)]
    labels = ["1" if k == 0 else f"1/{2**k}" for k in range(kmax, -1, -1)]
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels)
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.tick_params(axis="x", labelsize=9)


def _with_fraction(agg: pd.DataFrame, d_all: pd.DataFrame, widths) -> pd.DataFrame:
    """``agg`` with ``x = dim / C`` (C of each row's backbone: ``widths`` or the rows')."""
    from stego_probe.compare import backbone_widths

    known = {**backbone_widths(d_all), **dict(widths or {})}
    missing = sorted(set(agg["backbone"]) - set(known)) if "backbone" in agg.columns else []
    if "backbone" not in agg.columns:  # one backbone (aggregate_seeds checked): the rows'
        one = sorted(set(d_all["backbone"]) - {""})
        if len(one) != 1 or one[0] not in known:
            raise ValueError("x='fraction': the rows name no backbone width; pass widths=")
        c = pd.Series(float(known[one[0]]), index=agg.index)
    else:
        if missing:
            raise ValueError(f"x='fraction': no width for backbones {missing}; pass widths=")
        c = agg["backbone"].map(lambda b: float(known[b]))
    return agg.assign(x=agg["dim"].to_numpy(float) / c.to_numpy(float))


_PUBLISHED_LABELS = {True: "published (digitised)", False: "published (reported)"}


def _draw_published(ax, pts: pd.DataFrame, palette, legend: dict) -> None:
    """Hollow markers with the published uncertainty as error bars.

    Digitised points use the series' marker (``x`` -> ``o``); reported numbers (issue logs, the
    STEGO paper) use a hollow square.
    """
    if pts is None or not len(pts):
        return
    groups = pts.groupby(["series_method", "crf", "digitised"], sort=True)
    for (method, crf, digitised), g in groups:
        style = series_style(method, crf)
        if digitised:
            marker = style.marker if style.marker in ("v", "o", "^", "D") else "o"
        else:
            marker = "s"
        label = _PUBLISHED_LABELS[bool(digitised)]
        ax.errorbar(
            g["dim"].to_numpy(float),
            g["value"].to_numpy(float),
            yerr=g["uncertainty"].to_numpy(float),
            fmt=marker,
            markerfacecolor="none",
            markeredgecolor=palette[style.color],
            ecolor=palette[style.color],
            markersize=7,
            capsize=2,
            label=label,
            gid="published",
            zorder=1,
        )
        if label not in legend:
            proxy = Line2D(
                [],
                [],
                marker="o" if digitised else "s",
                linestyle="",
                markerfacecolor="none",
                color="0.35",
                markersize=7,
            )
            legend[label] = (1000.0 + (0 if digitised else 1), proxy)


def _published_drawn(legend: dict) -> bool:
    return any(lab in legend for lab in _PUBLISHED_LABELS.values())


def _figure4_table(
    df: pd.DataFrame,
    metrics: Sequence[str],
    probes: Sequence[str],
    methods: Sequence[str] | None,
    where: Mapping | None,
    figure_provenance: str,
    hue: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Prepared rows and their seed aggregate for the metric-over-D figures (``hue``: a
    column, ``"backbone"``, that splits every series and joins the grouping)."""
    if figure_provenance not in _PROVENANCE:
        raise ValueError(
            f"figure_provenance: expected one of {_PROVENANCE}, got {figure_provenance!r}"
        )
    d_all = prepare_results(df, where)
    d = d_all[
        d_all["metric"].isin(list(metrics))
        & d_all["probe"].isin(list(probes))
        & d_all["dim"].notna()
    ]
    if methods is not None:
        d = d[d["method"].isin(list(methods))]
    if not len(d):
        raise ValueError(
            f"no results rows with metric in {list(metrics)} and probe in {list(probes)} "
            "(and a dim) to plot"
        )
    if figure_provenance == "paper":
        keep = np.ones(len(d), dtype=bool)
        key_cols = ["dataset", "probe", "metric", "method", "crf"]
        for key, g in d.groupby(key_cols, sort=True):
            modes = sorted(g["mode"].unique())
            if len(modes) <= 1:
                continue
            want = series_style(key[3], key[4]).paper_mode
            if want not in modes:
                raise ValueError(
                    f"figure_provenance='paper': series {dict(zip(key_cols, key))} has modes "
                    f"{modes} and none is the paper's {want!r}; filter with where={{'mode': ...}}"
                )
            keep &= ~d.index.isin(g.index[g["mode"] != want])
        d = d[keep]
    by = ["dataset", "probe", "metric", "method", "crf", "mode", "dim"]
    agg = aggregate_seeds(d, by + ([hue] if hue else []))
    return d_all, d, agg


#: Marker and line style of each method in a ``hue="backbone"`` figure (colour = backbone).
HUE_METHOD_STYLES = {
    "stego": ("o", "-"),
    "pca": ("s", "--"),
    "rp": ("^", "-."),
    "rp_sparse": ("v", ":"),
    "umap": ("D", ":"),
    "hnne": ("P", ":"),
}

#: Line colours of the backbones of a ``hue="backbone"`` figure, in backbone order.
BACKBONE_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")


def _draw_metric_panel(
    ax,
    agg: pd.DataFrame,
    palette,
    legend: dict,
    labeller: SeriesLabeller,
    backbones: Sequence[str] | None = None,
):
    """Draw every (method, crf, mode) series of one panel; register legend handles. With
    ``backbones`` (a ``hue="backbone"`` figure) every backbone has its own series, coloured
    by backbone (marker and line style by method), labelled :func:`backbone_method_label`;
    the x values are the ``x`` column when ``agg`` has one (else ``dim``)."""
    series = []
    keys = ["method", "crf", "mode"] + (["backbone"] if backbones is not None else [])
    for key, g in agg.groupby(keys, sort=True):
        method, crf, mode = key[:3]
        style = series_style(method, crf)
        if backbones is not None:
            i = list(backbones).index(key[3])
            color = BACKBONE_COLORS[i % len(BACKBONE_COLORS)]
            label = (
                backbone_method_label(key[3], method)
                + labeller(method, crf, mode)[len(labeller.names.get(method, method)) :]
            )
            order = 100.0 * i + style.order
            marker, line = HUE_METHOD_STYLES.get(method, (style.marker, style.linestyle))
            style = dataclasses.replace(style, marker=marker, linestyle=line)
        else:
            color, label, order = palette[style.color], labeller(method, crf, mode), style.order
        series.append((order, mode != style.paper_mode, method, crf, mode, style, g, color, label))
    series.sort(key=lambda s: s[:5])
    for order, off_mode, _method, _crf, _mode, style, g, color, label in series:
        g = g.sort_values("dim")
        x = g["x" if "x" in g.columns else "dim"].to_numpy(float)
        y = g["mean"].to_numpy(float)
        multi = bool((g["n"] > 1).any())
        yerr = np.nan_to_num(g["std"].to_numpy(float), nan=0.0) if multi else None
        linestyle = ":" if (off_mode and style.linestyle) else style.linestyle
        cont = ax.errorbar(
            x,
            y,
            yerr=yerr,
            fmt=style.marker + linestyle,
            color=color,
            capsize=3 if multi else 0,
            label=label,
            zorder=3,
        )
        if style.hline and len(x) == 1:
            ax.axhline(y[0], color=color, linestyle="--", label="_nolegend_", zorder=2)
        if label not in legend:
            legend[label] = (order + (0.25 if off_mode else 0.0), cont)


def plot_metric_over_dims(
    df: pd.DataFrame,
    metric: str = "miou",
    probe_rows: Sequence[str] = ("linear", "cluster"),
    published=None,
    *,
    figure_provenance: str = "recorded",
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    where: Mapping | None = None,
    hue: str | None = None,
    x: str = "dim",
    widths: Mapping[str, int] | None = None,
) -> Figure:
    """Figure 4 (``metric="miou"``) / Appendix Figure 1 (``"accuracy"``): metric versus D.

    Grid: one row per probe in ``probe_rows`` that has rows (linear top, cluster below; a
    ``"kmeans"`` row — stego_probe's FAISS k-means protocol, labelled as such — is its own row and
    never shares a panel with the reference cluster probe), one column per dataset present
    (cocostuff27, cityscapes27, potsdam3, then the others alphabetically). x: log axis with ticks
    3·2^k; series styles per PROTOCOL §7.2 (:func:`series_style`); mean over seeds with ±std error
    bars when a point has several seeds.

    Labels come from the rows: the raw-feature series is named by :func:`method_label` ("DINO
    (ours)" only for a ``dino_*`` backbone, e.g. "descriptor (raw)" otherwise); column titles
    give D_STEGO and the recorded backbone width ("D_ViT" only for a ViT, "backbone width C"
    otherwise); "with CRF" / "w/o CRF" appear only when the drawn rows include CRF rows; the
    legend title names the backbone and says what the error bars show (:func:`errorbar_note`).

    Args:
        df: results rows (``RESULT_COLUMNS``).
        metric: metric to plot (``miou``, ``accuracy`` or any other metric name).
        probe_rows: probes, one grid row each, in order.
        published: ``None``/``False`` (no overlay), ``True`` (the packaged published points,
            :func:`stego_probe.published.overlay_points`) or a DataFrame of such points; drawn as
            hollow markers with their uncertainty as error bars.
        figure_provenance: ``"recorded"`` shows each series' evaluation mode in the legend
            (``"STEGO [pixel]"``) and draws every mode present as its own series; ``"paper"``
            reproduces the reference figure (Q39): plain labels, and where a series has several
            modes only the paper's (val for sweeps and DINO w/o CRF, eval otherwise) is kept.
        methods: restrict to these methods (default: all in the table).
        datasets: restrict to these datasets (default: all in the table).
        where: column -> value (or list of values) filters applied first.
        hue: ``"backbone"``: draw the rows of several backbones (a multi-backbone sweep, or
            tables concatenated) in one figure, one series per (method, backbone), coloured
            by backbone and labelled ``"<backbone>: <method>"``
            (:func:`~stego_probe.plots.labels.backbone_method_label`); ``by`` is accepted as
            its alias. None (default): a table of several backbones is refused.
        x: ``"dim"`` (D, default) or ``"fraction"``: D / C with C the width of each row's
            backbone (``widths``, else :func:`stego_probe.compare.backbone_widths`), so that
            backbones of other widths line up.
        widths: backbone -> width C for ``x="fraction"`` (default: from the rows).

    Returns:
        Figure with a ``len(probes) × len(datasets)`` grid and a shared legend at lower centre.

    Raises:
        ValueError: no rows to plot, bad ``figure_provenance`` / ``hue`` / ``x``, or an
            ambiguous series.
    """
    if isinstance(probe_rows, str) or not len(probe_rows):
        raise ValueError(f"probe_rows: expected a non-empty sequence of probes, got {probe_rows!r}")
    if hue not in (None, "backbone"):
        raise ValueError(f"hue: expected None or 'backbone', got {hue!r}")
    if x not in ("dim", "fraction"):
        raise ValueError(f"x: expected 'dim' or 'fraction', got {x!r}")
    d_all, d, agg = _figure4_table(df, [metric], probe_rows, methods, where, figure_provenance, hue)
    backbones = sorted(set(agg["backbone"])) if hue else None
    if x == "fraction":
        agg = _with_fraction(agg, d_all, widths)
    probes = [p for p in probe_rows if (agg["probe"] == p).any()]
    ds_list = dataset_order(agg["dataset"].unique())
    if datasets is not None:
        ds_list = [d for d in dataset_order(datasets) if d in set(ds_list)]
        if not ds_list:
            raise ValueError(f"datasets: none of {list(datasets)} has {metric!r} rows")
        agg = agg[agg["dataset"].isin(ds_list)]
        d = d[d["dataset"].isin(ds_list)]
    labeller = SeriesLabeller.of(d, figure_provenance)
    pub = overlay_table(published)
    nrows, ncols = len(probes), len(ds_list)
    mname = METRIC_LABELS.get(metric, metric)
    with theme() as palette:
        height = 3.5 * nrows
        # (10, 7) for the paper's 2 x 3; narrow grids are widened so the legend fits
        width = max(10 / 3 * ncols, 6.0)
        fig = Figure(figsize=(width, height))
        axs = fig.subplots(nrows, ncols, sharex=True, squeeze=False)
        legend: dict = {}
        all_dims = list(agg["dim"])
        for r, probe in enumerate(probes):
            for c, ds in enumerate(ds_list):
                ax = axs[r, c]
                sub = agg[(agg["dataset"] == ds) & (agg["probe"] == probe)]
                _draw_metric_panel(ax, sub, palette, legend, labeller, backbones)
                if pub is not None and x == "dim":
                    pts = pub[
                        (pub["dataset"] == ds) & (pub["probe"] == probe) & (pub["metric"] == metric)
                    ]
                    _draw_published(ax, pts, palette, legend)
                    all_dims += list(pts["dim"])
                letter = f"({chr(ord('a') + r * ncols + c)})"
                if r == 0 and hue:
                    ax.set_title(DATASET_TITLES.get(ds, ds) + "\n\n" + letter)
                elif r == 0:
                    ax.set_title(dataset_title(ds, d_all) + "\n\n" + letter)
                else:
                    ax.set_title(letter)
                if c == 0:
                    ax.set_ylabel(_PROBE_YLABELS.get(probe, f"{probe} probe {{m}}").format(m=mname))
                if r == nrows - 1:
                    ax.set_xlabel(_XLABEL if x == "dim" else _FRACTION_XLABEL)
        if x == "dim":
            format_dim_axis(axs.ravel(), all_dims)
        else:
            format_fraction_axis(axs.ravel(), list(agg["x"]))
        ncol = 3 if width >= 9 else 2
        notes = errorbar_note(agg["n"], published=_published_drawn(legend))
        title = legend_title(d, notes, title_chars(width))
        bottom = legend_rect_bottom(len(legend) + ncol * (title.count("\n") + 1), ncol, height)
        fig.tight_layout(rect=[0, bottom, 1, 1], h_pad=1, w_pad=1)
        finish_legend(fig, legend, title, loc="lower center", ncol=ncol)
    return fig


def plot_hnne_appendix(
    df: pd.DataFrame,
    dataset: str = "cityscapes27",
    published=None,
    *,
    figure_provenance: str = "recorded",
    where: Mapping | None = None,
) -> Figure:
    """Appendix Figure 2 (PROTOCOL §7.3): Figure 4's curves of one dataset plus h-NNE, 2×2.

    Panels (a) linear mIoU, (b) linear accuracy, (c) cluster mIoU, (d) cluster accuracy; figsize
    (10, 5.4); legend on the right in one column.

    Args:
        df: results rows.
        dataset: the dataset to draw.
        published, figure_provenance, where: as in :func:`plot_metric_over_dims`.

    Returns:
        Figure with 4 axes.
    """
    where = dict(where or {})
    where["dataset"] = dataset
    _, d, agg = _figure4_table(
        df, ["miou", "accuracy"], ["linear", "cluster"], None, where, figure_provenance
    )
    labeller = SeriesLabeller.of(d, figure_provenance)
    pub = overlay_table(published)
    panels = [
        ("linear", "miou"),
        ("linear", "accuracy"),
        ("cluster", "miou"),
        ("cluster", "accuracy"),
    ]
    with theme() as palette:
        fig = Figure(figsize=(10, 5.4))
        axs = fig.subplots(2, 2, sharex=True, squeeze=False)
        legend: dict = {}
        all_dims = list(agg["dim"])
        for i, (probe, metric) in enumerate(panels):
            ax = axs[i // 2, i % 2]
            sub = agg[(agg["probe"] == probe) & (agg["metric"] == metric)]
            _draw_metric_panel(ax, sub, palette, legend, labeller)
            if pub is not None:
                pts = pub[
                    (pub["dataset"] == dataset)
                    & (pub["probe"] == probe)
                    & (pub["metric"] == metric)
                ]
                _draw_published(ax, pts, palette, legend)
                all_dims += list(pts["dim"])
            ax.set_title(f"({chr(ord('a') + i)})")
            ax.set_ylabel(_PROBE_YLABELS[probe].format(m=METRIC_LABELS[metric]))
            if i >= 2:
                ax.set_xlabel(_XLABEL)
        format_dim_axis(axs.ravel(), all_dims)
        fig.tight_layout(rect=[0, 0, 0.7192, 1], h_pad=1, w_pad=1)
        notes = errorbar_note(agg["n"], published=_published_drawn(legend))
        finish_legend(fig, legend, legend_title(d, notes, 33), loc="center right", ncol=1)
    return fig


def _plot_metrics_grid(
    df: pd.DataFrame,
    metrics: Sequence[str],
    methods: Sequence[str] | None,
    where: Mapping | None,
    what: str,
) -> Figure:
    if isinstance(metrics, str) or not len(metrics):
        raise ValueError(f"metrics: expected a non-empty sequence of metric names, got {metrics!r}")
    d_all = prepare_results(df, where)
    d = d_all[d_all["dim"].notna()]
    if methods is not None:
        d = d[d["method"].isin(list(methods))]
    present = [m for m in metrics if (d["metric"] == m).any()]
    if not present:
        raise ValueError(f"{what}: no results rows with metric in {list(metrics)}")
    d = d[d["metric"].isin(present + [f"{m}_std" for m in present])]
    keys = ["dataset", "metric", "method", "crf", "mode", "probe", "dim"]
    agg = aggregate_seeds(d, keys)
    # a single-seed point may carry its own spread (e.g. silhouette_std over subsamples)
    std_rows = agg[agg["metric"].str.endswith("_std")].copy()
    agg = agg[agg["metric"].isin(present)].copy()
    if len(std_rows):
        std_rows["metric"] = std_rows["metric"].str[: -len("_std")]
        std_rows = std_rows.rename(columns={"mean": "own_std"})[keys + ["own_std"]]
        agg = agg.merge(std_rows, on=keys, how="left")
    else:
        agg["own_std"] = np.nan
    labeller = SeriesLabeller.of(d, series=method_label)
    ds_list = dataset_order(agg["dataset"].unique())
    nrows, ncols = len(ds_list), len(present)
    with theme() as palette:
        height = 2.9 * nrows + 0.9
        fig = Figure(figsize=(3.4 * ncols, height))
        axs = fig.subplots(nrows, ncols, sharex=True, squeeze=False)
        legend: dict = {}
        own_std: list[str] = []
        for r, ds in enumerate(ds_list):
            for c, metric in enumerate(present):
                ax = axs[r, c]
                sub = agg[(agg["dataset"] == ds) & (agg["metric"] == metric)]
                groups = sub.groupby(["method", "crf", "mode", "probe"], sort=True)
                series = []
                for (method, crf, mode, probe), g in groups:
                    style = series_style(method, crf)
                    series.append((style.order, method, crf, mode, probe, style, g))
                series.sort(key=lambda s: s[:5])
                for order, method, crf, mode, probe, style, g in series:
                    g = g.sort_values("dim")
                    multi = bool((g["n"] > 1).any())
                    if multi:
                        yerr = np.nan_to_num(g["std"].to_numpy(float), nan=0.0)
                    elif g["own_std"].notna().any():
                        yerr = np.nan_to_num(g["own_std"].to_numpy(float), nan=0.0)
                        own_std.append(f"{metric}_std")
                    else:
                        yerr = None
                    label = labeller(method, crf)
                    extra = [x for x in (mode, probe if probe != "none" else "") if x]
                    if extra:
                        label += f" [{', '.join(extra)}]"
                    ls = style.linestyle or "-"
                    cont = ax.errorbar(
                        g["dim"].to_numpy(float),
                        g["mean"].to_numpy(float),
                        yerr=yerr,
                        fmt=style.marker + ls,
                        color=palette[style.color],
                        capsize=3 if yerr is not None else 0,
                        label=label,
                    )
                    legend.setdefault(label, (order, cont))
                title = METRIC_LABELS.get(metric, metric).replace("\n", " ")
                letter = chr(ord("a") + r * ncols + c)
                ds_name = DATASET_TITLES.get(ds, ds)
                ax.set_title(f"({letter}) {ds_name}" if nrows > 1 else f"({letter})")
                ax.set_ylabel(title)
                if r == nrows - 1:
                    ax.set_xlabel(_XLABEL)
        format_dim_axis(axs.ravel(), agg["dim"])
        ncol = min(4, max(1, len(legend)))
        title = legend_title(d, errorbar_note(agg["n"], own_std=own_std), title_chars(3.4 * ncols))
        bottom = legend_rect_bottom(len(legend) + ncol * (title.count("\n") + 1), ncol, height)
        fig.tight_layout(rect=[0, bottom, 1, 1], h_pad=1, w_pad=1)
        finish_legend(fig, legend, title, loc="lower center", ncol=ncol)
    return fig


def plot_distinctness_over_dims(
    df: pd.DataFrame,
    metrics: Sequence[str] = DISTINCTNESS_METRICS,
    *,
    methods: Sequence[str] | None = None,
    where: Mapping | None = None,
) -> Figure:
    """Cluster-distinctness statistics versus D, one line per method (PROTOCOL §4.7).

    Grid: one row per dataset, one column per metric of ``metrics`` present in the table (others
    skipped). x: log axis, ticks 3·2^k. Error bars: std over seeds; for a single-seed point, the
    value of a ``<metric>_std`` row (e.g. ``silhouette_std`` over subsamples) when there is one;
    the legend title says which (:func:`errorbar_note`). Methods are labelled by
    :func:`method_label`.

    Args:
        df: results rows (distinctness rows have ``probe == "none"``).
        metrics: metric names, one column each.
        methods: restrict to these methods.
        where: column filters applied first.

    Returns:
        Figure with ``n_datasets × n_metrics`` axes and a shared legend.
    """
    return _plot_metrics_grid(df, metrics, methods, where, "plot_distinctness_over_dims")


def plot_kmeans_convergence(
    df: pd.DataFrame,
    *,
    methods: Sequence[str] | None = None,
    where: Mapping | None = None,
) -> Figure:
    """k-means iterations to converge and ARI / NMI between restarts versus D, per method.

    Uses rows with metric ``kmeans_iterations``, ``kmeans_ari``, ``kmeans_nmi`` (those present);
    layout as :func:`plot_distinctness_over_dims`.

    Args:
        df: results rows.
        methods: restrict to these methods.
        where: column filters applied first.

    Returns:
        Figure with ``n_datasets × n_metrics`` axes.
    """
    return _plot_metrics_grid(df, CONVERGENCE_METRICS, methods, where, "plot_kmeans_convergence")
