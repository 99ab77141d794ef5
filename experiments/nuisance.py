"""Nuisance experiment (project issue 11): does STEGO's advantage grow with nuisance?

Cause and effect on the offline ``synthetic`` world (docs/nuisance.md): the only thing that
changes between runs is the dataset's ``nuisance`` strength (illumination, white balance,
shading, per-object colour / contrast / texture scale; ``stego_probe.data.synthetic``). For each
level in ``--levels`` (default 0, 0.25, 0.5, 1) this runs or resumes the dimension sweep of the
``synthetic`` preset with ``dataset_kwargs: {nuisance: level}`` in ``<out>/nuisance_<level>/``:
methods dino / pca / rp / stego, ``--dims`` (default 6; the sweep adds the full width C = 64),
seeds 0, 1, 2, the k-means and linear probes and the distinctness statistics. Every level's
sweep resumes on its own (finished points are skipped).

Then the levels' rows are concatenated with a ``nuisance`` column into ``<out>/results.csv``,
the advantage tables are printed (:func:`stego_probe.plots.factors.advantage_table`: STEGO minus
each baseline, mean ± sample std of the seed-paired differences; and the absolute values,
:func:`~stego_probe.plots.factors.factor_table`) and one figure per probe and D is drawn
(:func:`stego_probe.plots.plot_advantage_over_factor`):
``<figures>/nuisance_advantage_<probe>_d<D>.<fmt>``.

Cost: to keep the default run at ~8 minutes on 2 free CPU cores (566 s measured on 2 shared,
loaded cores), each split has **100 images**
(``dataset_kwargs: {n_images: 100}``, the preset's are 200 train / 50 val); everything else is
the preset's (64 px, STEGO 200 steps). ``--n-images`` or ``--overrides`` change it
(``--overrides`` wins; it cannot set ``nuisance``, which is the level's).
``--results CSV`` only redraws from a table with a ``nuisance`` column.

Example:
    python experiments/nuisance.py                  # ~8 min on 2 cores, runs/nuisance
    python experiments/nuisance.py --levels 0,1 --seeds 0 --fmt png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import begin, csv_list, dataset_config, make_parser, run

#: The preset the experiment runs (the only dataset with a ``nuisance`` knob).
PRESET = "synthetic"
#: Default images per split (the cost note in the module docstring).
N_IMAGES = 100
#: Probes drawn (when present in the results).
DRAWN_PROBES = ("kmeans", "linear")
#: Printed tables show the levels as given (0.25, not 0.2).
LEVEL_FORMAT = {"nuisance": "{:g}".format}


def float_list(text: str) -> list[float]:
    """``"0,0.5,1"`` -> ``[0.0, 0.5, 1.0]``, each in [0, 1]."""
    try:
        values = [float(t) for t in csv_list(text)]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected nuisance levels in [0, 1], got {text!r}")
    return list(dict.fromkeys(values))


def level_name(level: float) -> str:
    """Folder of a level's sweep: ``nuisance_0``, ``nuisance_0.25``, ``nuisance_1``."""
    return f"nuisance_{level:g}"


