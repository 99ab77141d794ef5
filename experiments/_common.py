"""Shared plumbing of the experiment scripts: the start banner, common arguments, per-dataset
sweep configs and shared feature stores.

Like facebookresearch/dino's scripts, every experiment prints the git SHA of the checkout and its
sorted arguments before it starts, so a log says exactly what produced it. Nothing here analyses
data: each helper turns command-line arguments into library calls (:mod:`stego_probe.sweep`,
:mod:`stego_probe.extract`); the analyses the scripts print live in the library
(:mod:`stego_probe.published`, :mod:`stego_probe.released`, :mod:`stego_probe.summaries`,
:func:`stego_probe.results.done_keys`).

Imports of torch / the library happen inside the functions, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from stego_probe.cli.backbone_options import add_backbone_kwargs_argument
from stego_probe.published import PAPER_DATASETS

if TYPE_CHECKING:
    import pandas as pd

#: Default folder of the Figure 4 sweeps; the other scripts share its feature stores.
SWEEP_ROOT = "runs/figure4"


# ---------------------------------------------------------------------------------- banner


def begin(args: argparse.Namespace, name: str) -> None:
    """Print the experiment name, the git SHA and the sorted arguments (one per line), then
    apply an explicit ``--threads`` for the rest of the script
    (:func:`stego_probe.threads.set_num_threads`); ``auto`` leaves the choice to the thread
    policy of each library call (docs/threads.md)."""
    from stego_probe import __version__
    from stego_probe.provenance import git_sha
    from stego_probe.threads import set_num_threads

    print(f"{name} (stego_probe {__version__})")
    print(f"git:\n  {git_sha(Path(__file__).resolve().parent) or 'unknown (not a git checkout)'}")
    print("\n".join(f"{k}: {v}" for k, v in sorted(vars(args).items())))
    print(flush=True)
    # "auto" is applied per call by the library's entry points (1 thread for small-tensor work,
    # all cores for backbone forwards and ViT-sized stores); pinning the whole process to the
    # small-work count would also slow the scripts' own large calls (e.g. Figure 3's PCA fit).
    if args.threads != "auto":
        set_num_threads(args.threads)


# ---------------------------------------------------------------------------------- arguments


def csv_list(text: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def int_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    try:
        return [int(t) for t in csv_list(text)]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def datasets_arg(text: str) -> list[str]:
    """``--datasets``: a comma list of preset names (the paper's three by default)."""
    names = csv_list(text)
    if not names:
        raise argparse.ArgumentTypeError("--datasets: expected at least one dataset")
    return names


def json_dict(text: str) -> dict:
    """A JSON object given on the command line (or ``@file.json``)."""
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def make_parser(
    name: str, description: str, *, sweep: bool = False, figures: bool = True
) -> argparse.ArgumentParser:
    """The arguments every experiment shares (defaults = the paper protocol, PROTOCOL §7.1).

    Args:
        name: the experiment (default ``--out runs/<name>`` and ``--figures figures/<name>``).
        description: what the script reproduces.
        sweep: also add the sweep-grid options (``--methods``, ``--dims``, ``--probes``,
            ``--mode``, ``--executor``).
        figures: add ``--figures`` and ``--fmt``.
    """
    from stego_probe.threads import add_threads_argument, passive_wait

    passive_wait()  # OMP_WAIT_POLICY=PASSIVE, before the script imports torch / FAISS
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_argument_group("data and backbone (defaults: the paper, PROTOCOL §7.1)")
    g.add_argument(
        "--datasets",
        type=datasets_arg,
        default=list(PAPER_DATASETS),
        help="comma list of presets: cocostuff27, cityscapes27, potsdam3 (default: all three)",
    )
    g.add_argument(
        "--data-root",
        default=None,
        help="folder holding cocostuff/, cityscapes/, potsdam/ (as prepared for STEGO)",
    )
    g.add_argument(
        "--backbone",
        default=None,
        help="override the presets' backbones (ViT-B/8 for CocoStuff / Cityscapes, ViT-S/8 "
        "300 ep for Potsdam), e.g. dinov2_vitb14",
    )
    g.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="local weight file: PATH for every dataset, or BACKBONE=PATH / DATASET=PATH "
        "(repeatable); default: the torch hub cache, else the official URL",
    )
    add_backbone_kwargs_argument(g)  # the CLI's parser: JSON, KEY=VALUE,... or @file.json
    g.add_argument("--train-res", type=int, default=None, help="train store input side (224)")
    g.add_argument("--val-res", type=int, default=None, help="val store input side (320)")
    g.add_argument(
        "--limit", type=int, default=None, help="use only the first N images of each split"
    )
    g.add_argument("--batch-size", type=int, default=None, help="extraction / eval batch")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:N")
    add_threads_argument(g)

    g = p.add_argument_group("protocol overrides")
    g.add_argument("--seeds", type=int_list, default=None, help="comma list (preset: 0,1,2)")
    g.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps of the cluster / linear probes and of the STEGO head "
        "(preset: 7000; Potsdam 5000)",
    )
    g.add_argument(
        "--overrides",
        type=json_dict,
        default={},
        metavar="JSON",
        help="sweep-config fields merged into every preset (nested dicts merged key by key), "
        'e.g. \'{"probe_kwargs": {"kmeans": {"n_tokens": 100000}}}\' or @file.json',
    )
    if sweep:
        g = p.add_argument_group("sweep grid")
        g.add_argument("--methods", type=csv_list, default=None, help="dino,pca,rp,stego")
        g.add_argument("--dims", type=int_list, default=None, help="D values (preset's)")
        g.add_argument("--probes", type=csv_list, default=None, help="kmeans,linear,cluster")
        g.add_argument(
            "--mode", choices=["pixel", "token"], default=None, help="pixel (paper) or token"
        )
        g.add_argument("--executor", choices=["local", "ray"], default="local")

    g = p.add_argument_group("outputs")
    g.add_argument("--out", default=f"runs/{name}", help=f"run folder (runs/{name})")
    if figures:
        g.add_argument(
            "--figures", default=f"figures/{name}", help=f"figure folder (figures/{name})"
        )
        g.add_argument("--fmt", choices=["pdf", "png", "svg"], default="pdf", help="figure format")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def weights_for(entries: list[str], dataset: str, backbone: str) -> str | None:
    """The weight file for ``dataset`` / ``backbone`` from ``--weights`` entries."""
    plain, named = None, {}
    for entry in entries:
        key, sep, path = entry.partition("=")
        if sep and key and not Path(entry).exists():
            named[key] = path
        else:
            plain = entry
    return named.get(dataset) or named.get(backbone) or plain


