"""The paper's figures and ours, drawn only from tidy results tables (:mod:`stego_probe.results`).

Figures (PROTOCOL §7; ``docs/figures.md`` lists the rows each needs):

* :func:`plot_pca_spectrum` — Figure 3, PCA cumulative explained variance.
* :func:`plot_metric_over_dims` — Figure 4 (mIoU) and Appendix Figure 1 (accuracy).
* :func:`plot_hnne_appendix` — Appendix Figure 2 (h-NNE, one dataset, 2×2).
* :func:`plot_distinctness_over_dims`, :func:`plot_kmeans_convergence` — our cluster-distinctness
  and k-means statistics over D.
* :func:`plot_embedding_map` (+ :func:`embedding_2d`), :func:`plot_qualitative` — 2-D maps and
  qualitative segmentation grids from arrays.
* :func:`plot_all` draws every figure a table has data for; :func:`save_figure` writes one.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no global
figure registry, no backend switch; Agg / PDF are used when saving) inside a temporary seaborn
theme (darkgrid, ``"colorblind"`` palette), so user rcParams are left untouched.

Aggregation over seeds: rows that differ only in ``seed`` are averaged; the error bar is the
sample standard deviation (``ddof=1``) when a point has more than one seed. Rows repeated with
the same seed (a re-run appended to the same CSV) count once, the **last** one wins. Rows of one
series that differ in ``backbone``, ``weights_sha256``, ``match`` or ``split`` are refused
(``ValueError``): pass ``where={"match": "hungarian"}``-style filters to pick one.

Labels come from the table's provenance (``docs/figures.md``, "Labels"): the raw-feature method
(``method="dino"``, the identity projection) is named after its backbone (:func:`method_label`:
"DINO" only for a ``dino_*`` backbone); widths are the recorded ones ("D_ViT" only for a ViT, "C"
otherwise); CRF wording appears only in figures with CRF rows; every legend's title says
what the error bars show and over how many seeds.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context, ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from stego_probe.colors import colormap_for

#: Dataset keys in the paper's column order (Figure 4).
PAPER_DATASETS = ("cocostuff27", "cityscapes27", "potsdam3")
#: Display names of the paper's datasets.
DATASET_TITLES = {"cocostuff27": "Cocostuff", "cityscapes27": "Cityscapes", "potsdam3": "Potsdam"}
#: (D_STEGO, D_ViT) of the paper's datasets (PROTOCOL §7.1).
PAPER_DIMS = {"cocostuff27": (90, 768), "cityscapes27": (100, 768), "potsdam3": (70, 384)}
#: Figure 3 line order and palette index.
PCA_SPECTRUM_ORDER = {"cityscapes27": 0, "potsdam3": 1, "cocostuff27": 2}
#: Metrics drawn by :func:`plot_distinctness_over_dims` by default.
DISTINCTNESS_METRICS = ("silhouette", "scatter_ratio", "centroid_margin", "kmeans_ari")
#: Metrics drawn by :func:`plot_kmeans_convergence`.
CONVERGENCE_METRICS = ("kmeans_iterations", "kmeans_ari", "kmeans_nmi")
#: File stems written by :func:`plot_all` (the reference's names where the paper has the figure).
FIGURE_FILES = {
    "pca_spectrum": "pca_cum_variance",
    "miou": "all_datasets_miou",
    "accuracy": "all_datasets_acc",
    "distinctness": "distinctness_over_dims",
    "convergence": "kmeans_convergence",
}
#: Probes of the Figure 4 rows, in row order.
FIGURE4_PROBES = ("linear", "cluster", "kmeans")

METRIC_LABELS = {
    "miou": "mIoU",
    "accuracy": "Accuracy",
    "silhouette": "Silhouette (cosine)",
    "silhouette_std": "Silhouette std",
    "davies_bouldin": "Davies–Bouldin index",
    "calinski_harabasz": "Calinski–Harabasz index",
    "scatter_ratio": "Between / within scatter",
    "intra_cos": "Mean intra-class cosine",
    "inter_cos": "Mean inter-class cosine",
    "centroid_margin": "Centroid margin",
    "kmeans_iterations": "k-means iterations\nto converge",
    "kmeans_ari": "ARI between\nk-means restarts",
    "kmeans_nmi": "NMI between\nk-means restarts",
}
_PROBE_YLABELS = {
    "linear": "Supervised\nLinear Probe {m}",
    "cluster": "Unsupervised\nCluster Probe {m}",
    "kmeans": "Unsupervised k-means\nProbe {m} (stego_probe)",
}
_XLABEL = "\n" + r"Embedding Dimension $D$"
_AMBIGUITY_COLUMNS = ("backbone", "weights_sha256", "match", "split")
_PROVENANCE = ("recorded", "paper")


# --------------------------------------------------------------------------------------------
# series styles
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesStyle:
    """How one series of Figure 4 is drawn (PROTOCOL §7.2 style table).

    Attributes:
        label: the paper's legend label (PROTOCOL §7.2). Figures label series from the table's
            provenance instead (:func:`method_label`, CRF wording only with CRF rows).
        marker: matplotlib marker.
        linestyle: matplotlib line style, ``""`` for markers only.
        color: index into the seaborn ``"colorblind"`` palette.
        hline: also draw a dashed horizontal line at the (single) value.
        order: legend order.
        paper_mode: the evaluation mode the paper used for this series.
    """

    label: str
    marker: str
    linestyle: str
    color: int
    hline: bool = False
    order: float = 100.0
    paper_mode: str = "val"


_STYLES = {
    ("stego_released", True): SeriesStyle("STEGO (theirs)", "v", "", 3, False, 0, "eval"),
    ("stego_released", False): SeriesStyle("STEGO (theirs) w/o CRF", "o", "--", 3, True, 1, "eval"),
    ("stego", False): SeriesStyle("STEGO", "x", "-", 3, False, 2),
    ("dino", True): SeriesStyle("DINO (ours)", "v", "", 0, False, 3, "eval"),
    ("dino", False): SeriesStyle("DINO (ours) w/o CRF", "o", "--", 0, True, 4, "val"),
    ("pca", False): SeriesStyle("PCA", "x", "-", 2, False, 5),
    ("rp", False): SeriesStyle("RP", "x", "-", 6, False, 6),
    ("hnne", False): SeriesStyle("h-NNE", "x", "-", 8, False, 7),
    ("rp_sparse", False): SeriesStyle("RP (sparse)", "x", "-", 5, False, 8),
    ("umap", False): SeriesStyle("UMAP", "x", "-", 4, False, 9),
}
_METHOD_LABELS = {
    "stego": "STEGO",
    "stego_released": "STEGO (theirs)",
    "pca": "PCA",
    "rp": "RP",
    "rp_sparse": "RP (sparse)",
    "umap": "UMAP",
    "hnne": "h-NNE",
}
_SPARE_COLORS = (1, 7, 9)
#: Methods whose rows are the backbone's raw features (the identity projection).
RAW_METHODS = ("dino", "identity")
#: Backbone of each paper dataset (PROTOCOL §7.1); PAPER_DIMS' width holds only for it.
PAPER_BACKBONES = {
    "cocostuff27": "dino_vitb8",
    "cityscapes27": "dino_vitb8",
    "potsdam3": "dino_vits8",
}
_VIT_NAME = re.compile(r"^(dino|dinov2)_vit([sblg])(\d+)(_reg)?(?:_(.+))?$")


def series_style(method: str, crf: bool) -> SeriesStyle:
    """Style of the Figure 4 series ``(method, crf)``.

    The paper's series follow PROTOCOL §7.2; a sweep method evaluated with CRF gets
    ``"<name> + CRF"`` with a dotted line; unknown methods get a spare palette colour chosen
    deterministically from their name.

    Args:
        method: results-table method (``stego``, ``pca``, ``rp``, ``dino``, ``stego_released`` ...).
        crf: whether the rows were evaluated with the dense CRF.

    Returns:
        :class:`SeriesStyle`.
    """
    crf = bool(crf)
    if (method, crf) in _STYLES:
        return _STYLES[(method, crf)]
    if (method, False) in _STYLES and crf:
        base = _STYLES[(method, False)]
        return SeriesStyle(f"{base.label} + CRF", "v", ":", base.color, False, base.order + 0.5)
    color = _SPARE_COLORS[sum(method.encode()) % len(_SPARE_COLORS)]
    label = method + (" + CRF" if crf else "")
    return SeriesStyle(label, "v" if crf else "x", ":" if crf else "-", color, False, 50.0)


# --------------------------------------------------------------------------------------------
# labels from provenance
# --------------------------------------------------------------------------------------------


def is_dino_backbone(backbone: str) -> bool:
    """Whether a backbone registry name is one of the DINO (v1) ViTs (``dino_*``).

    ``dinov2_*``, ``timm:<name>``, ``descriptor`` and user backbones are not.
    """
    return str(backbone).startswith("dino_")


def is_vit_backbone(backbone: str) -> bool:
    """Whether a backbone registry name is a vision transformer (its width is a ":math:`D_{ViT}`").

    True for ``dino_*``, ``dinov2_*`` and names containing ``vit`` (e.g. ``timm:vit_small_patch16_224``);
    False for ``descriptor``, ``timm:resnet50`` and other names.
    """
    b = str(backbone).lower()
    return b.startswith(("dino_", "dinov2_")) or "vit" in b


def backbone_label(backbone: str) -> str:
    """Readable name of a backbone registry name.

    ``dino_vits8`` -> ``"DINO ViT-S/8"``, ``dinov2_vitb14_reg`` -> ``"DINOv2 ViT-B/14 (reg)"``,
    ``dino_vits8_timm`` -> ``"DINO ViT-S/8 (timm)"``; any other name (``descriptor``,
    ``timm:resnet50``, a user backbone) is returned unchanged.
    """
    name = str(backbone)
    m = _VIT_NAME.match(name)
    if not m:
        return name
    family, size, patch, reg, variant = m.groups()
    out = f"{'DINOv2' if family == 'dinov2' else 'DINO'} ViT-{size.upper()}/{patch}"
    extras = [x for x in ("reg" if reg else "", variant or "") if x]
    return out + (f" ({', '.join(extras)})" if extras else "")


def _raw_name(backbone: str) -> str:
    if is_dino_backbone(backbone):
        return "DINO"
    if str(backbone).startswith("dinov2_"):
        return backbone_label(backbone)
    return f"{backbone_label(backbone)} (raw)"


def _backbones(df: pd.DataFrame | None, method: str | None = None) -> list[str]:
    """Distinct non-empty backbones of ``method``'s rows (of all rows if it has none)."""
    if df is None or "backbone" not in df.columns:
        return []
    rows = df
    if method is not None and "method" in df.columns:
        own = df[df["method"].astype(str) == method]
        rows = own if len(own) else df
    names = rows["backbone"].dropna().astype(str)
    return sorted(set(names) - {"", "nan", "None"})


