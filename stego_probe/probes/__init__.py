"""Probes that read codes and predict segments (PROTOCOL §4, §5).

* :class:`KMeansProbe` — stego_probe's own k-means probe (FAISS spherical k-means, §4.2).
* :class:`ClusterLookupProbe` — the reference cluster probe (online spherical k-means by Adam,
  §4.1).
* :class:`LinearProbe` — the supervised linear probe (1x1 convolution, §4.3).
* :func:`dense_crf`, :func:`batch_crf` — the evaluation-time dense CRF (§5).

One interface for the three probes, on codes ``(N, D, h, w)`` or ``(M, D)``
(:mod:`stego_probe.codes`):

* ``fit(codes, labels=None) -> self`` (labels only for the linear probe);
* ``predict(codes, *, size=None)`` -> int64 ids ``(N, H, W)`` / ``(N, h, w)`` / ``(M,)``, the code
  bilinearly upsampled to ``size = (H, W)`` first (code first, then probe);
* ``log_probs(codes, alpha, *, size=None)`` -> float32 ``(N, K', H, W)`` / ``(M, K')``,
  ``log_softmax(alpha * scores)`` (the CRF input).

The probes are registered by name (:func:`get_probe`, :func:`list_probes`; the names of
:data:`PROBE_NAMES` and the aliases of :data:`PROBE_ALIASES`). Submodules are imported on first
use, so importing this package imports neither torch, FAISS nor pydensecrf.
"""

from __future__ import annotations

import importlib

from stego_probe.registry import Registry

#: The probe names of the evaluation pipeline, in report order (:func:`list_probes`), here so
#: that the command line can list them without importing torch.
PROBE_NAMES = ("kmeans", "cluster", "linear")
#: Names accepted by :func:`get_probe` and the evaluation pipeline -> canonical probe name.
PROBE_ALIASES = {
    "kmeans": "kmeans",
    "kmeans_faiss": "kmeans",
    "cluster": "cluster",
    "stego_cluster": "cluster",
    "cluster_lookup": "cluster",
    "linear": "linear",
}

_EXPORTS = {
    "KMeansProbe": "stego_probe.probes.kmeans",
    "ClusterLookupProbe": "stego_probe.probes.cluster_lookup",
    "cluster_lookup_loss": "stego_probe.probes.cluster_lookup",
    "LinearProbe": "stego_probe.probes.linear",
    "linear_probe_loss": "stego_probe.probes.linear",
    "dense_crf": "stego_probe.probes.crf",
    "batch_crf": "stego_probe.probes.crf",
}

#: The probe registry: canonical name -> ``(module, class name)``, with metadata ``size``, the
#: constructor argument that :func:`get_probe`'s ``n_classes`` fills in, and ``supervised``.
PROBE_REGISTRY = Registry("probe")
PROBE_REGISTRY.register(
    "kmeans",
    ("stego_probe.probes.kmeans", "KMeansProbe"),
    size="n_clusters",
    supervised=False,
    description="FAISS spherical k-means (PROTOCOL §4.2)",
)
PROBE_REGISTRY.register(
    "cluster",
    ("stego_probe.probes.cluster_lookup", "ClusterLookupProbe"),
    size="n_clusters",
    supervised=False,
    description="the reference's Adam-trained cluster probe (PROTOCOL §4.1)",
)
PROBE_REGISTRY.register(
    "linear",
    ("stego_probe.probes.linear", "LinearProbe"),
    size="n_classes",
    supervised=True,
    description="1x1 convolution, cross-entropy (PROTOCOL §4.3); converged L-BFGS by default",
)

__all__ = sorted(
    [
        *_EXPORTS,
        "PROBE_ALIASES",
        "PROBE_NAMES",
        "PROBE_REGISTRY",
        "canonical_name",
        "get_probe",
        "list_probes",
        "probe_class",
    ]
)


def canonical_name(name: str) -> str:
    """The canonical probe name of ``name`` or of one of its :data:`PROBE_ALIASES`
    (case and surrounding blanks ignored).

    Raises:
        ValueError: an unknown name (a :class:`~stego_probe.registry.UnknownNameError`, which is
            also a ``KeyError``), naming the known probes and aliases.

    Examples:
        >>> canonical_name("stego_cluster"), canonical_name(" KMeans ")
        ('cluster', 'kmeans')
    """
    key = str(name).strip().lower()
    if key not in PROBE_ALIASES:
        raise PROBE_REGISTRY.unknown(name, extra=sorted(set(PROBE_ALIASES) - set(PROBE_NAMES)))
    return PROBE_ALIASES[key]


def list_probes(filter: str | None = None) -> list[str]:
    """Canonical probe names in report order (``kmeans``, ``cluster``, ``linear``).

    Args:
        filter: an ``fnmatch`` pattern (``"*k*"``), or None for all.

    Examples:
        >>> list_probes(), list_probes("l*")
        (['kmeans', 'cluster', 'linear'], ['linear'])
    """
    names = set(PROBE_REGISTRY.names(filter))
    return [e.name for e in PROBE_REGISTRY.entries() if e.name in names]


def probe_class(name: str) -> type:
    """The class of probe ``name`` (or of an alias), imported on first use.

    Examples:
        >>> probe_class("kmeans_faiss").__name__
        'KMeansProbe'
    """
    module, cls_name = PROBE_REGISTRY.get(canonical_name(name))
    return getattr(importlib.import_module(module), cls_name)


def get_probe(name: str, n_classes: int | None = None, **kwargs):
    """Build an unfitted probe by name.

    Args:
        name: ``"kmeans"``, ``"cluster"`` or ``"linear"``, or an alias (:data:`PROBE_ALIASES`).
        n_classes: ``K``: the default number of clusters (``E = 0``; ``n_clusters``) of the
            cluster probes, or of outputs (``n_classes``) of the linear probe. None: pass the
            size in ``kwargs``.
        **kwargs: constructor arguments (e.g. ``random_state``, ``n_clusters``, ``steps``);
            they override the default from ``n_classes``.

    Returns:
        a :class:`KMeansProbe`, :class:`ClusterLookupProbe` or :class:`LinearProbe`.

    Raises:
        ValueError: unknown name, or no size (neither ``n_classes`` nor the probe's own size
            argument).

    Examples:
        >>> get_probe("stego_cluster", 5, steps=10).n_clusters
        5
    """
    key = canonical_name(name)
    size_arg = PROBE_REGISTRY.meta(key)["size"]
    kw = dict(kwargs)
    if n_classes is not None:
        kw.setdefault(size_arg, int(n_classes))
    if size_arg not in kw:
        raise ValueError(f"get_probe({name!r}): pass n_classes (K) or {size_arg}")
    return probe_class(key)(**kw)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
