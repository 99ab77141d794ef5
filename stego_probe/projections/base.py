"""The projection interface: a fitted map from C-dim backbone tokens to D-dim codes.

Every projection (``Identity``, ``PCAProjection``, ``RandomProjection``, ``UMAPProjection``,
``HNNEProjection``) derives from :class:`Projection`, which follows the scikit-learn estimator
conventions (``__init__`` stores parameters only, ``fit`` returns ``self``, learned state ends in
``_``, ``get_params`` / ``set_params`` / ``sklearn.base.clone`` work) and adds what the toolkit
needs on top:

* **Fit data.** ``fit(X)`` takes either an ``(N, C)`` numpy array / torch tensor of tokens, or a
  feature store (duck-typed: ``n_images``, ``provenance``, ``tokens(idx) -> (n, h, w, C)`` and,
  for the sample-based methods, ``sample_tokens(n, seed) -> (n, C)``). From a store, the linear
  methods stream a seeded subset of ``n_images`` images chunk by chunk, so the fit never
  materialises the token matrix.
* **Layouts.** One method per layout, no guessing from the shape:

  - ``transform(x)``: ``(N, C) -> (N, D)`` or channel-first ``(B, C, h, w) -> (B, D, h, w)``;
  - ``transform_tokens(tokens)``: channel-last store tokens ``(B, h, w, C) -> (B, D, h, w)``
    (channel-first output, ready for the probes).

  Numpy in gives numpy out, torch in gives torch out on the same device. Outputs are float32.
* **Standardisation** (``standardize`` parameter of the methods that have one, PROTOCOL §6.5):
  ``"train"`` uses the per-channel mean and population std of the fit data, ``"batch"`` z-scores
  every ``transform`` call with that call's own statistics over all of its tokens (the reference's
  behaviour, quirk Q32), ``None`` does not rescale.
* **Persistence.** ``save(path)`` writes the common estimator file of
  :mod:`stego_probe.persist` (an ``.npz``: JSON header + arrays of exact dtype);
  ``Projection.load(path)`` restores it exactly, running no code (``np.load(allow_pickle=
  False)``); a UMAP / h-NNE file, whose fitted model is a pickle, loads only with
  ``trust=True``. Files of the earlier ``torch.save`` format still load.
* **Provenance.** ``provenance`` (a dict) records the method, the parameters, the fit data (store
  provenance: backbone, weights_sha256, dataset, split, images used, seed) and
  :func:`stego_probe.provenance.package_info`.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import os
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError

from stego_probe.codes import all_finite, check_finite
from stego_probe.fileio import to_jsonable
from stego_probe.persist import LEGACY_PROJECTION_FORMAT, read_estimator, write_estimator
from stego_probe.provenance import package_info
from stego_probe.store import is_store

#: Valid values of the ``standardize`` parameter.
STANDARDIZE_MODES = ("train", "batch", None)

#: ``format`` tag of the ``torch.save`` files :meth:`Projection.save` wrote before the common
#: estimator format (:mod:`stego_probe.persist`); :meth:`Projection.load` still reads them.
SAVE_FORMAT = LEGACY_PROJECTION_FORMAT

#: Store provenance keys copied flat into ``provenance["fit_data"]``.
_STORE_KEYS = (
    "dataset",
    "split",
    "backbone",
    "weights_sha256",
    "res",
    "crop",
    "patch_size",
    "embed_dim",
)


def check_standardize(value: Any, name: str = "standardize") -> None:
    """Raise ``ValueError`` unless ``value`` is one of :data:`STANDARDIZE_MODES`."""
    if value not in STANDARDIZE_MODES:
        raise ValueError(f"{name} must be one of 'train', 'batch' or None, got {value!r}")


def check_random_state_param(value: Any, name: str = "random_state") -> None:
    """Raise ``ValueError`` unless ``value`` is a valid ``random_state``, as in scikit-learn.

    Valid: None (fresh entropy, not reproducible), an int in ``[0, 2**32 - 1]`` (a seed), or a
    ``numpy.random.RandomState`` (drawn from, so the result depends on its state; reusing the
    instance gives different draws).
    """
    if value is None or isinstance(value, np.random.RandomState):
        return
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        if 0 <= int(value) <= 2**32 - 1:
            return
    raise ValueError(
        f"{name} must be None, an int in [0, 2**32 - 1] or a numpy.random.RandomState, "
        f"got {value!r}"
    )


def seed_from_random_state(value: Any) -> int | None:
    """An int seed (or None) for ``numpy.random.default_rng`` from a valid ``random_state``.

    Ints and None are returned as they are (so results for an int seed do not depend on this
    conversion); a ``RandomState`` draws a seed, advancing its state.
    """
    if isinstance(value, np.random.RandomState):
        return int(value.randint(0, 2**31 - 1))
    return None if value is None else int(value)


def guard_scale(
    std: np.ndarray, mean: np.ndarray, where: str = "fit data", warn: bool = True
) -> np.ndarray:
    """Replace (near-)zero per-channel standard deviations by 1 so z-scores stay finite.

    A channel counts as constant when ``std <= 10 * eps64 * max(1, |mean|)``. Its z-score is then
    ``x - mean`` (0 for a truly constant channel) instead of inf / NaN.

    Args:
        std: (C,) float64 population standard deviations.
        mean: (C,) float64 means (sets the scale of the rounding error).
        where: named in the warning.
        warn: emit a ``RuntimeWarning`` listing the constant channels.

    Returns:
        (C,) float64 copy of ``std`` with the constant channels set to 1.
    """
    std = np.asarray(std, dtype=np.float64).copy()
    tiny = std <= 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean))
    if tiny.any():
        if warn:
            idx = np.flatnonzero(tiny)
            warnings.warn(
                f"{where}: {idx.size} channel(s) have zero variance (first: {idx[:10].tolist()}); "
                "using scale 1 for them instead of dividing by 0",
                RuntimeWarning,
                stacklevel=3,
            )
        std[tiny] = 1.0
    return std


class StreamingMoments:
    """Streaming first and second moments of token chunks, accumulated in float64.

    ``update`` takes chunks ``(n_i, C)``; the result is the population mean and covariance (or
    only the variances with ``full=False``) of all rows seen, in ``O(C^2)`` memory. To avoid the
    cancellation of ``E[x x^T] - mu mu^T`` when the mean is large compared with the spread (DINO
    has a few channels with large offsets), the moments are taken about a shift, the mean of the
    first chunk.

    Args:
        full: accumulate the full ``(C, C)`` matrix ``sum (x - s)(x - s)^T``; otherwise only its
            diagonal.

    Examples:
        >>> m = StreamingMoments()
        >>> x = np.arange(12.0).reshape(6, 2)
        >>> for chunk in (x[:4], x[4:]):
        ...     m.update(chunk)
        >>> bool(np.allclose(m.covariance(), np.cov(x.T, bias=True)))
        True
    """

    def __init__(self, full: bool = True) -> None:
        self.full = full
        self.n = 0
        self.shift: np.ndarray | None = None
        self.sum: np.ndarray | None = None
        self.sq: np.ndarray | None = None

    def update(self, x: np.ndarray | torch.Tensor) -> None:
        """Add a chunk of rows ``x`` (n, C), any float dtype (converted to float64)."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"StreamingMoments.update: expected a (n, C) chunk, got {x.shape}")
        if x.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = x.mean(axis=0)
            c = x.shape[1]
            self.sum = np.zeros(c)
            self.sq = np.zeros((c, c)) if self.full else np.zeros(c)
        elif x.shape[1] != self.shift.shape[0]:
            raise ValueError(
                f"StreamingMoments.update: chunk has {x.shape[1]} channels, "
                f"earlier chunks had {self.shift.shape[0]}"
            )
        d = x - self.shift
        self.n += d.shape[0]
        self.sum += d.sum(axis=0)
        if self.full:
            self.sq += d.T @ d
        else:
            self.sq += np.einsum("ij,ij->j", d, d)

    def _check(self) -> None:
        if self.n == 0:
            raise ValueError("StreamingMoments: no data was added (the fit data is empty)")

    def mean(self) -> np.ndarray:
        """(C,) float64 mean of all rows."""
        self._check()
        return self.shift + self.sum / self.n

    def variance(self) -> np.ndarray:
        """(C,) float64 population variance (denominator n)."""
        self._check()
        m = self.sum / self.n
        diag = np.diag(self.sq) if self.full else self.sq
        return np.maximum(diag / self.n - m * m, 0.0)

    def covariance(self) -> np.ndarray:
        """(C, C) float64 population covariance (denominator n); needs ``full=True``."""
        self._check()
        if not self.full:
            raise ValueError("StreamingMoments: covariance() needs full=True")
        m = self.sum / self.n
        cov = self.sq / self.n - np.outer(m, m)
        return (cov + cov.T) / 2


