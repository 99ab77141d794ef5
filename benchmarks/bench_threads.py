"""Thread policy: the same workloads under several CPU thread settings, idle and under load.

Every setting runs in a fresh process (thread pools and the OpenMP wait policy are fixed when
torch / FAISS start), the settings take turns round by round so drifting load hits them alike,
each time is the median over rounds of the best of ``--repeat`` calls, and each ratio is the
median over rounds of time / time(``default``) within the round. Settings:

* ``default``: the libraries' own thread counts (one per core here), OpenMP's default wait;
* ``1``, ``2``: :func:`stego_probe.threads.limit` with that count;
* ``auto``: :func:`stego_probe.threads.limit` ``("auto", workload)``, the package default
  (1 thread for the demo-size workloads, all cores for the ViT-sized ones and the forward);
* a ``+passive`` suffix runs the setting with ``OMP_WAIT_POLICY=PASSIVE`` (what the
  ``stego-probe`` command sets before importing torch).

Workloads (each is timed on its own):

* ``sweep_point``: :func:`stego_probe.sweep.run_point` for ``Point("pca", 24, 0)`` on a
  demo-like store pair (synthetic scenes, descriptor backbone, 60 train / 20 val images at
  64 px, C = 64) with the ``synthetic`` preset's probes (k-means, linear, 200 steps x 16
  images) and distinctness;
* ``kmeans``: the k-means probe (its CPU default engine) on 100,000 x 24 codes, K = 6, 50 iterations x 2 redos
  (the sweep point's probe), and ``kmeans_large`` on 100,000 x 384 tokens, K = 27, 10 x 1;
* ``linear``: :func:`stego_probe.evaluate.evaluate_stores` with the linear probe, 20 steps x 4
  images, on a ViT-S/8-sized random store (16 images, 28 x 28 x 384 tokens, 224 px labels,
  pixel mode), scored on the same store;
* ``stego``: 5 STEGO head training steps (D = 32, batch 8) on that store;
* ``forward``: a random-init timm ViT-S/8 (2 blocks) forward, 2 batches of 8 at 224 px.

``--load N`` starts N busy-loop processes for the duration of the run (a loaded machine) and
stops them at the end. Usage::

    python benchmarks/bench_threads.py                 # idle-ish
    python benchmarks/bench_threads.py --load 2        # two busy processes on the side
    python benchmarks/bench_threads.py --settings default,1,auto --workloads sweep_point

Measured on the shared 2-core machine (time / time(default), same round; docs/threads.md has the
full tables). Before = ``default``, after = ``auto+passive`` (what ``stego-probe`` runs):

===============  ===========  ======  ============  ======  =====  =======
load             sweep_point  kmeans  kmeans_large  linear  stego  forward
===============  ===========  ======  ============  ======  =====  =======
idle (3 rounds)  1.07         0.87    0.95          1.03    0.93   0.79
--load 2 (2)     0.21         0.14    0.46          0.72    0.69   0.62
===============  ===========  ======  ============  ======  =====  =======

(default took 5.6 s / 51 s for the sweep point idle / loaded.) Under the heavier load of other
test suites (load 6-10, 1 round), the sweep point took 128 s with ``default``, 26 s with ``1``
(0.20x) and 30 s with ``2+passive`` (0.24x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = ("sweep_point", "kmeans", "kmeans_large", "linear", "stego", "forward")
#: Workloads the policy counts as large-tensor work (``"auto"``: all cores): ViT-sized tokens
#: (:func:`stego_probe.threads.store_workload`) and the backbone forward.
LARGE = ("kmeans_large", "linear", "stego", "forward")
SETTINGS = ("default", "2", "2+passive", "1", "auto", "auto+passive")


# ------------------------------------------------------------------------------------ child


def _stores(root: Path):
    """The demo-size store pair and a ViT-S/8-sized random store (built once, then opened)."""
    import numpy as np

    from stego_probe.store import FeatureStore
    from stego_probe.sweep import ensure_stores, load_config

    config = load_config(
        "synthetic",
        {
            "train": {"limit": 60},
            "val": {"limit": 20},
            "methods": ["pca"],
            "dims": [24],
            "seeds": [0],
            "device": "cpu",
        },
    )
    train, val = ensure_stores(config, root, progress=False)
    path = root / "vits8_store"
    if not (FeatureStore.exists(path) and FeatureStore.open(path, allow_incomplete=True).complete):
        rng = np.random.default_rng(0)
        big = FeatureStore.create(
            path,
            n_images=16,
            grid=(28, 28),
            dim=384,
            label_shape=(224, 224),
            provenance={"dataset": "bench", "backbone": "bench", "n_classes": 27, "split": "x"},
            chunk_images=16,
            overwrite=True,
        )
        for b in range(big.n_blocks):
            lo, hi = big.block_range(b)
            tokens = rng.standard_normal((hi - lo, 28, 28, 384)).astype(np.float16)
            labels = rng.integers(-1, 27, (hi - lo, 224, 224)).astype(np.int64)
            big.write_block(b, tokens, labels, [f"i{i}" for i in range(lo, hi)])
        big.mark_complete()
    return config, train, val, FeatureStore.open(path)


def _workload(name: str, root: Path):
    """A zero-argument callable running workload ``name`` once."""
    import numpy as np
    import torch

    config, train, val, big = _stores(root)
    if name == "sweep_point":
        from stego_probe.sweep import Point, run_point

        def call():
            cache = root / "projections" / f"p{os.getpid()}_{time.time_ns()}"
            run_point(config, Point("pca", 24, 0), train, val, cache)

        return call
    if name in ("kmeans", "kmeans_large"):
        from stego_probe.probes.kmeans import KMeansProbe

        rng = np.random.default_rng(0)
        n, d, k, niter, nredo = (
            (100_000, 24, 6, 50, 2) if name == "kmeans" else (100_000, 384, 27, 10, 1)
        )
        centres = rng.standard_normal((k, d)).astype(np.float32) * 3
        x = centres[rng.integers(0, k, n)] + rng.standard_normal((n, d)).astype(np.float32)
        return lambda: KMeansProbe(k, niter=niter, nredo=nredo, random_state=0, gpu=False).fit(x)
    if name == "linear":
        from stego_probe.evaluate import evaluate_stores

        def call():
            # evaluate_stores applies its own "auto" policy: run it under the outer setting
            evaluate_stores(
                big,
                big,
                probes=["linear"],
                steps=20,
                train_batch_size=4,
                probe_kwargs={"linear": {"device": "cpu"}},
                batch_size=8,
                progress=False,
            )

        return call
    if name == "stego":
        from stego_probe.projections.stego import StegoHead

        return lambda: StegoHead(
            n_components=32, preset="synthetic", steps=5, batch_size=8, progress=False
        ).fit(big)
    if name == "forward":
        import timm

        torch.manual_seed(0)
        model = timm.create_model(
            "vit_small_patch8_224", pretrained=False, depth=2, num_classes=0
        ).eval()
        x = torch.randn(16, 3, 224, 224)

        @torch.no_grad()
        def call():
            for s in range(0, len(x), 8):
                model.forward_features(x[s : s + 8])

        return call
    raise ValueError(f"unknown workload {name!r}; expected one of {WORKLOADS}")


def child(setting: str, workloads: list[str], root: Path, repeat: int) -> dict:
    """Run ``workloads`` under ``setting`` in this process; best-of-``repeat`` seconds each."""
    import contextlib

    import faiss  # noqa: F401 - load the OpenMP runtimes under the parent's environment
    import torch  # noqa: F401

    from stego_probe.threads import limit

    threads = setting.split("+")[0]
    out = {}
    for name in workloads:
        call = _workload(name, root)
        kind = "large" if name in LARGE else "small"
        ctx = contextlib.nullcontext() if threads == "default" else limit(threads, kind)
        # under "default" the library calls see threads=None: they keep the libraries' counts
        with ctx:
            if threads == "default":
                _no_policy()
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                call()
                best = min(best, time.perf_counter() - t0)
        out[name] = best
    return out


def _no_policy() -> None:
    """Make the package's "auto" mean "leave the library defaults" (the "default" setting)."""
    import stego_probe.threads as threads

    threads.resolve_threads = lambda t="auto", workload="small": None


