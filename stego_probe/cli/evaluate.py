"""``stego-probe evaluate``: probe the raw backbone features of two stores (the DINO baseline).

A thin wrapper over :func:`stego_probe.evaluate.evaluate_stores`, run once per seed; the rows are
appended to a results CSV with :func:`stego_probe.results.append_csv` and the mean ± std over
seeds is printed. ``--save-probes`` / ``--save-predictions`` export the fitted probes and the
per-image predictions (:mod:`stego_probe.export`).

:func:`add_kmeans_arguments` (``--niter``, ``--tol``, ``--nredo``) is shared with ``sweep``.
"""

from __future__ import annotations

import argparse
import math
import os

from stego_probe.cli.argtypes import nonneg_int, positive_int, positive_int_or_all
from stego_probe.params import renamed_kwargs
from stego_probe.probes import PROBE_NAMES as PROBES
from stego_probe.probes.defaults import LEGACY_LINEAR_SOLVER, LINEAR_MAX_IMAGES
from stego_probe.threads import add_threads_argument

#: Seeds of ``stego-probe evaluate`` by default: three, so the spread over seeds is reported.
DEFAULT_SEEDS = (0, 1, 2)


def tolerance(text: str) -> float | None:
    """argparse type: ``none`` (exactly niter iterations) or a finite number >= 0."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number >= 0 or 'none', got {text!r}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 or 'none', got {text!r}")
    return value


def seed_list(text: str) -> list[int]:
    """argparse type: comma-separated non-negative integers, without repeats."""
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(
            f"expected distinct non-negative integers such as 0,1,2, got {text!r}"
        )
    return seeds


def one_seed(text: str) -> list[int]:
    """argparse type of ``--seed``: one non-negative integer, as a one-element seed list."""
    if "," in text:
        raise argparse.ArgumentTypeError(
            f"expected one seed (use --seeds for several), got {text!r}"
        )
    return [nonneg_int(text)]


def add_kmeans_arguments(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Add ``--niter``, ``--tol`` and ``--nredo`` (the k-means protocol) to a parser.

    Args:
        p: the subcommand's parser.
        defaults: use the probe's defaults (``evaluate``); with False, unset options are absent
            from the namespace so that a preset's values stay in force (``sweep``).
    """
    # the light defaults module: building the parser imports neither sklearn nor torch
    from stego_probe.probes.defaults import KMEANS_NITER as DEFAULT_NITER
    from stego_probe.probes.defaults import KMEANS_NREDO as DEFAULT_NREDO
    from stego_probe.probes.defaults import KMEANS_TOL as DEFAULT_TOL

    def default(value):
        return value if defaults else argparse.SUPPRESS

    where = "default {}" if defaults else "default: the preset's value, else {}"
    p.add_argument(
        "--niter",
        type=positive_int,
        default=default(DEFAULT_NITER),
        help="k-means: maximum Lloyd iterations per restart (" + where.format(DEFAULT_NITER) + ")",
    )
    p.add_argument(
        "--tol",
        type=tolerance,
        default=default(DEFAULT_TOL),
        metavar="TOL|none",
        help="k-means stopping rule: 0 = iterate to a fixed point (the objective no longer "
        "changes) or --niter; > 0 = stop early once the relative objective change is <= TOL "
        "(not converged); none = exactly --niter iterations ("
        + where.format(DEFAULT_TOL)
        + "). Recorded in the kmeans_tol column",
    )
    p.add_argument(
        "--nredo",
        type=positive_int,
        default=default(DEFAULT_NREDO),
        help="k-means restarts per seed, the best objective is kept ("
        + where.format(DEFAULT_NREDO)
        + ")",
    )


