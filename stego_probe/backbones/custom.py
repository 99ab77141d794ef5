"""Plug-in backbones from plain callables: :func:`register_extractor` and :class:`FunctionBackbone`.

A user function ``fn(images (B, 3, H, W)) -> features (B, C, H/p, W/p)`` becomes a registry
entry; its output shape is validated on every call (cheap), so a wrong ``patch_size`` /
``embed_dim`` fails on the first batch with a message that says what was expected.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from stego_probe.backbones.base import Backbone
from stego_probe.backbones.registry import register_backbone
from stego_probe.data.transforms import IMAGENET_MEAN, IMAGENET_STD


class FunctionBackbone(Backbone):
    """Wrap ``fn: (B, 3, H, W) -> (B, C, H/p, W/p)`` as a :class:`Backbone`.

    If ``fn`` is a ``torch.nn.Module`` it is registered as a submodule, so ``.to(device)``
    moves it and ``.eval()`` reaches it.

    Args:
        name: registry / provenance name.
        fn: the extractor; receives normalised float images on the backbone's device.
        patch_size: ``p``; inputs must be divisible by it, outputs are ``H/p x W/p``.
        embed_dim: ``C``.
        mean, std: normalisation the images are given with.
        provenance: extra provenance entries (e.g. a weights file name / sha256).
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[torch.Tensor], torch.Tensor],
        patch_size: int,
        embed_dim: int,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        provenance: dict | None = None,
    ) -> None:
        super().__init__()
        if not callable(fn):
            raise ValueError(f"extractor {name!r}: fn must be callable, got {type(fn).__name__}")
        if int(patch_size) < 1 or int(embed_dim) < 1:
            raise ValueError(
                f"extractor {name!r}: patch_size and embed_dim must be positive, got "
                f"{patch_size} and {embed_dim}"
            )
        if len(tuple(mean)) != 3 or len(tuple(std)) != 3:
            raise ValueError(f"extractor {name!r}: mean and std must have 3 entries")
        self.name = name
        self.fn = fn  # a Module becomes a submodule through nn.Module.__setattr__
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self._provenance = {"extractor": getattr(fn, "__qualname__", type(fn).__name__)}
        self._provenance.update(provenance or {})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/p, W/p), validated against ``embed_dim`` / ``patch_size``."""
        out = self.fn(images)
        b, _, hh, ww = images.shape
        want = (b, self.embed_dim, hh // self.patch_size, ww // self.patch_size)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"extractor {self.name!r}: for input {tuple(images.shape)} it returned {got}, "
                f"expected (B, C, H/p, W/p) = {want} with embed_dim={self.embed_dim}, "
                f"patch_size={self.patch_size}"
            )
        return out


def register_extractor(
    name: str,
    fn: Callable[[torch.Tensor], torch.Tensor],
    patch_size: int,
    embed_dim: int,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    *,
    overwrite: bool = False,
    notes: str = "",
) -> None:
    """Register a plain function as backbone ``name`` (then ``get_backbone(name)`` works).

    Args:
        name: registry name.
        fn: ``(B, 3, H, W) float -> (B, embed_dim, H/patch_size, W/patch_size)``.
        patch_size, embed_dim: the output geometry (checked on every call).
        mean, std: normalisation of the inputs (stored in feature-store provenance).
        overwrite: replace an existing entry.
        notes: shown by ``stego-probe backbones``.

    Examples:
        >>> import torch
        >>> from stego_probe.backbones import get_backbone
        >>> pool = torch.nn.AvgPool2d(4)
        >>> register_extractor("avgpool4", pool, patch_size=4, embed_dim=3, overwrite=True)
        >>> get_backbone("avgpool4")(torch.zeros(1, 3, 16, 8)).shape
        torch.Size([1, 3, 4, 2])
    """
    FunctionBackbone(name, fn, patch_size, embed_dim, mean, std)  # validate arguments now

    def factory(weights=None, pos_interp=None, **extra) -> Backbone:
        if weights is not None or extra:
            raise ValueError(
                f"extractor {name!r} takes no weights or options; got "
                f"{sorted(['weights'] * (weights is not None) + list(extra))}"
            )
        return FunctionBackbone(name, fn, patch_size, embed_dim, mean, std)

    register_backbone(
        name,
        factory,
        overwrite=overwrite,
        patch_size=int(patch_size),
        embed_dim=int(embed_dim),
        kind="extractor",
        notes=notes,
    )
