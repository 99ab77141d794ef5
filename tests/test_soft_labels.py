"""Soft token labels: ``bilinear_matrix`` (numpy) against torch, ``soft_token_labels`` against
the autograd adjoint of bilinear upsampling, and ``sample_tokens(soft_labels=True)`` of both
store classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_store import _mem_url, _position_coded, _write

from stego_probe.codes import bilinear_matrix
from stego_probe.probes.linear import bilinear_weights
from stego_probe.store import ArrayStore, soft_token_labels
from stego_probe.store.tokens import soft_label_rows

SIZES = [(1, 1), (1, 5), (3, 3), (4, 4), (2, 4), (3, 17), (5, 23), (8, 64), (7, 10), (10, 7),
         (23, 5), (64, 8), (6, 6)]  # fmt: skip


def _torch_reference(n_in: int, n_out: int) -> torch.Tensor:
    """The torch computation ``bilinear_weights`` had before it called ``bilinear_matrix``."""
    dst = torch.arange(n_out, dtype=torch.float64)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    frac = src - i0
    a = torch.zeros((n_out, n_in), dtype=torch.float64)
    rows = torch.arange(n_out)
    a.index_put_((rows, i0), 1.0 - frac, accumulate=True)
    a.index_put_((rows, i1), frac, accumulate=True)
    return a


@pytest.mark.parametrize(("n_in", "n_out"), SIZES)
def test_bilinear_matrix_matches_torch(n_in, n_out):
    a = bilinear_matrix(n_in, n_out)
    assert a.dtype == np.float64 and a.shape == (n_out, n_in)
    np.testing.assert_array_equal(a, _torch_reference(n_in, n_out).numpy())
    np.testing.assert_array_equal(bilinear_weights(n_in, n_out).numpy(), a)
    np.testing.assert_allclose(a.sum(1), 1.0, rtol=0, atol=1e-12)
    assert ((a != 0).sum(1) <= 2).all()
    # F.interpolate along one axis (float64) is this matrix
    x = torch.from_numpy(np.random.default_rng(n_in * 100 + n_out).standard_normal((2, 3, n_in)))
    y = F.interpolate(x[..., None], size=(n_out, 1), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(y[..., 0].numpy(), x.numpy() @ a.T, rtol=0, atol=1e-12)


def test_bilinear_matrix_errors_and_torch_free_import():
    with pytest.raises(ValueError, match="positive sizes"):
        bilinear_matrix(0, 3)
    with pytest.raises(ValueError, match="positive sizes"):
        bilinear_weights(3, 0)
    import subprocess
    import sys

    code = (
        "import sys; import stego_probe.codes as c; c.bilinear_matrix(3, 7); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _random_labels(rng, n, H, W, K):
    lab = rng.integers(0, K, (n, H, W))
    junk = rng.random((n, H, W))
    lab[junk < 0.1] = -1
    lab[(junk >= 0.1) & (junk < 0.15)] = 255
    lab[(junk >= 0.15) & (junk < 0.2)] = K  # >= K: ignored too
    return lab


def _adjoint(labels, grid, K):
    """d/dx of sum(F.interpolate(x, (H, W)) * onehot) by autograd: (n, h, w, K) float64."""
    n, H, W = labels.shape
    lab = torch.from_numpy(labels)
    valid = (lab >= 0) & (lab < K)
    onehot = F.one_hot(torch.where(valid, lab, 0), K).permute(0, 3, 1, 2).double()
    onehot = onehot * valid[:, None].double()
    x = torch.zeros((n, K, *grid), dtype=torch.float64, requires_grad=True)
    y = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
    (y * onehot).sum().backward()
    return x.grad.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize(
    ("grid", "shape", "K"),
    [((3, 5), (17, 23), 4), ((8, 8), (64, 64), 27), ((4, 4), (4, 4), 3), ((5, 2), (11, 2), 2)],
)
def test_soft_token_labels_is_the_adjoint(grid, shape, K, monkeypatch):
    rng = np.random.default_rng(sum(shape) + K)
    labels = _random_labels(rng, 5, *shape, K)
    want = _adjoint(labels, grid, K)
    got = soft_token_labels(labels, grid, K)
    assert got.dtype == np.float32 and got.shape == (5, *grid, K)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # sums: the valid pixel count, per image
    valid = ((labels >= 0) & (labels < K)).sum(axis=(1, 2))
    np.testing.assert_allclose(got.sum(axis=(1, 2, 3)), valid, rtol=1e-6)
    # the block size does not change the result (one image per block here)
    import stego_probe.store.tokens as tokens_mod

    monkeypatch.setattr(tokens_mod, "SOFT_LABEL_BLOCK_BYTES", 1)
    np.testing.assert_array_equal(soft_token_labels(labels, grid, K), got)
    # other integer dtypes read the same
    np.testing.assert_array_equal(soft_token_labels(labels.astype(np.int16), grid, K), got)


def test_soft_token_labels_patch_grid():
    """H = h * p: every token's mass is p * p on a fully labelled image; p = 1 is one-hot."""
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 3, (2, 12, 16))
    soft = soft_token_labels(lab, (3, 4), 3)
    np.testing.assert_allclose(soft.sum(-1), 16.0, rtol=1e-6)
    onehot = soft_token_labels(lab, (12, 16), 3)
    np.testing.assert_array_equal(onehot, np.eye(3, dtype=np.float32)[lab])
    empty = soft_token_labels(np.zeros((0, 6, 6), int), (2, 3), 4)
    assert empty.shape == (0, 2, 3, 4)
    assert not soft_token_labels(np.full((1, 6, 6), -1), (2, 3), 4).any()


