"""The linear probe (PROTOCOL §4.3): a 1x1 convolution ``D -> K`` with bias on detached codes.

Objective (the reference's, §3.4 step 4): logits are computed at token resolution and bilinearly
upsampled (``align_corners=False``) to the label resolution; the loss is the mean cross-entropy
over valid pixels (labels in ``[0, K)``, see :mod:`stego_probe.labels`). When the labels are
given on the token grid the loss is computed there. Token-layout codes ``(M, D)`` with labels
``(M,)`` give plain softmax regression. Because upsampling is linear, this is multinomial
logistic regression on the bilinearly upsampled codes: a convex problem in the ``K x (D + 1)``
weights.

Three solvers (``solver``):

* ``"lbfgs"`` (default): full-batch L-BFGS (:class:`torch.optim.LBFGS`, strong-Wolfe line
  search) on the exact objective, each function evaluation one pass over the training codes in
  chunks of bounded memory (:meth:`LinearProbe.fit`, or :meth:`LinearProbe.fit_passes` for a
  store read lazily), from zero weights (deterministic, independent of ``random_state``). It
  works in whitened coordinates ``z = P^T (x - m)`` of the training codes (token covariance
  ``U diag(lambda) U^T``, ``P = U diag(lambda)^-1/2`` over the eigenvalues above
  ``1e-10 lambda_max``; directions below carry float rounding, not signal), which preconditions
  the problem (raw backbone features are ill-conditioned: L-BFGS on them needs >10x more
  iterations), with an optional L2 penalty ``l2 / 2 * ||W_z||^2`` on the whitened-space weights
  (not the bias; default :data:`DEFAULT_L2`). Whitened coordinates are the same for any
  invertible linear map of the codes up to a rotation, so the whole objective, penalty
  included, is invariant to such maps. Stopping rule: the largest absolute gradient entry
  ``<= tol``, or a loss change / parameter step below :data:`LBFGS_TOL_CHANGE`, or ``max_iter``
  iterations (at most ``1.25 * max_iter`` passes); ``converged_`` tells whether a tolerance
  (not the budget) stopped it. At the optimum the probe's decisions do not depend on an
  invertible linear map of its input, so raw features, a full-width PCA and a full-width
  random projection score alike (demo codes: within 0.03 mIoU). The result does not depend on
  ``standardize`` either (kept so that ``coef_`` and saved files have one form).
* ``"tokens"``: the same L-BFGS (whitened coordinates, L2 term, stopping rule) on the
  *token-level bound* of that objective, in memory: each token ``t`` is one row with its class
  mass ``T[t, k] = sum_p a_pt [y_p = k]`` over valid pixels ``p`` (``a_pt`` the bilinear
  upsampling weights; :func:`stego_probe.store.soft_token_labels`), and the loss is
  ``-sum_t sum_k T[t, k] log softmax(W x_t + b)_k / sum(T)``: the pixel loss with the
  log-softmax of interpolated logits replaced by the interpolated log-softmax, an upper bound
  of it (Jensen), equal where a token's footprint holds one class. No pass over the training
  set: :func:`~stego_probe.evaluate.evaluate_stores` trains it on the seeded token sample it
  draws for k-means (:meth:`LinearProbe.fit_targets`). It is still scored at pixel level.
  Measured on the demo's world (8x8 tokens, 64 px labels), it scores ~4 mIoU below the
  pixel-level optimum (``benchmarks/bench_linear_probe.py``), so it is not the default.
* ``"adam"``: the reference's mini-batch training (parity mode): Adam (lr 5e-3) for ``steps``
  mini-batches of ``batch_size`` images from :func:`~stego_probe.probes.cluster_lookup.
  minibatch_stream`, from PyTorch's seeded default initialisation. At the reference's budget
  (7000 x 32) it is not converged on every input (it depends on the input's conditioning).

Upsampling inside the loss is two small matmuls with the separable bilinear weights
(:func:`bilinear_weights`, :func:`upsample_matmul`), equal to ``F.interpolate(mode="bilinear",
align_corners=False)`` to float rounding and faster (forward and backward).

Input standardisation (``standardize="train"``, the default). An affine probe can represent the
same decision function whatever the per-channel scale and offset of its input, but a solver
with a fixed budget does not *find* it independently of them (Adam with the reference's
7000 x lr 5e-3 schedule is far from convergence on small-scale features). So the probe z-scores
its input with per-channel statistics of the training codes (population mean and standard
deviation, streamed in float64, stored with the probe: ``mean_``, ``scale_``), which makes its
result invariant to any per-channel affine rescaling of the codes. ``standardize="none"`` trains
on the raw codes, as the reference does. The statistics are folded into the weights
(``W' = W / s``, ``b' = b - W' m``), so prediction costs nothing extra and
:attr:`LinearProbe.coef_` / ``intercept_`` act on raw codes.

Prediction upsamples the code and applies the probe; because both are affine (and the bilinear
weights sum to one) this equals upsampling the logits, which is what is computed.

The probe is supervised, but it is an *evaluation* head: its gradients never reach the features
it reads (STEGO issues #20, #89).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stego_probe.codes import as_code_tensor, bilinear_matrix, check_size, to_numpy, upsample
from stego_probe.labels import IGNORE, IGNORE_VALUES, check_labels
from stego_probe.probes.cluster_lookup import DEFAULT_BATCH_SIZE, DEFAULT_STEPS, MinibatchProbe
from stego_probe.probes.defaults import LINEAR_MAX_IMAGES, LINEAR_SOLVER
from stego_probe.projections.base import StreamingMoments, guard_scale

#: Input standardisation modes of :class:`LinearProbe`: ``"train"`` (default) z-scores the codes
#: with training statistics; ``"none"`` is the reference (raw codes).
STANDARDIZE_MODES = ("train", "none")
#: Solvers of :class:`LinearProbe`: ``"lbfgs"`` (the default, :data:`LINEAR_SOLVER`: L-BFGS on
#: the exact pixel objective, one pass over the training set per evaluation), ``"tokens"``
#: (L-BFGS on the token-level bound of the pixel objective, in memory) and ``"adam"`` (the
#: reference's mini-batch schedule, parity mode).
SOLVERS = ("tokens", "lbfgs", "adam")
#: The solvers that run L-BFGS to a stopping rule (:meth:`LinearProbe._lbfgs`).
LBFGS_SOLVERS = ("tokens", "lbfgs")
#: L-BFGS defaults: iteration budget, gradient tolerance (largest absolute entry of the gradient
#: of the mean loss in whitened coordinates), L2 penalty on the whitened-space weights and
#: history size.
DEFAULT_MAX_ITER = 300
DEFAULT_TOL = 1e-4
DEFAULT_L2 = 1e-6
LBFGS_HISTORY = 20
#: L-BFGS stops when the loss changes by less than this between iterations, or no parameter moves
#: by more (``tolerance_change`` of :class:`torch.optim.LBFGS`).
LBFGS_TOL_CHANGE = 1e-9
#: Upsampled logits (elements, ``B * K * H * W``) per chunk of an L-BFGS pass (bounds memory:
#: about 4 float32 copies of this many elements live during a chunk's backward pass).
PASS_CHUNK_ELEMENTS = 1 << 23
#: Training chunks of :meth:`LinearProbe.fit_passes` up to this many bytes in all (codes as
#: given, labels as int16) are kept in memory after the first pass; larger training sets are
#: read again on every pass.
PASS_CACHE_BYTES = 1 << 30
#: Images (image layout) or tokens (token layout) per chunk when accumulating statistics.
_STATS_CHUNK_IMAGES = 64
_STATS_CHUNK_TOKENS = 1 << 18

_BILINEAR_CACHE: dict = {}


def bilinear_weights(n_in: int, n_out: int) -> torch.Tensor:
    """The ``(n_out, n_in)`` float64 matrix of 1-D bilinear interpolation, ``align_corners=False``.

    Row ``i`` holds the weights of output sample ``i`` (at most two non-zeros, summing to one),
    computed as :func:`torch.nn.functional.interpolate` does for a given output size: source
    coordinate ``max(0, (i + 0.5) * n_in / n_out - 0.5)``, clamped to the last input sample.

    Examples:
        >>> bilinear_weights(2, 4).tolist()
        [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]]
    """
    return torch.from_numpy(bilinear_matrix(n_in, n_out))


def _bilinear_pair(h: int, w: int, size, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A_h (H, h), A_w^T (w, W))`` of :func:`bilinear_weights`, cached per shape / dtype."""
    key = (h, w, int(size[0]), int(size[1]), dtype, str(device))
    pair = _BILINEAR_CACHE.get(key)
    if pair is None:
        pair = (
            bilinear_weights(h, int(size[0])).to(device=device, dtype=dtype),
            bilinear_weights(w, int(size[1])).t().contiguous().to(device=device, dtype=dtype),
        )
        if len(_BILINEAR_CACHE) > 64:
            _BILINEAR_CACHE.clear()
        _BILINEAR_CACHE[key] = pair
    return pair


