"""Benchmark: cluster_statistics when the silhouette sample is every token (``n_tokens >= M``).

Every seed then draws the same "subsample" (all tokens), so :func:`stego_probe.distinctness.
cluster_statistics` computes the silhouette once; the previous code computed it once per seed.
On ``M`` clustered 48-d codes (the demo's distinctness settings: ``n_tokens=3000``, seeds
0, 1, 2) this prints the time of the shipped function and of the per-seed loop (the old code,
copied here), their ratio, and checks that the silhouettes are identical.

Threads follow the shipped policy (:func:`stego_probe.threads.limit`, ``"auto"``). Environment
variables: ``STEGO_BENCH_M`` tokens [3000], ``STEGO_BENCH_REPEAT`` [3, best of]. Run::

    python benchmarks/bench_silhouette.py
"""

from __future__ import annotations

import os
import time

import numpy as np
from sklearn.metrics import silhouette_score

from stego_probe.codes import l2_normalize
from stego_probe.distinctness import cluster_statistics, stratified_subsample
from stego_probe.threads import limit


def old_silhouettes(x, ids, n_tokens, seeds) -> list[float]:
    """The previous per-seed loop of ``cluster_statistics`` (silhouette part)."""
    xn = l2_normalize(x)
    out = []
    for seed in seeds:
        idx = stratified_subsample(ids, n_tokens, seed)
        out.append(float(silhouette_score(xn[idx], ids[idx], metric="cosine")))
    return out


def main() -> None:
    m, repeat = (
        int(os.environ.get("STEGO_BENCH_M", 3000)),
        int(os.environ.get("STEGO_BENCH_REPEAT", 3)),
    )
    rng = np.random.default_rng(0)
    k, d, seeds = 12, 48, (0, 1, 2)
    ids = rng.integers(0, k, m)
    x = (rng.normal(size=(k, d))[ids] + rng.normal(0, 0.7, (m, d))).astype(np.float32)
    with limit("auto") as n_threads:
        t_old, t_new = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            old = old_silhouettes(x, ids, 3000, seeds)
            t_old.append(time.perf_counter() - t)
            t = time.perf_counter()
            new = cluster_statistics(x, ids, n_tokens=3000, seeds=seeds)
            t_new.append(time.perf_counter() - t)
    print(f"M={m} D={d} K'={k} n_tokens=3000 seeds={seeds} threads auto -> {n_threads}")
    print(f"old: silhouette per seed      {min(t_old):.3f} s (silhouette only)")
    print(f"new: cluster_statistics total {min(t_new):.3f} s (silhouette once + DB + CH)")
    print(f"speed-up old / new: {min(t_old) / min(t_new):.2f}x")
    print(f"silhouettes identical: {new['silhouette_per_seed'] == old}")


if __name__ == "__main__":
    main()
