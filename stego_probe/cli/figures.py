"""``stego-probe figures``: draw every figure a results table has data for."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``figures`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "figures",
        help="draw the paper's figures (and ours) from a results table",
        description=(
            "Draw every figure RESULTS.csv has rows for: Figure 3 (pca_cum_variance), Figure 4 "
            "(all_datasets_miou), Appendix Figure 1 (all_datasets_acc), Appendix Figure 2 "
            "(<dataset>_hnne), distinctness_over_dims and kmeans_convergence. Labels come from the "
            "table: the raw-feature method is named after its backbone, widths are the recorded "
            "ones, CRF wording only with CRF rows, legend titles say what the error bars show. "
            "See docs/figures.md."
        ),
    )
    p.add_argument("results", metavar="RESULTS.csv", help="results table (stego_probe.results)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--published",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="overlay the published (digitised) points on Figure 4 and the appendix figures",
    )
    p.add_argument(
        "--format",
        choices=["pdf", "png", "svg"],
        default="pdf",
        dest="fmt",
        help="file format of the figures (default: pdf)",
    )
    p.add_argument(
        "--figure-provenance",
        choices=["recorded", "paper"],
        default="recorded",
        help="'recorded': evaluation mode of each series in the legend; 'paper': the reference's "
        "labels and mode mixing (parity)",
    )
    p.set_defaults(func=_run)


def _run(args) -> int:
    from pathlib import Path

    from stego_probe.plots import plot_all
    from stego_probe.results import read_results

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: exists and is not a directory; expected a folder")
    df = read_results(args.results)
    paths = plot_all(
        df,
        args.out,
        published=args.published,
        fmt=args.fmt,
        figure_provenance=args.figure_provenance,
    )
    if not paths:
        raise ValueError(
            f"{args.results}: no rows any figure needs (metric miou/accuracy with probe "
            "linear/cluster/kmeans, explained_variance_ratio of pca, or distinctness metrics)"
        )
    for path in paths:
        print(path)
    return 0
