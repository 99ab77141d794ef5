"""``stego-probe evaluate``: probe the raw backbone features of two stores (the DINO baseline).

A thin wrapper over :func:`stego_probe.evaluate.evaluate_stores`; the rows are appended to a
results CSV with :func:`stego_probe.results.append_csv`.
"""

from __future__ import annotations

import argparse
import os

from stego_probe.evaluate import PROBES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate",
        help="fit probes on a train store and score them on a val store (raw features)",
        description=(
            "Fit the k-means, cluster (reference) and/or linear probes on the raw backbone "
            "features of a training feature store and score them on a validation store "
            "(method 'dino', the DINO-only baseline). Codes are upsampled to the label "
            "resolution (--mode pixel, the paper's protocol) or labels pooled to the token "
            "grid (--mode token, a fast approximation). Rows are appended to --out."
        ),
    )
    p.add_argument("--train-store", required=True, help="training feature store (dir or URL)")
    p.add_argument("--val-store", required=True, help="validation feature store (dir or URL)")
    p.add_argument(
        "--probe",
        action="append",
        default=None,
        help=f"probe(s): {', '.join(PROBES)}; repeatable or a comma list (default: all)",
    )
    p.add_argument("--mode", choices=["pixel", "token"], default="pixel", help="pixel (default)")
    p.add_argument(
        "--flip",
        action="store_true",
        help="evaluation mode: average codes with the flipped images' (needs a store "
        "extracted with --flipped)",
    )
    p.add_argument(
        "--crf",
        action="store_true",
        help="also report dense-CRF metrics (pixel mode; rebuilds the val images from the "
        "dataset recorded in the store, see --data-root / --dataset-arg)",
    )
    p.add_argument("--data-root", default=None, help="dataset root for the CRF images")
    p.add_argument(
        "--dataset-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra dataset option for the CRF images, as in `extract` (repeatable)",
    )
    p.add_argument("--crf-workers", type=int, default=0, help="CRF processes (0: serial)")
    p.add_argument(
        "--match",
        choices=["hungarian", "majority", "reference"],
        default="hungarian",
        help="cluster-to-class matching of the unsupervised probes (default hungarian)",
    )
    p.add_argument("--seed", type=int, default=0, help="probe random_state (0)")
    p.add_argument("--steps", type=int, default=7000, help="cluster/linear training batches (7000)")
    p.add_argument(
        "--train-batch-size", type=int, default=32, help="training images per batch (32)"
    )
    p.add_argument(
        "--n-train", type=int, default=1_000_000, help="tokens sampled for k-means (1e6)"
    )
    p.add_argument("--niter", type=int, default=100, help="k-means iterations (100)")
    p.add_argument("--nredo", type=int, default=3, help="k-means restarts (3)")
    p.add_argument("--n-clusters", type=int, default=None, help="clusters (default: classes)")
    p.add_argument("--batch-size", type=int, default=8, help="validation images per batch (8)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--out", required=True, help="results CSV to append to")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from stego_probe.cli.store import open_store
    from stego_probe.evaluate import dataset_for_store, evaluate_stores, store_images
    from stego_probe.results import append_csv, read_results

    if os.path.exists(args.out):
        read_results(args.out)  # a --out that is not a results table fails before the work
    probes = ",".join(args.probe) if args.probe else ",".join(PROBES)
    kmeans_kw = {"niter": args.niter, "nredo": args.nredo}
    cluster_kw = {}
    if args.n_clusters is not None:
        kmeans_kw["n_clusters"] = cluster_kw["n_clusters"] = args.n_clusters
    train = open_store(args.train_store, "--train-store")
    val = open_store(args.val_store, "--val-store")
    images = None
    if args.crf:
        from stego_probe.cli.store import parse_key_values

        ds = dataset_for_store(val, args.data_root, **parse_key_values(args.dataset_arg))
        images = store_images(val, ds)
    frame = evaluate_stores(
        train,
        val,
        probes=probes,
        mode=args.mode,
        crf=args.crf,
        flip=args.flip,
        seed=args.seed,
        match=args.match,
        steps=args.steps,
        train_batch_size=args.train_batch_size,
        n_train=args.n_train,
        probe_kwargs={"kmeans": kmeans_kw, "cluster": cluster_kw},
        batch_size=args.batch_size,
        images=images,
        crf_workers=args.crf_workers,
        progress=not args.no_progress,
    )
    append_csv(frame.to_dict("records"), args.out)
    summary = frame[frame["metric"].isin(["accuracy", "miou"])].pivot_table(
        index=["probe", "crf", "mode"], columns="metric", values="value"
    )
    print(summary.round(2).to_string())
    print(f"appended {len(frame)} rows to {args.out}")
    return 0
