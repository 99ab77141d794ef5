"""``stego-probe demo``: the offline end-to-end demo."""

from __future__ import annotations

from stego_probe.cli.backbone_options import add_backbone_kwargs_argument
from stego_probe.threads import add_threads_argument


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="offline end-to-end demo: synthetic scenes -> stores -> sweep -> figures",
        description=(
            "Extract synthetic scenes with the weight-free descriptor backbone (or a real DINO "
            "with --backbone/--weights), sweep STEGO / PCA / RP over D with k-means and linear "
            "probes and distinctness, write OUT/results.csv and the figures, print a summary. "
            "Re-running resumes where it stopped."
        ),
    )
    p.add_argument(
        "--out", help="run folder (default: runs/demo, or runs/demo-<backbone> with --backbone)"
    )
    p.add_argument(
        "--figures",
        help="figure folder (default: figures/demo, or figures/demo-<backbone> with --backbone)",
    )
    p.add_argument(
        "--backbone", help="backbone registry name, e.g. dino_vits8 (default: descriptor)"
    )
    p.add_argument("--weights", help="local weights file for --backbone")
    add_backbone_kwargs_argument(p)
    p.add_argument("--quick", action="store_true", help="a tiny configuration (seconds)")
    add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from stego_probe.demo import run_demo

    # A run folder holds one configuration: another backbone gets its own folders by default.
    suffix = f"-{args.backbone.replace(':', '-')}" if args.backbone else ""
    run_demo(
        out=args.out or f"runs/demo{suffix}",
        figures=args.figures or f"figures/demo{suffix}",
        backbone=args.backbone,
        weights=args.weights,
        backbone_kwargs=args.backbone_kwargs,
        quick=args.quick,
        progress=not args.no_progress,
        threads=args.threads,
    )
    return 0
