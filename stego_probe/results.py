"""Tidy results tables: one row per measured number.

Every evaluation, sweep point and distinctness measurement becomes rows with the columns in
:data:`RESULT_COLUMNS`; figures are drawn only from such tables. Metric values are in percent for
segmentation metrics (``accuracy``, ``miou``, ``iou:<class>``, ``precision:<class>``,
``recall:<class>``) and in their natural unit otherwise (``silhouette``, ``kmeans_iterations``...).

Rows of the ``kmeans`` probe (and distinctness rows) also record the k-means protocol that
produced them (:data:`KMEANS_COLUMNS`): the stopping rule (``kmeans_tol``, ``kmeans_niter``), the
restarts (``kmeans_nredo``) and the iterations the fit actually ran (``kmeans_n_iter``). Tables
written before these columns existed are read with them empty (NaN).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

#: Stable column names of every results table (documented in docs/results.md).
RESULT_COLUMNS = [
    "dataset",  # cocostuff27, cityscapes27, potsdam3, synthetic, folder ...
    "backbone",  # backbone registry name
    "weights_sha256",  # sha256 of the backbone weights (empty for weight-free backbones)
    "method",  # dino (identity), pca, rp, stego, umap, hnne, stego_released ...
    "dim",  # embedding dimension D of the probed codes
    "seed",  # random_state of projection + probe
    "probe",  # kmeans, cluster, linear, none (distinctness)
    "crf",  # bool
    "mode",  # val (one pass), eval (flip-averaged), token (token-level approximation)
    "match",  # hungarian, majority, identity, reference
    "split",  # the split the metric was computed on
    "metric",  # accuracy, miou, iou:<class>, silhouette, ...
    "value",  # float
    "kmeans_niter",  # k-means: maximum Lloyd iterations per restart (empty for other probes)
    "kmeans_tol",  # k-means stopping tolerance: 0 = to a fixed point (or niter), > 0 early stop
    "kmeans_nredo",  # k-means restarts (the best final objective is kept)
    "kmeans_n_iter",  # k-means: iterations the chosen restart actually ran
    "stego_probe_version",
]

#: Columns that identify one measured number (every column except the value, the k-means
#: protocol and the package version): two rows agreeing on all of them measure the same thing.
IDENTITY_COLUMNS = [
    c
    for c in RESULT_COLUMNS
    if c not in ("value", "stego_probe_version") and not c.startswith("kmeans_")
]

#: The k-means protocol columns (numeric; empty for rows that involve no k-means fit). They were
#: added after the first release: :func:`read_results` fills them with NaN in older tables.
KMEANS_COLUMNS = ["kmeans_niter", "kmeans_tol", "kmeans_nredo", "kmeans_n_iter"]

#: Columns holding numbers: in row keys (:func:`row_key`) ``3``, ``3.0`` and ``"3"`` agree.
NUMERIC_COLUMNS = ("dim", "seed", "value", *KMEANS_COLUMNS)


def kmeans_context(probe) -> dict:
    """The :data:`KMEANS_COLUMNS` values of a fitted :class:`~stego_probe.probes.KMeansProbe`.

    ``kmeans_tol`` is ``0`` for ``tol=None`` as well (exactly ``niter`` iterations: the same
    centroids as ``tol=0`` whenever a fixed point is reached; ``kmeans_n_iter == kmeans_niter``
    tells the two apart).

    Returns:
        ``{"kmeans_niter": int, "kmeans_tol": float, "kmeans_nredo": int, "kmeans_n_iter": int}``.
    """
    tol = getattr(probe, "tol", None)
    return {
        "kmeans_niter": int(probe.niter),
        "kmeans_tol": 0.0 if tol is None else float(tol),
        "kmeans_nredo": int(probe.nredo),
        "kmeans_n_iter": int(probe.n_iter_),
    }


def make_rows(context: Mapping, metrics: Mapping[str, float]) -> list[dict]:
    """Expand ``metrics`` (name -> value) into tidy rows sharing ``context`` columns.

    Args:
        context: values for the non-metric columns (missing ones are left empty).
        metrics: metric name -> float.

    Returns:
        list of dicts with exactly :data:`RESULT_COLUMNS` as keys.
    """
    from stego_probe import __version__

    unknown = set(context) - set(RESULT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown result columns {sorted(unknown)}; expected {RESULT_COLUMNS}")
    base = {c: context.get(c, "") for c in RESULT_COLUMNS}
    base["stego_probe_version"] = context.get("stego_probe_version", __version__)
    return [{**base, "metric": k, "value": float(v)} for k, v in metrics.items()]


def to_frame(rows: Iterable[Mapping]) -> pd.DataFrame:
    """Rows -> DataFrame with :data:`RESULT_COLUMNS` in order (:data:`KMEANS_COLUMNS` numeric,
    NaN where empty)."""
    df = pd.DataFrame(list(rows), columns=RESULT_COLUMNS)
    for c in KMEANS_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def key_value(column: str, value) -> str:
    """The text form of one value in a row key, equal before and after a CSV round trip.

    Empty (None, NaN, ``""``, ``"nan"``) -> ``""``; in :data:`NUMERIC_COLUMNS` a number
    (``3``, ``3.0``, ``"3"`` -> ``"3"``; ``1e-4`` -> ``"0.0001"``); booleans and the ``crf``
    column as ``"true"`` / ``"false"``; anything else as its stripped text.

    Examples:
        >>> key_value("dim", 3.0), key_value("dim", "3"), key_value("crf", "True")
        ('3', '3', 'true')
        >>> key_value("kmeans_tol", float("nan")), key_value("method", " pca ")
        ('', 'pca')
    """
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating) and math.isnan(float(value)):
        return ""
    text = str(value).strip()
    if text.lower() in ("", "nan"):
        return ""
    if column in NUMERIC_COLUMNS or isinstance(value, int | float | np.integer | np.floating):
        try:
            f = float(value)
        except (TypeError, ValueError):
            return text
        if math.isnan(f):
            return ""
        return str(int(f)) if f.is_integer() else repr(f)
    if column == "crf":
        return text.lower()
    return text


def row_key(row: Mapping, columns: Sequence[str]) -> tuple[str, ...]:
    """The key of one result row (a mapping) over ``columns``: :func:`key_value` of each
    (missing columns count as empty). Two rows with equal keys measure the same thing when
    ``columns`` identify a measurement (:data:`IDENTITY_COLUMNS`, or the evaluate CLI's own
    point columns and ``metric``); :func:`append_csv` ``unique=`` compares these keys."""
    return tuple(key_value(c, row.get(c)) for c in columns)


def _key_strings(df: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """:func:`row_key` of every row of ``df``, joined into one string per row."""
    parts = [
        df[c].map(lambda v, c=c: key_value(c, v))
        if c in df.columns
        else pd.Series("", index=df.index)
        for c in columns
    ]
    out = parts[0]
    for p in parts[1:]:
        out = out + "\x1f" + p
    return out


def append_csv(
    rows: Iterable[Mapping], path: str | os.PathLike, unique: Sequence[str] | None = None
) -> pd.DataFrame:
    """Append rows to a results CSV atomically (write a temp file, then rename).

    An existing file is never truncated or left half-written: the new table is the old rows
    followed by the new ones.

    Args:
        rows: the new rows (dicts with :data:`RESULT_COLUMNS` keys).
        path: the CSV file (created with its parents if missing).
        unique: columns identifying a row: a new row whose key over them (:func:`row_key`,
            which normalises what a CSV round trip changes: ``3`` / ``3.0``, ``True`` /
            ``"True"``, NaN / empty) equals an existing row's is dropped, so appending the same
            rows twice leaves one copy (the first one written is kept). Sweeps pass
            :data:`IDENTITY_COLUMNS`; ``stego-probe evaluate`` its point columns and
            ``metric`` (they include the k-means protocol). None appends every row.

    Returns:
        the whole table after the append.
    """
    path = Path(path)
    new = to_frame(rows)
    if path.exists():
        old = read_results(path)
        if unique:
            seen = set(_key_strings(old, unique))
            new = new[~_key_strings(new, unique).isin(seen)]
            if new.empty:
                return old
        new = pd.concat([old, new], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    new.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return new


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read a results CSV and check its columns."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"results table {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; expected a results CSV file")
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path}: not a readable stego_probe results table (expected a CSV with columns "
            f"{', '.join(RESULT_COLUMNS[:3])}, ...): {msg}"
        ) from e
    missing = [c for c in RESULT_COLUMNS if c not in df.columns and c not in KMEANS_COLUMNS]
    if missing:
        raise ValueError(f"{path}: not a stego_probe results table, missing columns {missing}")
    for c in KMEANS_COLUMNS:  # absent in tables written before they were added
        if c not in df.columns:
            df[c] = float("nan")
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    return df[RESULT_COLUMNS + [c for c in df.columns if c not in RESULT_COLUMNS]]
