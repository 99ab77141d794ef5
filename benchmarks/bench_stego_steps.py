"""Benchmark: STEGO training steps/s with each sampled grid normalised once vs. once per pair.

On the demo's world (synthetic scenes, descriptor backbone, 64 px: an 8x8 grid of 64-d tokens,
200 training images, the ``synthetic`` STEGO preset) :func:`stego_probe.projections.stego.
train_stego` runs twice from the same seed: with the shipped :class:`CorrespondenceLoss`
(every sampled feature / code grid normalised once per step, shared by the self, KNN and the
``neg_samples`` negative pairs) and with :class:`OldLoss`, a copy of the previous ``__call__``
that normalised both grids inside every :func:`pair_loss` call (the anchors' grids
``2 + 1 + neg_samples`` = 8 times per step). It prints the ``F.normalize`` calls per step, the
steps/s of both, their ratio, and the largest difference of the per-step losses (the two
compute the same numbers; only the float summation order of the gradients differs).

Threads follow the shipped policy (:func:`stego_probe.threads.limit` with ``"auto"`` and the
store's workload); nothing is set by hand. Environment variables: ``STEGO_BENCH_STEPS`` [300,
the preset's], ``STEGO_BENCH_REPEAT`` [2, best of]. Run::

    python benchmarks/bench_stego_steps.py
"""

from __future__ import annotations

import os
import tempfile
import time

import torch
import torch.nn.functional as F

import stego_probe.projections.stego.train as train_mod
from stego_probe.backbones import get_backbone
from stego_probe.data import get_dataset
from stego_probe.extract import extract
from stego_probe.projections.stego import CorrespondenceLoss, compute_knns, get_preset, train_stego
from stego_probe.projections.stego.loss import derangement, pair_loss, sample, super_perm
from stego_probe.projections.stego.train import knn_table_size
from stego_probe.store import preloaded
from stego_probe.threads import get_threads, limit, store_workload


class OldLoss(CorrespondenceLoss):
    """The previous ``CorrespondenceLoss.__call__`` (grids normalised inside every pair term)."""

    def __call__(self, f, s, f_pos, s_pos, generator=None):
        b, dev, n = s.shape[0], s.device, self.feature_samples
        u1 = (torch.rand(b, n, n, 2, generator=generator) * 2 - 1).to(dev, s.dtype)
        u2 = (torch.rand(b, n, n, 2, generator=generator) * 2 - 1).to(dev, s.dtype)
        fa, sa = sample(f, u1), sample(s, u1)
        pair = dict(pointwise=self.pointwise, zero_clamp=self.zero_clamp, stabilize=self.stabilize)
        l_self, cd_self = pair_loss(fa, fa, sa, sa, self.pos_intra_shift, **pair)
        l_knn, cd_knn = pair_loss(
            fa, sample(f_pos, u2), sa, sample(s_pos, u2), self.pos_inter_shift, **pair
        )
        index = derangement if self.neg_index == "derangement" else super_perm
        l_rand, cds = [], []
        for _ in range(self.neg_samples):
            p = index(b, dev, generator)
            loss, cd = pair_loss(
                fa, sample(f[p], u2), sa, sample(s[p], u2), self.neg_inter_shift, **pair
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


def run(store, cfg, n_classes, loss_cls, knn):
    """(seconds, history) of one ``train_stego`` call with ``loss_cls`` as the loss."""
    shipped = train_mod.CorrespondenceLoss
    train_mod.CorrespondenceLoss = loss_cls
    try:
        t0 = time.perf_counter()
        out = train_stego(store, cfg, n_classes=n_classes, knn=knn, progress=False)
        return time.perf_counter() - t0, out["history"]
    finally:
        train_mod.CorrespondenceLoss = shipped


def normalize_calls(store, cfg, n_classes, loss_cls, knn) -> float:
    """``F.normalize`` calls per step of ``loss_cls`` (5 steps, counted)."""
    calls = [0]
    real = F.normalize

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    F.normalize = counted
    try:
        run(store, {**cfg, "steps": 5}, n_classes, loss_cls, knn)
    finally:
        F.normalize = real
    return calls[0] / 5


def main() -> None:
    steps = int(os.environ.get("STEGO_BENCH_STEPS", 300))
    repeat = int(os.environ.get("STEGO_BENCH_REPEAT", 2))
    with tempfile.TemporaryDirectory() as tmp:
        ds = get_dataset("synthetic", split="train", n_images=200)
        disk = extract(ds, get_backbone("descriptor"), f"{tmp}/train", res=64, progress=False)
        store = preloaded(disk, 2**30)  # as train_stego does: the timing is the step math
        n_classes = int(store.n_classes)
        cfg = {**get_preset("synthetic").to_dict(), "steps": steps}
        with limit("auto", store_workload(disk)) as n_threads:
            print(
                f"store {store.n_images} x {tuple(store.grid)} x {store.dim}; preset synthetic "
                f"(S={cfg['feature_samples']}, neg_samples={cfg['neg_samples']}, "
                f"B={cfg['batch_size']}, D={cfg['dim']}); {steps} steps; threads auto -> "
                f"{n_threads} ({get_threads()})"
            )
            knn = compute_knns(store, knn_table_size(cfg, store.n_images), progress=False)
            calls = {
                name: normalize_calls(store, cfg, n_classes, cls, knn)
                for name, cls in (("old", OldLoss), ("new", CorrespondenceLoss))
            }
            times = {"old": [], "new": []}
            hist = {}
            for _ in range(repeat):
                for name, cls in (("old", OldLoss), ("new", CorrespondenceLoss)):
                    seconds, hist[name] = run(store, cfg, n_classes, cls, knn)
                    times[name].append(seconds)
    old, new = min(times["old"]), min(times["new"])
    keys = [k for k in hist["old"][0] if k.startswith("loss")]
    diff = max(
        abs(a[k] - b[k]) for a, b in zip(hist["old"], hist["new"], strict=True) for k in keys
    )
    first = max(abs(hist["old"][0][k] - hist["new"][0][k]) for k in keys)
    print(f"F.normalize calls per step: old {calls['old']:.0f}, new {calls['new']:.0f}")
    print(f"old (normalise per pair): {steps / old:8.1f} steps/s  ({old:.2f} s)")
    print(f"new (normalise once)    : {steps / new:8.1f} steps/s  ({new:.2f} s)")
    print(f"speed-up new / old: {old / new:.2f}x")
    print(f"max |loss difference|: step 1 {first:.2e}, all {steps} steps {diff:.2e}")


if __name__ == "__main__":
    main()