# ---------------------------------------------------------------------------------- configs


def dataset_config(args: argparse.Namespace, dataset: str):
    """The sweep config of one dataset: its preset + the command-line overrides.

    Precedence: preset < explicit flags (``--backbone``, ``--steps`` ...) < ``--overrides`` JSON.

    Returns:
        a validated :class:`stego_probe.sweep.SweepConfig`.
    """
    from stego_probe.device import resolve_device
    from stego_probe.sweep import load_config, merge_dicts

    base = load_config(dataset)
    backbone = args.backbone or base.backbone
    device = str(resolve_device(args.device))
    over: dict = {
        "data_root": args.data_root,
        "backbone": args.backbone,
        "weights": weights_for(args.weights, dataset, backbone),
        "backbone_kwargs": args.backbone_kwargs or None,
        "seeds": args.seeds,
        "batch_size": args.batch_size,
        "device": device,
        "train": {"res": args.train_res, "limit": args.limit},
        "val": {"res": args.val_res, "limit": args.limit},
        # a concrete torch device for the torch-trained probes (table2.py calls evaluate_stores
        # directly) and the STEGO trainer
        "probe_kwargs": {"cluster": {"device": device}, "linear": {"device": device}},
        "method_kwargs": {"stego": {"device": device}},
    }
    for key in ("methods", "dims", "probes", "mode"):
        if getattr(args, key, None) is not None:
            over[key] = getattr(args, key)
    if args.steps is not None:
        over["probe_kwargs"]["cluster"]["steps"] = args.steps
        over["probe_kwargs"]["linear"]["steps"] = args.steps
        over["method_kwargs"]["stego"]["steps"] = args.steps
    over["train"] = {k: v for k, v in over["train"].items() if v is not None}
    over["val"] = {k: v for k, v in over["val"].items() if v is not None}
    over = merge_dicts(over, args.overrides or {})
    return load_config(dataset, over)


# ---------------------------------------------------------------------------------- stores


def shared_store(
    config,
    root: str | Path,
    which: str,
    *,
    flipped: bool = False,
    cache: dict | None = None,
    progress: bool = True,
):
    """Open the ``train`` / ``val`` store of a dataset, extracting it if missing (resumable).

    The path is the one :func:`stego_probe.sweep.run_sweep` uses for a sweep run in
    ``<root>/<config.name>`` (``.../stores/<tag>``), so the scripts share the stores of the
    Figure 4 sweep instead of extracting the 0.3 TB CocoStuff train store twice. A val store
    with the flipped tokens of the "eval" mode (PROTOCOL §4.4) gets a ``_flipped`` suffix.

    Args:
        config: the dataset's sweep config (:func:`dataset_config`).
        root: folder of the per-dataset sweep folders (``runs/figure4`` by default).
        which: ``"train"`` or ``"val"``.
        flipped: extract ``tokens_flipped`` as well (val store of the "eval" mode).
        cache: dict reused across calls to build the backbone only once per dataset.
        progress: tqdm bars.
    """
    from stego_probe.sweep import open_or_extract, store_path

    path = store_path(config, Path(root) / config.name, which) + ("_flipped" if flipped else "")
    return open_or_extract(config, which, path, flipped=flipped, cache=cache, progress=progress)


# ---------------------------------------------------------------------------------- results


def read_tables(paths) -> pd.DataFrame:
    """Concatenate results CSVs (:func:`stego_probe.results.read_results`)."""
    import pandas as pd

    from stego_probe.results import read_results

    frames = [read_results(p) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run_sweeps(args: argparse.Namespace, root: str | Path) -> pd.DataFrame:
    """Run (or resume) the sweep of every ``--datasets`` preset in ``<root>/<dataset>``.

    Returns:
        all datasets' results rows.
    """
    import pandas as pd

    from stego_probe.sweep import run_sweep, summary_table

    frames = []
    for dataset in args.datasets:
        config = dataset_config(args, dataset)
        out = Path(root) / config.name
        print(f"== {dataset}: sweep in {out} (methods {config.methods}, dims {config.dims})")
        df = run_sweep(config, out, executor=args.executor, progress=not args.no_progress)
        table = summary_table(df)
        if not table.empty:
            print(f"mIoU (%), {table.attrs['note']}, {dataset}:\n{table.to_string()}\n")
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def run(main, argv=None) -> int:
    """Call ``main(argv)``; print bad-input errors (builtin exceptions) without a traceback."""
    try:
        return int(main(argv) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
