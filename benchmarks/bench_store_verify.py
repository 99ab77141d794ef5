"""Cost of per-block checksum verification on store reads, same run, same store.

Each repeat opens the store twice: one handle verifies every block it reads (the default), the
other has verification switched off (as for a store without checksums). Both read the whole
store with ``iter_batches`` and with ``tokens(slice(None))``; a fresh handle is opened per
repeat, so every block is verified on each timed pass. Prints verified / unverified time ratios
(medians of interleaved repeats) and the raw CRC-32 throughput.

    python benchmarks/bench_store_verify.py [--images 128] [--dim 384] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import zlib

import numpy as np

from stego_probe.store import FeatureStore


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--grid", type=int, default=28)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--chunk-images", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    n, g, c = args.images, args.grid, args.dim
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((n, g, g, c), dtype=np.float32).astype(np.float16)
    labels = np.repeat(np.repeat(rng.integers(-1, 27, (n, 7, 7)), 32, 1), 32, 2)[
        :, : args.res, : args.res
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/s"
        store = FeatureStore.create(
            path, n_images=n, grid=(g, g), dim=c, label_shape=(args.res, args.res),
            provenance={"n_classes": 27}, chunk_images=args.chunk_images,
        )  # fmt: skip
        write = []
        for b in range(store.n_blocks):
            s, e = store.block_range(b)
            ids = [f"i{i}" for i in range(s, e)]
            t = time.perf_counter()
            store.write_block(b, tokens[s:e], labels[s:e], ids)
            write.append(time.perf_counter() - t)
        store.mark_complete()

        def handle(verify: bool) -> FeatureStore:
            h = FeatureStore.open(path)
            h._checksummed = verify  # off: read as a store without checksums
            return h

        reads = {"iter_batches": [], "tokens": []}
        for _ in range(args.repeats):
            for name, fn in (
                ("iter_batches", lambda h: sum(1 for _ in h.iter_batches(32))),
                ("tokens", lambda h: h.tokens(slice(None))),
            ):
                on = _timed(lambda: fn(handle(True)))  # noqa: B023
                off = _timed(lambda: fn(handle(False)))  # noqa: B023
                reads[name].append(on / off)
        raw = tokens.tobytes()
        crc_s = statistics.median(_timed(lambda: zlib.crc32(raw)) for _ in range(args.repeats))
    print(
        f"store: {n} images x {g}x{g}x{c} float16, labels {args.res}^2, chunks of {args.chunk_images}"
    )
    for name, r in reads.items():
        print(f"{name:13s} verified / unverified time: {statistics.median(r):.2f}x "
              f"(min {min(r):.2f}, max {max(r):.2f}, {len(r)} repeats)")  # fmt: skip
    print(f"CRC-32 of the float16 tokens: {len(raw) / crc_s / 1e9:.2f} GB/s; "
          f"write_block median {statistics.median(write) * 1e3:.0f} ms per block")  # fmt: skip


if __name__ == "__main__":
    main()
