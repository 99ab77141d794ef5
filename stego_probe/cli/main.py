"""``stego-probe`` command line: thin argument parsing over the library.

Each submodule of :mod:`stego_probe.cli` owns one group of subcommands and exposes
``register(subparsers)``; the handlers it installs only parse arguments and call library
functions, so everything is one import away for notebook users.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Submodules that contribute subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "demo",
    "data",
    "backbones",
    "store",
    "evaluate",
    "sweep",
    "checkpoint",
    "figures",
]


def build_parser() -> argparse.ArgumentParser:
    from stego_probe import __version__

    parser = argparse.ArgumentParser(
        prog="stego-probe",
        description=(
            "Analyse what unsupervised segmentation heads (STEGO) do to self-supervised ViT "
            "features: extract features into a store, fit projections (STEGO head, PCA, random "
            "projection) at any dimension, probe them with k-means / cluster / linear probes, "
            "and draw the paper's figures."
        ),
    )
    parser.add_argument("--version", action="version", version=f"stego-probe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"stego_probe.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"stego_probe.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from stego_probe.threads import limit, passive_wait

    passive_wait()  # before torch / FAISS start OpenMP (the CLI modules import them)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        # --threads of the long-running commands (stego_probe.threads.add_threads_argument)
        with limit(getattr(args, "threads", None), getattr(args, "threads_workload", "small")):
            return int(args.func(args) or 0)
    except (ValueError, OSError, KeyError, RuntimeError, ImportError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"stego-probe {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
