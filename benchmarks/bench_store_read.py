"""Store read throughput vs a raw ``.npy`` memmap of the same float16 tokens, same run.

Both sides read the whole token array in batches and convert it to float32 (what every reader
gets; the store converts with torch, so the memmap is also timed with the same conversion); the
page cache is warmed first so the comparison measures the software path, not the
disk. Also times ``iter_batches`` (tokens + labels + ids) and ``sample_tokens``. Design target:
store / memmap throughput >= 0.5.

    python benchmarks/bench_store_read.py [--images 128] [--batch-size 32] [--chunk-images 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from stego_probe.store import FeatureStore, to_float32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--grid", type=int, default=28)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--chunk-images", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    n, g, c, bs = args.images, args.grid, args.dim, args.batch_size

    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((n, g, g, c), dtype=np.float32).astype(np.float16)
    # piecewise-constant label maps (like real segmentations): 7x7 random blocks, upsampled
    coarse = rng.integers(-1, 27, (n, 7, 7))
    rep = -(-args.res // 7)
    labels = coarse.repeat(rep, axis=1).repeat(rep, axis=2)[:, : args.res, : args.res]
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/tokens.npy", tokens)
        store = FeatureStore.create(
            f"{tmp}/store",
            n_images=n,
            grid=(g, g),
            dim=c,
            label_shape=(args.res, args.res),
            provenance={"n_classes": 27},
            chunk_images=args.chunk_images,
        )
        for b in range(store.n_blocks):
            s, e = store.block_range(b)
            store.write_block(b, tokens[s:e], labels[s:e], [str(i) for i in range(s, e)])
        store.mark_complete()
        store = FeatureStore.open(f"{tmp}/store")
        mm = np.load(f"{tmp}/tokens.npy", mmap_mode="r")

        def read_memmap() -> float:
            t0 = time.perf_counter()
            for s in range(0, n, bs):
                np.asarray(mm[s : s + bs], dtype=np.float32)
            return time.perf_counter() - t0

        def read_memmap_torch() -> float:  # same float16 -> float32 conversion as the store
            t0 = time.perf_counter()
            for s in range(0, n, bs):
                to_float32(np.array(mm[s : s + bs]))
            return time.perf_counter() - t0

        def read_store() -> float:
            t0 = time.perf_counter()
            for s in range(0, n, bs):
                store.tokens(slice(s, s + bs))
            return time.perf_counter() - t0

        def iterate() -> float:
            t0 = time.perf_counter()
            for _ in store.iter_batches(bs):
                pass
            return time.perf_counter() - t0

        read_memmap(), read_memmap_torch(), read_store(), iterate()  # warm the page cache and zarr
        t_mm, t_mt, t_st, t_it = [], [], [], []
        for _ in range(args.repeats):
            t_mm.append(read_memmap())
            t_mt.append(read_memmap_torch())
            t_st.append(read_store())
            t_it.append(iterate())
        t0 = time.perf_counter()
        store.sample_tokens(100_000, seed=0, with_labels=True)
        t_sample = time.perf_counter() - t0

    gb = tokens.nbytes / 1e9
    mm_t, mt_t, st_t, it_t = (statistics.median(t) for t in (t_mm, t_mt, t_st, t_it))
    print(
        f"images={n} tokens={g}x{g}x{c} float16 ({gb:.3f} GB) batch={bs} chunk={args.chunk_images}"
    )
    print(f"memmap .npy -> float32   : {mm_t:.4f} s  {gb / mm_t:.2f} GB/s")
    print(f"memmap .npy, torch cast  : {mt_t:.4f} s  {gb / mt_t:.2f} GB/s")
    print(f"store.tokens -> float32  : {st_t:.4f} s  {gb / st_t:.2f} GB/s")
    print(f"store.iter_batches (+lab): {it_t:.4f} s  {gb / it_t:.2f} GB/s")
    print(f"sample_tokens(100k, labels): {t_sample:.3f} s")
    print(f"throughput ratio store / memmap: {mm_t / st_t:.3f} (target >= 0.5)")
    print(f"throughput ratio store / memmap with the same cast: {mt_t / st_t:.3f}")
    print(f"throughput ratio iter_batches / memmap: {mm_t / it_t:.3f}")


if __name__ == "__main__":
    main()
