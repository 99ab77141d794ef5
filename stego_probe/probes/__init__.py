"""Probes that read codes and predict segments (PROTOCOL §4, §5).

* :class:`KMeansProbe` — stego_probe's own k-means probe (FAISS spherical k-means, §4.2).
* :class:`ClusterLookupProbe` — the reference cluster probe (online spherical k-means by Adam,
  §4.1).
* :class:`LinearProbe` — the supervised linear probe (1x1 convolution, §4.3).
* :func:`dense_crf`, :func:`batch_crf` — the evaluation-time dense CRF (§5).

All follow ``fit(codes, labels=None) -> self`` and ``predict(codes) -> ids`` on codes
``(N, D, h, w)`` or ``(M, D)``. Submodules are imported on first use, so importing this package
does not import FAISS or pydensecrf.
"""

from __future__ import annotations

import importlib

#: The probe names of the evaluation pipeline (:data:`stego_probe.evaluate.PROBES`), here so that
#: the command line can list them without importing torch.
PROBE_NAMES = ("kmeans", "cluster", "linear")

_EXPORTS = {
    "KMeansProbe": "stego_probe.probes.kmeans",
    "ClusterLookupProbe": "stego_probe.probes.cluster_lookup",
    "cluster_lookup_loss": "stego_probe.probes.cluster_lookup",
    "LinearProbe": "stego_probe.probes.linear",
    "linear_probe_loss": "stego_probe.probes.linear",
    "dense_crf": "stego_probe.probes.crf",
    "batch_crf": "stego_probe.probes.crf",
}

__all__ = sorted([*_EXPORTS, "PROBE_NAMES"])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