# ------------------------------------------------------------------------------------ parent


def _busy_loop() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _run_child(setting: str, workloads: list[str], root: Path, repeat: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "STEGO_PROBE_THREADS"):
        env.pop(var, None)
    if setting.endswith("+passive"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, __file__, "--child", setting, "--root", str(root)]
    cmd += ["--workloads", ",".join(workloads), "--repeat", str(repeat)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"setting {setting} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma list (see above)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list (see above)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of all settings (2)")
    ap.add_argument("--repeat", type=int, default=2, help="calls per workload and process (2)")
    ap.add_argument("--load", type=int, default=0, help="busy-loop processes on the side (0)")
    ap.add_argument("--root", default=None, help="keep the stores here (default: a temp dir)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    bad = sorted(set(workloads) - set(WORKLOADS))
    if bad:
        ap.error(f"--workloads: unknown {bad}; expected {list(WORKLOADS)}")
    if args.child:
        print(json.dumps(child(args.child, workloads, Path(args.root), args.repeat)))
        return
    settings = [s for s in args.settings.split(",") if s]
    root = Path(args.root or tempfile.mkdtemp(prefix="bench_threads_"))
    _stores(root)  # build the stores before the load starts and outside the timings
    load = [_busy_loop() for _ in range(args.load)]
    times: dict[str, dict[str, list[float]]] = {s: {w: [] for w in workloads} for s in settings}
    loads = []
    try:
        for r in range(args.rounds):
            # each round starts one setting later, so no setting always runs first
            for s in settings[r % len(settings) :] + settings[: r % len(settings)]:
                t = _run_child(s, workloads, root, args.repeat)
                for w in workloads:
                    times[s][w].append(t[w])
                print(
                    f"round {r + 1} {s:>14}: " + "  ".join(f"{w} {t[w]:.2f}" for w in workloads),
                    flush=True,
                )
            loads.append(os.getloadavg()[0])
    finally:
        for p in load:
            p.kill()
            p.wait()
    base = "default" if "default" in settings else settings[0]
    med = {s: {w: statistics.median(v) for w, v in d.items()} for s, d in times.items()}
    # ratios within a round (settings measured minutes apart, under the same load), then median
    ratio = {
        s: {
            w: statistics.median(a / b for a, b in zip(times[s][w], times[base][w]))
            for w in workloads
        }
        for s in settings
    }
    print(
        f"\ncores={os.cpu_count()}, {args.load} busy-loop processes, 1-min load average at the "
        f"end of each round {', '.join(f'{x:.1f}' for x in loads)}; seconds: median over "
        f"{args.rounds} rounds of the best of {args.repeat}; ratio: median over rounds of "
        f"time / time({base}) in the same round"
    )
    print(f"{'setting':>14} " + " ".join(f"{w:>19}" for w in workloads))
    for s in settings:
        cells = [f"{med[s][w]:7.2f}s ({ratio[s][w]:5.2f}x)" for w in workloads]
        print(f"{s:>14} " + " ".join(f"{c:>19}" for c in cells))


if __name__ == "__main__":
    main()
