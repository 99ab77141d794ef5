"""``stego-probe sweep``: run or resume a methods x dims x seeds sweep from a preset."""

from __future__ import annotations

import argparse

from stego_probe.cli.backbone_options import add_backbone_kwargs_argument
from stego_probe.cli.evaluate import add_kmeans_arguments, kmeans_kwargs
from stego_probe.threads import add_threads_argument


def _int_list(text: str, low: int, what: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = None
    if not values or any(v < low for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
    return values


def _ints(text: str) -> list[int]:
    """``--dims``: comma-separated integers >= 1."""
    return _int_list(text, 1, "positive integers, e.g. 3,6,12")


def _seeds(text: str) -> list[int]:
    """``--seeds``: comma-separated integers >= 0."""
    return _int_list(text, 0, "non-negative integers, e.g. 0,1,2")


def _strs(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="sweep methods x dims x seeds (STEGO / PCA / RP / DINO) and write a results CSV",
        description=(
            "Run the dimension sweep of a preset: extract the train/val stores if missing, then "
            "for each method, dim and seed fit the projection, probe it (k-means / linear / "
            "cluster), measure distinctness, and append tidy rows to OUT/results.csv. Re-running "
            "resumes: finished points are skipped. A failing point does not stop the others; "
            "the command lists the failures (tracebacks in OUT/failures.log) and exits 1. "
            "Only one run at a time may write into OUT: a second one is refused (the folder "
            "is locked while a sweep runs). "
            "Presets: synthetic, cocostuff27, cityscapes27, potsdam3 (or a YAML file)."
        ),
    )
    p.add_argument("--preset", required=True, help="preset name or YAML file")
    p.add_argument(
        "--out", required=True, help="output folder (stores/, projections/, results.csv)"
    )
    p.add_argument("--data-root", help="folder holding the prepared dataset")
    p.add_argument(
        "--backbone", help="override the preset's backbone (see `stego-probe backbones`)"
    )
    p.add_argument("--weights", help="local weights file for the backbone")
    add_backbone_kwargs_argument(p)
    p.add_argument("--methods", type=_strs, help="comma list, e.g. dino,pca,rp,stego")
    p.add_argument("--dims", type=_ints, help="comma list of D values, e.g. 3,6,12,24")
    p.add_argument("--seeds", type=_seeds, help="comma list of seeds (>= 0), e.g. 0,1,2")
    p.add_argument("--probes", type=_strs, help="comma list of kmeans,linear,cluster")
    p.add_argument("--mode", choices=["pixel", "token"], help="pixel (reference) or token (fast)")
    p.add_argument("--device", help="auto, cpu or cuda")
    add_kmeans_arguments(p, defaults=False)
    p.add_argument(
        "--train-store",
        metavar="PATH",
        help="use this existing complete train store instead of extracting OUT/stores/... "
        "(must match the preset's dataset, backbone, split and dataset options)",
    )
    p.add_argument(
        "--val-store", metavar="PATH", help="the same for the val store (see --train-store)"
    )
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local loop (default) or one Ray task per point (pip install 'stego-probe[ray]')",
    )
    add_threads_argument(p)
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="reuse cached UMAP / h-NNE fits in OUT/projections/ (their model is a pickle, and "
        "unpickling can run code from the file: only for folders you trust); by default they "
        "are refitted",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from stego_probe.sweep import SweepError, load_config, run_sweep, summary_table

    config = load_config(
        args.preset,
        {
            "data_root": args.data_root,
            "backbone": args.backbone,
            "weights": args.weights,
            "backbone_kwargs": args.backbone_kwargs or None,
            "methods": args.methods,
            "dims": args.dims,
            "seeds": args.seeds,
            "probes": args.probes,
            "mode": args.mode,
            "device": args.device,
            "trust_pickle": True if args.trust_pickle else None,
            "probe_kwargs": {"kmeans": kmeans_kwargs(args)} if kmeans_kwargs(args) else None,
        },
    )
    failed = None
    try:
        df = run_sweep(
            config,
            args.out,
            executor=args.executor,
            progress=not args.no_progress,
            train_store=args.train_store,
            val_store=args.val_store,
            threads=args.threads,
        )
    except SweepError as e:  # some points failed: summarise the finished ones, then exit 1
        df, failed = e.results, e
    table = summary_table(df)
    if not table.empty:
        print(f"mIoU (%), {table.attrs['note']}, {config.name}:")
        print(table.to_string())
    print(f"results: {args.out}/results.csv")
    if failed is not None:
        raise failed
    return 0
