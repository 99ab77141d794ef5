"""Extraction overhead: end-to-end ``extract()`` vs the bare backbone forward, same run.

The backbone is a randomly initialised timm ViT-S/8 with ``--depth`` blocks (default 12, the
depth of DINO's ViT-S/8: its real per-image cost without downloading weights) at 224 px; the
dataset is ``--images`` JPEG-encoded images of 375x500 pixels (COCO-like) decoded on the fly.
The baseline forwards the same images, already transformed into tensors, in batches of the same
size. Design target: ratio <= 1.05 (issue 13). A shallower backbone (``--depth 2``, a quick
run) makes the forward 6x cheaper, so the same pipeline weighs 6x more in the ratio.

On a shared machine the forward's own time drifts by 10-20 % between runs, more than the
pipeline costs; so each extract run also times its backbone calls, and "extract / its own
forward time" (wall time over the forward inside the same run) is printed too: what the
pipeline adds on top of the forward it runs alongside, free of drift between runs.

    python benchmarks/bench_extract.py [--images 48] [--batch-size 8] [--depth 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from stego_probe.backbones.base import Backbone
from stego_probe.data.base import Sample, SegDataset
from stego_probe.data.transforms import stego_transform
from stego_probe.extract import extract
from stego_probe.threads import limit, threads_arg


class JpegDataset(SegDataset):
    """``n`` random-texture JPEG images (375 x 500) with random labels, decoded per access."""

    def __init__(self, n: int) -> None:
        super().__init__("bench_jpeg", "train", 27, [f"c{k}" for k in range(27)], [])
        rng = np.random.default_rng(0)
        self.blobs, self.labels = [], []
        for i in range(n):
            small = rng.integers(0, 256, (47, 63, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((500, 375), Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            self.blobs.append(buf.getvalue())
            self.labels.append(rng.integers(-1, 27, (375, 500)).astype(np.int64))
            self.ids.append(f"img{i:05d}")

    def load(self, i: int) -> Sample:
        image = Image.open(io.BytesIO(self.blobs[i])).convert("RGB")
        return Sample(image, self.labels[i], self.ids[i])


class TimmViT(Backbone):
    """Random-init timm ViT-S/8 with ``depth`` blocks; patch tokens as (B, C, h, w)."""

    name = "bench_vit_small_patch8"
    patch_size = 8
    embed_dim = 384

    def __init__(self, depth: int) -> None:
        super().__init__()
        import timm

        torch.manual_seed(0)
        self.model = timm.create_model(
            "vit_small_patch8_224", pretrained=False, depth=depth, num_classes=0
        ).eval()
        self._provenance = {"depth": depth}

    #: seconds spent in :meth:`features` since the last reset (the forward alone, timed
    #: inside whatever calls it)
    forward_s = 0.0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        tokens = self.model.forward_features(images)[:, self.model.num_prefix_tokens :]
        b, n, c = tokens.shape
        h, w = images.shape[-2] // 8, images.shape[-1] // 8
        out = tokens.transpose(1, 2).reshape(b, c, h, w)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        self.forward_s += time.perf_counter() - t0
        return out


class FreeBackbone(TimmViT):
    """Same interface and output shape as :class:`TimmViT` at almost no cost (a strided view of
    the input), to time the pipeline alone: decoding, transforms, fp16 cast, zarr writes."""

    def features(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        h, w = images.shape[-2] // 8, images.shape[-1] // 8
        return images[:, :1, ::8, ::8].expand(b, self.embed_dim, h, w).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--threads", type=threads_arg, default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    dev = torch.device(args.device)
    ds = JpegDataset(args.images)
    bb = TimmViT(args.depth).to(dev)
    tf = stego_transform(args.res, mean=bb.mean, std=bb.std)
    x = torch.stack([tf(ds[i])[0] for i in range(len(ds))])
    bs = args.batch_size

    def bare() -> float:
        # the images go to the device batch by batch and the tokens come back, as in extract
        with limit(args.threads, "large") as n_threads, torch.inference_mode():
            t0 = time.perf_counter()
            for s in range(0, len(x), bs):
                bb(x[s : s + bs].to(dev)).cpu()
            dt = time.perf_counter() - t0
        bare.n_threads = n_threads
        return dt

    def full(backbone=bb) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            store = extract(
                ds,
                backbone,
                f"{tmp}/store",
                res=args.res,
                batch_size=bs,
                num_workers=args.num_workers,
                progress=False,
                device=dev,
                threads=args.threads,
            )
            dt = time.perf_counter() - t0
            assert store.complete and store.n_images == len(ds)
        return dt

    free = FreeBackbone(1)
    bare()  # warm-up (allocator, timm kernels)
    t_bare, t_full, t_free, own, slowed = [], [], [], [], []
    for _ in range(args.repeats):  # interleaved, so load drift hits both alike
        bb.forward_s = 0.0
        t_bare.append(bare())
        fwd_bare = bb.forward_s
        bb.forward_s = 0.0
        t_full.append(full())
        own.append(t_full[-1] / bb.forward_s)  # extract's wall time / its own forward time
        slowed.append(bb.forward_s / fwd_bare)  # the forward inside extract / the bare one
        t_free.append(full(free))
    mb, mf, mo = (statistics.median(t) for t in (t_bare, t_full, t_free))
    pairwise = statistics.median(f / b for f, b in zip(t_full, t_bare))
    print(
        f"images={len(ds)} batch={bs} res={args.res} depth={args.depth} "
        f"threads={args.threads} ({bare.n_threads}) workers={args.num_workers} device={dev}"
    )
    print(f"bare backbone forward : {mb:.3f} s (runs {', '.join(f'{t:.3f}' for t in t_bare)})")
    print(f"extract end-to-end    : {mf:.3f} s (runs {', '.join(f'{t:.3f}' for t in t_full)})")
    print(f"pipeline alone        : {mo:.3f} s (extract with a zero-cost backbone)")
    print(f"ratio extract / bare  : {mf / mb:.3f} (medians; target <= 1.05)")
    print(f"ratio, median of runs : {pairwise:.3f}")
    print(f"upper bound 1 + pipeline / bare (no overlap): {1 + mo / mb:.3f}")
    print(
        f"extract / its own forward time: {statistics.median(own):.3f} (runs "
        f"{', '.join(f'{r:.3f}' for r in own)}; the pipeline cost the forward does not hide, "
        "timed inside each run, so load drift between runs drops out)"
    )
    print(
        f"forward inside extract / bare forward: {statistics.median(slowed):.3f} (runs "
        f"{', '.join(f'{r:.3f}' for r in slowed)}; above 1: the pipeline's threads slow the "
        "forward down, or the load drifted between the two runs)"
    )


if __name__ == "__main__":
    main()
