"""Peak memory of streaming PCA vs scikit-learn PCA on the materialised token matrix (quirk Q35).

The reference fits ``PCA().fit(StandardScaler().fit_transform(X))`` on the whole fit matrix
``X`` (5,000 images, about 3.9M x 768 float32 for ViT-B/8), which needed about 60 GB of RAM.
:class:`stego_probe.projections.PCAProjection` streams ``n``, ``sum x`` and ``X^T X`` instead.

This benchmark builds a deterministic synthetic "store" of 28 x 28-token images with correlated,
offset, unequally scaled channels (generated image by image, so the streaming fit never holds
``X``) and runs, each in a fresh subprocess so that ``ru_maxrss`` is that method's own peak:

* ``streaming``: ``PCAProjection(n_images=None).fit(store)``;
* ``sklearn``: materialise ``X`` (N, C) float32, ``StandardScaler().fit_transform(X)``,
  ``PCA(svd_solver=SOLVER).fit(...)`` (``full`` = the reference's LAPACK SVD).

It prints peak RSS (absolute, and above the process's RSS after imports), wall time, the
agreement of the components (``1 - |cos|`` per component, i.e. equal up to sign) and of the
explained-variance ratios, and the memory ratio sklearn / streaming.

Environment variables:
    BENCH_PCA_TOKENS   number of tokens (default 1_000_000; rounded up to whole 784-token images)
    BENCH_PCA_DIM      channels C (default 384)
    BENCH_PCA_SOLVER   sklearn ``svd_solver`` (default ``full``; ``auto`` picks sklearn >= 1.5's
                       covariance solver for tall matrices)
    BENCH_PCA_CHUNK    streaming chunk size in tokens (default 16384)

Run: ``python benchmarks/bench_pca_memory.py`` (about 1.5 GB for X at the default size, several
GB for the sklearn baseline).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOKENS_PER_IMAGE = 28 * 28
SEED = 0


def _rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    """Peak resident set size of this process in MB (``ru_maxrss`` is in kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class SyntheticStore:
    """Store-like generator: image ``i`` is ``(28, 28, C)`` float32, reproducible per image.

    Tokens are ``g @ mix + offset`` with ``g ~ N(0, I)`` drawn from ``default_rng([SEED, i])``,
    ``mix`` a fixed (C, C) matrix with geometrically decaying singular values (distinct
    eigenvalues) and per-channel scales in [0.5, 5], ``offset ~ N(0, 20^2)`` per channel.
    """

    def __init__(self, n_images: int, dim: int) -> None:
        self.n_images = n_images
        self.dim = dim
        self.grid = (28, 28)
        self.complete = True
        self.path = "synthetic://bench_pca_memory"
        self.provenance = {"backbone": "synthetic", "dataset": "synthetic", "split": "train"}
        rng = np.random.default_rng(SEED)
        q1, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        q2, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        sv = np.geomspace(5.0, 0.05, dim)
        scale = rng.uniform(0.5, 5.0, dim)
        self.mix = ((q1 * sv) @ q2 * scale).astype(np.float32)
        self.offset = rng.normal(0, 20, dim).astype(np.float32)

    def tokens(self, idx) -> np.ndarray:
        """(n, 28, 28, C) float32 tokens of images ``idx``."""
        idx = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        out = np.empty((idx.size, TOKENS_PER_IMAGE, self.dim), dtype=np.float32)
        for k, i in enumerate(idx):
            g = np.random.default_rng([SEED, int(i)]).standard_normal(
                (TOKENS_PER_IMAGE, self.dim), dtype=np.float32
            )
            out[k] = g @ self.mix + self.offset
        return out.reshape(idx.size, 28, 28, self.dim)


def _child(mode: str, n_images: int, dim: int, out_dir: Path) -> None:
    """Run one method in this (fresh) process and write its results to ``out_dir``."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from stego_probe.projections import PCAProjection

    store = SyntheticStore(n_images, dim)
    base = _rss_mb()
    t0 = time.perf_counter()
    if mode == "streaming":
        chunk = int(os.environ.get("BENCH_PCA_CHUNK", 16384))
        pca = PCAProjection(n_images=None, chunk_size=chunk).fit(store)
        comps, ratio = pca.all_components_, pca.explained_variance_ratio_
    else:
        solver = os.environ.get("BENCH_PCA_SOLVER", "full")
        x = np.empty((n_images * TOKENS_PER_IMAGE, dim), dtype=np.float32)
        step = 64
        for s in range(0, n_images, step):
            idx = np.arange(s, min(s + step, n_images))
            x[s * TOKENS_PER_IMAGE : (s + idx.size) * TOKENS_PER_IMAGE] = store.tokens(idx).reshape(
                -1, dim
            )
        xs = StandardScaler().fit_transform(x)
        pca = PCA(svd_solver=solver).fit(xs)
        comps, ratio = pca.components_, pca.explained_variance_ratio_
    seconds = time.perf_counter() - t0
    np.save(out_dir / f"{mode}_components.npy", np.asarray(comps, dtype=np.float64))
    np.save(out_dir / f"{mode}_ratio.npy", np.asarray(ratio, dtype=np.float64))
    info = {"mode": mode, "seconds": seconds, "rss_after_imports_mb": base, "peak_mb": _peak_mb()}
    (out_dir / f"{mode}.json").write_text(json.dumps(info))


def main() -> None:
    """Run both methods in subprocesses and print the comparison."""
    n_tokens = int(os.environ.get("BENCH_PCA_TOKENS", 1_000_000))
    dim = int(os.environ.get("BENCH_PCA_DIM", 384))
    n_images = -(-n_tokens // TOKENS_PER_IMAGE)
    solver = os.environ.get("BENCH_PCA_SOLVER", "full")
    print(
        f"PCA memory benchmark: {n_images} images x {TOKENS_PER_IMAGE} tokens = "
        f"{n_images * TOKENS_PER_IMAGE:,} tokens x C={dim} "
        f"(X float32 = {n_images * TOKENS_PER_IMAGE * dim * 4 / 2**30:.2f} GiB); "
        f"sklearn svd_solver={solver!r}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        res = {}
        for mode in ("streaming", "sklearn"):
            cmd = [sys.executable, __file__, "--child", mode, str(n_images), str(dim), tmp]
            subprocess.run(cmd, check=True)
            res[mode] = json.loads((out / f"{mode}.json").read_text())
        a = np.load(out / "streaming_components.npy")
        b = np.load(out / "sklearn_components.npy")
        cos = np.abs((a * b).sum(1)) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        dev = 1.0 - cos
        ratio_diff = np.abs(
            np.load(out / "streaming_ratio.npy") - np.load(out / "sklearn_ratio.npy")
        )
    print(f"{'method':<10} {'peak RSS MB':>12} {'above imports MB':>17} {'time s':>8}")
    for mode in ("streaming", "sklearn"):
        r = res[mode]
        above = r["peak_mb"] - r["rss_after_imports_mb"]
        print(f"{mode:<10} {r['peak_mb']:>12.0f} {above:>17.0f} {r['seconds']:>8.1f}")
    s, k = res["streaming"], res["sklearn"]
    inc_ratio = (k["peak_mb"] - k["rss_after_imports_mb"]) / max(
        s["peak_mb"] - s["rss_after_imports_mb"], 1.0
    )
    print(f"peak memory ratio sklearn / streaming: {k['peak_mb'] / s['peak_mb']:.1f}x absolute, "
          f"{inc_ratio:.1f}x above the post-import baseline (target >= 5x)")  # fmt: skip
    top = min(50, dim)
    print(
        f"components equal up to sign: max(1 - |cos|) = {dev.max():.2e} over all {dim}, "
        f"{dev[:top].max():.2e} over the first {top}; "
        f"max |explained_variance_ratio_ diff| = {ratio_diff.max():.2e}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
    else:
        main()
