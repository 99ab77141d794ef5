"""The published numbers, shipped with the package (``stego_probe/resources/published_results.csv``).

The table holds the STEGO paper's headline numbers, evaluation logs of the released checkpoints
posted in the STEGO issue tracker (the regression targets of PROTOCOL §7.2) and the points of the
published Figure 4 of Koenig et al. digitised from the raster image. See
``stego_probe/resources/README.md`` for the sources and their uncertainty: the digitised values are
accurate to about ±0.3 mIoU (±1 for occluded points) and are for overlays, not for equality tests.

Examples:
    >>> from stego_probe.published import regression_targets
    >>> t = regression_targets("cocostuff27")
    >>> float(t.query("probe == 'cluster' and metric == 'miou'")["value"].iloc[0])
    28.19
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

#: Columns of the published table, in order.
PUBLISHED_COLUMNS = [
    "dataset",
    "method",
    "dim",
    "probe",
    "metric",
    "crf",
    "value",
    "source",
    "uncertainty",
]

#: Published method name -> method name of a stego_probe results table.
METHOD_ALIASES = {"stego_retrained": "stego"}

#: Sources that are evaluation logs of the released checkpoints (regression targets).
ISSUE_SOURCES = ("stego_issue_3", "stego_issue_39")

#: Source of the values digitised from the published Figure 4.
DIGITISED_SOURCE = "paper_fig4_digitised"

_RESOURCE = "published_results.csv"


def _read_packaged() -> pd.DataFrame:
    ref = resources.files("stego_probe").joinpath("resources", _RESOURCE)
    with ref.open("r", encoding="utf-8") as f:
        df = pd.read_csv(f, keep_default_na=False)
    missing = [c for c in PUBLISHED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"packaged {_RESOURCE}: missing columns {missing}")
    df = df[PUBLISHED_COLUMNS].copy()
    df["dim"] = df["dim"].astype("int64")
    df["crf"] = df["crf"].map(lambda v: str(v).strip().lower() in ("true", "1", "yes"))
    df["value"] = df["value"].astype("float64")
    df["uncertainty"] = df["uncertainty"].astype("float64")
    return df


def load_published(dataset: str | None = None, source: str | None = None) -> pd.DataFrame:
    """Load the packaged published numbers.

    Args:
        dataset: keep only this dataset (``cocostuff27``, ``cityscapes27``, ``potsdam3``).
        source: keep only this source (``stego_paper``, ``stego_issue_3``, ``stego_issue_39``,
            ``paper_fig4_digitised``).

    Returns:
        DataFrame with :data:`PUBLISHED_COLUMNS`: ``dim`` int64, ``crf`` bool, ``value`` and
        ``uncertainty`` float64 (percent / points), the rest strings. A fresh copy each call.

    Raises:
        ValueError: ``dataset`` or ``source`` not in the table.
    """
    df = _read_packaged()
    for col, want in (("dataset", dataset), ("source", source)):
        if want is None:
            continue
        known = sorted(df[col].unique())
        if want not in known:
            raise ValueError(
                f"load_published: {col}={want!r} is not in the table; expected {known}"
            )
        df = df[df[col] == want]
    return df.reset_index(drop=True)


def regression_targets(dataset: str | None = None) -> pd.DataFrame:
    """Evaluation logs of the released checkpoints ("eval" mode, with CRF): PROTOCOL §7.2 targets.

    A correct re-implementation evaluating the released checkpoint lands within a few tenths of
    a point of these values (4 rows per dataset: cluster/linear × accuracy/mIoU; CocoStuff-27
    ViT-B/8 D=90 from STEGO issue #3 and Potsdam-3 ViT-S/8 D=70 from issue #39).

    Args:
        dataset: keep only this dataset (``cocostuff27`` or ``potsdam3`` have targets).

    Returns:
        DataFrame with :data:`PUBLISHED_COLUMNS`, ``method == "stego_released"``.
    """
    df = load_published(dataset)
    df = df[df["source"].isin(ISSUE_SOURCES) & (df["method"] == "stego_released")]
    return df.reset_index(drop=True)


def overlay_points(
    dataset: str | None = None, metric: str | None = None, probe: str | None = None
) -> pd.DataFrame:
    """Published points to overlay on a regenerated Figure 4 / Appendix Figure 1.

    For every (dataset, method, dim, probe, metric, crf) the digitised Figure 4 value is used
    when there is one; otherwise the released-checkpoint logs (issues), otherwise the STEGO
    paper's headline number. A user's own retraining posted in an issue (``stego_retrained``
    from ``stego_issue_39``) is not a published point and is left out.

    Args:
        dataset, metric, probe: optional filters (unknown values give an empty frame).

    Returns:
        DataFrame with :data:`PUBLISHED_COLUMNS` plus ``series_method`` (the method name used in
        stego_probe results tables, e.g. ``stego`` for ``stego_retrained``) and ``digitised``
        (bool: read off the figure rather than reported as a number).
    """
    df = load_published()
    is_dig = df["source"] == DIGITISED_SOURCE
    reported_released = df["source"].isin(ISSUE_SOURCES + ("stego_paper",)) & (
        df["method"] == "stego_released"
    )
    df = df[is_dig | reported_released].copy()
    priority = {DIGITISED_SOURCE: 0, "stego_issue_3": 1, "stego_issue_39": 1, "stego_paper": 2}
    df["_priority"] = df["source"].map(priority)
    key = ["dataset", "method", "dim", "probe", "metric", "crf"]
    df = df.sort_values(key + ["_priority"], kind="stable").drop_duplicates(key, keep="first")
    for col, want in (("dataset", dataset), ("metric", metric), ("probe", probe)):
        if want is not None:
            df = df[df[col] == want]
    df = df.drop(columns="_priority")
    df["series_method"] = df["method"].map(lambda m: METHOD_ALIASES.get(m, m))
    df["digitised"] = df["source"] == DIGITISED_SOURCE
    return df.reset_index(drop=True)
