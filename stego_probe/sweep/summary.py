"""A sweep's headline table: :func:`summary_table`, mean ± std over seeds per (method, D) and
probe."""

from __future__ import annotations

import pandas as pd


def summary_table(df: pd.DataFrame, metric: str = "miou") -> pd.DataFrame:
    """Mean ± std over seeds of ``metric`` per (method, dim) and probe, as a wide table.

    Methods are shown by their display name (:func:`stego_probe.plots.method_label`: the raw
    features after their backbone, ``"DINO"`` only for a DINO); when the rows include CRF rows,
    a method that has them is split into ``"... with CRF"`` / ``"... w/o CRF"``; when they
    include several evaluation modes, the mode is appended (``"STEGO [pixel]"``); when they
    include several backbones, each label starts with its backbone (:func:`stego_probe.plots.labels.backbone_method_label`: ``"descriptor: PCA"``). Rows repeated
    with the same seed count once (the last wins), as in the figures.

    Args:
        df: results rows (``method``, ``dim``, ``seed``, ``probe``, ``metric``, ``value``; the
            ``backbone``, ``crf`` and ``mode`` columns are used when present).
        metric: the metric to summarise.

    Returns:
        DataFrame indexed by (method label, dim) with one ``"<probe>"`` column of strings:
        ``"41.2 ±  1.3 (n=3)"`` (mean ± sample std over n seeds) or ``"41.2 (n=1)"`` (one seed:
        the mean only). ``table.attrs["note"]`` says the same in one line (e.g. ``"mean ± sample
        std over 3 seeds"`` or ``"1 seed (n=1): mean only"``), for a printed header. Empty if
        there are no such rows.
    """
    from stego_probe.plots import method_label
    from stego_probe.plots.labels import backbone_method_label
    from stego_probe.results import as_bool

    sel = df[(df["metric"] == metric) & (df["probe"] != "none")].copy()
    if sel.empty:
        return pd.DataFrame()
    if "crf" in sel.columns:
        sel["crf"] = sel["crf"].map(as_bool).astype(bool)
    else:
        sel["crf"] = False
    if "mode" not in sel.columns:
        sel["mode"] = ""
    sel["mode"] = sel["mode"].fillna("").astype(str)
    if "backbone" not in sel.columns:
        sel["backbone"] = ""
    sel["backbone"] = sel["backbone"].fillna("").astype(str)
    several_backbones = sel["backbone"].nunique() > 1
    keys = ["backbone", "method", "crf", "mode", "dim", "probe"]
    sel = sel.drop_duplicates(keys + ["seed"], keep="last")
    g = sel.groupby(keys)["value"].agg(["mean", "std", "count"]).reset_index()
    crf_methods = set(sel.loc[sel["crf"], "method"])
    several_modes = sel["mode"].nunique() > 1

    def label(backbone, method, crf, mode) -> str:
        if several_backbones:
            out = backbone_method_label(backbone, method)
        else:
            out = method_label(method, sel)
        if method in crf_methods:
            out += " with CRF" if crf else " w/o CRF"
        return out + (f" [{mode}]" if several_modes and mode else "")

    g["label"] = [label(*k) for k in zip(g["backbone"], g["method"], g["crf"], g["mode"])]
    g["cell"] = [
        f"{m:5.1f} ± {s:4.1f} (n={n})" if n > 1 else f"{m:5.1f} (n=1)"
        for m, s, n in zip(g["mean"], g["std"], g["count"])
    ]
    table = g.pivot_table(index=["label", "dim"], columns="probe", values="cell", aggfunc="first")
    table.index = table.index.set_names(["method", "dim"])
    table.columns.name = "probe"
    multi = sorted(set(int(n) for n in g["count"] if n > 1))
    if not multi:
        note = "1 seed (n=1): mean only"
    else:
        k = str(multi[0]) if len(multi) == 1 else f"{multi[0]}–{multi[-1]}"
        note = f"mean ± sample std over {k} seeds"
        if (g["count"] <= 1).any():
            note += "; (n=1) cells: one seed, mean only"
    table.attrs["note"] = note
    return table