def kmeans_kwargs(args: argparse.Namespace) -> dict:
    """The ``niter`` / ``tol`` / ``nredo`` options that were given (all of them with defaults)."""
    return {k: getattr(args, k) for k in ("niter", "tol", "nredo") if hasattr(args, k)}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate",
        help="fit probes on a train store and score them on a val store (raw features)",
        description=(
            "Fit the k-means, cluster (reference) and/or linear probes on the raw backbone "
            "features of a training feature store and score them on a validation store "
            "(method 'dino', the DINO-only baseline), once per seed (default 0,1,2, so that "
            "the spread over seeds is printed). Codes are upsampled to the label resolution "
            "(--mode pixel, the paper's protocol) or labels pooled to the token grid (--mode "
            "token, a fast approximation). Rows are appended to --out, probe by probe; a point "
            "(seed, probe, mode, ...) whose rows --out already holds is skipped, so a rerun "
            "never duplicates rows and resumes an interrupted run; one run at a time writes "
            "to an --out (a lock). The k-means stopping rule (--tol, --niter, --nredo) and "
            "the iterations run are recorded in every kmeans row."
        ),
    )
    p.add_argument("--train-store", required=True, help="training feature store (dir or URL)")
    p.add_argument("--val-store", required=True, help="validation feature store (dir or URL)")
    p.add_argument(
        "--probe",
        action="append",
        default=None,
        help=f"probe(s): {', '.join(PROBES)}; repeatable or a comma list (default: all)",
    )
    p.add_argument("--mode", choices=["pixel", "token"], default="pixel", help="pixel (default)")
    p.add_argument(
        "--flip",
        action="store_true",
        help="evaluation mode: average codes with the flipped images' (needs a store "
        "extracted with --flipped)",
    )
    p.add_argument(
        "--crf",
        action="store_true",
        help="also report dense-CRF metrics (pixel mode; rebuilds the val images from the "
        "dataset recorded in the store, see --data-root / --dataset-arg)",
    )
    p.add_argument("--data-root", default=None, help="dataset root for the CRF images")
    p.add_argument(
        "--dataset-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra dataset option for the CRF images, as in `extract` (repeatable)",
    )
    p.add_argument("--crf-workers", type=nonneg_int, default=0, help="CRF processes (0: serial)")
    p.add_argument(
        "--match",
        choices=["hungarian", "majority", "reference"],
        default="hungarian",
        help="cluster-to-class matching of the unsupervised probes (default hungarian)",
    )
    p.add_argument(
        "--seeds",
        type=seed_list,
        default=list(DEFAULT_SEEDS),
        help="comma list of probe random_states, one evaluation each; the summary shows mean "
        "± std over them (default 0,1,2)",
    )
    p.add_argument(
        "--seed",
        type=one_seed,
        dest="seeds",
        help="a single seed (same as --seeds N)",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=7000,
        help="training batches of the cluster probe and of an Adam linear probe (7000)",
    )
    p.add_argument(
        "--linear-solver",
        choices=["lbfgs", "tokens", "adam"],
        default="lbfgs",
        help="linear probe solver: lbfgs (default; full-batch L-BFGS to convergence on passes "
        "over the train store), tokens (L-BFGS in memory on the --n-tokens token sample with "
        "each token's class mass: no pass over the store, but a bound of the pixel objective; "
        "see docs/evaluation.md) or adam (the reference's --steps x --train-batch-size "
        "mini-batches, parity mode)",
    )
    p.add_argument(
        "--linear-max-images",
        type=positive_int_or_all,
        default=LINEAR_MAX_IMAGES,
        help=f"the lbfgs linear probe trains on at most this many train images, a seeded random "
        f"subset of a larger store kept in memory ({LINEAR_MAX_IMAGES}; 'all': every image)",
    )
    p.add_argument(
        "--train-batch-size", type=positive_int, default=32, help="training images per batch (32)"
    )
    p.add_argument(
        "--n-tokens",
        "--n-train",  # the old name, still accepted
        dest="n_tokens",
        type=positive_int,
        default=1_000_000,
        help="tokens sampled for k-means (1e6)",
    )
    add_kmeans_arguments(p)
    p.add_argument(
        "--n-clusters", type=positive_int, default=None, help="clusters (default: classes)"
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=8, help="validation images per batch (8)"
    )
    p.add_argument(
        "--save-probes",
        default=None,
        metavar="DIR",
        help="write the fitted probes to DIR/seed<s>/<probe>.npz (+ probes.json); DIR must be "
        "new or empty",
    )
    p.add_argument(
        "--save-predictions",
        default=None,
        metavar="DIR",
        help="write every val image's predicted classes to DIR/seed<s>/<probe>[_crf]/<id>.png "
        "(clusters mapped to classes as scored; mapping.json alongside); DIR must be new or "
        "empty",
    )
    add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--out",
        required=True,
        help="results CSV to append to (checked writable before any work; each probe's rows "
        "are appended as soon as they are scored; rows already there for the same point are "
        "kept and that point is skipped, so rerunning an interrupted command resumes it)",
    )
    p.set_defaults(func=_cmd_evaluate)