def test_soft_token_labels_errors():
    lab = np.zeros((2, 6, 8), int)
    with pytest.raises(ValueError, match="labels: expected shape"):
        soft_token_labels(lab[0], (2, 2), 3)
    with pytest.raises(ValueError, match="labels: expected shape"):
        soft_token_labels(lab[None], (2, 2), 3)
    with pytest.raises(ValueError, match="grid"):
        soft_token_labels(lab, (7, 2), 3)
    with pytest.raises(ValueError, match="grid"):
        soft_token_labels(lab, (2, 9), 3)
    with pytest.raises(ValueError, match="grid"):
        soft_token_labels(lab, (0, 2), 3)
    with pytest.raises(ValueError, match="n_classes"):
        soft_token_labels(lab, (2, 2), 0)
    with pytest.raises(ValueError, match="labels: expected an integer"):
        soft_token_labels(lab.astype(float), (2, 2), 3)


def test_soft_label_rows():
    rng = np.random.default_rng(1)
    labels = _random_labels(rng, 6, 9, 10, 3)
    image = np.array([4, 0, 4, 2, 5, 0])
    cell = np.array([0, 5, 5, 8, 11, 0])
    full = soft_token_labels(labels, (3, 4), 3).reshape(6, 12, 3)
    np.testing.assert_array_equal(
        soft_label_rows(labels, image, cell, (3, 4), 3), full[image, cell]
    )
    assert soft_label_rows(labels, image[:0], cell[:0], (3, 4), 3).shape == (0, 3)


def _check_store(store, labels, K):
    """sample_tokens with soft labels: the same draw, the rows of soft_token_labels, in order."""
    h, w = store.grid
    soft_all = soft_token_labels(store.labels(slice(None)), store.grid, K)
    tl = store.token_labels(slice(None))
    for seed, images in ((0, None), (3, 2), (1, [8, 1, 1])):
        plain = store.sample_tokens(25, seed=seed, images=images)
        x, soft = store.sample_tokens(25, seed=seed, images=images, soft_labels=True)
        x2, hard, soft2 = store.sample_tokens(
            25, seed=seed, images=images, with_labels=True, soft_labels=True
        )
        x3, hard3 = store.sample_tokens(25, seed=seed, images=images, with_labels=True)
        for t in (x, x2, x3):
            np.testing.assert_array_equal(t, plain)
        np.testing.assert_array_equal(hard, hard3)
        np.testing.assert_array_equal(soft2, soft)
        assert soft.dtype == np.float32 and soft.shape == (len(plain), K)
        pos = plain[:, :3].astype(int)  # the tokens encode (image, row, col)
        np.testing.assert_array_equal(soft, soft_all[pos[:, 0], pos[:, 1], pos[:, 2]])
        np.testing.assert_array_equal(hard, tl[pos[:, 0], pos[:, 1], pos[:, 2]])
    _, soft = store.sample_tokens(10_000, seed=0, soft_labels=True)
    valid = ((labels >= 0) & (labels < K)).sum()
    np.testing.assert_allclose(soft.sum(), valid, rtol=1e-6)


def test_sample_tokens_soft_labels(tmp_path):
    K = 3  # the n_classes _write records
    tokens = _position_coded()
    labels = _random_labels(np.random.default_rng(2), 12, 6, 8, K)
    ids = [str(i) for i in range(12)]
    disk = _write(tmp_path / "s", tokens, labels, ids, chunk_images=4)
    mem = _write(_mem_url(), tokens, labels, ids, chunk_images=5)
    arr = ArrayStore(tokens, labels, n_classes=K, ids=ids)
    for store in (disk, mem, arr):
        _check_store(store, labels, K)
    a = arr.sample_tokens(30, seed=4, with_labels=True, soft_labels=True)
    b = disk.sample_tokens(30, seed=4, with_labels=True, soft_labels=True)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match="n_classes"):
        ArrayStore(tokens, labels).sample_tokens(3, soft_labels=True)
    # an ArrayStore without labels: every pixel ignored, zero soft labels
    _, soft = ArrayStore(tokens, n_classes=K).sample_tokens(7, soft_labels=True)
    assert soft.shape == (7, K) and not soft.any()
