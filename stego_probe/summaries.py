"""Small summaries of a tidy results table, for printing and for choosing what to draw.

* :func:`best_dim` — the width D at which a method scores best (the demo draws that one).
* :func:`distinctness_summary` — the distinctness statistics as a (method, D) x metric table.
* :func:`cumulative_variance` — a PCA spectrum's cumulative explained variance at a few widths
  (Figure 3's numbers).

Each takes the rows of :mod:`stego_probe.results` (``method``, ``dim``, ``seed``, ``probe``,
``metric``, ``value`` ...) and returns plain values or a small DataFrame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

#: Statistics :func:`distinctness_summary` shows by default.
SUMMARY_METRICS = ("silhouette", "kmeans_ari")


def best_dim(df: pd.DataFrame, method: str, probe: str = "kmeans") -> int | None:
    """The D with the highest mean (over seeds) mIoU of ``method`` under ``probe``.

    Args:
        df: results rows (``method``, ``dim``, ``probe``, ``metric``, ``value``).
        method, probe: which series.

    Returns:
        that ``dim`` as int; None when there is no ``miou`` row of the series (ties: the
        smallest D).
    """
    sel = df[(df["method"] == method) & (df["probe"] == probe) & (df["metric"] == "miou")]
    if sel.empty:
        return None
    return int(sel.groupby("dim")["value"].mean().idxmax())


def distinctness_summary(
    df: pd.DataFrame,
    metrics: Sequence[str] = SUMMARY_METRICS,
    index: Sequence[str] = ("method", "dim"),
) -> pd.DataFrame:
    """Distinctness rows (``probe == "none"``) as an ``index`` x metric table of seed means.

    Methods are named by :func:`stego_probe.plots.method_label` (e.g. ``DINO``, ``PCA``, from the
    rows' provenance); repeated rows of one seed (and dataset) count once (the last wins); rows
    of several datasets under one ``index`` key are averaged together.

    Args:
        df: results rows.
        metrics: the statistics to show (columns, in sorted order).
        index: the row keys, e.g. ``("dataset", "method", "dim")`` for several datasets.

    Returns:
        the table, values rounded to 3 decimals; ``attrs["note"]`` says over how many seeds
        (``"1 seed (n=1)"``, ``"mean over 3 seeds"`` or ``"mean over 2–3 seeds"``). Empty if
        there are no such rows.
    """
    from stego_probe.plots import method_label

    index = list(index)
    dist = df[(df["probe"] == "none") & df["metric"].isin(list(metrics))]
    if dist.empty:
        return pd.DataFrame()
    run = [*index, *(["dataset"] if "dataset" in dist.columns and "dataset" not in index else [])]
    dist = dist.drop_duplicates([*run, "metric", "seed"], keep="last").copy()
    dist["method"] = [method_label(m, dist) for m in dist["method"]]
    wide = dist.pivot_table(index=index, columns="metric", values="value").round(3)
    counts = sorted(set(dist.groupby([*index, "metric"])["seed"].nunique()))
    if counts == [1]:
        wide.attrs["note"] = "1 seed (n=1)"
    else:
        k = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        wide.attrs["note"] = f"mean over {k} seeds"
    return wide


def cumulative_variance(
    df: pd.DataFrame, fractions: Sequence[float] = (1 / 16, 1 / 4, 1 / 2, 3 / 4)
) -> pd.DataFrame:
    """Cumulative explained variance of each dataset's PCA spectrum at some fractions of C.

    Args:
        df: ``metric == "explained_variance_ratio"`` rows (other rows are ignored), ``dim`` =
            component index 1..C, one seed per dataset (the Figure 3 table).
        fractions: widths as fractions of the number of components ``n``: ``D =
            max(1, floor(n * f))``.

    Returns:
        one row per (dataset, fraction), datasets in order of appearance: ``dataset``,
        ``n_components`` (int), ``dim`` (int D) and ``cumulative`` (float, the sum of the
        ratios of components 1..D).
    """
    rows = df[df["metric"] == "explained_variance_ratio"]
    out = []
    for dataset, g in rows.groupby("dataset", sort=False):
        cum = g.sort_values("dim")["value"].cumsum().to_numpy()
        n = len(cum)
        for f in fractions:
            d = max(1, math.floor(n * f))
            out.append((dataset, n, d, float(cum[min(d, n) - 1])))
    return pd.DataFrame(out, columns=["dataset", "n_components", "dim", "cumulative"])
