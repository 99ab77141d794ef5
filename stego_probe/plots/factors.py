"""A method's advantage over baselines as a factor of the data changes (e.g. the synthetic
world's ``nuisance`` strength, docs/nuisance.md).

The results table gets one extra numeric column, the factor (``nuisance``), one value per sweep;
everything else is an ordinary results table (:mod:`stego_probe.results`).

* :func:`factor_table` — mean ± std over seeds of one metric per (factor value, method), at one
  D (the raw-feature method at its only, full, width).
* :func:`advantage_table` — the paired per-seed differences ``method - baseline`` per factor
  value: their mean, sample std and count.
* :func:`plot_advantage_over_factor` — both, drawn: the advantage per baseline over the factor
  (with a zero line) and, beside it, the absolute values per method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from stego_probe.plots.labels import METRIC_LABELS, RAW_METHODS, errorbar_note, method_label
from stego_probe.plots.style import series_style, theme
from stego_probe.plots.tables import aggregate_seeds, prepare_results

#: Display names of the probes in titles.
PROBE_TITLES = {
    "kmeans": "k-means probe",
    "linear": "linear probe",
    "cluster": "cluster probe",
    "none": "no probe",
}


def _factor_rows(
    df: pd.DataFrame,
    factor: str,
    dim: int | None,
    probe: str,
    metric: str,
    methods: Sequence[str],
    where: Mapping | None,
) -> tuple[pd.DataFrame, int, dict[str, int]]:
    """The rows of ``methods`` at one D, typed, with a float ``factor`` column.

    Returns:
        (rows, the resolved D of ``methods[0]``, method -> the D of its rows). A raw-feature
        method (:data:`RAW_METHODS`) without rows at D uses its rows at its only width.

    Raises:
        ValueError: not a results table, no ``factor`` column or a non-numeric one, no rows of
            ``probe`` / ``metric``, several datasets / CRF settings / modes among them, a method
            without rows, ``dim=None`` with several D of ``methods[0]``, or no rows at ``dim``.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"df: expected a pandas DataFrame of results rows, got {type(df)}")
    if factor not in df.columns:
        raise ValueError(
            f"df: results table lacks the factor column {factor!r} (add one value per sweep, "
            f"e.g. df[{factor!r}] = level, as experiments/nuisance.py does)"
        )
    d = prepare_results(df, where)
    try:
        d[factor] = pd.to_numeric(d[factor], errors="raise").astype(float)
    except (ValueError, TypeError) as e:
        raise ValueError(f"df: factor column {factor!r} must be numeric: {e}") from e
    d = d[(d["probe"] == probe) & (d["metric"] == metric) & d["dim"].notna()]
    d = d[d[factor].notna()]
    if d.empty:
        raise ValueError(f"df: no rows with probe={probe!r}, metric={metric!r} and a {factor}")
    for col in ("dataset", "crf", "mode"):
        values = sorted(map(str, d[col].unique()))
        if len(values) > 1:
            raise ValueError(
                f"df: rows of probe={probe!r}, metric={metric!r} mix {col} values {values}; "
                f"filter the table first, e.g. where={{{col!r}: ...}}"
            )
    present = sorted(d["method"].unique())
    missing = [m for m in methods if m not in present]
    if missing:
        raise ValueError(
            f"df: no rows of method(s) {missing} with probe={probe!r}, metric={metric!r}; "
            f"methods present: {present}"
        )
    main = methods[0]
    dims = sorted(int(x) for x in d.loc[d["method"] == main, "dim"].unique())
    if dim is None:
        if len(dims) > 1:
            raise ValueError(f"dim: the {main} rows have several D {dims}; pass dim=one of them")
        dim = dims[0]
    elif int(dim) not in dims:
        raise ValueError(f"dim: no {main} rows at D={dim}; D present: {dims}")
    dim = int(dim)
    used: dict[str, int] = {}
    for m in methods:
        own = sorted(int(x) for x in d.loc[d["method"] == m, "dim"].unique())
        if dim in own:
            used[m] = dim
        elif m in RAW_METHODS and len(own) == 1:
            used[m] = own[0]  # the raw features exist at full width only
        else:
            raise ValueError(f"dim: no {m} rows at D={dim}; its D: {own}")
    keep = np.zeros(len(d), dtype=bool)
    for m, dm in used.items():
        keep |= ((d["method"] == m) & (d["dim"] == dm)).to_numpy()
    return d[keep].reset_index(drop=True), dim, used


