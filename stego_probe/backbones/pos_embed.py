"""The reference position-embedding interpolation (PROTOCOL §1.3, quirk Q2).

The original DINO ViT (and DINOv2, whose released models use ``interpolate_offset=0.1`` and
``interpolate_antialias=False``) resamples the learned ``sqrt(N) x sqrt(N)`` grid of patch
position embeddings for an ``h x w`` token grid as follows:

* if ``h * w == N`` and ``h == w`` the embedding is used unchanged;
* otherwise it is resampled bicubically with ``scale_factor=((h + 0.1) / sqrt(N),
  (w + 0.1) / sqrt(N))``, ``align_corners=False`` and no antialiasing, so the source coordinate
  of output row ``y`` is ``(y + 0.5) * sqrt(N) / (h + 0.1) - 0.5``;
* the prefix (CLS) position embeddings are kept unchanged.

timm's dynamic resampling passes ``size=(h, w)`` with ``antialias=True`` instead, which gives
slightly different features. :func:`install_reference_pos_embed` replaces a timm
``VisionTransformer``'s ``_pos_embed`` with the reference formula.
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F

OFFSET = 0.1


def reference_resample_patch_pos(patch_pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample patch position embeddings with the reference formula.

    Args:
        patch_pos: (1, N, C) float, the stored patch embeddings of a square ``sqrt(N)`` grid,
            row-major.
        grid: target token grid ``(h, w)``.

    Returns:
        (1, h * w, C) in the dtype of ``patch_pos`` (computed in float32); ``patch_pos`` itself
        when ``h * w == N`` and ``h == w``.

    Raises:
        ValueError: ``N`` is not a perfect square or ``patch_pos`` is not (1, N, C).
    """
    if patch_pos.ndim != 3 or patch_pos.shape[0] != 1:
        raise ValueError(f"patch_pos: expected (1, N, C), got {tuple(patch_pos.shape)}")
    h, w = int(grid[0]), int(grid[1])
    n, c = patch_pos.shape[1], patch_pos.shape[2]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"patch_pos: N={n} patch positions do not form a square grid")
    if h * w == n and h == w:
        return patch_pos
    sqrt_n = math.sqrt(n)
    src = patch_pos.float().reshape(1, side, side, c).permute(0, 3, 1, 2)
    out = F.interpolate(
        src,
        scale_factor=((h + OFFSET) / sqrt_n, (w + OFFSET) / sqrt_n),
        mode="bicubic",
        align_corners=False,
    )
    if tuple(out.shape[-2:]) != (h, w):  # pragma: no cover - guarded by the +0.1 offset
        raise RuntimeError(f"reference interpolation gave {tuple(out.shape[-2:])}, want {(h, w)}")
    return out.permute(0, 2, 3, 1).reshape(1, h * w, c).to(patch_pos.dtype)


def reference_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix: int
) -> torch.Tensor:
    """Full position embedding for a token grid: prefix rows unchanged, patch rows resampled.

    Args:
        pos_embed: (1, num_prefix + N, C), the model's stored position embedding.
        grid: target token grid ``(h, w)``.
        num_prefix: number of leading prefix rows (1 for DINO's CLS; 0 for timm models built
            with ``no_embed_class=True`` such as the DINOv2 register variants).

    Returns:
        (1, num_prefix + h * w, C).
    """
    prefix, patch = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    patch = reference_resample_patch_pos(patch, grid)
    return torch.cat([prefix, patch], dim=1) if num_prefix else patch


def _reference_pos_embed_forward(self, x: torch.Tensor) -> torch.Tensor:
    """Drop-in for ``timm VisionTransformer._pos_embed`` using :func:`reference_pos_embed`.

    ``x`` is (B, h, w, C) when the model has ``dynamic_img_size`` (else (B, h*w, C) at the
    fixed grid); returns (B, num_prefix_tokens + h*w, C).
    """
    if x.ndim == 4:
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
    else:
        b, _, c = x.shape
        h, w = self.patch_embed.grid_size
    prefix = []
    if self.cls_token is not None:
        prefix.append(self.cls_token.expand(b, -1, -1))
    if self.reg_token is not None:
        prefix.append(self.reg_token.expand(b, -1, -1))
    num_pos_prefix = 0 if self.no_embed_class else self.num_prefix_tokens
    pos = reference_pos_embed(self.pos_embed, (h, w), num_pos_prefix)
    if self.no_embed_class:
        x = x + pos
        if prefix:
            x = torch.cat(prefix + [x], dim=1)
    else:
        if prefix:
            x = torch.cat(prefix + [x], dim=1)
        x = x + pos
    return self.pos_drop(x)


def supports_reference(model: torch.nn.Module) -> bool:
    """True if ``model`` is a timm ViT with a learned absolute position embedding."""
    needed = ("pos_embed", "cls_token", "reg_token", "no_embed_class", "num_prefix_tokens")
    return (
        all(hasattr(model, a) for a in needed)
        and callable(getattr(model, "_pos_embed", None))
        and isinstance(getattr(model, "pos_embed", None), torch.Tensor)
        and hasattr(model, "patch_embed")
    )


def install_reference_pos_embed(model: torch.nn.Module) -> torch.nn.Module:
    """Make a timm ``VisionTransformer`` use the reference interpolation (in place).

    Binds :func:`_reference_pos_embed_forward` as the instance's ``_pos_embed``; everything
    else in ``forward_features`` (patch embed, blocks, final norm) is timm's own code.

    Raises:
        ValueError: the model has no learned absolute position embedding in timm's layout.
    """
    if not supports_reference(model):
        raise ValueError(
            f"pos_interp='reference' needs a timm VisionTransformer with a learned absolute "
            f"position embedding; {type(model).__name__} has none (use pos_interp='timm')"
        )
    model._pos_embed = types.MethodType(_reference_pos_embed_forward, model)
    return model
