"""Benchmark: the linear probe's solvers (``lbfgs``, the default; ``tokens``) vs the
reference's Adam-7000 x 32.

On the demo's world (synthetic scenes, descriptor backbone, 64-d features; train / val stores
extracted here at 64 px, as the ``synthetic`` preset does) and three codes of the same
information (the raw features, a full-width PCA, a full-width Gaussian random projection, all
invertible linear maps of each other), :func:`stego_probe.evaluate.evaluate_stores` fits the
linear probe and scores it on val at pixel level (codes bilinearly upsampled to the labels),
with ``solver="lbfgs"`` (the default: L-BFGS on the exact pixel objective, one pass over the
store per evaluation), ``solver="tokens"`` (L-BFGS on the token sample with each token's class
mass, in memory) and ``solver="adam"`` for ``STEPS x 32`` images (the reference: 7000 x 32). It
prints per code and solver: val mIoU, its difference to Adam, wall time of the whole
``evaluate_stores`` call (training and validation), the Adam time extrapolated to 7000 steps,
the speed-up over it, the L-BFGS iterations / passes; then the agreement of raw, PCA-64 and
RP-64 under each solver (a converged probe must score them alike), and the val mIoU of the
L-BFGS probe trained on a seeded half / quarter of the train images (``max_images``, the image
cap that bounds its cost on paper-scale stores). A second table times one Adam step of
the probe (store path) against a plain-torch loop on the same batches (the per-step overhead),
and ``upsample_matmul`` against ``F.interpolate`` (forward + backward).

Threads follow the shipped policy (``evaluate_stores(threads="auto")``, :mod:`stego_probe.
threads`); nothing is set by hand. Environment variables: ``STEGO_BENCH_STEPS`` Adam steps
[7000] (fewer: the Adam time is also extrapolated linearly to 7000), ``STEGO_BENCH_TRAIN`` /
``STEGO_BENCH_VAL`` images [200 / 50, the synthetic dataset's defaults]. Quick run::

    STEGO_BENCH_STEPS=700 python benchmarks/bench_linear_probe.py
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from stego_probe.backbones import get_backbone
from stego_probe.data import get_dataset
from stego_probe.evaluate import evaluate_stores
from stego_probe.extract import extract
from stego_probe.probes.cluster_lookup import minibatch_stream
from stego_probe.probes.linear import upsample_matmul
from stego_probe.projections import get_projection
from stego_probe.threads import get_threads, limit

REFERENCE_STEPS, BATCH = 7000, 32


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def stores(root: str, n_train: int, n_val: int):
    backbone = get_backbone("descriptor")
    out = []
    for split, n in (("train", n_train), ("val", n_val)):
        ds = get_dataset("synthetic", split=split, n_images=n)
        out.append(extract(ds, backbone, os.path.join(root, split), res=64, progress=False))
    return out


def run(train, val, projection, solver: str, steps: int, **linear):
    """(val mIoU, wall seconds, fitted probe) of one evaluate_stores call (linear probe;
    ``linear``: more probe settings, e.g. ``max_images``)."""
    t0 = time.perf_counter()
    frame, probes = evaluate_stores(
        train,
        val,
        probes="linear",
        projection=projection,
        steps=steps,
        train_batch_size=BATCH,
        probe_kwargs={"linear": {"solver": solver, **linear}},
        progress=False,
        return_probes=True,
    )
    dt = time.perf_counter() - t0
    return float(frame[frame.metric == "miou"]["value"].item()), dt, probes["linear"]


def plain_torch_adam(train, steps: int) -> float:
    """Seconds per step of a plain-torch Adam loop (1x1 conv, F.interpolate, cross-entropy) on
    the raw train codes, with the stream's batches (the floor of the probe's per-step cost)."""
    x = torch.from_numpy(
        np.ascontiguousarray(train.tokens(np.arange(train.n_images)).transpose(0, 3, 1, 2))
    ).float()
    y = torch.from_numpy(np.asarray(train.labels(np.arange(train.n_images)), dtype=np.int64))
    conv = torch.nn.Conv2d(x.shape[1], int(train.n_classes), 1)
    opt = torch.optim.Adam(conv.parameters(), lr=5e-3)
    t0 = time.perf_counter()
    for idx in minibatch_stream(len(x), BATCH, steps, 0):
        sel = torch.from_numpy(idx)
        logits = F.interpolate(conv(x[sel]), size=y.shape[1:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y[sel], ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def time_upsample(shape, size, reps: int = 20) -> tuple[float, float]:
    x = torch.randn(shape, requires_grad=True)
    out = []
    for fn in (
        lambda: F.interpolate(x, size=size, mode="bilinear", align_corners=False),
        lambda: upsample_matmul(x, size),
    ):
        fn().sum().backward()  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            fn().sum().backward()
        out.append((time.perf_counter() - t0) / reps * 1e3)
    return out[0], out[1]


def main() -> None:
    steps = env_int("STEGO_BENCH_STEPS", REFERENCE_STEPS)
    with tempfile.TemporaryDirectory() as root:
        train, val = stores(root, env_int("STEGO_BENCH_TRAIN", 200), env_int("STEGO_BENCH_VAL", 50))
        d = int(train.dim)
        codes = {
            "raw": None,
            f"pca-{d}": get_projection("pca", None, random_state=0).fit(train),
            f"rp-{d}": get_projection("rp", d, random_state=0).fit(train),
        }
        print(
            f"train {train.n_images} / val {val.n_images} images, D={d}, K={train.n_classes}, "
            f"labels {tuple(train.label_shape)}; Adam {steps} x {BATCH} "
            f"({steps * BATCH / train.n_images:.0f} epochs); threads (auto policy inside "
            f"evaluate_stores; outside: {get_threads()})"
        )
        solvers = ("tokens", "lbfgs", "adam")
        print(
            f"{'codes':8s} {'solver':7s} {'mIoU':>6s} {'d vs adam':>9s} {'s':>7s} "
            f"{'adam-7000 s':>11s} {'speed-up':>8s} {'iters':>5s} {'passes':>6s}"
        )
        res: dict[str, dict[str, float]] = {}
        for name, proj in codes.items():
            row = {s_: run(train, val, proj, s_, steps) for s_ in solvers}
            m_a, t_a, _ = row["adam"]
            t_ref = t_a * REFERENCE_STEPS / steps
            res[name] = {s_: v[0] for s_, v in row.items()}
            for s_ in solvers:
                m, t, probe = row[s_]
                if s_ == "adam":
                    print(f"{name:8s} {s_:7s} {m:6.2f} {'':>9s} {t:7.2f} {t_ref:11.1f}")
                    continue
                print(
                    f"{name:8s} {s_:7s} {m:6.2f} {m - m_a:+9.2f} {t:7.2f} {t_ref:11.1f} "
                    f"{t_ref / t:7.1f}x {probe.n_iter_:5d} {probe.n_passes_:6d}"
                    + ("" if probe.converged_ else "  (budget reached)")
                )
        for s_ in solvers:
            vals = [v[s_] for v in res.values()]
            label = f"adam-{steps}" if s_ == "adam" else s_
            print(
                f"agreement {label}: "
                + ", ".join(f"{n} {v[s_]:.2f}" for n, v in res.items())
                + f"; max - min {max(vals) - min(vals):.3f} mIoU"
            )
        # the L-BFGS image cap (max_images; 1,000 by default, above this store's size): what
        # training on a seeded subset of the images costs in val mIoU, on the raw codes
        full = res["raw"]["lbfgs"]
        for frac in (2, 4):
            cap = max(1, train.n_images // frac)
            m, t, probe = run(train, val, None, "lbfgs", steps, max_images=cap)
            print(
                f"lbfgs on {cap} of {train.n_images} train images (max_images={cap}, raw): "
                f"{m:.2f} mIoU ({m - full:+.2f} vs all images), {t:.2f} s, "
                f"{probe.n_passes_} passes"
            )
        # per-step overhead of the Adam parity mode (same thread count as the runs above)
        n_steps = min(steps, 500)
        with limit("auto"):  # the shipped policy (1 thread for a store this small)
            _, t_probe, _ = run(train, val, None, "adam", n_steps)
            _, t_zero, _ = run(train, val, None, "adam", 1)
            plain = plain_torch_adam(train, n_steps)
            print(
                f"Adam step ({BATCH} images, auto threads): probe in evaluate_stores "
                f"{(t_probe - t_zero) / (n_steps - 1) * 1e3:.2f} ms, plain torch "
                f"{plain * 1e3:.2f} ms"
            )
            for shape, size in (((BATCH, 6, 8, 8), (64, 64)), ((BATCH, 27, 40, 40), (320, 320))):
                a, b = time_upsample(shape, size, reps=20 if size[0] < 100 else 3)
                print(
                    f"upsample {shape} -> {size} fwd+bwd: F.interpolate {a:.2f} ms, "
                    f"upsample_matmul {b:.2f} ms ({a / b:.2f}x)"
                )


if __name__ == "__main__":
    main()
