"""The linear probe (PROTOCOL §4.3): a 1x1 convolution ``D -> K`` with bias on detached codes.

Training follows the reference (§3.4 step 4): logits are computed at token resolution and
bilinearly upsampled (``align_corners=False``) to the label resolution, then the mean
cross-entropy over valid pixels (labels in ``[0, K)``, see :mod:`stego_probe.labels`) is
minimised with Adam (lr 5e-3). When the labels are given on the token grid the loss is computed
there. Token-layout codes ``(M, D)`` with labels ``(M,)`` give plain softmax regression.

Prediction upsamples the code and applies the probe; because both are linear (and the bilinear
weights sum to one) this equals upsampling the logits, which is what is computed.

The probe is supervised, but it is an *evaluation* head: its gradients never reach the features
it reads (STEGO issues #20, #89).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stego_probe.labels import IGNORE, check_labels
from stego_probe.probes._codes import to_numpy
from stego_probe.probes.cluster_lookup import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_STEPS,
    MinibatchProbe,
    _check_size,
    as_code_tensor,
    upsample,
)

#: Raw label values accepted as "ignore" besides -1 (the 255 of many label PNGs).
IGNORE_VALUES = (IGNORE, 255)


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

    Attributes:
        coef_: ``(K, D)`` float32 weights; ``intercept_``: ``(K,)`` float32 biases.
        params_: ``{"weight": Parameter (K, D), "bias": Parameter (K,)}``.
        loss_history_: training loss of every step.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 3, 300)
        >>> x = (np.eye(3)[y] * 4 + rng.normal(0, 0.3, (300, 3))).astype(np.float32)
        >>> probe = LinearProbe(3, steps=300, batch_size=64).fit(x, y)
        >>> float((probe.predict(x) == y).mean())
        1.0
    """

    _requires_labels = True

    def __init__(
        self,
        n_classes: int,
        lr: float = 5e-3,
        steps: int = DEFAULT_STEPS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        random_state: int = 0,
        label_res=None,
        device: str = "cpu",
    ) -> None:
        self.n_classes = n_classes
        self.lr = lr
        self.steps = steps
        self.batch_size = batch_size
        self.random_state = random_state
        self.label_res = label_res
        self.device = device

    # -- training ------------------------------------------------------------------------------
    def _init_params(self, n_features: int) -> None:
        k = int(self.n_classes)
        if k < 1:
            raise ValueError(f"n_classes: expected a positive integer, got {self.n_classes!r}")
        # PyTorch's default Conv2d initialisation, drawn from a private seeded RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.random_state))
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

    def _logits(self, codes: torch.Tensor) -> torch.Tensor:
        w, b = self.params_["weight"], self.params_["bias"]
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
        return self.params_["weight"].detach().cpu().numpy().copy()

    @property
    def intercept_(self) -> np.ndarray:
        self._check_fitted()
        return self.params_["bias"].detach().cpu().numpy().copy()

    def decision_function(self, codes, size=None) -> np.ndarray:
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
        size = _check_size(size, x)
        with torch.no_grad():
            return torch.cat([upsample(self._logits(c), size).cpu() for c in self._chunks(x)])

    def predict(self, codes, size=None) -> np.ndarray:
        """Class ids: argmax of the logits (code upsampled to ``size`` first).

        Returns:
            int64 ``(N, H, W)`` (or ``(N, h, w)``, ``(M,)``) in ``[0, K)``.
        """
        return self._decision(codes, size).argmax(dim=1).numpy()

    def log_probs(self, codes, size=None) -> np.ndarray:
        """``log_softmax`` of the logits over classes (the CRF input).

        Returns:
            float32 ``(N, K, H, W)`` (or ``(N, K, h, w)``, ``(M, K)``).
        """
        return torch.log_softmax(self._decision(codes, size), dim=1).numpy()
