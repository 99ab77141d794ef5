"""Benchmark: the k-means probe's stopping rule on the synthetic world (docs/evaluation.md).

On the stores of the ``synthetic`` sweep preset (procedural scenes, ``descriptor`` backbone,
C = 64; 200 train / 50 val images at 64 px unless changed below) and on PCA / random
projections of them, the :class:`~stego_probe.probes.KMeansProbe` is fitted with several
stopping rules and scored in pixel mode (``evaluate_stores``, Hungarian matching) for several
k-means seeds. The projection is fitted once (seed 0), so only the k-means seed varies.

Rules (``STEGO_BENCH_RULES``, comma list of ``name=tol/niter/nredo``; ``none`` = ``tol=None``):

* ``converged``: ``tol=0``, ``niter=1000``, 3 restarts (iterate to a fixed point);
* ``early``: ``tol=1e-4``, ``niter=100``, 3 restarts, the old default (stops when the objective
  changes by <= 1e-4);
* ``default``: the probe's current defaults.

Printed per representation and rule: iterations run (mean and range over seeds, chosen restart),
how many fits reached a fixed point, mIoU mean ± std over seeds, the largest |mIoU - converged
mIoU| of a seed, and the mean fit time. A final line aggregates over representations.

Environment variables (defaults in brackets): ``STEGO_BENCH_SEEDS`` [5],
``STEGO_BENCH_TRAIN`` train images [200], ``STEGO_BENCH_VAL`` [50], ``STEGO_BENCH_RES`` [64],
``STEGO_BENCH_DIMS`` [3,6,12,24,48], ``STEGO_BENCH_METHODS`` [dino,pca,rp],
``STEGO_BENCH_THREADS`` [1].

With ``STEGO_BENCH_TIME_N`` set, only the cost of one Lloyd iteration is measured instead, on
that many Gaussian-mixture tokens of width ``STEGO_BENCH_TIME_D`` [768] with ``K`` =
``STEGO_BENCH_TIME_K`` [27] (the difference between a 30- and a 10-iteration fit with
``tol=None``, divided by 20, so the k-means++ seeding is excluded). Quick run::

    STEGO_BENCH_SEEDS=2 STEGO_BENCH_DIMS=6 python benchmarks/bench_kmeans_stopping.py
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings

import numpy as np

from stego_probe.evaluate import evaluate_stores
from stego_probe.probes.kmeans import DEFAULT_NITER, DEFAULT_NREDO, DEFAULT_TOL


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def parse_rules(text: str) -> dict[str, dict]:
    rules = {}
    for item in text.split(","):
        name, spec = item.split("=")
        tol, niter, nredo = spec.split("/")
        rules[name] = {
            "tol": None if tol == "none" else float(tol),
            "niter": int(niter),
            "nredo": int(nredo),
        }
    return rules


def stores(tmp: str, n_train: int, n_val: int, res: int):
    from stego_probe.backbones import get_backbone
    from stego_probe.data import get_dataset
    from stego_probe.extract import extract

    bb = get_backbone("descriptor")
    out = []
    for split, n in (("train", n_train), ("val", n_val)):
        ds = get_dataset("synthetic", split=split, n_images=n)
        out.append(extract(ds, bb, os.path.join(tmp, split), res=res, progress=False))
    return out


def representations(train, methods, dims):
    from stego_probe.projections import get_projection

    reps = []
    for method in methods:
        if method == "dino":
            reps.append(("dino", train.dim, None))
            continue
        for d in dims:
            proj = get_projection(method, d, random_state=0).fit(train)
            reps.append((method, d, proj))
    return reps


def time_per_iteration(n: int, d: int, k: int) -> None:
    from stego_probe.probes.kmeans import KMeansProbe

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(k, d)).astype(np.float32) * 1.5
    x = centres[rng.integers(0, k, n)] + rng.normal(size=(n, d)).astype(np.float32)
    times = {}
    for niter in (10, 30):
        t0 = time.perf_counter()
        KMeansProbe(k, n_tokens=n, niter=niter, nredo=1, tol=None, gpu=False).fit(x)
        times[niter] = time.perf_counter() - t0
    per = (times[30] - times[10]) / 20
    print(
        f"{n} tokens x D={d}, K={k}: {per:.3f} s per Lloyd iteration "
        f"(fit with 10 iterations {times[10]:.1f} s, 30 iterations {times[30]:.1f} s)"
    )


def main() -> None:
    import faiss
    import torch

    threads = int(env("STEGO_BENCH_THREADS", "1"))
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    if os.environ.get("STEGO_BENCH_TIME_N"):
        time_per_iteration(
            int(env("STEGO_BENCH_TIME_N", "0")),
            int(env("STEGO_BENCH_TIME_D", "768")),
            int(env("STEGO_BENCH_TIME_K", "27")),
        )
        return
    seeds = list(range(int(env("STEGO_BENCH_SEEDS", "5"))))
    dims = [int(d) for d in env("STEGO_BENCH_DIMS", "3,6,12,24,48").split(",")]
    methods = env("STEGO_BENCH_METHODS", "dino,pca,rp").split(",")
    default = f"{'none' if DEFAULT_TOL is None else DEFAULT_TOL}/{DEFAULT_NITER}/{DEFAULT_NREDO}"
    rules = parse_rules(
        env("STEGO_BENCH_RULES", f"converged=0/1000/3,early=1e-4/100/3,default={default}")
    )
    with tempfile.TemporaryDirectory() as tmp:
        train, val = stores(
            tmp,
            int(env("STEGO_BENCH_TRAIN", "200")),
            int(env("STEGO_BENCH_VAL", "50")),
            int(env("STEGO_BENCH_RES", "64")),
        )
        print(
            f"train {train.n_images} images x {train.grid} tokens, val {val.n_images}; "
            f"K = {val.n_classes}; seeds {seeds}; {threads} thread(s)"
        )
        summary = {
            name: {"iters": [], "conv": [], "dev": [], "std": [], "time": []} for name in rules
        }
        header = f"{'rep':>8} {'rule':>10} {'iter mean [min-max]':>20} {'fixed pt':>8} "
        print(header + f"{'mIoU mean ± std':>16} {'max |d| vs conv':>15} {'fit s':>6}")
        for method, d, proj in representations(train, methods, dims):
            miou: dict[str, list[float]] = {}
            for name, kw in rules.items():
                iters, conv, times, values = [], [], [], []
                for seed in seeds:
                    t0 = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        frame, fitted = evaluate_stores(
                            train, val, probes="kmeans", projection=proj, seed=seed,
                            n_tokens=10**7, probe_kwargs={"kmeans": kw}, progress=False,
                            return_probes=True,
                        )  # fmt: skip
                    times.append(time.perf_counter() - t0)
                    km = fitted["kmeans"]
                    iters.append(km.n_iter_)
                    conv.append(km.converged_)
                    values.append(float(frame[frame.metric == "miou"]["value"].item()))
                miou[name] = values
                s = summary[name]
                s["iters"] += iters
                s["conv"] += conv
                s["time"] += times
                s["std"].append(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
                dev = (
                    float(np.max(np.abs(np.subtract(values, miou["converged"]))))
                    if "converged" in miou
                    else float("nan")
                )
                s["dev"].append(dev)
                print(
                    f"{method + str(d):>8} {name:>10} "
                    f"{np.mean(iters):8.1f} [{min(iters):3d}-{max(iters):4d}]     "
                    f"{sum(conv):3d}/{len(conv):<3d} "
                    f"{np.mean(values):7.2f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:5.2f}"
                    f" {dev:15.2f} {np.mean(times):6.2f}"
                )
        print("\nover all representations:")
        for name, s in summary.items():
            it = np.array(s["iters"])
            print(
                f"{name:>10}: iterations {it.mean():.1f} (range {it.min()}-{it.max()}), fixed point "
                f"{sum(s['conv'])}/{len(s['conv'])}, per-rep seed std of mIoU: mean "
                f"{np.mean(s['std']):.2f}, max {np.max(s['std']):.2f}; max |mIoU - converged| "
                f"{np.nanmax(s['dev']) if np.isfinite(s['dev']).any() else float('nan'):.2f}; "
                f"fit+eval {np.mean(s['time']):.2f} s"
            )


if __name__ == "__main__":
    main()
