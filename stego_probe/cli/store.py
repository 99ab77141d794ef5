"""``stego-probe extract`` and ``stego-probe info``: thin wrappers over :mod:`stego_probe.extract`
and :class:`stego_probe.store.FeatureStore`."""

from __future__ import annotations

import argparse
import json

from stego_probe.cli.argtypes import nonneg_int_or_auto
from stego_probe.cli.backbone_options import add_backbone_kwargs_argument
from stego_probe.threads import add_threads_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``extract``, ``info`` and ``verify`` subcommands."""
    p = subparsers.add_parser(
        "extract",
        help="extract backbone patch tokens of a dataset split into a feature store",
        description=(
            "Run a frozen backbone over every image of a dataset split and store its patch "
            "tokens (float16), the labels at the input resolution and the sample ids in a zarr "
            "feature store (a directory or an fsspec URL). Resumable: rerunning the same "
            "command finishes an interrupted extraction; a store made from other inputs is "
            "refused."
        ),
    )
    p.add_argument("--dataset", required=True, help="dataset registry name, e.g. cocostuff27")
    p.add_argument("--data-root", default=None, help="data root holding the dataset")
    p.add_argument("--split", required=True, help="split, e.g. train or val")
    p.add_argument(
        "--dataset-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra dataset option, repeatable (e.g. n_classes=5); values are parsed as JSON "
        "when possible (5, 0.5, true, null), else kept as strings",
    )
    p.add_argument("--backbone", required=True, help="backbone registry name, e.g. dino_vits8")
    p.add_argument("--weights", default=None, help="local weight file for the backbone")
    add_backbone_kwargs_argument(p)
    p.add_argument("--res", type=int, default=224, help="input side in pixels (224; eval: 320)")
    p.add_argument(
        "--crop",
        choices=["center", "five", "none"],
        default="center",
        help="center: shorter side -> res + centre crop (default); five: five crops per image "
        "(ratio 0.5), each centre-transformed; none: square resize",
    )
    p.add_argument(
        "--flipped",
        action="store_true",
        help="also store tokens of the flipped images (evaluation-mode flip average)",
    )
    p.add_argument(
        "--float32",
        action="store_true",
        help="store tokens as float32 (parity runs; default float16, half the disk)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (16)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--num-workers",
        type=nonneg_int_or_auto,
        default="auto",
        help="DataLoader worker processes decoding the images: N, or auto (default: 0 on the "
        "CPU, where the forward uses every core; up to 8 on a GPU, so it is not kept waiting)",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument(
        "--chunk-images", type=int, default=32, help="images per store chunk for a new store"
    )
    p.add_argument(
        "--raw-labels",
        action="store_true",
        help="store labels uncompressed (a new store): labels read without zstd decoding "
        "(2.2x faster alone, a few %% on whole evaluation reads) for H*W*2 more bytes per "
        "image (+8-17%% disk)",
    )
    p.add_argument("--overwrite", action="store_true", help="delete an existing store first")
    add_threads_argument(p, workload="large")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--store", required=True, help="store directory or fsspec URL")
    p.set_defaults(func=_cmd_extract)

    p = subparsers.add_parser(
        "info",
        help="summarise a feature store",
        description=(
            "Print what a feature store holds (dataset / split, images, token grid and width, "
            "label shape, completeness, backbone, weights sha256, resolution, crop, classes, "
            "size on disk). Reads only; incomplete stores are summarised too."
        ),
    )
    p.add_argument("store", help="store directory or fsspec URL")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_info)

    p = subparsers.add_parser(
        "verify",
        help="check every block of a feature store; --repair re-extracts the damaged ones",
        description=(
            "Read every block of a feature store and check it: per-block checksums, missing "
            "and undecodable chunks, written markers, and the layout attributes against the "
            "arrays. Prints the blocks checked and the damaged blocks with their image ranges; "
            "exits 1 when anything is damaged. --repair marks the damaged blocks not written "
            "and re-extracts exactly them, rebuilding the dataset and backbone from the "
            "store's provenance; if they cannot be rebuilt it prints the `stego-probe extract` "
            "command that finishes the store."
        ),
    )
    p.add_argument("store", help="store directory or fsspec URL")
    p.add_argument(
        "--repair", action="store_true", help="re-extract the damaged blocks (only those)"
    )
    p.add_argument("--data-root", default=None, help="--repair: the dataset root, if it has moved")
    p.add_argument("--device", default="auto", help="--repair: auto (default), cpu, cuda[:N]")
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="--repair: images per forward pass (16; use the extraction's value)",
    )
    p.add_argument(
        "--num-workers",
        type=nonneg_int_or_auto,
        default="auto",
        help="--repair: DataLoader workers, N or auto (default; as for extract)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_threads_argument(p, workload="large")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_cmd_verify)


def parse_key_values(items: list[str], option: str = "--dataset-arg") -> dict:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values parsed as JSON when possible).

    Examples:
        >>> parse_key_values(["n_classes=5", "name=abc", "flag=true"])
        {'n_classes': 5, 'name': 'abc', 'flag': True}
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"{option}: expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def open_store(path: str, option: str):
    """:meth:`FeatureStore.open` whose errors name the command-line option (``--val-store``)."""
    from stego_probe.store import FeatureStore

    try:
        return FeatureStore.open(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{option}: {e}") from e
    except ValueError as e:
        raise ValueError(f"{option}: {e}") from e


def cli_device(device: str, option: str = "--device"):
    """``--device`` value -> ``torch.device``; a CUDA device on a machine without CUDA is a
    ``ValueError`` naming the option (instead of torch's driver message)."""
    from stego_probe.device import resolve_device

    return resolve_device(device, option=option)


def _cmd_extract(args: argparse.Namespace) -> int:
    from stego_probe.backbones import get_backbone
    from stego_probe.data import get_dataset
    from stego_probe.extract import extract

    kwargs = parse_key_values(args.dataset_arg)
    dataset = get_dataset(args.dataset, root=args.data_root, split=args.split, **kwargs)
    device = cli_device(args.device)
    backbone = get_backbone(
        args.backbone, weights=args.weights, device=device, **args.backbone_kwargs
    )
    store = extract(
        dataset,
        backbone,
        args.store,
        res=args.res,
        crop=args.crop,
        batch_size=args.batch_size,
        device=device,
        flipped=args.flipped,
        token_dtype="float32" if args.float32 else "float16",
        num_workers=args.num_workers,
        progress=not args.no_progress,
        limit=args.limit,
        chunk_images=args.chunk_images,
        compress_labels=not args.raw_labels,
        overwrite=args.overwrite,
    )
    h, w = store.grid
    print(
        f"feature store {store.path}: {store.n_images} images, tokens {h}x{w}x{store.dim}, "
        f"complete={store.complete}"
    )
    return 0


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _license_text(info: dict) -> str:
    lic = info.get("license")
    if lic:
        return f"{lic} (as timm lists it for these weights; check the model card's terms)"
    return "not recorded (random weights, or none listed by timm)"


def _layer_text(info: dict) -> str:
    if info.get("layer") is None:
        return "final output"
    return f"{info['layer']} (output of block {info.get('layer_index')}, 0-based, final norm)"


def backbone_summary(prov: dict) -> dict:
    """``license`` and ``layer`` / ``layer_index`` of a store's backbone (``backbone_info``)."""
    bb = prov.get("backbone_info") if isinstance(prov.get("backbone_info"), dict) else {}
    return {k: bb.get(k) for k in ("license", "layer", "layer_index")}


def _compression_text(info: dict) -> str:
    """Which arrays are zstd-compressed, e.g. ``tokens raw, labels zstd``."""
    return ", ".join(
        f"{what} {'zstd' if info.get(key, default) else 'raw'}"
        for what, key, default in (
            ("tokens", "compress_tokens", False),
            ("labels", "compress_labels", True),
        )
    )


def format_info(info: dict) -> str:
    """Human-readable multi-line rendering of :meth:`FeatureStore.info`."""
    classes = info.get("class_names")
    if classes:
        shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
        classes = f"{info.get('n_classes')} ({shown})"
    else:
        classes = str(info.get("n_classes"))
    rows = [
        ("store", info["path"]),
        ("dataset", f"{info.get('dataset')} / {info.get('split')}"),
        ("images", info["n_images"]),
        ("grid", "x".join(map(str, info["grid"]))),
        ("dim", info["dim"]),
        ("label shape", "x".join(map(str, info["label_shape"]))),
        (
            "complete",
            f"{info['complete']} ({info['blocks_written']}/{info['n_blocks']} blocks written)",
        ),
        ("backbone", info.get("backbone")),
        ("weights", info.get("weights")),
        ("weights sha256", info.get("weights_sha256")),
        ("license", _license_text(info)),
        ("layer", _layer_text(info)),
        ("res", info.get("res")),
        ("crop", info.get("crop")),
        ("flipped tokens", info.get("flipped")),
        ("compression", _compression_text(info)),
        ("classes", classes),
        ("size on disk", _human_bytes(info["size_bytes"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _cmd_info(args: argparse.Namespace) -> int:
    from stego_probe.store import FeatureStore

    store = FeatureStore.open(args.store, allow_incomplete=True)
    info = {**store.info(), **backbone_summary(store.provenance)}
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from stego_probe.verify import repair_store, verify_store

    progress = not args.no_progress and not args.json
    if not args.repair:
        report = verify_store(args.store, progress=progress)
        print(json.dumps(report.to_json(), indent=2) if args.json else report.summary())
        return 0 if report.ok else 1
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size: expected a positive int, got {args.batch_size}")
    device = cli_device(args.device) if args.device != "auto" else "auto"
    result = repair_store(
        args.store,
        data_root=args.data_root,
        device=device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=progress,
    )
    if args.json:
        out = {
            "before": result.before.to_json(),
            "invalidated": result.invalidated,
            "reextracted": result.reextracted,
            "after": None if result.after is None else result.after.to_json(),
            "reason": result.reason,
            "command": None if result.reextracted else result.command,
            "ok": result.ok,
        }
        print(json.dumps(out, indent=2))
        return 0 if result.ok else 1
    print(result.before.summary())
    if not result.invalidated:
        return 0 if result.ok else 1
    blocks = ", ".join(map(str, result.invalidated))
    if result.reextracted:
        print(f"re-extracted blocks {blocks}")
        print(result.after.summary())
    else:
        print(
            f"blocks {blocks} are marked not written, but the inputs could not be rebuilt from "
            f"the provenance ({result.reason}); finish the store with:\n  {result.command}\n"
            f"(extract recomputes only the blocks not written; adjust --data-root / "
            f"--dataset-arg / --weights if they differ)"
        )
    return 0 if result.ok else 1
