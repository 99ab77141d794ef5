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


def colour_scene(seed: int = 0, size: int = 48, n_classes: int = 4):
    """A colour image (distinct hues per region) and noisy log-probs of its regions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    truth = (yy >= size // 2).astype(np.int64) * 2 + (xx >= size // 2)
    palette = np.array([[220, 30, 60], [40, 180, 90], [30, 60, 210], [200, 190, 40]])
    image = palette[truth] + rng.integers(-25, 26, size=(size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    logits = rng.normal(0, 1.0, (n_classes, size, size))
    logits[truth, yy, xx] += 0.8
    return image, torch_free_log_softmax(logits).astype(np.float32)


def torch_free_log_softmax(z):
    z = z - z.max(axis=0, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=0, keepdims=True))


def reference_recipe_crf(image_rgb, log_probs):
    """The reference's CRF call, written out from PROTOCOL §5: softmax, clipped unary,
    Gaussian (1, 3), bilateral (67, 3, 4) on the image reversed to BGR, 10 iterations."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    c, h, w = log_probs.shape
    probs = np.exp(torch_free_log_softmax(log_probs.astype(np.float64)))
    unary = np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32), clip=1e-5))
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=1, compat=3)
    bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
    d.addPairwiseBilateral(sxy=67, srgb=3, rgbim=bgr, compat=4)
    q = np.asarray(d.inference(10), dtype=np.float32).reshape(c, h, w)
    return q


def test_crf_feeds_bgr_like_the_reference_on_colour_images():
    image, log_probs = colour_scene(0)
    labels, q = dense_crf(image, log_probs, return_probs=True)
    ref_q = reference_recipe_crf(image, log_probs)
    np.testing.assert_allclose(q, ref_q, atol=1e-5)
    np.testing.assert_array_equal(labels, ref_q.argmax(0))
    # the RGB order is a different approximation of the same kernel: marginals differ
    rgb_labels, rgb_q = dense_crf(image, log_probs, return_probs=True, channel_order="rgb")
    assert np.abs(rgb_q - q).max() > 1e-2
    # batch_crf forwards the order and defaults to BGR too
    batch = batch_crf(image[None], log_probs[None])
    np.testing.assert_array_equal(batch[0], labels)
    np.testing.assert_array_equal(
        batch_crf(image[None], log_probs[None], channel_order="rgb")[0], rgb_labels
    )


def test_grey_images_are_order_free_and_bad_order_is_refused():
    image, log_probs = colour_scene(1)
    grey = np.repeat(image.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    _, q_bgr = dense_crf(grey, log_probs, return_probs=True)
    _, q_rgb = dense_crf(grey, log_probs, return_probs=True, channel_order="rgb")
    np.testing.assert_array_equal(q_bgr, q_rgb)
    with pytest.raises(ValueError, match="channel_order"):
        dense_crf(image, log_probs, channel_order="hsv")