def method_label(method: str, provenance: pd.DataFrame | str | None = None) -> str:
    """Display name of a results-table method, from the rows' provenance.

    The raw-feature method (``dino``, the identity projection; alias ``identity``) is named after
    the backbone that produced the features: ``"DINO"`` only for a DINO backbone (``dino_*``),
    ``"DINOv2 ViT-S/14"`` for a DINOv2, ``"<backbone> (raw)"`` otherwise (``"descriptor (raw)"``,
    ``"timm:resnet50 (raw)"``); several backbones are joined with ``" / "``; without any backbone
    information ``"raw features"``. Other methods have fixed names: ``STEGO``, ``STEGO (theirs)``
    (the released checkpoints), ``PCA``, ``RP``, ``RP (sparse)``, ``UMAP``, ``h-NNE``; unknown
    methods keep their name. The ``method`` column itself is never changed.

    Args:
        method: the ``method`` value (``dino``, ``stego``, ``pca`` ...).
        provenance: a results table (the ``backbone`` of ``method``'s rows is used, or of all rows
            if it has none), a backbone registry name, or None.

    Returns:
        the label (no CRF, mode or seed wording; figures add those).

    Examples:
        >>> method_label("dino", "dino_vits8"), method_label("dino", "descriptor")
        ('DINO', 'descriptor (raw)')
        >>> method_label("dino", "dinov2_vits14"), method_label("pca", "descriptor")
        ('DINOv2 ViT-S/14', 'PCA')
    """
    method = str(method)
    if method not in RAW_METHODS:
        return _METHOD_LABELS.get(method, method)
    if isinstance(provenance, str):
        names = [provenance] if provenance else []
    elif provenance is None:
        names = []
    elif isinstance(provenance, pd.DataFrame):
        names = _backbones(provenance, method)
    else:
        raise ValueError(
            f"provenance: expected a results DataFrame, a backbone name or None, "
            f"got {type(provenance)}"
        )
    if not names:
        return "raw features"
    return " / ".join(dict.fromkeys(_raw_name(b) for b in names))


def _crf_wording(method: str, crf: bool, crf_methods: set, figure_provenance: str) -> str:
    """CRF part of a label: none unless the figure has CRF rows (``crf_methods`` non-empty).

    With CRF rows, a CRF series says "with CRF" (the paper's own labels for "STEGO (theirs)" /
    "DINO (ours)" in ``figure_provenance="paper"``, "+ CRF" for other methods there) and a
    non-CRF series says "w/o CRF" when the same method also has CRF rows in the figure.
    """
    if not crf_methods:
        return ""
    if crf:
        if figure_provenance == "paper":
            return "" if method in ("stego_released", "dino") else " + CRF"
        return " with CRF"
    return " w/o CRF" if method in crf_methods else ""


def _series_name(method: str, provenance: pd.DataFrame | None) -> str:
    """Figure 4 name of a method: :func:`method_label`, with the paper's "(ours)" for DINO."""
    label = method_label(method, provenance)
    if method in RAW_METHODS and label == "DINO":
        return "DINO (ours)"
    return label


def _seed_counts(n) -> str:
    vals = sorted({int(x) for x in np.asarray(n, dtype=float) if np.isfinite(x) and x > 1})
    if not vals:
        return ""
    return str(vals[0]) if len(vals) == 1 else f"{vals[0]}–{vals[-1]}"