def summarize(frame, metrics=("accuracy", "miou")):
    """Mean ± std over seeds of ``metrics`` per (probe, crf, mode): a printable DataFrame.

    Args:
        frame: results rows of one or more seeds.
        metrics: metric names to show.

    Returns:
        DataFrame indexed by (probe, crf, mode) with a ``seeds`` count and one
        ``"mean ± std"`` column per metric (std is the sample standard deviation; ``-`` for one
        seed).
    """
    import pandas as pd

    sel = frame[frame["metric"].isin(list(metrics))]
    keys = ["probe", "crf", "mode"]
    out = {}
    for key, g in sel.groupby(keys, sort=False):
        row = {"seeds": g["seed"].nunique()}
        for m in metrics:
            v = g[g["metric"] == m]["value"].astype(float)
            std = f"{v.std(ddof=1):5.2f}" if len(v) > 1 else "  -  "
            row[m] = f"{v.mean():6.2f} ± {std}"
        out[key] = row
    table = pd.DataFrame.from_dict(out, orient="index")
    table.index = table.index.set_names(keys)
    return table


#: Columns that identify one evaluated point of a results table (with ``metric``, one row).
#: A rerun skips the points whose rows ``--out`` already holds.
POINT_COLUMNS = (
    "dataset",
    "backbone",
    "weights_sha256",
    "method",
    "dim",
    "seed",
    "probe",
    "crf",
    "mode",
    "match",
    "split",
    "kmeans_niter",
    "kmeans_tol",
    "kmeans_nredo",
)
#: Columns identifying one row of ``--out``: the point and the ``metric``. Appends drop rows
#: already there (:func:`stego_probe.results.append_csv` ``unique=ROW_COLUMNS``).
ROW_COLUMNS = (*POINT_COLUMNS, "metric")
#: Settings that change a probe's numbers but are no column of the table, recorded per point in
#: ``<out>.settings.json`` so that a rerun with other values is refused instead of skipped.
SETTINGS_FLAGS = {
    "train_store": "--train-store",
    "val_store": "--val-store",
    "n_tokens": "--n-tokens",
    "n_clusters": "--n-clusters",
    "steps": "--steps",
    "train_batch_size": "--train-batch-size",
    "linear_solver": "--linear-solver",
    "linear_max_images": "--linear-max-images",
    "stats_tokens": "--n-tokens (the linear probe's input statistics)",
}
SETTINGS_SUFFIX = ".settings.json"


def point_key(row) -> tuple[str, ...]:
    """The :data:`POINT_COLUMNS` key of a result row (a mapping), normalised as every result
    key is (:func:`stego_probe.results.row_key`: 5 and 5.0, True and 'True' agree)."""
    from stego_probe.results import row_key

    return row_key(row, POINT_COLUMNS)


def _row_key(row) -> tuple[str, ...]:
    """The :data:`ROW_COLUMNS` key of a result row (its point and metric)."""
    from stego_probe.results import row_key

    return row_key(row, ROW_COLUMNS)


def _settings_path(out) -> str:
    return str(out) + SETTINGS_SUFFIX


