"""``stego-probe sweep``: run or resume a methods x dims x seeds sweep from a preset."""

from __future__ import annotations

import argparse


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


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
            "resumes: finished points are skipped. Presets: synthetic, cocostuff27, "
            "cityscapes27, potsdam3 (or a YAML file)."
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
    p.add_argument("--methods", type=_strs, help="comma list, e.g. dino,pca,rp,stego")
    p.add_argument("--dims", type=_ints, help="comma list of D values, e.g. 3,6,12,24")
    p.add_argument("--seeds", type=_ints, help="comma list of seeds, e.g. 0,1,2")
    p.add_argument("--probes", type=_strs, help="comma list of kmeans,linear,cluster")
    p.add_argument("--mode", choices=["pixel", "token"], help="pixel (reference) or token (fast)")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local loop (default) or one Ray task per point (pip install 'stego-probe[ray]')",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from stego_probe.sweep import load_config, run_sweep, summary_table

    config = load_config(
        args.preset,
        {
            "data_root": args.data_root,
            "backbone": args.backbone,
            "weights": args.weights,
            "methods": args.methods,
            "dims": args.dims,
            "seeds": args.seeds,
            "probes": args.probes,
            "mode": args.mode,
            "device": args.device,
        },
    )
    df = run_sweep(config, args.out, executor=args.executor, progress=not args.no_progress)
    table = summary_table(df)
    if not table.empty:
        print(f"mIoU (%) mean ± std over seeds, {config.name}:")
        print(table.to_string())
    print(f"results: {args.out}/results.csv")
    return 0
