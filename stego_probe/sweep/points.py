"""The points of a sweep: what they are, in which order they run and what they cost.

A :class:`Point` is a method at a width ``D`` with a seed. :func:`sweep_points` enumerates a
config's points, :func:`run_order` orders them (the first point of every method first),
:func:`point_weights` gives each a prior cost for the ETA (:data:`STEGO_STEP_COST`),
:func:`point_label` names one in bars and errors, and :func:`point_context` gives the identity
columns of its result rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stego_probe.results import mode_column
from stego_probe.sweep.config import SweepConfig


@dataclass(frozen=True)
class Point:
    """One sweep point: a method at a width with a seed.

    ``backbone`` names the backbone of a multi-backbone sweep's point (None otherwise); it is
    shown by :func:`point_label` but not compared: points are told apart within one backbone
    (:func:`stego_probe.sweep.table.done_points` filters the rows by backbone).
    """

    method: str
    dim: int
    seed: int
    backbone: str | None = field(default=None, compare=False)


def sweep_points(config: SweepConfig, feature_dim: int) -> list[Point]:
    """Enumerate the points of a sweep for a backbone of width ``feature_dim``.

    ``dino`` is evaluated once per seed at ``D = feature_dim``; width methods at every configured
    ``D <= feature_dim`` (``D = feature_dim`` is added for PCA / RP / STEGO so the curves meet
    DINO).
    """
    points = []
    for method in config.methods:
        if method == "dino":
            dims = [feature_dim]
        else:
            dims = sorted({int(d) for d in config.dims if int(d) <= feature_dim})
            if method in ("pca", "rp", "rp_sparse", "stego") and feature_dim not in dims:
                dims.append(feature_dim)
        points += [Point(method, d, int(s)) for d in dims for s in config.seeds]
    return points


def point_context(config: SweepConfig, store, point: Point) -> dict:
    prov = store.provenance
    return {
        "dataset": config.dataset,
        "backbone": config.backbone,
        "weights_sha256": prov.get("weights_sha256") or "",
        "method": point.method,
        "dim": point.dim,
        "seed": point.seed,
        "crf": False,
        "mode": mode_column(config.mode, config.flip),
        "split": config.val.split,
    }


#: Cost of one STEGO training step relative to one step of a trained probe (same batch size),
#: the prior of :func:`point_weights` until a STEGO point has been timed. Measured on the
#: ``synthetic`` preset on 2 CPU cores: a STEGO point took 59-67 s, a PCA / RP point 9.2-9.8 s
#: (200 steps x 16 images for both the head and the linear probe).
STEGO_STEP_COST = 5.5
#: Prior passes of the L-BFGS linear probe over its training images (measured: 25 on the
#: demo's codes), for :func:`point_weights`.
LBFGS_PASSES_PRIOR = 30


def point_label(point: Point) -> str:
    """How progress bars and errors name a point: ``"(method, D=dim, seed=seed)"``, with the
    backbone first in a multi-backbone sweep (``"(descriptor, pca, D=3, seed=0)"``)."""
    head = f"{point.backbone}, " if point.backbone else ""
    return f"({head}{point.method}, D={point.dim}, seed={point.seed})"


def run_order(points: list[Point]) -> list[Point]:
    """The order in which :func:`run_sweep` runs ``points``: the first point of every method,
    then the others in enumeration order (:func:`sweep_points`).

    Timing one point of each method early (the STEGO points are far slower than the others)
    lets :class:`SweepProgress` correct its cost estimate within the first few points, while
    the cheap methods' curves still fill in first. The order only depends on ``points``, so a
    resumed sweep runs its remaining points in the same order; every point is independent
    (PCA is fitted once per seed and shared by every D whatever the order).
    """
    firsts: dict[str, Point] = {}
    for p in points:
        firsts.setdefault(p.method, p)
    head = list(firsts.values())
    return head + [p for p in points if p not in set(head)]


def point_weights(config: SweepConfig, points: list[Point]) -> dict[Point, float]:
    """Prior cost of each point for the progress ETA, in units of one point's evaluation.

    Every point costs 1 (fit the probes on its codes, score them on val, distinctness). A
    ``stego`` point adds the training of its head: ``STEGO_STEP_COST * steps * batch_size`` over
    the work of the trained probes (``cluster`` and an Adam ``linear``: ``steps * batch_size``
    images; an L-BFGS ``linear``: :data:`LBFGS_PASSES_PRIOR` passes over ``max_images``
    images; 7000 x 32 when neither is swept). :class:`SweepProgress` replaces these priors by measured times as points
    finish, so they only matter until each method has been timed.

    Returns:
        point -> weight (> 0).
    """
    from stego_probe.probes.cluster_lookup import DEFAULT_BATCH_SIZE, DEFAULT_STEPS

    probe_work = 0
    for name in ("linear", "cluster"):
        if name in config.probes:
            kw = config.probe_kwargs.get(name, {})
            if name == "linear" and kw.get("solver", "adam") == "lbfgs":
                # passes x images per pass (a store's size is not known here: the cap, or
                # as many images as Adam's schedule reads)
                images = kw.get("max_images") or DEFAULT_STEPS * DEFAULT_BATCH_SIZE
                probe_work += LBFGS_PASSES_PRIOR * int(images)
            elif name == "linear" and kw.get("solver") == "tokens":
                continue  # in memory on the k-means sample: part of the evaluation's unit
            else:
                probe_work += int(kw.get("steps", DEFAULT_STEPS)) * int(
                    kw.get("batch_size", DEFAULT_BATCH_SIZE)
                )
    probe_work = probe_work or DEFAULT_STEPS * DEFAULT_BATCH_SIZE
    stego_extra: dict[int, float] = {}
    weights = {}
    for p in points:
        weights[p] = 1.0
        if p.method == "stego":
            if p.dim not in stego_extra:
                stego_extra[p.dim] = _stego_work(config, p.dim) * STEGO_STEP_COST / probe_work
            weights[p] += stego_extra[p.dim]
    return weights


def _stego_work(config: SweepConfig, dim: int) -> float:
    """``steps * batch_size`` of the sweep's STEGO head at width ``dim`` (preset resolved)."""
    from stego_probe.projections import get_projection

    try:
        cfg = get_projection("stego", dim, **config.method_kwargs.get("stego", {}))
        params = cfg.resolved_params()
        return float(params["steps"]) * float(params["batch_size"])
    except (TypeError, ValueError, KeyError):  # bad kwargs: the point itself reports them
        return 7000.0 * 32.0
