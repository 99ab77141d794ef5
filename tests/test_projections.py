"""Projections: PCA / RP equal scikit-learn, streaming = one-shot, store fits, standardisation
modes, layouts, persistence, sklearn cloning, UMAP, h-NNE, registry."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from sklearn.random_projection import GaussianRandomProjection, SparseRandomProjection

from stego_probe.projections import (
    HNNEProjection,
    Identity,
    PCAProjection,
    Projection,
    RandomProjection,
    UMAPProjection,
    get_projection,
    list_projections,
    load_projection,
)

C = 12


def _correlated(n: int = 3000, c: int = C, seed: int = 0) -> np.ndarray:
    """Correlated tokens with distinct eigenvalues and large, unequal channel offsets/scales."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(c, c)) * np.linspace(3.0, 0.2, c)[:, None]
    x = rng.normal(size=(n, c)) @ mix
    return (x * rng.uniform(0.5, 5, c) + rng.normal(0, 20, c)).astype(np.float32)


class FakeStore:
    """Minimal store-like object: ``n_images`` images of a ``(h, w)`` grid of ``C`` tokens."""

    def __init__(self, tokens: np.ndarray):
        self._t = tokens  # (N, h, w, C)
        self.n_images = tokens.shape[0]
        self.grid = tokens.shape[1:3]
        self.dim = tokens.shape[3]
        self.complete = True
        self.path = "fake://store"
        self.provenance = {"backbone": "toy", "weights_sha256": "ab" * 32, "dataset": "synthetic",
                           "split": "train"}  # fmt: skip
        self.reads: list[np.ndarray] = []

    def tokens(self, idx):
        idx = np.asarray(idx)
        self.reads.append(idx)
        return self._t[idx]

    def iter_batches(self, batch_size, progress=False):
        for s in range(0, self.n_images, batch_size):
            yield self._t[s : s + batch_size], None, [str(i) for i in range(s, s + batch_size)]

    def sample_tokens(self, n_tokens, seed=0, with_labels=False, images=None):
        idx = np.arange(self.n_images) if images is None else np.asarray(images)
        flat = self._t[idx].reshape(-1, self.dim)
        rng = np.random.default_rng(seed)
        return flat[rng.choice(flat.shape[0], size=min(n_tokens, flat.shape[0]), replace=False)]


def _store(n_images: int = 10, h: int = 3, w: int = 4, seed: int = 1) -> FakeStore:
    x = _correlated(n_images * h * w, seed=seed)
    return FakeStore(x.reshape(n_images, h, w, C))


def _same_up_to_sign(a: np.ndarray, b: np.ndarray, atol: float = 1e-8) -> None:
    signs = np.sign((a * b).sum(axis=1))
    np.testing.assert_allclose(a, b * signs[:, None], atol=atol)


