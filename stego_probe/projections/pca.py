"""Streaming PCA of standardised backbone tokens (PROTOCOL §6.2, §6.3, §6.5; quirks Q32, Q35)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.exceptions import NotFittedError

from stego_probe.projections.base import Projection, StreamingMoments, guard_scale
from stego_probe.store import is_store


class PCAProjection(Projection):
    """PCA fitted from streamed moments, with the reference's standardisation modes.

    **Fit.** Over a seeded subset of ``n_images`` images of a store (or all rows of an array), in
    chunks of about ``chunk_size`` tokens, accumulate ``n``, ``sum x`` and ``X^T X`` in float64
    (:class:`~stego_probe.projections.base.StreamingMoments`). From them:

    * ``mean_`` = per-channel mean, ``scale_`` = per-channel *population* std (as
      ``sklearn.preprocessing.StandardScaler``; zero-variance channels get 1 and a warning);
    * covariance of the standardised data ``cov_z = S^-1 cov_x S^-1`` with ``S = diag(scale_)``
      (``standardize`` in ``{"train", "batch"}``) or ``cov_x`` itself (``standardize=None``, plain
      centred PCA);
    * ``eigh(cov)``, eigenvalues sorted in decreasing order, eigenvectors with a fixed sign: the
      entry of largest absolute value of each component is positive (scikit-learn's
      ``svd_flip(u_based_decision=False)`` convention).

    This equals ``PCA().fit(StandardScaler().fit_transform(X))`` up to sign and float precision
    in ``O(C^2)`` memory instead of materialising ``X`` (quirk Q35).

    **One fit for every D.** All ``C`` components are kept; ``n_components`` only selects how many
    are used. ``set_params(n_components=D)`` or :meth:`with_components` switch ``D`` without
    refitting.

    **Transform** of tokens ``x`` (rows of ``X_b``, the tokens of one call), ``V = components_.T``:

    * ``"train"`` (default): ``z = (x - mean_) / scale_``, ``y = z V[:, :D]``. The PCA mean of
      ``z`` is exactly 0 here, so nothing else is subtracted. Independent of the batch.
    * ``"batch"`` (parity, quirk Q32), exactly PROTOCOL §6.5::

          z = (X_b - mean(X_b)) / std_pop(X_b)      # per channel, over this call's tokens
          y_PCA = z V[:, :D]                        # no PCA mean subtraction

      (a channel with zero variance in the batch uses std 1, with a warning, instead of the
      reference's inf/NaN).
    * ``None``: ``y = (x - mean_) V[:, :D]`` with ``V`` the PCA of the raw covariance.

    Args:
        n_components: output width ``D``; None keeps all ``C``.
        standardize: ``"train"``, ``"batch"`` or None (see above). ``"train"`` and ``"batch"``
            share the same fit; switching to or from None needs a refit.
        n_images: number of store images to fit on (None: all); ignored for array input.
        subset: ``"random"`` (seeded subset, default) or ``"first"`` (the first ``n_images`` in
            store order, as the reference's shuffled cache, quirk Q36).
        random_state: seed of the image subset: an int, None (fresh entropy) or a
            ``numpy.random.RandomState`` (drawn from), as in scikit-learn.
        chunk_size: tokens per streamed chunk (float64 working memory ``chunk_size * C * 8`` B).

    Raises (``fit``):
        ValueError: NaN or inf in the fit data (naming the array, or the store and the first bad
            image), an invalid ``random_state``, ``n_components > C``.
        sklearn.exceptions.NotFittedError: ``transform`` / ``components_`` before ``fit``.

    Attributes:
        components_: (D, C) float64, the first ``n_components`` rows of ``all_components_``.
        all_components_: (C, C) float64, all principal axes, rows sorted by decreasing variance.
        explained_variance_: (C,) float64 eigenvalues with scikit-learn's ``n - 1`` denominator,
            over **all** components (whatever ``n_components``), for Figure 3.
        explained_variance_ratio_: (C,) float64, ``explained_variance_ / sum``.
        mean_: (C,) float64 per-channel mean of the fit data.
        scale_: (C,) float64 per-channel population std of the fit data (guarded).
        n_samples_: number of tokens fitted.
        standardized_fit_: whether the covariance was standardised (``standardize`` not None).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(500, 8)).astype(np.float32) @ rng.normal(size=(8, 8))
        >>> pca = PCAProjection(n_components=3).fit(X)
        >>> pca.transform(X).shape, pca.with_components(5).transform(X).shape
        ((500, 3), (500, 5))
    """

    method = "pca"
    _array_attrs = ("all_components_", "explained_variance_", "mean_", "scale_")
    _meta_attrs = ("n_features_in_", "n_samples_", "standardized_fit_")

    def __init__(
        self,
        n_components: int | None = None,
        *,
        standardize: str | None = "train",
        n_images: int | None = 5000,
        subset: str = "random",
        random_state: int | np.random.RandomState | None = 0,
        chunk_size: int = 16384,
    ) -> None:
        self.n_components = n_components
        self.standardize = standardize
        self.n_images = n_images
        self.subset = subset
        self.random_state = random_state
        self.chunk_size = chunk_size

    def _fit(self, source: Any) -> None:
        width = getattr(source, "dim", None) if is_store(source) else source.shape[1]
        if self.n_components is not None and width is not None and self.n_components > width:
            raise ValueError(
                f"n_components={self.n_components} exceeds the feature width C={width}"
            )
        moments = StreamingMoments(full=True)
        for chunk in self._iter_chunks(source):
            moments.update(chunk)
        n = moments.n
        mean = moments.mean()
        cov = moments.covariance()
        scale = guard_scale(np.sqrt(np.maximum(np.diag(cov), 0.0)), mean, where="PCA fit data")
        standardized = self.standardize is not None
        if standardized:
            cov = cov / np.outer(scale, scale)
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1]
        evals = np.maximum(evals[order], 0.0)
        comps = evecs[:, order].T  # (C, C), rows = components
        rows = np.arange(comps.shape[0])
        signs = np.sign(comps[rows, np.argmax(np.abs(comps), axis=1)])
        signs[signs == 0] = 1.0
        comps = comps * signs[:, None]
        c = comps.shape[1]
        if self.n_components is not None and self.n_components > c:
            raise ValueError(f"n_components={self.n_components} exceeds the feature width C={c}")
        self.n_features_in_ = int(c)
        self.n_samples_ = int(n)
        self.standardized_fit_ = bool(standardized)
        self.mean_ = mean
        self.scale_ = scale
        self.all_components_ = np.ascontiguousarray(comps)
        self.explained_variance_ = evals * (n / max(n - 1, 1))

    # ------------------------------------------------------------------ fitted views
    @property
    def components_(self) -> np.ndarray:
        """(D, C) float64: the first ``dim`` principal axes."""
        if not self.is_fitted:
            raise NotFittedError("PCAProjection is not fitted: no components_")
        return self.all_components_[: self.dim]

    @property
    def explained_variance_ratio_(self) -> np.ndarray:
        """(C,) float64 fraction of the total variance per component, over all components."""
        if not self.is_fitted:
            raise NotFittedError("PCAProjection is not fitted: no explained_variance_ratio_")
        total = self.explained_variance_.sum()
        return self.explained_variance_ / total if total > 0 else self.explained_variance_ * 0

    def _params_changed(self, changed: set[str]) -> None:
        if "n_components" in changed and self.n_components is not None:
            if self.n_components > self.n_features_in_:
                raise ValueError(
                    f"n_components={self.n_components} exceeds the feature width "
                    f"C={self.n_features_in_}"
                )

    # ------------------------------------------------------------------ transform
    def _transform_2d(self, x: torch.Tensor) -> torch.Tensor:
        if (self.standardize is not None) != self.standardized_fit_:
            raise ValueError(
                "PCAProjection was fitted with standardize="
                f"{'train/batch' if self.standardized_fit_ else 'None'} but standardize is now "
                f"{self.standardize!r}; the components differ, fit again"
            )
        if self.dim > self.n_features_in_:
            raise ValueError(
                f"n_components={self.dim} exceeds the feature width C={self.n_features_in_}"
            )
        if self.standardize is None:
            z = x - self._param_tensor("mean_", x.device)
        else:
            z = self._standardize(x)
        v = torch.as_tensor(self.components_.T, dtype=torch.float32, device=x.device)
        return z @ v
