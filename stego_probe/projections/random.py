"""Seeded, saved random projections (PROTOCOL §6.4, §6.5; quirks Q32–Q34)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from sklearn.random_projection import GaussianRandomProjection, SparseRandomProjection

from stego_probe.projections.base import (
    Projection,
    StreamingMoments,
    check_random_state_param,
    guard_scale,
)
from stego_probe.store import is_store

RP_KINDS = ("gaussian", "sparse")


def random_matrix(
    n_components: int,
    n_features: int,
    kind: str = "gaussian",
    random_state: int | np.random.RandomState | None = 0,
    density: float | str = "auto",
) -> np.ndarray:
    """The random projection matrix ``R`` (D, C) float64 that scikit-learn would draw.

    ``kind="gaussian"``: i.i.d. ``N(0, 1/D)`` entries, identical to
    ``GaussianRandomProjection(n_components=D, random_state=random_state).fit(X).components_``
    for any float64 ``X`` with ``C`` columns. ``kind="sparse"``: the Achlioptas / Li et al.
    matrix of ``SparseRandomProjection(n_components=D, density=density,
    random_state=random_state)`` (entries ``0`` or ``±sqrt(1/(density D))``), densified.

    Args:
        n_components: ``D``.
        n_features: ``C``.
        kind: ``"gaussian"`` or ``"sparse"``.
        random_state: an int seed, None (fresh entropy, not reproducible) or a
            ``numpy.random.RandomState`` (drawn from: each call gives another matrix).
        density: sparse only; ``"auto"`` = ``1/sqrt(C)``.

    Returns:
        (D, C) float64 array.
    """
    if kind not in RP_KINDS:
        raise ValueError(f"kind must be one of {RP_KINDS}, got {kind!r}")
    if not isinstance(n_components, int | np.integer) or n_components < 1:
        raise ValueError(f"n_components must be a positive int, got {n_components!r}")
    check_random_state_param(random_state)
    dummy = np.zeros((1, int(n_features)), dtype=np.float64)
    with warnings.catch_warnings():
        # D > C is legal for an embedding sweep; sklearn warns about it on every draw.
        warnings.filterwarnings("ignore", message=".*number of components is higher.*")
        if kind == "gaussian":
            est = GaussianRandomProjection(
                n_components=int(n_components), random_state=random_state
            )
            return np.asarray(est.fit(dummy).components_, dtype=np.float64)
        est = SparseRandomProjection(
            n_components=int(n_components), density=density, random_state=random_state
        )
        return np.asarray(est.fit(dummy).components_.toarray(), dtype=np.float64)


class RandomProjection(Projection):
    """Gaussian or sparse random projection ``y = z R^T``, seeded and saved with the model.

    The reference draws ``R`` from NumPy's global RNG without a seed and never saves it (Q33);
    here ``R`` comes from ``random_state`` (bit-identical to scikit-learn's estimator with the same
    seed, see :func:`random_matrix`), is stored in ``components_`` and saved by :meth:`save`. The
    projection runs in torch float32 on the input's device (no sklearn round trip, Q34).

    Standardisation as :class:`~stego_probe.projections.pca.PCAProjection` (the reference z-scores
    before RP too): ``"train"`` (default) ``z = (x - mean_) / scale_`` with streamed fit-data
    statistics; ``"batch"`` (parity, Q32) ``z = (X_b - mean(X_b)) / std_pop(X_b)`` over the
    call's tokens; ``None`` ``z = x`` (raw features). Only ``"train"`` reads the fit data;
    otherwise fitting only reads ``C``.

    Args:
        n_components: output width ``D`` (required).
        kind: ``"gaussian"`` (``"rp"``) or ``"sparse"`` (``"rp_sparse"``).
        standardize: ``"train"``, ``"batch"`` or None.
        random_state: seed of ``R`` (and of the image subset for the statistics): an int, None
            (fresh entropy) or a ``numpy.random.RandomState`` (drawn from), as in scikit-learn.
        density: sparse only, as scikit-learn (``"auto"`` = ``1/sqrt(C)``).
        n_images, subset, chunk_size: fit-data selection for the statistics, as PCA.

    Raises (``fit``): ``ValueError`` for NaN or inf in the fit data read for the statistics
    (naming the array, or the store and the first bad image) or an invalid ``random_state``;
    ``transform`` raises ``ValueError`` for non-finite tokens and
    ``sklearn.exceptions.NotFittedError`` before ``fit``.

    Attributes:
        components_: (D, C) float64, ``R``. Redrawn from ``random_state`` by ``set_params``
            when ``n_components``, ``kind``, ``density`` or ``random_state`` change.
        mean_, scale_: (C,) float64 fit-data mean / population std (``standardize="train"``
            fits only; None otherwise).

    Examples:
        >>> X = np.random.default_rng(0).normal(size=(100, 16)).astype(np.float32)
        >>> rp = RandomProjection(4, random_state=0).fit(X)
        >>> rp.transform(X).shape, rp.components_.shape
        ((100, 4), (4, 16))
    """

    method = "rp"
    _array_attrs = ("components_", "mean_", "scale_")
    _meta_attrs = ("n_features_in_",)

    def __init__(
        self,
        n_components: int | None = None,
        *,
        kind: str = "gaussian",
        standardize: str | None = "train",
        random_state: int | np.random.RandomState | None = 0,
        density: float | str = "auto",
        n_images: int | None = 5000,
        subset: str = "random",
        chunk_size: int = 65536,
    ) -> None:
        self.n_components = n_components
        self.kind = kind
        self.standardize = standardize
        self.random_state = random_state
        self.density = density
        self.n_images = n_images
        self.subset = subset
        self.chunk_size = chunk_size

    def _fit(self, source: Any) -> None:
        if self.n_components is None:
            raise ValueError("RandomProjection: n_components (the output width D) is required")
        if self.kind not in RP_KINDS:
            raise ValueError(f"kind must be one of {RP_KINDS}, got {self.kind!r}")
        self.mean_ = None
        self.scale_ = None
        if self.standardize == "train":
            moments = StreamingMoments(full=False)
            for chunk in self._iter_chunks(source):
                moments.update(chunk)
            self.mean_ = moments.mean()
            self.scale_ = guard_scale(np.sqrt(moments.variance()), self.mean_, "RP fit data")
            c = self.mean_.shape[0]
        else:
            c = store_dim(source) if is_store(source) else int(source.shape[1])
            self._fit_info["n_tokens"] = 0
        self.n_features_in_ = int(c)
        self.components_ = random_matrix(
            self.n_components, c, self.kind, self.random_state, self.density
        )

    @property
    def method_name(self) -> str:
        """Registry name: ``"rp"`` (gaussian) or ``"rp_sparse"``."""
        return "rp" if self.kind == "gaussian" else "rp_sparse"

    def _params_changed(self, changed: set[str]) -> None:
        if changed & {"n_components", "kind", "density", "random_state"}:
            if self.n_components is None:
                raise ValueError("RandomProjection: n_components cannot be None")
            self.components_ = random_matrix(
                self.n_components, self.n_features_in_, self.kind, self.random_state, self.density
            )

    def _transform_2d(self, x: torch.Tensor) -> torch.Tensor:
        z = self._standardize(x)
        r = torch.as_tensor(self.components_, dtype=torch.float32, device=x.device)
        return z @ r.T


def store_dim(store: Any) -> int:
    """Channel width ``C`` of a store: its ``dim`` attribute, else one image's tokens."""
    dim = getattr(store, "dim", None)
    if dim is not None:
        return int(dim)
    if int(store.n_images) == 0:
        raise ValueError(f"feature store {getattr(store, 'path', store)!r} has no images")
    return int(np.asarray(store.tokens(np.arange(1))).shape[-1])
