"""Benchmark: STEGO training steps/s from stored tokens vs. with a backbone forward per step.

The same training loop (:func:`stego_probe.projections.stego.train_stego`, same batch, same head,
same KNN table) is run on three token sources:

* ``store``: a zarr :class:`FeatureStore` read every step (what ``StegoHead.fit`` does for stores
  too large for memory);
* ``memory``: the same store preloaded in memory (what ``fit`` does for small stores);
* ``backbone``: the baseline of the reference, which runs the frozen ViT on the anchor and the
  positive images every step (a random-init timm ViT, no weights are downloaded).

Steps/s exclude set-up (``t(steps) - t(0)``); the ratio store / backbone is printed.

Environment variables: ``STEGO_BENCH_MODEL`` timm model [vit_tiny_patch16_224],
``STEGO_BENCH_N`` images [64], ``STEGO_BENCH_BATCH`` [8], ``STEGO_BENCH_STEPS`` [10],
``STEGO_BENCH_DIM`` D [32], ``STEGO_BENCH_DEVICE`` [cuda if available, else cpu],
``STEGO_BENCH_THREADS`` torch CPU threads [torch default].
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import timm
import torch

from stego_probe.projections.stego import compute_knns, get_preset, train_stego
from stego_probe.store import FeatureStore


class BackboneTokens:
    """Store-like token source that runs ``model`` on stored images at every ``tokens`` call."""

    def __init__(self, model, images: torch.Tensor, labels: np.ndarray, device, n_classes: int):
        self.model, self.images, self._labels, self.device = model, images, labels, device
        self.n_images = len(images)
        p = model.patch_embed.patch_size[0]
        self.grid = (images.shape[2] // p, images.shape[3] // p)
        self.dim = model.embed_dim
        self.n_classes = n_classes
        self.ids = [str(i) for i in range(self.n_images)]
        self.provenance = {"n_classes": n_classes}

    @torch.no_grad()
    def tokens(self, idx) -> np.ndarray:
        x = self.images[np.atleast_1d(idx)].to(self.device)
        out = self.model.forward_features(x)[:, self.model.num_prefix_tokens :]
        return out.reshape(len(x), *self.grid, self.dim).float().cpu().numpy()

    def labels(self, idx) -> np.ndarray:
        return self._labels[np.atleast_1d(idx)]


def timed(source, cfg, knn, n_classes, device, preload_bytes) -> float:
    """Seconds of ``train_stego`` on ``source`` (no validation, no progress bar)."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_stego(
        source,
        cfg,
        n_classes=n_classes,
        knn=knn,
        device=device,
        progress=False,
        preload_bytes=preload_bytes,
    )
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    name = os.environ.get("STEGO_BENCH_MODEL", "vit_tiny_patch16_224")
    n = int(os.environ.get("STEGO_BENCH_N", 64))
    batch = int(os.environ.get("STEGO_BENCH_BATCH", 8))
    steps = int(os.environ.get("STEGO_BENCH_STEPS", 10))
    dim = int(os.environ.get("STEGO_BENCH_DIM", 32))
    device = os.environ.get("STEGO_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
    if "STEGO_BENCH_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["STEGO_BENCH_THREADS"]))
    n_classes, res = 3, 224
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0).eval().to(device)
    images = torch.randn(n, 3, res, res)
    labels = np.random.default_rng(0).integers(0, n_classes, (n, res, res))
    live = BackboneTokens(model, images, labels, device, n_classes)
    print(
        f"model={name} C={live.dim} grid={live.grid} N={n} B={batch} D={dim} steps={steps} "
        f"device={device} torch_threads={torch.get_num_threads()}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore.create(
            os.path.join(tmp, "store"),
            n_images=n,
            grid=live.grid,
            dim=live.dim,
            label_shape=(res, res),
            provenance={"n_classes": n_classes},
            chunk_images=16,
        )
        for b in range(store.n_blocks):
            lo, hi = store.block_range(b)
            store.write_block(b, live.tokens(np.arange(lo, hi)), labels[lo:hi], live.ids[lo:hi])
        store.mark_complete()
        store = FeatureStore.open(store.path)
        knn = compute_knns(store, 8)
        cfg = {
            **get_preset("potsdam3").to_dict(),
            "dim": dim,
            "batch_size": batch,
            "knn_k": 8,
            "neg_index": "derangement",
            "knn_self_rank0": False,
            "drop_last": True,
            "val_batch_size": 8,
        }
        rates = {}
        for label, source, preload in (
            ("store", store, 0),
            ("memory", store, 2**30),
            ("backbone", live, 0),
        ):
            t0 = timed(source, {**cfg, "steps": 0}, knn, n_classes, device, preload)
            t1 = timed(source, {**cfg, "steps": steps}, knn, n_classes, device, preload)
            rates[label] = steps / max(t1 - t0, 1e-9)
            print(f"{label:9s}: {rates[label]:8.2f} steps/s  (set-up {t0:.2f} s)")
    print(f"speed-up stored tokens vs backbone forward: {rates['store'] / rates['backbone']:.1f}x")
    print(
        f"speed-up in-memory tokens vs backbone forward: {rates['memory'] / rates['backbone']:.1f}x"
    )


if __name__ == "__main__":
    main()
