"""Benchmark: peak memory and time of a k-means-only evaluation, lazy vs. preloaded train store.

``evaluate_stores(probes="kmeans")`` fits k-means on a seeded token sample
(``FeatureStore.sample_tokens``, one chunk in memory at a time) and never reads the training
store whole; the eager alternative preloads it into memory first
(:func:`stego_probe.store.preloaded`, tokens + int64 pixel labels), as the cluster / linear
probes' training does for small stores. Each variant runs in a fresh subprocess on the same
random store (``N`` images, 16x16 grid of 64-d float16 tokens, 128x128 labels) and reports its
peak RSS (``ru_maxrss``) and wall time; the ratios eager / lazy are printed.

Threads follow the shipped policy (``evaluate_stores(threads="auto")``). Environment
variables: ``STEGO_BENCH_N`` train images [600]. Run::

    python benchmarks/bench_evaluate_memory.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

CHILD = """
import json, resource, sys, time
from stego_probe.evaluate import evaluate_stores
from stego_probe.store import FeatureStore, preloaded
train, val = FeatureStore.open(sys.argv[1]), FeatureStore.open(sys.argv[2])
t = time.perf_counter()
if sys.argv[3] == "eager":
    train = preloaded(train, 2**40)
kw = {"kmeans": {"n_tokens": 20000, "niter": 10, "nredo": 1}}
evaluate_stores(train, val, probes="kmeans", probe_kwargs=kw, progress=False)
print(json.dumps({"s": time.perf_counter() - t,
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write(path, n, seed):
    from stego_probe.store import FeatureStore

    rng = np.random.default_rng(seed)
    store = FeatureStore.create(
        path, n_images=n, grid=(16, 16), dim=64, label_shape=(128, 128),
        provenance={"n_classes": 5, "dataset": "toy", "backbone": "toy"}, chunk_images=32,
    )  # fmt: skip
    centers = rng.normal(size=(5, 64)).astype(np.float32)
    for b in range(store.n_blocks):
        lo, hi = store.block_range(b)
        lab = rng.integers(0, 5, (hi - lo, 16, 16))
        tok = centers[lab] + rng.normal(0, 0.5, (hi - lo, 16, 16, 64)).astype(np.float32)
        pix = np.repeat(np.repeat(lab, 8, 1), 8, 2)
        store.write_block(b, tok.astype(np.float16), pix, [f"{seed}_{i}" for i in range(lo, hi)])
    store.mark_complete()
    return store.path


def main() -> None:
    n = int(os.environ.get("STEGO_BENCH_N", 600))
    with tempfile.TemporaryDirectory() as tmp:
        train, val = write(f"{tmp}/train", n, 0), write(f"{tmp}/val", 16, 1)
        out = {}
        for variant in ("lazy", "eager"):
            res = subprocess.run(
                [sys.executable, "-c", CHILD, str(train), str(val), variant],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            out[variant] = json.loads(res.stdout.strip().splitlines()[-1])
    mb = n * (16 * 16 * 64 * 4 + 128 * 128 * 8) / 2**20
    print(f"train store {n} x 16x16x64 float16 tokens, 128x128 labels ({mb:.0f} MiB as f32+i64)")
    for v in ("lazy", "eager"):
        print(f"{v:5s}: peak RSS {out[v]['rss']:7.0f} MiB, {out[v]['s']:6.2f} s")
    print(
        f"eager / lazy: RSS {out['eager']['rss'] / out['lazy']['rss']:.2f}x, "
        f"time {out['eager']['s'] / out['lazy']['s']:.2f}x"
    )


if __name__ == "__main__":
    main()
