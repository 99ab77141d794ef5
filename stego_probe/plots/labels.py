"""What the figures call things, computed from the table's provenance (``docs/figures.md``).

Method names (:func:`method_label`: the raw-feature method is named after its backbone), backbone
names, dataset column titles with the recorded widths, CRF wording only in figures with CRF rows,
and the legend title saying what the error bars show (:func:`errorbar_note`).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stego_probe.published import PAPER_DATASETS as PAPER_DATASETS  # the one home
from stego_probe.published import RELEASES

#: Display names of the paper's datasets.
DATASET_TITLES = {"cocostuff27": "Cocostuff", "cityscapes27": "Cityscapes", "potsdam3": "Potsdam"}
#: (D_STEGO, D_ViT) of the paper's datasets (PROTOCOL §7.1).
PAPER_DIMS = {"cocostuff27": (90, 768), "cityscapes27": (100, 768), "potsdam3": (70, 384)}
#: Display names of metrics (axis labels).
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
_METHOD_LABELS = {
    "stego": "STEGO",
    "stego_released": "STEGO (theirs)",
    "pca": "PCA",
    "rp": "RP",
    "rp_sparse": "RP (sparse)",
    "umap": "UMAP",
    "hnne": "h-NNE",
}
#: Methods whose rows are the backbone's raw features (the identity projection).
RAW_METHODS = ("dino", "identity")
#: Backbone of each paper dataset (PROTOCOL §7.1); PAPER_DIMS' width holds only for it.
#: The paper's backbone per dataset: that of the released checkpoint (the one home is
#: :data:`stego_probe.published.RELEASES`).
PAPER_BACKBONES = {dataset: release["backbone"] for dataset, release in RELEASES.items()}
_VIT_NAME = re.compile(r"^(dino|dinov2)_vit([sblg])(\d+)(_reg)?(?:_(.+))?$")


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


#: ``timm:vit_<size>_patch<p>_<res>`` (plain timm ViTs; other timm models keep their name)
_TIMM_VIT_NAME = re.compile(r"^timm:vit_(tiny|small|base|large|huge|giant)_patch(\d+)_\d+$")
_TIMM_VIT_SIZES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H", "giant": "g"}


def backbone_label(backbone: str) -> str:
    """Readable name of a backbone registry name.

    ``dino_vits8`` -> ``"DINO ViT-S/8"``, ``dinov2_vitb14_reg`` -> ``"DINOv2 ViT-B/14 (reg)"``,
    ``dino_vits8_timm`` -> ``"DINO ViT-S/8 (timm)"``, a timm ViT
    ``timm:vit_small_patch16_224`` -> ``"ViT-S/16 (timm)"``; any other name (``descriptor``,
    ``timm:resnet50``, a user backbone) is returned unchanged.
    """
    name = str(backbone)
    t = _TIMM_VIT_NAME.match(name)
    if t:
        size, patch = t.groups()
        return f"ViT-{_TIMM_VIT_SIZES[size]}/{patch} (timm)"
    m = _VIT_NAME.match(name)
    if not m:
        return name
    family, size, patch, reg, variant = m.groups()
    out = f"{'DINOv2' if family == 'dinov2' else 'DINO'} ViT-{size.upper()}/{patch}"
    extras = [x for x in ("reg" if reg else "", variant or "") if x]
    return out + (f" ({', '.join(extras)})" if extras else "")


def backbone_method_label(backbone: str, method: str) -> str:
    """Label of a method's series in a figure or table of several backbones: the backbone
    (:func:`backbone_label`), then the method (:func:`method_label`; the raw features are
    ``"raw"``), e.g. ``"descriptor: PCA"``, ``"ViT-S/16 (timm): raw"``."""
    name = "raw" if str(method) in RAW_METHODS else method_label(method)
    return f"{backbone_label(backbone)}: {name}"


def _raw_name(backbone: str) -> str:
    if is_dino_backbone(backbone):
        return "DINO"
    if str(backbone).startswith("dinov2_"):
        return backbone_label(backbone)
    return f"{backbone_label(backbone)} (raw)"


def table_backbones(df: pd.DataFrame | None, method: str | None = None) -> list[str]:
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
        names = table_backbones(provenance, method)
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


def legend_title(df: pd.DataFrame, notes: list[str], width: int) -> str:
    """``backbone ...`` plus the error-bar sentences, packed into lines of at most ``width``.

    Args:
        df: the drawn rows (their backbones are named).
        notes: sentences, e.g. from :func:`errorbar_note`.
        width: characters per line (:func:`stego_probe.plots.style.title_chars`).

    Returns:
        the title, lines joined by ``"\\n"``, parts within a line by ``"; "``.
    """
    names = table_backbones(df)
    parts = ([f"backbone {', '.join(names)}"] if names else []) + list(notes)
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += "; " + part
        else:
            lines.append(part)
    return "\n".join(w for line in lines for w in textwrap.wrap(line, width) or [""])


def dataset_order(names: Iterable[str]) -> list[str]:
    """Distinct dataset keys in figure column order: :data:`PAPER_DATASETS` first, then the rest
    alphabetically.

    Examples:
        >>> dataset_order(["voc", "potsdam3", "cocostuff27", "potsdam3"])
        ['cocostuff27', 'potsdam3', 'voc']
    """
    names = list(dict.fromkeys(names))
    paper = [d for d in PAPER_DATASETS if d in names]
    return paper + sorted(d for d in names if d not in PAPER_DATASETS)


def _width_of(ds: str, d_all: pd.DataFrame) -> tuple[int | None, list[str]]:
    """Backbone width C of a dataset's rows and their backbones.

    C is the dimension of the raw-feature rows (``dino``: D = C); without them, the paper's width
    for a paper dataset whose rows all come from the paper's backbone; else None.
    """
    rows = d_all[d_all["dataset"] == ds]
    names = table_backbones(rows)
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


def dataset_title(ds: str, d_all: pd.DataFrame) -> str:
    """Figure 4 column title of dataset ``ds``: name + D_STEGO and the backbone width.

    Both come from the rows ``d_all`` (a prepared results table) where possible.

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


@dataclass(frozen=True)
class SeriesLabeller:
    """Series labels of one figure: method names from its rows, CRF wording if it has CRF rows.

    Build with :meth:`of` from the drawn rows, then call ``labeller(method, crf, mode)``.

    Attributes:
        names: method -> display name.
        crf_methods: methods with CRF rows in the figure (empty: no CRF wording at all).
        figure_provenance: ``"recorded"`` (labels carry ``[mode]``) or ``"paper"``.
    """

    names: Mapping[str, str]
    crf_methods: frozenset
    figure_provenance: str = "recorded"

    @classmethod
    def of(cls, rows: pd.DataFrame, figure_provenance: str = "recorded", series=_series_name):
        """Labeller of the rows ``rows`` (prepared: bool ``crf``); ``series(method, rows)``
        names a method (default: :func:`method_label`, "DINO (ours)" for DINO)."""
        names = {m: series(m, rows) for m in rows["method"].unique()}
        crf_methods = frozenset(rows.loc[rows["crf"].astype(bool), "method"])
        return cls(names, crf_methods, figure_provenance)

    def __call__(self, method: str, crf: bool, mode: str = "") -> str:
        """Legend label of the series ``(method, crf, mode)``."""
        label = self.names.get(method, method) + _crf_wording(
            method, bool(crf), set(self.crf_methods), self.figure_provenance
        )
        if self.figure_provenance == "paper" or not mode:
            return label
        return f"{label} [{mode}]"
