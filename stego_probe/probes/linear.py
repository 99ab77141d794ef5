"""The linear probe (PROTOCOL §4.3): a 1x1 convolution ``D -> K`` with bias on detached codes.

Training follows the reference (§3.4 step 4): logits are computed at token resolution and
bilinearly upsampled (``align_corners=False``) to the label resolution, then the mean
cross-entropy over valid pixels (labels in ``[0, K)``, see :mod:`stego_probe.labels`) is
minimised with Adam (lr 5e-3). When the labels are given on the token grid the loss is computed
there. Token-layout codes ``(M, D)`` with labels ``(M,)`` give plain softmax regression.

Input standardisation (``standardize="train"``, the default). An affine probe can represent the
same decision function whatever the per-channel scale and offset of its input, but Adam with a
fixed learning rate and step budget does not *find* it independently of them: features with a
small scale (e.g. the descriptor backbone, many custom extractors, some STEGO codes) leave the
reference's 7000 x lr 5e-3 schedule far from convergence, while PCA / RP codes, standardised by
their projection, train fine. So the probe z-scores its input with per-channel statistics of the
training codes (population mean and standard deviation, streamed in float64, stored with the
probe: ``mean_``, ``scale_``), which makes its result invariant to any per-channel affine
rescaling of the codes. ``standardize="none"`` trains on the raw codes, as the reference does.
The statistics are folded into the weights (``W' = W / s``, ``b' = b - W' m``), so prediction
costs nothing extra and :attr:`LinearProbe.coef_` / ``intercept_`` act on raw codes.

Prediction upsamples the code and applies the probe; because both are affine (and the bilinear
weights sum to one) this equals upsampling the logits, which is what is computed.

The probe is supervised, but it is an *evaluation* head: its gradients never reach the features
it reads (STEGO issues #20, #89).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stego_probe.codes import as_code_tensor, check_size, to_numpy, upsample
from stego_probe.labels import IGNORE, IGNORE_VALUES, check_labels
from stego_probe.probes.cluster_lookup import DEFAULT_BATCH_SIZE, DEFAULT_STEPS, MinibatchProbe
from stego_probe.projections.base import StreamingMoments, guard_scale

#: Input standardisation modes of :class:`LinearProbe`: ``"train"`` (default) z-scores the codes
#: with training statistics; ``"none"`` is the reference (raw codes).
STANDARDIZE_MODES = ("train", "none")
#: Images (image layout) or tokens (token layout) per chunk when accumulating statistics.
_STATS_CHUNK_IMAGES = 64
_STATS_CHUNK_TOKENS = 1 << 18


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
            if part.ndim == 4:
                part = part.permute(0, 2, 3, 1).reshape(-1, part.shape[1])
            moments.update(part)
    if moments.n == 0:
        raise ValueError("codes: expected at least one code to compute statistics from")
    mean = moments.mean()
    std = guard_scale(np.sqrt(moments.variance()), mean, where="linear probe input", warn=False)
    return mean, std


def linear_probe_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over valid pixels, logits upsampled to the label size if needed.

    Args:
        logits: ``(B, K, h, w)`` or ``(M, K)`` float tensor.
        labels: ``(B, H, W)`` or ``(M,)`` integer tensor; values outside ``[0, K)`` are ignored
            (the rule of :func:`stego_probe.labels.valid_mask`). When ``(H, W) != (h, w)`` the
            logits are bilinearly upsampled (``align_corners=False``) to ``(H, W)`` first.

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
            logits = F.interpolate(
                logits, size=tuple(labels.shape[1:]), mode="bilinear", align_corners=False
            )
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


class LinearProbe(MinibatchProbe):
    """Supervised linear probe: ``Conv1x1(D -> K)`` with bias, Adam, cross-entropy.

    The probe is fitted on z-scored codes by default (``standardize="train"``; see the module
    docstring): its accuracy does not depend on a per-channel rescaling of the codes.

    Args:
        n_classes: number of classes ``K``.
        lr: Adam learning rate (reference: 5e-3).
        steps: number of mini-batches in :meth:`fit`.
        batch_size: items per mini-batch (images for image-layout codes, tokens for ``(M, D)``).
        random_state: seed of the (PyTorch default) initialisation and of the mini-batch stream.
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
        loss_history_: training loss of every step.
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
    # files written before input standardisation existed hold a raw-input probe
    _legacy_params = {"standardize": "none"}
    # saved so that a loaded probe still knows whether it saw labelled pixels (check_labelled)
    _state_attrs = ("n_labelled_",)

    def __init__(
        self,
        n_classes: int,
        *,
        lr: float = 5e-3,
        steps: int = DEFAULT_STEPS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        random_state: int = 0,
        label_res=None,
        device: str = "cpu",
        standardize: str = "train",
    ) -> None:
        self.n_classes = n_classes
        self.lr = lr
        self.steps = steps
        self.batch_size = batch_size
        self.random_state = random_state
        self.label_res = label_res
        self.device = device
        self.standardize = standardize

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
        for attr in ("mean_", "scale_", "_scaler_t"):
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
        """One Adam step on one mini-batch (see :meth:`MinibatchProbe.partial_fit`).

        The labelled pixels seen so far are counted in ``n_labelled_`` (a batch without any is
        a step with zero loss); :meth:`check_labelled` refuses a probe that saw none.

        Returns:
            self
        """
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
