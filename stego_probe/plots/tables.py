"""The results table as the figures read it: column checks, dtypes, filters, seed aggregation.

:func:`prepare_results` types a table as :func:`stego_probe.results.read_results` does
(:func:`stego_probe.results.coerce_types`, whose :func:`~stego_probe.results.as_bool` is the one
``crf`` parser, also used for the published overlay, :func:`overlay_table`); every figure starts
from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from stego_probe.results import as_bool, coerce_types

#: provenance columns one series must not mix (``fit_dataset``: in-domain and transferred rows)
_AMBIGUITY_COLUMNS = ("backbone", "weights_sha256", "match", "split", "fit_dataset")
_NEEDED = ("dataset", "method", "dim", "seed", "probe", "crf", "mode", "metric", "value")


def prepare_results(
    df: pd.DataFrame, where: Mapping | None = None, name: str = "df"
) -> pd.DataFrame:
    """Copy of a results table with normalised dtypes, filtered by ``where``.

    Args:
        df: results rows with at least ``dataset, method, dim, seed, probe, crf, mode, metric,
            value`` (``RESULT_COLUMNS``).
        where: column -> value (or list / tuple / set of values) filters.
        name: what to call ``df`` in error messages.

    Returns:
        a new DataFrame (index 0..n-1) typed by :func:`stego_probe.results.coerce_types`
        (string columns as ``str``, missing = ``""``; ``crf`` bool; ``seed`` int where
        integral), except ``dim`` float; ``value`` float with non-finite values as NaN;
        filtered by ``where``.

    Raises:
        ValueError: not a DataFrame, missing columns, a ``crf`` value that is not a boolean
            (:func:`stego_probe.results.as_bool`), a numeric cell that is not a number, or an
            unknown ``where`` column.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{name}: expected a pandas DataFrame of results rows, got {type(df)}")
    missing = [c for c in _NEEDED if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: results table lacks columns {missing}; expected RESULT_COLUMNS")
    d = coerce_types(df.reset_index(drop=True), name=name)
    d["dim"] = d["dim"].astype("float64")
    d.loc[~np.isfinite(d["value"].to_numpy(float)), "value"] = np.nan  # e.g. scatter_ratio = inf
    for col, want in (where or {}).items():
        if col not in d.columns:
            raise ValueError(f"where: unknown column {col!r}; expected one of {list(d.columns)}")
        if isinstance(want, (list, tuple, set, frozenset)):
            d = d[d[col].isin(list(want))]
        else:
            d = d[d[col] == want]
    return d


def aggregate_seeds(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Average rows over seeds.

    Rows are grouped by ``by`` (e.g. dataset, probe, method, crf, mode, dim); within a group,
    rows with the same ``seed`` count once (the last wins). Groups whose rows disagree on
    ``backbone``, ``weights_sha256``, ``match``, ``split`` or ``fit_dataset`` (those not in
    ``by``) are refused; with ``backbone`` in ``by`` (a ``hue="backbone"`` figure, a
    ranking) each backbone is its own group and ``weights_sha256`` may differ between them.

    Args:
        df: results rows (at least ``by``, ``seed`` and ``value`` columns).
        by: grouping columns.

    Returns:
        DataFrame with ``by`` + ``mean``, ``std`` (sample std, ``ddof=1``, NaN for one seed) and
        ``n`` (number of seeds), sorted by ``by``.

    Raises:
        ValueError: a group mixes values of a provenance column.
    """
    by = list(by)
    check = [c for c in _AMBIGUITY_COLUMNS if c in df.columns and c not in by]
    if check and len(df):
        nun = df.groupby(by, dropna=False)[check].nunique(dropna=False)
        bad = nun[(nun > 1).any(axis=1)]
        if len(bad):
            key = bad.index[0]
            col = next(c for c in check if bad.iloc[0][c] > 1)
            key_t = key if isinstance(key, tuple) else (key,)
            mask = np.ones(len(df), dtype=bool)
            for c, k in zip(by, key_t):
                mask &= (df[c] == k).to_numpy() | (pd.isna(df[c]).to_numpy() & pd.isna(k))
            vals = sorted(map(str, df.loc[mask, col].unique()))
            hint = (
                "; or draw one series per backbone: hue='backbone'"
                if col in ("backbone", "weights_sha256")
                else ""
            )
            raise ValueError(
                f"results table mixes {col} values {vals} in one series "
                f"({dict(zip(by, key_t))}); filter the table first, e.g. where={{{col!r}: "
                f"...}}{hint}"
            )
    d = df.drop_duplicates(by + ["seed"], keep="last")
    g = d.groupby(by, dropna=False, sort=True)["value"]
    out = g.agg(mean="mean", std="std", n="count").reset_index()
    return out


def overlay_table(published) -> pd.DataFrame | None:
    """The published points to overlay, as a table the figures can draw.

    Args:
        published: ``None``/``False`` (no overlay), ``True`` (the packaged points,
            :func:`stego_probe.published.overlay_points`) or a DataFrame with ``dataset, dim,
            probe, metric, crf, value`` and ``method`` or ``series_method``.

    Returns:
        None, or a copy with ``series_method``, ``uncertainty`` (0 if absent), ``digitised``
        (from ``source`` if absent) and a bool ``crf``.
    """
    if published is None or published is False:
        return None
    if published is True:
        from stego_probe.published import overlay_points

        return overlay_points()
    if not isinstance(published, pd.DataFrame):
        raise ValueError(f"published: expected None, bool or a DataFrame, got {type(published)}")
    from stego_probe.published import DIGITISED_SOURCE, METHOD_ALIASES

    need = ["dataset", "dim", "probe", "metric", "crf", "value"]
    missing = [c for c in need if c not in published.columns]
    if missing:
        raise ValueError(f"published: overlay table lacks columns {missing}")
    p = published.copy()
    if "series_method" not in p.columns:
        if "method" not in p.columns:
            raise ValueError("published: overlay table needs a 'method' or 'series_method' column")
        p["series_method"] = p["method"].map(lambda m: METHOD_ALIASES.get(m, m))
    if "uncertainty" not in p.columns:
        p["uncertainty"] = 0.0
    if "digitised" not in p.columns:
        p["digitised"] = (p["source"] == DIGITISED_SOURCE) if "source" in p.columns else True
    p["crf"] = np.array([as_bool(v, what="published: crf") for v in p["crf"]], dtype=bool)
    return p
