"""The linear probe's ``solver="tokens"``: L-BFGS on token rows with their class mass (the
token-level bound of the pixel objective), in memory and on the shared token sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stego_probe.evaluate import evaluate_stores
from stego_probe.probes.linear import LinearProbe, bilinear_weights
from stego_probe.store import soft_token_labels
from tests.test_evaluate import K, make_store

TOL = {"tol": 1e-6, "max_iter": 500}


def blob_data(n=6, grid=(4, 5), size=(12, 15), d=4, seed=0):
    """Codes (n, d, h, w) correlated with pixel labels (n, H, W) that do not align with the
    tokens (so that the class mass of a token is mixed), with some ignore pixels."""
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, K, (n, *size))
    lab[:, :2, :3] = -1
    soft = soft_token_labels(lab, grid, K)  # (n, h, w, K)
    frac = soft / np.maximum(soft.sum(-1, keepdims=True), 1e-9)
    codes = np.concatenate([frac, rng.normal(0, 0.3, (n, *grid, d - K))], -1)
    codes = codes + rng.normal(0, 0.2, codes.shape)
    return codes.transpose(0, 3, 1, 2).astype(np.float32), lab


def token_bound(coef, intercept, codes, labels) -> float:
    """-sum_p sum_t a_pt log softmax(W x_t + b)_{y_p} / n_valid, by brute force."""
    n, d, h, w = codes.shape
    H, W = labels.shape[1:]
    a = torch.kron(bilinear_weights(h, H), bilinear_weights(w, W)).numpy()  # (H*W, h*w)
    x = codes.transpose(0, 2, 3, 1).reshape(n, h * w, d).astype(np.float64)
    z = x @ coef.T.astype(np.float64) + intercept
    logp = (
        z
        - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - z.max(-1, keepdims=True)
    )
    total, count = 0.0, 0
    for i in range(n):
        y = labels[i].reshape(-1)
        for p in np.flatnonzero((y >= 0) & (y < K)):
            total -= float(a[p] @ logp[i, :, y[p]])
            count += 1
    return total / count


def test_objective_is_the_token_bound_and_upper_bounds_the_pixel_loss():
    codes, lab = blob_data()
    probe = LinearProbe(K, solver="tokens", l2=0.0, **TOL).fit(codes, lab)
    assert probe.converged_ and probe.grad_max_ <= 1e-4
    assert probe.n_labelled_ == int(((lab >= 0) & (lab < K)).sum())
    bound = token_bound(probe.coef_, probe.intercept_, codes, lab)
    assert probe.loss_history_[-1] == pytest.approx(bound, rel=1e-4)
    # Jensen: the cross-entropy of interpolated logits is at most the interpolated one
    pixel = float(probe.loss(codes, lab))
    assert pixel <= bound + 1e-6


def test_fit_fit_targets_and_fit_passes_agree():
    codes, lab = blob_data()
    a = LinearProbe(K, solver="tokens", **TOL).fit(codes, lab)
    rows = codes.transpose(0, 2, 3, 1).reshape(-1, codes.shape[1])
    soft = soft_token_labels(lab, codes.shape[2:], K).reshape(-1, K)
    b = LinearProbe(K, solver="tokens", **TOL).fit_targets(rows, soft)
    np.testing.assert_allclose(a.coef_, b.coef_, atol=1e-5)
    chunks = [(codes[i : i + 2], lab[i : i + 2]) for i in range(0, len(codes), 2)]
    c = LinearProbe(K, solver="tokens", **TOL).fit_passes(lambda: iter(chunks))
    np.testing.assert_allclose(a.coef_, c.coef_, atol=1e-5)
    assert a.n_labelled_ == b.n_labelled_ == c.n_labelled_


def test_invariant_to_an_invertible_linear_map_and_one_hot_rows_equal_lbfgs():
    codes, lab = blob_data()
    rng = np.random.default_rng(3)
    mix = rng.normal(size=(codes.shape[1],) * 2).astype(np.float32)
    mixed = np.einsum("ndhw,de->nehw", codes, mix)
    a = LinearProbe(K, solver="tokens", **TOL).fit(codes, lab)
    b = LinearProbe(K, solver="tokens", **TOL).fit(mixed, lab)
    np.testing.assert_allclose(
        a.decision_function(codes, size=lab.shape[1:]),
        b.decision_function(mixed, size=lab.shape[1:]),
        atol=2e-3,
    )
    # token rows with hard labels: the same problem as the pixel-level solver on tokens
    rows = codes.transpose(0, 2, 3, 1).reshape(-1, codes.shape[1])
    hard = rng.integers(-1, K, len(rows))
    t = LinearProbe(K, solver="tokens", **TOL).fit(rows, hard)
    p = LinearProbe(K, solver="lbfgs", **TOL).fit(rows, hard)
    np.testing.assert_allclose(t.decision_function(rows), p.decision_function(rows), atol=2e-3)


def test_fit_targets_bad_input():
    rows = np.ones((5, 3), np.float32)
    probe = LinearProbe(K, solver="tokens")
    with pytest.raises(ValueError, match=r"targets: expected shape \(5, 3\)"):
        probe.fit_targets(rows, np.ones((5, 2)))
    with pytest.raises(ValueError, match="non-negative"):
        probe.fit_targets(rows, -np.ones((5, K)))
    with pytest.raises(ValueError, match="no labelled pixel"):
        probe.fit_targets(rows, np.zeros((5, K)))
    with pytest.raises(ValueError, match="codes: expected token rows"):
        probe.fit_targets(np.ones((2, 3, 1, 1), np.float32), np.ones((2, K)))
    with pytest.raises(ValueError, match="fit_targets: trains with solver='tokens'"):
        LinearProbe(K).fit_targets(rows, np.ones((5, K)))


def test_evaluate_stores_trains_on_the_token_sample(tmp_path):
    codes, lab = blob_data(n=8)
    vcodes, vlab = blob_data(n=4, seed=1)
    train = make_store(tmp_path / "train", codes, lab)
    val = make_store(tmp_path / "val", vcodes, vlab, split="val")
    kw = {"linear": {"solver": "tokens", **TOL}}
    frame, probes = evaluate_stores(
        train, val, probes="linear", probe_kwargs=kw, progress=False, return_probes=True,
        n_tokens=10_000,
    )  # fmt: skip
    got = probes["linear"]
    # the sample holds every token (n_tokens > all), in a seeded order: the same problem as
    # fit() on the store's (float16) codes
    x = codes.astype(np.float16).astype(np.float32)
    ref = LinearProbe(K, solver="tokens", **TOL).fit(x, lab)
    assert got.n_labelled_ == ref.n_labelled_
    assert got.loss_history_[-1] == pytest.approx(ref.loss_history_[-1], abs=1e-6)
    np.testing.assert_array_equal(got.predict(vcodes, size=vlab.shape[1:]), ref.predict(
        vcodes, size=vlab.shape[1:]))  # fmt: skip
    assert set(frame.probe) == {"linear"} and (frame.metric == "miou").any()
    # token mode: one-hot rows of the pooled labels
    tok = evaluate_stores(train, val, probes="linear", probe_kwargs=kw, progress=False,
                          mode="token", n_tokens=10_000)  # fmt: skip
    assert set(tok["mode"]) == {"token"}


def twelve_image_stores(tmp_path):
    """(codes, labels, train store of 12 images, val store of 4) for the image-cap tests."""
    codes, lab = blob_data(n=12, seed=3)
    train = make_store(tmp_path / "train", codes, lab)
    val = make_store(tmp_path / "val", *blob_data(n=4, seed=4), split="val")
    return codes, lab, train, val


def test_lbfgs_on_a_store_trains_on_the_seeded_image_subset_of_max_images(tmp_path):
    from stego_probe.probes.linear import train_subset

    codes, lab, train, val = twelve_image_stores(tmp_path)

    def probe_of(**kw):
        _, probes = evaluate_stores(
            train,
            val,
            probes="linear",
            seed=5,
            return_probes=True,
            progress=False,
            probe_kwargs={"linear": {"solver": "lbfgs", **TOL, **kw}},
        )
        return probes["linear"]

    capped = probe_of(max_images=5)
    subset = train_subset(12, 5, seed=5)
    assert len(subset) == 5 and subset.tolist() == sorted(set(subset.tolist()))
    # the same L-BFGS on exactly those images (same input statistics) gives the same probe
    ref = LinearProbe(K, solver="lbfgs", **TOL)
    ref.set_scaler(capped.mean_, capped.scale_)
    stored = np.asarray(train.tokens(subset), dtype=np.float32).transpose(0, 3, 1, 2)
    ref.fit_passes(lambda: iter([(stored, train.labels(subset))]))
    np.testing.assert_allclose(capped.coef_, ref.coef_, rtol=1e-5, atol=1e-6)
    assert capped.n_labelled_ == int(((lab[subset] >= 0) & (lab[subset] < K)).sum())
    # a cap at or above the store's size, and None, read every image
    full = probe_of(max_images=None)
    assert full.n_labelled_ == int(((lab >= 0) & (lab < K)).sum())
    np.testing.assert_array_equal(probe_of(max_images=12).coef_, full.coef_)
    assert not np.allclose(capped.coef_, full.coef_)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_max_images_must_be_a_positive_integer_or_none(bad):
    codes, lab = blob_data()
    with pytest.raises(ValueError, match="max_images: expected a positive integer or None"):
        LinearProbe(K, max_images=bad).fit(codes, lab)


def test_linear_rows_record_solver_training_images_and_iterations(tmp_path):
    _, _, train, val = twelve_image_stores(tmp_path)

    def rows(**kw):
        frame, probes = evaluate_stores(
            train, val, probes="kmeans,linear", seed=5, return_probes=True, progress=False,
            probe_kwargs={"kmeans": {"niter": 5, "nredo": 1}, "linear": kw}, steps=7,
            train_batch_size=4,
        )  # fmt: skip
        return frame, probes

    frame, probes = rows(solver="lbfgs", max_images=5, **TOL)
    lin = frame[frame.probe == "linear"]
    assert set(lin.linear_solver) == {"lbfgs"} and set(lin.linear_train_images) == {5}
    assert set(lin.linear_n_iter) == {probes["linear"].n_iter_} and probes["linear"].n_iter_ > 0
    km = frame[frame.probe == "kmeans"]
    assert set(km.linear_solver) == {""} and km.linear_n_iter.isna().all()
    assert set(km.kmeans_engine) == {probes["kmeans"].algorithm_} == {"hamerly"}  # CPU default
    assert set(lin.kmeans_engine) == {""}
    frame, _ = rows(solver="adam")
    lin = frame[frame.probe == "linear"]
    assert set(lin.linear_solver) == {"adam"} and set(lin.linear_n_iter) == {7}
    assert set(lin.linear_train_images) == {12}
    # a prefitted probe: its solver is known, the images it was trained on are not
    frame = evaluate_stores(train, val, probes={"linear": probes["linear"]}, progress=False)
    assert set(frame.linear_solver) == {"lbfgs"} and frame.linear_train_images.isna().all()


def test_lbfgs_probe_with_random_state_none(tmp_path):
    """random_state=None (no seed) still trains: every image without a cap, a fresh random
    subset of the right size with one."""
    _, _, train, val = twelve_image_stores(tmp_path)
    for cap, images in ((None, 12), (5, 5)):
        frame = evaluate_stores(
            train, val, probes="linear", progress=False,
            probe_kwargs={"linear": {"solver": "lbfgs", "random_state": None, "max_images": cap}},
        )  # fmt: skip
        assert set(frame.linear_train_images) == {images}
