"""``stego-probe evaluate``: probe the raw backbone features of two stores (the DINO baseline).

A thin wrapper over :func:`stego_probe.evaluate.evaluate_stores`, run once per seed; the rows are
appended to a results CSV with :func:`stego_probe.results.append_csv` and the mean ± std over
seeds is printed. ``--save-probes`` / ``--save-predictions`` export the fitted probes and the
per-image predictions (:mod:`stego_probe.export`).

:func:`add_kmeans_arguments` (``--niter``, ``--tol``, ``--nredo``) is shared with ``sweep``.
"""

from __future__ import annotations

import argparse
import math
import os

from stego_probe.probes import PROBE_NAMES as PROBES
from stego_probe.threads import add_threads_argument

#: Seeds of ``stego-probe evaluate`` by default: three, so the spread over seeds is reported.
DEFAULT_SEEDS = (0, 1, 2)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def tolerance(text: str) -> float | None:
    """argparse type: ``none`` (exactly niter iterations) or a finite number >= 0."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number >= 0 or 'none', got {text!r}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 or 'none', got {text!r}")
    return value


def seed_list(text: str) -> list[int]:
    """argparse type: comma-separated non-negative integers, without repeats."""
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(
            f"expected distinct non-negative integers such as 0,1,2, got {text!r}"
        )
    return seeds


def one_seed(text: str) -> list[int]:
    """argparse type of ``--seed``: one non-negative integer, as a one-element seed list."""
    seeds = seed_list(text)
    if len(seeds) != 1:
        raise argparse.ArgumentTypeError(
            f"expected one seed (use --seeds for several), got {text!r}"
        )
    return seeds


def add_kmeans_arguments(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Add ``--niter``, ``--tol`` and ``--nredo`` (the k-means protocol) to a parser.

    Args:
        p: the subcommand's parser.
        defaults: use the probe's defaults (``evaluate``); with False, unset options are absent
            from the namespace so that a preset's values stay in force (``sweep``).
    """
    from stego_probe.probes.kmeans import DEFAULT_NITER, DEFAULT_NREDO, DEFAULT_TOL

    def default(value):
        return value if defaults else argparse.SUPPRESS

    where = "default {}" if defaults else "default: the preset's value, else {}"
    p.add_argument(
        "--niter",
        type=positive_int,
        default=default(DEFAULT_NITER),
        help="k-means: maximum Lloyd iterations per restart (" + where.format(DEFAULT_NITER) + ")",
    )
    p.add_argument(
        "--tol",
        type=tolerance,
        default=default(DEFAULT_TOL),
        metavar="TOL|none",
        help="k-means stopping rule: 0 = iterate to a fixed point (the objective no longer "
        "changes) or --niter; > 0 = stop early once the relative objective change is <= TOL "
        "(not converged); none = exactly --niter iterations ("
        + where.format(DEFAULT_TOL)
        + "). Recorded in the kmeans_tol column",
    )
    p.add_argument(
        "--nredo",
        type=positive_int,
        default=default(DEFAULT_NREDO),
        help="k-means restarts per seed, the best objective is kept ("
        + where.format(DEFAULT_NREDO)
        + ")",
    )


