"""Benchmark: stego_probe's FAISS k-means probe vs scikit-learn ``KMeans`` on the same data.

Both run on the same L2-normalised float32 tokens with the same K, the same number of Lloyd
iterations and the same number of initialisations (``nredo`` = ``n_init``), and both are scored
with the same function (sum of squared distances to the nearest centroid, in float64). Both use
greedy k-means++ seeding (ours: :func:`stego_probe.probes.kmeans.kmeans_plusplus`; sklearn's
default); ``STEGO_BENCH_INIT=random`` switches ours to FAISS's random seeding.

Two comparisons are printed:

* ``euclidean``: our probe with ``metric="euclidean"`` vs sklearn -- the same objective;
* ``cosine``: our default spherical probe; sklearn's centroids are L2-normalised before scoring
  (the spherical k-means objective is the SSE to unit-norm centroids on unit-norm data).

Environment variables (defaults in brackets): ``STEGO_BENCH_N`` tokens [200000],
``STEGO_BENCH_D`` [384], ``STEGO_BENCH_K`` [27], ``STEGO_BENCH_NITER`` [50],
``STEGO_BENCH_NREDO`` [2], ``STEGO_BENCH_THREADS`` threads for both libraries [all cores],
``STEGO_BENCH_INIT`` [k-means++], ``STEGO_BENCH_METRICS`` [cosine,euclidean],
``STEGO_BENCH_TOLS`` stopping tolerances, each used by both libraries [0,1e-4]. Quick run::

    STEGO_BENCH_N=20000 python benchmarks/bench_kmeans.py
"""

from __future__ import annotations

import os
import time

import faiss
import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from stego_probe.codes import l2_normalize
from stego_probe.probes.kmeans import KMeansProbe


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def make_tokens(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """``(n, d)`` float32 unit-norm tokens: ``k`` anisotropic Gaussian groups of unequal size
    plus a shared low-rank component, a rough stand-in for ViT patch features."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 1.5
    weights = rng.dirichlet(np.full(k, 2.0))
    y = rng.choice(k, size=n, p=weights)
    shared = rng.normal(size=(16, d))
    x = centers[y] + rng.normal(size=(n, 16)) @ shared * 0.3 + rng.normal(size=(n, d))
    return l2_normalize(x.astype(np.float32))


def sse(x: np.ndarray, centers: np.ndarray, block: int = 65536) -> float:
    """Sum over tokens of the squared distance to the nearest centre (float64)."""
    c = centers.astype(np.float64)
    c2 = (c**2).sum(1)
    total = 0.0
    for start in range(0, len(x), block):
        xb = x[start : start + block].astype(np.float64)
        d = (xb**2).sum(1)[:, None] - 2 * xb @ c.T + c2[None, :]
        total += float(np.maximum(d.min(1), 0).sum())
    return total


def main() -> None:
    n = env_int("STEGO_BENCH_N", 200_000)
    d = env_int("STEGO_BENCH_D", 384)
    k = env_int("STEGO_BENCH_K", 27)
    niter = env_int("STEGO_BENCH_NITER", 50)
    nredo = env_int("STEGO_BENCH_NREDO", 2)
    threads = env_int("STEGO_BENCH_THREADS", os.cpu_count() or 1)
    init = os.environ.get("STEGO_BENCH_INIT", "k-means++")
    metrics = os.environ.get("STEGO_BENCH_METRICS", "cosine,euclidean").split(",")
    tols = [float(t) for t in os.environ.get("STEGO_BENCH_TOLS", "0,1e-4").split(",")]
    x = make_tokens(n, d, k)
    faiss.omp_set_num_threads(threads)
    print(
        f"N={n} D={d} K={k} max_iter=niter={niter} nredo=n_init={nredo} threads={threads} "
        f"faiss {faiss.__version__}; ours init={init}, sklearn init=k-means++"
    )
    print(
        "tol is each library's own stopping rule (ours: relative objective change, FAISS "
        "early_stop_threshold; sklearn: centroid shift); tol=0 runs to niter or exact convergence"
    )
    header = ("metric", "tol", "ours_s", "sk_s", "speedup", "ours_obj", "sk_obj", "obj_ratio",
              "ours_it", "sk_it")  # fmt: skip
    print(" ".join(f"{h:>10}" for h in header))
    with threadpool_limits(threads):
        for tol in tols:
            for metric in metrics:
                t0 = time.perf_counter()
                ours = KMeansProbe(
                    k, n_tokens=n, niter=niter, nredo=nredo, metric=metric, random_state=0,
                    init=init, tol=tol,
                ).fit(x)  # fmt: skip
                t_ours = time.perf_counter() - t0
                t0 = time.perf_counter()
                sk = KMeans(k, n_init=nredo, max_iter=niter, tol=tol, random_state=0).fit(x)
                t_sk = time.perf_counter() - t0
                c_sk = sk.cluster_centers_.astype(np.float32)
                if metric == "cosine":
                    c_sk = l2_normalize(c_sk)
                o_ours, o_sk = sse(x, ours.cluster_centers_), sse(x, c_sk)
                row = (metric, f"{tol:g}", f"{t_ours:.2f}", f"{t_sk:.2f}",
                       f"{t_sk / t_ours:.2f}x", f"{o_ours:.1f}", f"{o_sk:.1f}",
                       f"{o_ours / o_sk:.4f}", ours.n_iter_, sk.n_iter_)  # fmt: skip
                print(" ".join(f"{str(v):>10}" for v in row), flush=True)
    print("obj = sum of squared distances to the nearest (for cosine: unit-norm) centroid; "
          "obj_ratio < 1 means ours is better")  # fmt: skip


if __name__ == "__main__":
    main()
