"""Benchmark: the k-means probe's engines vs scikit-learn's Lloyd, against the GEMM ceiling.

All runs use the same L2-normalised float32 tokens, the same K and the same stopping rule:
Lloyd iterations to a fixed point (ours: ``tol=0``, two equal consecutive objectives; sklearn:
``tol=0``, "strict convergence", no label changes), at most ``STEGO_BENCH_NITER`` iterations.
Every result is scored by the same function (sum of squared distances to the nearest centroid,
float64), so the objectives are comparable. Everything runs under the shipped thread policy:
``OMP_WAIT_POLICY=PASSIVE`` is set before torch / FAISS start, and all work runs inside
``stego_probe.threads.limit("auto", "large")`` (ViT-sized tokens: all cores).

Printed, in one run:

1. **The ceiling**: the time of one ``(N, D) x (D, K)`` float32 product (the matrix product
   of one full Lloyd assignment) and its GFLOP/s on this machine.
2. **End to end** (``fit`` with each library's own k-means++ seeding, ``nredo = n_init``):
   ours (``algorithm="hamerly"``, the CPU default), ours with FAISS (``algorithm="faiss"``) and
   sklearn ``KMeans(algorithm="lloyd")``; time, objective, iterations and speed-up vs sklearn.
   The probe's default (spherical k-means with Hamerly's bounds) is timed too; it minimises a
   different objective (unit-norm centroids), so no objective is printed for it.
3. **Same start** (one restart from the same k-means++ centroids, so all three follow the same
   Lloyd path to the same fixed point): time per iteration, and that time as a multiple of the
   ceiling (``ceiling x``: the GEMM time of one full assignment divided by the iteration's time;
   above 1 means the iteration cost less than its matrix product alone, which only skipping
   distances can do), and the share of distance rows Hamerly's bounds computed.

Environment variables (defaults in brackets): ``STEGO_BENCH_N`` tokens [200000],
``STEGO_BENCH_D`` [384], ``STEGO_BENCH_K`` [27], ``STEGO_BENCH_NITER`` [300],
``STEGO_BENCH_NREDO`` [2]. Quick run::

    STEGO_BENCH_N=20000 python benchmarks/bench_kmeans.py
"""

from __future__ import annotations

from stego_probe.threads import passive_wait

passive_wait()  # before torch / FAISS start their OpenMP runtimes

import os  # noqa: E402
import time  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402

from stego_probe.codes import l2_normalize  # noqa: E402
from stego_probe.probes.kmeans import KMeansProbe, kmeans_plusplus  # noqa: E402
from stego_probe.probes.lloyd import lloyd  # noqa: E402
from stego_probe.threads import limit  # noqa: E402


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


def gemm_ceiling(x: np.ndarray, k: int, repeat: int = 5) -> float:
    """Best time (s) of the full ``(N, D) x (D, K)`` float32 product, in 65,536-row blocks as
    Lloyd computes it."""
    xt = torch.from_numpy(x)
    c = torch.from_numpy(np.ascontiguousarray(x[:k].T))
    out = torch.empty(65536, k)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for start in range(0, len(x), 65536):
            xb = xt[start : start + 65536]
            torch.mm(xb, c, out=out[: len(xb)])
        best = min(best, time.perf_counter() - t0)
    return best


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    n = env_int("STEGO_BENCH_N", 200_000)
    d = env_int("STEGO_BENCH_D", 384)
    k = env_int("STEGO_BENCH_K", 27)
    niter = env_int("STEGO_BENCH_NITER", 300)
    nredo = env_int("STEGO_BENCH_NREDO", 2)
    x = make_tokens(n, d, k)
    with limit("auto", "large") as threads:
        lloyd(x[:2000], x[:k], niter=2)  # warm up torch's kernels
        t_gemm = gemm_ceiling(x, k)
        gflops = 2 * n * d * k / t_gemm / 1e9
        print(
            f"N={n} D={d} K={k} niter<={niter} nredo=n_init={nredo} threads={threads} "
            f"(policy 'auto', OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}) "
            f"faiss {faiss.__version__} torch {torch.__version__}"
        )
        print(f"ceiling: one (N,D)x(D,K) float32 product {t_gemm * 1e3:.1f} ms = "
              f"{gflops:.1f} GFLOP/s")  # fmt: skip

        print("\nend to end (each library's own k-means++ seeding; stopping rule: fixed point)")
        print(f"{'engine':>22} {'time_s':>8} {'vs_sklearn':>10} {'objective':>12} {'iters':>6}")
        sk, t_sk = timed(
            lambda: KMeans(k, n_init=nredo, max_iter=niter, tol=0, random_state=0).fit(x)
        )
        rows = [("sklearn lloyd", t_sk, sse(x, sk.cluster_centers_), sk.n_iter_)]
        for algorithm in ("hamerly", "faiss"):
            probe, t = timed(
                lambda a=algorithm: KMeansProbe(
                    k,
                    n_tokens=n,
                    niter=niter,
                    nredo=nredo,
                    metric="euclidean",
                    random_state=0,
                    algorithm=a,
                ).fit(x)  # fmt: skip
            )
            rows.append((f"ours {algorithm}", t, sse(x, probe.cluster_centers_), probe.n_iter_))
        probe, t = timed(
            lambda: KMeansProbe(k, n_tokens=n, niter=niter, nredo=nredo, random_state=0).fit(x)
        )
        rows.append(("ours default (cosine)", t, None, probe.n_iter_))
        for name, t, obj, it in rows:
            score = "(spherical)" if obj is None else f"{obj:.1f}"
            print(f"{name:>22} {t:8.2f} {t_sk / t:9.2f}x {score:>12} {it:6d}")

        print("\nsame start (one restart from the same k-means++ centroids)")
        print(f"{'engine':>22} {'time_s':>8} {'vs_sklearn':>10} {'objective':>12} {'iters':>6} "
              f"{'ms/iter':>8} {'ceiling_x':>9} {'rows':>6}")  # fmt: skip
        init = kmeans_plusplus(x[: 1000 * k], k, seed=1)
        sk, t_sk = timed(
            lambda: KMeans(k, init=init, n_init=1, max_iter=niter, tol=0, algorithm="lloyd").fit(x)
        )
        res, t_h = timed(lambda: lloyd(x, init, niter=niter, tol=0.0))
        plain, t_p = timed(lambda: lloyd(x, init, niter=niter, tol=0.0, bounds=False))
        km = faiss.Kmeans(d, k, niter=niter, nredo=1, max_points_per_centroid=n, verbose=False)
        km.cp.early_stop_threshold = 0.0
        _, t_f = timed(lambda: km.train(x, init_centroids=init))
        entries = [
            ("sklearn lloyd", t_sk, sk.cluster_centers_, sk.n_iter_, 1.0),
            ("ours hamerly", t_h, res.centroids, res.n_iter, res.distance_rows.mean() / n),
            ("ours, no bounds", t_p, plain.centroids, plain.n_iter, 1.0),
            ("faiss", t_f, km.centroids, len(km.obj), 1.0),
        ]
        for name, t, c, it, share in entries:
            per = t / it
            print(f"{name:>22} {t:8.2f} {t_sk / t:9.2f}x {sse(x, c):12.1f} {it:6d} "
                  f"{per * 1e3:8.1f} {t_gemm / per:9.2f} {share:6.1%}")  # fmt: skip
    print(
        "\nobjective: sum of squared distances to the nearest centroid (float64, same function "
        "for all); ceiling_x: GEMM time of one full assignment / time per iteration; rows: "
        "share of tokens whose K distances were computed per iteration"
    )


if __name__ == "__main__":
    main()