def factor_table(
    df: pd.DataFrame,
    factor: str = "nuisance",
    *,
    dim: int | None = None,
    probe: str = "kmeans",
    metric: str = "miou",
    methods: Sequence[str] = ("stego", "pca", "rp", "dino"),
    where: Mapping | None = None,
) -> pd.DataFrame:
    """Mean ± std over seeds of ``metric`` per (factor value, method) at one D.

    Args:
        df: results rows with a numeric ``factor`` column.
        factor: the column that varies between sweeps (``"nuisance"``).
        dim: D of the projected methods; None: the only D of ``methods[0]``'s rows. A
            raw-feature method (``dino``) without rows at ``dim`` is taken at its only (full) width.
        probe, metric: which rows.
        methods: the methods, in output order.
        where: column filters applied first.

    Returns:
        DataFrame with columns ``factor``, ``method``, ``dim`` (the D of that method's rows),
        ``mean``, ``std`` (sample std, ``ddof=1``, NaN for one seed), ``n`` (seeds), sorted by
        method (in ``methods`` order) then factor. Rows repeated with the same seed count once
        (the last wins, :func:`aggregate_seeds`).

    Raises:
        ValueError: see :func:`plot_advantage_over_factor`.
    """
    methods = list(dict.fromkeys(methods))
    d, _, _ = _factor_rows(df, factor, dim, probe, metric, methods, where)
    agg = aggregate_seeds(d, [factor, "method", "dim"])
    agg["dim"] = agg["dim"].astype(int)
    agg["_order"] = agg["method"].map({m: i for i, m in enumerate(methods)})
    agg = agg.sort_values(["_order", factor]).drop(columns="_order").reset_index(drop=True)
    return agg[[factor, "method", "dim", "mean", "std", "n"]]


def advantage_table(
    df: pd.DataFrame,
    factor: str = "nuisance",
    *,
    dim: int | None = None,
    probe: str = "kmeans",
    metric: str = "miou",
    baselines: Sequence[str] = ("pca", "rp", "dino"),
    method: str = "stego",
    where: Mapping | None = None,
) -> pd.DataFrame:
    """``method`` minus each baseline, per factor value, from seed-paired differences.

    At each factor value, the rows of ``method`` and of a baseline are paired by ``seed`` (the
    same seed fits both projections and their probes on the same data); only the seeds both
    have are used, and a factor value with no common seed is left out of that baseline's rows.

    Args:
        df: results rows with a numeric ``factor`` column.
        factor: the column that varies between sweeps.
        dim: D of ``method`` and of the projected baselines (None: the only D of ``method``);
            a raw-feature baseline (``dino``) is taken at its only (full) width.
        probe, metric: which rows (``metric`` in the table's unit: points for mIoU / accuracy).
        baselines: the methods subtracted, in output order.
        method: the method whose advantage is measured.
        where: column filters applied first.

    Returns:
        DataFrame with columns ``factor``, ``baseline``, ``dim`` (D of ``method``),
        ``baseline_dim``, ``mean`` (mean over seeds of ``method - baseline``), ``std`` (sample
        std of those differences, ``ddof=1``; NaN for one seed), ``n`` (paired seeds); sorted
        by baseline (in ``baselines`` order) then factor.

    Raises:
        ValueError: see :func:`plot_advantage_over_factor`; also a baseline with no seed in
            common with ``method`` at any factor value.
    """
    baselines = [b for b in dict.fromkeys(baselines) if b != method]
    if not baselines:
        raise ValueError(f"baselines: expected at least one method other than {method!r}")
    methods = [method, *baselines]
    d, dim, used = _factor_rows(df, factor, dim, probe, metric, methods, where)
    aggregate_seeds(d, [factor, "method", "dim"])  # refuses mixed backbones / matches / splits
    d = d.drop_duplicates([factor, "method", "seed"], keep="last")
    wide = d.pivot(index=[factor, "seed"], columns="method", values="value")
    rows = []
    for b in baselines:
        diff = (wide[method] - wide[b]).dropna()
        if diff.empty:
            raise ValueError(f"baselines: {b!r} has no seed in common with {method!r}")
        g = diff.groupby(level=factor, sort=True)
        stats = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()})
        for level, s in stats.iterrows():
            rows.append(
                {
                    factor: float(level),
                    "baseline": b,
                    "dim": dim,
                    "baseline_dim": used[b],
                    "mean": float(s["mean"]),
                    "std": float(s["std"]),
                    "n": int(s["n"]),
                }
            )
    return pd.DataFrame(
        rows, columns=[factor, "baseline", "dim", "baseline_dim", "mean", "std", "n"]
    )


#: Legends below their panel, clear of the lines.
_LEGEND = dict(
    loc="upper center", bbox_to_anchor=(0.5, -0.24), title_fontsize="x-small", fontsize="small"
)


def _errorbar(ax, x, mean, std, n, style, color, label):
    multi = bool((np.asarray(n) > 1).any())
    yerr = np.nan_to_num(np.asarray(std, float), nan=0.0) if multi else None
    return ax.errorbar(
        np.asarray(x, float),
        np.asarray(mean, float),
        yerr=yerr,
        fmt=style.marker + (style.linestyle or "-"),
        color=color,
        capsize=3 if multi else 0,
        label=label,
        zorder=3,
    )


def _series_label(m: str, dm: int, dim: int, provenance: pd.DataFrame) -> str:
    label = method_label(m, provenance)
    return label if dm == dim else f"{label} (D={dm})"


