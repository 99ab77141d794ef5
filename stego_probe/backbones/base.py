"""The backbone interface: a frozen patch-token extractor."""

from __future__ import annotations

import torch

from stego_probe.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # re-export: public API


class Backbone(torch.nn.Module):
    """A frozen feature extractor from images to a patch-token grid.

    ``backbone(images)`` maps normalised images (B, 3, H, W) float, H and W divisible by
    ``patch_size``, to features (B, C, h, w) float32 with ``h = H / patch_size``,
    ``C = embed_dim``. It is always in eval mode and runs without gradients.

    Attributes:
        name: registry name.
        patch_size: ``p``.
        embed_dim: ``C``.
        mean, std: per-channel normalisation the images must be given with.
        provenance: dict with at least ``backbone`` (name), ``weights`` (file name or None),
            ``weights_sha256`` (or None), ``patch_size``, ``embed_dim`` and options such as
            ``pos_interp`` / ``flip_average``.
    """

    name: str = "backbone"
    patch_size: int = 16
    embed_dim: int = 0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __init__(self) -> None:
        super().__init__()
        self.flip_average = False
        self._provenance: dict = {}

    def features(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """(B, 3, H, W) -> (B, C, h, w); subclasses implement this (no flip averaging here)."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    @property
    def provenance(self) -> dict:
        return {
            "backbone": self.name,
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "mean": list(self.mean),
            "std": list(self.std),
            "flip_average": self.flip_average,
            "weights": None,
            "weights_sha256": None,
            **self._provenance,
        }

    def check_input(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"{self.name}: expected images (B, 3, H, W), got {tuple(images.shape)}"
            )
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"{self.name}: image size {h}x{w} is not divisible by patch size {self.patch_size}"
            )

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, C, H/p, W/p) float32 features."""
        self.check_input(images)
        self.eval()
        feats = self.features(images).float()
        if self.flip_average:
            feats = 0.5 * (feats + self.features(images.flip(-1)).float().flip(-1))
        return feats
