"""Transfer: projections fitted on one dataset's train store, probed on other datasets.

The paper's third question (Koenig et al. 2023): does a STEGO head (or PCA, a random
projection, the raw features) fitted on dataset A still give good codes on dataset B? A
transfer run takes one sweep config per dataset (:class:`stego_probe.sweep.SweepConfig`, all
with the same backbone) and, for every fit dataset A and eval dataset B:

1. fits A's points (method, ``D``, seed from A's config: :func:`stego_probe.sweep.sweep_points`)
   on A's train store, exactly as a sweep does (:func:`stego_probe.sweep.fit_projection`; STEGO
   selects its checkpoint on A's val store);
2. runs B's unsupervised protocol on B with those codes: the probes (B's config ``probes``, or
   ``probes=``; k-means and the linear probe by default in ``experiments/transfer.py``) are
   fitted on B's *train* codes and scored on B's *val* store
   (:func:`stego_probe.evaluate.evaluate_stores` with B's ``probe_kwargs``, ``mode``, ``flip``).

In-domain rows (A = B) are the sweep's own probe rows. Every row records ``fit_dataset`` and
``eval_dataset`` (:data:`stego_probe.results.TRANSFER_COLUMNS`), the names (the keys of the
``configs`` mapping), so two configs of one dataset type (``synthetic`` at nuisance 0 and 0.5)
stay apart; ``dataset`` is B's store's dataset type, as in every table.

Cost stays flat in the number of eval datasets: each projection is fitted once per (fit
dataset, method, ``D``, seed) and cached in ``<out>/projections/<fit name>/`` (the sweep's cache,
with its input fingerprints), stores are extracted once per dataset in ``<out>/<name>/stores/``
(:func:`stego_probe.sweep.ensure_stores`), and rows already in ``<out>/results.csv`` are skipped
(per probe, :func:`stego_probe.results.done_keys`), so adding an eval dataset refits nothing and
recomputes no existing row. ``<out>/configs.json`` records each name's config; a resume whose
config for a name with rows differs in a result-defining field is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from stego_probe.evaluate import evaluate_stores
from stego_probe.fileio import atomic_write, to_jsonable
from stego_probe.results import (
    IDENTITY_COLUMNS,
    RESULT_COLUMNS,
    TRANSFER_COLUMNS,
    append_csv,
    done_keys,
    read_results,
)
from stego_probe.sweep import (
    RESUMABLE_FIELDS,
    Point,
    SweepConfig,
    ensure_stores,
    fit_projection,
    point_label,
    sweep_points,
)
from stego_probe.sweep.config import recorded_config
from stego_probe.sweep.measure import evaluate_kwargs
from stego_probe.threads import limit, store_workload

#: Columns identifying one transfer measurement for the resume check (with ``metric`` implied:
#: a probe's rows are written together).
TRANSFER_KEY = ("fit_dataset", "eval_dataset", "method", "dim", "seed", "probe")

#: File in the output folder recording the config of every dataset name.
CONFIGS_FILE = "configs.json"


def check_configs(configs: Mapping[str, SweepConfig]) -> list[str]:
    """Check a transfer's configs; return their names in order.

    Raises:
        ValueError: no configs; a name that is empty, not a string or not usable as a folder
            name; a value that is not a :class:`SweepConfig`; or two configs with different
            ``backbone`` / ``weights`` / ``backbone_kwargs`` (the message names both configs and
            their values: codes of different backbones cannot be compared).
    """
    if not isinstance(configs, Mapping) or not configs:
        raise ValueError("configs: expected a non-empty mapping name -> SweepConfig")
    names = list(configs)
    for name in names:
        if not isinstance(name, str) or not name.strip() or "/" in name or name in (".", ".."):
            raise ValueError(f"configs: dataset name {name!r} must be a non-empty folder name")
        if name == "projections":
            raise ValueError("configs: 'projections' is reserved (the projection cache folder)")
        if not isinstance(configs[name], SweepConfig):
            raise ValueError(
                f"configs[{name!r}]: expected a SweepConfig, got {type(configs[name]).__name__}"
            )
    first = names[0]
    ref = configs[first]
    for name in names[1:]:
        cfg = configs[name]
        for field in ("backbone", "weights", "backbone_kwargs"):
            a, b = getattr(ref, field), getattr(cfg, field)
            if to_jsonable(a) != to_jsonable(b):
                raise ValueError(
                    f"configs {first!r} and {name!r} have different {field} ({a!r} and {b!r}); "
                    "a transfer needs one backbone for every dataset (pass --backbone / the same "
                    "weights)"
                )
    return names


def transfer_pairs(
    names: Sequence[str], fit_on: Sequence[str] | None = None, eval_on: Sequence[str] | None = None
) -> list[tuple[str, str]]:
    """``(fit name, eval name)`` pairs of a transfer: every ``fit_on`` x every ``eval_on``
    (default: all ``names`` for both), in-domain pair first within each fit dataset.

    Raises:
        ValueError: a ``fit_on`` / ``eval_on`` name that is not among ``names``.
    """
    fit = _subset(fit_on, names, "fit_on")
    ev = _subset(eval_on, names, "eval_on")
    return [(a, b) for a in fit for b in sorted(ev, key=lambda b, a=a: (b != a, ev.index(b)))]


def _subset(wanted, names: Sequence[str], what: str) -> list[str]:
    if wanted is None:
        return list(names)
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    bad = [w for w in wanted if w not in names]
    if bad or not wanted:
        raise ValueError(f"{what}: {bad or wanted!r} not among the configs {list(names)}")
    return list(dict.fromkeys(wanted))


def _check_recorded_configs(out: Path, configs: Mapping[str, SweepConfig], results: Path) -> None:
    """Refuse a resume whose config of a name with rows differs outside
    :data:`stego_probe.sweep.RESUMABLE_FIELDS`; record the configs (``configs.json``)."""
    path = out / CONFIGS_FILE
    recorded = json.loads(path.read_text()) if path.exists() else {}
    with_rows = {k[0] for k in done_keys(results, ["fit_dataset"])} | {
        k[0] for k in done_keys(results, ["eval_dataset"])
    }
    new = {name: to_jsonable(cfg.to_dict()) for name, cfg in configs.items()}
    for name, cfg in new.items():
        old = recorded.get(name)
        if old is None or name not in with_rows:
            continue
        old = recorded_config(old, f"{path}: {name}")
        changed = [k for k, v in cfg.items() if k not in RESUMABLE_FIELDS and old.get(k) != v]
        if changed:
            diffs = "; ".join(f"{k}: {old.get(k)!r} -> {cfg[k]!r}" for k in changed)
            raise ValueError(
                f"{out}: dataset {name!r} has rows computed with another config ({diffs}); "
                "resuming would mix them. Use another output folder or another name"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({**recorded, **new}, indent=2))


def run_transfer(
    configs: Mapping[str, SweepConfig],
    out_dir: str | os.PathLike,
    *,
    fit_on: Sequence[str] | None = None,
    eval_on: Sequence[str] | None = None,
    probes: Sequence[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or resume) a transfer: projections fitted on each ``fit_on`` dataset, probed on each
    ``eval_on`` dataset.

    Args:
        configs: name -> sweep config of one dataset (same backbone for all). The names are
            recorded in ``fit_dataset`` / ``eval_dataset`` and name the folders.
        out_dir: output folder: ``<name>/stores/`` (each dataset's train / val stores),
            ``projections/<fit name>/`` (the cached fits), ``results.csv``, ``configs.json``.
        fit_on: names whose train stores the projections are fitted on (default: all); the
            points are each fit config's methods x dims x seeds (:func:`sweep_points`).
        eval_on: names whose stores are probed (default: all).
        probes: probes to run on every eval dataset (default: each eval config's ``probes``).
        progress: progress bars (extraction, and one bar over the evaluations to run).

    Returns:
        the whole results table (:data:`stego_probe.results.RESULT_COLUMNS`): per (fit, eval)
        pair, point and probe the metric rows of :func:`evaluate_stores` (``miou``,
        ``accuracy``, per-class ...), with ``fit_dataset`` / ``eval_dataset`` filled in.

    Raises:
        ValueError: bad configs (:func:`check_configs`: e.g. two backbones, naming both
            configs), an unknown ``fit_on`` / ``eval_on`` name, a resume with another config for
            a name that has rows, or an error of a fit / evaluation (naming the fit and eval
            datasets and the point).
        stego_probe.lock.FolderLockedError: another run holds ``out_dir``.
    """
    from stego_probe.lock import folder_lock, table_lock

    names = check_configs(configs)
    pairs = transfer_pairs(names, fit_on, eval_on)
    out = Path(out_dir)
    results = out / "results.csv"
    with folder_lock(out, what="transfer"), table_lock(results, "transfer"):
        _check_recorded_configs(out, configs, results)
        _run_pairs(configs, pairs, out, results, probes, progress)
    return read_results(results) if results.exists() else pd.DataFrame(columns=RESULT_COLUMNS)


