"""Ranking feature extractors: :func:`rank_backbones` over a multi-backbone sweep's rows.

A sweep whose config lists ``backbones`` (:class:`stego_probe.sweep.SweepConfig`) writes the
rows of every backbone into one table; :func:`rank_backbones` reduces it to one row per
backbone with the headline numbers (mean ± std over seeds), :func:`format_ranking` prints it.
``stego-probe compare`` (:mod:`stego_probe.cli.compare`) runs the sweep and prints the ranking.
See ``docs/compare.md``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Columns of :func:`rank_backbones`' table, in order.
RANKING_COLUMNS = [
    "rank",
    "backbone",
    "label",
    "width",
    "kmeans_miou",
    "kmeans_miou_std",
    "kmeans_method",
    "kmeans_dim",
    "linear_miou",
    "linear_miou_std",
    "linear_method",
    "stego_dim",
    "stego_silhouette",
    "stego_silhouette_std",
    "n_seeds",
]


def backbone_widths(df: pd.DataFrame) -> dict[str, int]:
    """Width ``C`` of every backbone of a results table: the largest ``dim`` of its rows (the
    raw features, ``dino``, are at ``D = C``; PCA / RP / STEGO add ``D = C``; the PCA spectrum
    runs to ``C``).

    Args:
        df: results rows with ``backbone`` and ``dim``.

    Returns:
        backbone -> C (backbones without a finite ``dim`` are left out).
    """
    dims = pd.to_numeric(df["dim"], errors="coerce")
    ok = np.isfinite(dims.to_numpy(float))
    g = dims[ok].groupby(df.loc[ok, "backbone"].astype(str)).max()
    return {str(b): int(v) for b, v in g.items()}


def _seed_means(df: pd.DataFrame, probe: str, metric: str) -> pd.DataFrame:
    """Mean / std / n over seeds of ``metric`` for ``probe`` per (backbone, method, dim)."""
    from stego_probe.plots.tables import aggregate_seeds

    sel = df[(df["probe"] == probe) & (df["metric"] == metric) & df["dim"].notna()]
    sel = sel[~sel["crf"].astype(bool)] if "crf" in sel.columns else sel
    return aggregate_seeds(sel, ["backbone", "method", "dim"])


def rank_backbones(df: pd.DataFrame, metric: str = "miou") -> pd.DataFrame:
    """One row per backbone: its headline numbers, best backbone first.

    Per backbone (values are means over seeds, ``*_std`` the sample std, NaN for one seed):

    * ``kmeans_miou``: the best k-means probe ``metric`` over every method and ``D``, with the
      method (``kmeans_method``) and ``D`` (``kmeans_dim``) where it is reached;
    * ``linear_miou``: the linear probe at full width ``D = C`` (``width``,
      :func:`backbone_widths`): the raw features (``dino``) if swept, else the best method at
      ``D = C`` (``linear_method``);
    * ``stego_silhouette``: the silhouette of the STEGO codes (distinctness rows) at STEGO's
      best ``D`` (``stego_dim``: where STEGO's k-means ``metric`` is highest; without k-means
      rows, where its silhouette is).

    Rows without CRF only; a table mixing datasets or evaluation modes is refused (filter it
    first), as is one without a ``backbone`` column.

    Args:
        df: results rows (``RESULT_COLUMNS``), e.g. a multi-backbone sweep's ``results.csv``.
        metric: the probe metric to rank by (``miou``, ``accuracy``).

    Returns:
        DataFrame with :data:`RANKING_COLUMNS` (``label``: :func:`~stego_probe.plots.
        backbone_label`; ``n_seeds``: seeds of the best k-means point), sorted by
        ``kmeans_miou`` descending (``rank`` 1 = best; NaN last).

    Raises:
        ValueError: no ``backbone`` column or no rows, several datasets or modes.
    """
    from stego_probe.plots.labels import RAW_METHODS, backbone_label
    from stego_probe.plots.tables import prepare_results

    if not isinstance(df, pd.DataFrame) or "backbone" not in df.columns:
        raise ValueError("rank_backbones: df must be a results DataFrame with a 'backbone' column")
    d = prepare_results(df, name="rank_backbones: df")
    for col in ("dataset", "mode"):
        values = sorted(set(d[col]))
        if len(values) > 1:
            raise ValueError(
                f"rank_backbones: the table mixes {col} values {values}; rank one at a time, "
                f"e.g. df[df[{col!r}] == {values[0]!r}]"
            )
    d = d[d["backbone"] != ""]
    if d.empty:
        raise ValueError("rank_backbones: no rows with a backbone to rank")
    widths = backbone_widths(d)
    km = _seed_means(d, "kmeans", metric)
    lin = _seed_means(d, "linear", metric)
    sil = _seed_means(d, "none", "silhouette")
    rows = []
    for bb in sorted(set(d["backbone"])):
        width = widths.get(bb)
        row = {"backbone": bb, "label": backbone_label(bb), "width": width}
        k = km[km["backbone"] == bb].dropna(subset=["mean"])
        if len(k):
            best = k.loc[k["mean"].idxmax()]
            row.update(
                kmeans_miou=best["mean"],
                kmeans_miou_std=best["std"],
                kmeans_method=best["method"],
                kmeans_dim=int(best["dim"]),
                n_seeds=int(best["n"]),
            )
        full = lin[(lin["backbone"] == bb) & (lin["dim"] == width)].dropna(subset=["mean"])
        if len(full):
            raw = full[full["method"].isin(RAW_METHODS)]
            pick = raw.iloc[0] if len(raw) else full.loc[full["mean"].idxmax()]
            row.update(
                linear_miou=pick["mean"], linear_miou_std=pick["std"], linear_method=pick["method"]
            )
        s_rows = sil[(sil["backbone"] == bb) & (sil["method"] == "stego")].dropna(subset=["mean"])
        if len(s_rows):
            k_stego = k[k["method"] == "stego"]
            if len(k_stego):
                dim = k_stego.loc[k_stego["mean"].idxmax(), "dim"]
                at = s_rows[s_rows["dim"] == dim]
            else:
                at = s_rows.loc[[s_rows["mean"].idxmax()]]
            if len(at):
                row.update(
                    stego_dim=int(at["dim"].iloc[0]),
                    stego_silhouette=at["mean"].iloc[0],
                    stego_silhouette_std=at["std"].iloc[0],
                )
        rows.append(row)
    out = pd.DataFrame(rows).reindex(columns=RANKING_COLUMNS)
    out = out.sort_values("kmeans_miou", ascending=False, na_position="last", kind="stable")
    out["rank"] = np.arange(1, len(out) + 1)
    for col in ("kmeans_dim", "stego_dim", "n_seeds", "width"):
        out[col] = out[col].astype("Int64")
    return out.reset_index(drop=True)


def format_ranking(table: pd.DataFrame) -> str:
    """:func:`rank_backbones`' table as text, one line per backbone: ``mean ± std`` cells
    (the mean alone for one seed), e.g. ``41.2 ± 1.3 (stego, D=12)``."""

    def cell(mean, std, digits=1) -> str:
        if pd.isna(mean):
            return "-"
        return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if pd.notna(std) else "")

    shown = pd.DataFrame(
        {
            "rank": table["rank"],
            "backbone": table["label"],
            "C": table["width"],
            "best k-means mIoU (method, D)": [
                cell(m, s) + (f" ({meth}, D={dim})" if pd.notna(m) else "")
                for m, s, meth, dim in zip(
                    table["kmeans_miou"],
                    table["kmeans_miou_std"],
                    table["kmeans_method"],
                    table["kmeans_dim"],
                )
            ],
            "linear mIoU at D=C": [
                cell(m, s) for m, s in zip(table["linear_miou"], table["linear_miou_std"])
            ],
            "STEGO silhouette (D)": [
                cell(m, s, 3) + (f" (D={dim})" if pd.notna(m) else "")
                for m, s, dim in zip(
                    table["stego_silhouette"], table["stego_silhouette_std"], table["stego_dim"]
                )
            ],
        }
    )
    seeds = sorted({int(n) for n in table["n_seeds"].dropna()})
    note = (
        "mean over 1 seed"
        if seeds == [1]
        else "mean ± sample std over " + "/".join(map(str, seeds)) + " seeds"
    )
    return shown.to_string(index=False) + f"\n({note})"
