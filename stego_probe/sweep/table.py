"""The sweep's results table ``<out>/results.csv``: what it holds and how points are appended.

:func:`done_points` is the resume set (the points with rows), :func:`has_results` whether a
folder holds results at all, and :func:`append_point` appends one point's rows idempotently
after :func:`check_rows_finite` (no NaN in :data:`FINITE_METRICS`, no inf anywhere).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from stego_probe.results import IDENTITY_COLUMNS, append_csv
from stego_probe.sweep.points import Point, point_label


def done_points(results_path: str | os.PathLike, backbone: str | None = None) -> set[Point]:
    """Points that already have rows in a results CSV (the resume set; a missing file has none):
    :func:`stego_probe.results.done_keys` over ``method, dim, seed``, without the PCA spectrum
    rows (``metric == "explained_variance_ratio"``); with ``backbone``, only that backbone's
    rows (a multi-backbone sweep)."""
    from stego_probe.results import done_keys

    keys = ["method", "dim", "seed"]
    exclude = {"metric": "explained_variance_ratio"}
    where = {"backbone": backbone} if backbone else None
    return {Point(*k) for k in done_keys(results_path, keys, where=where, exclude=exclude)}


def has_results(results_path: str | os.PathLike) -> bool:
    """Whether a results CSV exists and holds at least one row."""
    path = Path(results_path)
    if not path.is_file():
        return False
    try:
        return len(pd.read_csv(path, nrows=1)) > 0
    except pd.errors.EmptyDataError:
        return False


#: Metrics that are always defined: a NaN there means a broken point, never an empty class.
FINITE_METRICS = ("accuracy", "miou", "explained_variance_ratio")


def check_rows_finite(rows: list[dict], what: str) -> None:
    """``ValueError`` naming ``what`` if result rows hold an infinite value, or NaN in a metric
    of :data:`FINITE_METRICS`. (Some metrics are NaN by definition in places, e.g. the
    precision of a class never predicted, or restart agreement with one seed.)"""
    bad = []
    for r in rows:
        v = float(r.get("value", float("nan")))
        if np.isinf(v) or (np.isnan(v) and r.get("metric") in FINITE_METRICS):
            bad.append(f"{r.get('probe')}/{r.get('metric')}={v}")
    if bad:
        raise ValueError(
            f"{what}: {len(bad)} non-finite result value(s) ({', '.join(bad[:5])}); the rows "
            "are not written"
        )


def append_point(point: Point, rows: list[dict], results: Path) -> bool:
    """Append one point's rows to ``results`` unless the point is already there.

    Idempotent: a point whose rows ``results`` holds already (:func:`done_points`, of the
    point's ``backbone`` when it names one) is skipped
    with a warning, so a rerun, or a second writer that slipped past the folder lock, never
    duplicates rows. Rows are checked with :func:`check_rows_finite` first.

    Returns:
        True if the rows were appended, False if the point was already in ``results``.
    """
    check_rows_finite(rows, f"sweep point {point_label(point)}")
    if point in done_points(results, point.backbone):
        warnings.warn(
            f"sweep point {point_label(point)} is already in {results}; its new rows are not "
            "appended again",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    append_csv(rows, results, unique=IDENTITY_COLUMNS)
    return True