def _read_settings(out) -> dict:
    import json

    path = _settings_path(out)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
        # keys normalised again: a record written with another spelling of the same values
        # (5.0 for 5) still matches
        from stego_probe.results import LEGACY_MODE_VALUES

        out_points = {}
        for k, v in data["points"].items():
            point = dict(zip(POINT_COLUMNS, json.loads(k), strict=True))
            # records of versions before 0.3.0 name the modes val / eval
            point["mode"] = LEGACY_MODE_VALUES.get(point["mode"], point["mode"])
            out_points[point_key(point)] = v
        return out_points
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"{path}: not a readable settings record of {out} ({e}); delete it to treat the "
            "rows of --out as settings unknown"
        ) from None


def _write_settings(out, points: dict) -> None:
    import json

    from stego_probe.fileio import atomic_write

    path = _settings_path(out)
    data = {"format": 1, "points": {json.dumps(list(k)): v for k, v in points.items()}}
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True))


def _probe_settings(args, probes: list[str], train, val) -> dict[str, dict]:
    from stego_probe.evaluate import STATS_TOKENS

    common = {"train_store": str(train.path), "val_store": str(val.path)}
    # the linear probe's statistics (and, solver "tokens", its training data) come from the
    # k-means sample; without k-means from min(n_tokens, STATS_TOKENS) tokens ("tokens": n_tokens)
    full = "kmeans" in probes or args.linear_solver == "tokens"
    stats = args.n_tokens if full else min(args.n_tokens, STATS_TOKENS)
    return {
        "kmeans": {**common, "n_tokens": args.n_tokens, "n_clusters": args.n_clusters},
        "cluster": {
            **common,
            "steps": args.steps,
            "train_batch_size": args.train_batch_size,
            "n_clusters": args.n_clusters,
        },
        "linear": {
            **common,
            # L-BFGS does not use the stream's steps / batch size (a record without a solver is
            # an Adam one: it conflicts with an L-BFGS rerun)
            "linear_solver": args.linear_solver,
            **(
                {"steps": args.steps, "train_batch_size": args.train_batch_size}
                if args.linear_solver == "adam"
                else {}
            ),
            # the cap as it acts: None when it reads every image (so a rerun of a table
            # written before the cap existed, or with another cap above the store's size,
            # has the same rows)
            **(
                {"linear_max_images": _effective_cap(args.linear_max_images, train)}
                if args.linear_solver == "lbfgs"
                else {}
            ),
            "stats_tokens": stats,
        },
    }


def _effective_cap(cap: int | None, train) -> int | None:
    """The L-BFGS linear probe's image cap as it acts on ``train``: None when it reads every
    image."""
    return None if cap is None or int(cap) >= int(train.n_images) else int(cap)


def _planned_keys(args, probe: str, seed: int, train, val) -> list[tuple[str, ...]]:
    """The point keys the rows of (seed, probe) will have (both CRF settings with --crf)."""
    from stego_probe.results import mode_column

    prov = dict(val.provenance)
    context = {
        "dataset": prov.get("dataset", ""),
        "backbone": prov.get("backbone", ""),
        "weights_sha256": prov.get("weights_sha256") or "",
        "method": "dino",
        "dim": int(train.dim),
        "seed": seed,
        "probe": probe,
        "mode": mode_column(args.mode, args.flip),
        "match": "identity" if probe == "linear" else args.match,
        "split": prov.get("split", ""),
    }
    if probe == "kmeans":
        context.update(
            kmeans_niter=args.niter,
            kmeans_tol=0.0 if args.tol is None else args.tol,
            kmeans_nredo=args.nredo,
        )
    return [point_key({**context, "crf": c}) for c in ((False, True) if args.crf else (False,))]


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from stego_probe.lock import FolderLockedError, lock_holder, table_lock

    # Everything that can refuse the output is checked before any store is read.
    _check_outputs(args)
    parent = os.path.dirname(os.path.realpath(args.out))
    holder = lock_holder(parent)
    if holder is not None:
        raise FolderLockedError(
            f"--out {args.out}: its folder {parent} is in use by a running "
            f"{holder.get('what', 'run')} (pid {holder.get('pid')} on host "
            f"{holder.get('host')!r}); write the results elsewhere or wait for it to finish"
        )
    with table_lock(args.out, what="evaluate"):
        return _evaluate_locked(args)