def kmeans_kwargs(args: argparse.Namespace) -> dict:
    """The ``niter`` / ``tol`` / ``nredo`` options that were given (all of them with defaults)."""
    return {k: getattr(args, k) for k in ("niter", "tol", "nredo") if hasattr(args, k)}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate",
        help="fit probes on a train store and score them on a val store (raw features)",
        description=(
            "Fit the k-means, cluster (reference) and/or linear probes on the raw backbone "
            "features of a training feature store and score them on a validation store "
            "(method 'dino', the DINO-only baseline), once per seed (default 0,1,2, so that "
            "the spread over seeds is printed). Codes are upsampled to the label resolution "
            "(--mode pixel, the paper's protocol) or labels pooled to the token grid (--mode "
            "token, a fast approximation). Rows are appended to --out; the k-means stopping "
            "rule (--tol, --niter, --nredo) and the iterations run are recorded in every "
            "kmeans row."
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
    p.add_argument(
        "--seeds",
        type=seed_list,
        default=list(DEFAULT_SEEDS),
        help="comma list of probe random_states, one evaluation each; the summary shows mean "
        "± std over them (default 0,1,2)",
    )
    p.add_argument(
        "--seed",
        type=one_seed,
        dest="seeds",
        help="a single seed (same as --seeds N)",
    )
    p.add_argument("--steps", type=int, default=7000, help="cluster/linear training batches (7000)")
    p.add_argument(
        "--train-batch-size", type=int, default=32, help="training images per batch (32)"
    )
    p.add_argument(
        "--n-train", type=int, default=1_000_000, help="tokens sampled for k-means (1e6)"
    )
    add_kmeans_arguments(p)
    p.add_argument("--n-clusters", type=int, default=None, help="clusters (default: classes)")
    p.add_argument("--batch-size", type=int, default=8, help="validation images per batch (8)")
    p.add_argument(
        "--save-probes",
        default=None,
        metavar="DIR",
        help="write the fitted probes to DIR/seed<s>/<probe>.npz (+ probes.json); DIR must be "
        "new or empty",
    )
    p.add_argument(
        "--save-predictions",
        default=None,
        metavar="DIR",
        help="write every val image's predicted classes to DIR/seed<s>/<probe>[_crf]/<id>.png "
        "(clusters mapped to classes as scored; mapping.json alongside); DIR must be new or "
        "empty",
    )
    add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--out", required=True, help="results CSV to append to")
    p.set_defaults(func=_cmd_evaluate)


def summarize(frame, metrics=("accuracy", "miou")):
    """Mean ± std over seeds of ``metrics`` per (probe, crf, mode): a printable DataFrame.

    Args:
        frame: results rows of one or more seeds.
        metrics: metric names to show.

    Returns:
        DataFrame indexed by (probe, crf, mode) with a ``seeds`` count and one
        ``"mean ± std"`` column per metric (std is the sample standard deviation; ``-`` for one
        seed).
    """
    import pandas as pd

    sel = frame[frame["metric"].isin(list(metrics))]
    keys = ["probe", "crf", "mode"]
    out = {}
    for key, g in sel.groupby(keys, sort=False):
        row = {"seeds": g["seed"].nunique()}
        for m in metrics:
            v = g[g["metric"] == m]["value"].astype(float)
            std = f"{v.std(ddof=1):5.2f}" if len(v) > 1 else "  -  "
            row[m] = f"{v.mean():6.2f} ± {std}"
        out[key] = row
    table = pd.DataFrame.from_dict(out, orient="index")
    table.index = table.index.set_names(keys)
    return table


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from stego_probe.cli.store import open_store
    from stego_probe.evaluate import dataset_for_store, evaluate_stores, store_images
    from stego_probe.export import check_output_dir, save_probes
    from stego_probe.results import append_csv, read_results, to_frame

    if os.path.exists(args.out):
        read_results(args.out)  # a --out that is not a results table fails before the work
    for flag, path in (("--save-probes", args.save_probes), ("--save-predictions",
                       args.save_predictions)):  # fmt: skip
        if path is not None:
            check_output_dir(path, flag)
    probes = ",".join(args.probe) if args.probe else ",".join(PROBES)
    kmeans_kw = kmeans_kwargs(args)
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
    frames = []
    for seed in args.seeds:
        preds = None
        if args.save_predictions is not None:
            preds = os.path.join(args.save_predictions, f"seed{seed}")
        frame, fitted = evaluate_stores(
            train,
            val,
            probes=probes,
            mode=args.mode,
            crf=args.crf,
            flip=args.flip,
            seed=seed,
            match=args.match,
            steps=args.steps,
            train_batch_size=args.train_batch_size,
            n_train=args.n_train,
            probe_kwargs={"kmeans": kmeans_kw, "cluster": cluster_kw},
            batch_size=args.batch_size,
            images=images,
            crf_workers=args.crf_workers,
            progress=not args.no_progress,
            return_probes=True,
            save_predictions=preds,
            threads=args.threads,
        )
        if args.save_probes is not None:
            info = {"seed": seed, "train_store": str(train.path), "val_store": str(val.path)}
            save_probes(fitted, os.path.join(args.save_probes, f"seed{seed}"), info)
        append_csv(frame.to_dict("records"), args.out)  # per seed: finished seeds are kept
        frames.append(frame)
        if "kmeans" in fitted:
            km = fitted["kmeans"]
            print(
                f"seed {seed}: k-means stopped after {km.n_iter_} of niter={km.niter} iterations "
                f"({'fixed point reached' if km.converged_ else 'no fixed point'}; "
                f"tol={km.tol}, nredo={km.nredo})"
            )
    frame = to_frame(r for f in frames for r in f.to_dict("records"))
    n = len(args.seeds)
    print(f"mean ± std over {n} seed(s) {','.join(map(str, args.seeds))}:")
    print(summarize(frame).to_string())
    if n == 1:
        print("one seed: the spread over seeds is not measured (use --seeds 0,1,2)")
    print(f"appended {len(frame)} rows to {args.out}")
    return 0