def upsample_matmul(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear upsampling ``(B, C, h, w) -> (B, C, H, W)`` (``align_corners=False``) by matmul.

    ``A_h @ x @ A_w^T`` with the separable weights of :func:`bilinear_weights`: the same as
    ``F.interpolate(x, size, mode="bilinear", align_corners=False)`` up to float rounding, and
    faster forward and backward for the small token grids of ViT features (measured in
    ``benchmarks/bench_linear_probe.py``).

    Args:
        x: ``(B, C, h, w)`` float tensor (differentiable).
        size: ``(H, W)``.

    Returns:
        ``(B, C, H, W)`` tensor (``x`` itself if already that size).
    """
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[2:]) == size:
        return x
    a_h, a_wt = _bilinear_pair(int(x.shape[2]), int(x.shape[3]), size, x.dtype, x.device)
    return torch.matmul(torch.matmul(a_h, x), a_wt)


def code_statistics(codes) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel population mean and standard deviation of codes, streamed in float64.

    Args:
        codes: ``(N, D, h, w)`` or ``(M, D)`` codes (numpy or torch), or an iterable of such
            chunks (all with the same ``D``).

    Returns:
        ``(mean, std)``, each ``(D,)`` float64; channels without variance get ``std = 1``.

    Raises:
        ValueError: empty input, NaN / inf, inconsistent widths.

    Examples:
        >>> x = np.arange(12.0, dtype=np.float32).reshape(6, 2)
        >>> mean, std = code_statistics(x)
        >>> mean.tolist(), bool(np.allclose(std, x.std(0)))
        ([5.0, 6.0], True)
    """
    chunks = [codes] if isinstance(codes, np.ndarray | torch.Tensor) else codes
    moments = StreamingMoments(full=False)
    for chunk in chunks:
        x = as_code_tensor(chunk, "cpu", name="codes")
        step = _STATS_CHUNK_IMAGES if x.ndim == 4 else _STATS_CHUNK_TOKENS
        for start in range(0, len(x), step):
            part = x[start : start + step]
            moments.update(_token_rows(part))
    if moments.n == 0:
        raise ValueError("codes: expected at least one code to compute statistics from")
    mean = moments.mean()
    std = guard_scale(np.sqrt(moments.variance()), mean, where="linear probe input", warn=False)
    return mean, std


def _token_rows(x: torch.Tensor) -> torch.Tensor:
    """``(M, D)`` rows of image-layout ``(B, D, h, w)`` or token-layout ``(M, D)`` codes."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) if x.ndim == 4 else x


def linear_probe_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over valid pixels, logits upsampled to the label size if needed.

    Args:
        logits: ``(B, K, h, w)`` or ``(M, K)`` float tensor.
        labels: ``(B, H, W)`` or ``(M,)`` integer tensor; values outside ``[0, K)`` are ignored
            (the rule of :func:`stego_probe.labels.valid_mask`). When ``(H, W) != (h, w)`` the
            logits are bilinearly upsampled (``align_corners=False``, :func:`upsample_matmul`)
            to ``(H, W)`` first.

    Returns:
        scalar tensor; ``0`` (still differentiable) when no pixel is valid.

    Examples:
        >>> logits = torch.zeros(1, 3, 1, 1)
        >>> round(float(linear_probe_loss(logits, torch.tensor([[[2, -1], [7, 1]]]))), 4)  # ln 3
        1.0986
    """
    k = logits.shape[1]
    labels = labels.to(logits.device).long()
    if logits.ndim == 4:
        if labels.ndim != 3 or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"labels: expected shape ({logits.shape[0]}, H, W) for logits "
                f"{tuple(logits.shape)}, got {tuple(labels.shape)}"
            )
        if tuple(labels.shape[1:]) != tuple(logits.shape[2:]):
            logits = upsample_matmul(logits, tuple(labels.shape[1:]))
    elif logits.ndim == 2:
        if labels.shape != logits.shape[:1]:
            raise ValueError(
                f"labels: expected shape ({logits.shape[0]},) for logits {tuple(logits.shape)}, "
                f"got {tuple(labels.shape)}"
            )
    else:
        raise ValueError(f"logits: expected (B, K, h, w) or (M, K), got {tuple(logits.shape)}")
    valid = (labels >= 0) & (labels < k)
    if not bool(valid.any()):
        return logits.sum() * 0.0
    target = torch.where(valid, labels, torch.full_like(labels, IGNORE))
    return F.cross_entropy(logits, target, ignore_index=IGNORE)