def errorbar_note(
    n: Sequence[int] | np.ndarray, *, published: bool = False, own_std: Sequence[str] = ()
) -> list[str]:
    """What a figure's error bars show, from the seed count of each drawn point.

    Args:
        n: number of seeds behind each drawn point (the ``n`` of :func:`aggregate_seeds`).
        published: published points (with their uncertainty as bars) are drawn too.
        own_std: names of the ``<metric>_std`` rows drawn as the bars of single-seed points
            (spread over subsamples / k-means restarts within one run).

    Returns:
        sentences, e.g. ``["bars: ±1 sample std over 3 seeds"]``, or
        ``["1 seed (n=1): no error bars"]``; figures put them in the legend title.

    Examples:
        >>> errorbar_note([3, 3, 1])
        ['bars: ±1 sample std over 3 seeds', '1-seed points (n=1): no bars']
        >>> errorbar_note([1, 1])
        ['1 seed (n=1): no error bars']
    """
    n = np.asarray(n, dtype=float)
    k = _seed_counts(n)
    single = bool((n <= 1).any()) or not len(n)
    own = ", ".join(dict.fromkeys(own_std))
    own_text = f"bars ± {own} (spread within the run)" if own else ""
    parts = []
    if k:
        parts.append(f"bars: ±1 sample std over {k} seeds")
        if single:
            parts.append(f"1-seed points (n=1): {own_text or 'no bars'}")
    else:
        parts.append(f"1 seed (n=1): {own_text or 'no error bars'}")
    if published:
        parts.append("hollow: published (bars: their uncertainty)")
    return parts


def _legend_title(df: pd.DataFrame, notes: list[str], width: int) -> str:
    """``backbone ...`` plus the error-bar sentences, packed into lines of at most ``width``."""
    names = _backbones(df)
    parts = ([f"backbone {', '.join(names)}"] if names else []) + list(notes)
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += "; " + part
        else:
            lines.append(part)
    return "\n".join(w for line in lines for w in textwrap.wrap(line, width) or [""])


def _title_chars(fig_width: float) -> int:
    """Characters of a small-font legend title line that fit in ``fig_width`` inches."""
    return max(30, int(11 * fig_width))


def _palette() -> list[tuple[float, float, float]]:
    import seaborn as sns

    return list(sns.color_palette("colorblind"))


@contextlib.contextmanager
def _theme():
    """Seaborn darkgrid theme for the duration of a figure's construction only."""
    import seaborn as sns

    with rc_context():
        sns.set_theme(style="darkgrid", palette="colorblind")
        yield _palette()


# --------------------------------------------------------------------------------------------
# table handling
# --------------------------------------------------------------------------------------------

_NEEDED = ("dataset", "method", "dim", "seed", "probe", "crf", "mode", "metric", "value")
_STRING_COLUMNS = ("dataset", "method", "probe", "mode", "metric") + _AMBIGUITY_COLUMNS


def _as_bool(v) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return False
    if isinstance(v, (int, np.integer, float, np.floating)):
        return bool(v)
    s = str(v).strip().lower()
    if s in ("true", "1", "yes", "y", "t"):
        return True
    if s in ("false", "0", "no", "n", "f", "", "nan", "none"):
        return False
    raise ValueError(f"results table: crf value {v!r} is not a boolean")


def _prepare(df: pd.DataFrame, where: Mapping | None = None, name: str = "df") -> pd.DataFrame:
    """Copy of a results table with normalised dtypes, filtered by ``where``."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{name}: expected a pandas DataFrame of results rows, got {type(df)}")
    missing = [c for c in _NEEDED if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: results table lacks columns {missing}; expected RESULT_COLUMNS")
    d = df.copy().reset_index(drop=True)
    for c in _STRING_COLUMNS:
        if c in d.columns:
            d[c] = d[c].astype(object).where(d[c].notna(), "").astype(str)
    d["crf"] = d["crf"].map(_as_bool).astype(bool)
    d["dim"] = pd.to_numeric(d["dim"], errors="coerce")
    d["value"] = pd.to_numeric(d["value"], errors="coerce")
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
    ``backbone``, ``weights_sha256``, ``match`` or ``split`` (those not in ``by``) are refused.

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
            raise ValueError(
                f"results table mixes {col} values {vals} in one series "
                f"({dict(zip(by, key_t))}); filter the table first, e.g. where={{{col!r}: ...}}"
            )
    d = df.drop_duplicates(by + ["seed"], keep="last")
    g = d.groupby(by, dropna=False, sort=True)["value"]
    out = g.agg(mean="mean", std="std", n="count").reset_index()
    return out


def _dataset_order(names: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    paper = [d for d in PAPER_DATASETS if d in names]
    return paper + sorted(d for d in names if d not in PAPER_DATASETS)


def _width_of(ds: str, d_all: pd.DataFrame) -> tuple[int | None, list[str]]:
    """Backbone width C of a dataset's rows and their backbones.

    C is the dimension of the raw-feature rows (``dino``: D = C); without them, the paper's width
    for a paper dataset whose rows all come from the paper's backbone; else None.
    """
    rows = d_all[d_all["dataset"] == ds]
    names = _backbones(rows)
    raw = rows.loc[rows["method"].isin(RAW_METHODS) & rows["dim"].notna(), "dim"]
    if len(raw):
        return int(raw.max()), names
    if ds in PAPER_DIMS and names == [PAPER_BACKBONES[ds]]:
        return PAPER_DIMS[ds][1], names
    return None, names


def _width_text(width: int, backbones: Sequence[str]) -> str:
    """``$D_ViT=384$`` for ViT backbones, ``backbone width $C=64$`` otherwise."""
    if backbones and all(is_vit_backbone(b) for b in backbones):
        return rf"$D_\mathregular{{ViT}}={width}$"
    return rf"backbone width $C={width}$"


def _dataset_title(ds: str, d_all: pd.DataFrame) -> str:
    """Column title: name + D_STEGO and the backbone width, both from the rows where possible.

    D_STEGO is the ``stego_released`` dimension (without such rows, the paper's for a paper
    dataset whose rows come from the paper's backbone); the width is the recorded one
    (:func:`_width_of`), written ``D_ViT`` only for a ViT.
    """
    name = DATASET_TITLES.get(ds, ds)
    rows = d_all[(d_all["dataset"] == ds) & d_all["dim"].notna()]
    released = rows.loc[rows["method"] == "stego_released", "dim"].unique()
    width, names = _width_of(ds, d_all)
    paper = ds in PAPER_DIMS and names == [PAPER_BACKBONES[ds]]
    if len(released) == 1:
        d_stego = int(released[0])
    else:
        d_stego = PAPER_DIMS[ds][0] if paper and not len(released) else None
    parts = []
    if d_stego is not None:
        parts.append(rf"$D_\mathregular{{STEGO}}={d_stego}$")
    if width is not None:
        parts.append(_width_text(width, names))
    return name + ("\n" + ", ".join(parts) if parts else "")


def dim_ticks(dims: Iterable[float]) -> np.ndarray:
    """x ticks ``3 * 2**k`` covering the given dimensions (PROTOCOL §7.2: 3, 6, ..., 768).

    Args:
        dims: positive embedding dimensions.

    Returns:
        int64 array of ticks, ``k`` from ``max(0, floor(log2(min/3)))`` to ``ceil(log2(max/3))``.
    """
    d = np.asarray([float(x) for x in dims if np.isfinite(x) and x > 0])
    if d.size == 0:
        return 3 * 2 ** np.arange(0, 9, dtype=np.int64)
    kmin = max(0, math.floor(math.log2(d.min() / 3)))
    kmax = max(kmin, math.ceil(math.log2(d.max() / 3)))
    return 3 * 2 ** np.arange(kmin, kmax + 1, dtype=np.int64)


def _format_dim_axis(axes: Iterable, dims: Iterable[float]) -> None:
    ticks = dim_ticks(dims)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks)
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        fmt = ticker.ScalarFormatter()
        fmt.set_useOffset(False)
        fmt.set_scientific(False)
        ax.xaxis.set_major_formatter(fmt)
        ax.tick_params(axis="x", labelsize=9)


def _legend_rect_bottom(n_entries: int, ncol: int, fig_height: float) -> float:
    rows = max(1, math.ceil(n_entries / ncol))
    return max(0.13, (0.2 + 0.22 * rows) / fig_height)


# --------------------------------------------------------------------------------------------
# published overlay
# --------------------------------------------------------------------------------------------


def _published_frame(published) -> pd.DataFrame | None:
    """``None``/``False`` -> None; ``True`` -> packaged points; a DataFrame -> normalised copy."""
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
    p["crf"] = p["crf"].map(_as_bool).astype(bool)
    return p


_PUBLISHED_LABELS = {True: "published (digitised)", False: "published (reported)"}


def _draw_published(ax, pts: pd.DataFrame, palette, legend: dict) -> None:
    """Hollow markers with the published uncertainty as error bars.

    Digitised points use the series' marker (``x`` -> ``o``); reported numbers (issue logs, the
    STEGO paper) use a hollow square.
    """
    if pts is None or not len(pts):
        return
    groups = pts.groupby(["series_method", "crf", "digitised"], sort=True)
    for (method, crf, digitised), g in groups:
        style = series_style(method, crf)
        if digitised:
            marker = style.marker if style.marker in ("v", "o", "^", "D") else "o"
        else:
            marker = "s"
        label = _PUBLISHED_LABELS[bool(digitised)]
        ax.errorbar(
            g["dim"].to_numpy(float),
            g["value"].to_numpy(float),
            yerr=g["uncertainty"].to_numpy(float),
            fmt=marker,
            markerfacecolor="none",
            markeredgecolor=palette[style.color],
            ecolor=palette[style.color],
            markersize=7,
            capsize=2,
            label=label,
            gid="published",
            zorder=1,
        )
        if label not in legend:
            proxy = Line2D(
                [],
                [],
                marker="o" if digitised else "s",
                linestyle="",
                markerfacecolor="none",
                color="0.35",
                markersize=7,
            )
            legend[label] = (1000.0 + (0 if digitised else 1), proxy)


# --------------------------------------------------------------------------------------------
# Figure 4 / Appendix Figure 1 / Appendix Figure 2
# --------------------------------------------------------------------------------------------


def _figure4_table(
    df: pd.DataFrame,
    metrics: Sequence[str],
    probes: Sequence[str],
    methods: Sequence[str] | None,
    where: Mapping | None,
    figure_provenance: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Prepared rows and their seed aggregate for the metric-over-D figures."""
    if figure_provenance not in _PROVENANCE:
        raise ValueError(
            f"figure_provenance: expected one of {_PROVENANCE}, got {figure_provenance!r}"
        )
    d_all = _prepare(df, where)
    d = d_all[
        d_all["metric"].isin(list(metrics))
        & d_all["probe"].isin(list(probes))
        & d_all["dim"].notna()
    ]
    if methods is not None:
        d = d[d["method"].isin(list(methods))]
    if not len(d):
        raise ValueError(
            f"no results rows with metric in {list(metrics)} and probe in {list(probes)} "
            "(and a dim) to plot"
        )
    if figure_provenance == "paper":
        keep = np.ones(len(d), dtype=bool)
        key_cols = ["dataset", "probe", "metric", "method", "crf"]
        for key, g in d.groupby(key_cols, sort=True):
            modes = sorted(g["mode"].unique())
            if len(modes) <= 1:
                continue
            want = series_style(key[3], key[4]).paper_mode
            if want not in modes:
                raise ValueError(
                    f"figure_provenance='paper': series {dict(zip(key_cols, key))} has modes "
                    f"{modes} and none is the paper's {want!r}; filter with where={{'mode': ...}}"
                )
            keep &= ~d.index.isin(g.index[g["mode"] != want])
        d = d[keep]
    agg = aggregate_seeds(d, ["dataset", "probe", "metric", "method", "crf", "mode", "dim"])
    return d_all, d, agg


