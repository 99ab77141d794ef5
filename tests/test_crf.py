"""Tests of the dense CRF wrapper and the hang-proof batch runner."""

from __future__ import annotations

import multiprocessing
import time
import warnings

import numpy as np
import pytest

pytest.importorskip("pydensecrf.densecrf")

from stego_probe.probes.crf import (  # noqa: E402
    REFERENCE_PARAMS,
    batch_crf,
    dense_crf,
    image_to_uint8,
)


def noisy_two_region(seed: int, size: int = 40, n_classes: int = 3, noise: float = 0.25):
    """Two flat-coloured halves, log-probs favouring the true half with salt-and-pepper flips.

    Returns image (H, W, 3) uint8, log_probs (C, H, W) float32, truth (H, W) int64.
    """
    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), dtype=np.int64)
    truth[:, size // 2 :] = 1
    image = np.repeat(np.where(truth[..., None] == 1, 200, 40), 3, axis=2).astype(np.uint8)
    image = image + rng.integers(0, 4, size=image.shape).astype(np.uint8)
    probs = np.full((n_classes, size, size), 0.1)
    probs[0] = np.where(truth == 0, 0.6, 0.3)
    probs[1] = np.where(truth == 1, 0.6, 0.3)
    flip = rng.random((size, size)) < noise  # wrong class gets 0.65, right class 0.25
    probs[0][flip] = np.where(truth[flip] == 0, 0.25, 0.65)
    probs[1][flip] = np.where(truth[flip] == 1, 0.25, 0.65)
    return image, np.log(probs).astype(np.float32), truth


def test_crf_cleans_salt_and_pepper_noise():
    image, log_probs, truth = noisy_two_region(0)
    noisy_acc = (log_probs.argmax(0) == truth).mean()
    labels, q = dense_crf(image, log_probs, return_probs=True)
    crf_acc = (labels == truth).mean()
    assert labels.dtype == np.int64 and labels.shape == truth.shape
    assert q.shape == log_probs.shape
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    assert noisy_acc < 0.8
    assert crf_acc > noisy_acc + 0.15
    assert crf_acc > 0.97


def test_crf_uses_the_image_edges():
    # flat, uninformative unary (slightly favouring class 0 everywhere) except a confident
    # seed in each half: the bilateral kernel must spread each seed over its colour region
    size = 32
    image = np.zeros((size, size, 3), np.uint8)
    image[:, size // 2 :] = 220
    probs = np.full((2, size, size), 0.5)
    probs[0] += 0.01
    probs[1] -= 0.01
    probs[:, :, size // 2 + 4 : size // 2 + 12] = np.array([0.02, 0.98])[:, None, None]
    probs[:, :, 2:10] = np.array([0.98, 0.02])[:, None, None]
    labels = dense_crf(image, np.log(probs))
    assert (labels[:, size // 2 :] == 1).mean() > 0.95  # unary alone would say class 0 here
    assert (labels[:, : size // 2] == 0).mean() > 0.95


def test_softmax_applied_to_logits_like_reference():
    # adding a constant per pixel to the log-probs does not change the result
    image, log_probs, _ = noisy_two_region(1)
    shifted = log_probs + np.random.default_rng(0).normal(size=log_probs.shape[1:])[None]
    np.testing.assert_array_equal(dense_crf(image, log_probs), dense_crf(image, shifted))


def test_bad_inputs():
    image, log_probs, _ = noisy_two_region(2)
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), log_probs)
    with pytest.raises(ValueError, match="log_probs"):
        dense_crf(image, log_probs[:, :-1])
    bad = log_probs.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dense_crf(image, bad)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        batch_crf(image, log_probs)


def test_image_to_uint8_truncates():
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    # pixel values 0.999 -> 254.745 truncated to 254; 1.5 -> clipped to 255; -1 -> 0
    values = np.array([0.999, 1.5, -1.0])
    x = ((values - 0.5) / 0.25).astype(np.float32)
    img = image_to_uint8(np.broadcast_to(x[None, None, :], (3, 1, 3)), mean, std)
    assert img.shape == (1, 3, 3) and img.dtype == np.uint8
    assert img[0, :, 0].tolist() == [254, 255, 0]


def test_batch_crf_pool_matches_serial_and_timeout_falls_back():
    data = [noisy_two_region(s, size=32) for s in range(4)]
    images = np.stack([d[0] for d in data])
    log_probs = np.stack([d[1] for d in data])
    serial = batch_crf(images, log_probs, num_workers=0)
    for i in range(4):
        np.testing.assert_array_equal(serial[i], dense_crf(images[i], log_probs[i]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean pool run must not fall back
        pooled = batch_crf(images, log_probs, num_workers=2, timeout=60.0, window=2)
    np.testing.assert_array_equal(pooled, serial)
    before = {p.pid for p in multiprocessing.active_children()}
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="timed out"):
        fallback = batch_crf(images, log_probs, num_workers=2, timeout=1e-4)
    assert time.monotonic() - start < 30
    np.testing.assert_array_equal(fallback, serial)
    # the timed-out workers were stopped, not left running
    assert {p.pid for p in multiprocessing.active_children()} <= before


def test_reference_params_are_the_defaults():
    import inspect

    sig = inspect.signature(dense_crf)
    for key, value in REFERENCE_PARAMS.items():
        assert sig.parameters[key].default == value
