"""Figure 3: cumulative explained variance of PCA on the DINO features of each dataset.

For each dataset, PCA (all components, streaming, PROTOCOL §6.3) is fitted on the standardised
tokens of the first 5,000 images of the training store (five-crop 224-px crops for CocoStuff and
Cityscapes, 224-px Potsdam images; §6.2) and the explained-variance ratio of every component is
written as tidy rows (``metric == "explained_variance_ratio"``, ``dim`` = component index).
The figure draws the cumulative sums on a common normalised axis (§7.4): ``pca_cum_variance``.

The training stores are shared with the Figure 4 sweep (``--stores``, default runs/figure4):
whichever script runs first extracts them. Re-running skips datasets already in the results
(:func:`stego_probe.results.done_keys`); ``--results CSV`` only redraws. The printed numbers
are :func:`stego_probe.summaries.cumulative_variance`.

Example:
    python experiments/figure3.py --data-root /data
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from _common import (
    SWEEP_ROOT,
    begin,
    dataset_config,
    make_parser,
    read_tables,
    run,
    shared_store,
)


def parse_args(argv=None):
    p = make_parser("figure3", __doc__)
    g = p.add_argument_group("figure 3")
    g.add_argument(
        "--stores",
        default=SWEEP_ROOT,
        help=f"folder of the per-dataset sweep folders whose stores are shared ({SWEEP_ROOT})",
    )
    g.add_argument(
        "--results",
        nargs="+",
        default=None,
        metavar="CSV",
        help="only redraw the figure from these results tables",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    begin(args, "Figure 3: PCA cumulative explained variance")
    from stego_probe.plots import FIGURE_FILES, plot_pca_spectrum, save_figure
    from stego_probe.results import append_csv, done_keys, read_results
    from stego_probe.summaries import cumulative_variance
    from stego_probe.sweep import pca_spectrum_rows

    start = time.perf_counter()
    if args.results:
        df = read_tables(args.results)
    else:
        out = Path(args.out)
        results = out / "results.csv"
        done = done_keys(results, ["dataset"])
        for dataset in args.datasets:
            if (dataset,) in done:
                print(f"== {dataset}: already in {results}, skipped")
                continue
            config = dataset_config(args, dataset)
            print(f"== {dataset}: PCA on the {config.train.split} store of {config.backbone}")
            train = shared_store(config, args.stores, "train", progress=not args.no_progress)
            rows = pca_spectrum_rows(config, train, out / dataset / "projections")
            append_csv(rows, results)
        df = read_results(results)
    df = df[df["dataset"].isin(args.datasets) & (df["metric"] == "explained_variance_ratio")]
    if df.empty:
        raise ValueError(f"no explained_variance_ratio rows for datasets {args.datasets}")
    stem = FIGURE_FILES["pca_spectrum"]
    path = save_figure(plot_pca_spectrum(df), Path(args.figures) / f"{stem}.{args.fmt}")
    for dataset, g in cumulative_variance(df).groupby("dataset", sort=False):
        marks = ", ".join(f"D={d}: {c:.3f}" for d, c in zip(g["dim"], g["cumulative"]))
        n = g["n_components"].iloc[0]
        print(f"{dataset}: {n} components; cumulative explained variance {marks}")
    print(f"figure: {path}\ndone in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
