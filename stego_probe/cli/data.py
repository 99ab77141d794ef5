"""``stego-probe datasets`` and ``stego-probe prepare-crops``: thin wrappers over
:mod:`stego_probe.data`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``datasets`` and ``prepare-crops`` subcommands."""
    p = subparsers.add_parser(
        "datasets",
        help="list the registered datasets",
        description=(
            "Print every registered dataset name with a one-line description. Nothing is "
            "downloaded: see docs/datasets.md for the layout each one expects under --data-root."
        ),
    )
    p.set_defaults(func=_cmd_datasets)

    p = subparsers.add_parser(
        "prepare-crops",
        help="write the five-crop training folders (cropped/<name>_five_crop_<ratio>/)",
        description=(
            "Cut every image of a split into its five crops (TL, TR, BL, BR, centre; crop k of "
            "image i at index 5i+k) and write them under DATA_ROOT/cropped/ in the layout of the "
            "reference's crop_datasets.py, labels stored +1 as uint8 PNG. Resumable."
        ),
    )
    p.add_argument("--dataset", required=True, help="registry name, e.g. cocostuff27")
    p.add_argument("--data-root", required=True, help="data root holding the dataset")
    p.add_argument("--split", default="train", help="split to crop (default: train)")
    p.add_argument(
        "--dataset-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra dataset option, as in `extract` (repeatable; e.g. n_classes=5 for folder)",
    )
    p.add_argument("--ratio", type=float, default=0.5, help="crop side / image side (0.5)")
    p.add_argument(
        "--storage",
        choices=["png", "jpeg75"],
        default="png",
        help="png: lossless (default); jpeg75: the reference's JPEG quality 75 (parity)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_prepare_crops)


def _cmd_datasets(args: argparse.Namespace) -> int:
    from stego_probe.data import dataset_description, list_datasets

    names = list_datasets()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {dataset_description(name)}")
    return 0


def _cmd_prepare_crops(args: argparse.Namespace) -> int:
    from stego_probe.cli.store import parse_key_values
    from stego_probe.data import get_dataset
    from stego_probe.data.crops import prepare_crops

    kwargs = parse_key_values(args.dataset_arg)
    dataset = get_dataset(args.dataset, root=args.data_root, split=args.split, **kwargs)
    out = prepare_crops(
        dataset,
        args.data_root,
        ratio=args.ratio,
        storage=args.storage,
        progress=not args.no_progress,
    )
    print(f"wrote {5 * len(dataset)} crops of {args.dataset}/{args.split} to {out}")
    return 0
