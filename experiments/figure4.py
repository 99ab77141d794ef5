"""Figure 4 (mIoU) and Appendix Figure 1 (accuracy): probe quality versus embedding dimension D.

For each dataset preset (``--datasets cocostuff27,cityscapes27,potsdam3``) this runs or resumes
the dimension sweep of PROTOCOL §7.1: STEGO retrained at every D, PCA and random projections of
the cached DINO features, and the DINO-only baseline at full width; each point is probed with
the linear probe, the reference cluster probe and stego_probe's k-means probe in "val" mode
(no flip, no CRF) and measured for cluster distinctness. Each sweep lives in ``<out>/<dataset>/``
(stores, fitted projections, ``results.csv``); re-running resumes.

Then it draws ``all_datasets_miou`` and ``all_datasets_acc`` (one column per dataset; rows:
linear, cluster and k-means probe) with the paper's published points overlaid (hollow markers,
digitised from the published Figure 4, with their uncertainty). When Table 2 has been run, its
"eval"-mode numbers of the released checkpoints and DINO (± CRF) are drawn as the paper's
reference markers (``--table2``).

``--results CSV [CSV ...]`` skips the sweeps and only redraws from existing tables.

Example:
    python experiments/figure4.py --data-root /data --datasets cocostuff27,cityscapes27,potsdam3
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from _common import begin, make_parser, read_tables, run, run_sweeps

#: The two figures: metric -> key of :data:`stego_probe.plots.FIGURE_FILES` (the file stem).
FIGURES = ("miou", "accuracy")


def parse_args(argv=None):
    p = make_parser("figure4", __doc__, sweep=True)
    g = p.add_argument_group("figure 4")
    g.add_argument(
        "--results",
        nargs="+",
        default=None,
        metavar="CSV",
        help="only redraw, from these results tables (no sweep)",
    )
    g.add_argument(
        "--table2",
        default="runs/table2/results.csv",
        help="Table 2 results to draw the released-checkpoint / DINO ± CRF markers from, if the "
        "file exists (runs/table2/results.csv); 'none' to leave them out",
    )
    g.add_argument(
        "--no-published", action="store_true", help="do not overlay the published points"
    )
    g.add_argument(
        "--figure-provenance",
        choices=["recorded", "paper"],
        default="recorded",
        help="recorded: show each series' evaluation mode in the legend; paper: reproduce the "
        "paper's mixing of val / eval modes (PROTOCOL §7.2)",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    begin(args, "Figure 4 / Appendix Figure 1: metric versus embedding dimension")
    import pandas as pd

    from stego_probe.plots import FIGURE4_PROBES, FIGURE_FILES, plot_metric_over_dims, save_figure

    start = time.perf_counter()
    df = read_tables(args.results) if args.results else run_sweeps(args, args.out)
    table2 = Path(args.table2) if args.table2 and args.table2.lower() != "none" else None
    if table2 is not None and table2.exists():
        print(f"adding the eval-mode reference points of {table2}")
        df = pd.concat([df, read_tables([table2])], ignore_index=True)
    df = df[df["dataset"].isin(args.datasets)]
    paths = []
    for metric in FIGURES:
        rows = df[(df["metric"] == metric) & df["probe"].isin(FIGURE4_PROBES)]
        if rows.empty:
            raise ValueError(f"no {metric} rows of the {list(FIGURE4_PROBES)} probes to draw")
        fig = plot_metric_over_dims(
            df,
            metric=metric,
            probe_rows=[p for p in FIGURE4_PROBES if (rows["probe"] == p).any()],
            published=not args.no_published,
            figure_provenance=args.figure_provenance,
            datasets=args.datasets,
        )
        stem = FIGURE_FILES[metric]
        paths.append(save_figure(fig, Path(args.figures) / f"{stem}.{args.fmt}"))
    if not args.results:
        drawn = Path(args.out) / "figure4.csv"
        df.to_csv(drawn, index=False)
        print(f"rows drawn: {drawn}")
    print("figures: " + ", ".join(map(str, paths)))
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
