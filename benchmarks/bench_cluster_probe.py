"""Benchmark: the reference cluster probe (Adam, mini-batches) vs the FAISS k-means probe.

Both probes optimise the same spherical k-means objective, the mean over tokens of the largest
cosine similarity to a centroid (``-loss`` of :func:`stego_probe.probes.cluster_lookup.
cluster_lookup_loss`). On the same tokens we

1. fit :class:`~stego_probe.probes.KMeansProbe` (FAISS Lloyd iterations, ``nredo`` restarts)
   and time it; its objective on all tokens is the target;
2. train :class:`~stego_probe.probes.ClusterLookupProbe` step by step (Adam, lr 5e-3,
   mini-batches of ``B`` tokens drawn uniformly with replacement, the reference's 32 images x
   784 tokens by default) and measure, excluding the evaluation itself, the training time
   until its objective on all tokens reaches the target (and 99 % of it), or the step budget
   runs out.

The ratio ``time(Adam) / time(FAISS)`` is printed; both are measured in this run, on this
machine, with the same thread count.

Environment variables (defaults in brackets): ``STEGO_BENCH_N`` tokens [50000],
``STEGO_BENCH_D`` [64], ``STEGO_BENCH_K`` [27], ``STEGO_BENCH_BATCH`` tokens per Adam step
[25088], ``STEGO_BENCH_STEPS`` Adam step budget [2000], ``STEGO_BENCH_EVAL_EVERY`` [50],
``STEGO_BENCH_NREDO`` [1], ``STEGO_BENCH_THREADS`` [2]. Quick run::

    STEGO_BENCH_N=20000 STEGO_BENCH_STEPS=500 python benchmarks/bench_cluster_probe.py
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from stego_probe.codes import l2_normalize
from stego_probe.probes import ClusterLookupProbe, KMeansProbe


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def mixture_tokens(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """``(n, d)`` float32 tokens: ``k`` Gaussian groups of unequal size around random centres,
    with a shared low-rank nuisance and isotropic noise (a stand-in for ViT patch features)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 1.5
    group = rng.choice(k, size=n, p=rng.dirichlet(np.full(k, 2.0)))
    nuisance = rng.normal(size=(n, 8)) @ rng.normal(size=(8, d)) * 0.4
    return (centres[group] + nuisance + rng.normal(size=(n, d))).astype(np.float32)


def mean_max_cosine(x_hat: np.ndarray, centres: np.ndarray) -> float:
    """Spherical k-means objective: mean over rows of ``max_k <x_hat, c_k / |c_k|>``."""
    c = l2_normalize(centres)
    best = np.empty(len(x_hat), np.float32)
    for start in range(0, len(x_hat), 65536):
        best[start : start + 65536] = (x_hat[start : start + 65536] @ c.T).max(1)
    return float(best.mean(dtype=np.float64))


def main() -> None:
    n, d, k = (
        env_int("STEGO_BENCH_N", 50_000),
        env_int("STEGO_BENCH_D", 64),
        env_int("STEGO_BENCH_K", 27),
    )
    batch, budget = env_int("STEGO_BENCH_BATCH", 32 * 784), env_int("STEGO_BENCH_STEPS", 2000)
    every, nredo = env_int("STEGO_BENCH_EVAL_EVERY", 50), env_int("STEGO_BENCH_NREDO", 1)
    threads = env_int("STEGO_BENCH_THREADS", 2)
    torch.set_num_threads(threads)
    import faiss

    faiss.omp_set_num_threads(threads)
    x = mixture_tokens(n, d, k)
    x_hat = l2_normalize(x)
    print(f"tokens n={n} d={d} K={k}; Adam batch={batch} tokens; threads={threads}")

    t0 = time.perf_counter()
    km = KMeansProbe(k, n_tokens=n, niter=100, nredo=nredo, random_state=0, gpu=False).fit(x)
    t_faiss = time.perf_counter() - t0
    target = mean_max_cosine(x_hat, km.cluster_centers_)
    print(f"FAISS k-means (niter=100, nredo={nredo}): {t_faiss:.2f} s, objective {target:.4f}")

    probe = ClusterLookupProbe(k, random_state=0).initialize(d)
    stream = np.random.default_rng(0)
    t_train, hit, hit99, best, obj = 0.0, None, None, -1.0, -1.0
    for step in range(1, budget + 1):
        idx = stream.integers(0, n, batch)
        xb = torch.from_numpy(x[idx])
        t0 = time.perf_counter()
        probe._step(xb, None)  # one Adam step (the same as partial_fit without input checks)
        t_train += time.perf_counter() - t0
        if step % every == 0 or step == budget:
            obj = mean_max_cosine(x_hat, probe.cluster_centers_)
            best = max(best, obj)
            if hit99 is None and obj >= 0.99 * target:
                hit99 = (step, t_train)
            if obj >= target:
                hit = (step, t_train)
                break
    print(f"Adam cluster probe: best objective {best:.4f} after {step} steps, {t_train:.2f} s")
    for name, h in (("99% of FAISS objective", hit99), ("FAISS objective", hit)):
        if h is None:
            print(f"  {name}: not reached within {budget} steps ({t_train:.2f} s)")
        else:
            print(
                f"  {name}: step {h[0]}, {h[1]:.2f} s  ->  time ratio Adam / FAISS = "
                f"{h[1] / t_faiss:.1f}x"
            )
    alive = len(np.unique(probe.predict(x_hat)))
    print(
        f"  centroids that win at least one token: {alive}/{k} (FAISS: "
        f"{len(np.unique(km.predict(x_hat)))}/{k})"
    )


if __name__ == "__main__":
    main()
