"""``stego-probe`` command line: thin argument parsing over the library.

Each submodule of :mod:`stego_probe.cli` owns one group of subcommands and exposes
``register(subparsers)``; the handlers it installs only parse arguments and call library
functions, so everything is one import away for notebook users.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Submodules that contribute subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "demo",
    "data",
    "backbones",
    "store",
    "evaluate",
    "sweep",
    "compare",
    "checkpoint",
    "figures",
]

#: Environment variable: set to 1 for the full traceback of an error (as ``--debug``).
DEBUG_ENV = "STEGO_PROBE_DEBUG"

#: Exceptions that carry a message for the user (printed as one ``error:`` line, exit 1);
#: anything else is a bug and keeps its traceback. FolderLockedError is a RuntimeError.
EXPECTED_ERRORS = (ValueError, OSError, KeyError, RuntimeError, ImportError)

#: What an interrupted command leaves behind and how to go on (``Ctrl-C``, exit 130).
RESUME_HINTS = {
    "extract": "finished blocks are kept; rerun the same command to resume",
    "prepare-crops": "finished crops are kept; rerun the same command to resume",
    "sweep": "finished points are kept in OUT/results.csv; rerun the same command to resume",
    "compare": "finished points are kept in OUT/results.csv; rerun the same command to resume",
    "evaluate": "rows already appended to --out are kept; rerun the same command to compute "
    "only the missing ones",
    "demo": "finished steps are kept; rerun the same command to resume",
}


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
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)",
    )
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
    """Run one ``stego-probe`` command; returns the exit status.

    Errors the library raises with a message for the user (:data:`EXPECTED_ERRORS`) print one
    line ``stego-probe COMMAND: error: MESSAGE`` and return 1; Ctrl-C prints one line saying
    what was kept and how to resume (:data:`RESUME_HINTS`) and returns 130. With ``--debug``
    (or ``STEGO_PROBE_DEBUG=1``) both re-raise with the traceback. Bad arguments exit with
    argparse's status 2.
    """
    from stego_probe.threads import limit, passive_wait

    passive_wait()  # before torch / FAISS start OpenMP (the CLI modules import them)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = bool(args.debug) or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    try:
        # --threads of the long-running commands (stego_probe.threads.add_threads_argument)
        with limit(getattr(args, "threads", None), getattr(args, "threads_workload", "small")):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        hint = RESUME_HINTS.get(args.command, "rerun the command to start it again")
        print(f"\nstego-probe {args.command}: interrupted: {hint}", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as e:
        if debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"stego-probe {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
