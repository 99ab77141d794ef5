"""``--backbone-kwargs`` and ``--layer``: extra :func:`stego_probe.backbones.get_backbone`
arguments on the command line, shared by ``extract``, ``sweep``, ``demo`` and the
``experiments/`` scripts. Both end up in ``args.backbone_kwargs`` (``--layer N`` is
``layer=N`` there), so every command passes them on unchanged.

Torch-free (importing it costs nothing), so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OPTION = "--backbone-kwargs"
LAYER_OPTION = "--layer"

#: get_backbone() arguments that have their own command-line option.
RESERVED = {"name": "--backbone", "weights": "--weights", "device": "--device"}

HELP = (
    "extra get_backbone() arguments: a JSON object, e.g. "
    '\'{"pretrained": false, "seed": 1, "model_kwargs": {"depth": 2}}\', or KEY=VALUE,... '
    "with values parsed as JSON when possible and dotted keys nesting, e.g. "
    "'pretrained=false,seed=1,model_kwargs.depth=2', or @file.json. pretrained=false builds "
    "random weights drawn with seed (default 0), recorded in provenance with their fingerprint"
)


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets / braces / quotes: ``"a=[1,2],b=3"`` -> 2 items."""
    items, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [t.strip() for t in items if t.strip()]


def parse_backbone_kwargs(text: str | None, option: str = OPTION) -> dict:
    """Parse a ``--backbone-kwargs`` value into ``get_backbone(**kwargs)`` keywords.

    Accepted forms: a JSON object (``'{"pretrained": false, "seed": 1}'``); ``@path`` to a
    JSON file; or ``KEY=VALUE`` items separated by commas, values parsed as JSON when possible
    (``5``, ``0.5``, ``false``, ``null``, ``[64, 64]``) and kept as strings otherwise, dotted
    keys nesting (``model_kwargs.depth=2`` -> ``{"model_kwargs": {"depth": 2}}``) and ``-`` in
    keys read as ``_``. An empty value gives ``{}``.

    Args:
        text: the option value.
        option: the option name used in error messages.

    Returns:
        a dict of keyword arguments.

    Raises:
        ValueError: malformed JSON / items, a non-object JSON value, or a key that has its own
            option (``name``, ``weights``, ``device``); the message names ``option``.

    Examples:
        >>> parse_backbone_kwargs('{"pretrained": false, "seed": 1}')
        {'pretrained': False, 'seed': 1}
        >>> parse_backbone_kwargs("pretrained=false,seed=1,model_kwargs.depth=2")
        {'pretrained': False, 'seed': 1, 'model_kwargs': {'depth': 2}}
    """
    text = (text or "").strip()
    if not text:
        return {}
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            text = path.read_text()
        except OSError as e:
            raise ValueError(f"{option}: cannot read {path}: {e}") from e
        source, from_file = f"file {path}", True
    else:
        source, from_file = repr(text), False
    if from_file or text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{option}: invalid JSON in {source}: {e}") from e
        if not isinstance(value, dict):
            raise ValueError(
                f"{option}: expected a JSON object, got {type(value).__name__} in {source}"
            )
    else:
        value = {}
        for item in _split_top_level(text):
            key, sep, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            parts = key.split(".")
            if not sep or not all(parts):
                raise ValueError(
                    f"{option}: expected a JSON object or KEY=VALUE,... items, got {item!r} "
                    f"in {source}"
                )
            try:
                parsed = json.loads(raw)
            except json.JSONDecodeError:
                parsed = raw.strip()
            node = value
            for p in parts[:-1]:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise ValueError(f"{option}: {key!r} nests into a non-object value")
            node[parts[-1]] = parsed
    clash = sorted(k for k in value if k in RESERVED)
    if clash:
        hints = ", ".join(f"{k!r} -> {RESERVED[k]}" for k in clash)
        raise ValueError(f"{option}: {hints} has its own option; do not pass it here")
    return value


def backbone_kwargs_arg(text: str) -> dict:
    """``argparse`` ``type=`` for ``--backbone-kwargs`` (errors become usage errors)."""
    try:
        return parse_backbone_kwargs(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"{OPTION}: ")) from e


LAYER_HELP = (
    "use the output of this transformer block (0-based; negative counts from the end, -1 = "
    "last block) instead of the final features, through the model's final norm; timm ViTs and "
    "the DINO / DINOv2 entries. Same as --backbone-kwargs layer=N. Default: the final output"
)


def _layer_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer block index (e.g. 8 or -4), got {text!r}"
        ) from None


class _BackboneKwargsAction(argparse.Action):
    """Store ``--backbone-kwargs``, keeping a ``--layer`` given before it."""

    def __call__(self, parser, namespace, values, option_string=None):
        kwargs = dict(values)
        layer = getattr(namespace, "layer", None)
        if layer is not None:
            if kwargs.get("layer", layer) != layer:
                parser.error(
                    f"{LAYER_OPTION} {layer} and {OPTION} layer={kwargs['layer']!r} disagree"
                )
            kwargs["layer"] = layer
        setattr(namespace, self.dest, kwargs)


class _LayerAction(argparse.Action):
    """Store ``--layer N`` as ``layer=N`` in ``args.backbone_kwargs`` (and ``args.layer``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        kwargs = dict(getattr(namespace, "backbone_kwargs", None) or {})
        previous = getattr(namespace, "layer", None)
        if "layer" in kwargs and previous is None and kwargs["layer"] != values:
            parser.error(f"{LAYER_OPTION} {values} and {OPTION} layer={kwargs['layer']!r} disagree")
        kwargs["layer"] = values
        namespace.backbone_kwargs = kwargs
        setattr(namespace, self.dest, values)


def add_backbone_kwargs_argument(parser) -> None:
    """Add ``--backbone-kwargs JSON`` (default ``{}``) and ``--layer N`` (default: the final
    output) to an ``argparse`` parser or group; both land in ``args.backbone_kwargs``."""
    parser.add_argument(
        OPTION,
        type=backbone_kwargs_arg,
        default={},
        metavar="JSON|K=V,...",
        action=_BackboneKwargsAction,
        help=HELP,
    )
    parser.add_argument(
        LAYER_OPTION,
        type=_layer_int,
        default=None,
        metavar="N",
        action=_LayerAction,
        help=LAYER_HELP,
    )
