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

from stego_probe.results import as_bool, coerce_types

#: What each released checkpoint was trained on (PROTOCOL §3.3, §3.7): the file name, the
#: backbone, the crop, the class count ``K`` and the train / validation resolutions. Facts about
#: the released runs, not training settings (``K`` of a training run comes from its store).
RELEASES: dict[str, dict] = {
    "cocostuff27": {
        "checkpoint": "cocostuff27_vit_base_5.ckpt",
        "backbone": "dino_vitb8",
        "crop": "five",
        "n_classes": 27,
        "res": 224,
        "val_res": 320,
    },
    "cityscapes27": {
        "checkpoint": "cityscapes_vit_base_1.ckpt",
        "backbone": "dino_vitb8",
        "crop": "five",
        "n_classes": 27,
        "res": 224,
        "val_res": 320,
    },
    "potsdam3": {
        "checkpoint": "potsdam_test.ckpt",
        "backbone": "dino_vits8",
        "crop": "none",
        "n_classes": 3,
        "res": 224,
        "val_res": 320,
    },
}

#: The paper's datasets, in the column order of its Figure 4 and the row order of Table 2.
PAPER_DATASETS = ("cocostuff27", "cityscapes27", "potsdam3")

#: Probes of Table 2, in row order (the reference cluster probe first).
TABLE2_PROBES = ("cluster", "linear", "kmeans")

#: Methods of Table 2, in row order: the released checkpoints, then the DINO-only baseline.
TABLE2_METHODS = ("stego_released", "dino")

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
    df["crf"] = [as_bool(v, what=f"packaged {_RESOURCE}: crf") for v in df["crf"]]
    df["crf"] = df["crf"].astype(bool)
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


#: Key columns of :func:`compare_with_published` (one output row per distinct key).
COMPARISON_KEYS = ["dataset", "method", "dim", "probe", "crf", "mode"]

#: Columns of :func:`compare_with_published`, in order.
COMPARISON_COLUMNS = COMPARISON_KEYS + [
    "acc",
    "miou",
    "seeds",
    "target_acc",
    "target_miou",
    "fig4_miou",
]


def compare_with_published(df: pd.DataFrame) -> pd.DataFrame:
    """Table 2 layout: our accuracy / mIoU next to the published numbers.

    Args:
        df: results rows (the columns of :data:`stego_probe.results.RESULT_COLUMNS`); the
            ``accuracy`` / ``miou`` rows of the :data:`TABLE2_PROBES` are used, everything else
            is ignored. Repeated runs of one seed count once (the last row wins).

    Returns:
        one row per distinct (dataset, method, dim, probe, crf, mode) with the
        :data:`COMPARISON_COLUMNS`: ``acc`` and ``miou`` (float, mean over seeds; NaN when that
        metric is missing), ``seeds`` (int, how many seeds), ``target_acc`` / ``target_miou``
        (the released checkpoints' evaluation logs, :func:`regression_targets`) and
        ``fig4_miou`` (the paper's Figure 4, digitised, :data:`DIGITISED_SOURCE`; mean over
        its points of that key). Published numbers are matched on (dataset, method, probe,
        crf); NaN where there is none. ``crf`` is bool. Rows are sorted by
        :data:`PAPER_DATASETS`, then ``stego_released`` before ``dino``, then
        :data:`TABLE2_PROBES` (other values after them), then the other keys. Empty input
        gives an empty frame with these columns.

    Examples:
        >>> rows = pd.DataFrame({"dataset": "potsdam3", "method": "stego_released", "dim": 70,
        ...     "seed": 0, "probe": "cluster", "crf": True, "mode": "pixel_flip",
        ...     "metric": ["accuracy", "miou"], "value": [77.0, 62.0]})
        >>> t = compare_with_published(rows)
        >>> round(float(t["miou"].iloc[0] - t["target_miou"].iloc[0]), 2)  # 62.57: issue #39
        -0.57
    """
    keys = COMPARISON_KEYS
    missing = [c for c in keys + ["seed", "metric", "value"] if c not in df.columns]
    if missing:
        raise ValueError(f"compare_with_published: df lacks the results columns {missing}")
    sel = df[df["metric"].isin(["accuracy", "miou"]) & df["probe"].isin(TABLE2_PROBES)].copy()
    if sel.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    sel = coerce_types(sel, name="compare_with_published: df")
    sel = sel.drop_duplicates(keys + ["metric", "seed"], keep="last")
    ours = sel.pivot_table(index=keys, columns="metric", values="value", aggfunc="mean")
    ours = ours.rename(columns={"accuracy": "acc"}).reindex(columns=["acc", "miou"])
    ours["seeds"] = sel.groupby(keys)["seed"].nunique()
    ours = ours.reset_index()
    on = ["dataset", "method", "probe", "crf"]
    target = regression_targets().pivot_table(index=on, columns="metric", values="value")
    target = target.rename(columns={"accuracy": "target_acc", "miou": "target_miou"})
    fig4 = load_published(source=DIGITISED_SOURCE)
    fig4 = fig4[fig4["metric"] == "miou"].groupby(on)["value"].mean().rename("fig4_miou")
    table = ours.merge(target.reset_index(), on=on, how="left")
    table = table.merge(fig4.reset_index(), on=on, how="left")
    for col in ("target_acc", "target_miou", "fig4_miou"):
        if col not in table.columns:
            table[col] = float("nan")
    order = {
        "dataset": {d: i for i, d in enumerate(PAPER_DATASETS)},
        "method": {m: i for i, m in enumerate(TABLE2_METHODS)},
        "probe": {p: i for i, p in enumerate(TABLE2_PROBES)},
    }
    table = table.sort_values(
        keys, key=lambda c: c.map(order[c.name]).fillna(99) if c.name in order else c
    )
    return pd.DataFrame(table[COMPARISON_COLUMNS]).reset_index(drop=True)
