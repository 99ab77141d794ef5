"""Projections from backbone tokens (C) to codes (D): DINO identity, PCA, RP, UMAP, h-NNE, STEGO.

Registry names (the ``method`` column of results tables):

=============== ==================================================================
``dino``        :class:`Identity` (alias ``identity``), no projection, ``D = C``
``pca``         :class:`PCAProjection`, streaming PCA of standardised tokens
``rp``          :class:`RandomProjection` with ``kind="gaussian"``
``rp_sparse``   :class:`RandomProjection` with ``kind="sparse"``
``umap``        :class:`UMAPProjection` (extra ``umap``)
``hnne``        :class:`HNNEProjection` (extra ``hnne``)
``stego``       ``stego_probe.projections.stego.StegoHead`` (imported lazily)
=============== ==================================================================

Examples:
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(200, 12)).astype(np.float32)
    >>> get_projection("pca", 4).fit(X).transform(X).shape
    (200, 4)
"""

from __future__ import annotations

import os
from typing import Any

from stego_probe.projections.base import (
    Projection,
    StreamingMoments,
    guard_scale,
    is_store,
)
from stego_probe.projections.hnne import HNNEProjection
from stego_probe.projections.identity import Identity
from stego_probe.projections.pca import PCAProjection
from stego_probe.projections.random import RandomProjection, random_matrix
from stego_probe.projections.umap import UMAPProjection
from stego_probe.registry import Registry

__all__ = [
    "HNNEProjection",
    "Identity",
    "PCAProjection",
    "PROJECTIONS",
    "Projection",
    "RandomProjection",
    "StreamingMoments",
    "UMAPProjection",
    "get_projection",
    "guard_scale",
    "is_store",
    "list_projections",
    "load_projection",
    "projection_class",
    "random_matrix",
]

#: The projection registry: method name -> class; meta ``fixed``: keyword arguments the name
#: fixes. ``stego`` is registered as a lazy loader (``lazy=True``): importing the STEGO class
#: pulls in the training code.
PROJECTIONS = Registry("projection method")
for _name, _klass, _fixed in (
    ("dino", Identity, {}),
    ("identity", Identity, {}),
    ("pca", PCAProjection, {}),
    ("rp", RandomProjection, {"kind": "gaussian"}),
    ("rp_sparse", RandomProjection, {"kind": "sparse"}),
    ("umap", UMAPProjection, {}),
    ("hnne", HNNEProjection, {}),
):
    PROJECTIONS.register(_name, _klass, fixed=_fixed)


@PROJECTIONS.register("stego", fixed={}, lazy=True)
def _stego_class() -> type:
    from stego_probe.projections.stego import StegoHead  # lazy: pulls in the training code

    return StegoHead


def _class_of(method: str) -> type:
    entry = PROJECTIONS.entry(method)
    return entry.obj() if entry.meta.get("lazy") else entry.obj


def list_projections(filter: str | None = None) -> list[str]:
    """Registry names accepted by :func:`get_projection`, sorted; ``filter``: an ``fnmatch``
    pattern (``"rp*"``)."""
    return PROJECTIONS.names(filter)


def get_projection(method: str, n_components: int | None = None, **kw: Any) -> Any:
    """Build an unfitted projection by registry name.

    Args:
        method: one of :func:`list_projections` (``dino``/``identity``, ``pca``, ``rp``,
            ``rp_sparse``, ``umap``, ``hnne``, ``stego``).
        n_components: output width ``D`` (None: all ``C`` for ``dino`` / ``pca``).
        **kw: further constructor arguments (``standardize``, ``random_state``, ...).

    Returns:
        the estimator (``StegoHead`` for ``"stego"``, a :class:`Projection` otherwise).

    Raises:
        KeyError: unknown ``method``.
        ValueError: ``kw`` contradicts the method (e.g. ``kind`` for ``rp_sparse``).
    """
    klass = _class_of(method)
    fixed = PROJECTIONS.meta(method)["fixed"]
    for key, value in fixed.items():
        if key in kw and kw[key] != value:
            raise ValueError(f"projection {method!r} has {key}={value!r}, got {key}={kw[key]!r}")
    return klass(n_components=n_components, **{**kw, **fixed})


def projection_class(name: str) -> type:
    """The class called ``name`` (as written by ``Projection.save``), or a registry name's class."""
    eager = {e.obj.__name__: e.obj for e in PROJECTIONS.find(lambda e: not e.meta.get("lazy"))}
    if name in eager:
        return eager[name]
    if name in PROJECTIONS:
        return _class_of(name)
    if name == "StegoHead":
        return _stego_class()
    raise KeyError(
        f"unknown projection class {name!r}; expected one of {sorted([*eager, 'StegoHead'])}"
    )


def load_projection(path: str | os.PathLike, trust: bool = False) -> Projection:
    """Load any projection saved with ``save(path)`` (dispatches on the stored class).

    Safe by default: reading runs no code (the common estimator format of
    :mod:`stego_probe.persist`, ``np.load(allow_pickle=False)``; files of the earlier format,
    ``torch.load(weights_only=True)``); UMAP / h-NNE files, whose fitted model is a pickle,
    need ``trust=True`` (see :meth:`Projection.load`).
    """
    return Projection.load(path, trust=trust)


def __getattr__(name: str) -> Any:
    if name == "StegoHead":
        return _stego_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
