"""STEGO's contrastive correlation loss (PROTOCOL §3.2), short and in one place.

Shapes: teacher features ``f`` (B, C, h, w), codes ``s`` (B, D, h, w); ``S`` = feature_samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stego_probe.projections.stego.presets import NEG_INDEX, StegoConfig

_P = StegoConfig()  # the defaults: shared settings with Potsdam's loss settings


def sample(t: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``t`` (B, C, h, w) at ``coords`` (B, S, S, 2) in [-1, 1] -> (B, C, S, S).

    ``coords[..., 0]`` is x (width), ``coords[..., 1]`` is y (height), ``align_corners=True`` so
    ±1 hit the centres of the corner tokens. The two grid axes are swapped before sampling, as
    in the reference (Q11): the value at ``coords[b, i, j]`` lands at output position ``(j, i)``.
    """
    return F.grid_sample(
        t, coords.permute(0, 2, 1, 3), mode="bilinear", padding_mode="border", align_corners=True
    )


def super_perm(n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Reference negative index (parity, Q9): ``randperm(n)`` with each fixed point i -> i+1 mod n.

    Not a permutation in general (duplicates occur) and ``[0]`` for ``n = 1``. Returns (n,) int64.
    """
    perm = torch.randperm(n, generator=generator).to(device)
    fixed = perm == torch.arange(n, device=device)
    return (perm + fixed.long()) % n


def derangement(n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniformly random derangement of ``range(n)`` (no fixed points), (n,) int64; needs n >= 2.

    Rejection sampling of uniform permutations: each try succeeds with probability ~1/e, and the
    accepted permutation is uniform over derangements.
    """
    if n < 2:
        raise ValueError(
            f"a derangement needs a batch of at least 2 images, got {n}; use drop_last=True or "
            "neg_index='super_perm' (reference behaviour: the anchor becomes its own negative)"
        )
    ar = torch.arange(n)
    while True:
        perm = torch.randperm(n, generator=generator)
        if not (perm == ar).any():
            return perm.to(device)


def _unit(t: torch.Tensor) -> torch.Tensor:
    """``t`` (B, C, S, S) with unit-L2 channel vectors (eps 1e-10, as the reference)."""
    return F.normalize(t, dim=1, eps=1e-10)


def pair_loss(
    f1: torch.Tensor,
    f2: torch.Tensor,
    s1: torch.Tensor,
    s2: torch.Tensor,
    shift: float,
    pointwise: bool = True,
    zero_clamp: bool = True,
    stabilize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair term ``L((f1, s1), (f2, s2); b)`` of sampled grids, all (B, ·, S, S).

    Returns the scalar loss ``mean(-clamp(Σ) * (F' - shift))`` and the code correlation
    ``Σ`` (B, S, S, S, S) (for the correlation histograms of PROTOCOL §9 item 7).
    """
    return _normalized_pair_loss(
        _unit(f1), _unit(f2), _unit(s1), _unit(s2), shift, pointwise, zero_clamp, stabilize
    )


def _normalized_pair_loss(
    f1: torch.Tensor,
    f2: torch.Tensor,
    s1: torch.Tensor,
    s2: torch.Tensor,
    shift: float,
    pointwise: bool,
    zero_clamp: bool,
    stabilize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pair_loss` of grids already normalised by :func:`_unit` (each grid of a step is
    normalised once and shared by the self, KNN and negative pairs)."""
    with torch.no_grad():  # the feature correlation is the (fixed) teacher signal
        fd = torch.einsum("nchw,ncij->nhwij", f1, f2)
        if pointwise:
            # Centre each query point's row over the partner's points, keep the global mean level.
            old_mean = fd.mean()
            fd = fd - fd.mean(dim=(3, 4), keepdim=True)
            fd = fd - fd.mean() + old_mean
    cd = torch.einsum("nchw,ncij->nhwij", s1, s2)
    # zero_clamp: below 0 the code correlation gets no gradient, so negatives stop at orthogonal.
    lo = 0.0 if zero_clamp else -9999.0
    cd_c = cd.clamp(lo, 0.8) if stabilize else cd.clamp(lo)
    return -(cd_c * (fd - shift)).mean(), cd


@dataclass
class CorrespondenceLoss:
    """``L_corr = w (λ_knn L_knn + λ_self L_self + λ_rand L_rand)`` of PROTOCOL §3.2.

    Field names follow the reference config (``pos_intra`` = self, ``pos_inter`` = KNN,
    ``neg_inter`` = random negatives from the same batch); defaults are the ``potsdam3`` preset.
    ``neg_index``: ``"derangement"`` (default) or ``"super_perm"`` (reference parity, Q9).
    """

    pos_intra_weight: float = _P.pos_intra_weight
    pos_inter_weight: float = _P.pos_inter_weight
    neg_inter_weight: float = _P.neg_inter_weight
    pos_intra_shift: float = _P.pos_intra_shift
    pos_inter_shift: float = _P.pos_inter_shift
    neg_inter_shift: float = _P.neg_inter_shift
    pointwise: bool = _P.pointwise
    zero_clamp: bool = _P.zero_clamp
    stabilize: bool = _P.stabilize
    feature_samples: int = _P.feature_samples
    neg_samples: int = _P.neg_samples
    neg_index: str = _P.neg_index
    correspondence_weight: float = _P.correspondence_weight

    def __post_init__(self) -> None:
        if self.neg_index not in NEG_INDEX:
            raise ValueError(f"neg_index must be one of {NEG_INDEX}, got {self.neg_index!r}")

    def __call__(
        self,
        f: torch.Tensor,
        s: torch.Tensor,
        f_pos: torch.Tensor,
        s_pos: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """Anchors ``(f, s)`` and KNN positives ``(f_pos, s_pos)``: (B, C, h, w), (B, D, h, w).

        Returns the scalar loss and a dict with the three unweighted terms (``self``, ``knn``,
        ``rand``, scalar tensors) and their code correlations (``cd_self``, ``cd_knn``,
        ``cd_rand``). ``generator`` (CPU) seeds the sampling grids and the negative indices.
        """
        b, dev, n = s.shape[0], s.device, self.feature_samples
        # Drawn in the reference's order: anchors' grid first, then the partner grid.
        u1 = (torch.rand(b, n, n, 2, generator=generator) * 2 - 1).to(dev, s.dtype)
        u2 = (torch.rand(b, n, n, 2, generator=generator) * 2 - 1).to(dev, s.dtype)
        # Every sampled grid is normalised once: the anchors' grids serve all 2 + neg_samples
        # pairs (the teacher grids without gradient, as the teacher correlation).
        with torch.no_grad():
            fa = _unit(sample(f, u1))
            fk = _unit(sample(f_pos, u2))
        sa = _unit(sample(s, u1))
        pair = dict(pointwise=self.pointwise, zero_clamp=self.zero_clamp, stabilize=self.stabilize)
        l_self, cd_self = _normalized_pair_loss(fa, fa, sa, sa, self.pos_intra_shift, **pair)
        l_knn, cd_knn = _normalized_pair_loss(
            fa, fk, sa, _unit(sample(s_pos, u2)), self.pos_inter_shift, **pair
        )
        # Negatives: other images of the same batch, no extra forward pass. All draws have the
        # same size, so the mean of the concatenation is the mean of the per-draw means.
        index = derangement if self.neg_index == "derangement" else super_perm
        l_rand, cds = [], []
        for _ in range(self.neg_samples):
            p = index(b, dev, generator)
            with torch.no_grad():
                fn = _unit(sample(f[p], u2))
            loss, cd = _normalized_pair_loss(
                fa, fn, sa, _unit(sample(s[p], u2)), self.neg_inter_shift, **pair
            )
            l_rand.append(loss)
            cds.append(cd)
        l_rand = torch.stack(l_rand).mean()
        total = self.correspondence_weight * (
            self.pos_inter_weight * l_knn
            + self.pos_intra_weight * l_self
            + self.neg_inter_weight * l_rand
        )
        parts = dict(self=l_self, knn=l_knn, rand=l_rand)
        parts.update(cd_self=cd_self, cd_knn=cd_knn, cd_rand=torch.cat(cds))
        return total, parts
