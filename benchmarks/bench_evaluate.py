"""Evaluation throughput: pixels per second of the streaming pixel-level evaluation.

Ours: :func:`stego_probe.evaluate.evaluate_stores` with a fitted k-means probe (codes bilinearly
upsampled to label resolution, streamed into one confusion matrix). Baseline, measured in the
same run on the same probe and store: the reference's approach — upsample and predict every
batch, keep all predictions and labels in memory, concatenate, then build the confusion matrix
with ``sklearn.metrics.confusion_matrix`` and Hungarian-match it.

Environment variables: ``BENCH_N_VAL`` (val images, default 64), ``BENCH_RES`` (default 128).

Run: ``python benchmarks/bench_evaluate.py``
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import confusion_matrix

from stego_probe.backbones import get_backbone
from stego_probe.data import get_dataset
from stego_probe.evaluate import evaluate_stores
from stego_probe.extract import extract
from stego_probe.labels import valid_mask


def main() -> None:
    n_val = int(os.environ.get("BENCH_N_VAL", 64))
    res = int(os.environ.get("BENCH_RES", 128))
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp()
    bb = get_backbone("descriptor")
    train = extract(
        get_dataset("synthetic", split="train", n_images=64),
        bb,
        f"{tmp}/tr",
        res=res,
        progress=False,
    )
    val = extract(
        get_dataset("synthetic", split="val", n_images=n_val),
        bb,
        f"{tmp}/va",
        res=res,
        progress=False,
    )
    k = val.n_classes
    kw = {"kmeans": {"n_tokens": 50_000, "niter": 20, "nredo": 1}}
    # fit once (timed separately), then time the evaluation pass alone with the fitted probe
    _, probes = evaluate_stores(
        train, val, probes="kmeans", probe_kwargs=kw, return_probes=True, progress=False
    )
    km = probes["kmeans"]
    pixels = val.n_images * val.label_shape[0] * val.label_shape[1]

    t = time.perf_counter()
    df = evaluate_stores(train, val, probes={"kmeans": km}, batch_size=8, progress=False)
    ours = time.perf_counter() - t
    ours_acc = float(df[df["metric"] == "accuracy"]["value"].iloc[0])

    t = time.perf_counter()
    preds, labs = [], []
    for tokens, labels, _ in val.iter_batches(8):
        codes = torch.from_numpy(np.moveaxis(tokens, -1, 1).copy())
        up = F.interpolate(codes, size=val.label_shape, mode="bilinear", align_corners=False)
        flat = up.permute(0, 2, 3, 1).reshape(-1, up.shape[1]).numpy()
        preds.append(km.predict(flat))
        labs.append(labels.reshape(-1))
    pred, lab = np.concatenate(preds), np.concatenate(labs)
    ok = valid_mask(lab, k)
    M = confusion_matrix(lab[ok], pred[ok], labels=np.arange(k)).T  # rows = clusters
    rows, cols = linear_sum_assignment(M, maximize=True)
    base_acc = 100.0 * M[rows, cols].sum() / M.sum()
    base = time.perf_counter() - t

    print(f"val: {val.n_images} images at {res} px = {pixels:,} pixels, K = {k}")
    print(
        f"ours (streaming)          : {ours:6.2f} s  {pixels / ours / 1e6:6.2f} Mpx/s  "
        f"acc {ours_acc:.2f}"
    )
    print(
        f"baseline (concat+sklearn) : {base:6.2f} s  {pixels / base / 1e6:6.2f} Mpx/s  "
        f"acc {base_acc:.2f}"
    )
    print(f"speed ratio ours/baseline : {base / ours:.2f}x")


if __name__ == "__main__":
    main()
