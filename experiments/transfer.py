"""Transfer (the paper's third question): STEGO / PCA / RP fitted on one dataset, probed on others.

For every fit dataset A and eval dataset B of ``--datasets`` (or the ``--fit-on`` /
``--eval-on`` subsets) each projection of A's grid (method x D x seed, the presets' or
``--methods`` / ``--dims`` / ``--seeds``) is fitted on A's train store as in the Figure 4 sweep,
then B's protocol runs on its codes: the k-means probe and the linear probe (``--probes``) are
fitted on B's *train* codes and scored on B's *val* store (:func:`stego_probe.transfer.
run_transfer`). In-domain rows (A = B) are the sweep's probe rows; all rows record
``fit_dataset`` and ``eval_dataset``. Each projection is fitted once and cached in
``<out>/projections/<A>/``, each store extracted once in ``<out>/<name>/stores/``; re-running
resumes, and adding an eval dataset refits nothing.

Every dataset must use one backbone: by default the first dataset's preset backbone (DINO
ViT-B/8 for the paper's datasets, so Potsdam-3 is extracted with ViT-B/8 too, not its preset's
ViT-S/8); ``--backbone`` picks another.

Figures: ``transfer_<probe>_<metric>`` per probe and metric (mIoU, accuracy): one panel per eval
dataset, solid = in-domain, dashed = fitted on another dataset (:func:`stego_probe.plots.
plot_transfer`).

``--synthetic`` runs offline in a few minutes on 2 CPU cores: two differently styled synthetic
worlds (``synthetic``: seed 0, nuisance 0; ``synthetic_nuisance``: seed 1, nuisance 0.5; the
descriptor backbone), a small grid and short training (:data:`OFFLINE`), in
``runs/transfer_synthetic`` unless ``--out`` is given.

Example:
    python experiments/transfer.py --data-root /data --datasets cocostuff27,cityscapes27,potsdam3
    python experiments/transfer.py --synthetic --fmt png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import begin, csv_list, dataset_config, make_parser, run

#: The probes of the transfer protocol on B (the unsupervised k-means protocol and the linear
#: probe); ``--probes`` overrides.
PROBES = ["kmeans", "linear"]
#: The metrics drawn, one figure each per probe.
METRICS = ("miou", "accuracy")
#: ``--synthetic``: the two worlds (name -> dataset options of the ``synthetic`` preset).
SYNTHETIC_WORLDS = {
    "synthetic": {"seed": 0, "nuisance": 0.0},
    "synthetic_nuisance": {"seed": 1, "nuisance": 0.5},
}
#: ``--synthetic``: overrides of the ``synthetic`` preset for a run of a few minutes on 2 cores.
OFFLINE = {
    "dataset_kwargs": {"n_images": 64},
    "methods": ["dino", "pca", "rp", "stego"],
    "dims": [3, 12],
    "seeds": [0, 1],
    "probe_kwargs": {
        "kmeans": {"n_tokens": 50000, "niter": 100, "nredo": 1},
        "linear": {"steps": 150, "batch_size": 16},
    },
    "method_kwargs": {"pca": {"n_images": 64}, "stego": {"steps": 100}},
    "distinctness": {"enabled": False},
}
SYNTHETIC_OUT = "runs/transfer_synthetic"


def parse_args(argv=None):
    p = make_parser("transfer", __doc__, sweep=True)
    g = p.add_argument_group("transfer")
    g.add_argument(
        "--fit-on",
        type=csv_list,
        default=None,
        help="datasets whose train stores the projections are fitted on (default: all)",
    )
    g.add_argument(
        "--eval-on",
        type=csv_list,
        default=None,
        help="datasets probed with every fit dataset's projections (default: all)",
    )
    g.add_argument(
        "--synthetic",
        "--offline",
        action="store_true",
        help="offline: two differently styled synthetic datasets, a small grid "
        f"(results in {SYNTHETIC_OUT}, figures in figures/transfer_synthetic unless --out / "
        "--figures are given)",
    )
    g.add_argument(
        "--results",
        default=None,
        metavar="CSV",
        help="only redraw, from this transfer results table (no fitting or probing)",
    )
    args = p.parse_args(argv)
    if args.synthetic and args.out == "runs/transfer":
        args.out = SYNTHETIC_OUT
    if args.synthetic and args.figures == "figures/transfer":
        args.figures = "figures/transfer_synthetic"
    if args.probes is None:
        args.probes = list(PROBES)
    return args


def transfer_configs(args: argparse.Namespace) -> dict:
    """name -> sweep config of every dataset of the run (one backbone for all)."""
    from stego_probe.sweep import load_config, merge_dicts

    if args.synthetic:
        out = {}
        for name, options in SYNTHETIC_WORLDS.items():
            over = merge_dicts(OFFLINE, {"dataset_kwargs": options})
            world = argparse.Namespace(
                **{**vars(args), "overrides": merge_dicts(over, args.overrides)}
            )
            cfg = dataset_config(world, "synthetic")
            out[name] = load_config("synthetic", {**cfg.to_dict(), "name": name})
        return out
    if args.backbone is None:
        first = load_config(args.datasets[0]).backbone
        others = {d: load_config(d).backbone for d in args.datasets[1:]}
        moved = [f"{d} ({b})" for d, b in others.items() if b != first]
        if moved:
            print(f"one backbone for every dataset: {first} (preset backbones of {', '.join(moved)} "
                  "replaced; --backbone picks another)")  # fmt: skip
        args = argparse.Namespace(**{**vars(args), "backbone": first})
    return {d: dataset_config(args, d) for d in args.datasets}


def main(argv=None) -> int:
    args = parse_args(argv)
    begin(args, "Transfer: projections fitted on one dataset, probed on another")
    from stego_probe.plots import plot_transfer, save_figure
    from stego_probe.results import read_results
    from stego_probe.transfer import run_transfer

    start = time.perf_counter()
    if args.results:
        df = read_results(args.results)
    else:
        configs = transfer_configs(args)
        df = run_transfer(
            configs,
            args.out,
            fit_on=args.fit_on,
            eval_on=args.eval_on,
            probes=args.probes,
            progress=not args.no_progress,
        )
    df = df[df["fit_dataset"] != ""]
    miou = df[(df["metric"] == "miou")]
    if len(miou):
        table = miou.pivot_table(
            index=["eval_dataset", "method", "dim"],
            columns=["probe", "fit_dataset"],
            values="value",
            aggfunc="mean",
        )
        print(f"mIoU (%), mean over seeds; rows: eval dataset, columns: probe / fit dataset\n"
              f"{table.round(1).to_string()}\n")  # fmt: skip
    paths = []
    for probe in args.probes:
        for metric in METRICS:
            if not ((df["probe"] == probe) & (df["metric"] == metric)).any():
                continue
            fig = plot_transfer(df, probe=probe, metric=metric)
            paths.append(
                save_figure(fig, Path(args.figures) / f"transfer_{probe}_{metric}.{args.fmt}")
            )
    print("figures: " + ", ".join(map(str, paths)))
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
