"""Tests of the exact Lloyd engine with Hamerly's bounds (stego_probe.probes.lloyd) and of the
k-means probe's token sample."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.cluster import KMeans

from stego_probe.codes import l2_normalize
from stego_probe.probes.kmeans import KMeansProbe, kmeans_plusplus
from stego_probe.probes.lloyd import lloyd


def groups(seed: int, n: int = 4000, d: int = 12, k: int = 6, scale: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 2
    y = rng.integers(0, k, n)
    return (centers[y] + rng.normal(scale=scale, size=(n, d))).astype(np.float32)


def sse(x, c) -> np.ndarray:
    """(n, K) float64 squared distances."""
    x, c = x.astype(np.float64), c.astype(np.float64)
    return np.maximum((x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None, :], 0)


def plain_lloyd(x, init, niter, spherical):
    """Textbook float64 Lloyd: (objective trace, centroids after each update)."""
    c = init.astype(np.float64)
    objs, cs = [], []
    for _ in range(niter):
        d = sse(x, c)
        a = d.argmin(1)
        objs.append((x * c[a]).sum() if spherical else d.min(1).sum())
        s = np.stack([x[a == j].sum(0) for j in range(len(c))])
        c = (
            s / np.linalg.norm(s, axis=1, keepdims=True)
            if spherical
            else s / np.bincount(a, minlength=len(c))[:, None]
        )
        cs.append(c)
    return np.array(objs), cs


@pytest.mark.parametrize("spherical", [False, True])
@pytest.mark.parametrize("tol", [0.0, 1e-4, None])
def test_bounds_change_nothing(spherical, tol):
    """Hamerly's pruning is exact: the same trace, centroids and labels as computing every
    distance, while skipping most of them near convergence."""
    x = groups(0)
    if spherical:
        x = l2_normalize(x)
    init = kmeans_plusplus(x, 8, seed=1)
    a = lloyd(x, init, niter=60, tol=tol, spherical=spherical)
    b = lloyd(x, init, niter=60, tol=tol, spherical=spherical, bounds=False)
    np.testing.assert_array_equal(a.objective, b.objective)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.inertia == b.inertia
    assert (b.distance_rows == len(x)).all()
    assert a.distance_rows[0] == len(x)
    if tol == 0:  # converged runs end with almost no distance computed
        assert a.distance_rows[-2:].max() < 0.05 * len(x), a.distance_rows
    if tol is None:
        assert a.n_iter == 60


@pytest.mark.parametrize("spherical", [False, True])
def test_matches_textbook_lloyd(spherical):
    """Objective trace (measured before each update) and centroids equal a float64 Lloyd."""
    x = groups(1, n=1500, d=6, k=5)
    if spherical:
        x = l2_normalize(x)
    init = x[[0, 10, 20, 30, 40]]
    res = lloyd(x, init, niter=12, tol=None, spherical=spherical)
    objs, cs = plain_lloyd(x, init, 12, spherical)
    np.testing.assert_allclose(res.objective, objs, rtol=1e-6)  # float32 centroids
    np.testing.assert_allclose(res.centroids, cs[-1], atol=1e-5)
    # labels and inertia refer to the final centroids
    d = sse(x, res.centroids)
    np.testing.assert_array_equal(res.labels, d.argmin(1))
    final = (x * res.centroids[res.labels]).sum() if spherical else d.min(1).sum()
    assert res.inertia == pytest.approx(final, rel=1e-7)


def test_same_fixed_point_as_sklearn_and_faiss():
    """From the same seeds, Lloyd to convergence reaches scikit-learn's and FAISS's centroids."""
    x = groups(2, n=6000, d=16, k=10, scale=0.5)
    init = kmeans_plusplus(x, 10, seed=3)
    res = lloyd(x, init, niter=300, tol=0.0)
    sk = KMeans(10, init=init, n_init=1, max_iter=300, tol=0, algorithm="lloyd").fit(x)
    np.testing.assert_allclose(res.centroids, sk.cluster_centers_, atol=1e-4)
    assert res.inertia == pytest.approx(sk.inertia_, rel=1e-5)
    km = faiss.Kmeans(16, 10, niter=300, nredo=1, max_points_per_centroid=6000, verbose=False)
    km.cp.early_stop_threshold = 0.0
    km.train(x, init_centroids=init)
    m = min(len(km.obj), res.n_iter)
    np.testing.assert_allclose(res.objective[:m], np.asarray(km.obj)[:m], rtol=1e-5)


def test_empty_cluster_is_reseeded_on_the_farthest_token():
    x = groups(3, n=800, d=4, k=3)
    init = np.concatenate([x[:2], x[:1]])  # centroid 2 duplicates 0: it gets no token
    a = lloyd(x, init, niter=1, tol=None)
    b = lloyd(x, init, niter=1, tol=None, bounds=False)
    d0 = np.sqrt(sse(x, init[:2]).min(1))  # distances in the first assignment
    far = int(np.argmax(d0))
    np.testing.assert_allclose(a.centroids[2], x[far], atol=1e-6)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    res = lloyd(x, init, niter=50)
    assert np.bincount(res.labels, minlength=3).min() > 0


def test_single_cluster_and_bad_input():
    x = groups(4, n=200, d=3)
    res = lloyd(x, x[:1], niter=5)
    np.testing.assert_allclose(res.centroids[0], x.mean(0), atol=1e-5)
    assert res.n_iter == 3  # init, then the mean twice: the third objective repeats the second
    with pytest.raises(ValueError, match="init"):
        lloyd(x, x[:2, :2], niter=5)
    with pytest.raises(ValueError, match="init"):
        lloyd(x[:3], x[:4], niter=5)
    with pytest.raises(ValueError, match="niter"):
        lloyd(x, x[:2], niter=0)
    with pytest.raises(ValueError, match="x"):
        lloyd(x[0], x[:2], niter=3)


def reference_sample(x: np.ndarray, n_tokens: int, seed: int) -> np.ndarray:
    """The n_tokens tokens with the smallest i.i.d. uniform keys, in token order."""
    keys = np.random.default_rng(seed).random(len(x))
    return x[np.sort(np.argsort(keys)[:n_tokens])]


@pytest.mark.parametrize("n_tokens", [1, 77, 500, 1000, 5000])
@pytest.mark.parametrize("block", [1, 64, 333, 5000])
def test_token_sample_equals_smallest_keys_whatever_the_chunking(n_tokens, block):
    x = groups(5, n=1000, d=3)
    probe = KMeansProbe(1, n_tokens=n_tokens, chunk_size=200)
    got, seen = probe._subsample((x[i : i + block] for i in range(0, len(x), block)), 9)
    assert seen == 1000
    np.testing.assert_array_equal(got, reference_sample(x, n_tokens, 9))


def test_probe_engines_agree_and_are_recorded(tmp_path):
    x = l2_normalize(groups(6, n=3000, d=8, k=5))
    kw = dict(n_clusters=5, nredo=2, random_state=0)
    ham = KMeansProbe(**kw).fit(x)
    fai = KMeansProbe(**kw, algorithm="faiss").fit(x)
    assert (ham.algorithm_, fai.algorithm_) == ("hamerly", "faiss")
    assert ham.converged_ and fai.converged_
    assert ham.inertia_ == pytest.approx(fai.inertia_, rel=1e-4)
    np.testing.assert_allclose(ham.cluster_centers_, fai.cluster_centers_, atol=1e-3)
    loaded = KMeansProbe.load(ham.save(tmp_path / "k.npz"))
    assert loaded.algorithm_ == "hamerly"
    np.testing.assert_array_equal(loaded.predict(x), ham.predict(x))
    assert clone(ham).get_params()["algorithm"] == "auto"
    assert KMeansProbe(2, init="random").fit(x).algorithm_ == "faiss"
    with pytest.raises(ValueError, match="algorithm"):
        KMeansProbe(2, algorithm="elkan").fit(x)
    with pytest.raises(ValueError, match="init"):
        KMeansProbe(2, algorithm="hamerly", init="random").fit(x)
