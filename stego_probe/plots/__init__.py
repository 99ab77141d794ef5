"""The paper's figures and ours, drawn only from tidy results tables (:mod:`stego_probe.results`).

Figures (PROTOCOL §7; ``docs/figures.md`` lists the rows each needs):

* :func:`plot_pca_spectrum` — Figure 3, PCA cumulative explained variance.
* :func:`plot_metric_over_dims` — Figure 4 (mIoU) and Appendix Figure 1 (accuracy).
* :func:`plot_hnne_appendix` — Appendix Figure 2 (h-NNE, one dataset, 2×2).
* :func:`plot_distinctness_over_dims`, :func:`plot_kmeans_convergence` — our cluster-distinctness
  and k-means statistics over D.
* :func:`plot_embedding_map` (coordinates from :func:`stego_probe.embedding.embedding_2d`),
  :func:`plot_qualitative` — 2-D maps and qualitative segmentation grids from arrays.
* :func:`plot_all` draws every figure a table has data for; :func:`save_figure` writes one.

The package's modules, each one concept:

* :mod:`stego_probe.plots.style` — how a series looks: :class:`SeriesStyle`,
  :func:`series_style`, the palette, the seaborn theme, legend placement.
* :mod:`stego_probe.plots.labels` — what things are called, from the table's provenance:
  :func:`method_label`, :func:`backbone_label`, column titles, :func:`errorbar_note`.
* :mod:`stego_probe.plots.tables` — the results table as the figures read it:
  :func:`~stego_probe.plots.tables.prepare_results`, :func:`aggregate_seeds`, the published
  overlay table.
* :mod:`stego_probe.plots.dims` — the metric-over-D figures (Figure 4, Appendix Figures 1–2,
  distinctness, k-means convergence).
* :mod:`stego_probe.plots.spectrum` — Figure 3.
* :mod:`stego_probe.plots.maps` — embedding maps and qualitative grids from arrays.

Every name is importable from ``stego_probe.plots`` itself.

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

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

# Re-exports (``X as X``): the public API stays importable as ``stego_probe.plots.X``.
from stego_probe.embedding import embedding_2d as embedding_2d
from stego_probe.fileio import atomic_write
from stego_probe.plots.dims import CONVERGENCE_METRICS as CONVERGENCE_METRICS
from stego_probe.plots.dims import DISTINCTNESS_METRICS as DISTINCTNESS_METRICS
from stego_probe.plots.dims import FIGURE4_PROBES as FIGURE4_PROBES
from stego_probe.plots.dims import dim_ticks as dim_ticks
from stego_probe.plots.dims import plot_distinctness_over_dims as plot_distinctness_over_dims
from stego_probe.plots.dims import plot_hnne_appendix as plot_hnne_appendix
from stego_probe.plots.dims import plot_kmeans_convergence as plot_kmeans_convergence
from stego_probe.plots.dims import plot_metric_over_dims as plot_metric_over_dims
from stego_probe.plots.factors import plot_advantage_over_factor as plot_advantage_over_factor
from stego_probe.plots.labels import DATASET_TITLES as DATASET_TITLES
from stego_probe.plots.labels import METRIC_LABELS as METRIC_LABELS
from stego_probe.plots.labels import PAPER_BACKBONES as PAPER_BACKBONES
from stego_probe.plots.labels import PAPER_DATASETS as PAPER_DATASETS
from stego_probe.plots.labels import PAPER_DIMS as PAPER_DIMS
from stego_probe.plots.labels import RAW_METHODS as RAW_METHODS
from stego_probe.plots.labels import backbone_label as backbone_label
from stego_probe.plots.labels import dataset_order
from stego_probe.plots.labels import errorbar_note as errorbar_note
from stego_probe.plots.labels import is_dino_backbone as is_dino_backbone
from stego_probe.plots.labels import is_vit_backbone as is_vit_backbone
from stego_probe.plots.labels import method_label as method_label
from stego_probe.plots.maps import plot_embedding_map as plot_embedding_map
from stego_probe.plots.maps import plot_qualitative as plot_qualitative
from stego_probe.plots.spectrum import PCA_SPECTRUM_ORDER as PCA_SPECTRUM_ORDER
from stego_probe.plots.spectrum import plot_pca_spectrum as plot_pca_spectrum
from stego_probe.plots.style import SeriesStyle as SeriesStyle
from stego_probe.plots.style import series_style as series_style
from stego_probe.plots.tables import aggregate_seeds as aggregate_seeds
from stego_probe.plots.tables import overlay_table, prepare_results
from stego_probe.plots.transfer import plot_transfer as plot_transfer

#: File stems written by :func:`plot_all` (the reference's names where the paper has the figure).
FIGURE_FILES = {
    "pca_spectrum": "pca_cum_variance",
    "miou": "all_datasets_miou",
    "accuracy": "all_datasets_acc",
    "distinctness": "distinctness_over_dims",
    "convergence": "kmeans_convergence",
}
#: File stem of Appendix Figure 2 (h-NNE) per dataset, the paper's own names;
#: :func:`hnne_figure_stem` gives ``<dataset>_hnne`` for the others.
HNNE_FIGURE_FILES = {"cityscapes27": "Cityscapes_city_hnne"}


def hnne_figure_stem(dataset: str) -> str:
    """File stem of the h-NNE appendix figure of ``dataset`` (:data:`HNNE_FIGURE_FILES`).

    Examples:
        >>> hnne_figure_stem("cityscapes27"), hnne_figure_stem("potsdam3")
        ('Cityscapes_city_hnne', 'potsdam3_hnne')
    """
    return HNNE_FIGURE_FILES.get(dataset, f"{dataset}_hnne")


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
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata))


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
    d = prepare_results(df, where)
    pub = overlay_table(published)
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
    for ds in dataset_order(hnne["dataset"].unique()):
        fig = plot_hnne_appendix(d, ds, published=pub, figure_provenance=figure_provenance)
        _save(fig, hnne_figure_stem(ds))
    if d["metric"].isin(DISTINCTNESS_METRICS).any():
        _save(plot_distinctness_over_dims(d), FIGURE_FILES["distinctness"])
    if d["metric"].isin(CONVERGENCE_METRICS).any():
        _save(plot_kmeans_convergence(d), FIGURE_FILES["convergence"])
    return written
