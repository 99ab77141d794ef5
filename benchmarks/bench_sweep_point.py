"""Benchmark: one sweep point vs retraining the reference's probes by SGD on the same store.

On a synthetic store pair (``synthetic`` scenes, the weight-free ``descriptor`` backbone, by
default 200 train / 50 val images at 64 px, C = 64) we time

A. **one full sweep point** as ``stego-probe sweep`` runs it: :func:`stego_probe.sweep.run_point`
   for ``Point("pca", D, 0)`` with the ``synthetic`` preset's probe settings: fit the PCA
   projection (no cached fit), the FAISS k-means probe, the linear probe (the preset's
   300 steps x 16 images), then the metrics on the val store. The distinctness measures are
   switched off, because they are not part of the comparison.
B. **the reference's way**: the cluster probe and the linear probe trained side by side by
   minibatch Adam (lr 5e-3) for the reference's **7000 steps x 32 images** on the same PCA
   codes, then scored on the val store (:func:`stego_probe.evaluate.evaluate_stores` with
   ``probes=["cluster", "linear"]``). Running 7000 steps takes too long for a benchmark, so B is
   timed at ``STEPS1`` and ``STEPS2`` steps and **extrapolated linearly to 7000 steps**: the
   slope is the per-step cost and the intercept the fixed cost (set-up + one validation pass).
   The reference also validates every 100 steps to select the best step (PROTOCOL §6.6). That
   variant adds 69 more validation passes, each timed separately on the fitted probes.

The PCA fit is done once for B and not counted there. A short warm-up call runs first, and
every timing is the best of ``STEGO_BENCH_REPEAT`` runs. The ratios B / A are printed. Both are
measured in this run, on this machine, with the same thread count.

Environment variables (defaults in brackets): ``STEGO_BENCH_RES`` [64], ``STEGO_BENCH_DIM`` D
[24], ``STEGO_BENCH_TRAIN`` / ``STEGO_BENCH_VAL`` image limits [200 / 50],
``STEGO_BENCH_STEPS1`` / ``STEGO_BENCH_STEPS2`` [100 / 300], ``STEGO_BENCH_REPEAT`` [2],
``STEGO_BENCH_THREADS`` [1],
``STEGO_BENCH_DEVICE`` [cpu] (``cuda`` for the torch probes and FAISS on a GPU),
``STEGO_BENCH_DIR`` (keep the stores there between runs; default: a temporary folder). Quick run::

    STEGO_BENCH_TRAIN=40 STEGO_BENCH_VAL=10 STEGO_BENCH_STEPS2=150 python benchmarks/bench_sweep_point.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REF_STEPS, REF_BATCH, REF_VAL_EVERY = 7000, 32, 100


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def timed(fn, *args, repeat: int = 1, **kwargs):
    """``(result of the last call, best wall time in seconds over repeat calls)``."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return out, best


def miou(rows, probe: str) -> float:
    return next(r["value"] for r in rows if r["probe"] == probe and r["metric"] == "miou")


def validation_pass(val_store, pca, probes: dict, batch_size: int = 8) -> float:
    """Seconds for one scoring pass of fitted probes over the val store (pixel mode)."""
    from stego_probe.evaluate import predict_batch
    from stego_probe.metrics import ConfusionAccumulator

    k = int(val_store.n_classes)
    t0 = time.perf_counter()
    acc = {name: ConfusionAccumulator(k, k) for name in probes}
    for tokens, labels, _ in val_store.iter_batches(batch_size):
        codes = np.asarray(pca.transform_tokens(tokens), dtype=np.float32)
        for name, probe in probes.items():
            pred = predict_batch(name, probe, codes, tuple(val_store.label_shape))
            acc[name].update(pred, labels)
    for name, a in acc.items():
        a.scores("identity" if name == "linear" else "hungarian")
    return time.perf_counter() - t0