def _check_outputs(args: argparse.Namespace) -> None:
    from stego_probe.export import MAPPING_FILE, PROBES_MANIFEST, check_output_dir, check_writable
    from stego_probe.results import read_results

    if os.path.exists(args.out):
        read_results(args.out)  # a --out that is not a results table fails before the work
    check_writable(args.out, "--out")
    check_writable(_settings_path(args.out), "--out settings record")
    _read_settings(args.out)
    for flag, path, probe_file in (
        ("--save-probes", args.save_probes, PROBES_MANIFEST),
        ("--save-predictions", args.save_predictions, MAPPING_FILE),
    ):
        if path is not None:
            check_output_dir(path, flag)
            check_writable(os.path.join(path, probe_file), flag)


def _evaluate_locked(args: argparse.Namespace) -> int:
    from stego_probe.cli.store import open_store
    from stego_probe.evaluate import dataset_for_store, evaluate_stores, probe_list, store_images
    from stego_probe.export import save_probes
    from stego_probe.results import append_csv, read_results, to_frame

    out = args.out
    probes = probe_list(",".join(args.probe or PROBES))
    kmeans_kw = kmeans_kwargs(args)
    cluster_kw = {}
    if args.n_clusters is not None:
        kmeans_kw["n_clusters"] = cluster_kw["n_clusters"] = args.n_clusters
    train = open_store(args.train_store, "--train-store")
    val = open_store(args.val_store, "--val-store")

    # -- what --out holds already (idempotent reruns) -----------------------------------------
    table = read_results(out) if os.path.exists(out) else None
    have_rows = set()  # the ROW_COLUMNS key of every row in --out
    if table is not None:
        have_rows = {_row_key(row) for row in table.to_dict("records")}
    have = {k[:-1] for k in have_rows}  # the points
    recorded = _read_settings(out)
    settings = _probe_settings(args, probes, train, val)
    plan, conflicts = {}, []
    for seed in args.seeds:
        done, unknown = [], []
        for probe in probes:
            keys = _planned_keys(args, probe, seed, train, val)
            if not all(k in have for k in keys):
                continue
            done.append(probe)
            for k in keys:
                old = recorded.get(k, {}).get("settings")
                if old is None:
                    unknown.append(probe)
                    continue
                old = renamed_kwargs(old, _settings_path(out), warn=False)  # older records
                if probe == "linear" and "linear_solver" not in old:
                    old = {**old, "linear_solver": LEGACY_LINEAR_SOLVER}  # before 0.3.0: Adam
                if old.get("linear_solver") == "lbfgs" and "linear_max_images" not in old:
                    old = {**old, "linear_max_images": None}  # before the cap: every image
                diff = [
                    f"{SETTINGS_FLAGS.get(n, n)} {old.get(n)!r} there, {v!r} now"
                    for n, v in settings[probe].items()
                    if old.get(n) != v
                ]
                if diff:
                    conflicts.append(f"seed {seed} {probe}: {'; '.join(diff)}")
        plan[seed] = (done, sorted(set(unknown), key=probes.index))
    if conflicts:
        raise ValueError(
            f"--out {out}: already holds rows of these points computed with other settings "
            f"({' | '.join(conflicts[:4])}{' ...' if len(conflicts) > 4 else ''}); write to "
            "another --out, or delete those rows (and their entries in "
            f"{_settings_path(out)}) to recompute them"
        )

    images = None
    if args.crf and any(len(d) < len(probes) for d, _ in plan.values()):
        from stego_probe.cli.store import parse_key_values

        ds = dataset_for_store(val, args.data_root, **parse_key_values(args.dataset_arg))
        images = store_images(val, ds)
    written = 0

    def on_rows(probe: str, frame) -> None:
        nonlocal written
        rows = [r for r in frame.to_dict("records") if _row_key(r) not in have_rows]
        if not rows:
            return
        for k in {point_key(r) for r in rows}:
            recorded[k] = {"settings": settings[probe]}
        _write_settings(out, recorded)  # first: a crash before the append only recomputes
        # each probe as soon as it is scored (finished probes are kept); rows already in --out
        # (a run that slipped past the lock) are dropped by the same key
        append_csv(rows, out, unique=ROW_COLUMNS)
        have_rows.update(_row_key(r) for r in rows)
        written += len(rows)

    for seed in args.seeds:
        done, unknown = plan[seed]
        if done:
            note = f" (no settings recorded for {', '.join(unknown)})" if unknown else ""
            print(
                f"seed {seed}: {', '.join(done)} already in {out}{note}; not recomputed "
                "(delete those rows to recompute them)"
            )
        if len(done) == len(probes):
            continue
        preds = None
        if args.save_predictions is not None:
            preds = os.path.join(args.save_predictions, f"seed{seed}")
        frame, fitted = evaluate_stores(
            train,
            val,
            probes=probes,
            skip=done,
            mode=args.mode,
            crf=args.crf,
            flip=args.flip,
            seed=seed,
            match=args.match,
            steps=args.steps,
            train_batch_size=args.train_batch_size,
            n_tokens=args.n_tokens,
            probe_kwargs={
                "kmeans": kmeans_kw,
                "cluster": cluster_kw,
                "linear": {"solver": args.linear_solver, "max_images": args.linear_max_images},
            },
            batch_size=args.batch_size,
            images=images,
            crf_workers=args.crf_workers,
            progress=not args.no_progress,
            return_probes=True,
            save_predictions=preds,
            threads=args.threads,
            on_rows=on_rows,
        )
        if args.save_probes is not None:
            info = {"seed": seed, "train_store": str(train.path), "val_store": str(val.path)}
            save_probes(fitted, os.path.join(args.save_probes, f"seed{seed}"), info)
        lin = fitted.get("linear")
        if lin is not None and getattr(lin, "solver", "adam") in ("lbfgs", "tokens"):
            cap = _effective_cap(getattr(lin, "max_images", None), train)
            where = "the token sample"
            if lin.solver == "lbfgs":
                where = "the train store" if cap is None else f"{cap} train images (the cap)"
            print(
                f"seed {seed}: linear L-BFGS stopped after {lin.n_iter_} of "
                f"max_iter={lin.max_iter} iterations, {lin.n_passes_} passes over {where} "
                f"({'converged' if lin.converged_ else 'budget reached'}; tol={lin.tol}, "
                f"max |grad| {lin.grad_max_:.2g})"
            )
        if "kmeans" in fitted:
            km = fitted["kmeans"]
            print(
                f"seed {seed}: k-means stopped after {km.n_iter_} of niter={km.niter} iterations "
                f"({'fixed point reached' if km.converged_ else 'no fixed point'}; "
                f"tol={km.tol}, nredo={km.nredo})"
            )
    wanted = {
        k for seed in args.seeds for p in probes for k in _planned_keys(args, p, seed, train, val)
    }
    table = read_results(out) if os.path.exists(out) else to_frame([])
    rows = [r for r in table.to_dict("records") if point_key(r) in wanted]
    frame = to_frame(rows)
    n = len(args.seeds)
    print(f"mean ± std over {n} seed(s) {','.join(map(str, args.seeds))}:")
    if len(frame):
        print(summarize(frame).to_string())
    if n == 1:
        print("one seed: the spread over seeds is not measured (use --seeds 0,1,2)")
    kept = len(frame) - written
    print(
        f"appended {written} rows to {out}"
        + (f" ({kept} rows of these points were there already)" if kept > 0 else "")
    )
    return 0
