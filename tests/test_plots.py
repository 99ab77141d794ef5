"""Figures from results tables, colour maps and the packaged published numbers."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest
import seaborn as sns
from matplotlib.collections import LineCollection

from stego_probe import plots
from stego_probe.colors import CITYSCAPES_COLORMAP, colorize, colormap_for, voc_colormap
from stego_probe.published import load_published, overlay_points, regression_targets
from stego_probe.results import make_rows, to_frame

PALETTE = sns.color_palette("colorblind")
PAPER_TICKS = [3, 6, 12, 24, 48, 96, 192, 384, 768]


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def _ctx(dataset, method, dim, seed=0, probe="cluster", crf=False, mode="pixel", **kw):
    c = dict(
        dataset=dataset,
        backbone="dino_vitb8",
        weights_sha256="abc",
        method=method,
        dim=dim,
        seed=seed,
        probe=probe,
        crf=crf,
        mode=mode,
        match="hungarian",
        split="val",
    )
    c.update(kw)
    return c


def _value(dataset, method, dim, seed, probe, metric):
    """Deterministic values; kmeans = cluster + 7.25 (never on the 0.5 grid of the others)."""
    base = {"cityscapes27": 10.0, "potsdam3": 40.0, "synthetic": 60.0}[dataset]
    m = {"stego": 5.0, "pca": 0.0, "rp": -3.0}.get(method, 1.0)
    p = {"linear": 4.0, "cluster": 0.0, "kmeans": 7.25}[probe]
    a = 30.0 if metric == "accuracy" else 0.0
    return base + m + p + a + np.log2(dim) + 0.5 * seed * (1 + (dim % 5))


def sweep_table(datasets=("potsdam3", "cityscapes27"), probes=("linear", "cluster", "kmeans")):
    """PCA with 3 seeds, STEGO with 1 seed, the reference points; dims 3..768 (Potsdam to 384)."""
    rows = []
    for ds in datasets:
        dvit = 384 if ds == "potsdam3" else 768
        dims = [d for d in PAPER_TICKS if d <= dvit]
        for probe in probes:
            for metric in ("miou", "accuracy"):
                for method, seeds in (("pca", (0, 1, 2)), ("stego", (0,))):
                    for s in seeds:
                        for d in dims:
                            v = _value(ds, method, d, s, probe, metric)
                            rows += make_rows(_ctx(ds, method, d, s, probe), {metric: v})
                for crf in (False, True):
                    mode = "pixel_flip" if crf else "pixel"
                    rows += make_rows(
                        _ctx(ds, "dino", dvit, 0, probe, crf, mode), {metric: 20.0 + crf}
                    )
                    rows += make_rows(
                        _ctx(ds, "stego_released", 70, 0, probe, crf, "pixel_flip"),
                        {metric: 30.0 + crf},
                    )
    return to_frame(rows)


def _legend_texts(fig):
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def _legend_title(fig):
    (leg,) = fig.legends
    return leg.get_title().get_text()


def _all_texts(fig):
    """Every text the drawn figure shows: titles, axis labels, tick labels, legend entries/titles."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    FigureCanvasAgg(fig).draw()
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]


def _container(ax, label):
    found = [c for c in ax.containers if c.get_label() == label]
    assert len(found) == 1, f"{label!r} not drawn once: {[c.get_label() for c in ax.containers]}"
    return found[0]


def _errorbar_halfwidths(container):
    bars = [c for c in container.lines[2] if isinstance(c, LineCollection)]
    if not bars:
        return None
    segs = bars[0].get_segments()
    return np.array([(s[1][1] - s[0][1]) / 2 for s in segs])


# ------------------------------------------------------------------------------------------
# colour maps
# ------------------------------------------------------------------------------------------


def test_voc_colormap_entries_and_ignore():
    cmap = voc_colormap()
    assert cmap.shape == (512, 3) and cmap.dtype == np.uint8
    assert cmap[0].tolist() == [0, 0, 0]
    assert cmap[1].tolist() == [128, 0, 0]
    assert cmap[2].tolist() == [0, 128, 0]
    assert cmap[3].tolist() == [128, 128, 0]
    assert cmap[4].tolist() == [0, 0, 128]
    assert cmap[8].tolist() == [64, 0, 0]  # second triple of bits -> bit 6
    assert cmap[511].tolist() == [224, 224, 224]
    assert len({tuple(c) for c in cmap.tolist()}) == 512  # 9 bits -> injective
    img = colorize(np.array([[1, -1], [2, 3]]))
    assert img.dtype == np.uint8 and img.shape == (2, 2, 3)
    assert img[0, 1].tolist() == cmap[511].tolist()
    assert img[1, 0].tolist() == [0, 128, 0]
    with pytest.raises(ValueError, match=r"\[-1, 512\)"):
        colorize(np.array([[512]]))
    with pytest.raises(ValueError, match="integer"):
        colorize(np.zeros((2, 2), dtype=np.float32))


