"""``descriptor``: a weight-free, offline, hand-crafted patch descriptor (classic baseline).

Per patch of ``p x p`` pixels (default ``p = 8``) it concatenates four groups, 64 channels:

========== ==== =============================================================================
group      dims content
========== ==== =============================================================================
colour     12   CIE Lab mean and std inside the patch, and over its 3x3-patch neighbourhood
layout      4   mean lightness of the four ``p/2`` sub-squares minus the patch mean (x4)
texture    40   8-bin gradient-orientation histograms of lightness at Gaussian scales
                sigma = 1, 2, 4 px (24), and of the 3x3-patch neighbourhood at sigma = 2, 4 (16)
energy      8   log gradient energy at sigma = 1, 2, 4; difference-of-Gaussian (1-2, 2-4, 4-8)
                band energies; chroma (a, b) gradient energy at sigma = 1, 2
========== ==== =============================================================================

Orientation histograms use magnitude-weighted linear binning over [0, pi) and are divided by
``(total magnitude + c)`` with a contrast constant ``c = 0.01`` (lightness in [0, 1]), so flat
or noisy patches give short vectors and edges/stripes long ones. Energies are mapped with
``log1p(e / c) / log1p(1 / c)``. Every constant is fixed (no statistics are learned), each group
is scaled so that its norm is at most about 1, and the output is deterministic.

Images arrive normalised with ``mean`` / ``std`` (ImageNet by default, like the ViTs) and are
un-normalised to RGB in [0, 1] first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from stego_probe.backbones.base import Backbone
from stego_probe.data.transforms import IMAGENET_MEAN, IMAGENET_STD

N_BINS = 8
CONTRAST = 0.01
HIST_SIGMAS = (1.0, 2.0, 4.0)
CONTEXT_SIGMAS = (2.0, 4.0)
DOG_PAIRS = ((1.0, 2.0), (2.0, 4.0), (4.0, 8.0))
CHROMA_SIGMAS = (1.0, 2.0)
EMBED_DIM = 12 + 4 + N_BINS * (len(HIST_SIGMAS) + len(CONTEXT_SIGMAS)) + 8

_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_WHITE = (0.95047, 1.0, 1.08883)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB (B, 3, H, W) in [0, 1] -> CIE Lab (B, 3, H, W), D65: L in [0, 100], a/b ~ [-110, 110]."""
    lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    xyz = torch.einsum("ij,bjhw->bihw", m, lin)
    xyz = xyz / torch.tensor(_WHITE, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    eps = (6 / 29) ** 3
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    return torch.cat([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def _gauss_kernel(sigma: float) -> torch.Tensor:
    radius = int(math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with replicate padding."""
    c, r = x.shape[1], kernel.numel() // 2
    kh = kernel.to(x).view(1, 1, 1, -1).expand(c, 1, 1, -1)
    kv = kernel.to(x).view(1, 1, -1, 1).expand(c, 1, -1, 1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), kh, groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), kv, groups=c)


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences of (B, C, H, W), replicate border -> (gx, gy) (B, C, H, W)."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (p[..., 1:-1, 2:] - p[..., 1:-1, :-2])
    gy = 0.5 * (p[..., 2:, 1:-1] - p[..., :-2, 1:-1])
    return gx, gy


def _log_energy(e: torch.Tensor) -> torch.Tensor:
    return torch.log1p(e / CONTRAST) / math.log1p(1 / CONTRAST)


def _neighbourhood(x: torch.Tensor) -> torch.Tensor:
    """Mean over the 3x3 patch neighbourhood of a (B, C, h, w) patch grid (borders: existing)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class DescriptorBackbone(Backbone):
    """Hand-crafted colour + texture patch descriptor, (B, 3, H, W) -> (B, 64, H/p, W/p).

    Args:
        patch_size: even patch side ``p`` >= 2 (default 8, like DINO ViT-S/8 / ViT-B/8).
        mean, std: normalisation the images are given with (default ImageNet).

    Examples:
        >>> import torch
        >>> bb = DescriptorBackbone(patch_size=8)
        >>> bb(torch.zeros(2, 3, 32, 48)).shape
        torch.Size([2, 64, 4, 6])
    """

    embed_dim = EMBED_DIM

    def __init__(self, patch_size: int = 8, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        super().__init__()
        patch_size = int(patch_size)
        if patch_size < 2 or patch_size % 2:
            raise ValueError(
                f"descriptor: patch_size must be an even integer >= 2, got {patch_size}"
            )
        self.name = "descriptor"
        self.patch_size = patch_size
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self._sigmas = sorted({s for pair in DOG_PAIRS for s in pair} | set(HIST_SIGMAS))
        for s in self._sigmas:
            self.register_buffer(f"_g{int(s)}", _gauss_kernel(s), persistent=False)
        self._provenance = {
            "weights": None,
            "weights_sha256": None,
            "descriptor": {
                "groups": {"colour": 12, "layout": 4, "texture": 40, "energy": 8},
                "hist_sigmas": list(HIST_SIGMAS),
                "context_sigmas": list(CONTEXT_SIGMAS),
                "dog_pairs": [list(p) for p in DOG_PAIRS],
                "chroma_sigmas": list(CHROMA_SIGMAS),
                "n_bins": N_BINS,
                "contrast": CONTRAST,
            },
        }

    def _kernel(self, sigma: float) -> torch.Tensor:
        return getattr(self, f"_g{int(sigma)}")

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.patch_size)

    def _orientation_hist(self, lum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) -> per-pixel binned gradient (B, 8, H, W) and magnitude (B, 1, H, W)."""
        gx, gy = _gradients(lum)
        mag = torch.sqrt(gx * gx + gy * gy)
        theta = torch.remainder(torch.atan2(gy, gx), math.pi)  # [0, pi)
        t = theta * (N_BINS / math.pi)
        k = torch.arange(N_BINS, dtype=lum.dtype, device=lum.device).view(1, -1, 1, 1)
        d = torch.abs(t - k)
        d = torch.minimum(d, N_BINS - d)
        return torch.relu(1 - d) * mag, mag

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, 64, H/p, W/p) float32 descriptors."""
        x = images.float() * self._std + self._mean
        lab = rgb_to_lab(x.clamp(0, 1))
        scale = torch.tensor([100.0, 110.0, 110.0], device=x.device).view(1, 3, 1, 1)
        lab = lab / scale  # L in [0, 1], a/b in about [-1, 1]
        lum = lab[:, :1]

        # colour: patch and neighbourhood mean / std
        m1, m2 = self._pool(lab), self._pool(lab * lab)
        std = torch.sqrt((m2 - m1 * m1).clamp_min(0))
        cm1, cm2 = _neighbourhood(m1), _neighbourhood(m2)
        cstd = torch.sqrt((cm2 - cm1 * cm1).clamp_min(0))
        colour = torch.cat([m1, 2 * std, cm1, 2 * cstd], dim=1) / 2.0

        # layout: sub-square lightness relative to the patch mean
        sub = F.pixel_unshuffle(F.avg_pool2d(lum, self.patch_size // 2), 2)  # (B, 4, h, w)
        layout = 4.0 * (sub - m1[:, :1]) / 2.0

        blurred = {s: _blur(lum, self._kernel(s)) for s in self._sigmas}
        hists, energies, context = [], [], []
        for s in HIST_SIGMAS:
            binned, mag = self._orientation_hist(blurred[s])
            hist = self._pool(binned)
            total = hist.sum(1, keepdim=True)
            hists.append(hist / (total + CONTRAST))
            energies.append(_log_energy(total))
            if s in CONTEXT_SIGMAS:
                chist = _neighbourhood(hist)
                context.append(chist / (chist.sum(1, keepdim=True) + CONTRAST))
        texture = torch.cat(hists + context, dim=1) / math.sqrt(len(hists) + len(context))
        for s1, s2 in DOG_PAIRS:
            energies.append(_log_energy(self._pool((blurred[s1] - blurred[s2]).abs())))
        ab = lab[:, 1:]
        for s in CHROMA_SIGMAS:
            gx, gy = _gradients(_blur(ab, self._kernel(s)))
            mag = torch.sqrt((gx * gx + gy * gy).sum(1, keepdim=True))
            energies.append(_log_energy(self._pool(mag)))
        energy = torch.cat(energies, dim=1) / math.sqrt(len(energies))
        return torch.cat([colour, layout, texture, energy], dim=1)
