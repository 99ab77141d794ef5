"""Benchmark: a paper-scale rehearsal of one sweep point (issue 13, item 6).

Builds a train / val feature store pair at ViT-B/8 shape with a cost-free stand-in backbone and
runs one full PCA sweep point on it, stage by stage, each stage in a fresh subprocess, printing
its wall time, peak RSS (``ru_maxrss`` of that subprocess) and throughput in tokens/s, plus the
per-token costs from which the paper-scale run is extrapolated (``docs/scaling.md``,
"Paper-scale rehearsal").

The stand-in backbone: seeded random tokens with low-rank class structure (27 classes; a class
centre in a rank-16 subspace + rank-32 nuisance + isotropic noise), drawn in float32 as a
backbone's output would be, for piecewise-constant label maps (a coarse random class grid,
nearest-upsampled to the token grid and by 8 to the pixel labels, as a /8 ViT has). The drawing
is timed separately and **not** counted: the ``write`` stages time exactly the library's write
path, :meth:`FeatureStore.create` + :meth:`~FeatureStore.write_block` (float16 cast, zarr
write, checksums, ``written`` marker) + :meth:`~FeatureStore.mark_complete`. The backbone
forward pass itself (GPU work) is not part of this benchmark.

Stages (one subprocess each, in order):

1. ``write_train`` / ``write_val``: the stores (uncompressed float16, 32-image chunks);
2. ``pca``: :class:`~stego_probe.projections.PCAProjection` (D = ``--dim``) fitted on the train
   store (its default ``n_images=5000`` subset);
3. ``kmeans``: ``evaluate_stores(probes="kmeans")`` with the PCA projection (default k-means
   settings: 1M-token sample, up to 500 iterations x 3 restarts), including its val scoring;
4. ``linear``: ``evaluate_stores(probes="linear")``, default L-BFGS solver (on at most
   ``max_images`` = 1,000 train images, a seeded subset of a larger store), with the iteration
   budget ``--linear-iter`` (the library default is 300; a smaller budget keeps the default run
   short, and the cost per pass is printed so that the full budget can be extrapolated; the
   token count is passes x the images read x tokens per image);
5. ``metrics``: the fitted k-means and linear probes scored on the val store alone
   (``evaluate_stores`` with the fitted probes: no training);
6. ``distinctness``: :func:`~stego_probe.distinctness.distinctness_report` on the sweep's val
   code sample (:func:`~stego_probe.sweep.val_code_sample`, 20,000 tokens, seeds 0, 1, 2).

Threads follow the shipped policy: ``evaluate_stores(threads="auto")``, and the PCA fit and the
distinctness measures run under :func:`stego_probe.threads.limit` with the store's workload
(``"auto"``; a ViT-sized store is ``"large"``: all cores); ``OMP_WAIT_POLICY=PASSIVE`` via
:func:`stego_probe.threads.passive_wait`.

Sizes (argparse, defaults from environment variables)::

    --train  STEGO_BENCH_TRAIN   [400]    paper: 5000
    --val    STEGO_BENCH_VAL     [60]     paper: 500
    --train-grid  STEGO_BENCH_TRAIN_GRID [28]  (28x28 tokens, 224 px labels)
    --val-grid    STEGO_BENCH_VAL_GRID   [40]  (40x40 tokens, 320 px labels)
    --width  STEGO_BENCH_WIDTH   [768]
    --dim    STEGO_BENCH_DIM     [96]
    --linear-iter STEGO_BENCH_LINEAR_ITER [5]  (library default 300)
    --dir    STEGO_BENCH_DIR     (default: a temporary folder, deleted at the end)
    --paper  the paper sizes above (5,000 / 500 images, about 6 GB + 1.2 GB on disk)

The default run (400 / 60 images, about 0.5 GB on disk) takes a few minutes on 2 cores::

    python benchmarks/bench_paper_scale.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

N_CLASSES = 27
PATCH = 8  # pixels per token side (ViT-*/8)
PAPER = {"train": 5000, "val": 500}
STAGES = ("write_train", "write_val", "pca", "kmeans", "linear", "metrics", "distinctness")
DIST_TOKENS, DIST_SEEDS = 20_000, (0, 1, 2)


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=env_int("STEGO_BENCH_TRAIN", 400))
    p.add_argument("--val", type=int, default=env_int("STEGO_BENCH_VAL", 60))
    p.add_argument("--train-grid", type=int, default=env_int("STEGO_BENCH_TRAIN_GRID", 28))
    p.add_argument("--val-grid", type=int, default=env_int("STEGO_BENCH_VAL_GRID", 40))
    p.add_argument("--width", type=int, default=env_int("STEGO_BENCH_WIDTH", 768))
    p.add_argument("--dim", type=int, default=env_int("STEGO_BENCH_DIM", 96))
    p.add_argument("--linear-iter", type=int, default=env_int("STEGO_BENCH_LINEAR_ITER", 5))
    p.add_argument("--dir", default=os.environ.get("STEGO_BENCH_DIR"))
    p.add_argument("--paper", action="store_true", help="5,000 train / 500 val images")
    p.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # child processes
    a = p.parse_args(argv)
    if a.paper:
        a.train, a.val = PAPER["train"], PAPER["val"]
    return a


# ---------------------------------------------------------------------- the stand-in backbone
def stand_in(seed: int, width: int):
    """``draw(m, grid) -> (tokens (m, g, g, width) float32, labels (m, g*8, g*8) int64)``:
    seeded tokens with low-rank class structure for piecewise-constant label maps."""
    import numpy as np

    rng = np.random.default_rng(1000 + seed)
    basis = rng.normal(size=(16, width)).astype(np.float32) / 4.0
    centers = rng.normal(size=(N_CLASSES, 16)).astype(np.float32) @ basis  # rank 16
    nuisance = rng.normal(size=(32, width)).astype(np.float32) / 8.0  # rank 32

    def draw(m: int, grid: int):
        coarse = rng.integers(0, N_CLASSES, (m, 4, 4))
        rep = -(-grid // 4)
        lab = np.repeat(np.repeat(coarse, rep, 1), rep, 2)[:, :grid, :grid]
        tok = centers[lab]
        tok += rng.normal(size=(m, grid, grid, 32)).astype(np.float32) @ nuisance
        tok += rng.normal(0.0, 0.5, tok.shape).astype(np.float32)
        pix = np.repeat(np.repeat(lab, PATCH, 1), PATCH, 2)
        return tok, pix

    return draw


# ---------------------------------------------------------------------- stages (child side)
def stage_write(a, split: str) -> dict:
    from stego_probe.store import FeatureStore

    n, grid = (a.train, a.train_grid) if split == "train" else (a.val, a.val_grid)
    draw = stand_in(0 if split == "train" else 1, a.width)
    t_draw = t_write = 0.0
    t0 = time.perf_counter()
    store = FeatureStore.create(
        os.path.join(a.dir, split),
        n_images=n,
        grid=(grid, grid),
        dim=a.width,
        label_shape=(grid * PATCH, grid * PATCH),
        provenance={
            "n_classes": N_CLASSES,
            "class_names": [f"c{i}" for i in range(N_CLASSES)],
            "dataset": "rehearsal",
            "backbone": "stand-in",
            "split": split,
        },
        overwrite=True,
    )
    t_write += time.perf_counter() - t0
    for b in range(store.n_blocks):
        lo, hi = store.block_range(b)
        t0 = time.perf_counter()
        tok, pix = draw(hi - lo, grid)
        t1 = time.perf_counter()
        store.write_block(b, tok, pix, [f"{split}_{i}" for i in range(lo, hi)])
        t_draw += t1 - t0
        t_write += time.perf_counter() - t1
        del tok, pix
    t0 = time.perf_counter()
    store.mark_complete()
    t_write += time.perf_counter() - t0
    return {
        "seconds": t_write,
        "tokens": n * grid * grid,
        "images": n,
        "draw_seconds": t_draw,
        "bytes": n * grid * grid * a.width * 2,
    }


def open_stores(a):
    from stego_probe.store import FeatureStore

    return FeatureStore.open(os.path.join(a.dir, "train")), FeatureStore.open(
        os.path.join(a.dir, "val")
    )


def load_pca(a):
    from stego_probe.projections import PCAProjection

    return PCAProjection.load(os.path.join(a.dir, "pca"))


def stage_pca(a) -> dict:
    from stego_probe.projections import PCAProjection
    from stego_probe.threads import limit, store_workload

    train, _ = open_stores(a)
    t0 = time.perf_counter()
    with limit("auto", store_workload(train)):
        pca = PCAProjection(n_components=a.dim).fit(train)
    seconds = time.perf_counter() - t0
    pca.save(os.path.join(a.dir, "pca"))
    return {"seconds": seconds, "tokens": int(pca.n_samples_)}


def stage_probe(a, name: str) -> dict:
    import pickle

    from stego_probe.evaluate import evaluate_stores

    train, val = open_stores(a)
    pca = load_pca(a)
    kw = {"linear": {"max_iter": a.linear_iter}} if name == "linear" else None
    t0 = time.perf_counter()
    df, probes = evaluate_stores(
        train,
        val,
        probes=name,
        projection=pca,
        probe_kwargs=kw,
        return_probes=True,
        progress=False,
        threads="auto",
    )
    seconds = time.perf_counter() - t0
    probe = probes[name]
    with open(os.path.join(a.dir, f"{name}.pkl"), "wb") as f:
        pickle.dump(probe, f)
    miou = float(df[(df["metric"] == "miou")]["value"].iloc[0])
    out = {"seconds": seconds, "miou": miou}
    if name == "linear":
        passes = int(getattr(probe, "n_passes_", 0))
        cap = getattr(probe, "max_images", None)  # L-BFGS reads at most this many images
        images = train.n_images if cap is None else min(int(cap), train.n_images)
        out.update(
            tokens=passes * images * train.grid[0] * train.grid[1],
            images=images,
            passes=passes,
            n_iter=int(getattr(probe, "n_iter_", 0)),
            converged=bool(getattr(probe, "converged_", False)),
        )
    else:
        n = min(1_000_000, train.n_images * train.grid[0] * train.grid[1])
        out.update(tokens=n, n_iter=int(getattr(probe, "n_iter_", -1) or -1))
    return out


def stage_metrics(a) -> dict:
    import pickle

    from stego_probe.evaluate import evaluate_stores

    train, val = open_stores(a)
    pca = load_pca(a)
    probes = {}
    for name in ("kmeans", "linear"):
        with open(os.path.join(a.dir, f"{name}.pkl"), "rb") as f:
            probes[name] = pickle.load(f)
    t0 = time.perf_counter()
    df = evaluate_stores(train, val, probes=probes, projection=pca, progress=False)
    seconds = time.perf_counter() - t0
    miou = df[df["metric"] == "miou"].set_index("probe")["value"].to_dict()
    return {
        "seconds": seconds,
        "tokens": val.n_images * val.grid[0] * val.grid[1],
        "pixels": val.n_images * val.label_shape[0] * val.label_shape[1],
        "miou": {k: float(v) for k, v in miou.items()},
    }


def stage_distinctness(a) -> dict:
    from stego_probe.distinctness import distinctness_report
    from stego_probe.sweep import DISTINCTNESS_KMEANS, val_code_sample
    from stego_probe.threads import limit, store_workload

    _, val = open_stores(a)
    pca = load_pca(a)
    t0 = time.perf_counter()
    with limit("auto", store_workload(val)):
        codes, labels = val_code_sample(val, pca, n_tokens=DIST_TOKENS, seed=0)
        report = distinctness_report(
            codes, labels, n_clusters=val.n_classes, seeds=DIST_SEEDS, **DISTINCTNESS_KMEANS
        )
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tokens": len(codes), "kmeans_ari": report.get("kmeans_ari")}


def run_stage(a) -> None:
    from stego_probe.threads import passive_wait

    passive_wait()
    import numpy  # noqa: F401  (counted in the start-up RSS, as every stage imports it)

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if a.stage.startswith("write_"):
        out = stage_write(a, a.stage.split("_")[1])
    elif a.stage == "pca":
        out = stage_pca(a)
    elif a.stage in ("kmeans", "linear"):
        out = stage_probe(a, a.stage)
    elif a.stage == "metrics":
        out = stage_metrics(a)
    else:
        out = stage_distinctness(a)
    from stego_probe.threads import get_threads

    out["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["startup_rss_mib"] = base
    out["threads"] = get_threads()
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------- parent
def child(a, stage: str) -> dict:
    args = [
        sys.executable,
        os.path.abspath(__file__),
        "--stage",
        stage,
        "--dir",
        a.dir,
        "--train",
        str(a.train),
        "--val",
        str(a.val),
        "--train-grid",
        str(a.train_grid),
        "--val-grid",
        str(a.val_grid),
        "--width",
        str(a.width),
        "--dim",
        str(a.dim),
        "--linear-iter",
        str(a.linear_iter),
    ]
    t0 = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"stage {stage} failed (exit status {res.returncode})")
    line = next(x for x in reversed(res.stdout.splitlines()) if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    out["process_seconds"] = wall
    return out


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.stage:
        run_stage(a)
        return
    own_dir = a.dir is None
    a.dir = a.dir or tempfile.mkdtemp(prefix="bench_paper_scale_")
    ntr, nva = a.train * a.train_grid**2, a.val * a.val_grid**2
    print(
        f"train {a.train} x {a.train_grid}x{a.train_grid}x{a.width} float16 "
        f"({ntr * a.width * 2 / 1e9:.2f} GB, {ntr:,} tokens); val {a.val} x "
        f"{a.val_grid}x{a.val_grid}x{a.width} ({nva * a.width * 2 / 1e9:.2f} GB, {nva:,} tokens); "
        f"D={a.dim}; K={N_CLASSES}; L-BFGS max_iter={a.linear_iter}; cores={os.cpu_count()}"
    )
    results = {}
    try:
        for stage in STAGES:
            results[stage] = r = child(a, stage)
            per_m = r["seconds"] / max(r["tokens"], 1) * 1e6
            extra = {
                k: v
                for k, v in r.items()
                if k in ("passes", "n_iter", "converged", "miou", "kmeans_ari", "draw_seconds")
            }
            print(
                f"{stage:13s} {r['seconds']:8.2f} s  (process {r['process_seconds']:6.1f} s)  "
                f"peak RSS {r['rss_mib']:7.0f} MiB (start-up {r['startup_rss_mib']:4.0f})  "
                f"{r['tokens']:>11,} tokens  {r['tokens'] / max(r['seconds'], 1e-9):>11,.0f} "
                f"tok/s  {per_m:7.3f} s/Mtok  threads {r['threads']}  {json.dumps(extra)}",
                flush=True,
            )
        du = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(a.dir) for f in fs)
        print(f"disk used: {du / 1e9:.2f} GB")
        print("RESULTS " + json.dumps(results))
    finally:
        if own_dir:
            shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