def test_cityscapes_colormap():
    cmap = colormap_for("cityscapes27")
    assert cmap.shape == (28, 3)
    expected = {0: (128, 64, 128), 1: (244, 35, 232), 7: (180, 165, 180), 10: (153, 153, 153)}
    expected.update({13: (220, 220, 0), 18: (255, 0, 0), 19: (0, 0, 142), 26: (119, 11, 32)})
    for k, rgb in expected.items():
        assert tuple(cmap[k]) == rgb
    labels = np.array([[0, 26], [-1, 18]])
    img = colorize(labels, dataset="cityscapes27")
    assert img[1, 0].tolist() == [0, 0, 0]
    assert img[0, 1].tolist() == [119, 11, 32]
    assert np.array_equal(img, CITYSCAPES_COLORMAP[labels])
    with pytest.raises(ValueError, match="canonicalise"):
        colorize(np.array([[255]]), dataset="cityscapes27")
    assert np.array_equal(colormap_for("potsdam3"), voc_colormap())


# ------------------------------------------------------------------------------------------
# published numbers
# ------------------------------------------------------------------------------------------


def test_load_published_and_regression_targets():
    pub = load_published()
    assert list(pub.columns) == [
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
    assert pub["crf"].dtype == bool and pub["dim"].dtype == np.int64
    assert set(pub["dataset"]) == {"cocostuff27", "cityscapes27", "potsdam3"}
    coco = regression_targets("cocostuff27")
    assert len(coco) == 4
    assert set(coco["source"]) == {"stego_issue_3"} and coco["crf"].all()
    got = {(r.probe, r.metric): r.value for r in coco.itertuples()}
    assert got == {
        ("cluster", "accuracy"): 56.93,
        ("cluster", "miou"): 28.19,
        ("linear", "accuracy"): 76.13,
        ("linear", "miou"): 41.07,
    }
    pots = regression_targets("potsdam3")
    assert len(pots) == 4 and set(pots["dim"]) == {70}
    assert pots.query("probe == 'cluster' and metric == 'miou'")["value"].item() == 62.57
    with pytest.raises(ValueError, match="dataset='cocostuff'"):
        load_published("cocostuff")


def test_overlay_points_priority_and_aliases():
    pts = overlay_points("cocostuff27", metric="miou")
    rel = pts.query("method == 'stego_released' and probe == 'cluster' and crf")
    assert len(rel) == 1 and rel["value"].item() == 28.16 and rel["digitised"].item()
    assert set(pts.loc[pts["method"] == "stego_retrained", "series_method"]) == {"stego"}
    # one user's own retraining posted in issue 39 is not a published point
    pots = overlay_points("potsdam3")
    assert not ((pots["method"] == "stego_retrained") & pots["crf"]).any()
    # accuracy has no digitised points: the reported numbers are used
    acc = overlay_points(metric="accuracy")
    assert len(acc) and not acc["digitised"].any()
    assert not pts.duplicated(["dataset", "method", "dim", "probe", "metric", "crf"]).any()


# ------------------------------------------------------------------------------------------
# Figure 4
# ------------------------------------------------------------------------------------------


def test_figure4_structure_means_and_errorbars():
    df = sweep_table()
    fig = plots.plot_metric_over_dims(df, "miou", probe_rows=("linear", "cluster"))
    axs = np.array(fig.axes).reshape(2, 2)
    assert len(fig.axes) == 4  # cocostuff27 absent -> no column for it
    assert axs[0, 0].get_title().startswith("Cityscapes\n")  # paper order
    assert "D_\\mathregular{STEGO}=70" in axs[0, 1].get_title()
    assert axs[0, 0].get_title().endswith("(a)") and axs[1, 1].get_title() == "(d)"
    assert axs[0, 0].get_ylabel() == "Supervised\nLinear Probe mIoU"
    assert axs[1, 0].get_ylabel() == "Unsupervised\nCluster Probe mIoU"
    texts = _legend_texts(fig)
    for lab in (
        "STEGO (theirs) with CRF [pixel_flip]",
        "STEGO (theirs) w/o CRF [pixel_flip]",
        "STEGO [pixel]",
        "DINO (ours) with CRF [pixel_flip]",
        "DINO (ours) w/o CRF [pixel]",
        "PCA [pixel]",
    ):
        assert lab in texts
    # the legend title says what the bars are: PCA has 3 seeds, the others one
    title = _legend_title(fig)
    assert "bars: ±1 sample std over 3 seeds" in title and "1-seed points (n=1): no bars" in title
    assert title.startswith("backbone dino_vitb8")
    assert not any(t.startswith("published") for t in texts)
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
        assert [int(round(t)) for t in ax.get_xticks()] == PAPER_TICKS
        assert not any(c.get_label().startswith("published") for c in ax.containers)
    # PCA line: mean over 3 seeds, error bar = sample std
    pca = df[(df.dataset == "potsdam3") & (df.method == "pca") & (df.probe == "cluster")]
    pca = pca[pca.metric == "miou"].groupby("dim")["value"]
    c = _container(axs[1, 1], "PCA [pixel]")
    assert np.allclose(c.lines[0].get_xdata(), pca.mean().index)
    assert np.allclose(c.lines[0].get_ydata(), pca.mean().to_numpy())
    assert np.allclose(_errorbar_halfwidths(c), pca.std(ddof=1).to_numpy())
    # single seed: no error bars
    assert _errorbar_halfwidths(_container(axs[1, 1], "STEGO [pixel]")) is None
    # style table: STEGO x- colour 3, PCA colour 2, DINO w/o CRF o-- + dashed axhline colour 0
    line = c.lines[0]
    assert line.get_marker() == "x" and line.get_linestyle() == "-"
    assert np.allclose(line.get_color()[:3], PALETTE[2])
    dino = _container(axs[1, 1], "DINO (ours) w/o CRF [pixel]").lines[0]
    assert dino.get_marker() == "o" and np.allclose(dino.get_color()[:3], PALETTE[0])
    hlines = [ln for ln in axs[1, 1].get_lines() if ln.get_linestyle() == "--"]
    assert any(np.allclose(ln.get_ydata(), 20.0) for ln in hlines)
    theirs = _container(axs[1, 1], "STEGO (theirs) with CRF [pixel_flip]").lines[0]
    assert theirs.get_marker() == "v" and theirs.get_linestyle() == "None"
    assert np.allclose(theirs.get_color()[:3], PALETTE[3])


def test_kmeans_probe_gets_its_own_row():
    df = sweep_table(datasets=("potsdam3",))
    fig = plots.plot_metric_over_dims(df, "miou", probe_rows=("linear", "cluster", "kmeans"))
    assert len(fig.axes) == 3
    lin, clu, km = fig.axes
    assert "k-means" in km.get_ylabel() and "k-means" not in clu.get_ylabel()
    sel = df[(df.method == "stego") & (df.metric == "miou")]
    for ax, probe in ((clu, "cluster"), (km, "kmeans")):
        want = sel[sel.probe == probe].sort_values("dim")["value"].to_numpy()
        got = _container(ax, "STEGO [pixel]").lines[0].get_ydata()
        assert np.allclose(got, want)
    got_cluster = _container(clu, "STEGO [pixel]").lines[0].get_ydata()
    got_kmeans = _container(km, "STEGO [pixel]").lines[0].get_ydata()
    assert np.allclose(got_kmeans - got_cluster, 7.25)
    # without the kmeans row, k-means rows appear nowhere
    fig2 = plots.plot_metric_over_dims(df, "miou")
    assert len(fig2.axes) == 2
    ys = np.concatenate([ln.get_ydata() for ax in fig2.axes for ln in ax.get_lines()])
    kmeans_vals = df[(df.probe == "kmeans") & (df.method == "stego")]["value"].to_numpy()
    assert not np.isin(np.round(kmeans_vals, 6), np.round(ys.astype(float), 6)).any()


def test_published_overlay_only_when_asked():
    df = sweep_table(datasets=("cityscapes27",), probes=("linear", "cluster"))
    fig = plots.plot_metric_over_dims(df, "miou", published=True)
    assert "published (digitised)" in _legend_texts(fig)
    lin = fig.axes[0]
    pub = [c for c in lin.containers if c.get_label() == "published (digitised)"]
    assert pub, "no published points drawn"
    ys = np.concatenate([c.lines[0].get_ydata() for c in pub])
    assert np.isclose(ys, 34.9).any()  # DINO + CRF, Cityscapes linear, digitised
    assert all(c.lines[0].get_markerfacecolor() == "none" for c in pub)
    errs = np.concatenate([_errorbar_halfwidths(c) for c in pub])
    assert np.all(errs >= 0.3 - 1e-9)  # the digitisation uncertainty is drawn
    fig_no = plots.plot_metric_over_dims(df, "miou", published=False)
    assert not any(c.get_label().startswith("published") for c in fig_no.axes[0].containers)


def test_figure_provenance_modes_and_ambiguity():
    df = sweep_table(datasets=("potsdam3",), probes=("cluster",))
    extra = to_frame(
        make_rows(_ctx("potsdam3", "stego", 48, 0, "cluster", mode="pixel_flip"), {"miou": 99.0})
    )
    df2 = pd.concat([df, extra], ignore_index=True)
    rec = plots.plot_metric_over_dims(df2, "miou", probe_rows=("cluster",))
    texts = _legend_texts(rec)
    assert "STEGO [pixel]" in texts and "STEGO [pixel_flip]" in texts
    par = plots.plot_metric_over_dims(
        df2, "miou", probe_rows=("cluster",), figure_provenance="paper"
    )
    texts = _legend_texts(par)
    assert "STEGO" in texts and not any("[" in t for t in texts)
    ys = _container(par.axes[0], "STEGO").lines[0].get_ydata()
    assert 99.0 not in ys  # the paper's sweep points are "val" only
    with pytest.raises(ValueError, match="figure_provenance"):
        plots.plot_metric_over_dims(df, "miou", figure_provenance="nope")
    # rows of one series that differ in match are refused, and a filter resolves it
    other = df[df.method == "pca"].assign(match="majority", value=0.0)
    mixed = pd.concat([df, other], ignore_index=True)
    with pytest.raises(ValueError, match="match"):
        plots.plot_metric_over_dims(mixed, "miou", probe_rows=("cluster",))
    fig = plots.plot_metric_over_dims(
        mixed, "miou", probe_rows=("cluster",), where={"match": "hungarian"}
    )
    assert _container(fig.axes[0], "PCA [pixel]").lines[0].get_ydata().min() > 0
    with pytest.raises(ValueError, match="no results rows"):
        plots.plot_metric_over_dims(df, "miou", probe_rows=("linear",))


def test_repeated_seed_rows_count_once_last_wins():
    base = _ctx("synthetic", "pca", 12, 0)
    rows = make_rows(base, {"miou": 10.0}) + make_rows(base, {"miou": 30.0})
    rows += make_rows({**base, "seed": 1}, {"miou": 50.0})
    agg = plots.aggregate_seeds(to_frame(rows), ["dataset", "method", "dim"])
    assert agg["n"].item() == 2 and agg["mean"].item() == 40.0
    assert np.isclose(agg["std"].item(), np.std([30.0, 50.0], ddof=1))


def test_dim_ticks():
    assert plots.dim_ticks([3, 90, 768]).tolist() == PAPER_TICKS
    assert plots.dim_ticks([70, 384]).tolist() == [48, 96, 192, 384]
    assert plots.dim_ticks([2, 5]).tolist() == [3, 6]


# ------------------------------------------------------------------------------------------
# Figure 3
# ------------------------------------------------------------------------------------------


def _spectrum_rows(dataset, ratios, seed=0):
    rows = []
    for i, r in enumerate(ratios):
        ctx = _ctx(dataset, "pca", i + 1, seed, "none", mode="token", split="train")
        rows += make_rows(ctx, {"explained_variance_ratio": r})
    return rows


def test_pca_spectrum():
    coco = np.array([0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])
    pots = np.array([0.5, 0.3, 0.1, 0.1])
    pots2 = np.array([0.7, 0.1, 0.1, 0.1])  # second seed: the curve uses the mean
    rows = _spectrum_rows("cocostuff27", coco) + _spectrum_rows("potsdam3", pots)
    rows += _spectrum_rows("potsdam3", pots2, seed=1)
    fig = plots.plot_pca_spectrum(to_frame(rows))
    (ax,) = fig.axes
    assert tuple(fig.get_size_inches()) == (4.2, 3.0)
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == ["Potsdam", "Cocostuff"]  # Cityscapes skipped
    assert np.allclose(lines[0].get_color()[:3], PALETTE[1])
    assert np.allclose(lines[1].get_color()[:3], PALETTE[2])
    x = np.linspace(0, 1, 768)
    assert np.allclose(lines[0].get_xdata(), x)
    mean = (pots + pots2) / 2
    assert np.allclose(lines[0].get_ydata(), np.interp(x, np.linspace(0, 1, 4), np.cumsum(mean)))
    assert np.isclose(lines[1].get_ydata()[-1], coco.sum())
    assert np.allclose(ax.get_xticks(), [0, 1 / 16, 0.25, 0.5, 0.75, 1])
    # two widths (4 and 8 components): the paper's fractions, each dataset's width in the label
    assert (
        ax.get_xlabel() == "Number of Components\n($D_\\mathregular{ViT}$: Potsdam 4, Cocostuff 8)"
    )
    # one width: the ticks are component counts; a non-ViT width is C, not D_ViT
    one = plots.plot_pca_spectrum(to_frame(_spectrum_rows("potsdam3", np.full(64, 1 / 64))))
    assert [t.get_text() for t in one.axes[0].get_xticklabels()] == [
        "0",
        "4",
        "16",
        "32",
        "48",
        "64",
    ]
    assert one.axes[0].get_xlabel() == "Number of Components (of $D_\\mathregular{ViT}=64$)"
    desc = to_frame(_spectrum_rows("synthetic", np.full(64, 1 / 64))).assign(backbone="descriptor")
    texts = _all_texts(plots.plot_pca_spectrum(desc))
    assert "Number of Components (of $C=64$)" in texts
    assert not any("ViT" in t or "DINO" in t for t in texts)
    gap = _spectrum_rows("synthetic", [0.5, 0.2])
    gap[1]["dim"] = 3
    with pytest.raises(ValueError, match="component indices"):
        plots.plot_pca_spectrum(to_frame(gap))


# ------------------------------------------------------------------------------------------
# distinctness / k-means convergence
# ------------------------------------------------------------------------------------------


def _distinct_table():
    rows = []
    for method, dims in (("pca", (3, 12, 48)), ("stego", (3, 12, 48)), ("dino", (48,))):
        for d in dims:
            for seed in (0, 1):
                ctx = _ctx("synthetic", method, d, seed, "none", mode="token")
                v = 0.1 * np.log2(d) + 0.05 * seed + (0.3 if method == "stego" else 0)
                rows += make_rows(
                    ctx,
                    {
                        "silhouette": v,
                        "scatter_ratio": 2 * v,
                        "kmeans_iterations": 10 + d + seed,
                        "kmeans_ari": v / 2,
                        "kmeans_nmi": v / 3,
                    },
                )
    return to_frame(rows)


def test_distinctness_and_convergence():
    df = _distinct_table()
    fig = plots.plot_distinctness_over_dims(df)
    # silhouette, scatter_ratio, kmeans_ari present; centroid_margin absent -> 3 panels
    assert len(fig.axes) == 3
    assert set(_legend_texts(fig)) == {"PCA [token]", "STEGO [token]", "DINO [token]"}
    sil = fig.axes[0]
    assert sil.get_xscale() == "log"
    assert [int(round(t)) for t in sil.get_xticks()] == [3, 6, 12, 24, 48]
    c = _container(sil, "STEGO [token]")
    g = df[(df.method == "stego") & (df.metric == "silhouette")].groupby("dim")["value"]
    assert np.allclose(c.lines[0].get_ydata(), g.mean().to_numpy())
    assert np.allclose(_errorbar_halfwidths(c), g.std(ddof=1).to_numpy())
    # a non-finite value (scatter_ratio = inf when within-class scatter is 0) is not drawn
    inf = df[(df.metric == "scatter_ratio") & (df.method == "pca") & (df.dim == 3)].index
    fig_inf = plots.plot_distinctness_over_dims(
        df.assign(value=df.value.where(~df.index.isin(inf), np.inf))
    )
    y = _container(fig_inf.axes[1], "PCA [token]").lines[0].get_ydata()
    assert np.isnan(y[0]) and np.isfinite(y[1:]).all()
    conv = plots.plot_kmeans_convergence(df)
    assert len(conv.axes) == 3
    it = _container(conv.axes[0], "PCA [token]").lines[0].get_ydata()
    assert np.allclose(it, [13.5, 22.5, 58.5])
    with pytest.raises(ValueError, match="no results rows"):
        plots.plot_distinctness_over_dims(df, metrics=("davies_bouldin",))


# ------------------------------------------------------------------------------------------
# embedding maps and qualitative grids
# ------------------------------------------------------------------------------------------


def test_embedding_2d_and_map():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    codes = rng.normal(size=(60, 8)).astype(np.float32)
    xy = plots.embedding_2d(codes, "pca")
    assert xy.shape == (60, 2) and xy.dtype == np.float32
    xn = codes / np.linalg.norm(codes, axis=1, keepdims=True)
    ref = PCA(2).fit_transform(xn)
    assert np.allclose(np.abs(xy), np.abs(ref), atol=1e-4)
    assert np.allclose(xy, plots.embedding_2d(codes[::-1], "pca")[::-1], atol=1e-4)
    with pytest.raises(ValueError, match="method"):
        plots.embedding_2d(codes, "tsne")
    labels = np.repeat(np.arange(3), 20)
    labels[:5] = -1
    fig = plots.plot_embedding_map(
        {"DINO": xy, "STEGO": xy * 2}, labels, ["road", "car", "sky"], dataset="cityscapes27"
    )
    assert [ax.get_title() for ax in fig.axes] == ["DINO", "STEGO"]
    sc = fig.axes[0].collections[0]
    assert len(sc.get_offsets()) == 55  # ignore points are not drawn
    assert np.allclose(sc.get_facecolors()[-1][:3], CITYSCAPES_COLORMAP[2] / 255)
    assert _legend_texts(fig) == ["road", "car", "sky"]
    with pytest.raises(ValueError, match="STEGO"):
        plots.plot_embedding_map({"STEGO": xy[:10]}, labels)


def test_qualitative_grid():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, size=(2, 6, 5, 3), dtype=np.uint8)
    labels = rng.integers(-1, 27, size=(2, 6, 5))
    preds = {"STEGO": rng.integers(0, 27, size=(2, 6, 5)), "PCA": labels.clip(0)}
    fig = plots.plot_qualitative(images, labels, preds, dataset="cityscapes27")
    assert len(fig.axes) == 8
    titles = [ax.get_title() for ax in fig.axes[:4]]
    assert titles == ["Image", "Ground truth", "STEGO", "PCA"]
    assert np.array_equal(fig.axes[0].images[0].get_array(), images[0])
    gt = np.asarray(fig.axes[5].images[0].get_array())
    assert np.array_equal(gt, CITYSCAPES_COLORMAP[labels[1]])
    voc = plots.plot_qualitative(images, labels, preds, dataset="cocostuff27")
    assert np.array_equal(np.asarray(voc.axes[1].images[0].get_array()), colorize(labels[0]))
    with pytest.raises(ValueError, match="predictions"):
        plots.plot_qualitative(images, labels, {"bad": labels[:1]})