def parse_args(argv=None):
    p = make_parser("nuisance", __doc__, sweep=True)
    g = p.add_argument_group("nuisance")
    g.add_argument(
        "--levels",
        type=float_list,
        default=[0.0, 0.25, 0.5, 1.0],
        help="comma list of nuisance strengths in [0, 1] (0,0.25,0.5,1)",
    )
    g.add_argument(
        "--n-images",
        type=int,
        default=N_IMAGES,
        help=f"images per split of the synthetic world ({N_IMAGES}; the preset's: 200 / 50)",
    )
    g.add_argument(
        "--results",
        nargs="+",
        default=None,
        metavar="CSV",
        help="only redraw, from these tables (with a nuisance column; no sweep)",
    )
    p.set_defaults(
        datasets=[PRESET], methods=["dino", "pca", "rp", "stego"], dims=[6],
        probes=["kmeans", "linear"],
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.datasets != [PRESET]:
        p.error(f"--datasets: this experiment runs the {PRESET!r} preset only")
    if args.n_images < 1:
        p.error(f"--n-images: expected a positive count, got {args.n_images}")
    return args


def level_config(args: argparse.Namespace, level: float):
    """The sweep config of one level: the preset, the experiment's defaults, the flags, then
    ``--overrides``; ``dataset_kwargs.nuisance`` is always the level."""
    from stego_probe.sweep import merge_dicts

    if "nuisance" in (args.overrides or {}).get("dataset_kwargs", {}):
        raise ValueError("--overrides: dataset_kwargs.nuisance is set per level by --levels")
    over = merge_dicts(
        {"dataset_kwargs": {"n_images": args.n_images}, "distinctness": {"enabled": True}},
        args.overrides or {},
    )
    over = merge_dicts(over, {"dataset_kwargs": {"nuisance": level}})
    return dataset_config(argparse.Namespace(**{**vars(args), "overrides": over}), PRESET)


def run_levels(args: argparse.Namespace):
    """Run (or resume) every level's sweep; returns the rows with a ``nuisance`` column."""
    import pandas as pd

    from stego_probe.sweep import run_sweep, summary_table

    frames = []
    for level in args.levels:
        config = level_config(args, level)
        out = Path(args.out) / level_name(level)
        print(
            f"== nuisance {level:g}: sweep in {out} (methods {config.methods}, dims {config.dims})"
        )
        t0 = time.perf_counter()
        df = run_sweep(config, out, executor=args.executor, progress=not args.no_progress)
        table = summary_table(df)
        if not table.empty:
            print(f"mIoU (%), {table.attrs['note']}, nuisance {level:g}:\n{table.to_string()}")
        print(f"   ({time.perf_counter() - t0:.0f} s)\n", flush=True)
        frames.append(df.assign(nuisance=float(level)))
    return pd.concat(frames, ignore_index=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    begin(args, "Nuisance: STEGO's advantage versus the nuisance strength")
    import pandas as pd

    from stego_probe.fileio import atomic_write
    from stego_probe.plots import plot_advantage_over_factor, save_figure
    from stego_probe.plots.factors import advantage_table, factor_table

    start = time.perf_counter()
    if args.results:
        from _common import read_tables

        df = read_tables(args.results)
    else:
        df = run_levels(args)
        path = Path(args.out) / "results.csv"
        atomic_write(path, df.to_csv(index=False))
        print(f"rows: {path}")
    if "nuisance" not in df.columns:
        raise ValueError("results: no 'nuisance' column (expected the table this script writes)")
    baselines = [m for m in ("pca", "rp", "dino") if m in set(df["method"]) and m in args.methods]
    probes = [p for p in DRAWN_PROBES if p in set(df["probe"]) and p in args.probes]
    paths = []
    with pd.option_context("display.width", 120, "display.float_format", "{:.1f}".format):
        for probe in probes:
            for dim in args.dims:
                kw = dict(dim=dim, probe=probe, metric="miou")
                adv = advantage_table(df, baselines=baselines, **kw)
                tab = factor_table(df, methods=["stego", *baselines], **kw)
                print(f"mIoU (%), {probe} probe, D={dim}: mean ± sample std over seeds")
                print(tab.to_string(index=False, formatters=LEVEL_FORMAT))
                print(f"STEGO - baseline (points), seed-paired differences, {probe}, D={dim}")
                print(adv.to_string(index=False, formatters=LEVEL_FORMAT) + "\n")
                fig = plot_advantage_over_factor(df, baselines=baselines, **kw)
                stem = f"nuisance_advantage_{probe}_d{dim}"
                paths.append(save_figure(fig, Path(args.figures) / f"{stem}.{args.fmt}"))
        if ((df["probe"] == "none") & (df["metric"] == "silhouette")).any():
            for dim in args.dims:  # cluster distinctness of the codes (docs/distinctness.md)
                kw = dict(dim=dim, probe="none", metric="silhouette")
                tab = factor_table(df, methods=["stego", *baselines], **kw)
                print(f"silhouette (cosine) of the val codes, D={dim}: mean ± sample std")
                fmt = {"mean": "{:.3f}".format, "std": "{:.3f}".format, **LEVEL_FORMAT}
                print(tab.to_string(index=False, formatters=fmt) + "\n")
    print("figures: " + ", ".join(map(str, paths)))
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
