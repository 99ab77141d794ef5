"""Tidy results tables: one row per measured number.

Every evaluation, sweep point and distinctness measurement becomes rows with the columns in
:data:`RESULT_COLUMNS`; figures are drawn only from such tables. Metric values are in percent for
segmentation metrics (``accuracy``, ``miou``, ``iou:<class>``, ``precision:<class>``,
``recall:<class>``) and in their natural unit otherwise (``silhouette``, ``kmeans_iterations``...).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

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
    "stego_probe_version",
]


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
    """Rows -> DataFrame with :data:`RESULT_COLUMNS` in order."""
    return pd.DataFrame(list(rows), columns=RESULT_COLUMNS)


def append_csv(rows: Iterable[Mapping], path: str | os.PathLike) -> pd.DataFrame:
    """Append rows to a results CSV atomically (write a temp file, then rename).

    An existing file is never truncated or left half-written: the new table is the old rows
    followed by the new ones.
    """
    path = Path(path)
    new = to_frame(rows)
    if path.exists():
        old = read_results(path)
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
    missing = [c for c in RESULT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a stego_probe results table, missing columns {missing}")
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    return df[RESULT_COLUMNS + [c for c in df.columns if c not in RESULT_COLUMNS]]