def _accepts(fn: Any, name: str) -> bool:
    """Whether callable ``fn`` takes a keyword argument ``name``."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _as_tensor(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    """Return ``(tensor, was_torch)`` for a numpy array / torch tensor ``x``."""
    if isinstance(x, torch.Tensor):
        return x.detach(), True
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr)), False


def store_label(store: Any) -> str:
    """How messages name a store: ``"feature store '<path>'"``, or ``"in-memory <Class>"`` for
    a store object without a path (e.g. :class:`~stego_probe.projections.stego.ArrayStore`)."""
    path = getattr(store, "path", None)
    if path is None:
        return f"in-memory {type(store).__name__}"
    return f"feature store {str(path)!r}"


def check_store_tokens(
    store: Any, images: Any, tokens: np.ndarray | torch.Tensor, array: str = "tokens"
) -> None:
    """``ValueError`` naming the store, the array and the first image (index and id) if the
    ``tokens`` (n, h, w, C) read from ``store`` for ``images`` hold NaN or inf.

    Args:
        store: the store the tokens were read from (its ``path`` and ``ids`` name the image).
        images: the store indices of the ``n`` images read: an int array / list, or a slice
            with explicit start and stop.
        tokens: (n, ...) the tokens read, numpy or torch.
        array: the store array they come from (``"tokens"`` or ``"tokens_flipped"``).

    Examples:
        >>> t = np.zeros((2, 1, 1, 3), dtype=np.float32)
        >>> check_store_tokens(None, [4, 5], t)  # finite: nothing happens
        >>> t[1, 0, 0, 2] = np.nan
        >>> check_store_tokens(None, [4, 5], t)
        Traceback (most recent call last):
        ...
        ValueError: in-memory NoneType has NaN or infinite tokens in 1 of the images read (first: image index 5); expected finite backbone features: re-extract the store
    """
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    tokens = np.asarray(tokens)
    if not np.issubdtype(tokens.dtype, np.floating) or tokens.shape[0] == 0:
        return
    if np.isfinite(tokens).all():
        return
    if isinstance(images, slice):
        images = np.arange(images.start or 0, images.stop)
    images = np.atleast_1d(np.asarray(images))
    bad = ~np.isfinite(tokens.reshape(tokens.shape[0], -1)).all(axis=1)
    first = int(images[np.argmax(bad)])
    what = "tokens" if array == "tokens" else f"tokens (array {array})"
    raise ValueError(
        f"{store_label(store)} has NaN or infinite {what} in {int(bad.sum())} of the images "
        f"read (first: image index {first}{_image_id(store, first)}); "
        "expected finite backbone features: re-extract the store"
    )


def _image_id(store: Any, i: int) -> str:
    """``", id '<id>'"`` of store image ``i`` (empty when the store has no ids)."""
    try:
        return f", id {str(store.ids[i])!r}"
    except Exception:  # a duck-typed store without ids
        return ""


def check_store_sample(store: Any, sample: np.ndarray, images: Any = None) -> None:
    """``ValueError`` naming the store and the first image with NaN / inf tokens (index and id,
    :func:`check_store_tokens`) if the token ``sample`` (n, C) drawn from ``images`` (None: all
    images; as from ``store.sample_tokens``) is not finite.

    The sample does not say which image a row came from, so only on failure are the images
    scanned, a chunk at a time, to find the first bad one.
    """
    if isinstance(sample, torch.Tensor):
        sample = sample.detach().cpu().numpy()
    sample = np.asarray(sample)
    if not np.issubdtype(sample.dtype, np.floating) or all_finite(sample):
        return
    idx = np.arange(int(store.n_images)) if images is None else np.asarray(images)
    step = max(1, int(getattr(store, "chunk_images", 32) or 32))
    for start in range(0, idx.size, step):
        sel = idx[start : start + step]
        check_store_tokens(store, sel, np.asarray(store.tokens(sel), dtype=np.float32))
    check_finite(  # the tokens read back finite: a store that changes under us
        sample,
        f"the token sample of {store_label(store)}",
        " (backbone features); re-extract the store",
    )


class Projection(TransformerMixin, BaseEstimator):
    """Base class of all projections: ``(…, C)`` backbone tokens -> ``(…, D)`` codes.

    Subclasses implement ``_fit(source)`` (``source`` is an ``(N, C)`` float32 array or a store)
    and ``_transform_2d(x)`` on a float32 torch tensor ``(N, C) -> (N, D)``; the base class
    handles layouts, dtypes, devices, the standardisation modes, persistence and provenance.

    Attributes (after ``fit``):
        n_features_in_: ``C``.
        provenance_: the fit-time provenance dict (see :attr:`provenance`).
    """

    #: registry name written to results tables (``method`` column).
    method: ClassVar[str] = "projection"
    #: names of array attributes saved by :meth:`save` (``None`` values allowed).
    _array_attrs: ClassVar[tuple[str, ...]] = ()
    #: names of non-array (JSON-able) fitted attributes saved by :meth:`save`.
    _meta_attrs: ClassVar[tuple[str, ...]] = ("n_features_in_",)

    # ------------------------------------------------------------------ sklearn plumbing
    def set_params(self, **params: Any) -> Projection:
        """Set parameters (sklearn semantics); a fitted projection reacts via ``_params_changed``.

        For example ``PCAProjection.set_params(n_components=D)`` keeps the fit and changes the
        output width, ``RandomProjection.set_params(n_components=D)`` redraws its matrix for the
        new ``D`` from ``random_state`` (the standardisation statistics are kept). If the
        change is invalid for the fit (e.g. ``n_components > C``) the old values are restored and
        the error is raised.
        """
        old = self.get_params(deep=False)
        super().set_params(**params)
        changed = {k for k in params if old.get(k, object()) != getattr(self, k, None)}
        if changed and self.is_fitted:
            try:
                self._params_changed(changed)
            except Exception:
                super().set_params(**{k: old[k] for k in changed if k in old})
                raise
        return self

    def _params_changed(self, changed: set[str]) -> None:
        """Hook called by :meth:`set_params` on a fitted projection; default: nothing."""

    def with_components(self, n_components: int) -> Projection:
        """A copy of this fitted projection with output width ``n_components`` (no refit).

        The copy shares the fitted arrays (read-only use); the original is unchanged.
        """
        out = copy.copy(self)
        out.set_params(n_components=n_components)
        return out

    @property
    def method_name(self) -> str:
        """Registry / results-table name of this projection (``method`` column)."""
        return self.method

    @property
    def is_fitted(self) -> bool:
        """Whether ``fit`` (or ``load``) has run."""
        return hasattr(self, "n_features_in_")

    def __sklearn_is_fitted__(self) -> bool:
        return self.is_fitted

    def _check_fitted(self) -> None:
        """Raise ``sklearn.exceptions.NotFittedError`` (a ``ValueError`` and an
        ``AttributeError``) unless fitted."""
        if not self.is_fitted:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted; call fit(store_or_array) first"
            )

    @property
    def dim(self) -> int:
        """Output width ``D`` (``n_components``, or ``C`` where ``n_components`` is None)."""
        n = getattr(self, "n_components", None)
        if n is not None:
            return int(n)
        self._check_fitted()
        return int(self.n_features_in_)

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any = None) -> Projection:
        """Fit on tokens ``X``: an ``(N, C)`` numpy array / torch tensor, or a feature store.

        Args:
            X: ``(N, C)`` float array of tokens, or a store-like object (see module docstring).
            y: ignored (sklearn compatibility).

        Returns:
            ``self``.
        """
        self._validate_params_common()
        if is_store(X):
            if not getattr(X, "complete", True):
                raise ValueError(
                    f"feature store {getattr(X, 'path', X)!r} is not complete (extraction was "
                    "interrupted); finish the extraction before fitting a projection"
                )
            source: Any = X
        else:
            t, _ = _as_tensor(X, "fit: X")
            if t.ndim != 2:
                raise ValueError(
                    f"fit: X must be (N, C) tokens or a feature store, got shape {tuple(t.shape)}; "
                    "flatten (B, C, h, w) features with x.permute(0, 2, 3, 1).reshape(-1, C)"
                )
            if t.shape[0] == 0:
                raise ValueError("fit: X has no rows")
            source = t.cpu().float().numpy()
            check_finite(source, f"{type(self).__name__}.fit: X", " (float32 tokens)")
        self._fit_info: dict = {}
        self._fit(source)
        self.provenance_ = self._make_provenance(source)
        return self

    def _fit(self, source: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _validate_params_common(self) -> None:
        if hasattr(self, "standardize"):
            check_standardize(self.standardize)
        if hasattr(self, "random_state"):
            check_random_state_param(self.random_state)
        n = getattr(self, "n_components", None)
        if n is not None and (not isinstance(n, int | np.integer) or n < 1):
            raise ValueError(f"n_components must be a positive int or None, got {n!r}")

    # -- fit-data access shared by the subclasses
    def _select_images(self, store: Any) -> np.ndarray:
        """Sorted int64 indices of the store images used for fitting (``n_images``/``subset``)."""
        total = int(store.n_images)
        if total == 0:
            raise ValueError(f"feature store {getattr(store, 'path', store)!r} has no images")
        n = getattr(self, "n_images", None)
        subset = getattr(self, "subset", "random")
        if subset not in ("random", "first"):
            raise ValueError(f"subset must be 'random' or 'first', got {subset!r}")
        if n is None or n >= total:
            idx = np.arange(total, dtype=np.int64)
        elif n < 1:
            raise ValueError(f"n_images must be a positive int or None, got {n!r}")
        elif subset == "first":
            idx = np.arange(n, dtype=np.int64)
        else:
            rng = np.random.default_rng(seed_from_random_state(self.random_state))
            idx = np.sort(rng.choice(total, size=int(n), replace=False)).astype(np.int64)
        self._fit_info.update(
            n_images_used=int(idx.size),
            n_images_total=total,
            subset=subset,
            image_indices_sha256=hashlib.sha256(idx.tobytes()).hexdigest(),
        )
        return idx

    def _iter_chunks(self, source: Any) -> Iterator[np.ndarray]:
        """Yield float32 ``(n_i, C)`` token chunks of the fit data (about ``chunk_size`` rows)."""
        chunk = int(getattr(self, "chunk_size", 65536))
        if chunk < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk!r}")
        if not is_store(source):
            self._fit_info.setdefault("n_tokens", int(source.shape[0]))
            for start in range(0, source.shape[0], chunk):
                yield source[start : start + chunk]
            return
        idx = self._select_images(source)
        first = np.asarray(source.tokens(idx[:1]), dtype=np.float32)
        if first.ndim != 4:
            raise ValueError(
                f"feature store {getattr(source, 'path', source)!r}: tokens(idx) must return "
                f"(n, h, w, C), got shape {first.shape}"
            )
        per_image = first.shape[1] * first.shape[2]
        step = max(1, chunk // per_image)
        n_tokens = 0
        check_store_tokens(source, idx[:1], first)
        yield first.reshape(-1, first.shape[-1])
        n_tokens += per_image
        rest = idx[1:]
        for start in range(0, rest.size, step):
            sel = rest[start : start + step]
            t = np.asarray(source.tokens(sel), dtype=np.float32)
            check_store_tokens(source, sel, t)
            n_tokens += t.shape[0] * per_image
            yield t.reshape(-1, t.shape[-1])
        self._fit_info["n_tokens"] = n_tokens

    def _sample(self, source: Any, n: int) -> np.ndarray:
        """A seeded uniform sample of ``n`` tokens (all of them if fewer), float32 ``(n, C)``.

        From a store: ``store.sample_tokens(n, seed=random_state)``, restricted to the
        ``n_images`` images chosen as for the streaming fit when the store's ``sample_tokens``
        takes ``images=`` (the reference samples from its 5,000-image fit matrix); from an array:
        ``n`` seeded rows, kept in array order. A ``RandomState`` ``random_state`` is turned into
        one int seed first (:func:`seed_from_random_state`).
        """
        seed = seed_from_random_state(self.random_state)
        if is_store(source):
            if not hasattr(source, "sample_tokens"):
                raise ValueError(
                    f"{type(self).__name__}.fit: the store object has no sample_tokens(n, seed)"
                )
            kw: dict = {}
            if getattr(self, "n_images", None) is not None and _accepts(
                source.sample_tokens, "images"
            ):
                kw["images"] = self._select_images(source)
            out = np.asarray(source.sample_tokens(int(n), seed=seed, **kw), dtype=np.float32)
            if out.ndim != 2:
                raise ValueError(
                    f"sample_tokens(n, seed) must return (n, C) tokens, got shape {out.shape}"
                )
            check_store_sample(source, out, kw.get("images"))
        elif n >= source.shape[0]:
            out = source
        else:
            rng = np.random.default_rng(seed)
            out = source[np.sort(rng.choice(source.shape[0], size=int(n), replace=False))]
        self._fit_info.update(n_tokens=int(out.shape[0]), sample_seed=seed)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _make_provenance(self, source: Any) -> dict:
        fit_data: dict = {"source": "store" if is_store(source) else "array"}
        if is_store(source):
            prov = dict(getattr(source, "provenance", None) or {})
            fit_data["store_path"] = str(getattr(source, "path", "")) or None
            fit_data.update({k: prov.get(k) for k in _STORE_KEYS if k in prov})
            fit_data["store_provenance"] = prov
        fit_data["seed"] = getattr(self, "random_state", None)
        fit_data.update(self._fit_info)
        return to_jsonable(
            {
                "method": self.method_name,
                "class": type(self).__name__,
                "fit_data": fit_data,
                **package_info(),
            }
        )

    @property
    def provenance(self) -> dict:
        """Provenance dict: ``method``, ``class``, current ``params``, ``fit_data`` (source,
        store path and provenance keys, images/tokens used, seed), package version and git SHA."""
        self._check_fitted()
        return {
            **self.provenance_,
            "method": self.method_name,
            "params": to_jsonable(self.get_params(deep=False)),
        }

    # ------------------------------------------------------------------ transform
    def transform(self, X: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Project tokens.

        Args:
            X: ``(N, C)`` or channel-first ``(B, C, h, w)`` numpy array or torch tensor (any
                float dtype; computed in float32, on the tensor's device).

        Returns:
            float32 ``(N, D)`` or ``(B, D, h, w)``, numpy for numpy input, torch for torch input.
            With ``standardize="batch"`` the batch is all ``N`` (or ``B*h*w``) tokens of this call.
        """
        self._check_fitted()
        x, was_torch = _as_tensor(X, f"{type(self).__name__}.transform: X")
        if x.ndim == 2:
            y = self._transform_flat(x, "transform: X (N, C)")
        elif x.ndim == 4:
            b, c, h, w = x.shape
            flat = x.permute(0, 2, 3, 1).reshape(-1, c)
            y = self._transform_flat(flat, "transform: X (B, C, h, w)")
            y = y.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        else:
            raise ValueError(
                f"{type(self).__name__}.transform: X must be (N, C) or (B, C, h, w), got shape "
                f"{tuple(x.shape)}; use transform_tokens for channel-last (B, h, w, C) tokens"
            )
        return y if was_torch else y.cpu().numpy()

    def transform_tokens(self, tokens: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Project channel-last store tokens ``(B, h, w, C)`` to channel-first codes ``(B, D, h, w)``.

        Args:
            tokens: ``(B, h, w, C)`` numpy array or torch tensor, as returned by
                ``FeatureStore.tokens`` / ``iter_batches``.

        Returns:
            float32 ``(B, D, h, w)`` (numpy for numpy input, torch for torch input).
        """
        self._check_fitted()
        x, was_torch = _as_tensor(tokens, f"{type(self).__name__}.transform_tokens: tokens")
        if x.ndim != 4:
            raise ValueError(
                f"{type(self).__name__}.transform_tokens: tokens must be (B, h, w, C), got shape "
                f"{tuple(x.shape)}"
            )
        b, h, w, c = x.shape
        y = self._transform_flat(x.reshape(-1, c), "transform_tokens: tokens (B, h, w, C)")
        y = y.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        return y if was_torch else y.cpu().numpy()

    def _transform_flat(self, x: torch.Tensor, what: str) -> torch.Tensor:
        if x.shape[-1] != self.n_features_in_:
            raise ValueError(
                f"{type(self).__name__}.{what}: expected C={self.n_features_in_} channels "
                f"(the fit data's width), got {x.shape[-1]}"
            )
        if x.shape[0]:
            check_finite(x, f"{type(self).__name__}.{what}", " (tokens to project)")
        with torch.no_grad():
            return self._transform_2d(x.float()).float()

    def _transform_2d(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the ``standardize`` mode to float32 tokens ``x`` (N, C); returns float32 (N, C).

        ``"train"``: ``(x - mean_) / scale_``; ``"batch"``: ``(x - mean(x)) / std_pop(x)`` per
        channel over the rows of ``x`` (statistics in float64; zero-variance channels use scale 1
        with a warning); ``None``: ``x`` unchanged.
        """
        mode = self.standardize
        if mode is None:
            return x
        if mode == "batch":
            if x.shape[0] == 0:
                return x
            var, mean = torch.var_mean(x.double(), dim=0, correction=0)
            std = guard_scale(
                var.sqrt().cpu().numpy(), mean.cpu().numpy(), where="standardize='batch' batch"
            )
            std_t = torch.as_tensor(std, device=x.device)
            return ((x.double() - mean) / std_t).float()
        if getattr(self, "mean_", None) is None or getattr(self, "scale_", None) is None:
            raise ValueError(
                f"{type(self).__name__}: standardize='train' needs the training statistics, but "
                "this projection was fitted without them; fit again with standardize='train'"
            )
        mean = self._param_tensor("mean_", x.device)
        scale = self._param_tensor("scale_", x.device)
        return (x - mean) / scale

    def _param_tensor(self, name: str, device: torch.device) -> torch.Tensor:
        """Fitted array attribute ``name`` as a float32 tensor on ``device``."""
        return torch.as_tensor(np.asarray(getattr(self, name)), dtype=torch.float32, device=device)

    # ------------------------------------------------------------------ persistence
    def _extra_state(self) -> dict[str, np.ndarray]:
        """Additional arrays to save (subclass hook, e.g. a pickled model as uint8)."""
        return {}

    def _load_extra_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what ``_extra_state`` saved (subclass hook)."""

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted projection to ``path`` (the common estimator format of
        :mod:`stego_probe.persist`: an uncompressed ``.npz`` whatever the extension).

        The file holds the class, ``params``, the fitted scalars of ``_meta_attrs`` (the
        ``state``), the provenance, and the arrays of ``_array_attrs`` (exact dtype; ``None``
        values are left out) and of ``_extra_state`` (as ``extra:<name>``). The parent folder
        is created; the file is written to a temporary name and renamed.

        Returns:
            the path written.
        """
        self._check_fitted()
        arrays: dict[str, np.ndarray] = {}
        for name in self._array_attrs:
            value = getattr(self, name, None)
            if value is not None:
                arrays[name] = np.ascontiguousarray(value)
        for name, value in self._extra_state().items():
            arrays[f"extra:{name}"] = np.ascontiguousarray(value)
        return write_estimator(
            path,
            kind="projection",
            cls_name=type(self).__name__,
            params=self._saved_params(),
            state={name: getattr(self, name, None) for name in self._meta_attrs},
            arrays=arrays,
            provenance=self.provenance_,
        )

    def _saved_params(self) -> dict:
        """Parameters as saved: a ``RandomState`` ``random_state`` is saved as None (its state is
        not a parameter; the fitted arrays, which are saved, are what it produced)."""
        params = self.get_params(deep=False)
        if isinstance(params.get("random_state"), np.random.RandomState):
            params["random_state"] = None
        return params

    #: Whether the saved state holds a pickle (a third-party model) that :meth:`load` must
    #: unpickle; such files load only with ``trust=True``.
    _pickled_state: ClassVar[bool] = False

    @classmethod
    def load(cls, path: str | os.PathLike, trust: bool = False) -> Projection:
        """Load a projection written by :meth:`save` (also by an older version, whose files
        were ``torch.save`` dicts).

        Called on :class:`Projection` it returns an instance of the saved class; called on a
        subclass it also checks that the file holds that class, from the file's header before
        its arrays are read. Reading runs no code (``np.load(allow_pickle=False)``; older
        files ``torch.load(weights_only=True)``). UMAP and h-NNE files also embed their fitted
        model as a pickle, and unpickling can run code from the file: they load only with
        ``trust=True``.

        Args:
            path: the file.
            trust: allow unpickling an embedded model (UMAP / h-NNE); only for files you made
                or otherwise trust.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: not a stego_probe estimator file, a probe file, a different or unknown
                class, or a pickled model without ``trust=True``.
        """
        from stego_probe.projections import projection_class

        def accepts(name: str) -> bool:
            try:
                return issubclass(projection_class(name), cls)
            except KeyError:
                return False

        saved = read_estimator(
            path,
            kind="projection",
            expected=None if cls is Projection else accepts,
            what=cls.__name__,
        )
        try:
            klass = projection_class(saved.cls_name)
        except KeyError as exc:
            raise ValueError(f"{saved.path}: {exc.args[0]}") from None
        if klass._pickled_state and not trust:
            raise ValueError(
                f"{saved.path}: holds a {saved.cls_name} whose fitted model is stored as a "
                "pickle, and unpickling can run code from the file; load it with trust=True "
                "(`--trust-pickle` on the command line) only if you made or trust this file"
            )
        obj = klass(**saved.params)
        for name, value in saved.state.items():
            setattr(obj, name, value)
        arrays = saved.arrays
        for name in klass._array_attrs:
            setattr(obj, name, arrays.get(name))
        extra = {k[6:]: v for k, v in arrays.items() if k.startswith("extra:")}
        obj._load_extra_state(extra)
        obj.provenance_ = saved.provenance if saved.provenance is not None else {}
        return obj


class SampledEmbedding(Projection):
    """Base of the non-linear embeddings fitted on a seeded token sample (UMAP, h-NNE).

    The fitted third-party model lives in the attribute named by ``_model_attr`` (e.g.
    ``"umap_"``); it is applied with its ``transform`` to the standardised tokens and saved
    pickled into a uint8 array (``<_model_attr>pickle``); :meth:`Projection.load` unpickles it
    only with ``trust=True``.
    Subclasses set ``_model_attr``, ``_model_name`` (used in messages) and ``_import_model`` (a
    static method importing the optional package), and in ``_fit`` call
    :meth:`_sample_statistics` on the token sample, fit the model on the matrix it returns and
    set ``fitted_n_components_``.
    """

    _array_attrs = ("mean_", "scale_")
    _meta_attrs = ("n_features_in_", "fitted_n_components_")
    _pickled_state = True
    #: attribute holding the fitted model.
    _model_attr: ClassVar[str] = "model_"
    #: the model's name in messages.
    _model_name: ClassVar[str] = "the model"

    @staticmethod
    def _import_model() -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _sample_statistics(self, x: np.ndarray, where: str) -> np.ndarray:
        """Set ``mean_`` / ``scale_`` (the sample's per-channel mean / population std, guarded)
        and ``n_features_in_`` from the ``(n, C)`` sample ``x``; return the float32 matrix to fit
        the model on (``x`` standardised with them, or ``x`` itself with ``standardize=None``)."""
        mean = x.astype(np.float64).mean(axis=0)
        self.mean_ = mean
        self.scale_ = guard_scale(x.astype(np.float64).std(axis=0), mean, where)
        self.n_features_in_ = int(x.shape[1])
        z = x if self.standardize is None else (x - mean) / self.scale_
        return np.asarray(z, dtype=np.float32)

    def _transform_2d(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_components != self.fitted_n_components_:
            raise ValueError(
                f"{type(self).__name__} was fitted with "
                f"n_components={self.fitted_n_components_}, now {self.n_components}; "
                f"{self._model_name} must be refitted for another D"
            )
        z = self._standardize(x).cpu().numpy()
        y = np.asarray(getattr(self, self._model_attr).transform(z), dtype=np.float32)
        return torch.from_numpy(y).to(x.device)

    def _extra_state(self) -> dict[str, np.ndarray]:
        model = pickle.dumps(getattr(self, self._model_attr))
        return {f"{self._model_attr}pickle": np.frombuffer(model, dtype=np.uint8).copy()}

    def _load_extra_state(self, state: dict[str, np.ndarray]) -> None:
        self._import_model()
        model = pickle.loads(state[f"{self._model_attr}pickle"].tobytes())
        setattr(self, self._model_attr, model)