# ------------------------------------------------------------------------------------------
# plot_all and the CLI
# ------------------------------------------------------------------------------------------


def _hnne_rows(dataset, dims=(3, 12, 48)):
    rows = []
    for probe in ("linear", "cluster"):
        for metric in ("miou", "accuracy"):
            for d in dims:
                rows += make_rows(_ctx(dataset, "hnne", d, 0, probe), {metric: 5.0 + d / 10})
    return rows


def test_hnne_appendix():
    rows = sweep_table(datasets=("cityscapes27",), probes=("linear", "cluster")).to_dict("records")
    fig = plots.plot_hnne_appendix(to_frame(rows + _hnne_rows("cityscapes27")))
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes] == ["(a)", "(b)", "(c)", "(d)"]
    assert fig.axes[1].get_ylabel() == "Supervised\nLinear Probe Accuracy"
    assert tuple(fig.get_size_inches()) == (10.0, 5.4)
    line = _container(fig.axes[3], "h-NNE [pixel]").lines[0]
    assert np.allclose(line.get_color()[:3], PALETTE[8])
    assert np.allclose(line.get_ydata(), [5.3, 6.2, 9.8])
    assert "PCA [pixel]" in _legend_texts(fig)


def _full_table():
    rows = sweep_table(datasets=("potsdam3",), probes=("linear", "cluster")).to_dict("records")
    rows += _hnne_rows("potsdam3")
    rows += _spectrum_rows("potsdam3", [0.6, 0.3, 0.1])
    rows += _distinct_table().to_dict("records")
    return to_frame(rows)