@dataclass(frozen=True)
class _Labeller:
    """Series labels of one figure: method names from its rows, CRF wording if it has CRF rows."""

    names: Mapping[str, str]
    crf_methods: frozenset
    figure_provenance: str = "recorded"

    @classmethod
    def of(cls, rows: pd.DataFrame, figure_provenance: str = "recorded", series=_series_name):
        names = {m: series(m, rows) for m in rows["method"].unique()}
        crf_methods = frozenset(rows.loc[rows["crf"].astype(bool), "method"])
        return cls(names, crf_methods, figure_provenance)

    def __call__(self, method: str, crf: bool, mode: str = "") -> str:
        label = self.names.get(method, method) + _crf_wording(
            method, bool(crf), set(self.crf_methods), self.figure_provenance
        )
        if self.figure_provenance == "paper" or not mode:
            return label
        return f"{label} [{mode}]"


def _draw_metric_panel(ax, agg: pd.DataFrame, palette, legend: dict, labeller: _Labeller):
    """Draw every (method, crf, mode) series of one panel; register legend handles."""
    series = []
    for (method, crf, mode), g in agg.groupby(["method", "crf", "mode"], sort=True):
        style = series_style(method, crf)
        series.append((style.order, mode != style.paper_mode, method, crf, mode, style, g))
    series.sort(key=lambda s: s[:5])
    for order, off_mode, _method, _crf, mode, style, g in series:
        g = g.sort_values("dim")
        x = g["dim"].to_numpy(float)
        y = g["mean"].to_numpy(float)
        multi = bool((g["n"] > 1).any())
        yerr = np.nan_to_num(g["std"].to_numpy(float), nan=0.0) if multi else None
        linestyle = ":" if (off_mode and style.linestyle) else style.linestyle
        label = labeller(_method, _crf, mode)
        color = palette[style.color]
        cont = ax.errorbar(
            x,
            y,
            yerr=yerr,
            fmt=style.marker + linestyle,
            color=color,
            capsize=3 if multi else 0,
            label=label,
            zorder=3,
        )
        if style.hline and len(x) == 1:
            ax.axhline(y[0], color=color, linestyle="--", label="_nolegend_", zorder=2)
        if label not in legend:
            legend[label] = (order + (0.25 if off_mode else 0.0), cont)


def _finish_legend(fig, legend: dict, title: str = "", **kw):
    items = sorted(legend.items(), key=lambda kv: (kv[1][0], kv[0]))
    handles = [h for _, (_, h) in items]
    labels = [lab for lab, _ in items]
    return fig.legend(handles, labels, title=title or None, title_fontsize="small", **kw)


def _published_drawn(legend: dict) -> bool:
    return any(lab in legend for lab in _PUBLISHED_LABELS.values())