# ---------------------------------------------------------------------- PCA
def test_pca_equals_sklearn_standard_scaler_pca():
    x = _correlated()
    ours = PCAProjection(chunk_size=256).fit(x)
    ref = PCA().fit(StandardScaler().fit_transform(x.astype(np.float64)))
    assert ours.components_.shape == (C, C)
    _same_up_to_sign(ours.components_, ref.components_)
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_,
                               rtol=1e-9, atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(ours.mean_, x.astype(np.float64).mean(0), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(ours.scale_, x.astype(np.float64).std(0), rtol=1e-9)
    # documented sign convention: the largest-|v| entry of each component is positive
    comps = ours.all_components_
    assert np.all(comps[np.arange(C), np.abs(comps).argmax(1)] > 0)
    # variance sorted decreasing, ratios over all components sum to 1 whatever n_components
    assert np.all(np.diff(ours.explained_variance_) <= 0)
    assert ours.with_components(3).explained_variance_ratio_.shape == (C,)
    # the projection itself: train mode == sklearn's transform (up to sign)
    y = ours.transform(x)
    y_ref = ref.transform(StandardScaler().fit_transform(x.astype(np.float64)))
    _same_up_to_sign(y.T.astype(np.float64), y_ref.T, atol=2e-4)
    assert y.dtype == np.float32


def test_pca_unstandardized_equals_plain_pca():
    x = _correlated()
    ours = PCAProjection(standardize=None).fit(x)
    ref = PCA().fit(x.astype(np.float64))
    _same_up_to_sign(ours.components_, ref.components_, atol=1e-7)
    y_ref = ref.transform(x.astype(np.float64))
    _same_up_to_sign(ours.transform(x).T.astype(np.float64), y_ref.T, atol=1e-2)
    with pytest.raises(ValueError, match="fit again"):
        ours.set_params(standardize="train").transform(x)


def test_pca_streaming_equals_one_shot():
    x = _correlated(2000)
    a = PCAProjection(chunk_size=10**7).fit(x)
    b = PCAProjection(chunk_size=37).fit(x)
    np.testing.assert_allclose(a.all_components_, b.all_components_, atol=1e-10)
    np.testing.assert_allclose(a.explained_variance_, b.explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(a.scale_, b.scale_, rtol=1e-12)
    assert b.n_samples_ == 2000


@pytest.mark.parametrize("subset", ["random", "first"])
def test_pca_fit_from_store_equals_fit_on_materialised_images(subset):
    store = _store(n_images=10)
    pca = PCAProjection(n_images=6, subset=subset, random_state=3, chunk_size=25).fit(store)
    if subset == "random":
        idx = np.sort(np.random.default_rng(3).choice(10, size=6, replace=False))
    else:
        idx = np.arange(6)
    x = store._t[idx].reshape(-1, C)
    ref = PCAProjection(chunk_size=10**6).fit(x)
    np.testing.assert_allclose(pca.all_components_, ref.all_components_, atol=1e-10)
    np.testing.assert_allclose(pca.mean_, ref.mean_, atol=1e-10)
    # only the chosen images were read, in chunks of chunk_size // (h*w) = 2 images
    read = np.concatenate(store.reads)
    np.testing.assert_array_equal(np.sort(read), idx)
    assert max(len(r) for r in store.reads) <= 2
    fit = pca.provenance["fit_data"]
    assert fit["source"] == "store" and fit["backbone"] == "toy" and fit["split"] == "train"
    assert fit["weights_sha256"] == "ab" * 32 and fit["dataset"] == "synthetic"
    assert fit["n_images_used"] == 6 and fit["n_tokens"] == 6 * 12 and fit["seed"] == 3
    assert pca.provenance["method"] == "pca" and "stego_probe_version" in pca.provenance


def test_pca_fit_on_real_feature_store(tmp_path):
    store_mod = pytest.importorskip("stego_probe.store")
    tokens = _correlated(8 * 2 * 3).reshape(8, 2, 3, C)
    store = store_mod.FeatureStore.create(
        tmp_path / "s", n_images=8, grid=(2, 3), dim=C, label_shape=(4, 6),
        provenance={"backbone": "toy", "split": "train", "n_classes": 2}, chunk_images=3,
    )  # fmt: skip
    for b in range(store.n_blocks):
        s, e = store.block_range(b)
        store.write_block(b, tokens[s:e], np.zeros((e - s, 4, 6), np.int64),
                          [str(i) for i in range(s, e)])  # fmt: skip
    store.mark_complete()
    store = store_mod.FeatureStore.open(tmp_path / "s")
    pca = PCAProjection(n_images=None, chunk_size=10).fit(store)
    ref = PCAProjection().fit(store.tokens(slice(None)).reshape(-1, C))
    np.testing.assert_allclose(pca.all_components_, ref.all_components_, atol=1e-10)
    assert pca.provenance["fit_data"]["backbone"] == "toy"
    codes = pca.transform_tokens(store.tokens(slice(0, 2)))
    assert codes.shape == (2, C, 2, 3)


def test_batch_mode_is_protocol_formula():
    x = _correlated()
    pca = PCAProjection(n_components=5, standardize="batch").fit(x)
    batch = _correlated(500, seed=7) * 2 + 3  # statistics differ from the fit data
    xb = batch.astype(np.float64)
    z = (xb - xb.mean(0)) / xb.std(0)  # population std, this batch only
    expected = z @ pca.components_.T  # V[:, :D], no PCA mean subtraction
    np.testing.assert_allclose(pca.transform(batch), expected, rtol=1e-4, atol=1e-4)
    # same for RP: y = z R^T
    rp = RandomProjection(4, standardize="batch", random_state=1).fit(x)
    np.testing.assert_allclose(rp.transform(batch), z @ rp.components_.T, rtol=1e-4, atol=1e-4)


def test_train_mode_independent_of_batch_batch_mode_not():
    x = _correlated()
    a, b = x[:40], x[40:300] * 1.5
    both = np.concatenate([a, b])
    for est in (PCAProjection(4), RandomProjection(4)):
        est.fit(x)
        np.testing.assert_allclose(est.transform(a), est.transform(both)[:40], atol=1e-5)
        est.set_params(standardize="batch")
        assert not np.allclose(est.transform(a), est.transform(both)[:40], atol=1e-2)


def test_zero_variance_channel_is_guarded():
    x = _correlated(500)
    x[:, 3] = 7.0
    with pytest.warns(RuntimeWarning, match="zero variance"):
        pca = PCAProjection().fit(x)
    assert pca.scale_[3] == 1.0 and np.isfinite(pca.transform(x)).all()
    with pytest.warns(RuntimeWarning, match="zero variance"):
        y = pca.set_params(standardize="batch").transform(x)
    assert np.isfinite(y).all()


# ---------------------------------------------------------------------- RP
def test_rp_equals_sklearn_matrices_and_projects_in_float32():
    x = _correlated()
    for rs in (0, 5):
        rp = RandomProjection(7, random_state=rs).fit(x)
        ref = GaussianRandomProjection(n_components=7, random_state=rs).fit(x.astype(np.float64))
        np.testing.assert_array_equal(rp.components_, ref.components_)
        z = StandardScaler().fit_transform(x.astype(np.float64))
        np.testing.assert_allclose(rp.transform(x), ref.transform(z), rtol=1e-4, atol=1e-4)
    sp = get_projection("rp_sparse", 6, random_state=2).fit(x)
    ref = SparseRandomProjection(n_components=6, random_state=2).fit(x.astype(np.float64))
    np.testing.assert_array_equal(sp.components_, ref.components_.toarray())
    assert sp.provenance["method"] == "rp_sparse" and sp.transform(x).dtype == np.float32
    # deterministic given the seed, different across seeds
    r0 = RandomProjection(7, random_state=0).fit(x).components_
    np.testing.assert_array_equal(r0, RandomProjection(7, random_state=0).fit(x).components_)
    assert not np.allclose(r0, RandomProjection(7, random_state=1).fit(x).components_)


def test_rp_without_train_statistics_reads_only_width():
    store = _store()
    rp = RandomProjection(3, standardize=None).fit(store)
    assert store.reads == [] and rp.n_features_in_ == C and rp.mean_ is None
    x = store._t[0].reshape(-1, C)
    np.testing.assert_allclose(rp.transform(x), x @ rp.components_.T.astype(np.float32),
                               rtol=1e-5, atol=1e-4)  # fmt: skip
    with pytest.raises(ValueError, match="training statistics"):
        rp.set_params(standardize="train").transform(x)


# ---------------------------------------------------------------------- sweep / clone
def test_clone_set_params_and_with_components_sweep():
    x = _correlated()
    base = PCAProjection(standardize="train")
    full = clone(base).fit(x)
    y_full = full.transform(x)
    for d in (1, 4, C):
        refit = clone(base).set_params(n_components=d).fit(x)
        np.testing.assert_allclose(refit.transform(x), y_full[:, :d], atol=1e-5)
        view = full.with_components(d)
        assert view.dim == d and view.components_.shape == (d, C)
        np.testing.assert_allclose(view.transform(x), y_full[:, :d], atol=1e-5)
    assert full.n_components is None and full.dim == C  # with_components left it unchanged
    full.set_params(n_components=2)
    assert full.transform(x).shape == (len(x), 2)
    with pytest.raises(ValueError, match="exceeds"):
        full.set_params(n_components=C + 1)
    assert full.n_components == 2  # the invalid value was not kept
    rp = RandomProjection(3, random_state=4).fit(x)
    for d in (2, 6):
        np.testing.assert_array_equal(
            rp.with_components(d).components_,
            RandomProjection(d, random_state=4).fit(x).components_,
        )
        assert clone(rp).set_params(n_components=d).fit(x).transform(x).shape == (len(x), d)
    assert rp.components_.shape == (3, C)


# ---------------------------------------------------------------------- layouts
def test_layouts_numpy_torch_and_tokens():
    x = _correlated(2 * 3 * 5)
    for est in (PCAProjection(5), RandomProjection(5), Identity()):
        est.fit(x)
        d = est.dim
        flat = est.transform(x)
        tokens = x.reshape(2, 3, 5, C)  # (B, h, w, C)
        chw = np.ascontiguousarray(tokens.transpose(0, 3, 1, 2))  # (B, C, h, w)
        expected = flat.reshape(2, 3, 5, d).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(est.transform(chw), expected, atol=1e-5)
        np.testing.assert_allclose(est.transform_tokens(tokens), expected, atol=1e-5)
        out_t = est.transform(torch.from_numpy(chw).double())
        assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
        assert out_t.shape == (2, d, 3, 5)
        np.testing.assert_allclose(out_t.numpy(), expected, atol=1e-5)
        with pytest.raises(ValueError, match="channels"):
            est.transform(x[:, :-1])
        with pytest.raises(ValueError, match=r"\(N, C\) or \(B, C, h, w\)"):
            est.transform(tokens[0])
    # batch mode: the batch is all B*h*w tokens of the call, in any layout
    pca = PCAProjection(5, standardize="batch").fit(x)
    np.testing.assert_allclose(
        pca.transform(chw), pca.transform(x).reshape(2, 3, 5, 5).transpose(0, 3, 1, 2), atol=1e-5
    )


def test_identity_passthrough():
    x = _correlated(50)
    ident = get_projection("dino").fit(x)
    assert isinstance(ident, Identity) and ident.dim == C
    np.testing.assert_array_equal(ident.transform(x), x)
    with pytest.raises(ValueError, match="C=12"):
        Identity(n_components=5).fit(x)
    store = _store()
    assert Identity().fit(store).dim == C and store.reads == []


# ---------------------------------------------------------------------- persistence
def test_save_load_round_trip(tmp_path):
    x = _correlated()
    for est in (PCAProjection(5, standardize="batch", random_state=3).fit(_store()),
                get_projection("rp_sparse", 4).fit(x), Identity().fit(x)):  # fmt: skip
        path = est.save(tmp_path / f"{est.method_name}.pt")
        back = load_projection(path)
        assert type(back) is type(est) and back.get_params() == est.get_params()
        for name in type(est)._array_attrs:
            a, b = getattr(est, name), getattr(back, name)
            assert (a is None and b is None) or np.array_equal(a, b)
        np.testing.assert_array_equal(back.transform(x), est.transform(x))
        assert back.provenance == est.provenance
        assert type(est).load(path).dim == est.dim
    with pytest.raises(ValueError, match="not a RandomProjection"):
        RandomProjection.load(tmp_path / "pca.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Projection.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt"):
        Projection.load(tmp_path / "junk.pt")


# ---------------------------------------------------------------------- registry / errors
def test_registry_and_bad_input():
    assert {"dino", "pca", "rp", "rp_sparse", "umap", "hnne", "stego"} <= set(list_projections())
    assert get_projection("rp_sparse", 3).kind == "sparse"
    assert get_projection("identity").method_name == "dino"
    with pytest.raises(KeyError, match="unknown projection method 'tsne'"):
        get_projection("tsne", 3)
    with pytest.raises(ValueError, match="kind"):
        get_projection("rp", 3, kind="sparse")
    with pytest.raises(ValueError, match="standardize"):
        PCAProjection(standardize="global").fit(_correlated(50))
    with pytest.raises(ValueError, match=r"\(N, C\) tokens or a feature store"):
        PCAProjection().fit(_correlated(60).reshape(5, C, 3, 4))
    with pytest.raises(ValueError, match="n_components"):
        RandomProjection().fit(_correlated(50))
    with pytest.raises(ValueError, match="exceeds the feature width C=12"):
        PCAProjection(C + 1).fit(_store())
    with pytest.raises(ValueError, match="not fitted"):
        PCAProjection(3).transform(_correlated(5))
    incomplete = _store()
    incomplete.complete = False
    with pytest.raises(ValueError, match="not complete"):
        PCAProjection().fit(incomplete)


# ---------------------------------------------------------------------- UMAP / h-NNE
@pytest.mark.slow
def test_umap_fit_transform_deterministic_and_saved(tmp_path):
    pytest.importorskip("umap")
    store = _store(n_images=25, h=3, w=4)
    kw = dict(n_neighbors=5, n_epochs=15, n_tokens=200, n_images=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba / umap chatter
        um = UMAPProjection(2, **kw).fit(store)
        new = store._t[:2]  # (2, 3, 4, C)
        y = um.transform_tokens(new)
        assert y.shape == (2, 2, 3, 4) and y.dtype == np.float32 and np.isfinite(y).all()
        again = UMAPProjection(2, **kw).fit(store).transform_tokens(new)
        np.testing.assert_array_equal(y, again)
        assert um.provenance["fit_data"]["n_tokens"] == 200
        path = um.save(tmp_path / "umap.pt")
        with pytest.raises(ValueError, match="trust=True"):
            load_projection(path)  # its model is a pickle: refused by default
        back = load_projection(path, trust=True)
        np.testing.assert_array_equal(back.transform_tokens(new), y)
    with pytest.raises(ValueError, match="refitted"):
        um.set_params(n_components=3).transform(new.reshape(-1, C))


def test_hnne_projection():
    pytest.importorskip("hnne")
    x = _correlated(600)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hn = HNNEProjection(3, n_tokens=500).fit(x)
        y = hn.transform(x[:20])
    assert y.shape == (20, 3) and y.dtype == np.float32 and np.isfinite(y).all()


def test_hnne_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "hnne", None)  # makes `import hnne` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'stego-probe\[hnne\]'"):
        HNNEProjection(2, n_tokens=50).fit(_correlated(60))


# ---------------------------------------------------------------------- input validation
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_fit_data_is_refused(bad):
    x = _correlated(200)
    x[17, 3] = bad
    for est in (PCAProjection(3), RandomProjection(3), RandomProjection(3, standardize=None)):
        with pytest.raises(
            ValueError, match=r"fit: X: expected finite values, found 1 NaN or infinite .*row 17"
        ):
            est.fit(x)
        assert not est.is_fitted
    with pytest.raises(ValueError, match="NaN or infinite"):  # float64 overflowing float32
        PCAProjection(3).fit(_correlated(50).astype(np.float64) * 1e39)
    store = _store(n_images=10)
    store._t[7, 1, 2, 0] = bad
    for est in (PCAProjection(3, n_images=None), RandomProjection(3, n_images=None)):
        with pytest.raises(ValueError, match=r"'fake://store' has NaN .*image index 7"):
            est.fit(store)
    # images outside the fit subset are not read, so they do not matter
    ok = PCAProjection(3, n_images=3, subset="first").fit(store)
    assert np.isfinite(ok.all_components_).all()


def test_non_finite_store_tokens_name_the_image_and_its_id():
    from stego_probe.projections.base import check_store_sample

    store = _store(n_images=10)
    store.ids = [f"img{i:03d}" for i in range(10)]
    store._t[7, 2, 1, 4] = np.nan
    with pytest.raises(ValueError, match=r"image index 7, id 'img007'"):
        PCAProjection(3, n_images=None).fit(store)
    # a token sample (UMAP / h-NNE fits) is traced back to the image it came from
    sample = store.sample_tokens(10**6, seed=0)
    assert not np.isfinite(sample).all()
    with pytest.raises(ValueError, match=r"'fake://store' has NaN .*image index 7, id 'img007'"):
        check_store_sample(store, sample, None)
    check_store_sample(store, store.sample_tokens(50, images=np.arange(5)), np.arange(5))


def test_non_finite_transform_input_is_refused():
    x = _correlated(300)
    for est in (PCAProjection(3).fit(x), RandomProjection(3).fit(x), Identity().fit(x)):
        bad = x[:20].copy()
        bad[4, 0] = np.nan
        with pytest.raises(
            ValueError, match=r"transform: X \(N, C\): expected finite values, found 1 NaN.*row 4"
        ):
            est.transform(bad)
        with pytest.raises(ValueError, match=r"transform: X \(N, C\): expected finite"):
            est.transform(torch.from_numpy(bad))
        toks = x[:24].reshape(2, 3, 4, C).copy()
        toks[1, 2, 3, 5] = np.inf
        with pytest.raises(
            ValueError,
            match=r"transform_tokens: tokens .*: expected finite values, found 1 NaN or inf",
        ):
            est.transform_tokens(toks)
        assert est.transform(x[:0]).shape[0] == 0  # empty input is fine


def test_unfitted_raises_sklearn_not_fitted_error(tmp_path):
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    x = _correlated(100)
    for est in (PCAProjection(3), RandomProjection(3), Identity()):
        for call in (
            lambda est=est: est.transform(x),
            lambda est=est: est.transform_tokens(x[:24].reshape(2, 3, 4, C)),
            lambda est=est: est.save(tmp_path / "p.pt"),
            lambda est=est: est.provenance,
            lambda est=est: check_is_fitted(est),
        ):
            with pytest.raises(NotFittedError, match="not fitted"):
                call()
        check_is_fitted(est.fit(x))
    with pytest.raises(NotFittedError, match="components_"):
        _ = PCAProjection(3).components_
    assert not hasattr(PCAProjection(3), "explained_variance_ratio_")


def test_random_state_none_int_or_randomstate():
    store, x = _store(n_images=30), _correlated(400)
    # an int seed: unchanged, reproducible image subset
    a = PCAProjection(3, n_images=10, random_state=4).fit(store)
    want = np.sort(np.random.default_rng(4).choice(30, size=10, replace=False))
    assert a.provenance["fit_data"]["image_indices_sha256"] == _sha(want)
    # a RandomState is drawn from: the same state gives the same fit, and it advances
    b1 = PCAProjection(3, n_images=10, random_state=np.random.RandomState(1)).fit(store)
    b2 = PCAProjection(3, n_images=10, random_state=np.random.RandomState(1)).fit(store)
    np.testing.assert_array_equal(b1.all_components_, b2.all_components_)
    rs = np.random.RandomState(1)
    PCAProjection(3, n_images=10, random_state=rs).fit(store)
    assert rs.randint(2**31 - 1) != np.random.RandomState(1).randint(2**31 - 1)
    # None: fresh entropy, still a valid fit
    fresh = PCAProjection(3, n_images=10, random_state=None).fit(store)
    assert fresh.transform(x).shape == (400, 3)
    # RP draws R exactly as scikit-learn does from the same RandomState
    rp = RandomProjection(4, random_state=np.random.RandomState(5)).fit(store)
    ref = GaussianRandomProjection(4, random_state=np.random.RandomState(5)).fit(x.astype(float))
    np.testing.assert_array_equal(rp.components_, ref.components_)
    assert RandomProjection(4, random_state=None).fit(x).components_.shape == (4, C)
    for bad in (-1, 2**32, 1.5, "0", True, np.random.default_rng(0)):
        for est in (PCAProjection(3, random_state=bad), RandomProjection(3, random_state=bad)):
            with pytest.raises(ValueError, match="random_state must be None, an int"):
                est.fit(store)


def test_randomstate_projection_saves_and_loads(tmp_path):
    x = _correlated(200)
    rp = RandomProjection(4, random_state=np.random.RandomState(2)).fit(x)
    back = load_projection(rp.save(tmp_path / "rp.pt"))
    assert back.random_state is None  # a RandomState is not a saveable parameter
    np.testing.assert_array_equal(back.components_, rp.components_)
    np.testing.assert_array_equal(back.transform(x), rp.transform(x))


def _sha(idx: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(idx, dtype=np.int64).tobytes()).hexdigest()


# ------------------------------------------------------------------ untrusted files


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: proof that a loader executed file content."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted_umap_file(path, marker):
    """A projection file that claims to be a UMAP projection and embeds a malicious pickle."""
    import pickle

    from stego_probe.projections.base import SAVE_FORMAT

    blob = np.frombuffer(pickle.dumps(_Payload(marker)), dtype=np.uint8).copy()
    payload = {
        "format": SAVE_FORMAT,
        "class": "UMAPProjection",
        "method": "umap",
        "params": json.dumps({"n_components": 2}),
        "meta": json.dumps({"n_features_in_": 4, "fitted_n_components_": 2}),
        "provenance": json.dumps({}),
        "arrays": {
            "mean_": torch.zeros(4, dtype=torch.float64),
            "scale_": torch.ones(4, dtype=torch.float64),
            "extra:umap_pickle": torch.from_numpy(blob),
        },
    }
    torch.save(payload, path)
    return path


def test_pickled_projection_files_run_nothing_unless_trusted(tmp_path):
    from stego_probe.projections import PCAProjection, Projection, load_projection

    marker = tmp_path / "pwned"
    path = crafted_umap_file(tmp_path / "umap.pt", marker)
    for load in (lambda: load_projection(path), lambda: Projection.load(path)):
        with pytest.raises(ValueError, match="trust=True"):
            load()
        assert not marker.exists()
    # a file claiming another class than the one asked for is refused before it is unpickled
    with pytest.raises(ValueError, match="not a PCAProjection"):
        PCAProjection.load(path, trust=True)
    assert not marker.exists()
    # with trust=True the embedded pickle is what gets loaded (the test can fail)
    pytest.importorskip("umap")
    with pytest.raises(Exception):  # noqa: B017 - the payload is not a UMAP model
        load_projection(path, trust=True).transform(np.zeros((1, 4), np.float32))
    assert marker.exists()


def test_sweep_cache_never_unpickles_a_crafted_file(tmp_path):
    from stego_probe.sweep import Point, SweepConfig, fit_projection

    cache = tmp_path / "projections"
    cache.mkdir()
    marker = tmp_path / "pwned"
    crafted_umap_file(cache / "pca_seed0.pt", marker)  # claims UMAP where PCA is expected
    crafted_umap_file(cache / "umap_d2_seed0.pt", marker)
    config = SweepConfig(name="t", dataset="synthetic", backbone="descriptor")
    with pytest.raises(ValueError, match="not a PCAProjection"):
        fit_projection(config, Point("pca", 4, 0), None, cache)
    assert not marker.exists()
    # an untrusted UMAP cache is refitted, not unpickled
    pytest.importorskip("umap")
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(300, 4)).astype(np.float32)
    proj = fit_projection(config, Point("umap", 2, 0), tokens, cache)
    assert not marker.exists()
    assert proj.transform(tokens[:5]).shape == (5, 2)