@pytest.mark.slow
def test_plot_all_writes_expected_files_deterministically(tmp_path):
    df = _full_table()
    paths = plots.plot_all(df, tmp_path / "a", published=False, fmt="png", dpi=40)
    names = [p.name for p in paths]
    assert names == [
        "pca_cum_variance.png",
        "all_datasets_miou.png",
        "all_datasets_acc.png",
        "potsdam3_hnne.png",
        "distinctness_over_dims.png",
        "kmeans_convergence.png",
    ]
    assert all(p.stat().st_size > 1000 for p in paths)
    only_pca = df[df.metric == "explained_variance_ratio"]
    for fmt in ("pdf", "png"):
        (first,) = plots.plot_all(only_pca, tmp_path / f"b_{fmt}", fmt=fmt, dpi=40)
        (second,) = plots.plot_all(only_pca, tmp_path / f"c_{fmt}", fmt=fmt, dpi=40)
        assert first.name == f"pca_cum_variance.{fmt}"
        assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="fmt"):
        plots.plot_all(df, tmp_path, fmt="jpg")


def test_cli_figures(tmp_path, capsys):
    from stego_probe.cli import figures

    parser = argparse.ArgumentParser()
    figures.register(parser.add_subparsers(dest="command"))
    csv = tmp_path / "results.csv"
    sweep_table(datasets=("potsdam3",), probes=("cluster",)).to_csv(csv, index=False)
    args = parser.parse_args(
        ["figures", str(csv), "--out", str(tmp_path / "figs"), "--no-published", "--format", "png"]
    )
    assert args.published is False
    assert args.func(args) == 0
    out = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in out] == ["all_datasets_miou.png", "all_datasets_acc.png"]
    empty = tmp_path / "empty.csv"
    to_frame([]).to_csv(empty, index=False)
    args = parser.parse_args(["figures", str(empty), "--out", str(tmp_path / "e")])
    with pytest.raises(ValueError, match="no rows"):
        args.func(args)


