"""Measuring one sweep point: fit -> probes -> metrics -> distinctness, as tidy rows.

:func:`run_point` is what each executor runs for a point; :func:`val_code_sample` is the seeded
sample of val codes the distinctness measures use (:data:`DISTINCTNESS_KMEANS`).
"""

from __future__ import annotations

import numpy as np

from stego_probe.results import make_rows
from stego_probe.sweep.config import DEFAULT_DISTINCTNESS_TOKENS, SweepConfig
from stego_probe.sweep.fit import fit_projection, torch_device
from stego_probe.sweep.points import Point, point_context
from stego_probe.threads import uses_threads

#: k-means protocol of the distinctness measures (one restart per seed; ``kmeans_iterations``
#: counts the iterations until the objective changes by <= ``tol``, a convergence *speed*).
DISTINCTNESS_KMEANS = {"niter": 50, "tol": 1e-4}


def probe_kwargs_for(config: SweepConfig) -> dict:
    """Per-probe kwargs with the sweep's device for the torch-trained probes."""
    out = {k: dict(v) for k, v in config.probe_kwargs.items()}
    for name in ("cluster", "linear"):
        out.setdefault(name, {}).setdefault("device", torch_device(config))
    return out


def evaluate_kwargs(config: SweepConfig, point: Point) -> dict:
    """The :func:`~stego_probe.evaluate.evaluate_stores` arguments of one sweep point, other
    than the stores and the projection: the config's probes, mode, flip, probe kwargs
    (:func:`probe_kwargs_for`) and batch size, the point's method and seed, no progress bar."""
    return {
        "probes": config.probes,
        "method": point.method,
        "mode": config.mode,
        "flip": config.flip,
        "seed": point.seed,
        "probe_kwargs": probe_kwargs_for(config),
        "batch_size": config.batch_size,
        "progress": False,
    }


@uses_threads(store="train_store")
def run_point(
    config: SweepConfig, point: Point, train_store, val_store, cache_dir, *, threads="auto"
) -> list[dict]:
    """Evaluate one sweep point and return its tidy rows (probe metrics + distinctness).

    ``threads``: CPU threads while the point runs (:mod:`stego_probe.threads`; ``"auto"``: 1
    for small stores, all cores for ViT-sized ones).
    """
    from stego_probe.evaluate import evaluate_stores

    proj = fit_projection(config, point, train_store, cache_dir, val_store=val_store)
    context = point_context(config, val_store, point)
    df = evaluate_stores(
        train_store,
        val_store,
        projection=None if point.method == "dino" else proj,
        **evaluate_kwargs(config, point),
    )
    df["dim"] = point.dim
    rows = df.to_dict("records")
    dist = config.distinctness or {}
    if dist.get("enabled", True):
        from stego_probe.distinctness import distinctness_report

        n_tokens = int(dist.get("n_tokens", DEFAULT_DISTINCTNESS_TOKENS))
        codes, labels = val_code_sample(val_store, proj, n_tokens=n_tokens, seed=point.seed)
        try:
            report = distinctness_report(
                codes,
                labels,
                n_clusters=val_store.n_classes,
                seeds=tuple(dist.get("seeds", (0, 1, 2))),
                **DISTINCTNESS_KMEANS,
            )
        except ValueError as e:  # degenerate codes or labels: say where they came from
            raise ValueError(
                f"distinctness of {len(codes)} sampled codes of val store {val_store.path}: {e}"
            ) from e
        kmeans = {f"kmeans_{k}": v for k, v in DISTINCTNESS_KMEANS.items()}
        context = {**context, "probe": "none", "match": "", **kmeans, "kmeans_nredo": 1}
        rows += make_rows(context, report)
    return rows


def val_code_sample(val_store, projection, n_tokens: int, seed: int):
    """A seeded sample of val tokens projected to codes, with their token labels.

    Returns:
        codes (n, D) float32 and labels (n,) int64 (-1 = ignore).

    Raises:
        ValueError: the sample holds NaN or inf tokens (the message names the store, the image
            index and its id).
    """
    from stego_probe.projections.base import check_store_sample

    tokens, labels = val_store.sample_tokens(n_tokens, seed=seed, with_labels=True)
    check_store_sample(val_store, tokens)
    codes = projection.transform(np.ascontiguousarray(tokens, dtype=np.float32))
    return np.asarray(codes, dtype=np.float32), np.asarray(labels, dtype=np.int64)
