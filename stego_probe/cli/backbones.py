"""``stego-probe backbones``: list the backbone registry."""

from __future__ import annotations

import argparse
import json

COLUMNS = (
    ("name", "name"),
    ("patch_size", "patch"),
    ("embed_dim", "width"),
    ("weights", "weights file"),
    ("pos_interp", "pos_interp"),
    ("notes", "notes"),
)


def format_table(rows: list[dict]) -> str:
    """Plain-text table of :func:`stego_probe.backbones.list_backbones` rows."""
    cells = [[h for _, h in COLUMNS]]
    cells += [["" if r.get(k) is None else str(r.get(k)) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the registry (optionally one kind) as a table or JSON."""
    from stego_probe.backbones import list_backbones

    rows = list_backbones()
    if args.kind:
        rows = [r for r in rows if r.get("kind") == args.kind]
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def register(subparsers) -> None:
    """Add the ``backbones`` subcommand."""
    p = subparsers.add_parser(
        "backbones",
        help="list the available backbones (name, patch size, width, weights file)",
        description=(
            "List the backbone registry: DINO / DINOv2 ViTs with their official weight files, "
            "the offline 'descriptor', user-registered extractors, and 'timm:<model>' for any "
            "timm model. Weights are looked up in the torch hub cache "
            "(torch.hub.get_dir()/checkpoints) or passed with --weights to other commands."
        ),
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--kind",
        choices=["dino", "dinov2", "descriptor", "timm", "extractor", "custom"],
        help="only list entries of this kind",
    )
    p.set_defaults(func=run)