def plot_metric_over_dims(
    df: pd.DataFrame,
    metric: str = "miou",
    probe_rows: Sequence[str] = ("linear", "cluster"),
    published=None,
    *,
    figure_provenance: str = "recorded",
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    where: Mapping | None = None,
) -> Figure:
    """Figure 4 (``metric="miou"``) / Appendix Figure 1 (``"accuracy"``): metric versus D.

    Grid: one row per probe in ``probe_rows`` that has rows (linear top, cluster below; a
    ``"kmeans"`` row — stego_probe's FAISS k-means protocol, labelled as such — is its own row and
    never shares a panel with the reference cluster probe), one column per dataset present
    (cocostuff27, cityscapes27, potsdam3, then the others alphabetically). x: log axis with ticks
    3·2^k; series styles per PROTOCOL §7.2 (:func:`series_style`); mean over seeds with ±std error
    bars when a point has several seeds.

    Labels come from the rows: the raw-feature series is named by :func:`method_label` ("DINO
    (ours)" only for a ``dino_*`` backbone, e.g. "descriptor (raw)" otherwise); column titles
    give D_STEGO and the recorded backbone width ("D_ViT" only for a ViT, "backbone width C"
    otherwise); "with CRF" / "w/o CRF" appear only when the drawn rows include CRF rows; the
    legend title names the backbone and says what the error bars show (:func:`errorbar_note`).

    Args:
        df: results rows (``RESULT_COLUMNS``).
        metric: metric to plot (``miou``, ``accuracy`` or any other metric name).
        probe_rows: probes, one grid row each, in order.
        published: ``None``/``False`` (no overlay), ``True`` (the packaged published points,
            :func:`stego_probe.published.overlay_points`) or a DataFrame of such points; drawn as
            hollow markers with their uncertainty as error bars.
        figure_provenance: ``"recorded"`` shows each series' evaluation mode in the legend
            (``"STEGO [val]"``) and draws every mode present as its own series; ``"paper"``
            reproduces the reference figure (Q39): plain labels, and where a series has several
            modes only the paper's (val for sweeps and DINO w/o CRF, eval otherwise) is kept.
        methods: restrict to these methods (default: all in the table).
        datasets: restrict to these datasets (default: all in the table).
        where: column -> value (or list of values) filters applied first.

    Returns:
        Figure with a ``len(probes) × len(datasets)`` grid and a shared legend at lower centre.

    Raises:
        ValueError: no rows to plot, bad ``figure_provenance``, or an ambiguous series.
    """
    if isinstance(probe_rows, str) or not len(probe_rows):
        raise ValueError(f"probe_rows: expected a non-empty sequence of probes, got {probe_rows!r}")
    d_all, d, agg = _figure4_table(df, [metric], probe_rows, methods, where, figure_provenance)
    probes = [p for p in probe_rows if (agg["probe"] == p).any()]
    ds_list = _dataset_order(agg["dataset"].unique())
    if datasets is not None:
        ds_list = [d for d in _dataset_order(datasets) if d in set(ds_list)]
        if not ds_list:
            raise ValueError(f"datasets: none of {list(datasets)} has {metric!r} rows")
        agg = agg[agg["dataset"].isin(ds_list)]
        d = d[d["dataset"].isin(ds_list)]
    labeller = _Labeller.of(d, figure_provenance)
    pub = _published_frame(published)
    nrows, ncols = len(probes), len(ds_list)
    mname = METRIC_LABELS.get(metric, metric)
    with _theme() as palette:
        height = 3.5 * nrows
        # (10, 7) for the paper's 2 x 3; narrow grids are widened so the legend fits
        width = max(10 / 3 * ncols, 6.0)
        fig = Figure(figsize=(width, height))
        axs = fig.subplots(nrows, ncols, sharex=True, squeeze=False)
        legend: dict = {}
        all_dims = list(agg["dim"])
        for r, probe in enumerate(probes):
            for c, ds in enumerate(ds_list):
                ax = axs[r, c]
                sub = agg[(agg["dataset"] == ds) & (agg["probe"] == probe)]
                _draw_metric_panel(ax, sub, palette, legend, labeller)
                if pub is not None:
                    pts = pub[
                        (pub["dataset"] == ds) & (pub["probe"] == probe) & (pub["metric"] == metric)
                    ]
                    _draw_published(ax, pts, palette, legend)
                    all_dims += list(pts["dim"])
                letter = f"({chr(ord('a') + r * ncols + c)})"
                if r == 0:
                    ax.set_title(_dataset_title(ds, d_all) + "\n\n" + letter)
                else:
                    ax.set_title(letter)
                if c == 0:
                    ax.set_ylabel(_PROBE_YLABELS.get(probe, f"{probe} probe {{m}}").format(m=mname))
                if r == nrows - 1:
                    ax.set_xlabel(_XLABEL)
        _format_dim_axis(axs.ravel(), all_dims)
        ncol = 3 if width >= 9 else 2
        notes = errorbar_note(agg["n"], published=_published_drawn(legend))
        title = _legend_title(d, notes, _title_chars(width))
        bottom = _legend_rect_bottom(len(legend) + ncol * (title.count("\n") + 1), ncol, height)
        fig.tight_layout(rect=[0, bottom, 1, 1], h_pad=1, w_pad=1)
        _finish_legend(fig, legend, title, loc="lower center", ncol=ncol)
    return fig


