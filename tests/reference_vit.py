"""An independent, minimal forward pass of the original DINO ViT (tests only).

Written from the math of ``facebookresearch/dino:vision_transformer.py`` (and, for the register
variants, DINOv2's token layout), with no timm code: convolutional patch embedding, CLS token,
position embedding resampled with ``interpolate_pos_encoding`` (bicubic,
``scale_factor=((h+0.1)/sqrt(N), (w+0.1)/sqrt(N))``, ``align_corners=False``), pre-norm blocks
with multi-head qkv self-attention and a GELU MLP (optionally DINOv2 layer scale), final
LayerNorm. It reads the official checkpoint key layout and computes in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_official_state_dict(
    *,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    grid: int,
    mlp_ratio: int = 4,
    n_registers: int = 0,
    dinov2: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random float32 weights in the official DINO (or DINOv2 with ``dinov2=True``) layout.

    Magnitudes are chosen so that every part of the network (notably the position embedding)
    visibly affects the output. DINO layout: ``cls_token, pos_embed (1, 1 + grid**2, C),
    patch_embed.proj.*, blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*,
    norm.*``; DINOv2 adds ``mask_token``, ``blocks.i.ls{1,2}.gamma`` and ``register_tokens``.
    """
    assert embed_dim % num_heads == 0
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0, mean=0.0):
        return mean + std * torch.randn(*shape, generator=g)

    c, hidden = embed_dim, embed_dim * mlp_ratio
    sd = {
        "cls_token": rnd(1, 1, c, std=0.5),
        "pos_embed": rnd(1, 1 + grid * grid, c, std=0.5),
        "patch_embed.proj.weight": rnd(c, 3, patch_size, patch_size, std=1.0 / patch_size),
        "patch_embed.proj.bias": rnd(c, std=0.1),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update(
            {
                b + "norm1.weight": rnd(c, std=0.1, mean=1.0),
                b + "norm1.bias": rnd(c, std=0.1),
                b + "attn.qkv.weight": rnd(3 * c, c, std=1.0 / math.sqrt(c)),
                b + "attn.qkv.bias": rnd(3 * c, std=0.1),
                b + "attn.proj.weight": rnd(c, c, std=1.0 / math.sqrt(c)),
                b + "attn.proj.bias": rnd(c, std=0.1),
                b + "norm2.weight": rnd(c, std=0.1, mean=1.0),
                b + "norm2.bias": rnd(c, std=0.1),
                b + "mlp.fc1.weight": rnd(hidden, c, std=1.0 / math.sqrt(c)),
                b + "mlp.fc1.bias": rnd(hidden, std=0.1),
                b + "mlp.fc2.weight": rnd(c, hidden, std=1.0 / math.sqrt(hidden)),
                b + "mlp.fc2.bias": rnd(c, std=0.1),
            }
        )
        if dinov2:
            sd[b + "ls1.gamma"] = rnd(c, std=0.1, mean=0.5)
            sd[b + "ls2.gamma"] = rnd(c, std=0.1, mean=0.5)
    sd["norm.weight"] = rnd(c, std=0.1, mean=1.0)
    sd["norm.bias"] = rnd(c, std=0.1)
    if dinov2:
        sd["mask_token"] = torch.zeros(1, c)
        if n_registers:
            sd["register_tokens"] = rnd(1, n_registers, c, std=0.5)
    return sd


def _layer_norm(x, weight, bias, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def interpolate_pos_encoding(pos_embed: torch.Tensor, h: int, w: int, H: int, W: int):
    """DINO's formula: (1, 1 + N, C) -> (1, 1 + h*w, C) for an HxW image with an h x w grid."""
    n = pos_embed.shape[1] - 1
    if h * w == n and H == W:
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    side = int(math.sqrt(n))
    dim = pos_embed.shape[-1]
    grid = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    h0, w0 = h + 0.1, w + 0.1
    grid = F.interpolate(grid, scale_factor=(h0 / math.sqrt(n), w0 / math.sqrt(n)), mode="bicubic")
    assert grid.shape[-2:] == (h, w)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)
    return torch.cat([cls_pos, patch_pos], dim=1)


@torch.no_grad()
def reference_features(
    state_dict: dict[str, torch.Tensor],
    images: torch.Tensor,
    *,
    patch_size: int,
    num_heads: int,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The STEGO feature of the original DINO / DINOv2 ViT, computed in float64.

    Args:
        state_dict: official-layout weights (see :func:`random_official_state_dict`).
        images: (B, 3, H, W) float, H and W divisible by ``patch_size``.

    Returns:
        (B, C, H/p, W/p) float64: last block, final LayerNorm, CLS (and registers) dropped.
    """
    sd = {k: v.double() for k, v in state_dict.items()}
    x = images.double()
    bsz, _, H, W = x.shape
    h, w = H // patch_size, W // patch_size
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch_size)
    c = x.shape[1]
    x = x.flatten(2).transpose(1, 2)  # (B, h*w, C), row-major
    x = torch.cat([sd["cls_token"].expand(bsz, -1, -1), x], dim=1)
    x = x + interpolate_pos_encoding(sd["pos_embed"], h, w, H, W)
    n_reg = 0
    if "register_tokens" in sd:
        reg = sd["register_tokens"].expand(bsz, -1, -1)
        n_reg = reg.shape[1]
        x = torch.cat([x[:, :1], reg, x[:, 1:]], dim=1)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    d = c // num_heads
    for i in range(depth):
        p = f"blocks.{i}."
        y = _layer_norm(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        qkv = y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]
        qkv = qkv.reshape(bsz, -1, 3, num_heads, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, T, d)
        attn = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(d), dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(bsz, -1, c)
        y = y @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        x = x + y * sd.get(p + "ls1.gamma", 1.0)
        y = _layer_norm(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        y = _gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        y = y @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
        x = x + y * sd.get(p + "ls2.gamma", 1.0)
    x = _layer_norm(x, sd["norm.weight"], sd["norm.bias"], eps)
    patches = x[:, 1 + n_reg :]
    return patches.reshape(bsz, h, w, c).permute(0, 3, 1, 2)
