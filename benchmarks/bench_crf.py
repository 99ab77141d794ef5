"""Benchmark: dense CRF throughput (images/s) at evaluation resolution, serial vs process pool.

Synthetic 320x320 images (smooth colour regions) with C=27 log-probabilities from a noisy
softmax, the shape of one CocoStuff-27 evaluation crop. Reports images/s for the serial path
(``num_workers=0``, the default) and for spawn pools of 1 and 2 workers (pool start-up included,
as a user sees it), and checks that all paths give identical labels.

Environment variables: ``STEGO_BENCH_CRF_N`` images [8], ``STEGO_BENCH_CRF_SIZE`` [320],
``STEGO_BENCH_CRF_C`` [27], ``STEGO_BENCH_CRF_WORKERS`` comma list [1,2].
"""

from __future__ import annotations

import os
import time

import numpy as np

from stego_probe.probes.crf import batch_crf


def make_batch(n: int, size: int, n_classes: int, seed: int = 0):
    """``(n, size, size, 3)`` uint8 images and ``(n, C, size, size)`` float32 log-probs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images, log_probs = [], []
    for _ in range(n):
        # 6 random half-plane regions -> piecewise constant colours and classes
        region = np.zeros((size, size), dtype=np.int64)
        for _ in range(6):
            a, b, c = rng.normal(size=3)
            region = np.where(a * xx + b * yy + c * 0.3 > 0, rng.integers(n_classes), region)
        palette = rng.integers(0, 256, size=(n_classes, 3))
        img = palette[region] + rng.integers(-8, 9, size=(size, size, 3))
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        logits = rng.normal(scale=1.0, size=(n_classes, size, size))
        logits[region, np.arange(size)[:, None], np.arange(size)[None, :]] += 1.5
        logits -= logits.max(0, keepdims=True)
        lp = logits - np.log(np.exp(logits).sum(0, keepdims=True))
        log_probs.append(lp.astype(np.float32))
    return np.stack(images), np.stack(log_probs)


def main() -> None:
    n = int(os.environ.get("STEGO_BENCH_CRF_N", 8))
    size = int(os.environ.get("STEGO_BENCH_CRF_SIZE", 320))
    n_classes = int(os.environ.get("STEGO_BENCH_CRF_C", 27))
    workers = [int(w) for w in os.environ.get("STEGO_BENCH_CRF_WORKERS", "1,2").split(",")]
    images, log_probs = make_batch(n, size, n_classes)
    print(f"N={n} images of {size}x{size}, C={n_classes}, cpu_count={os.cpu_count()}")
    t0 = time.perf_counter()
    serial = batch_crf(images, log_probs, num_workers=0)
    t_serial = time.perf_counter() - t0
    print(f"serial     : {n / t_serial:6.2f} images/s ({t_serial:.2f} s)")
    for w in workers:
        t0 = time.perf_counter()
        pooled = batch_crf(images, log_probs, num_workers=w, timeout=600.0)
        t = time.perf_counter() - t0
        same = np.array_equal(pooled, serial)
        print(
            f"{w} worker(s): {n / t:6.2f} images/s ({t:.2f} s, x{t_serial / t:.2f} vs serial, "
            f"identical={same})"
        )


if __name__ == "__main__":
    main()
