"""The reference cluster probe (STEGO's ``ClusterLookup``, PROTOCOL §4.1).

``K'`` centroids ``mu`` (initialised i.i.d. N(0, 1)) are trained with Adam (lr 5e-3) on
mini-batches of token-resolution codes to maximise the mean, over positions, of the largest
cosine similarity between the code and a centroid:

    L = -mean_{b,h,w} sum_k P_k I_k,   I_k = <c/|c|, mu_k/|mu_k|>,   P = onehot(argmax_k I_k)

``P`` carries no gradient, so only the winning centroid at each position is moved: this is
online spherical k-means by gradient descent, without restarts. Prediction is the argmax of the
cosine similarity; soft log-probabilities (for the CRF) are ``log_softmax(alpha * I)`` with
``alpha = 2``.

The module also holds the machinery shared with :mod:`stego_probe.probes.linear`: the seeded
mini-batch stream (:func:`minibatch_stream`, one *step* = one mini-batch, quirk Q14) and the
:class:`MinibatchProbe` base class (``fit`` / ``partial_fit`` / ``save`` / ``load``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from stego_probe.codes import as_code_tensor, check_size, upsample
from stego_probe.persist import read_estimator, write_estimator

#: ``eps`` of ``torch.nn.functional.normalize`` (the reference uses the default).
NORMALIZE_EPS = 1e-12
#: Default number of training steps and images per step: the reference CocoStuff / Cityscapes
#: DINO-baseline and STEGO recipe (PROTOCOL §3.3, §6.1): 7000 steps of 32 images.
DEFAULT_STEPS = 7000
DEFAULT_BATCH_SIZE = 32
#: Images per chunk when predicting (bounds memory for upsampled outputs).
PREDICT_CHUNK_IMAGES = 8
PREDICT_CHUNK_TOKENS = 1 << 16


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------


def minibatch_stream(
    n_items: int,
    batch_size: int,
    steps: int,
    random_state: int | np.random.Generator = 0,
    drop_last: bool = True,
    *,
    sort: bool = True,
) -> Iterator[np.ndarray]:
    """Indices of the mini-batches of a seeded, shuffled, epoch-wise training stream.

    Each epoch is a fresh permutation of ``range(n_items)`` drawn from
    ``np.random.default_rng(random_state)``; it is cut into batches of ``batch_size`` items
    (``drop_last=True`` drops the incomplete last batch, the stego_probe default of quirk Q9).
    The stream stops after exactly ``steps`` batches (a step is one batch, quirk Q14). If
    ``n_items < batch_size`` every batch holds all items.

    Args:
        n_items: number of items (images or tokens) to draw from, >= 1.
        batch_size: items per batch, >= 1.
        steps: number of batches to yield, >= 0.
        random_state: seed of the permutation stream, or a ``np.random.Generator`` to draw
            the permutations from (shared with other draws, as STEGO's trainer does).
        drop_last: drop the incomplete batch at the end of each epoch.
        sort: sort each batch's indices (reads from a store in order); ``False`` keeps the
            permutation order (the STEGO trainer pairs anchors with positives in that order).

    Yields:
        int64 arrays ``(b,)`` of (sorted) item indices, ``b = min(batch_size, n_items)`` (or less
        for the last batch of an epoch when ``drop_last=False``).

    Examples:
        >>> [b.tolist() for b in minibatch_stream(4, 2, 3, random_state=0)]
        [[0, 2], [1, 3], [2, 3]]
    """
    n_items, batch_size, steps = int(n_items), int(batch_size), int(steps)
    if n_items < 1:
        raise ValueError(f"n_items: expected at least one item to train on, got {n_items}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    if steps < 0:
        raise ValueError(f"steps: expected a non-negative integer, got {steps}")
    rng = np.random.default_rng(random_state)
    bs = min(batch_size, n_items)
    done = 0
    while done < steps:
        perm = rng.permutation(n_items)
        stops = range(0, (n_items // bs) * bs if drop_last else n_items, bs)
        for start in stops:
            batch = perm[start : start + bs]
            yield (np.sort(batch) if sort else batch).astype(np.int64)
            done += 1
            if done == steps:
                return


def resolve_seed(random_state, name: str = "random_state") -> int:
    """An integer seed from a scikit-learn style ``random_state``.

    Args:
        random_state: an int (used as is), ``None`` (a fresh seed from NumPy's global RNG, so
            results are not reproducible, as in scikit-learn), or a ``np.random.RandomState`` /
            ``np.random.Generator`` (a seed is drawn from it, advancing its state).
        name: argument name for error messages.

    Returns:
        int in ``[0, 2**31 - 1)``.

    Raises:
        ValueError: anything else (floats, strings, booleans, negative ints).

    Examples:
        >>> resolve_seed(3), resolve_seed(np.random.RandomState(0)) == resolve_seed(
        ...     np.random.RandomState(0))
        (3, True)
    """
    if isinstance(random_state, bool):
        raise ValueError(f"{name}: expected None, an int or a RandomState, got {random_state!r}")
    if random_state is None:
        return int(np.random.randint(0, 2**31 - 1))
    if isinstance(random_state, int | np.integer):
        if int(random_state) < 0:
            raise ValueError(f"{name}: expected a non-negative int, got {random_state!r}")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    raise ValueError(
        f"{name}: expected None, an int, a np.random.RandomState or a np.random.Generator, got "
        f"{type(random_state).__name__} {random_state!r}"
    )


class MinibatchProbe(BaseEstimator):
    """Base class of the torch probes trained with Adam on a seeded mini-batch stream.

    Subclasses implement ``_init_params(n_features)`` (create ``self.params_``, a dict of
    ``torch.nn.Parameter``, seeded with ``self.seed_``) and ``_batch_loss(codes, labels)``;
    ``_extra_arrays()`` / ``_load_extra_arrays(arrays)`` save and restore learned state that is
    not a parameter (e.g. the linear probe's input statistics).

    ``random_state`` follows scikit-learn: an int, None or a ``RandomState`` (see
    :func:`resolve_seed`); the integer seed used by the last :meth:`fit` (or the first
    :meth:`partial_fit`) is ``seed_``.
    """

    _requires_labels = False
    #: Constructor defaults of files saved before a parameter existed (``load`` fills them in).
    _legacy_params: dict = {}

    def _reset(self) -> None:
        for attr in ("params_", "optimizer_", "n_features_in_", "seed_"):
            if hasattr(self, attr):
                delattr(self, attr)
        self.loss_history_: list[float] = []
        self.n_steps_ = 0

    def _validate_params(self) -> None:
        """Check the hyper-parameters (scikit-learn style: at fit time, naming the argument)."""
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{name}: expected an integer, got {value!r}")
        if int(self.steps) < 0:
            raise ValueError(f"steps: expected a non-negative integer, got {self.steps!r}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {self.batch_size!r}")
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, int | float | np.floating) or not lr > 0:
            raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
        if not np.isfinite(float(lr)):
            raise ValueError(f"lr: expected a finite learning rate, got {lr!r}")

    def _ensure_init(self, n_features: int) -> None:
        if getattr(self, "params_", None) is None:
            if not hasattr(self, "loss_history_"):
                self.loss_history_ = []
                self.n_steps_ = 0
            self._validate_params()
            if not hasattr(self, "seed_"):
                self.seed_ = resolve_seed(self.random_state)
            self.n_features_in_ = int(n_features)
            self._init_params(self.n_features_in_)
            self.optimizer_ = torch.optim.Adam(list(self.params_.values()), lr=float(self.lr))
        elif int(n_features) != self.n_features_in_:
            raise ValueError(
                f"codes: expected code width D={self.n_features_in_} (the probe was fitted on "
                f"it), got D={n_features}"
            )

    def _check_fitted(self) -> None:
        if getattr(self, "params_", None) is None:
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet: call fit() or "
                "partial_fit() first"
            )

    def partial_fit(self, codes, labels=None):
        """One Adam step on one mini-batch.

        Args:
            codes: ``(B, D, h, w)`` or ``(M, D)`` codes (numpy or torch; detached).
            labels: per-pixel labels for supervised probes (see the subclass), else ignored.

        Returns:
            self
        """
        x = as_code_tensor(codes, self.device)
        y = self._prepare_labels(labels, x) if self._requires_labels else None
        self._ensure_init(x.shape[1])
        self._step(x, y)
        return self

    def _step(self, x: torch.Tensor, y) -> None:
        x = x.to(self.device)
        if y is not None:
            y = y.to(self.device)
        self.optimizer_.zero_grad(set_to_none=True)
        loss = self._batch_loss(x, y)
        loss.backward()
        self.optimizer_.step()
        self.loss_history_.append(float(loss.detach()))
        self.n_steps_ += 1

    def _prepare_labels(self, labels, codes):  # pragma: no cover - overridden when needed
        return None

    def fit(self, codes, labels=None):
        """Train from scratch for ``steps`` mini-batches of ``batch_size`` items.

        The batches are drawn by :func:`minibatch_stream` with ``random_state``; an item is an
        image for ``(N, D, h, w)`` codes and a token for ``(M, D)`` codes.

        Args:
            codes: ``(N, D, h, w)`` or ``(M, D)`` codes.
            labels: labels aligned with ``codes`` (see the subclass), or None.

        Returns:
            self
        """
        x = as_code_tensor(codes, "cpu")
        y = self._prepare_labels(labels, x) if self._requires_labels else None
        self._reset()
        self._before_fit(x)
        self._ensure_init(x.shape[1])
        for idx in minibatch_stream(len(x), self.batch_size, self.steps, self.seed_):
            sel = torch.from_numpy(idx)
            self._step(x[sel], None if y is None else y[sel])
        return self

    def _before_fit(self, codes: torch.Tensor) -> None:
        """Hook run by :meth:`fit` on all training codes before the parameters are created."""

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        """Learned arrays other than the parameters, saved by :meth:`save` (subclass hook)."""
        return {}

    def _load_extra_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`_extra_arrays` saved (subclass hook)."""

    # -- persistence ---------------------------------------------------------------------------
    #: Fitted scalar attributes a subclass saves beside the common ones (restored if present).
    _state_attrs: tuple[str, ...] = ()

    def save(self, path: str | os.PathLike) -> Path:
        """Write parameters and learned state to ``path`` (the common estimator format of
        :mod:`stego_probe.persist`, an ``.npz`` file; the Adam state is not kept).

        Returns:
            the path written.
        """
        self._check_fitted()
        arrays = {k: v.detach().cpu().numpy() for k, v in self.params_.items()}
        extra = {f"extra:{k}": v for k, v in self._extra_arrays().items()}
        params = self.get_params()
        if not isinstance(params.get("random_state"), int | None):
            params["random_state"] = int(self.seed_)  # a RandomState is not JSON: keep its draw
        state = {
            "n_features_in_": int(self.n_features_in_),
            "n_steps_": int(self.n_steps_),
            "seed_": int(self.seed_),
            **{k: getattr(self, k) for k in self._state_attrs if hasattr(self, k)},
        }
        history = np.asarray(self.loss_history_, dtype=np.float64)
        return write_estimator(
            path,
            kind="probe",
            cls_name=type(self).__name__,
            params=params,
            state=state,
            arrays={"loss_history": history, **arrays, **extra},
        )

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Load a probe written by :meth:`save`, also by an older version (ready to predict;
        training restarts Adam).

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: not a stego_probe estimator file, a probe of another class, or a
                parameter array missing or of the wrong shape.
        """
        saved = read_estimator(path, kind="probe", expected=cls.__name__)
        arrays = dict(saved.arrays)
        history = arrays.pop("loss_history", np.zeros(0)).tolist()
        extra = {k[6:]: arrays.pop(k) for k in list(arrays) if k.startswith("extra:")}
        state = dict(saved.state)
        missing = [k for k in ("seed_", "n_features_in_", "n_steps_") if k not in state]
        if missing:
            raise ValueError(f"{saved.path}: a {cls.__name__} file without {missing} in its state")
        probe = cls(**{**cls._legacy_params, **saved.params})
        probe._reset()
        probe.seed_ = int(state.pop("seed_"))
        probe._ensure_init(int(state.pop("n_features_in_")))
        probe._load_extra_arrays(extra)
        with torch.no_grad():
            for k, p in probe.params_.items():
                if k not in arrays or tuple(arrays[k].shape) != tuple(p.shape):
                    raise ValueError(f"{saved.path}: parameter {k!r} missing or of the wrong shape")
                p.copy_(torch.from_numpy(arrays[k]))
        probe.loss_history_ = history
        probe.n_steps_ = int(state.pop("n_steps_"))
        for k in cls._state_attrs:
            if k in state:
                setattr(probe, k, state[k])
        return probe

    # -- chunked inference ---------------------------------------------------------------------
    def _chunks(self, x: torch.Tensor):
        step = PREDICT_CHUNK_IMAGES if x.ndim == 4 else PREDICT_CHUNK_TOKENS
        for start in range(0, len(x), step):
            yield x[start : start + step].to(self.device)


# ---------------------------------------------------------------------------------------------
# cluster probe
# ---------------------------------------------------------------------------------------------


def cosine_similarities(codes: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every code with every centroid (``F.normalize``, eps 1e-12).

    Args:
        codes: ``(B, D, h, w)`` or ``(M, D)`` float tensor.
        centroids: ``(K', D)`` float tensor.

    Returns:
        ``(B, K', h, w)`` or ``(M, K')`` tensor ``I_k = <c/|c|, mu_k/|mu_k|>`` (differentiable).
    """
    c = F.normalize(codes, dim=1, eps=NORMALIZE_EPS)
    mu = F.normalize(centroids, dim=1, eps=NORMALIZE_EPS)
    if codes.ndim == 4:
        return torch.einsum("bdhw,kd->bkhw", c, mu)
    return c @ mu.t()


def cluster_lookup_loss(codes: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The hard cluster-probe loss of the reference: ``-mean_{positions} max_k I_k``.

    Implemented as ``-(P * I).sum(k).mean()`` with ``P = onehot(argmax_k I)`` (no gradient
    through ``P``), so only the winning centroid at each position receives a gradient.

    Args:
        codes: ``(B, D, h, w)`` or ``(M, D)`` float tensor (pass it detached to train only the
            centroids, as the reference does).
        centroids: ``(K', D)`` float tensor (typically a ``Parameter``).

    Returns:
        scalar tensor in ``[-1, 1]``.

    Examples:
        >>> c = torch.tensor([[1.0, 0.0]]); mu = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
        >>> round(float(cluster_lookup_loss(c, mu)), 4)  # -cos(45 deg)
        -0.7071
    """
    inner = cosine_similarities(codes, centroids)
    with torch.no_grad():
        p = F.one_hot(inner.argmax(dim=1), centroids.shape[0]).to(inner.dtype)
        p = p.movedim(-1, 1)
    return -(p * inner).sum(dim=1).mean()


class ClusterLookupProbe(MinibatchProbe):
    """The reference cluster probe: online spherical k-means trained by Adam (PROTOCOL §4.1).

    Args:
        n_clusters: number of centroids ``K'`` (``K`` plus extra clusters).
        lr: Adam learning rate (reference: 5e-3).
        steps: number of mini-batches in :meth:`fit` (reference: 7000 for CocoStuff / Cityscapes,
            5000 for Potsdam).
        batch_size: items per mini-batch: images for ``(N, D, h, w)`` codes, tokens for
            ``(M, D)`` codes (reference: 32 images; 16 for Potsdam).
        random_state: seed of the centroid initialisation and of the mini-batch stream.
        device: torch device used for training and prediction.

    Attributes:
        cluster_centers_: ``(K', D)`` float32 numpy array of the (unnormalised) centroids.
        params_: ``{"clusters": Parameter (K', D)}``.
        loss_history_: loss of every training step (list of float).
        n_steps_: number of steps trained.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.normal([5, 0], 0.3, (50, 2)), rng.normal([0, 5], 0.3, (50, 2))
        >>> codes = np.concatenate([a, b]).astype(np.float32)
        >>> probe = ClusterLookupProbe(2, steps=200, batch_size=32).fit(codes)
        >>> len(set(probe.predict(codes[:50]))), len(set(probe.predict(codes)))
        (1, 2)
    """

    def __init__(
        self,
        n_clusters: int,
        *,
        lr: float = 5e-3,
        steps: int = DEFAULT_STEPS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        random_state: int = 0,
        device: str = "cpu",
    ) -> None:
        self.n_clusters = n_clusters
        self.lr = lr
        self.steps = steps
        self.batch_size = batch_size
        self.random_state = random_state
        self.device = device

    def _init_params(self, n_features: int) -> None:
        k = int(self.n_clusters)
        if k < 1:
            raise ValueError(f"n_clusters: expected a positive integer, got {self.n_clusters!r}")
        g = torch.Generator().manual_seed(int(self.seed_))
        init = torch.randn((k, n_features), generator=g, dtype=torch.float32)
        self.params_ = {"clusters": torch.nn.Parameter(init.to(self.device))}

    def _batch_loss(self, codes: torch.Tensor, labels) -> torch.Tensor:
        return cluster_lookup_loss(codes, self.params_["clusters"])

    @property
    def cluster_centers_(self) -> np.ndarray:
        self._check_fitted()
        return self.params_["clusters"].detach().cpu().numpy().copy()

    def loss(self, codes) -> torch.Tensor:
        """Differentiable hard loss of the current centroids on ``codes`` (codes are detached).

        This is what the STEGO trainer adds to its total loss to train the probe alongside the
        head: ``probe.loss(code.detach())`` with ``probe.params_["clusters"]`` in its optimiser
        (call :meth:`initialize` first).

        Args:
            codes: ``(B, D, h, w)`` or ``(M, D)`` tensor / array.

        Returns:
            scalar tensor (gradient w.r.t. the centroids only).
        """
        x = as_code_tensor(codes, self.device)
        self._ensure_init(x.shape[1])
        return cluster_lookup_loss(x, self.params_["clusters"])

    def initialize(self, n_features: int):
        """Create the centroids for width ``D = n_features`` without training (for external
        training loops that call :meth:`loss`). Returns self."""
        self._reset()
        self._ensure_init(n_features)
        return self

    def decision_function(self, codes, *, size=None) -> np.ndarray:
        """Cosine similarities of the codes (upsampled to ``size`` first) with the centroids.

        The code is bilinearly upsampled (``align_corners=False``) *before* it is normalised,
        as in the reference. Computed without materialising the upsampled codes: the inner
        products with the normalised centroids and the squared code norms are both upsampled
        channel-chunk-wise, which is exact because bilinear interpolation is linear.

        Args:
            codes: ``(N, D, h, w)`` or ``(M, D)`` codes.
            size: ``(H, W)`` to upsample image-layout codes to, or None.

        Returns:
            float32 ``(N, K', H, W)`` (or ``(N, K', h, w)``, ``(M, K')``).
        """
        return self._cosine(codes, size, normalise=True).numpy()

    def _cosine(self, codes, size, normalise: bool) -> torch.Tensor:
        self._check_fitted()
        x = as_code_tensor(codes, "cpu")
        self._ensure_init(x.shape[1])
        size = check_size(size, x)
        mu = F.normalize(self.params_["clusters"].detach(), dim=1, eps=NORMALIZE_EPS)
        out = []
        with torch.no_grad():
            for chunk in self._chunks(x):
                if size is None:
                    if normalise:
                        out.append(cosine_similarities(chunk, mu).cpu())
                    else:
                        out.append(_inner(chunk, mu).cpu())
                    continue
                inner = upsample(_inner(chunk, mu), size)
                if normalise:
                    sq = torch.zeros((len(chunk), 1, *size), device=chunk.device)
                    for d0 in range(0, chunk.shape[1], 64):
                        sq += upsample(chunk[:, d0 : d0 + 64], size).square().sum(1, keepdim=True)
                    inner = inner / sq.sqrt().clamp_min(NORMALIZE_EPS)
                out.append(inner.cpu())
        return torch.cat(out)

    def predict(self, codes, *, size=None) -> np.ndarray:
        """Cluster ids: argmax of the cosine similarity (code upsampled to ``size`` first).

        Args:
            codes: ``(N, D, h, w)`` or ``(M, D)`` codes.
            size: ``(H, W)`` to upsample image-layout codes to, or None.

        Returns:
            int64 ``(N, H, W)`` (or ``(N, h, w)``, ``(M,)``) in ``[0, K')``.
        """
        # The code norm is a positive per-position factor, so it does not change the argmax.
        return self._cosine(codes, size, normalise=False).argmax(dim=1).numpy()

    def log_probs(self, codes, alpha: float = 2.0, *, size=None) -> np.ndarray:
        """Soft assignment ``log_softmax(alpha * cos)`` over clusters (the CRF input).

        Args:
            codes: ``(N, D, h, w)`` or ``(M, D)`` codes.
            alpha: inverse temperature (reference evaluation: 2).
            size: ``(H, W)`` to upsample image-layout codes to, or None.

        Returns:
            float32 ``(N, K', H, W)`` (or ``(N, K', h, w)``, ``(M, K')``).
        """
        cos = self._cosine(codes, size, normalise=True)
        return torch.log_softmax(float(alpha) * cos, dim=1).numpy()


def _inner(codes: torch.Tensor, mu_hat: torch.Tensor) -> torch.Tensor:
    """Inner products of (unnormalised) codes with normalised centroids."""
    if codes.ndim == 4:
        return torch.einsum("bdhw,kd->bkhw", codes, mu_hat)
    return codes @ mu_hat.t()