def test_cli_figures_bad_input_is_one_clear_line(tmp_path, capsys):
    from stego_probe.cli.main import main

    good = tmp_path / "results.csv"
    sweep_table(datasets=("potsdam3",), probes=("cluster",)).to_csv(good, index=False)
    kept = good.read_bytes()
    cases = {
        "missing.csv": (None, "does not exist"),
        "broken.csv": (b'dataset,method\n"unterminated\n', "not a readable stego_probe results"),
        "empty.csv": (b"", "not a readable stego_probe results"),
        "binary.csv": (bytes(range(256)) * 4, "not a readable stego_probe results"),
        "other.csv": (b"a,b\n1,2\n", "missing columns"),
    }
    for name, (content, needle) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        assert main(["figures", str(path), "--out", str(tmp_path / "figs")]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and needle in err, err
    assert main(["figures", str(tmp_path), "--out", str(tmp_path / "figs")]) == 1
    assert "is a directory" in capsys.readouterr().err
    # --out naming an existing file: refused, the file is untouched
    assert main(["figures", str(good), "--out", str(good)]) == 1
    assert "--out" in capsys.readouterr().err and good.read_bytes() == kept
    assert not (tmp_path / "figs").exists()


# ------------------------------------------------------------------------------------------
# labels from provenance
# ------------------------------------------------------------------------------------------


def test_method_label_names_raw_features_after_the_backbone():
    assert plots.method_label("dino", "dino_vits8") == "DINO"
    assert plots.method_label("dino", "dino_vitb8") == "DINO"
    assert plots.method_label("dino", "descriptor") == "descriptor (raw)"
    assert plots.method_label("dino", "dinov2_vits14") == "DINOv2 ViT-S/14"
    assert plots.method_label("dino", "dinov2_vitl14_reg") == "DINOv2 ViT-L/14 (reg)"
    assert plots.method_label("dino", "timm:resnet50") == "timm:resnet50 (raw)"
    assert plots.method_label("identity", "my_extractor") == "my_extractor (raw)"
    assert plots.method_label("dino") == "raw features"
    for method, name in (("stego", "STEGO"), ("stego_released", "STEGO (theirs)"), ("pca", "PCA")):
        assert plots.method_label(method, "descriptor") == name
    assert plots.method_label("rp", "dino_vits8") == "RP"
    # from a frame: the backbone of the method's own rows, several joined
    df = to_frame(
        make_rows(_ctx("potsdam3", "dino", 384, backbone="dino_vits8"), {"miou": 1.0})
        + make_rows(_ctx("synthetic", "dino", 64, backbone="descriptor"), {"miou": 1.0})
        + make_rows(_ctx("synthetic", "pca", 3, backbone="timm:resnet50"), {"miou": 1.0})
    )
    assert plots.method_label("dino", df) == "descriptor (raw) / DINO"
    assert plots.method_label("dino", df[df.dataset == "synthetic"]) == "descriptor (raw)"
    assert plots.backbone_label("dino_vits8_timm") == "DINO ViT-S/8 (timm)"
    assert plots.is_vit_backbone("timm:vit_small_patch16_224")
    assert not plots.is_vit_backbone("descriptor") and not plots.is_vit_backbone("timm:resnet50")
    with pytest.raises(ValueError, match="provenance"):
        plots.method_label("dino", 3)


def _figures(df, published=None):
    """Every figure plot_all would draw for the table."""
    figs = [
        plots.plot_metric_over_dims(
            df, "miou", probe_rows=("linear", "cluster", "kmeans"), published=published
        ),
        plots.plot_metric_over_dims(df, "accuracy", published=published),
    ]
    if (df.method == "hnne").any():
        figs.append(plots.plot_hnne_appendix(df, "potsdam3", published=published))
    if (df.metric == "explained_variance_ratio").any():
        figs.append(plots.plot_pca_spectrum(df))
    if (df.probe == "none").any():
        figs += [plots.plot_distinctness_over_dims(df), plots.plot_kmeans_convergence(df)]
    return figs


@pytest.mark.slow
def test_non_dino_backbone_is_never_called_dino_or_vit():
    df = _full_table().assign(backbone="descriptor")
    for fig in _figures(df):
        texts = _all_texts(fig)
        assert not any("DINO" in t or "ViT" in t for t in texts), [
            t for t in texts if "DINO" in t or "ViT" in t
        ]
        if fig.axes[0].get_xlabel().startswith("Number of Components"):
            continue  # Figure 3 has PCA only
        assert any("descriptor (raw)" in t for t in _legend_texts(fig))
    fig4 = plots.plot_metric_over_dims(df, "miou")
    assert "descriptor (raw) w/o CRF [pixel]" in _legend_texts(fig4)
    assert "descriptor (raw) with CRF [pixel_flip]" in _legend_texts(fig4)
    # the full-width marker's column title gives the recorded width, not a ViT's
    assert (
        fig4.axes[0]
        .get_title()
        .startswith("Potsdam\n$D_\\mathregular{STEGO}=70$, backbone width $C=384$")
    )
    # the published points stay the paper's
    pub = plots.plot_metric_over_dims(df, "miou", published=True)
    assert "published (digitised)" in _legend_texts(pub)
    assert not any("DINO" in t for t in _legend_texts(pub))


@pytest.mark.slow
def test_dino_backbone_is_called_dino_with_its_width():
    df = _full_table().assign(backbone="dino_vits8")
    fig4, *_ = figs = _figures(df)
    for fig in figs:
        assert not any("descriptor" in t or "(raw)" in t for t in _all_texts(fig))
    assert "DINO (ours) w/o CRF [pixel]" in _legend_texts(fig4)
    assert "DINO [token]" in _legend_texts(plots.plot_distinctness_over_dims(df))
    assert "$D_\\mathregular{ViT}=384$" in fig4.axes[0].get_title()
    # the width is the recorded one: a ViT-B on Potsdam is not the paper's 384
    wide = _full_table().assign(backbone="dino_vitb8")
    wide.loc[wide.method == "dino", "dim"] = 768
    assert "$D_\\mathregular{ViT}=768$" in plots.plot_metric_over_dims(wide).axes[0].get_title()
    # without raw-feature rows the paper's width is used only for the paper's backbone
    no_raw = df[df.method != "dino"]
    assert "ViT}=384" in plots.plot_metric_over_dims(no_raw).axes[0].get_title()
    other = no_raw.assign(backbone="timm:resnet50")
    assert "ViT" not in plots.plot_metric_over_dims(other).axes[0].get_title()
    assert "STEGO}=70" in plots.plot_metric_over_dims(other).axes[0].get_title()  # released rows


@pytest.mark.slow
def test_no_crf_wording_without_crf_rows():
    df = _full_table()
    no_crf = df[~df.crf.astype(bool)]
    for fig in _figures(no_crf) + _figures(no_crf.assign(backbone="descriptor")):
        assert not any("CRF" in t for t in _all_texts(fig))
    labels = _legend_texts(plots.plot_metric_over_dims(no_crf, "miou"))
    assert "DINO (ours) [pixel]" in labels and "STEGO (theirs) [pixel_flip]" in labels
    paper = plots.plot_metric_over_dims(no_crf, "miou", figure_provenance="paper")
    assert set(_legend_texts(paper)) == {"STEGO (theirs)", "STEGO", "DINO (ours)", "PCA", "h-NNE"}
    # with CRF rows: the paper's labels in paper mode, explicit ones otherwise
    paper = plots.plot_metric_over_dims(df, "miou", figure_provenance="paper")
    assert {
        "STEGO (theirs)",
        "STEGO (theirs) w/o CRF",
        "DINO (ours)",
        "DINO (ours) w/o CRF",
    } <= set(_legend_texts(paper))
    # a method without CRF rows says nothing about CRF, even when others have them
    assert "PCA [pixel]" in _legend_texts(plots.plot_metric_over_dims(df, "miou"))


def test_errorbar_caption_follows_the_seeds():
    df = sweep_table(datasets=("potsdam3",), probes=("cluster",))
    one = df[df.seed == 0]
    fig = plots.plot_metric_over_dims(one, "miou", probe_rows=("cluster",))
    assert _legend_title(fig) == "backbone dino_vitb8; 1 seed (n=1): no error bars"
    for c in fig.axes[0].containers:
        assert _errorbar_halfwidths(c) is None, c.get_label()
    only_pca = df[df.method == "pca"]
    fig = plots.plot_metric_over_dims(only_pca, "miou", probe_rows=("cluster",), published=True)
    title = _legend_title(fig)
    assert "bars: ±1 sample std over 3 seeds" in title and "1-seed" not in title
    assert "hollow: published" in title
    two = only_pca[only_pca.seed < 2]
    mixed = pd.concat([two[two.dim <= 12], only_pca[only_pca.dim > 12]], ignore_index=True)
    title = _legend_title(plots.plot_metric_over_dims(mixed, "miou", probe_rows=("cluster",)))
    assert "over 2–3 seeds" in title
    # distinctness: 2 seeds
    assert "over 2 seeds" in _legend_title(plots.plot_distinctness_over_dims(_distinct_table()))
    # one seed with a silhouette_std row: the bar is that spread, and the caption says so
    d1 = _distinct_table()
    d1 = d1[d1.seed == 0]
    std = d1[d1.metric == "silhouette"].assign(metric="silhouette_std", value=0.01)
    fig = plots.plot_distinctness_over_dims(pd.concat([d1, std], ignore_index=True))
    assert "1 seed (n=1): bars ± silhouette_std" in _legend_title(fig)
    assert np.allclose(_errorbar_halfwidths(_container(fig.axes[0], "PCA [token]")), 0.01)
    assert plots.errorbar_note([]) == ["1 seed (n=1): no error bars"]


# ------------------------------------------------------------------------------------------
# the package layout
# ------------------------------------------------------------------------------------------

#: Every public name of the single-module ``stego_probe/plots.py`` before it became a package.
FORMER_PUBLIC_NAMES = (
    "CONVERGENCE_METRICS", "DATASET_TITLES", "DISTINCTNESS_METRICS", "FIGURE4_PROBES",
    "FIGURE_FILES", "METRIC_LABELS", "PAPER_BACKBONES", "PAPER_DATASETS", "PAPER_DIMS",
    "PCA_SPECTRUM_ORDER", "RAW_METHODS", "SeriesStyle", "aggregate_seeds", "backbone_label",
    "dim_ticks", "embedding_2d", "errorbar_note", "is_dino_backbone", "is_vit_backbone",
    "method_label", "plot_all", "plot_distinctness_over_dims", "plot_embedding_map",
    "plot_hnne_appendix", "plot_kmeans_convergence", "plot_metric_over_dims",
    "plot_pca_spectrum", "plot_qualitative", "save_figure", "series_style",
)  # fmt: skip


def test_former_public_names_are_still_importable_from_the_package():
    import importlib

    from stego_probe.embedding import embedding_2d

    missing = [n for n in FORMER_PUBLIC_NAMES if not hasattr(plots, n)]
    assert not missing, missing
    ns: dict = {}
    exec(f"from stego_probe.plots import {', '.join(FORMER_PUBLIC_NAMES)}", ns)
    assert plots.embedding_2d is embedding_2d  # re-exported from its home, not a copy
    # each re-export is the object of the submodule that defines it (one home per name)
    for name in FORMER_PUBLIC_NAMES:
        obj = getattr(plots, name)
        home = getattr(obj, "__module__", None)
        if callable(obj) and home != "stego_probe.plots":
            assert getattr(importlib.import_module(home), name) is obj, name


def test_plots_modules_import_no_private_names():
    import ast
    from pathlib import Path

    root = Path(plots.__file__).parent
    offenders = []
    for path in sorted(root.glob("*.py")) + [root.parent / "embedding.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                offenders += [f"{path.name}: {a.name}" for a in node.names if a.name[0] == "_"]
    assert not offenders, offenders