def plot_advantage_over_factor(
    df: pd.DataFrame,
    factor: str = "nuisance",
    *,
    dim: int | None = None,
    probe: str = "kmeans",
    metric: str = "miou",
    baselines: Sequence[str] = ("pca", "rp", "dino"),
    method: str = "stego",
    absolute: bool = True,
    where: Mapping | None = None,
) -> Figure:
    """STEGO's advantage over each baseline as the factor grows (docs/nuisance.md).

    Left panel: x = factor value, y = ``method - baseline`` in the metric's unit (points of
    mIoU / accuracy), one line per baseline (the baseline's colour and marker,
    :func:`series_style`), from :func:`advantage_table`: the **mean of the seed-paired
    differences**, error bars ±1 sample std of those differences (``ddof=1``; none for one
    seed); a dashed zero line. Right panel (``absolute=True``): the absolute values per method
    (:func:`factor_table`: mean ± sample std over seeds). Labels name D, the probe and the
    metric; a raw-feature baseline (``dino``, named after its backbone by :func:`method_label`)
    drawn at its full width says so (``"(D=64)"``).

    Args:
        df: results rows with a numeric ``factor`` column (one value per sweep).
        factor: the column on the x axis (``"nuisance"``).
        dim: D of ``method`` and of the projected baselines; None: the only D of ``method``.
        probe: ``kmeans`` (default), ``linear``, ``cluster`` ... (``none`` with a distinctness
            metric such as ``silhouette``).
        metric: ``miou`` (default), ``accuracy``, ``silhouette`` ...
        baselines: the methods subtracted, one line each.
        method: the method whose advantage is drawn.
        absolute: add the panel of absolute values.
        where: column filters applied first (e.g. ``{"match": "hungarian"}``).

    Returns:
        Figure (8.6 × 4.4 in with the absolute panel, 4.6 × 4.4 without; legends below). Each line is an
        ``ErrorbarContainer`` in ``ax.containers`` labelled by its series.

    Raises:
        ValueError: ``df`` is not a results table or lacks the ``factor`` column (or it is not
            numeric); no rows of ``probe`` / ``metric``; rows mixing datasets, CRF settings or
            modes (filter with ``where``); a method without rows (the message lists those
            present); ``dim=None`` while ``method`` has several D; no rows at ``dim``; a
            baseline with no seed in common with ``method``.
    """
    adv = advantage_table(
        df, factor, dim=dim, probe=probe, metric=metric, baselines=baselines, method=method,
        where=where,
    )  # fmt: skip
    baselines = list(dict.fromkeys(adv["baseline"]))
    dim = int(adv["dim"].iloc[0])
    provenance = prepare_results(df, where)
    mname = METRIC_LABELS.get(metric, metric)
    unit = " (points)" if metric in ("miou", "accuracy") else ""
    ptitle = PROBE_TITLES.get(probe, f"{probe} probe")
    mlabel = method_label(method, provenance)
    with theme() as palette:
        fig = Figure(figsize=(8.6, 4.4) if absolute else (4.6, 4.4))
        axes = fig.subplots(1, 2 if absolute else 1, squeeze=False)[0]
        ax = axes[0]
        ax.axhline(0.0, color="0.25", linestyle="--", linewidth=1.0, zorder=2, label="_nolegend_")
        for b in baselines:
            g = adv[adv["baseline"] == b]
            style = series_style(b, False)
            label = (
                f"{mlabel} − {_series_label(b, int(g['baseline_dim'].iloc[0]), dim, provenance)}"
            )
            _errorbar(
                ax, g[factor], g["mean"], g["std"], g["n"], style, palette[style.color], label
            )
        ax.set_xlabel(factor.replace("_", " "))
        ax.set_ylabel(f"{mlabel} − baseline\n{mname}{unit}")
        ax.set_title(f"{mlabel} advantage, D={dim}, {ptitle}", fontsize="medium")
        notes = errorbar_note(adv["n"])
        note = "; ".join(n.replace("sample std", "sample std of paired differences") for n in notes)
        ax.legend(title=note, **_LEGEND)
        if absolute:
            tab = factor_table(
                df, factor, dim=dim, probe=probe, metric=metric, methods=[method, *baselines],
                where=where,
            )  # fmt: skip
            ax2 = axes[1]
            for m, g in tab.groupby("method", sort=False):
                style = series_style(m, False)
                label = _series_label(m, int(g["dim"].iloc[0]), dim, provenance)
                _errorbar(
                    ax2, g[factor], g["mean"], g["std"], g["n"], style, palette[style.color], label
                )
            ax2.set_xlabel(factor.replace("_", " "))
            ax2.set_ylabel(f"{mname}{' (%)' if unit else ''}")
            ax2.set_title(f"absolute, D={dim}, {ptitle}", fontsize="medium")
            ax2.legend(title="; ".join(errorbar_note(tab["n"])), **_LEGEND)
        fig.tight_layout()
    return fig
