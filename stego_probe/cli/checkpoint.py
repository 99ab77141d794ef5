"""``stego-probe import-checkpoint`` and ``stego-probe train-stego``: thin wrappers over
:mod:`stego_probe.projections.stego`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stego_probe.cli.argtypes import nonneg_int, positive_int
from stego_probe.threads import add_threads_argument

#: --unpickler choices (kept here so that building the parser does not import torch).
UNPICKLERS = ("auto", "omegaconf", "stub")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``import-checkpoint`` and ``train-stego`` subcommands."""
    p = subparsers.add_parser(
        "import-checkpoint",
        help="import a released STEGO checkpoint (.ckpt) as a stego_probe head + probes",
        description=(
            "Read a released STEGO Lightning checkpoint, print its stored hyperparameters and "
            "write DIR/stego_head.pt (head, cluster and linear probe; load with StegoHead.load) "
            "and DIR/hyperparameters.json. The file is read without running code from it: only "
            "the classes a released checkpoint is made of (OmegaConf configs, Lightning "
            "AttributeDict, tensors, builtin containers) are admitted, any other is refused "
            "(see docs/stego.md). The ViT weights in the checkpoint are not used: apply the "
            "head to a feature store of the matching backbone."
        ),
    )
    p.add_argument("ckpt", help="the .ckpt file")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--unpickler",
        choices=list(UNPICKLERS),
        default="auto",
        help="how the OmegaConf config is rebuilt, all safe: auto (default): the real classes "
        "when omegaconf is installed, else inert stand-ins read as plain dicts; omegaconf: "
        "require omegaconf; stub: always the stand-ins",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read the file with plain pickle, which runs any code it contains: only for "
        "checkpoints you made or otherwise trust, if the safe reader refuses one of its classes",
    )
    p.set_defaults(func=_cmd_import)

    p = subparsers.add_parser(
        "train-stego",
        help="train a STEGO head (and its probes) on a feature store",
        description=(
            "Train the STEGO head on the stored tokens of a training split (no backbone "
            "forward), with the per-dataset hyperparameters of --preset, validating on "
            "--val-store every --val-every steps. Writes the head (best-by-val and last states, "
            "history) to --out and prints the selected step and its validation metrics."
        ),
    )
    p.add_argument("--train-store", required=True, help="training feature store")
    p.add_argument("--val-store", default=None, help="validation feature store (recommended)")
    p.add_argument(
        "--preset",
        required=True,
        help="cocostuff27, cityscapes27, potsdam3 or synthetic (see docs/stego.md)",
    )
    p.add_argument(
        "--dim", type=positive_int, default=None, help="code width D (default: the preset's)"
    )
    p.add_argument(
        "--steps", type=positive_int, default=None, help="training steps (default: preset)"
    )
    p.add_argument("--batch-size", type=positive_int, default=None, help="images per step (preset)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random_state, >= 0 (0)")
    p.add_argument(
        "--val-every",
        type=positive_int,
        default=None,
        help="validation cadence in steps (preset: 100)",
    )
    p.add_argument(
        "--select",
        choices=["best_val_cluster_miou", "last"],
        default="best_val_cluster_miou",
        help="state used by the saved head (both are stored; default best_val_cluster_miou, "
        "the last state without --val-store)",
    )
    p.add_argument("--knn-cache", default=None, help="directory caching KNN tables")
    p.add_argument(
        "--knn-self-rank0",
        action="store_true",
        help="reference KNN table keeping each image at rank 0 (parity, Q8)",
    )
    p.add_argument(
        "--knn-dropout",
        type=float,
        default=0.0,
        help="channel dropout on the KNN features (0: eval mode; 0.1: reference parity, Q5)",
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu)")
    add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--out", required=True, help="output file (.pt)")
    p.set_defaults(func=_cmd_train)


def _cmd_import(args: argparse.Namespace) -> int:
    from stego_probe.fileio import atomic_write
    from stego_probe.projections.stego.checkpoint import format_hyperparameters, import_checkpoint

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory; expected an output folder")
    head, hparams = import_checkpoint(args.ckpt, unpickler=args.unpickler, trust=args.trust_pickle)
    print(format_hyperparameters(hparams))
    out.mkdir(parents=True, exist_ok=True)
    head.save(out / "stego_head.pt")
    atomic_write(out / "hyperparameters.json", json.dumps(hparams, indent=2, sort_keys=True))
    print(
        f"wrote {out / 'stego_head.pt'} (D={head.dim}, C={head.n_features_in_}, "
        f"K={head.n_classes_}) and {out / 'hyperparameters.json'}"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from stego_probe.cli.store import cli_device, open_store
    from stego_probe.evaluate import check_stores
    from stego_probe.projections.stego import StegoHead
    from stego_probe.threads import limit, store_workload

    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: is a directory; expected a head file path (.pt)")
    cli_device(args.device)
    train = open_store(args.train_store, "--train-store")
    val = open_store(args.val_store, "--val-store") if args.val_store else None
    if val is not None:
        check_stores(train, val)  # same backbone / weights / dataset / classes
    head = StegoHead(  # flags left out (None) keep the preset's value
        preset=args.preset,
        dim=args.dim,
        steps=args.steps,
        batch_size=args.batch_size,
        val_every=args.val_every,
        knn_self_rank0=args.knn_self_rank0,
        knn_dropout=args.knn_dropout,
        random_state=args.seed,
        select=args.select,
        device=args.device,
        progress=not args.no_progress,
    )
    with limit(args.threads, store_workload(train)):  # "auto": by the store's token size
        head.fit(train, val_store=val, knn_cache_dir=args.knn_cache)
    path = head.save(args.out)
    row = next((r for r in head.history_ if r["step"] == head.selected_step_), {})
    metrics = {k: round(v, 2) for k, v in row.items() if k.startswith("val_")}
    print(f"selected {head.selected_} (step {head.selected_step_}): {metrics or 'no validation'}")
    print(f"wrote {path}")
    return 0
