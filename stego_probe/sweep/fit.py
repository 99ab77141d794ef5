"""Fitting a sweep point's projection, with the cache in ``<out>/projections/``.

:func:`fit_projection` fits (or reloads) one point's projection; PCA once per seed, narrowed
for every ``D``. A cached file is reused only if it records the same inputs
(:func:`stego_probe.sweep.fingerprint.projection_inputs`) and is finite
(:func:`check_projection_finite`). :func:`pca_spectrum_rows` gives the Figure 3 rows.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from stego_probe.results import make_rows
from stego_probe.sweep.config import SweepConfig
from stego_probe.sweep.fingerprint import projection_inputs
from stego_probe.sweep.points import Point, point_context, point_label


def check_projection_finite(proj, what: str) -> None:
    """``ValueError`` naming ``what`` if a fitted projection's saved arrays (components,
    statistics, network weights) hold NaN or inf, so that nothing non-finite is cached."""
    arrays = {name: getattr(proj, name, None) for name in type(proj)._array_attrs}
    if not type(proj)._pickled_state:  # a pickled model (UMAP / h-NNE) is not inspected
        arrays.update(proj._extra_state())
    bad = []
    for name, value in arrays.items():
        if value is None:
            continue
        arr = np.asarray(value)
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            bad.append(f"{name} ({int((~np.isfinite(arr)).sum())} of {arr.size})")
    if bad:
        raise ValueError(
            f"{what}: the fitted projection has NaN or infinite values in {', '.join(bad)}; "
            "it is not cached. Check the fit data (the train store) and the method_kwargs"
        )


def _save_fit(proj, path: Path, inputs: dict, point: Point) -> None:
    check_projection_finite(proj, f"{point_label(point)} fit")
    proj.provenance_ = {**dict(proj.provenance_), "sweep_inputs": inputs}
    proj.save(path)


def _load_cached(klass, path: Path, inputs_fn, trust: bool):
    """The cached fit at ``path`` if it was fitted on the same inputs, else None (with a
    warning saying why it is refitted). The class is checked before anything else is read."""
    proj = klass.load(path, trust=trust)
    cached = dict(getattr(proj, "provenance_", None) or {}).get("sweep_inputs")
    inputs = inputs_fn()
    if cached == inputs:
        try:
            check_projection_finite(proj, str(path))
        except ValueError as e:
            reason = str(e)
        else:
            return proj
    elif cached is None:
        reason = "it records no fingerprint of its inputs (written by an older version)"
    else:
        changed = sorted(k for k in set(cached) | set(inputs) if cached.get(k) != inputs.get(k))
        reason = f"its inputs changed ({', '.join(changed)})"
    warnings.warn(f"refitting the cached projection {path}: {reason}", RuntimeWarning, stacklevel=3)
    return None


def fit_projection(
    config: SweepConfig, point: Point, train_store, cache_dir: str | os.PathLike, val_store=None
):
    """Fit (or load from ``cache_dir``) the projection of one sweep point.

    PCA is fitted once per seed at full width and then narrowed with ``set_params``, so every D
    shares one eigendecomposition. Fitted projections are saved under ``cache_dir`` so that a
    resumed sweep and the figures can reuse them. Each cached file records the fingerprint of
    its inputs (:func:`projection_inputs`); a cached file whose inputs changed (e.g. the train
    store was extracted again) is refitted. A fit with NaN or inf values is never cached
    (:func:`check_projection_finite`); the fits themselves reject non-finite fit data, naming
    the store and the image.
    """
    from stego_probe.projections import get_projection, projection_class

    kwargs = dict(config.method_kwargs.get(point.method, {}))
    # A cached file is loaded as the class this point expects (checked before anything else is
    # read) and with torch's weights-only reader; a UMAP / h-NNE model is a pickle, unpickled
    # only with config.trust_pickle (otherwise it is refitted and the cache rewritten).
    klass = projection_class(point.method)
    trust = bool(config.trust_pickle)
    reuse = trust or not klass._pickled_state
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)

    def inputs():
        return projection_inputs(config, point, train_store, val_store)

    if point.method == "pca":
        path = cache_dir / f"pca_seed{point.seed}.pt"
        proj = _load_cached(klass, path, inputs, trust) if path.exists() else None
        if proj is None:
            proj = get_projection("pca", None, random_state=point.seed, **kwargs)
            proj.fit(train_store)
            _save_fit(proj, path, inputs(), point)
        return proj.set_params(n_components=point.dim)
    path = cache_dir / f"{point.method}_d{point.dim}_seed{point.seed}.pt"
    if path.exists() and reuse:
        proj = _load_cached(klass, path, inputs, trust)
        if proj is not None:
            return proj
    if point.method == "dino":
        proj = get_projection("dino", None)
    else:
        proj = get_projection(point.method, point.dim, random_state=point.seed, **kwargs)
    if point.method == "stego":
        # Checkpoint selection by validation cluster mIoU (the paper protocol, PROTOCOL §3.4).
        proj.set_params(progress=False, device=torch_device(config))
        proj.fit(train_store, val_store=val_store)
    else:
        proj.fit(train_store)
    _save_fit(proj, path, inputs(), point)
    return proj


def pca_spectrum_rows(config: SweepConfig, train_store, cache_dir) -> list[dict]:
    """Figure 3 rows: the explained-variance ratio of every PCA component (seed 0 fit)."""
    proj = fit_projection(
        config, Point("pca", train_store.dim, config.seeds[0]), train_store, cache_dir
    )
    context = point_context(config, train_store, Point("pca", 0, config.seeds[0]))
    context.update(probe="none", split=config.train.split)
    ratios = np.asarray(proj.explained_variance_ratio_, dtype=np.float64)
    if not np.isfinite(ratios).all():
        raise ValueError(
            f"PCA spectrum of train store {getattr(train_store, 'path', train_store)}: "
            f"{int((~np.isfinite(ratios)).sum())} of {ratios.size} explained-variance ratios are "
            "NaN or infinite; no rows are written"
        )
    rows = []
    for i, r in enumerate(ratios, start=1):
        rows += make_rows({**context, "dim": i}, {"explained_variance_ratio": float(r)})
    return rows


def torch_device(config: SweepConfig) -> str:
    from stego_probe.device import resolve_device

    return str(resolve_device(config.device))
