"""``stego-probe compare``: sweep several backbones from a preset and rank them.

Torch-free at import (the library is imported by the handler), so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse

from stego_probe.cli.backbone_options import parse_backbone_kwargs
from stego_probe.threads import add_threads_argument


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated backbone names, got {text!r}")
    return names


def _named(option: str):
    """``NAME=VALUE`` (split at the first ``=``; a backbone name has none)."""

    def parse(text: str) -> tuple[str, str]:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"{option}: expected NAME=VALUE, got {text!r}")
        return name.strip(), value

    return parse


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="sweep several backbones (feature extractors) and rank them",
        description=(
            "Run one sweep of a preset over several backbones (--backbones a,b,c): every "
            "backbone gets its own stores and projections, all rows go to OUT/results.csv "
            "(backbone column). Prints the ranking (best k-means mIoU over D and method, "
            "linear mIoU at full width, STEGO silhouette at its best D; mean ± std over "
            "seeds), writes it to OUT/ranking.csv and draws OUT/compare.png (mIoU over D / "
            "width, one line per method and backbone). Re-running resumes; adding a backbone "
            "runs only its points. See docs/compare.md."
        ),
    )
    p.add_argument("--preset", required=True, help="preset name or YAML file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--backbones",
        type=_names,
        help="comma list of backbone names (see `stego-probe backbones`); default: the "
        "preset's 'backbones' (or its single 'backbone')",
    )
    p.add_argument(
        "--kwargs",
        dest="bb_kwargs",
        action="append",
        type=_named("--kwargs"),
        default=[],
        metavar="NAME=KWARGS",
        help="get_backbone() arguments of one backbone (repeatable), in the --backbone-kwargs "
        "syntax, e.g. 'timm:vit_small_patch16_224=pretrained=false,model_kwargs.depth=2'",
    )
    p.add_argument(
        "--weights",
        action="append",
        type=_named("--weights"),
        default=[],
        metavar="NAME=PATH",
        help="local weights file of one backbone (repeatable)",
    )
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first (repeatable): a module that registers a custom "
        "extractor (register_extractor) when imported; a dotted name importable from the "
        "current folder, or a path to a .py file",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE,...",
        help="config overrides in the --backbone-kwargs syntax, dotted keys nesting, e.g. "
        "'dims=[3,12],seeds=[0],dataset_kwargs.n_images=12,train.res=48,val.res=48'",
    )
    p.add_argument("--data-root", help="folder holding the prepared dataset")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument(
        "--x",
        choices=["fraction", "dim"],
        default="fraction",
        help="x axis of the figure: D / backbone width (default) or D",
    )
    add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def import_modules(specs: list[str]) -> None:
    """Import each module of ``--import`` (a dotted name, found from the current folder too,
    or a ``.py`` path), so that the extractors it registers are known."""
    import importlib
    import importlib.util
    import os
    import sys
    from pathlib import Path

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for spec in specs:
        if spec.endswith(".py"):
            path = Path(spec)
            if not path.is_file():
                raise FileNotFoundError(f"--import {spec}: no such file")
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[path.stem] = module
            mod_spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(spec)
            except ModuleNotFoundError as e:
                raise ImportError(f"--import {spec}: {e}") from None


def compare_config(args):
    """The sweep config of a ``compare`` command line."""
    from stego_probe.sweep import load_config

    over = parse_backbone_kwargs(args.overrides, "--set") if args.overrides else {}
    over.update({k: v for k, v in (("data_root", args.data_root), ("device", args.device)) if v})
    kwargs = {name: parse_backbone_kwargs(text, "--kwargs") for name, text in args.bb_kwargs}
    weights = dict(args.weights)
    if args.backbones:
        unknown = sorted((set(kwargs) | set(weights)) - set(args.backbones))
        if unknown:
            raise ValueError(f"--kwargs / --weights name backbones not in --backbones: {unknown}")
        over["backbones"] = [
            {"name": n, "weights": weights.get(n), "kwargs": kwargs.get(n, {})}
            for n in args.backbones
        ]
    elif kwargs or weights:
        raise ValueError("--kwargs / --weights need --backbones")
    return load_config(args.preset, over)


def run(args) -> int:
    import_modules(args.imports)
    from pathlib import Path

    from stego_probe.compare import format_ranking, rank_backbones
    from stego_probe.plots import plot_metric_over_dims
    from stego_probe.sweep import SweepError, run_sweep

    config = compare_config(args)
    failed = None
    try:
        df = run_sweep(config, args.out, progress=not args.no_progress, threads=args.threads)
    except SweepError as e:  # rank the finished points, then exit 1
        df, failed = e.results, e
    names = [e["name"] for e in config.backbone_entries()]
    df = df[df["backbone"].isin(names)]  # a backbone dropped from the list keeps its rows
    out = Path(args.out)
    table = rank_backbones(df)
    table.to_csv(out / "ranking.csv", index=False)
    print(f"ranking of {len(table)} backbones, {config.name}:")
    print(format_ranking(table))
    probes = [p for p in ("linear", "kmeans", "cluster") if p in config.probes]
    fig = plot_metric_over_dims(df, probe_rows=probes, hue="backbone", x=args.x)
    fig.savefig(out / "compare.png", dpi=120)
    print(f"results: {out / 'results.csv'}\nranking: {out / 'ranking.csv'}")
    print(f"figure: {out / 'compare.png'}")
    if failed is not None:
        raise failed
    return 0
