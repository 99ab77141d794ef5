"""``stego-probe backbones``: list the backbone registry."""

from __future__ import annotations

import argparse
import json
import sys

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


def describe(name: str, model_kwargs: dict | None = None) -> dict:
    """What stego_probe reads from a timm-based backbone's model, without loading weights.

    Args:
        name: ``timm:<model name>`` or a DINO / DINOv2 registry name.
        model_kwargs: extra ``timm.create_model`` arguments.

    Returns:
        ``{"backbone": name, "timm_name": ..., **model_facts}`` (see
        :func:`stego_probe.backbones.vit.model_facts`); the architecture is built on the
        ``meta`` device, so this is instant and needs neither weights nor network.

    Raises:
        KeyError: unknown name, or a registry entry that is not timm-based.
    """
    import torch

    from stego_probe.backbones.registry import TIMM_PREFIX
    from stego_probe.backbones.vit import VIT_ENTRIES, create_timm_model, model_facts

    if name.startswith(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX) :]
    elif name in VIT_ENTRIES:
        timm_name = VIT_ENTRIES[name].timm_name
    else:
        raise KeyError(
            f"--describe: {name!r} is not a timm-based backbone (use timm:<model name> or a "
            f"DINO / DINOv2 entry: {', '.join(VIT_ENTRIES)})"
        )
    with torch.device("meta"):
        model = create_timm_model(timm_name, model_kwargs)
    return {"backbone": name, "timm_name": timm_name, **model_facts(model)}


def run(args: argparse.Namespace) -> int:
    """Print the registry (optionally one kind) as a table or JSON, or ``--describe`` one."""
    from stego_probe.backbones import list_backbones

    if args.describe:
        try:
            facts = describe(args.describe)
        except KeyError as e:
            print(f"stego-probe backbones: {e.args[0]}", file=sys.stderr)
            return 2
        width = max(len(k) for k in facts)
        text = "\n".join(f"{k:<{width}}  {v}" for k, v in facts.items())
        print(json.dumps(facts, indent=2) if args.json else text)
        return 0
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
        "--describe",
        metavar="NAME",
        help=(
            "print what is read from a timm-based backbone's model (prefix tokens, patch size, "
            "final norm, RoPE, input size, mean/std, licence) without loading weights, e.g. "
            "timm:vit_small_patch16_dinov3.lvd1689m"
        ),
    )
    p.add_argument(
        "--kind",
        choices=["dino", "dinov2", "descriptor", "timm", "extractor", "custom"],
        help="only list entries of this kind",
    )
    p.set_defaults(func=run)
