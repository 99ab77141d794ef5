"""Running (or resuming) a whole sweep: :func:`run_sweep`.

Before any work it checks the optional packages the sweep needs (:func:`check_dependencies`,
:func:`required_extras`) and that the folder is not a resume with other settings
(:data:`RESUMABLE_FIELDS`, :data:`PROJECTION_FIELDS`, :data:`STORE_FIELDS`); then it opens the
stores, runs the points not yet in ``results.csv`` with an executor and raises
:class:`SweepError` listing the points that failed.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import traceback
import warnings
from pathlib import Path

import pandas as pd

from stego_probe.fileio import atomic_write, to_jsonable
from stego_probe.results import IDENTITY_COLUMNS, RESULT_COLUMNS, append_csv, read_results
from stego_probe.store import check_store_pair
from stego_probe.sweep.config import (
    SweepConfig,
    backbone_tag,
    check_distinctness_tokens,
    dataset_factory_defaults,
    normalize_backbones,
    recorded_config,
)
from stego_probe.sweep.executors import run_local, run_ray
from stego_probe.sweep.fit import fit_projection, pca_spectrum_rows
from stego_probe.sweep.points import Point, point_label, point_weights, run_order, sweep_points
from stego_probe.sweep.progress import SweepProgress, error_summary
from stego_probe.sweep.stores import ensure_stores, store_path
from stego_probe.sweep.table import done_points, has_results
from stego_probe.threads import limit, store_workload, uses_threads


@uses_threads()
def run_sweep(
    config: SweepConfig,
    out_dir: str | os.PathLike,
    executor: str = "local",
    progress: bool = True,
    train_store: str | os.PathLike | None = None,
    val_store: str | os.PathLike | None = None,
    *,
    threads: int | str | None = "auto",
) -> pd.DataFrame:
    """Run (or resume) a sweep and return the full results table.

    Before any work (extraction, ``config.json``) the optional packages the sweep needs are
    checked (:func:`check_dependencies`) and the folder is checked for a resume with other
    settings. A point that fails does not stop the sweep: the other points run and keep their
    rows, and :class:`SweepError` lists every failed point at the end.

    Args:
        config: the sweep.
        out_dir: output folder: ``stores/``, ``projections/``, ``results.csv``, ``config.json``
            (and ``failures.log`` after a run with failed points).
        executor: ``local`` (a loop in this process) or ``ray`` (one Ray task per point; needs
            ``pip install 'stego-probe[ray]'`` and a running or local Ray cluster).
        progress: show progress bars (the sweep's shows the current point and a cost-weighted
            ETA, see :class:`SweepProgress`).
        threads: CPU threads of torch / FAISS / BLAS while the sweep runs (restored after):
            ``"auto"``: 1 for small stores, all cores for ViT-sized ones and extraction,
            ``"all"``, an int or None (library defaults); see :mod:`stego_probe.threads`.
        train_store, val_store: existing complete stores to use instead of extracting into
            ``<out>/stores/`` (see :func:`ensure_stores`).

    Returns:
        the results table (all rows in ``<out>/results.csv``).

    The whole run holds an exclusive lock on ``out_dir`` (:func:`stego_probe.lock.folder_lock`):
    a second sweep started into the same folder is refused with
    :class:`~stego_probe.lock.FolderLockedError` naming the holder, and a point already in
    ``results.csv`` is never appended again (:func:`append_point`).

    Raises:
        ImportError: an optional package the sweep needs is missing (nothing is written).
        ValueError: ``out_dir`` holds results of a sweep with other result-defining settings,
            or a store there does not match the config.
        stego_probe.lock.FolderLockedError: another live run holds ``out_dir``.
        SweepError: some points failed (the others' rows are written; re-run to retry).
    """
    if executor not in ("local", "ray"):
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
    check_dependencies(config, executor)
    from stego_probe.lock import folder_lock, table_lock

    # One run per output folder: a second sweep into it is refused at once; the table lock
    # also refuses an `evaluate --out OUT/results.csv` started at any time during the sweep.
    with folder_lock(out_dir, what="sweep"), table_lock(Path(out_dir) / "results.csv", "sweep"):
        return _run_sweep_locked(config, Path(out_dir), executor, progress, train_store, val_store)


def _run_sweep_locked(config, out: Path, executor, progress, train_store, val_store):
    if config.multi_backbone and (train_store is not None or val_store is not None):
        raise ValueError(
            f"sweep {config.name}: train_store / val_store name the stores of one backbone; a "
            f"sweep of several backbones ({', '.join(e['name'] for e in config.backbones)}) "
            "extracts its own (omit them, or sweep that backbone alone)"
        )
    _check_resume(config, out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.json", json.dumps(to_jsonable(config.to_dict()), indent=2))
    results = out / "results.csv"
    failures, n_points = [], 0
    for sub in config.backbone_configs():
        tag = backbone_tag(sub.backbone) if config.multi_backbone else None
        cache_dir = projections_dir(config, out, sub.backbone)
        f, n = _run_backbone(sub, out, cache_dir, executor, progress, train_store, val_store, tag)
        failures += f
        n_points += n
    df = read_results(results) if results.exists() else pd.DataFrame(columns=RESULT_COLUMNS)
    _report_failures(config, out, failures, n_points, df)
    return df


def projections_dir(config: SweepConfig, out_dir: str | os.PathLike, backbone: str) -> Path:
    """Where a sweep caches the fitted projections of ``backbone``: ``<out>/projections/`` for
    a single-backbone config, ``<out>/projections/<tag>/`` (:func:`backbone_tag`) for one that
    lists ``backbones``."""
    root = Path(out_dir) / "projections"
    return root / backbone_tag(backbone) if config.multi_backbone else root


def _run_backbone(config, out: Path, cache_dir, executor, progress, train_store, val_store, tag):
    """Run the missing points of one backbone (``config``: its single-backbone config; ``tag``:
    its folder tag in a multi-backbone sweep, else None; fits cached in ``cache_dir``).
    Returns ``(failures, n_points)``."""
    results = out / "results.csv"
    train_store, val_store = ensure_stores(
        config,
        out,
        progress=progress,
        train_store=train_store,
        val_store=val_store,
        record_key=tag,
    )
    check_store_pair(train_store, val_store)
    if (config.distinctness or {}).get("enabled", True) and val_store.n_classes:
        check_distinctness_tokens(config, int(val_store.n_classes))

    backbone = config.backbone if tag else None  # rows of other backbones are not this one's
    done = done_points(results, backbone)
    todo = run_order([p for p in sweep_points(config, train_store.dim) if p not in done])
    if tag:
        todo = [dataclasses.replace(p, backbone=config.backbone) for p in todo]
    # The PCA fits made here read the train store like a sweep point does: same thread policy.
    with limit("auto", store_workload(train_store)):
        if "pca" in config.methods and not _has_spectrum(results, backbone):
            append_csv(
                pca_spectrum_rows(config, train_store, cache_dir), results, unique=IDENTITY_COLUMNS
            )
        if executor == "ray":
            # One PCA fit per seed, shared by every D: fitted here, or parallel tasks would race
            # to fit and save the same file.
            for seed in sorted({p.seed for p in todo if p.method == "pca"}):
                fit_projection(config, Point("pca", train_store.dim, seed), train_store, cache_dir)
    desc = f"sweep {config.name}" + (f" [{config.backbone}]" if tag else "")
    tracker = SweepProgress(
        todo,
        point_weights(config, todo),
        desc=desc + (" (ray)" if executor == "ray" else ""),
        disable=not progress,
    )
    with tracker:
        if executor == "local":
            run_local(config, todo, train_store, val_store, cache_dir, results, tracker)
        else:
            run_ray(config, todo, train_store.path, val_store.path, cache_dir, results, tracker)
    return list(tracker.failures), len(todo)


class SweepError(RuntimeError):
    """Some points of a sweep failed; every other point finished and its rows are written.

    The message lists each failed point as ``(method, D=dim, seed=seed): ErrorType: message``;
    the full tracebacks are in ``<out>/failures.log``. Running the same sweep again retries only
    the failed points (the finished ones are skipped as usual).

    Attributes:
        failures: ``[(Point, exception)]`` in the order the points failed.
        results: the results table with the finished points' rows (a DataFrame).
    """

    def __init__(self, message: str, failures: list, results: pd.DataFrame) -> None:
        super().__init__(message)
        self.failures = failures
        self.results = results


def _report_failures(config, out: Path, failures, n_points: int, df: pd.DataFrame) -> None:
    """Write ``failures.log`` and raise :class:`SweepError` if points failed (else remove an
    earlier run's log)."""
    log = out / "failures.log"
    if not failures:
        log.unlink(missing_ok=True)
        return
    with log.open("w") as f:
        for point, error in failures:
            f.write(f"=== {point_label(point)}\n{''.join(traceback.format_exception(error))}\n")
    lines = "\n".join(f"  {point_label(p)}: {error_summary(e)}" for p, e in failures)
    raise SweepError(
        f"sweep {config.name}: {len(failures)} of {n_points} points failed:\n{lines}\n"
        f"The other {n_points - len(failures)} points finished; all finished rows are in "
        f"{out / 'results.csv'}, the tracebacks in {log}. Run the same sweep again to retry "
        "only the failed points",
        failures,
        df,
    ) from failures[0][1]


#: Fields that may differ when a sweep is resumed into the same folder: they add points or
#: change where / how fast things run. Any other field defines the rows already written.
RESUMABLE_FIELDS = (
    "name",
    "methods",
    "dims",
    "seeds",
    "data_root",
    "batch_size",
    "device",
    "trust_pickle",
)

#: Fields the fitted projections in ``projections/`` depend on (besides method, D and seed).
PROJECTION_FIELDS = (
    "dataset",
    "dataset_kwargs",
    "backbone",
    "weights",
    "backbone_kwargs",
    "train",
    "val",
    "flip",
    "method_kwargs",
)

#: Fields a store's content depends on that its path (:func:`store_path`) does not encode.
STORE_FIELDS = ("dataset_kwargs", "weights", "backbone_kwargs")


#: Fields that say which backbones a sweep has; a multi-backbone sweep compares them per
#: backbone (:func:`_check_resume`).
BACKBONE_FIELDS = ("backbone", "weights", "backbone_kwargs", "backbones")


def _old_entries(old: dict) -> dict[str, dict]:
    """name -> ``{name, weights, kwargs}`` of the backbones of a ``config.json``."""
    try:
        if old.get("backbones") is not None:
            entries = normalize_backbones(old["backbones"])
        else:
            entries = [
                {
                    "name": old.get("backbone"),
                    "weights": old.get("weights"),
                    "kwargs": old.get("backbone_kwargs") or {},
                }
            ]
    except ValueError:
        return {}
    return {e["name"]: to_jsonable(e) for e in entries if isinstance(e["name"], str)}


def _check_resume(config: SweepConfig, out: Path) -> None:
    """Refuse to resume into ``out`` a sweep whose result-defining fields differ.

    Only a folder with results rows is a resume. In a folder without any (a run that failed
    before its first point finished), ``config.json`` is simply replaced; what that run left
    under other settings and this run would reuse is removed first: ``projections/`` if a field
    of :data:`PROJECTION_FIELDS` differs, and the store at this sweep's store path if a field of
    :data:`STORE_FIELDS` differs (or ``flip`` is now on, for the val store).

    A config that lists ``backbones`` is compared per backbone: a backbone may be added (only
    its points run) or dropped (its rows stay); a backbone whose ``weights`` / ``kwargs``
    changed is refused if the table has rows of it, else its stale stores and fits are removed.
    """
    path = out / "config.json"
    if not path.exists():
        return
    old = recorded_config(json.loads(path.read_text()), str(path))
    new = to_jsonable(config.to_dict())
    skip = RESUMABLE_FIELDS + (BACKBONE_FIELDS if config.multi_backbone else ())
    changed = [k for k, v in new.items() if k not in skip and old.get(k) != v]
    if "dataset_kwargs" in changed and old.get("dataset") == new.get("dataset"):
        # an option spelled out at its default names the same data as one left out
        # (e.g. ``nuisance: 0`` and a config written before the option existed)
        defaults = to_jsonable(dataset_factory_defaults(str(new.get("dataset"))))
        if {**defaults, **(old.get("dataset_kwargs") or {})} == {
            **defaults,
            **(new.get("dataset_kwargs") or {}),
        }:
            changed.remove("dataset_kwargs")
    if "probe_kwargs" in changed and _same_linear_images(config, out, old, new):
        changed.remove("probe_kwargs")
    changed_bb = []  # (single-backbone config, old entry) of the backbones whose settings changed
    if config.multi_backbone:
        before = _old_entries(old)
        for sub, entry in zip(config.backbone_configs(), config.backbone_entries()):
            prior = before.get(entry["name"])
            if prior is not None and prior != to_jsonable(entry):
                changed_bb.append((sub, prior))
    if not changed and not changed_bb:
        return
    results = out / "results.csv"
    if has_results(results):
        if changed:
            diffs = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed]
            raise ValueError(
                f"{out} holds a sweep with another configuration ({'; '.join(diffs)}); resuming "
                "would mix their results. Use another output folder, or delete this one"
            )
        from stego_probe.results import done_keys

        with_rows = {k[0] for k in done_keys(results, ["backbone"])}
        refused = [(sub, prior) for sub, prior in changed_bb if sub.backbone in with_rows]
        if refused:
            diffs = [
                f"{sub.backbone}: weights {prior['weights']!r} -> {sub.weights!r}, kwargs "
                f"{prior['kwargs']!r} -> {to_jsonable(sub.backbone_kwargs)!r}"
                for sub, prior in refused
            ]
            raise ValueError(
                f"{out} holds results of backbone(s) {[s.backbone for s, _ in refused]} with other "
                f"settings ({'; '.join(diffs)}); resuming would mix their results. Use another "
                "output folder, or give the changed backbone another name"
            )
    stale = []
    subs = config.backbone_configs()
    if set(changed) & set(PROJECTION_FIELDS):
        stale.append(out / "projections")
    for sub in subs:
        for which in ("train", "val"):
            if set(changed) & set(STORE_FIELDS) or (
                which == "val" and "flip" in changed and config.flip
            ):
                stale.append(Path(store_path(sub, out, which)))
    for sub, _prior in changed_bb:
        stale += [Path(store_path(sub, out, w)) for w in ("train", "val")]
        stale.append(projections_dir(config, out, sub.backbone))
    what = ", ".join(changed + [f"backbone {sub.backbone}" for sub, _ in changed_bb])
    for p in dict.fromkeys(stale):
        if p.exists():
            warnings.warn(
                f"{out} has no results yet, so this is not a resume; removing {p}, left by an "
                f"earlier run with other settings ({what})"
                if not changed_bb or changed
                else f"{out}: removing {p}, left by an earlier run of that backbone with other "
                f"settings ({what}; the table has no rows of it)",
                RuntimeWarning,
                stacklevel=3,
            )
            shutil.rmtree(p)


def _same_linear_images(config: SweepConfig, out: Path, old: dict, new: dict) -> bool:
    """True when two recorded ``probe_kwargs`` differ only in the L-BFGS linear probe's
    ``max_images`` and neither cap is below the size of any train store the sweep in ``out``
    used (``stores.json``: its own stores or given ones; a backbone without a recorded store
    has no rows yet): both read every training image, so the rows agree (e.g. a demo folder
    written before the cap existed)."""
    a, b = dict(old.get("probe_kwargs") or {}), dict(new.get("probe_kwargs") or {})
    la, lb = dict(a.pop("linear", None) or {}), dict(b.pop("linear", None) or {})
    caps = (la.pop("max_images", None), lb.pop("max_images", None))
    if a != b or la != lb or caps[0] == caps[1]:
        return False
    from stego_probe.store import FeatureStore
    from stego_probe.sweep.stores import STORES_FILE

    try:
        recorded = json.loads((out / STORES_FILE).read_text())
    except (OSError, ValueError):
        return False
    for sub in config.backbone_configs():
        entry = recorded.get(backbone_tag(sub.backbone)) if config.multi_backbone else recorded
        if not isinstance(entry, dict) or "train" not in entry:
            continue  # this backbone has not run: its rows will be computed under the new cap
        path = str(entry["train"])
        if "://" not in path and not os.path.isabs(path):
            path = str(out / path)
        try:
            n = int(FeatureStore.open(path).n_images)
        except Exception:  # noqa: BLE001 - no readable store: the caps may matter
            return False
        if any(cap is not None and int(cap) < n for cap in caps):
            return False
    return True


def _has_spectrum(results: Path, backbone: str | None = None) -> bool:
    """Whether ``results`` holds the PCA spectrum rows (of ``backbone``, when given)."""
    if not results.exists():
        return False
    df = read_results(results)
    rows = df["metric"] == "explained_variance_ratio"
    if backbone:
        rows &= df["backbone"].astype(str) == backbone
    return bool(rows.any())


#: Optional extras a sweep can need: extra -> (what needs it, module to import, package).
_EXTRAS = {
    "ray": ("executor='ray'", "ray", "Ray"),
    "umap": ("method 'umap'", "umap", "umap-learn"),
    "hnne": ("method 'hnne'", "hnne", "hnne"),
}


def required_extras(config: SweepConfig, executor: str = "local") -> list[str]:
    """The optional extras (``pip install 'stego-probe[<extra>]'``) a sweep needs.

    ``ray`` for ``executor="ray"``, ``umap`` / ``hnne`` when those methods are swept. A sweep
    never needs the ``crf`` extra: it evaluates without the dense CRF (``crf`` is false in its
    rows).
    """
    extras = ["ray"] if executor == "ray" else []
    return extras + [m for m in ("umap", "hnne") if m in config.methods]


def check_dependencies(config: SweepConfig, executor: str = "local") -> None:
    """Import every optional package the sweep needs (:func:`required_extras`).

    :func:`run_sweep` calls it first, so a missing extra fails in seconds, before any store is
    extracted or anything is written, instead of after hours of extraction.

    Raises:
        ImportError: naming each missing package, what needs it and its
            ``pip install 'stego-probe[<extra>]'`` command.
    """
    missing = []
    for extra in required_extras(config, executor):
        what, module, package = _EXTRAS[extra]
        try:
            importlib.import_module(module)
        except ImportError as e:
            missing.append(f"{what} needs {package}: pip install 'stego-probe[{extra}]' ({e})")
    if missing:
        raise ImportError(
            f"sweep {config.name}: {'; '.join(missing)}. Nothing was extracted or written"
        )


def set_num_threads(n: int | str | None) -> None:
    """Backward-compatible alias of :func:`stego_probe.threads.set_num_threads` (torch, FAISS
    and BLAS threads for the rest of the process; None leaves the defaults)."""
    from stego_probe import threads

    threads.set_num_threads(n)
