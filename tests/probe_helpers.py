"""Test helpers around the probes (import with ``from probe_helpers import ...``; pytest puts
``tests/`` on the path)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from stego_probe.codes import flatten_codes, to_numpy, upsample_codes
from stego_probe.metrics import ConfusionAccumulator


def assign_confusion(probe, codes, labels, accumulator: ConfusionAccumulator):
    """Predict with ``probe`` and add to ``accumulator`` without keeping the predictions.

    The reference for ``predict(codes, size=)``: image-layout codes ``(N, D, h, w)`` with
    labels ``(N, H, W)`` are upsampled to the labels' resolution one image at a time
    (:func:`~stego_probe.codes.upsample_codes`, code first, then assignment) and every pixel is
    predicted in token layout (the FAISS search, not the affine scores of ``predict(size=)``);
    token-layout codes ``(M, D)`` take labels ``(M,)``. Returns the accumulator.
    """
    if accumulator.n_clusters != probe.n_clusters:
        raise ValueError(
            f"accumulator: has n_clusters={accumulator.n_clusters}, the probe {probe.n_clusters}"
        )
    x = to_numpy(codes, "codes")
    y = np.asarray(to_numpy(labels, "labels"))
    if x.ndim == 2:
        if y.shape != (x.shape[0],):
            raise ValueError(f"labels: expected shape ({x.shape[0]},), got {y.shape}")
        accumulator.update(probe.predict(x), y)
        return accumulator
    if x.ndim != 4 or y.ndim != 3 or y.shape[0] != x.shape[0]:
        raise ValueError(f"codes {x.shape} / labels {y.shape}: expected (N, D, h, w), (N, H, W)")
    for i in range(len(x)):
        flat, lead = flatten_codes(upsample_codes(x[i : i + 1], y.shape[1:]))
        accumulator.update(probe.predict(flat).reshape(lead), y[i : i + 1])
    return accumulator


def assign_confusion_stream(probe, batches: Iterable, accumulator: ConfusionAccumulator):
    """:func:`assign_confusion` over an iterable of ``(codes, labels)`` batches."""
    for codes, labels in batches:
        assign_confusion(probe, codes, labels, accumulator)
    return accumulator
