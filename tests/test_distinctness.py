"""Distinctness measures: sklearn equality, hand-computed separability, k-means agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from stego_probe.distinctness import (
    REPORT_KEYS,
    cluster_statistics,
    distinctness_report,
    kmeans_convergence,
    label_separability,
    stratified_subsample,
)
from stego_probe.results import RESULT_COLUMNS, make_rows


def _blobs(n_per: int = 60, k: int = 4, d: int = 8, spread: float = 0.3, seed: int = 0):
    """``k`` tight clusters around orthogonal directions (distinct in cosine and L2)."""
    rng = np.random.default_rng(seed)
    centers = np.eye(k, d) * 5.0
    x = np.repeat(centers, n_per, axis=0) + rng.normal(0, spread, (k * n_per, d))
    return x.astype(np.float32), np.repeat(np.arange(k), n_per)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cluster_statistics_equal_sklearn_on_full_sample():
    x, y = _blobs(spread=2.0)
    x = x * np.random.default_rng(1).uniform(0.5, 3, (len(x), 1)).astype(np.float32)  # norms vary
    stats = cluster_statistics(x, y, n_tokens=10_000, seeds=(0, 1))
    assert stats["silhouette"] == pytest.approx(silhouette_score(x, y, metric="cosine"), abs=1e-6)
    assert stats["silhouette_std"] == pytest.approx(0.0, abs=1e-12)  # full set for every seed
    xn = _unit(x.astype(np.float64))
    assert stats["davies_bouldin"] == pytest.approx(davies_bouldin_score(xn, y), rel=1e-5)
    assert stats["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(xn, y), rel=1e-5)
    # L2 normalisation matters for DB/CH: the raw-code values differ
    assert abs(stats["davies_bouldin"] - davies_bouldin_score(x, y)) > 1e-3
    # ignored ids (-1) are dropped; 4-D layout with (N, h, w) ids gives the same numbers
    x4 = np.ascontiguousarray(x.reshape(4, 6, 10, 8).transpose(0, 3, 1, 2))
    same = cluster_statistics(torch.from_numpy(x4), y.reshape(4, 6, 10), seeds=(0,))
    assert same["silhouette"] == pytest.approx(stats["silhouette"], abs=1e-6)
    y_ign = y.copy()
    y_ign[::7] = -1
    keep = y_ign >= 0
    dropped = cluster_statistics(x, y_ign, seeds=(0,))
    assert dropped["n_tokens"] == keep.sum()
    assert dropped["silhouette"] == pytest.approx(
        silhouette_score(x[keep], y[keep], metric="cosine"), abs=1e-6
    )


def test_full_sample_silhouette_computed_once_with_the_old_outputs(monkeypatch):
    """n_tokens >= M: every seed's sample is all tokens, so one silhouette call serves them all
    and the outputs are exactly those of one call per seed (the previous code)."""
    import stego_probe.distinctness as dist
    from stego_probe.codes import l2_normalize

    x, y = _blobs(spread=2.0)
    seeds = (0, 1, 2)
    xn = l2_normalize(x)
    old = [
        float(silhouette_score(xn[i], y[i], metric="cosine"))
        for i in (stratified_subsample(y, 10_000, s) for s in seeds)
    ]
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return silhouette_score(*args, **kwargs)

    monkeypatch.setattr(dist, "silhouette_score", counted)
    stats = cluster_statistics(x, y, n_tokens=10_000, seeds=seeds)
    assert len(calls) == 1
    assert stats["silhouette_per_seed"] == old
    assert stats["silhouette"] == float(np.mean(old)) and stats["silhouette_std"] == 0.0
    calls.clear()
    cluster_statistics(x, y, n_tokens=100, seeds=seeds)  # a real subsample: one call per seed
    assert len(calls) == len(seeds)


def test_silhouette_subsample_is_stratified_and_varies_with_seed():
    rng = np.random.default_rng(0)
    y = np.concatenate([np.zeros(900, int), np.ones(90, int), np.full(10, 2)])
    idx = stratified_subsample(y, 100, seed=0)
    counts = np.bincount(y[idx], minlength=3)
    np.testing.assert_array_equal(counts, [90, 9, 1])
    assert len(np.unique(idx)) == len(idx)
    x = rng.normal(size=(1000, 5)).astype(np.float32)
    stats = cluster_statistics(x, y, n_tokens=100, seeds=(0, 1, 2))
    assert len(set(stats["silhouette_per_seed"])) == 3 and stats["silhouette_std"] > 0
    with pytest.raises(ValueError, match="2 <= number of clusters"):
        cluster_statistics(x, np.zeros(1000, int))


def test_label_separability_hand_computed_two_classes():
    codes = np.array(
        [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8], [-5.0, 3.0], [2.0, -9.0]],
        dtype=np.float32,
    )
    labels = np.array([0, 0, 1, 1, -1, 255])  # the last two are ignored (n_classes = 2)
    out = label_separability(codes * np.array([[1], [3], [2], [1], [1], [1]]), labels, 2)
    # means m0 = (.9, .3), m1 = (.3, .9), m = (.6, .6): tr S_W = 4 * 0.1, tr S_B = 4 * 0.18
    assert out["scatter_ratio"] == pytest.approx(0.72 / 0.4)
    assert out["intra_cos"] == pytest.approx(0.8)  # both within-class pairs have cos 0.8
    assert out["inter_cos"] == pytest.approx((0.0 + 0.6 + 0.6 + 0.96) / 4)
    # centroid directions (3, 1)/sqrt(10), (1, 3)/sqrt(10): margins 2/sqrt10, 0.4/sqrt10 (x2)
    assert out["centroid_margin"] == pytest.approx(1.2 / math.sqrt(10))
    assert out["margin_positive_frac"] == 1.0
    assert out["n_tokens"] == 4 and out["n_classes_present"] == 2
    # swap the labels of (0.8, 0.6) and (0.6, 0.8): centroid directions (1, 2)/sqrt5 and
    # (2, 1)/sqrt5; both swapped tokens are now closer to the other class's centroid
    swapped = label_separability(codes[:4], np.array([1, 0, 0, 1]), 2)
    assert swapped["margin_positive_frac"] == 0.5
    expected = (2 * 1.0 - 2 * 0.2) / 4 / math.sqrt(5)  # margins 1, 1, -0.2, -0.2 (/sqrt5)
    assert swapped["centroid_margin"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least 2 classes"):
        label_separability(codes[:4], np.array([0, 0, -1, 7]), 2)
    with pytest.raises(ValueError, match="labels: expected 6"):
        label_separability(codes, labels[:5], 2)


def test_label_separability_matches_brute_force():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 6)) + np.repeat(rng.normal(size=(3, 6)) * 2, 30, axis=0)
    y = np.repeat([0, 1, 2], 30)
    out = label_separability(x.astype(np.float32), y, 3, chunk_size=7)
    xn = _unit(x)
    cos = xn @ xn.T
    same = (y[:, None] == y[None, :]) & ~np.eye(90, dtype=bool)
    diff = y[:, None] != y[None, :]
    assert out["intra_cos"] == pytest.approx(cos[same].mean(), rel=1e-5)
    assert out["inter_cos"] == pytest.approx(cos[diff].mean(), rel=1e-5)
    means = np.stack([xn[y == k].mean(0) for k in range(3)])
    sw = sum(((xn[y == k] - means[k]) ** 2).sum() for k in range(3))
    sb = sum(30 * ((means[k] - xn.mean(0)) ** 2).sum() for k in range(3))
    assert out["scatter_ratio"] == pytest.approx(sb / sw, rel=1e-5)
    c = _unit(means)
    s = xn @ c.T
    own = s[np.arange(90), y]
    s[np.arange(90), y] = -np.inf
    assert out["centroid_margin"] == pytest.approx((own - s.max(1)).mean(), rel=1e-5)


def test_kmeans_convergence_agreement_blobs_vs_noise():
    x, _ = _blobs(n_per=50, k=4, d=8, spread=0.2)
    conv = kmeans_convergence(x, 4, seeds=(0, 1, 2), niter=20, gpu=False)
    assert conv["ari"] == pytest.approx(1.0) and conv["nmi"] == pytest.approx(1.0)
    assert conv["assignments"].shape == (3, 200) and len(conv["ari_pairs"]) == 3
    assert len(conv["objectives"]) == 3
    for obj in conv["objectives"]:  # spherical: sum of cosines rises; FAISS may stop early
        assert 1 <= len(obj) <= 20 and np.all(np.diff(obj) >= -1e-4 * abs(obj[0]))
    assert conv["iterations_mean"] <= 5  # separated blobs converge at once
    noise = np.random.default_rng(0).uniform(-1, 1, size=(400, 8)).astype(np.float32)
    conv_noise = kmeans_convergence(noise, 4, seeds=(0, 1, 2), niter=20, gpu=False)
    assert conv_noise["ari"] < 0.9
    assert conv_noise["iterations_mean"] > conv["iterations_mean"]
    single = kmeans_convergence(x, 4, seeds=(0,), niter=5, gpu=False)
    assert math.isnan(single["ari"])


def test_distinctness_report_flat_and_ready_for_results():
    x, y = _blobs(n_per=40, k=3, d=6, spread=0.3)
    rep = distinctness_report(x, y, n_clusters=3, seeds=(0, 1), niter=10, gpu=False)
    assert set(rep) == set(REPORT_KEYS) and all(isinstance(v, float) for v in rep.values())
    assert rep["kmeans_ari"] == pytest.approx(1.0) and rep["margin_positive_frac"] == 1.0
    assert rep["silhouette"] > 0.8 and rep["intra_cos"] > rep["inter_cos"]
    rows = make_rows({"method": "pca", "dim": 6, "probe": "none"}, rep)
    assert len(rows) == len(REPORT_KEYS) and set(rows[0]) == set(RESULT_COLUMNS)
    no_labels = distinctness_report(x, n_clusters=3, seeds=(0, 1), niter=10, gpu=False)
    assert "scatter_ratio" not in no_labels and "silhouette" in no_labels
    # less distinct codes score lower on every measure that has a direction
    x_blur, _ = _blobs(n_per=40, k=3, d=6, spread=3.0)
    blur = distinctness_report(x_blur, y, n_clusters=3, seeds=(0, 1), niter=10, gpu=False)
    assert blur["silhouette"] < rep["silhouette"]
    assert blur["scatter_ratio"] < rep["scatter_ratio"]
    assert blur["centroid_margin"] < rep["centroid_margin"]
    assert blur["davies_bouldin"] > rep["davies_bouldin"]