def train_subset(n_images: int, max_images: int | None, seed: int | None = 0) -> np.ndarray | None:
    """The training images an L-BFGS linear probe reads from a store of ``n_images``.

    ``None`` (every image) when ``max_images`` is None or not below ``n_images``; else a
    sorted seeded random subset of ``max_images`` distinct indices (sorted, so that a store is
    read in order).

    Args:
        n_images: images in the training store.
        max_images: the cap (:attr:`LinearProbe.max_images`), or None.
        seed: seed of the subset (the probe's ``random_state``; None: a fresh random subset).

    Returns:
        int64 array ``(max_images,)`` of image indices, or None.

    Examples:
        >>> train_subset(10, None) is None, train_subset(10, 10) is None
        (True, True)
        >>> train_subset(10, 3, seed=0).tolist()
        [5, 6, 9]
    """
    n = int(n_images)
    if max_images is None or int(max_images) >= n:
        return None
    rng = np.random.default_rng(None if seed is None else int(seed))
    return np.sort(rng.choice(n, int(max_images), replace=False)).astype(np.int64)


def _compact_targets(t: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Integer pass targets as int16 when the classes fit (a quarter of int64's memory in the
    pass cache); float targets and larger class counts unchanged."""
    if t.is_floating_point() or n_classes >= 1 << 15:
        return t
    return t.to(torch.int16)


class LinearProbe(MinibatchProbe):
    """Supervised linear probe: ``Conv1x1(D -> K)`` with bias, pixel-level cross-entropy.

    The probe is fitted on z-scored codes by default (``standardize="train"``; see the module
    docstring): its accuracy does not depend on a per-channel rescaling of the codes. The
    default solver (``"lbfgs"``) minimises the objective to convergence; ``"adam"`` is the
    reference's mini-batch schedule (parity mode).

    Args:
        n_classes: number of classes ``K``.
        solver: ``"lbfgs"`` (default): full-batch L-BFGS, one pass over the training codes per
            function evaluation (:meth:`fit`, :meth:`fit_passes`), from zero weights;
            ``"tokens"``: L-BFGS in memory on token rows with their class mass (the token-level
            bound of the pixel objective; :meth:`fit`, :meth:`fit_targets`, :meth:`fit_passes`);
            ``"adam"``: ``steps`` Adam mini-batches (:meth:`fit`, :meth:`partial_fit`).
        max_iter: L-BFGS iteration budget (at most ``1.25 * max_iter`` passes).
        tol: L-BFGS stops when the largest absolute entry of the gradient of the (mean) loss is
            ``<= tol`` (or the loss / parameters change by less than :data:`LBFGS_TOL_CHANGE`).
        l2: L-BFGS only: penalty ``l2 / 2 * ||W_z||^2`` on the weights in the solver's
            whitened coordinates (not the bias), added to the mean cross-entropy; invariant to
            invertible linear maps of the codes. The default (:data:`DEFAULT_L2`) is tiny: it
            makes the optimum unique and finite (also for separable data) without moving the
            decisions measurably (demo: 0 and 1e-6 agree within 0.01 mIoU); 0 is allowed.
        lr: Adam learning rate (reference: 5e-3).
        steps: number of Adam mini-batches in :meth:`fit` (``solver="adam"``).
        batch_size: items per Adam mini-batch (images for image-layout codes, tokens for
            ``(M, D)``).
        random_state: seed of the (PyTorch default) initialisation and of the mini-batch stream
            (``solver="adam"``), and of the image subset of ``max_images`` (``"lbfgs"``).
        max_images: ``solver="lbfgs"`` trained on a feature store
            (:func:`~stego_probe.evaluate.evaluate_stores`, the sweep): at most this many
            training images, a seeded random subset (:func:`train_subset`) of a larger store,
            read once and kept in memory when it fits (:data:`PASS_CACHE_BYTES`), so that the
            cost no longer grows with the store (default :data:`LINEAR_MAX_IMAGES`; ``None``:
            every image). :meth:`fit` and :meth:`fit_passes` train on the codes they are given.
        label_res: ``None`` (default): the loss is computed at the resolution of the labels given
            (pixel labels: logits upsampled to them, as the reference; token-grid labels: at
            token resolution). ``(H, W)`` or ``int``: labels are first resized to this size with
            nearest-neighbour interpolation (e.g. to train at 224 px from 320 px labels).
        device: torch device.
        standardize: ``"train"`` (default): z-score the codes with the per-channel mean and
            population std of the training codes (:meth:`fit` computes them from its codes; set
            them with :meth:`fit_scaler` / :meth:`set_scaler` before :meth:`partial_fit`).
            ``"none"``: raw codes, as the reference (parity option).

    Attributes:
        coef_: ``(K, D)`` float32 weights and ``intercept_``: ``(K,)`` float32 biases acting on
            the *raw* codes (the statistics folded in): ``logits = codes @ coef_.T + intercept_``.
        mean_, scale_: ``(D,)`` float64 input statistics (``standardize="train"``).
        params_: ``{"weight": Parameter (K, D), "bias": Parameter (K,)}`` in the standardised
            space.
        loss_history_: training loss of every Adam step, or of every L-BFGS pass (the mean
            cross-entropy plus the L2 term).
        n_steps_: Adam steps, or L-BFGS iterations.
        n_iter_, n_passes_, converged_, grad_max_: L-BFGS iterations, passes over the training
            codes (function evaluations), whether a tolerance stopped it (not ``max_iter`` or
            the pass budget) and the largest absolute gradient entry at the last evaluation.
        n_labelled_: labelled pixels (labels in ``[0, K)``) the training saw: all of
            :meth:`fit`'s labels, or the sum over :meth:`partial_fit` batches.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 3, 300)
        >>> x = (np.eye(3)[y] * 4 + rng.normal(0, 0.3, (300, 3))).astype(np.float32)
        >>> probe = LinearProbe(3, steps=300, batch_size=64).fit(x, y)
        >>> float((probe.predict(x) == y).mean())
        1.0
    """

    _requires_labels = True
    # files written before input standardisation existed hold a raw-input probe; files written
    # before the L-BFGS solver existed hold an Adam-trained one
    _legacy_params = {"standardize": "none", "solver": "adam"}
    # saved so that a loaded probe still knows whether it saw labelled pixels (check_labelled)
    # and how its solver stopped
    _state_attrs = ("n_labelled_", "n_iter_", "n_passes_", "converged_", "grad_max_")

    def __init__(
        self,
        n_classes: int,
        *,
        solver: str = LINEAR_SOLVER,
        max_iter: int = DEFAULT_MAX_ITER,
        tol: float = DEFAULT_TOL,
        l2: float = DEFAULT_L2,
        lr: float = 5e-3,
        steps: int = DEFAULT_STEPS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        random_state: int = 0,
        label_res=None,
        device: str = "cpu",
        standardize: str = "train",
        max_images: int | None = LINEAR_MAX_IMAGES,
    ) -> None:
        self.n_classes = n_classes
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.l2 = l2
        self.lr = lr
        self.steps = steps
        self.batch_size = batch_size
        self.random_state = random_state
        self.label_res = label_res
        self.device = device
        self.standardize = standardize
        self.max_images = max_images

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.solver not in SOLVERS:
            raise ValueError(f"solver: expected one of {list(SOLVERS)}, got {self.solver!r}")
        it = self.max_iter
        if isinstance(it, bool) or not isinstance(it, int | np.integer) or int(it) < 1:
            raise ValueError(f"max_iter: expected a positive integer, got {it!r}")
        m = self.max_images
        if m is not None and (
            isinstance(m, bool) or not isinstance(m, int | np.integer) or int(m) < 1
        ):
            raise ValueError(f"max_images: expected a positive integer or None, got {m!r}")
        for name in ("tol", "l2"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float | np.floating):
                raise ValueError(f"{name}: expected a non-negative number, got {v!r}")
            if not (np.isfinite(float(v)) and float(v) >= 0):
                raise ValueError(f"{name}: expected a finite non-negative number, got {v!r}")

    # -- input statistics ----------------------------------------------------------------------
    def _check_standardize(self) -> None:
        if self.standardize not in STANDARDIZE_MODES:
            raise ValueError(
                f"standardize: expected one of {list(STANDARDIZE_MODES)}, got {self.standardize!r}"
            )

    def fit_scaler(self, codes):
        """Set the input statistics from training codes (streamed; see :func:`code_statistics`).

        Call it before :meth:`partial_fit` when training on a stream (after :meth:`initialize`,
        which resets the probe); :meth:`fit` calls it on its own codes. A no-op with
        ``standardize="none"``.

        Args:
            codes: ``(N, D, h, w)`` or ``(M, D)`` training codes, or an iterable of chunks.

        Returns:
            self
        """
        self._check_standardize()
        if self.standardize == "train":
            self.set_scaler(*code_statistics(codes))
        return self

    def set_scaler(self, mean, scale):
        """Set the input statistics ``mean_`` / ``scale_`` (``(D,)`` each, ``scale > 0``).

        Returns:
            self
        """
        mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        scale = np.asarray(scale, dtype=np.float64).reshape(-1)
        if mean.shape != scale.shape or mean.size == 0:
            raise ValueError(
                f"mean / scale: expected two (D,) arrays of the same length, got {mean.shape} "
                f"and {scale.shape}"
            )
        if not (np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("mean / scale: expected finite values and a positive scale")
        n = getattr(self, "n_features_in_", None)
        if n is not None and getattr(self, "params_", None) is not None and mean.size != n:
            raise ValueError(f"mean / scale: expected D={n} values (the probe's width)")
        self.mean_, self.scale_ = mean, scale
        self._scaler_t = None
        return self

    def _scaler_tensors(self, device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(mean, 1 / scale)`` as float32 tensors, or None without standardisation."""
        self._check_standardize()
        if self.standardize == "none":
            return None
        if getattr(self, "mean_", None) is None:
            raise ValueError(
                "LinearProbe(standardize='train') has no input statistics: call fit(), or "
                "fit_scaler(training codes) before partial_fit() / loss(); or pass "
                "standardize='none' for the reference's raw codes"
            )
        cached = getattr(self, "_scaler_t", None)
        if cached is None or cached[0].device != torch.device(device):
            cached = (
                torch.as_tensor(self.mean_, dtype=torch.float32, device=device),
                torch.as_tensor(1.0 / self.scale_, dtype=torch.float32, device=device),
            )
            self._scaler_t = cached
        return cached

    def _reset(self) -> None:
        super()._reset()
        self.n_labelled_ = 0
        for attr in (
            "mean_",
            "scale_",
            "_scaler_t",
            "n_iter_",
            "n_passes_",
            "converged_",
            "grad_max_",
        ):
            if hasattr(self, attr):
                delattr(self, attr)

    def _before_fit(self, codes: torch.Tensor) -> None:
        # fit(): the labels were prepared (and counted) just before; refuse to "train" on none
        n = int(getattr(self, "_batch_labelled", 0))
        self.n_labelled_ = n
        if n == 0:
            raise ValueError(
                f"labels: no labelled pixel (every label is an ignore value, -1 / 255 / outside "
                f"[0, {self.n_classes})); the linear probe cannot be trained on them"
            )
        self.fit_scaler(codes)

    def partial_fit(self, codes, labels=None):
        """One Adam step on one mini-batch (see :meth:`MinibatchProbe.partial_fit`);
        ``solver="adam"`` only (the L-BFGS solver trains on passes: :meth:`fit_passes`).

        The labelled pixels seen so far are counted in ``n_labelled_`` (a batch without any is
        a step with zero loss); :meth:`check_labelled` refuses a probe that saw none.

        Returns:
            self
        """
        if self.solver != "adam":
            raise ValueError(
                f"partial_fit: one Adam mini-batch step needs solver='adam' (this probe has "
                f"solver={self.solver!r}); train it with fit(codes, labels) or "
                "fit_passes(passes) instead"
            )
        super().partial_fit(codes, labels)
        self.n_labelled_ = int(getattr(self, "n_labelled_", 0)) + int(self._batch_labelled)
        return self

    def check_labelled(self, where: str = "training labels") -> None:
        """Raise ``ValueError`` if the probe was trained without one labelled pixel.

        A linear probe trained only on ignore labels keeps its random initialisation (every
        loss is zero) and would report a meaningless score. ``where`` names the label source
        in the message (e.g. ``"train store /data/train.zarr"``).
        """
        if int(getattr(self, "n_labelled_", 0)) == 0:
            raise ValueError(
                f"{where}: the linear probe was trained without one labelled pixel (all train "
                f"labels it saw are ignore values, -1 / 255 / outside [0, {self.n_classes})); "
                "its score would be that of a random probe"
            )

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        if self.standardize == "train" and getattr(self, "mean_", None) is not None:
            return {"mean": self.mean_, "scale": self.scale_}
        return {}

    def _load_extra_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        if "mean" in arrays:
            self.set_scaler(arrays["mean"], arrays["scale"])

    # -- training ------------------------------------------------------------------------------
    def _init_params(self, n_features: int) -> None:
        k = int(self.n_classes)
        if k < 1:
            raise ValueError(f"n_classes: expected a positive integer, got {self.n_classes!r}")
        # PyTorch's default Conv2d initialisation, drawn from a private seeded RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed_))
            conv = torch.nn.Conv2d(n_features, k, kernel_size=1, bias=True)
        self.params_ = {
            "weight": torch.nn.Parameter(
                conv.weight.detach().reshape(k, n_features).to(self.device)
            ),
            "bias": torch.nn.Parameter(conv.bias.detach().to(self.device)),
        }

    def _label_size(self) -> tuple[int, int] | None:
        if self.label_res is None:
            return None
        r = self.label_res
        size = (int(r), int(r)) if np.isscalar(r) else (int(r[0]), int(r[1]))
        if min(size) < 1:
            raise ValueError(f"label_res: expected a positive int or (H, W), got {r!r}")
        return size

    def _prepare_labels(self, labels, codes: torch.Tensor) -> torch.Tensor:
        if labels is None:
            raise ValueError("labels: LinearProbe is supervised and needs labels, got None")
        y = check_labels(
            to_numpy(labels, "labels"), int(self.n_classes), IGNORE_VALUES, source="labels"
        )
        # labelled pixels of this call (counted by partial_fit, required > 0 by fit)
        self._batch_labelled = int(np.count_nonzero((y >= 0) & (y < int(self.n_classes))))
        if codes.ndim == 2:
            if y.shape != (codes.shape[0],):
                raise ValueError(
                    f"labels: expected shape ({codes.shape[0]},) for token codes "
                    f"{tuple(codes.shape)}, got {y.shape}"
                )
            return torch.from_numpy(y)
        if y.ndim != 3 or y.shape[0] != codes.shape[0]:
            raise ValueError(
                f"labels: expected shape ({codes.shape[0]}, H, W) for codes {tuple(codes.shape)}, "
                f"got {y.shape}"
            )
        t = torch.from_numpy(y)
        size = self._label_size()
        if size is not None and tuple(t.shape[1:]) != size:
            t = F.interpolate(t[:, None].double(), size=size, mode="nearest")[:, 0].long()
        return t

    def _affine(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights and bias acting on raw codes (the input statistics folded in)."""
        w, b = self.params_["weight"], self.params_["bias"]
        scaler = self._scaler_tensors(w.device if device is None else device)
        if scaler is None:
            return w, b
        mean, inv = scaler
        w = w * inv[None, :]
        return w, b - w @ mean

    def _logits(self, codes: torch.Tensor) -> torch.Tensor:
        w, b = self._affine(codes.device)
        if codes.ndim == 4:
            return torch.einsum("bdhw,kd->bkhw", codes, w) + b[None, :, None, None]
        return F.linear(codes, w, b)

    def _batch_loss(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return linear_probe_loss(self._logits(codes), labels)

    # -- the full-batch solver ------------------------------------------------------------------
    def fit(self, codes, labels=None):
        """Train from scratch on in-memory codes with the probe's ``solver``.

        ``"lbfgs"``: L-BFGS to the stopping rule (class docstring), each function evaluation one
        pass over ``codes`` in chunks of :data:`PASS_CHUNK_ELEMENTS` upsampled logits.
        ``"tokens"``: L-BFGS on the token rows of ``codes`` with their class mass (the
        bilinear footprint of pixel labels, or one-hot token labels; :meth:`fit_targets`).
        ``"adam"``: ``steps`` mini-batches of ``batch_size`` items
        (:meth:`MinibatchProbe.fit`).

        Args:
            codes: ``(N, D, h, w)`` or ``(M, D)`` codes.
            labels: ``(N, H, W)`` pixel labels, ``(N, h, w)`` token-grid labels or ``(M,)``;
                values outside ``[0, K)`` are ignored.

        Returns:
            self
        """
        self._validate_params()
        if self.solver == "adam":
            return super().fit(codes, labels)
        x = as_code_tensor(codes, "cpu")
        y = self._prepare_labels(labels, x)
        if self.solver == "tokens":
            return self._fit_rows(*self._token_targets(x, y))
        self._reset()
        self._before_fit(x)
        self._ensure_init(x.shape[1])
        chunks = list(self._pass_chunks(x, y))
        moments = StreamingMoments(full=True)
        for part, _ in chunks:
            moments.update(_token_rows(part))
        self._set_whitening(moments)
        self._lbfgs(lambda: iter(chunks), self.n_labelled_)
        return self

    def fit_passes(self, passes, *, on_pass=None):
        """Train from scratch with L-BFGS on a training set read lazily, one pass at a time.

        ``passes()`` is called once per pass and yields ``(codes, labels)`` chunks that together
        cover the training set (the same chunks in the same order every time), e.g. read from
        a feature store. The first pass counts the labelled pixels and, when all chunks hold
        at most :data:`PASS_CACHE_BYTES`, keeps them in memory for the others; larger training
        sets are read again on every pass (memory: one chunk). With ``standardize="train"``
        the input statistics set by :meth:`fit_scaler` / :meth:`set_scaler` are used, or
        computed in one more pass if none are set.

        Args:
            passes: zero-argument callable returning an iterable of ``(codes, labels)``:
                ``(B, D, h, w)`` codes with ``(B, H, W)`` / ``(B, h, w)`` labels, or ``(m, D)``
                with ``(m,)``.
            on_pass: called as ``on_pass(n_passes, loss)`` after every L-BFGS function
                evaluation (e.g. a progress bar), or None.

        Returns:
            self

        Raises:
            ValueError: ``solver`` is not ``"lbfgs"``, no chunk, inconsistent widths, no
                labelled pixel.
        """
        self._validate_params()
        if self.solver not in LBFGS_SOLVERS:
            raise ValueError(
                f"fit_passes: trains with solver='tokens' or 'lbfgs', this probe has "
                f"solver={self.solver!r} (train an Adam probe with fit() or partial_fit())"
            )
        if not callable(passes):
            raise ValueError(f"passes: expected a callable returning chunks, got {passes!r}")
        scaler = None
        if self.standardize == "train" and getattr(self, "mean_", None) is not None:
            scaler = (self.mean_, self.scale_)
        if self.solver == "tokens":
            return self._fit_token_passes(passes, scaler, on_pass)
        self._reset()
        if scaler is not None:
            self.set_scaler(*scaler)
        elif self.standardize == "train":
            self.fit_scaler(x for x, _ in self._read_pass(passes))
        cache: list | None = []
        n_bytes, n_labelled, width = 0, 0, None
        moments = StreamingMoments(full=True)
        for x, t in self._read_pass(passes):
            if width is None:
                width = int(x.shape[1])
                self._ensure_init(width)  # checks the statistics' width
            n_labelled += int((t != IGNORE).sum())
            moments.update(_token_rows(x))
            if cache is not None:
                t = _compact_targets(t, int(self.n_classes))
                n_bytes += x.numel() * x.element_size() + t.numel() * t.element_size()
                cache = cache if n_bytes <= PASS_CACHE_BYTES else None
                if cache is not None:
                    cache.append((x, t))
        if width is None:
            raise ValueError("passes: yielded no chunk of training codes")
        self.n_labelled_ = n_labelled
        self.check_labelled("passes")
        self._set_whitening(moments)
        source = (lambda: iter(cache)) if cache is not None else (lambda: self._read_pass(passes))
        self._lbfgs(source, n_labelled, on_pass)
        return self

    def _fit_token_passes(self, passes, scaler, on_pass):
        """``solver="tokens"``: read one pass of ``passes()`` into token rows and class mass
        (:meth:`_token_targets`), then fit them in memory (:meth:`_fit_rows`)."""
        rows, targets = [], []
        for codes, labels in passes():
            x = as_code_tensor(codes, "cpu", name="training codes")
            if rows and x.shape[1] != rows[0].shape[1]:
                raise ValueError(
                    f"training codes: expected width D={rows[0].shape[1]} in every chunk, "
                    f"got D={x.shape[1]}"
                )
            r, t = self._token_targets(x, self._prepare_labels(labels, x))
            rows.append(r)
            targets.append(t)
        if not rows:
            raise ValueError("passes: yielded no chunk of training codes")
        rows_t = rows[0] if len(rows) == 1 else torch.cat(rows)
        del rows
        return self._fit_rows(rows_t, torch.cat(targets), scaler=scaler, on_pass=on_pass)

    def fit_targets(self, codes, targets, *, on_pass=None):
        """Train from scratch (``solver="tokens"``) on token rows and their class mass.

        The objective is the token-level bound of the pixel objective (module docstring):
        ``-sum_t sum_k T[t, k] log softmax(W x_t + b)_k / sum(T)`` (+ the L2 term), minimised
        by L-BFGS in memory to the stopping rule. ``T`` is each token's valid-pixel mass per
        class under bilinear upsampling (:func:`stego_probe.store.soft_token_labels`, or
        ``FeatureStore.sample_tokens(..., soft_labels=True)``); one-hot rows give plain
        softmax regression on tokens. With ``standardize="train"`` the input statistics are
        computed from ``codes``.

        Args:
            codes: ``(M, D)`` token codes.
            targets: ``(M, K)`` non-negative finite class mass per token (rows of zeros: tokens
                without a labelled pixel, which do not enter the loss).
            on_pass: called as ``on_pass(n_passes, loss)`` after every function evaluation.

        Returns:
            self

        Raises:
            ValueError: ``solver`` is not ``"tokens"``, bad shapes, negative / non-finite
                targets, no labelled pixel (all targets zero).
        """
        self._validate_params()
        if self.solver != "tokens":
            raise ValueError(
                f"fit_targets: trains with solver='tokens', this probe has solver={self.solver!r}"
            )
        x = as_code_tensor(codes, "cpu", name="codes")
        if x.ndim != 2:
            raise ValueError(f"codes: expected token rows (M, D), got shape {tuple(x.shape)}")
        t = np.asarray(to_numpy(targets, "targets"))
        k = int(self.n_classes)
        if t.shape != (x.shape[0], k):
            raise ValueError(
                f"targets: expected shape ({x.shape[0]}, {k}) (one row of class mass per token), "
                f"got {t.shape}"
            )
        if t.dtype.kind not in "fiu" or not np.isfinite(t).all() or (t < 0).any():
            raise ValueError("targets: expected finite non-negative class mass")
        return self._fit_rows(
            x, torch.from_numpy(np.ascontiguousarray(t, dtype=np.float32)), on_pass=on_pass
        )

    def _token_targets(self, x: torch.Tensor, y: torch.Tensor):
        """Token rows ``(M, D)`` and their class mass ``(M, K)`` float32 of prepared codes and
        labels: the bilinear footprint of the pixel labels (image layout, pixel labels), or
        one-hot labels (token-grid labels, token layout; invalid labels: a row of zeros)."""
        k = int(self.n_classes)
        rows = _token_rows(x)
        if x.ndim == 4 and tuple(y.shape[1:]) != tuple(x.shape[2:]):
            from stego_probe.store.tokens import soft_token_labels

            soft = soft_token_labels(y.numpy(), tuple(x.shape[2:]), k)
            return rows, torch.from_numpy(soft.reshape(-1, k))
        flat = y.reshape(-1)
        valid = (flat >= 0) & (flat < k)
        targets = F.one_hot(torch.where(valid, flat, 0), k).float()
        targets *= valid[:, None]
        return rows, targets

    def _fit_rows(self, rows: torch.Tensor, targets: torch.Tensor, scaler=None, on_pass=None):
        """L-BFGS on token rows ``(M, D)`` with class mass ``(M, K)`` (``solver="tokens"``),
        from zero weights, in chunks of :data:`PASS_CHUNK_ELEMENTS` logits; the input
        statistics are ``scaler`` or those of ``rows``."""
        mass = float(targets.sum(dtype=torch.float64))
        self._reset()
        if not mass > 0:
            raise ValueError(
                f"labels: no labelled pixel (every label is an ignore value, -1 / 255 / outside "
                f"[0, {self.n_classes})); the linear probe cannot be trained on them"
            )
        self.n_labelled_ = int(round(mass))
        if scaler is not None:
            self.set_scaler(*scaler)
        else:
            self.fit_scaler(rows)
        self._ensure_init(int(rows.shape[1]))
        step = max(1, PASS_CHUNK_ELEMENTS // max(1, int(self.n_classes)))
        chunks = [(rows[i : i + step], targets[i : i + step]) for i in range(0, len(rows), step)]
        moments = StreamingMoments(full=True)
        for part, _ in chunks:
            moments.update(part)
        self._set_whitening(moments)
        self._lbfgs(lambda: iter(chunks), mass, on_pass)
        return self

    def _read_pass(self, passes):
        """Checked, prepared ``(codes, targets)`` chunks of one pass of ``passes()``."""
        for codes, labels in passes():
            x = as_code_tensor(codes, "cpu", name="training codes")
            if getattr(self, "n_features_in_", None) is not None and x.shape[1] != (
                self.n_features_in_
            ):
                raise ValueError(
                    f"training codes: expected width D={self.n_features_in_} in every chunk, "
                    f"got D={x.shape[1]}"
                )
            yield from self._pass_chunks(x, self._prepare_labels(labels, x))

    def _pass_chunks(self, x: torch.Tensor, y: torch.Tensor):
        """``(codes, targets)`` sub-chunks of at most :data:`PASS_CHUNK_ELEMENTS` upsampled
        logits; targets are the labels with every invalid one set to ``IGNORE``."""
        k = int(self.n_classes)
        target = torch.where((y >= 0) & (y < k), y, torch.full_like(y, IGNORE))
        per_item = k * (int(np.prod(y.shape[1:])) if y.ndim == 3 else 1)
        step = max(1, PASS_CHUNK_ELEMENTS // max(1, per_item))
        for start in range(0, len(x), step):
            yield x[start : start + step], target[start : start + step]

    def _pass_loss(self, source, w_z: torch.Tensor, b_z: torch.Tensor, n: int):
        """Mean cross-entropy (+ L2) and its gradient at whitened-space ``(w_z, b_z)`` (float64)
        over one pass of ``source()``; the compute is float32, the sums float64."""
        dev = torch.device(self.device)
        mean, proj = self._white
        with torch.no_grad():  # raw-space weights
            w64 = w_z.detach() @ proj.t()
            b64 = b_z.detach() - w64 @ mean
        wr = w64.float().requires_grad_(True)
        br = b64.float().requires_grad_(True)
        g_w = torch.zeros(wr.shape, dtype=torch.float64, device=dev)
        g_b = torch.zeros(br.shape, dtype=torch.float64, device=dev)
        total = 0.0
        for x, t in source():
            x, t = x.to(dev), t.to(dev)
            if not t.is_floating_point():
                t = t.long()  # cached pass targets are int16 (_compact_targets)
            if x.ndim == 4:
                logits = torch.einsum("bdhw,kd->bkhw", x, wr) + br[None, :, None, None]
                if tuple(t.shape[1:]) != tuple(x.shape[2:]):
                    logits = upsample_matmul(logits, tuple(t.shape[1:]))
                part = F.cross_entropy(logits, t, ignore_index=IGNORE, reduction="sum")
            elif t.is_floating_point():  # token rows with their class mass (solver="tokens")
                part = -(t * torch.log_softmax(F.linear(x, wr, br), dim=1)).sum()
            else:
                logits = F.linear(x, wr, br)
                part = F.cross_entropy(logits, t, ignore_index=IGNORE, reduction="sum")
            gw, gb = torch.autograd.grad(part, (wr, br))
            g_w += gw.double()
            g_b += gb.double()
            total += float(part.detach())
        g_w, g_b = g_w / n, g_b / n
        g_wz = (g_w - g_b[:, None] * mean[None, :]) @ proj  # chain rule to the whitened space
        l2 = float(self.l2)
        loss = total / n + 0.5 * l2 * float(w_z.detach().square().sum())
        return loss, g_wz + l2 * w_z.detach(), g_b

    def _set_whitening(self, moments: StreamingMoments) -> None:
        """The solver's coordinates ``z = P^T (x - m)`` from the training codes' moments:
        ``P = U diag(lambda)^-1/2`` over the covariance's eigenpairs above
        ``1e-10 * lambda_max`` (the others carry no variance)."""
        dev = torch.device(self.device)
        lam, vec = np.linalg.eigh(moments.covariance())
        keep = lam > max(float(lam.max()), 0.0) * 1e-10
        if not keep.any():  # constant codes: only the bias can be learned
            proj = np.zeros((len(lam), 1))
        else:
            proj = vec[:, keep] / np.sqrt(lam[keep])[None, :]
        self._white = (
            torch.as_tensor(moments.mean(), dtype=torch.float64, device=dev),
            torch.as_tensor(proj, dtype=torch.float64, device=dev),
        )

    def _lbfgs(self, source, n: int, on_pass=None) -> None:
        """Run L-BFGS from zero weights on the chunks of ``source()`` (``n`` labelled pixels),
        in the whitened coordinates of :meth:`_set_whitening`, and store the result in
        ``params_``."""
        dev = torch.device(self.device)
        mean, proj = self._white
        k = int(self.n_classes)
        w = torch.zeros((k, proj.shape[1]), dtype=torch.float64, device=dev, requires_grad=True)
        b = torch.zeros((k,), dtype=torch.float64, device=dev, requires_grad=True)
        max_iter = int(self.max_iter)
        opt = torch.optim.LBFGS(
            [w, b],
            lr=1.0,
            max_iter=max_iter,
            max_eval=max_iter * 5 // 4,
            tolerance_grad=float(self.tol),
            tolerance_change=LBFGS_TOL_CHANGE,
            history_size=LBFGS_HISTORY,
            line_search_fn="strong_wolfe",
        )
        history: list[float] = []
        last: dict = {}

        def closure():
            loss, g_w, g_b = self._pass_loss(source, w, b, n)
            w.grad, b.grad = g_w, g_b
            history.append(loss)
            last["grad_max"] = float(max(g_w.abs().max(), g_b.abs().max()))
            if on_pass is not None:
                on_pass(len(history), loss)
            return torch.tensor(loss, dtype=torch.float64)

        opt.step(closure)
        state = opt.state[w]
        self.n_iter_ = int(state.get("n_iter", 0))
        self.n_passes_ = len(history)
        self.converged_ = bool(self.n_iter_ < max_iter and self.n_passes_ < max_iter * 5 // 4)
        self.grad_max_ = last.get("grad_max", float("nan"))
        with torch.no_grad():  # raw-space affine map -> the standardised-space parameters
            w_raw = w.detach() @ proj.t()
            b_raw = b.detach() - w_raw @ mean
            if self.standardize == "train":
                m = torch.as_tensor(self.mean_, dtype=torch.float64, device=dev)
                sc = torch.as_tensor(self.scale_, dtype=torch.float64, device=dev)
                w_raw, b_raw = w_raw * sc[None, :], b_raw + w_raw @ m
            self.params_["weight"].copy_(w_raw.float())
            self.params_["bias"].copy_(b_raw.float())
        del self._white
        self.loss_history_ = history
        self.n_steps_ = self.n_iter_

    def loss(self, codes, labels) -> torch.Tensor:
        """Differentiable training loss of the current probe (gradients reach only the probe).

        Args:
            codes: ``(B, D, h, w)`` or ``(M, D)`` codes (detached here).
            labels: ``(B, H, W)`` / ``(B, h, w)`` or ``(M,)`` labels (numpy or torch).

        Returns:
            scalar tensor.
        """
        x = as_code_tensor(codes, self.device)
        self._ensure_init(x.shape[1])
        if isinstance(labels, torch.Tensor):
            y = labels.to(self.device)
        else:
            y = self._prepare_labels(labels, x).to(self.device)
        return linear_probe_loss(self._logits(x), y)

    def initialize(self, n_features: int):
        """Create the parameters for width ``D = n_features`` without training. Returns self."""
        self._reset()
        self._ensure_init(n_features)
        return self

    # -- inference -----------------------------------------------------------------------------
    @property
    def coef_(self) -> np.ndarray:
        self._check_fitted()
        with torch.no_grad():
            return self._affine(None)[0].detach().cpu().numpy().copy()

    @property
    def intercept_(self) -> np.ndarray:
        self._check_fitted()
        with torch.no_grad():
            return self._affine(None)[1].detach().cpu().numpy().copy()

    def decision_function(self, codes, *, size=None) -> np.ndarray:
        """Logits ``W c + b`` of the codes upsampled (bilinear) to ``size``.

        Args:
            codes: ``(N, D, h, w)`` or ``(M, D)`` codes.
            size: ``(H, W)`` to upsample image-layout codes to, or None.

        Returns:
            float32 ``(N, K, H, W)`` (or ``(N, K, h, w)``, ``(M, K)``).
        """
        return self._decision(codes, size).numpy()

    def _decision(self, codes, size) -> torch.Tensor:
        self._check_fitted()
        x = as_code_tensor(codes, "cpu")
        self._ensure_init(x.shape[1])
        size = check_size(size, x)
        with torch.no_grad():
            return torch.cat([upsample(self._logits(c), size).cpu() for c in self._chunks(x)])

    def predict(self, codes, *, size=None) -> np.ndarray:
        """Class ids: argmax of the logits (code upsampled to ``size`` first).

        Args:
            codes: ``(N, D, h, w)`` or ``(M, D)`` codes.
            size: ``(H, W)`` to upsample image-layout codes to, or None.

        Returns:
            int64 ``(N, H, W)`` (or ``(N, h, w)``, ``(M,)``) in ``[0, K)``.
        """
        return self._decision(codes, size).argmax(dim=1).numpy()

    def log_probs(self, codes, alpha: float = 1.0, *, size=None) -> np.ndarray:
        """``log_softmax(alpha * logits)`` over classes (the CRF input; ``alpha = 1``: the
        probe's own class probabilities).

        Args:
            codes: ``(N, D, h, w)`` or ``(M, D)`` codes.
            alpha: inverse temperature (the evaluation uses 1).
            size: ``(H, W)`` to upsample image-layout codes to, or None.

        Returns:
            float32 ``(N, K, H, W)`` (or ``(N, K, h, w)``, ``(M, K)``).
        """
        logits = self._decision(codes, size)
        if float(alpha) != 1.0:
            logits = float(alpha) * logits
        return torch.log_softmax(logits, dim=1).numpy()