def plot_hnne_appendix(
    df: pd.DataFrame,
    dataset: str = "cityscapes27",
    published=None,
    *,
    figure_provenance: str = "recorded",
    where: Mapping | None = None,
) -> Figure:
    """Appendix Figure 2 (PROTOCOL §7.3): Figure 4's curves of one dataset plus h-NNE, 2×2.

    Panels (a) linear mIoU, (b) linear accuracy, (c) cluster mIoU, (d) cluster accuracy; figsize
    (10, 5.4); legend on the right in one column.

    Args:
        df: results rows.
        dataset: the dataset to draw.
        published, figure_provenance, where: as in :func:`plot_metric_over_dims`.

    Returns:
        Figure with 4 axes.
    """
    where = dict(where or {})
    where["dataset"] = dataset
    _, d, agg = _figure4_table(
        df, ["miou", "accuracy"], ["linear", "cluster"], None, where, figure_provenance
    )
    labeller = _Labeller.of(d, figure_provenance)
    pub = _published_frame(published)
    panels = [
        ("linear", "miou"),
        ("linear", "accuracy"),
        ("cluster", "miou"),
        ("cluster", "accuracy"),
    ]
    with _theme() as palette:
        fig = Figure(figsize=(10, 5.4))
        axs = fig.subplots(2, 2, sharex=True, squeeze=False)
        legend: dict = {}
        all_dims = list(agg["dim"])
        for i, (probe, metric) in enumerate(panels):
            ax = axs[i // 2, i % 2]
            sub = agg[(agg["probe"] == probe) & (agg["metric"] == metric)]
            _draw_metric_panel(ax, sub, palette, legend, labeller)
            if pub is not None:
                pts = pub[
                    (pub["dataset"] == dataset)
                    & (pub["probe"] == probe)
                    & (pub["metric"] == metric)
                ]
                _draw_published(ax, pts, palette, legend)
                all_dims += list(pts["dim"])
            ax.set_title(f"({chr(ord('a') + i)})")
            ax.set_ylabel(_PROBE_YLABELS[probe].format(m=METRIC_LABELS[metric]))
            if i >= 2:
                ax.set_xlabel(_XLABEL)
        _format_dim_axis(axs.ravel(), all_dims)
        fig.tight_layout(rect=[0, 0, 0.7192, 1], h_pad=1, w_pad=1)
        notes = errorbar_note(agg["n"], published=_published_drawn(legend))
        _finish_legend(fig, legend, _legend_title(d, notes, 33), loc="center right", ncol=1)
    return fig


# --------------------------------------------------------------------------------------------
# Figure 3
# --------------------------------------------------------------------------------------------


_SPECTRUM_TICKS = (0, 1 / 16, 0.25, 0.5, 0.75, 1)


def _spectrum_axis(ax, widths: Mapping[str, int], backbones: Sequence[str]) -> None:
    """Figure 3's x ticks and label from the recorded widths (number of components C).

    One width: the ticks are component counts (0, C/16, ..., C) and the label gives C. Several:
    the paper's fractions of the width, with each dataset's width in the label. The width is
    written ``D_ViT`` only when every backbone is a ViT, ``C`` otherwise.
    """
    vit = bool(backbones) and all(is_vit_backbone(b) for b in backbones)
    sym = r"D_\mathregular{ViT}" if vit else "C"
    distinct = sorted(set(widths.values()))
    if len(distinct) == 1:
        w = distinct[0]
        labels = [f"{f * w:g}" for f in _SPECTRUM_TICKS]
        ax.set_xticks(list(_SPECTRUM_TICKS), labels)
        ax.set_xlabel(f"Number of Components (of ${sym}={w}$)")
        return
    labels = [
        "0",
        rf"$\frac{{{sym}}}{{16}}$",
        rf"$\frac{{{sym}}}{{4}}$",
        rf"$\frac{{{sym}}}{{2}}$",
        rf"$\frac{{3{sym}}}{{4}}$",
        rf"${sym}$",
    ]
    ax.set_xticks(list(_SPECTRUM_TICKS), labels)
    per = ", ".join(f"{DATASET_TITLES.get(ds, ds)} {w}" for ds, w in widths.items())
    ax.set_xlabel(f"Number of Components\n(${sym}$: {per})")


def plot_pca_spectrum(
    df: pd.DataFrame, *, n_points: int = 768, where: Mapping | None = None
) -> Figure:
    """Figure 3 (PROTOCOL §7.4): cumulative PCA explained variance per dataset.

    Uses rows ``method == "pca"``, ``metric == "explained_variance_ratio"`` with ``dim`` = the
    component index 1..C (all components must be present) and ``value`` = the ratio (averaged over
    seeds if several). Each curve's component axis is normalised to [0, 1] and linearly
    interpolated onto ``n_points`` points, so a 384-component spectrum is stretched to the 768 one.
    Lines: Cityscapes, Potsdam, Cocostuff (palette 0, 1, 2), then other datasets (3, 4, ...).
    x ticks: with one width C (the number of components) the component counts 0, C/16, C/4,
    C/2, 3C/4, C and the label "Number of Components (of C=64)"; with several widths the
    paper's fractions and each dataset's width in the label. The width is written ``D_ViT`` only
    when every backbone is a ViT.

    Args:
        df: results rows.
        n_points: interpolation grid size (the reference uses 768).
        where: column filters applied first.

    Returns:
        Figure (4.2 × 3 in) with one axes.

    Raises:
        ValueError: no such rows, or a dataset's component indices are not 1..C.
    """
    d = _prepare(df, where)
    d = d[(d["metric"] == "explained_variance_ratio") & (d["method"] == "pca") & d["dim"].notna()]
    if not len(d):
        raise ValueError("no results rows with method='pca', metric='explained_variance_ratio'")
    agg = aggregate_seeds(d, ["dataset", "dim"])
    present = list(agg["dataset"].unique())
    order = [ds for ds in PCA_SPECTRUM_ORDER if ds in present]
    order += sorted(ds for ds in present if ds not in PCA_SPECTRUM_ORDER)
    spare = iter(range(3, 100))
    new_x = np.linspace(0, 1, int(n_points))
    widths: dict[str, int] = {}
    with _theme() as palette:
        fig = Figure(figsize=(4.2, 3))
        ax = fig.subplots()
        for ds in order:
            g = agg[agg["dataset"] == ds].sort_values("dim")
            comp = g["dim"].to_numpy(float)
            if not np.array_equal(comp, np.arange(1, len(comp) + 1)):
                raise ValueError(
                    f"explained_variance_ratio rows of {ds!r}: dim must be the component indices "
                    f"1..{len(comp)}, got {comp.astype(int).tolist()[:10]}..."
                )
            widths[ds] = len(comp)
            cum = np.cumsum(g["mean"].to_numpy(float))
            x = np.linspace(0, 1, len(cum))
            y = np.interp(new_x, x, cum)
            ci = PCA_SPECTRUM_ORDER[ds] if ds in PCA_SPECTRUM_ORDER else next(spare)
            ax.plot(new_x, y, color=palette[ci % len(palette)], label=DATASET_TITLES.get(ds, ds))
        _spectrum_axis(ax, widths, _backbones(d))
        ax.set_ylabel("Explained Variance")
        fig.tight_layout()
        ax.legend()
    return fig


# --------------------------------------------------------------------------------------------
# distinctness and k-means statistics
# --------------------------------------------------------------------------------------------


def _plot_metrics_grid(
    df: pd.DataFrame,
    metrics: Sequence[str],
    methods: Sequence[str] | None,
    where: Mapping | None,
    what: str,
) -> Figure:
    if isinstance(metrics, str) or not len(metrics):
        raise ValueError(f"metrics: expected a non-empty sequence of metric names, got {metrics!r}")
    d_all = _prepare(df, where)
    d = d_all[d_all["dim"].notna()]
    if methods is not None:
        d = d[d["method"].isin(list(methods))]
    present = [m for m in metrics if (d["metric"] == m).any()]
    if not present:
        raise ValueError(f"{what}: no results rows with metric in {list(metrics)}")
    d = d[d["metric"].isin(present + [f"{m}_std" for m in present])]
    keys = ["dataset", "metric", "method", "crf", "mode", "probe", "dim"]
    agg = aggregate_seeds(d, keys)
    # a single-seed point may carry its own spread (e.g. silhouette_std over subsamples)
    std_rows = agg[agg["metric"].str.endswith("_std")].copy()
    agg = agg[agg["metric"].isin(present)].copy()
    if len(std_rows):
        std_rows["metric"] = std_rows["metric"].str[: -len("_std")]
        std_rows = std_rows.rename(columns={"mean": "own_std"})[keys + ["own_std"]]
        agg = agg.merge(std_rows, on=keys, how="left")
    else:
        agg["own_std"] = np.nan
    labeller = _Labeller.of(d, series=method_label)
    ds_list = _dataset_order(agg["dataset"].unique())
    nrows, ncols = len(ds_list), len(present)
    with _theme() as palette:
        height = 2.9 * nrows + 0.9
        fig = Figure(figsize=(3.4 * ncols, height))
        axs = fig.subplots(nrows, ncols, sharex=True, squeeze=False)
        legend: dict = {}
        own_std: list[str] = []
        for r, ds in enumerate(ds_list):
            for c, metric in enumerate(present):
                ax = axs[r, c]
                sub = agg[(agg["dataset"] == ds) & (agg["metric"] == metric)]
                groups = sub.groupby(["method", "crf", "mode", "probe"], sort=True)
                series = []
                for (method, crf, mode, probe), g in groups:
                    style = series_style(method, crf)
                    series.append((style.order, method, crf, mode, probe, style, g))
                series.sort(key=lambda s: s[:5])
                for order, method, crf, mode, probe, style, g in series:
                    g = g.sort_values("dim")
                    multi = bool((g["n"] > 1).any())
                    if multi:
                        yerr = np.nan_to_num(g["std"].to_numpy(float), nan=0.0)
                    elif g["own_std"].notna().any():
                        yerr = np.nan_to_num(g["own_std"].to_numpy(float), nan=0.0)
                        own_std.append(f"{metric}_std")
                    else:
                        yerr = None
                    label = labeller(method, crf)
                    extra = [x for x in (mode, probe if probe != "none" else "") if x]
                    if extra:
                        label += f" [{', '.join(extra)}]"
                    ls = style.linestyle or "-"
                    cont = ax.errorbar(
                        g["dim"].to_numpy(float),
                        g["mean"].to_numpy(float),
                        yerr=yerr,
                        fmt=style.marker + ls,
                        color=palette[style.color],
                        capsize=3 if yerr is not None else 0,
                        label=label,
                    )
                    legend.setdefault(label, (order, cont))
                title = METRIC_LABELS.get(metric, metric).replace("\n", " ")
                letter = chr(ord("a") + r * ncols + c)
                ds_name = DATASET_TITLES.get(ds, ds)
                ax.set_title(f"({letter}) {ds_name}" if nrows > 1 else f"({letter})")
                ax.set_ylabel(title)
                if r == nrows - 1:
                    ax.set_xlabel(_XLABEL)
        _format_dim_axis(axs.ravel(), agg["dim"])
        ncol = min(4, max(1, len(legend)))
        title = _legend_title(
            d, errorbar_note(agg["n"], own_std=own_std), _title_chars(3.4 * ncols)
        )
        bottom = _legend_rect_bottom(len(legend) + ncol * (title.count("\n") + 1), ncol, height)
        fig.tight_layout(rect=[0, bottom, 1, 1], h_pad=1, w_pad=1)
        _finish_legend(fig, legend, title, loc="lower center", ncol=ncol)
    return fig


def plot_distinctness_over_dims(
    df: pd.DataFrame,
    metrics: Sequence[str] = DISTINCTNESS_METRICS,
    *,
    methods: Sequence[str] | None = None,
    where: Mapping | None = None,
) -> Figure:
    """Cluster-distinctness statistics versus D, one line per method (PROTOCOL §4.7).

    Grid: one row per dataset, one column per metric of ``metrics`` present in the table (others
    skipped). x: log axis, ticks 3·2^k. Error bars: std over seeds; for a single-seed point, the
    value of a ``<metric>_std`` row (e.g. ``silhouette_std`` over subsamples) when there is one;
    the legend title says which (:func:`errorbar_note`). Methods are labelled by
    :func:`method_label`.

    Args:
        df: results rows (distinctness rows have ``probe == "none"``).
        metrics: metric names, one column each.
        methods: restrict to these methods.
        where: column filters applied first.

    Returns:
        Figure with ``n_datasets × n_metrics`` axes and a shared legend.
    """
    return _plot_metrics_grid(df, metrics, methods, where, "plot_distinctness_over_dims")


def plot_kmeans_convergence(
    df: pd.DataFrame,
    *,
    methods: Sequence[str] | None = None,
    where: Mapping | None = None,
) -> Figure:
    """k-means iterations to converge and ARI / NMI between restarts versus D, per method.

    Uses rows with metric ``kmeans_iterations``, ``kmeans_ari``, ``kmeans_nmi`` (those present);
    layout as :func:`plot_distinctness_over_dims`.

    Args:
        df: results rows.
        methods: restrict to these methods.
        where: column filters applied first.

    Returns:
        Figure with ``n_datasets × n_metrics`` axes.
    """
    return _plot_metrics_grid(df, CONVERGENCE_METRICS, methods, where, "plot_kmeans_convergence")


# --------------------------------------------------------------------------------------------
# embedding maps and qualitative grids
# --------------------------------------------------------------------------------------------


def embedding_2d(
    codes: np.ndarray, method: str = "pca", random_state: int = 0, normalize: bool = True
) -> np.ndarray:
    """2-D coordinates of feature vectors for :func:`plot_embedding_map`.

    Args:
        codes: float array (M, D), M >= 3 (patch features or codes).
        method: ``"pca"`` (scikit-learn PCA, deterministic up to sign, which is fixed so that the
            largest-magnitude loading of each component is positive) or ``"umap"`` (umap-learn,
            cosine metric, seeded; needs the ``umap`` extra).
        random_state: seed for UMAP.
        normalize: L2-normalise rows first (features are compared by cosine throughout).

    Returns:
        float32 array (M, 2).
    """
    x = np.asarray(codes, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3 or x.shape[1] < 2:
        raise ValueError(f"codes: expected an array (M>=3, D>=2), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("codes: contains NaN or inf")
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, svd_solver="full").fit(x)
        comps = pca.components_
        signs = np.sign(comps[np.arange(2), np.abs(comps).argmax(axis=1)])
        signs[signs == 0] = 1
        return ((x - pca.mean_) @ (comps * signs[:, None]).T).astype(np.float32)
    if method == "umap":
        try:
            import umap
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "embedding_2d(method='umap') needs umap-learn: pip install 'stego-probe[umap]'"
            ) from e
        reducer = umap.UMAP(n_components=2, metric="cosine", random_state=random_state)
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)
    raise ValueError(f"method: expected 'pca' or 'umap', got {method!r}")


