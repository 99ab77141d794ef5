"""The STEGO segmentation head's network (PROTOCOL §3.1), a plain ``nn.Module``.

The estimator that trains it on a feature store is :class:`~stego_probe.projections.stego.StegoHead`
(``head.py``); this module is only the network.

``s = W1 δ1(f) + W3 ReLU(W2 δ2(f))`` with 1x1 convolutions, and the teacher features
``f_t = δ3(f)`` that enter the feature correlation of the loss. The three ``Dropout2d`` masks are
drawn independently on every call in train mode (one module applied three times, as in the
reference) and are all off in eval mode.

The submodule names mirror the reference (``cluster1.0``, ``cluster2.0``, ``cluster2.2``) so a
released checkpoint's ``net.cluster*`` keys map onto this module by dropping the ``net.`` prefix.
"""

from __future__ import annotations

import torch
from torch import nn

from stego_probe.projections.stego.presets import PROJECTION_TYPES


class SegmentationHead(nn.Module):
    """STEGO head: features (B, C, h, w) -> (teacher features (B, C, h, w), code (B, D, h, w)).

    Args:
        in_dim: backbone width ``C``.
        dim: code width ``D``.
        projection_type: ``"nonlinear"`` (linear branch + 1x1 MLP branch, the paper's setting) or
            ``"linear"`` (first branch only).
        head_dropout: ``Dropout2d`` probability of the masks δ1, δ2 on the head input (and of δ3).
        teacher_dropout: if True the returned teacher features are ``δ3(f)``; otherwise ``f``.

    All convolutions have a bias and PyTorch's default initialisation.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        projection_type: str = "nonlinear",
        head_dropout: float = 0.1,
        teacher_dropout: bool = True,
    ) -> None:
        super().__init__()
        if projection_type not in PROJECTION_TYPES:
            raise ValueError(
                f"projection_type must be one of {PROJECTION_TYPES}, got {projection_type!r} "
                "(the DINO-only baseline is stego_probe.projections.Identity)"
            )
        if in_dim < 1 or dim < 1:
            raise ValueError(f"in_dim and dim must be >= 1, got in_dim={in_dim}, dim={dim}")
        if not 0.0 <= head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {head_dropout}")
        self.in_dim, self.dim = int(in_dim), int(dim)
        self.projection_type = projection_type
        self.teacher_dropout = bool(teacher_dropout)
        # One module used three times: each call draws a fresh, independent channel mask.
        self.dropout = nn.Dropout2d(p=head_dropout)
        self.cluster1 = nn.Sequential(nn.Conv2d(in_dim, dim, 1))
        if projection_type == "nonlinear":
            self.cluster2 = nn.Sequential(
                nn.Conv2d(in_dim, in_dim, 1), nn.ReLU(), nn.Conv2d(in_dim, dim, 1)
            )

    def code(self, f: torch.Tensor) -> torch.Tensor:
        """Code only: (B, C, h, w) float -> (B, D, h, w); dropout iff in train mode."""
        if f.ndim != 4 or f.shape[1] != self.in_dim:
            raise ValueError(f"expected features (B, {self.in_dim}, h, w), got {tuple(f.shape)}")
        s = self.cluster1(self.dropout(f))
        if self.projection_type == "nonlinear":
            s = s + self.cluster2(self.dropout(f))
        return s

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) -> ``(f_t, s)``: teacher features (B, C, h, w) and code (B, D, h, w)."""
        s = self.code(f)
        f_t = self.dropout(f) if self.teacher_dropout else f
        return f_t, s