def main() -> None:
    from stego_probe.evaluate import evaluate_stores
    from stego_probe.sweep import Point, ensure_stores, fit_projection, load_config, run_point

    res, dim = env_int("STEGO_BENCH_RES", 64), env_int("STEGO_BENCH_DIM", 24)
    n_train, n_val = env_int("STEGO_BENCH_TRAIN", 200), env_int("STEGO_BENCH_VAL", 50)
    s1, s2 = env_int("STEGO_BENCH_STEPS1", 100), env_int("STEGO_BENCH_STEPS2", 300)
    threads, repeat = env_int("STEGO_BENCH_THREADS", 1), env_int("STEGO_BENCH_REPEAT", 2)
    device = os.environ.get("STEGO_BENCH_DEVICE", "cpu")
    torch.set_num_threads(threads)
    import faiss

    faiss.omp_set_num_threads(threads)
    root = Path(os.environ.get("STEGO_BENCH_DIR") or tempfile.mkdtemp(prefix="bench_sweep_"))

    config = load_config(
        "synthetic",
        {
            "train": {"res": res, "limit": n_train},
            "val": {"res": res, "limit": n_val},
            "methods": ["pca"],
            "dims": [dim],
            "seeds": [0],
            "probes": ["kmeans", "linear"],
            "distinctness": {"enabled": False},
            "device": device,
        },
    )
    (train, val), t_extract = timed(ensure_stores, config, root, progress=False)
    print(
        f"stores: {train.n_images} train / {val.n_images} val images at {res} px, grid "
        f"{tuple(train.grid)}, C={train.dim}, K={val.n_classes} (extraction {t_extract:.1f} s, "
        f"not counted); D={dim}; threads={threads}; device={device}; best of {repeat}"
    )
    kw = config.probe_kwargs
    print(
        f"sweep point probes (synthetic preset): kmeans {kw['kmeans']}, linear {kw['linear']}; "
        f"reference: cluster + linear, Adam, {REF_STEPS} steps x {REF_BATCH} images"
    )
    point = Point("pca", dim, 0)

    def fresh(tag: str) -> Path:  # an empty projection cache: the call refits PCA
        return root / "projections" / f"{tag}_{time.time_ns()}"

    def reference_probes(steps: int):
        kwargs = {"steps": steps, "batch_size": REF_BATCH, "device": device}
        return evaluate_stores(
            train,
            val,
            probes=["cluster", "linear"],
            projection=pca,
            method="pca",
            seed=0,
            probe_kwargs={"cluster": kwargs, "linear": kwargs},
            return_probes=True,
            progress=False,
        )

    # -- warm-up (imports, first calls; not counted) ---------------------------------------------
    pca = fit_projection(config, point, train, fresh("warmup"))
    reference_probes(2)

    # -- A: one sweep point ----------------------------------------------------------------------
    _, t_pca = timed(lambda: fit_projection(config, point, train, fresh("pca")), repeat=repeat)
    rows, t_point = timed(lambda: run_point(config, point, train, val, fresh("a")), repeat=repeat)
    print(
        f"A. sweep point (PCA fit + k-means + linear + metrics): {t_point:.2f} s "
        f"(PCA fit alone {t_pca:.2f} s); mIoU kmeans {miou(rows, 'kmeans'):.1f}, "
        f"linear {miou(rows, 'linear'):.1f}"
    )

    # -- B: reference probes by Adam, timed at two step counts, extrapolated --------------------
    times, last, probes = {}, None, None
    for steps in (s1, s2):
        (last, probes), times[steps] = timed(reference_probes, steps, repeat=repeat)
        print(f"   cluster + linear, {steps} Adam steps x {REF_BATCH}: {times[steps]:.2f} s")
    slope = (times[s2] - times[s1]) / (s2 - s1)
    intercept = max(times[s1] - slope * s1, 0.0)
    t_ref = intercept + slope * REF_STEPS
    _, t_val = timed(validation_pass, val, pca, probes, repeat=repeat)
    n_val_passes = REF_STEPS // REF_VAL_EVERY
    t_ref_val = t_ref + (n_val_passes - 1) * t_val
    vals = last[last["metric"] == "miou"].set_index("probe")["value"]
    print(
        f"B. reference probes, extrapolated linearly to {REF_STEPS} steps "
        f"({slope * 1e3:.1f} ms/step + {intercept:.2f} s fixed): {t_ref:.1f} s; with validation "
        f"every {REF_VAL_EVERY} steps ({n_val_passes} passes x {t_val:.2f} s): {t_ref_val:.1f} s"
    )
    print(f"   (mIoU after {s2} steps: cluster {vals['cluster']:.1f}, linear {vals['linear']:.1f})")
    print(
        f"ratio B / A: {t_ref / t_point:.1f}x (no periodic validation), "
        f"{t_ref_val / t_point:.1f}x (validation every {REF_VAL_EVERY} steps)"
    )


if __name__ == "__main__":
    main()