def _class_legend(fig, present: Iterable[int], cmap: np.ndarray, class_names, max_entries: int):
    present = [int(k) for k in present if k >= 0][:max_entries]
    if not present:
        return None
    handles = [Patch(color=cmap[k] / 255.0) for k in present]
    names = [
        class_names[k] if class_names is not None and k < len(class_names) else str(k)
        for k in present
    ]
    return fig.legend(handles, names, loc="lower center", ncol=min(6, len(present)), fontsize=8)


def plot_embedding_map(
    points2d_by_method: Mapping[str, np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    dataset: str | None = None,
    point_size: float = 4.0,
    max_legend: int = 30,
) -> Figure:
    """Side-by-side 2-D maps of patch features coloured by class (e.g. DINO versus STEGO).

    Args:
        points2d_by_method: name -> float array (M, 2) of coordinates (from :func:`embedding_2d`),
            one panel each, in insertion order; all share the same M points.
        labels: int array (M,) class per point; points with a negative label (ignore) are not
            drawn.
        class_names: names for the legend (default: class ids).
        dataset: picks the colour map (:func:`stego_probe.colors.colormap_for`).
        point_size: scatter marker size.
        max_legend: at most this many classes in the legend.

    Returns:
        Figure with one axes per method and a class legend.
    """
    if not points2d_by_method:
        raise ValueError("points2d_by_method: expected at least one name -> (M, 2) array")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels: expected an integer array (M,), got {labels.dtype} {labels.shape}"
        )
    cmap = colormap_for(dataset)
    if labels.size and labels.max() >= len(cmap) - 1:
        raise ValueError(f"labels: class ids must be < {len(cmap) - 1} for this colour map")
    keep = labels >= 0
    colors = cmap[np.where(keep, labels, 0)] / 255.0
    n = len(points2d_by_method)
    with _theme():
        fig = Figure(figsize=(4.0 * n, 4.6))
        axs = fig.subplots(1, n, squeeze=False)[0]
        for ax, (name, pts) in zip(axs, points2d_by_method.items()):
            pts = np.asarray(pts, dtype=float)
            if pts.shape != (labels.shape[0], 2):
                raise ValueError(
                    f"points2d_by_method[{name!r}]: expected shape ({labels.shape[0]}, 2), "
                    f"got {pts.shape}"
                )
            ax.scatter(pts[keep, 0], pts[keep, 1], c=colors[keep], s=point_size, linewidths=0)
            ax.set_title(str(name))
            ax.set_xticks([])
            ax.set_yticks([])
        present = np.unique(labels[keep])
        n_leg = min(len(present), max_legend)
        bottom = 0.06 + 0.05 * math.ceil(n_leg / 6) if n_leg else 0.0
        fig.tight_layout(rect=[0, bottom, 1, 1])
        _class_legend(fig, present, cmap, class_names, max_legend)
    return fig


