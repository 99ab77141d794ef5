"""Tests of the FAISS k-means probe and the shared code helpers."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest
from probe_helpers import assign_confusion, assign_confusion_stream
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from stego_probe.codes import (
    flatten_codes,
    iter_code_chunks,
    l2_normalize,
    upsample_codes,
)
from stego_probe.metrics import ConfusionAccumulator, confusion_matrix
from stego_probe.probes.kmeans import (
    DEFAULT_NITER,
    DEFAULT_TOL,
    KMeansProbe,
    n_iter_until_converged,
    stopping_rule,
)

#: Most tests here use a few iterations on purpose; the not-converged warning is tested once.
pytestmark = pytest.mark.filterwarnings("ignore:KMeansProbe.*fixed point:RuntimeWarning")


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """One BLAS / OpenMP thread: the test machine's cores are shared, and OpenMP spin-waiting
    under contention makes multi-threaded FAISS and scikit-learn much slower, not faster."""
    from threadpoolctl import threadpool_limits

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    with threadpool_limits(1):
        yield
    faiss.omp_set_num_threads(before)


def sse(x: np.ndarray, centers: np.ndarray) -> float:
    """Sum of squared distances to the nearest centre (the common objective)."""
    x = x.astype(np.float64)
    c = centers.astype(np.float64)
    d = (x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None, :]
    return float(np.maximum(d.min(1), 0).sum())


def blobs(seed: int, n: int = 3000, d: int = 16, k: int = 12, scale: float = 0.8):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    y = rng.integers(0, k, n)
    x = centers[y] + rng.normal(scale=scale, size=(n, d))
    return x.astype(np.float32), y


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k_true,scale", [(8, 0.5), (12, 0.8)])  # separated / overlapping
def test_objective_no_worse_than_sklearn(metric, k_true, scale):
    ratios = []
    for seed in range(6):
        x, _ = blobs(seed, k=k_true, scale=scale)
        x = l2_normalize(x)  # both methods see the same normalised data
        ours = KMeansProbe(8, niter=25, nredo=2, metric=metric, random_state=seed).fit(x)
        sk = KMeans(8, n_init=2, max_iter=25, tol=0, random_state=seed).fit(x)
        c_sk = sk.cluster_centers_.astype(np.float32)
        if metric == "cosine":  # spherical k-means objective = SSE to unit centroids
            c_sk = l2_normalize(c_sk)
            np.testing.assert_allclose(np.linalg.norm(ours.cluster_centers_, axis=1), 1, atol=1e-5)
        ratios.append(sse(x, ours.cluster_centers_) / sse(x, c_sk))
    assert np.mean(ratios) <= 1.01, ratios
    assert max(ratios) <= 1.03, ratios


def test_recovers_well_separated_blobs():
    x, y = blobs(0, n=2000, d=8, k=5, scale=0.05)
    x *= 10
    for metric in ("euclidean", "cosine"):
        probe = KMeansProbe(5, niter=20, nredo=3, metric=metric, random_state=0).fit(x)
        assert adjusted_rand_score(y, probe.predict(x)) == 1.0


def test_faiss_does_not_subsample():  # the FAISS engine (GPUs, algorithm="faiss")
    k = 4
    x, _ = blobs(1, n=2 * 256 * k + 37, d=8, k=k, scale=0.5)
    n = len(x)
    probe = KMeansProbe(
        k, niter=15, nredo=1, metric="euclidean", random_state=0, algorithm="faiss"
    ).fit(x)
    assert probe.n_tokens_used_ == n == probe.n_tokens_seen_
    assert probe.max_points_per_centroid_ == math.ceil(n / k)
    assert probe.max_points_per_centroid_ * k >= n > 256 * k
    # FAISS's objective is a sum over the points it trained on: it must match the SSE of
    # all n points (it would be about half if FAISS had used its default 256 points/centroid)
    assert probe.objective_[-1] == pytest.approx(sse(x, probe.cluster_centers_), rel=0.01)
    assert probe.inertia_ == pytest.approx(sse(x, probe.cluster_centers_), rel=1e-4)
    # control: FAISS with its default setting does subsample, and the check above sees it
    km = faiss.Kmeans(x.shape[1], k, niter=15, seed=1, verbose=False)
    km.train(x)
    assert km.obj[-1] < 0.7 * sse(x, km.centroids)


def test_subsample_respects_n_tokens_and_streams_equal_arrays():
    x, _ = blobs(2, n=1500, d=6, k=4)
    probe = KMeansProbe(4, n_tokens=500, niter=10, nredo=2, random_state=3, chunk_size=200)
    a = clone(probe).fit(x)
    chunks = (x[i : i + 333] for i in range(0, len(x), 333))
    b = clone(probe).fit(chunks)
    assert a.n_tokens_used_ == b.n_tokens_used_ == 500
    assert a.n_tokens_seen_ == b.n_tokens_seen_ == 1500
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)


def test_determinism_and_seed_dependence():
    x, _ = blobs(3, n=1200, d=8, k=6)
    kw = dict(n_clusters=6, n_tokens=800, niter=10, nredo=2)
    a = KMeansProbe(**kw, random_state=7).fit(x)
    b = KMeansProbe(**kw, random_state=7).fit(x)
    c = KMeansProbe(**kw, random_state=8).fit(x)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.objective_, b.objective_)
    assert not np.array_equal(a.cluster_centers_, c.cluster_centers_)


def test_objective_bookkeeping():
    x, _ = blobs(4, n=1000, d=8, k=5)
    probe = KMeansProbe(5, niter=30, nredo=3, metric="cosine", random_state=0, tol=1e-4).fit(x)
    assert len(probe.objective_per_redo_) == 3
    finals = [o[-1] for o in probe.objective_per_redo_]
    assert probe.best_redo_ == int(np.argmax(finals))  # inner products: larger is better
    np.testing.assert_array_equal(probe.objective_, probe.objective_per_redo_[probe.best_redo_])
    assert 1 <= len(probe.objective_) <= 30
    assert probe.objective_[-1] > probe.objective_[0]  # spherical objective rises
    assert n_iter_until_converged(np.array([10.0, 5.0, 4.0, 4.0]), 1e-4) == 4
    assert n_iter_until_converged(np.array([10.0, 5.0, 4.0]), 1e-4) == 3
    assert n_iter_until_converged(np.array([10.0, 5.0, 4.9999]), 1e-4) == 3
    # FAISS stopped each restart at the tol rule (or at niter), so n_iter_ = iterations run
    assert probe.n_iter_ == len(probe.objective_)
    assert probe.n_iter_per_redo_ == [len(o) for o in probe.objective_per_redo_]
    for obj in probe.objective_per_redo_:
        rel = np.abs(np.diff(obj)) / np.abs(obj[:-1])
        assert (rel[:-1] > 1e-4).all() and (rel[-1] <= 1e-4 or len(obj) == 30)
    loose = KMeansProbe(5, niter=30, nredo=1, metric="cosine", tol=1e-2).fit(x)
    exact = KMeansProbe(5, niter=30, nredo=1, metric="cosine", tol=0.0).fit(x)
    assert len(loose.objective_) < len(exact.objective_)
    eu = KMeansProbe(5, niter=30, nredo=2, metric="euclidean", random_state=0).fit(x)
    assert eu.best_redo_ == int(np.argmin([o[-1] for o in eu.objective_per_redo_]))
    assert eu.objective_[-1] < eu.objective_[0]


def test_image_layout_predictions_match_flattened():
    rng = np.random.default_rng(5)
    codes = rng.normal(size=(3, 6, 4, 5)).astype(np.float32)  # (N, D, h, w)
    probe = KMeansProbe(4, niter=10, nredo=1, random_state=0).fit(codes)
    assert probe.n_tokens_used_ == 3 * 4 * 5
    pred = probe.predict(codes)
    assert pred.shape == (3, 4, 5) and pred.dtype == np.int64
    flat = codes.transpose(0, 2, 3, 1).reshape(-1, 6)
    np.testing.assert_array_equal(pred.reshape(-1), probe.predict(flat))
    # brute-force argmax of cosine similarity
    expected = (l2_normalize(flat) @ probe.cluster_centers_.T).argmax(1)
    np.testing.assert_array_equal(pred.reshape(-1), expected)
    # streaming prediction over an iterable of blocks
    blocks = [codes[:1], codes[1:]]
    np.testing.assert_array_equal(probe.predict(iter(blocks)), pred.reshape(-1))
    # log_probs: normalised, same argmax
    lp = probe.log_probs(codes)
    assert lp.shape == (3, 4, 4, 5)
    np.testing.assert_allclose(np.exp(lp).sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(lp.argmax(1), pred)
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(probe.predict(torch.from_numpy(codes)), pred)


def test_assign_confusion_streams_upsampled_predictions():
    rng = np.random.default_rng(6)
    codes = rng.normal(size=(4, 5, 3, 3)).astype(np.float32)
    labels = rng.integers(-1, 3, size=(4, 6, 6))
    probe = KMeansProbe(3, niter=10, nredo=1, random_state=0, chunk_size=40).fit(codes)
    acc = assign_confusion(probe, codes, labels, ConfusionAccumulator(3, 3))
    up = upsample_codes(codes, (6, 6))
    assert up.shape == (4, 5, 6, 6)
    expected = confusion_matrix(probe.predict(up), labels, 3, 3)
    np.testing.assert_array_equal(acc.matrix, expected)
    # predict / log_probs with size= upsample the same way (blockwise: chunk_size=40 < 4*36)
    np.testing.assert_array_equal(probe.predict(codes, size=(6, 6)), probe.predict(up))
    np.testing.assert_allclose(probe.log_probs(codes, size=(6, 6)), probe.log_probs(up), rtol=1e-6)
    # token layout + the batch-stream variant
    flat, _ = flatten_codes(codes)
    tok_labels = rng.integers(0, 3, size=len(flat))
    acc2 = assign_confusion_stream(
        probe,
        [(flat[:10], tok_labels[:10]), (flat[10:], tok_labels[10:])],
        ConfusionAccumulator(3, 3),
    )
    np.testing.assert_array_equal(
        acc2.matrix, confusion_matrix(probe.predict(flat), tok_labels, 3, 3)
    )
    with pytest.raises(ValueError, match="n_clusters"):
        assign_confusion(probe, codes, labels, ConfusionAccumulator(4, 3))


def test_bad_input_errors():
    x, _ = blobs(7, n=200, d=4, k=2)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="codes.*NaN"):
        KMeansProbe(2, niter=5).fit(bad)
    with pytest.raises(ValueError, match=r"codes\[1\].*width"):
        KMeansProbe(2, niter=5).fit([x, x[:, :3]])
    with pytest.raises(ValueError, match="metric"):
        KMeansProbe(2, metric="manhattan").fit(x)
    with pytest.raises(ValueError, match="n_clusters"):
        KMeansProbe(0).fit(x)
    with pytest.raises(ValueError, match="not fitted"):
        KMeansProbe(2).predict(x)
    with pytest.raises(ValueError, match=r"\(N, D, h, w\) or \(M, D\)"):
        KMeansProbe(2).fit(x[None])
    probe = KMeansProbe(2, niter=5, nredo=1).fit(x)
    with pytest.raises(ValueError, match="D=4"):
        probe.predict(x[:, :3])
    with pytest.raises(ValueError, match="tokens cannot make"):
        KMeansProbe(500, niter=5).fit(x)
    if faiss.get_num_gpus() == 0:
        with pytest.raises(ValueError, match="gpu"):
            KMeansProbe(2, gpu=True).fit(x)


def test_save_load_roundtrip(tmp_path):
    x, _ = blobs(8, n=600, d=6, k=3)
    probe = KMeansProbe(3, niter=10, nredo=2, random_state=1).fit(x)
    path = tmp_path / "km.npz"
    probe.save(path)
    loaded = KMeansProbe.load(path)
    assert loaded.get_params() == {**probe.get_params(), "gpu": "auto"}
    np.testing.assert_array_equal(loaded.cluster_centers_, probe.cluster_centers_)
    np.testing.assert_array_equal(loaded.objective_, probe.objective_)
    assert loaded.n_tokens_used_ == probe.n_tokens_used_
    np.testing.assert_array_equal(loaded.predict(x), probe.predict(x))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        KMeansProbe.load(tmp_path / "missing.npz")


def test_code_helpers():
    codes = np.arange(2 * 3 * 2 * 2, dtype=np.float16).reshape(2, 3, 2, 2)
    flat, lead = flatten_codes(codes)
    assert flat.dtype == np.float32 and flat.flags.c_contiguous and lead == (2, 2, 2)
    np.testing.assert_array_equal(flat[1], codes[0, :, 0, 1])  # token order: image, row, col
    chunks = list(iter_code_chunks(codes, chunk_size=3))
    assert [len(c) for c in chunks] == [3, 1, 3, 1]  # cut per image, then per chunk_size
    np.testing.assert_array_equal(np.concatenate(chunks), flat)
    z = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(z, [[0.6, 0.8], [0.0, 0.0]])
    with pytest.raises(ValueError, match="my_codes.*inf"):
        flatten_codes(np.array([[1.0, np.inf]]), name="my_codes")
    with pytest.raises(ValueError, match="chunk_size"):
        list(iter_code_chunks(flat, chunk_size=0))


def test_inputs_are_not_modified():
    x, _ = blobs(9, n=300, d=5, k=3)
    x *= 3.0  # not unit norm: an in-place normalisation would change it
    before = x.copy()
    probe = KMeansProbe(3, niter=5, nredo=1, metric="cosine").fit(x)
    probe.log_probs(x)
    probe.predict(x)
    np.testing.assert_array_equal(x, before)


def test_both_faiss_wheels_installed_is_an_error(monkeypatch):
    from importlib import metadata

    from stego_probe.probes.kmeans import check_single_faiss

    class Dist:
        def __init__(self, name):
            self.metadata = {"Name": name}

    monkeypatch.setattr(
        metadata,
        "distributions",
        lambda: [Dist("faiss-cpu"), Dist("faiss_gpu_cu12"), Dist("numpy")],
    )
    check_single_faiss.cache_clear()
    try:
        with pytest.raises(ImportError, match="faiss-cpu and faiss-gpu-cu12"):
            check_single_faiss()
        monkeypatch.setattr(metadata, "distributions", lambda: [Dist("faiss-cpu")])
        check_single_faiss.cache_clear()
        check_single_faiss()  # one wheel: fine
    finally:
        check_single_faiss.cache_clear()


# ------------------------------------------------------------------------- stopping rule


def test_stopping_rules_none_fixed_point_and_early():
    x, _ = blobs(10, n=1500, d=8, k=6, scale=1.0)
    kw = dict(n_clusters=6, niter=200, nredo=2, random_state=3)
    full = KMeansProbe(**kw, tol=None).fit(x)
    # tol=None: FAISS's check is off, every restart runs exactly niter iterations
    assert full.n_iter_per_redo_ == [200, 200] and full.n_iter_ == len(full.objective_) == 200
    assert full.stopping_rule_ == "niter" and full.converged_
    fixed = KMeansProbe(**kw, tol=0).fit(x)
    # tol=0: stops at the first iteration whose objective equals the previous one ...
    assert fixed.stopping_rule_ == "fixed_point" and fixed.converged_
    for obj in fixed.objective_per_redo_:
        assert len(obj) < 200 and obj[-1] == obj[-2] and (obj[1:-1] != obj[:-2]).all()
    assert fixed.n_iter_converged_ == fixed.n_iter_ == len(fixed.objective_)
    # ... which is where the full run's objective stopped changing, with the same centroids
    assert full.n_iter_converged_ == fixed.n_iter_
    np.testing.assert_array_equal(full.objective_[: fixed.n_iter_], fixed.objective_)
    np.testing.assert_array_equal(full.cluster_centers_, fixed.cluster_centers_)
    # tol > 0: stops earlier, before the fixed point, at the first small relative change
    early = KMeansProbe(**kw, tol=1e-3).fit(x)
    assert early.stopping_rule_ == "tol" and not early.converged_
    assert early.n_iter_converged_ is None
    for obj in early.objective_per_redo_:
        rel = np.abs(np.diff(obj)) / np.abs(obj[:-1])
        assert rel[-1] <= 1e-3 and (rel[:-1] > 1e-3).all()
    assert early.n_iter_ < fixed.n_iter_
    assert early.inertia_ < fixed.inertia_  # spherical objective: converged is higher
    assert DEFAULT_TOL == 0 and KMeansProbe(3).tol == 0 and KMeansProbe(3).niter == DEFAULT_NITER


def test_fixed_point_not_reached_warns():
    x, _ = blobs(11, n=1500, d=8, k=6, scale=1.0)
    with pytest.warns(RuntimeWarning, match="fixed point in niter=3"):
        probe = KMeansProbe(6, niter=3, nredo=1, tol=0).fit(x)
    assert probe.n_iter_ == 3 and not probe.converged_ and probe.n_iter_converged_ is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit early stop / fixed count does not warn
        KMeansProbe(6, niter=3, nredo=1, tol=None).fit(x)
        KMeansProbe(6, niter=3, nredo=1, tol=0.5).fit(x)


@pytest.mark.parametrize("tol", [-1e-4, float("nan"), float("inf"), "0.1", True])
def test_bad_tol_is_an_error(tol):
    x, _ = blobs(12, n=100, d=4, k=2)
    with pytest.raises(ValueError, match=r"tol: expected None or a (finite )?number >= 0"):
        KMeansProbe(2, tol=tol).fit(x)


def test_stopping_rule_names_and_save_load_keep_it(tmp_path):
    assert [stopping_rule(t) for t in (None, 0, 0.0, 1e-6)] == [
        "niter",
        "fixed_point",
        "fixed_point",
        "tol",
    ]
    x, _ = blobs(13, n=600, d=6, k=3)
    for tol in (None, 0.0, 1e-2):
        probe = KMeansProbe(3, niter=40, nredo=2, random_state=1, tol=tol).fit(x)
        path = tmp_path / f"km_{tol}.npz"
        probe.save(path)
        loaded = KMeansProbe.load(path)
        assert loaded.tol == tol and loaded.stopping_rule_ == probe.stopping_rule_
        assert (loaded.n_iter_, loaded.n_iter_per_redo_, loaded.converged_) == (
            probe.n_iter_,
            probe.n_iter_per_redo_,
            probe.converged_,
        )
