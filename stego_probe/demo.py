"""The offline end-to-end demo (``stego-probe demo``, the README's first command).

synthetic scenes -> descriptor backbone (or a real DINO with ``backbone=`` / ``weights=``) ->
train / val stores -> STEGO head, PCA and random projection at several D and full width ->
k-means and linear probes, distinctness -> ``<out>/results.csv`` -> every figure the table
supports, plus a qualitative grid and a 2-D feature map, in ``<figures>/`` -> a printed summary
(tables, then one verdict line per claim of the paper).

Everything here is composition of library calls (:mod:`stego_probe.sweep`,
:mod:`stego_probe.plots`, :mod:`stego_probe.evaluate`, :mod:`stego_probe.summaries` for the
printed tables and the D to draw, :mod:`stego_probe.claims` for the printed verdicts on the
paper's claims, :func:`stego_probe.export.class_aligned_predictions` for the
qualitative grid); the demo adds no analysis of its own.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

from stego_probe.claims import FRAMING, check_claims, format_verdicts
from stego_probe.export import class_aligned_predictions
from stego_probe.summaries import best_dim, distinctness_summary
from stego_probe.sweep import (
    Point,
    SweepConfig,
    ensure_stores,
    load_config,
    run_sweep,
    summary_table,
)
from stego_probe.threads import uses_threads

#: Overrides that shrink the demo to a smoke test (used by the tests and ``--quick``).
QUICK = {
    "dataset_kwargs": {"n_images": 24},
    "dims": [3, 12],
    "seeds": [0],
    "probe_kwargs": {
        "kmeans": {"n_tokens": 5000, "niter": 10, "nredo": 1},
        "linear": {"max_iter": 50},
    },
    "method_kwargs": {"stego": {"steps": 30}},
    "distinctness": {"n_tokens": 1000, "seeds": [0, 1]},
}


def demo_config(
    backbone: str | None = None,
    weights: str | None = None,
    quick: bool = False,
    backbone_kwargs: dict | None = None,
):
    """The demo's sweep: the ``synthetic`` preset, optionally with another backbone.

    A real DINO has 384 / 768 channels; the preset's dims are kept and full width is added by
    the sweep for PCA / RP / DINO. ``backbone_kwargs`` are extra ``get_backbone`` arguments
    (e.g. ``{"pretrained": False, "seed": 1}``).
    """
    overrides: dict = {"backbone": backbone, "weights": weights}
    if backbone_kwargs:
        overrides["backbone_kwargs"] = dict(backbone_kwargs)
    if backbone and backbone != "descriptor":
        # ViT inputs must be multiples of the patch size; 224 px is the DINO training size.
        overrides["train"] = {"res": 224}
        overrides["val"] = {"res": 224}
    if quick:
        overrides.update(QUICK)
    return load_config("synthetic", overrides)


def extra_figures(
    config: SweepConfig, df: pd.DataFrame, out_dir, fig_dir, n_images: int = 4, fmt: str = "png"
) -> list[Path]:
    """The qualitative grid and the raw-features-vs-STEGO 2-D feature map of the demo.

    Panels are titled from the results' provenance (:func:`stego_probe.plots.method_label`):
    the raw features after the backbone (``"descriptor (raw)"``; ``"DINO"`` only for a DINO),
    with the width D they were probed at and the probe.
    """
    from stego_probe.embedding import embedding_2d
    from stego_probe.evaluate import dataset_for_store, store_images
    from stego_probe.plots import method_label, plot_embedding_map, plot_qualitative, save_figure
    from stego_probe.sweep import fit_projection, val_code_sample

    train_store, val_store = ensure_stores(config, out_dir, progress=False)
    cache = Path(out_dir) / "projections"
    seed = config.seeds[0]
    provenance = df if "backbone" in df.columns and len(df) else config.backbone
    dino = Point("dino", train_store.dim, seed)
    # name -> (projection, title of the qualitative column, title of the feature map panel)
    methods = {}
    for method, d in [("dino", train_store.dim)] + [(m, best_dim(df, m)) for m in ("stego", "pca")]:
        if d is None:
            continue
        point = dino if method == "dino" else Point(method, d, seed)
        proj = fit_projection(config, point, train_store, cache, val_store)
        name = method_label(method, provenance)
        methods[method] = (proj, f"{name}\nD={d}, k-means", f"{name}, D={d}")
    idx = np.arange(min(n_images, val_store.n_images))
    images = store_images(val_store, dataset_for_store(val_store))(
        idx, [val_store.ids[i] for i in idx]
    )
    preds = {
        title: class_aligned_predictions(
            train_store,
            val_store,
            proj,
            idx,
            seed=seed,
            kmeans_kwargs=config.probe_kwargs.get("kmeans"),
        )
        for proj, title, _ in methods.values()
    }
    names = val_store.class_names
    paths = []
    fig = plot_qualitative(
        images, val_store.labels(idx), preds, dataset=config.dataset, class_names=names
    )
    paths.append(save_figure(fig, Path(fig_dir) / f"qualitative.{fmt}"))

    points, labels = {}, None
    for method, (proj, _, title) in methods.items():
        if method == "pca":
            continue
        codes, labels = val_code_sample(val_store, proj, 3000, seed)
        points[title] = embedding_2d(codes, method="pca", random_state=seed)
    fig = plot_embedding_map(points, labels, class_names=names, dataset=config.dataset)
    paths.append(save_figure(fig, Path(fig_dir) / f"feature_map.{fmt}"))
    return paths


@uses_threads()
def run_demo(
    out: str = "runs/demo",
    figures: str = "figures/demo",
    backbone: str | None = None,
    weights: str | None = None,
    quick: bool = False,
    progress: bool = True,
    threads: int | str | None = "auto",
    backbone_kwargs: dict | None = None,
) -> pd.DataFrame:
    """Run the demo end to end and print a summary; returns the results table.

    Args:
        out: run folder (stores, fitted projections, ``results.csv``); re-running resumes.
        figures: folder for the figures (PNG).
        backbone, weights: use another backbone (e.g. ``dino_vits8`` and its ``.pth`` file).
        quick: a tiny configuration (seconds; used by the tests).
        progress: progress bars.
        threads: CPU threads (``"auto"``: 1 for the analysis of small stores, all cores for
            the extraction and ViT-sized stores; an int, ``"all"`` or None for the library defaults;
            :mod:`stego_probe.threads`); the previous counts are restored at the end.
        backbone_kwargs: extra ``get_backbone`` arguments, e.g. ``{"pretrained": False}``.
    """
    from stego_probe.plots import plot_all

    start = time.perf_counter()
    config = demo_config(backbone, weights, quick, backbone_kwargs)
    print(
        f"stego-probe demo: {config.dataset} scenes, backbone {config.backbone}, "
        f"methods {config.methods}, dims {config.dims}, seeds {config.seeds}"
    )
    ensure_stores(config, out, progress=progress)
    df = run_sweep(config, out, progress=progress)
    paths = plot_all(df, figures, published=False, fmt="png")
    paths += extra_figures(config, df, out, figures)
    for metric in ("miou", "accuracy"):
        table = summary_table(df, metric)
        if not table.empty:
            print(f"\n{metric} (%) on the synthetic val split, {table.attrs['note']}:")
            print(table.to_string())
    dist = distinctness_summary(df)
    if not dist.empty:
        print(f"\ncluster distinctness on val codes, {dist.attrs['note']}:")
        print(dist.to_string())
    print("\nwhat the demo shows: the paper's qualitative claims, checked on this table")
    print(textwrap.fill(FRAMING, width=100))
    print(format_verdicts(check_claims(df)))
    print(f"\nresults: {Path(out) / 'results.csv'}")
    print("figures: " + ", ".join(str(p) for p in paths))
    print(f"done in {time.perf_counter() - start:.0f} s")
    return df