def _run_pairs(configs, pairs, out: Path, results: Path, probes, progress: bool) -> None:
    from tqdm.auto import tqdm

    from stego_probe.evaluate import probe_list

    stores: dict[str, tuple] = {}

    def stores_of(name: str) -> tuple:
        if name not in stores:
            stores[name] = ensure_stores(configs[name], out / name, progress=progress)
        return stores[name]

    def wanted(name: str) -> list[str]:
        return probe_list(probes if probes is not None else configs[name].probes)

    done = done_keys(results, list(TRANSFER_KEY))
    # what is left: fit name -> point -> [(eval name, probes done)]
    todo: dict[str, dict[Point, list[tuple[str, list[str]]]]] = {}
    for fit, ev in pairs:
        train, _ = stores_of(fit)
        for p in sweep_points(configs[fit], train.dim):
            have = [q for q in wanted(ev) if (fit, ev, p.method, p.dim, p.seed, q) in done]
            if len(have) < len(wanted(ev)):
                todo.setdefault(fit, {}).setdefault(p, []).append((ev, have))
    total = sum(len(v) for pts in todo.values() for v in pts.values())
    with tqdm(total=total, desc="transfer", disable=not progress) as bar:
        for fit, points in todo.items():
            train, val = stores_of(fit)
            cache = out / "projections" / fit
            for point, evals in points.items():
                with limit("auto", store_workload(train)):
                    proj = fit_projection(configs[fit], point, train, cache, val_store=val)
                for ev, have in evals:
                    bar.set_postfix_str(f"{fit} -> {ev} {point_label(point)}")
                    _evaluate(configs, fit, ev, point, proj, stores_of(ev), wanted(ev), have,
                              results)  # fmt: skip
                    bar.update(1)


def _evaluate(configs, fit, ev, point, proj, eval_stores, probes, have, results: Path) -> None:
    """Score one point fitted on ``fit`` on the stores of ``ev``; append each probe's rows as
    soon as it is scored (a crash keeps the finished probes)."""
    cfg = configs[ev]
    train, val = eval_stores
    tags = {"fit_dataset": fit, "eval_dataset": ev, "dim": point.dim}

    def append(_probe, rows: pd.DataFrame) -> None:
        rows = rows.assign(**tags)
        append_csv(rows.to_dict("records"), results, unique=IDENTITY_COLUMNS)

    projection = None if point.method == "dino" else proj
    try:
        evaluate_stores(
            train,
            val,
            projection=projection,
            **{**evaluate_kwargs(cfg, point), "probes": probes},
            skip=have,
            on_rows=append,
            transfer=fit != ev,
        )
    except ValueError as e:
        raise ValueError(f"transfer {fit} -> {ev}, point {point_label(point)}: {e}") from e


__all__ = [
    "CONFIGS_FILE",
    "TRANSFER_COLUMNS",
    "TRANSFER_KEY",
    "check_configs",
    "run_transfer",
    "transfer_pairs",
]