def plot_qualitative(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    dataset: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Qualitative grid: one row per image; columns image, ground truth, each prediction.

    Label images are coloured with :func:`stego_probe.colors.colorize` (Cityscapes map for
    ``cityscapes27``, the VOC map otherwise; ignore -1 takes the map's last entry).

    Args:
        images: uint8 array (N, H, W, 3).
        labels: int array (N, H, W), classes in [0, K) and -1 = ignore.
        predictions: name -> int array (N, H, W) in label space (after matching).
        dataset: dataset key that picks the colour map.
        class_names: if given, a legend of the classes that appear.

    Returns:
        Figure with N × (2 + len(predictions)) axes.
    """
    from stego_probe.colors import colorize

    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"images: expected uint8 array (N, H, W, 3), got {images.dtype} {images.shape}"
        )
    if labels.shape != images.shape[:3]:
        raise ValueError(f"labels: expected shape {images.shape[:3]}, got {labels.shape}")
    preds = {}
    for name, p in predictions.items():
        p = np.asarray(p)
        if p.shape != labels.shape:
            raise ValueError(f"predictions[{name!r}]: expected shape {labels.shape}, got {p.shape}")
        preds[str(name)] = p
    cmap = colormap_for(dataset)
    columns = [("Image", None), ("Ground truth", labels)] + list(preds.items())
    n, ncols = images.shape[0], len(columns)
    present = set(np.unique(labels).tolist())
    for p in preds.values():
        present |= set(np.unique(p).tolist())
    with _theme():
        extra = 0.6 if class_names is not None else 0.0
        fig = Figure(figsize=(2.2 * ncols, 2.2 * n + extra))
        axs = fig.subplots(n, ncols, squeeze=False)
        for i in range(n):
            for j, (title, arr) in enumerate(columns):
                ax = axs[i, j]
                ax.imshow(images[i] if arr is None else colorize(arr[i], cmap=cmap))
                ax.set_axis_off()
                if i == 0:
                    ax.set_title(title)
        rect_bottom = extra / (2.2 * n + extra) if extra else 0.0
        fig.tight_layout(rect=[0, rect_bottom, 1, 1])
        if class_names is not None:
            _class_legend(fig, sorted(present), cmap, class_names, 60)
    return fig


# --------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------

_FORMATS = ("pdf", "png", "svg")


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 200) -> Path:
    """Write a figure reproducibly (no creation date in the file); the format is the suffix.

    Args:
        fig: the figure.
        path: output path ending in ``.pdf``, ``.png`` or ``.svg``; parents are created.
        dpi: resolution for raster output.

    Returns:
        the written path.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in _FORMATS:
        raise ValueError(f"save_figure: {path} must end in one of {['.' + f for f in _FORMATS]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {}}[fmt]
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata)
    os.replace(tmp, path)
    return path


def plot_all(
    df: pd.DataFrame,
    out_dir: str | os.PathLike,
    published=True,
    fmt: str = "pdf",
    *,
    figure_provenance: str = "recorded",
    where: Mapping | None = None,
    dpi: int = 200,
) -> list[Path]:
    """Draw every figure the table has data for and write it to ``out_dir``.

    * ``pca_cum_variance`` (Figure 3) if there are ``explained_variance_ratio`` rows of ``pca``;
    * ``all_datasets_miou`` / ``all_datasets_acc`` (Figure 4 / Appendix Figure 1) if there are
      ``miou`` / ``accuracy`` rows of the linear, cluster or k-means probe (one grid row per
      probe present; h-NNE is left to the appendix figure, as in the paper);
    * ``Cityscapes_city_hnne`` (``<dataset>_hnne`` for other datasets; Appendix Figure 2) for each
      dataset with h-NNE linear/cluster rows;
    * ``distinctness_over_dims`` if any of :data:`DISTINCTNESS_METRICS` is present;
    * ``kmeans_convergence`` if any of :data:`CONVERGENCE_METRICS` is present.

    Args:
        df: results rows.
        out_dir: output folder (created).
        published: overlay the published points on Figure 4 / Appendix Figures (see
            :func:`plot_metric_over_dims`).
        fmt: ``pdf``, ``png`` or ``svg``.
        figure_provenance: ``"recorded"`` or ``"paper"`` (see :func:`plot_metric_over_dims`).
        where: column filters applied first.
        dpi: resolution of raster output (``png``).

    Returns:
        written paths, in the order above (empty if the table has nothing to draw). Output is
        deterministic: the same table gives byte-identical files.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"fmt: expected one of {_FORMATS}, got {fmt!r}")
    out_dir = Path(out_dir)
    d = _prepare(df, where)
    pub = _published_frame(published)
    written: list[Path] = []

    def _save(fig: Figure, stem: str) -> None:
        written.append(save_figure(fig, out_dir / f"{stem}.{fmt}", dpi=dpi))

    ev = (d["metric"] == "explained_variance_ratio") & (d["method"] == "pca")
    if ev.any():
        _save(plot_pca_spectrum(d), FIGURE_FILES["pca_spectrum"])
    fig4 = d[d["probe"].isin(FIGURE4_PROBES) & d["dim"].notna() & (d["method"] != "hnne")]
    for metric in ("miou", "accuracy"):
        rows = fig4[fig4["metric"] == metric]
        if len(rows):
            probes = [p for p in FIGURE4_PROBES if (rows["probe"] == p).any()]
            methods = sorted(rows["method"].unique())
            fig = plot_metric_over_dims(
                d,
                metric=metric,
                probe_rows=probes,
                published=pub,
                figure_provenance=figure_provenance,
                methods=methods,
            )
            _save(fig, FIGURE_FILES[metric])
    hnne = d[
        (d["method"] == "hnne")
        & d["probe"].isin(["linear", "cluster"])
        & d["metric"].isin(["miou", "accuracy"])
        & d["dim"].notna()
    ]
    for ds in _dataset_order(hnne["dataset"].unique()):
        stem = "Cityscapes_city_hnne" if ds == "cityscapes27" else f"{ds}_hnne"
        fig = plot_hnne_appendix(d, ds, published=pub, figure_provenance=figure_provenance)
        _save(fig, stem)
    if d["metric"].isin(DISTINCTNESS_METRICS).any():
        _save(plot_distinctness_over_dims(d), FIGURE_FILES["distinctness"])
    if d["metric"].isin(CONVERGENCE_METRICS).any():
        _save(plot_kmeans_convergence(d), FIGURE_FILES["convergence"])
    return written
