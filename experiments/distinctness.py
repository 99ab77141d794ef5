"""Cluster distinctness and k-means convergence versus D (stego_probe's extension, PROTOCOL §4.7).

The paper argues that STEGO's codes form more distinct clusters than DINO features or their PCA /
random projections of the same width, but measures none. The Figure 4 sweep records, for every
(method, D, seed), statistics of a seeded sample of validation codes: silhouette (cosine),
between / within scatter, centroid margin, and how k-means behaves on them (iterations to
converge, ARI / NMI between restarts). This script draws them:

* ``distinctness_over_dims``: one row per dataset, one column per distinctness statistic;
* ``kmeans_convergence``: iterations and restart agreement of k-means.

It reads the sweep results in ``<sweeps>/<dataset>/results.csv`` (the Figure 4 sweeps, default
runs/figure4) and runs (or resumes) the sweep of any dataset whose results are missing, with the
same grid options as figure4.py. ``--results CSV`` only redraws. The rows drawn are also written
to ``<out>/distinctness.csv`` and summarised on the terminal.

Example:
    python experiments/distinctness.py --data-root /data --datasets potsdam3
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from _common import SWEEP_ROOT, begin, make_parser, read_tables, run, run_sweeps

SUMMARY = ("silhouette", "kmeans_ari", "kmeans_iterations")


def parse_args(argv=None):
    p = make_parser("distinctness", __doc__, sweep=True)
    g = p.add_argument_group("distinctness")
    g.add_argument(
        "--sweeps",
        default=SWEEP_ROOT,
        help=f"folder of the per-dataset sweeps to read / run ({SWEEP_ROOT})",
    )
    g.add_argument(
        "--results",
        nargs="+",
        default=None,
        metavar="CSV",
        help="only redraw, from these results tables (no sweep)",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    begin(args, "Cluster distinctness and k-means convergence versus D")
    import pandas as pd

    from stego_probe.plots import (
        CONVERGENCE_METRICS,
        DISTINCTNESS_METRICS,
        FIGURE_FILES,
        plot_distinctness_over_dims,
        plot_kmeans_convergence,
        save_figure,
    )
    from stego_probe.summaries import distinctness_summary

    start = time.perf_counter()
    if args.results:
        df = read_tables(args.results)
    else:
        found = [Path(args.sweeps) / d / "results.csv" for d in args.datasets]
        missing = [d for d, f in zip(args.datasets, found) if not f.exists()]
        if missing:
            print(f"no sweep results for {missing} in {args.sweeps}: running the sweep")
            run_sweeps(argparse_subset(args, missing), args.sweeps)
        df = read_tables(found)
    df = df[df["dataset"].isin(args.datasets) & (df["probe"] == "none")]
    df = df[df["metric"].isin([*DISTINCTNESS_METRICS, *CONVERGENCE_METRICS])]
    if df.empty:
        raise ValueError(
            f"no distinctness rows for {args.datasets}: was the sweep run with distinctness "
            "enabled (preset key distinctness.enabled)?"
        )
    fig_dir = Path(args.figures)
    paths = [
        save_figure(draw(df), fig_dir / f"{FIGURE_FILES[key]}.{args.fmt}")
        for key, draw in (
            ("distinctness", plot_distinctness_over_dims),
            ("convergence", plot_kmeans_convergence),
        )
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "distinctness.csv", index=False)
    summary = distinctness_summary(df, metrics=SUMMARY, index=("dataset", "method", "dim"))
    with pd.option_context("display.width", 120):
        print(f"{summary.attrs.get('note', 'mean over seeds')}:\n" + summary.to_string())
    print(f"rows: {out / 'distinctness.csv'}")
    print("figures: " + ", ".join(map(str, paths)))
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


def argparse_subset(args, datasets):
    """``args`` with ``--datasets`` replaced by ``datasets``."""
    import argparse

    return argparse.Namespace(**{**vars(args), "datasets": list(datasets)})


if __name__ == "__main__":
    sys.exit(run(main))
