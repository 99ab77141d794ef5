"""Tests of the STEGO head, loss, KNN positives, training, presets and checkpoint import."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings

import numpy as np
import pytest
import torch
from stego_fixtures import (
    HAVE_OMEGACONF,
    PAYLOADS,
    TinyStore,
    clustered_tokens,
    write_fake_checkpoint,
    write_payload_checkpoint,
)

from stego_probe.projections.stego import (
    PRESETS,
    RELEASES,
    CorrespondenceLoss,
    SegmentationHead,
    StegoConfig,
    StegoHead,
    compute_knns,
    derangement,
    get_preset,
    import_checkpoint,
    knn_search,
    pair_loss,
    pooled_descriptors,
    sample,
    super_perm,
)
from stego_probe.projections.stego import checkpoint as ckpt_mod
from stego_probe.projections.stego.knn import sibling_groups


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP overhead on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ loss
def _grid(*vecs):
    """Vectors -> a (1, C, 1, n) 'sampled grid' with one vector per position."""
    return torch.tensor(vecs, dtype=torch.float64).T[None, :, None, :].clone()


# f1 = [(1,0), (.6,.8)], f2 = [(1,0), (0,1)]  ->  F = [[1, 0], [.6, .8]]
# pointwise: m = .6, row means .5 / .7  ->  F' = [[1.1, .1], [.5, .7]]
# s1 = [(1,0), (0,1)], s2 = [(1,0), (-.6,.8)] ->  Sigma = [[1, -.6], [0, .8]]
# shift b = .3; loss = mean(-clamp(Sigma) * (F' - b)) over the 4 pairs.
@pytest.mark.parametrize(
    "pointwise, zero_clamp, stabilize, expected",
    [
        (False, True, False, -(1 * 0.7 + 0 + 0 + 0.8 * 0.5) / 4),
        (False, False, False, -(1 * 0.7 + (-0.6) * (-0.3) + 0 + 0.8 * 0.5) / 4),
        (True, True, False, -(1 * 0.8 + 0 + 0 + 0.8 * 0.4) / 4),
        (True, False, False, -(1 * 0.8 + (-0.6) * (-0.2) + 0 + 0.8 * 0.4) / 4),
        (False, True, True, -(0.8 * 0.7 + 0 + 0 + 0.8 * 0.5) / 4),  # Sigma capped at .8
    ],
)
def test_pair_loss_hand_computed(pointwise, zero_clamp, stabilize, expected):
    f1, f2 = _grid((1, 0), (0.6, 0.8)), _grid((1, 0), (0, 1))
    s1, s2 = _grid((2, 0), (0, 3)), _grid((1, 0), (-0.6, 0.8))  # norms do not matter
    loss, cd = pair_loss(f1, f2, s1, s2, 0.3, pointwise, zero_clamp, stabilize)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(cd.reshape(2, 2).numpy(), [[1, -0.6], [0, 0.8]], atol=1e-12)


@pytest.mark.parametrize("zero_clamp", [True, False])
def test_pair_loss_gradient_and_clamp(zero_clamp):
    f1, f2 = _grid((1, 0), (0.6, 0.8)), _grid((1, 0), (0, 1))
    f1.requires_grad_(True)
    s1 = _grid((1, 0), (0, 1)).requires_grad_(True)
    s2 = _grid((1, 0), (-0.6, 0.8)).requires_grad_(True)
    loss, cd = pair_loss(f1, f2, s1, s2, 0.3, pointwise=False, zero_clamp=zero_clamp)
    cd.retain_grad()
    loss.backward()
    fd = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    want = -(fd - 0.3) / 4
    if zero_clamp:  # below 0 the clamp kills the gradient
        want = torch.where(cd.detach().reshape(2, 2) > 0, want, torch.zeros_like(want))
    torch.testing.assert_close(cd.grad.reshape(2, 2), want)
    assert f1.grad is None  # the feature correlation is a fixed target
    assert s1.grad.abs().sum() > 0 and s2.grad.abs().sum() > 0  # both code sides get gradient


def test_sample_corners_and_axis_swap():
    t = torch.arange(12.0).reshape(1, 1, 3, 4)
    u = torch.tensor([[[[-1.0, -1.0], [1.0, -1.0]], [[-1.0, 1.0], [0.0, 0.0]]]])  # (1, 2, 2, 2)
    out = sample(t, u)[0, 0]
    assert out.shape == (2, 2)
    assert out[0, 0] == t[0, 0, 0, 0]  # (-1, -1): top-left token centre
    # u[0, 0, 1] = (x=+1, y=-1) is the top-right token, placed at (1, 0) by the axis swap
    assert out[1, 0] == t[0, 0, 0, 3]
    assert out[0, 1] == t[0, 0, 2, 0]  # (x=-1, y=+1): bottom-left
    # centre with align_corners=True: row 1, column 1.5
    assert out[1, 1] == pytest.approx((t[0, 0, 1, 1] + t[0, 0, 1, 2]).item() / 2)


def test_super_perm_reference_properties():
    g = torch.Generator().manual_seed(0)
    assert super_perm(1, generator=g).tolist() == [0]  # B=1: the anchor is its own negative
    saw_duplicate = False
    for n in range(2, 7):
        for _ in range(60):
            p = super_perm(n, generator=g)
            assert p.dtype == torch.int64 and p.shape == (n,)
            assert ((p >= 0) & (p < n)).all()
            assert (p != torch.arange(n)).all()  # no fixed points for B >= 2
            saw_duplicate |= len(set(p.tolist())) < n
    assert saw_duplicate  # not a permutation in general (quirk Q9)


def test_derangement_uniform_without_fixed_points():
    g = torch.Generator().manual_seed(0)
    counts: dict = {}
    for _ in range(900):
        p = derangement(4, generator=g)
        assert sorted(p.tolist()) == [0, 1, 2, 3]
        assert (p != torch.arange(4)).all()
        counts[tuple(p.tolist())] = counts.get(tuple(p.tolist()), 0) + 1
    assert len(counts) == 9  # D(4) = 9 derangements, all reached
    assert min(counts.values()) > 60 and max(counts.values()) < 140  # ~100 each
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1)


def _one_hot_batch(b, c=4, h=3, w=3):
    """Each image's tokens are all e_i: same-image correlations 1, cross-image 0."""
    x = torch.zeros(b, c, h, w)
    for i in range(b):
        x[i, i] = 1.0
    return x


def test_negatives_come_from_other_images():
    loss = CorrespondenceLoss(pointwise=False, feature_samples=3, neg_inter_shift=0.25)
    g = torch.Generator().manual_seed(0)
    x = _one_hot_batch(3)
    _, parts = loss(x, x, x, x, generator=g)
    assert parts["rand"].item() == 0.0  # derangement: always another image, F = Sigma = 0
    ref = CorrespondenceLoss(
        pointwise=False, feature_samples=3, neg_inter_shift=0.25, neg_index="super_perm"
    )
    x1 = _one_hot_batch(1)
    _, parts = ref(x1, x1, x1, x1, generator=g)
    assert parts["rand"].item() == pytest.approx(-(1 - 0.25))  # B=1: anchor is the negative
    with pytest.raises(ValueError, match="at least 2"):
        loss(x1, x1, x1, x1, generator=g)
    with pytest.raises(ValueError, match="neg_index"):
        CorrespondenceLoss(neg_index="perm")


def test_correspondence_loss_combines_terms_and_is_seeded():
    torch.manual_seed(0)
    f, s = torch.randn(4, 6, 5, 5), torch.randn(4, 3, 5, 5, requires_grad=True)
    fp, sp = torch.randn(4, 6, 5, 5), torch.randn(4, 3, 5, 5, requires_grad=True)
    lf = CorrespondenceLoss(
        pos_intra_weight=0.5,
        pos_inter_weight=2.0,
        neg_inter_weight=0.25,
        correspondence_weight=3.0,
        feature_samples=4,
    )
    total, parts = lf(f, s, fp, sp, generator=torch.Generator().manual_seed(1))
    want = 3.0 * (2.0 * parts["knn"] + 0.5 * parts["self"] + 0.25 * parts["rand"])
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    assert parts["cd_self"].shape == (4, 4, 4, 4, 4)
    assert parts["cd_rand"].shape == (4 * 5, 4, 4, 4, 4)  # neg_samples = 5 draws
    total.backward()
    assert sp.grad.abs().sum() > 0  # the KNN term trains the positive's code as well
    again, _ = lf(f, s, fp, sp, generator=torch.Generator().manual_seed(1))
    assert again.item() == total.item()


class _PerPairNormalizedLoss(CorrespondenceLoss):
    """The loss as it was before issue 13: both grids normalised inside every pair term."""

    def __call__(self, f, s, f_pos, s_pos, generator=None):
        b, n = s.shape[0], self.feature_samples
        u1 = torch.rand(b, n, n, 2, generator=generator) * 2 - 1
        u2 = torch.rand(b, n, n, 2, generator=generator) * 2 - 1
        fa, sa = sample(f, u1), sample(s, u1)
        kw = dict(pointwise=self.pointwise, zero_clamp=self.zero_clamp, stabilize=self.stabilize)
        l_self, cd_self = pair_loss(fa, fa, sa, sa, self.pos_intra_shift, **kw)
        l_knn, cd_knn = pair_loss(
            fa, sample(f_pos, u2), sa, sample(s_pos, u2), self.pos_inter_shift, **kw
        )
        index = derangement if self.neg_index == "derangement" else super_perm
        rand = []
        for _ in range(self.neg_samples):
            p = index(b, None, generator)
            rand.append(
                pair_loss(fa, sample(f[p], u2), sa, sample(s[p], u2), self.neg_inter_shift, **kw)
            )
        l_rand = torch.stack([r[0] for r in rand]).mean()
        total = self.correspondence_weight * (
            self.pos_inter_weight * l_knn
            + self.pos_intra_weight * l_self
            + self.neg_inter_weight * l_rand
        )
        parts = dict(self=l_self, knn=l_knn, rand=l_rand, cd_self=cd_self, cd_knn=cd_knn)
        return total, {**parts, "cd_rand": torch.cat([r[1] for r in rand])}


@pytest.mark.parametrize("neg_index", ["derangement", "super_perm"])
def test_grids_normalised_once_give_the_per_pair_loss(neg_index, monkeypatch):
    """Each sampled grid is normalised once per step (issue 13): the same losses, correlations
    and gradients as normalising inside every pair term, with far fewer F.normalize calls."""
    torch.manual_seed(0)
    f, fp = torch.randn(4, 6, 5, 5), torch.randn(4, 6, 5, 5)
    out = {}
    for name, cls in (("old", _PerPairNormalizedLoss), ("new", CorrespondenceLoss)):
        s = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(2)).requires_grad_()
        sp = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(3)).requires_grad_()
        calls = []

        def counted(*a, real=torch.nn.functional.normalize, calls=calls, **k):
            calls.append(1)
            return real(*a, **k)

        real = torch.nn.functional.normalize
        monkeypatch.setattr(torch.nn.functional, "normalize", counted)
        total, parts = cls(feature_samples=4, neg_index=neg_index)(
            f, s, fp, sp, generator=torch.Generator().manual_seed(1)
        )
        monkeypatch.setattr(torch.nn.functional, "normalize", real)
        total.backward()
        out[name] = (total, parts, s.grad, sp.grad, len(calls))
    (t0, p0, g0, gp0, n0), (t1, p1, g1, gp1, n1) = out["old"], out["new"]
    assert abs(t0.item() - t1.item()) <= 1e-6
    for k in p0:
        torch.testing.assert_close(p1[k], p0[k], atol=1e-6, rtol=0)
    torch.testing.assert_close(g1, g0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gp1, gp0, atol=1e-6, rtol=1e-5)
    assert (n0, n1) == (4 * (2 + 5), 2 * (2 + 5))  # neg_samples = 5


def test_training_losses_unchanged_by_normalising_once(toy, monkeypatch):
    """A fixed-seed training run: the per-step losses of the shipped loss and of the per-pair
    normalised one agree to 1e-6."""
    from stego_probe.projections.stego import train as train_mod
    from stego_probe.projections.stego.train import train_stego

    train = toy[0]
    cfg = {**get_preset("synthetic").to_dict(), "steps": 8, "batch_size": 6, "knn_k": 8}
    new = train_stego(train, cfg, n_classes=3, progress=False)["history"]
    monkeypatch.setattr(train_mod, "CorrespondenceLoss", _PerPairNormalizedLoss)
    old = train_stego(train, cfg, n_classes=3, progress=False)["history"]
    assert len(new) == len(old) == 8
    for a, b in zip(old, new, strict=True):
        for k in (k for k in a if k.startswith(("loss", "corr"))):
            assert abs(a[k] - b[k]) <= 1e-6, (a["step"], k, a[k], b[k])


# ------------------------------------------------------------------ head
def test_head_dropout_masks_independent_and_eval_deterministic():
    torch.manual_seed(0)
    head = SegmentationHead(32, 5, head_dropout=0.5)
    masks = []
    head.dropout.register_forward_hook(lambda m, i, o: masks.append((o == 0).all(-1).all(-1)))
    x = torch.rand(2, 32, 3, 3) + 0.1
    head.train()
    f_t, s = head(x)
    assert len(masks) == 3  # delta1, delta2 (head input), delta3 (teacher)
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    kept = ~masks[2]
    torch.testing.assert_close(f_t[kept], (x * 2)[kept])  # kept channels scaled by 1/(1-p)
    head.eval()
    f_t, s = head(x)
    assert torch.equal(f_t, x)
    w1, b1 = head.cluster1[0].weight[:, :, 0, 0], head.cluster1[0].bias
    w2, b2 = head.cluster2[0].weight[:, :, 0, 0], head.cluster2[0].bias
    w3, b3 = head.cluster2[2].weight[:, :, 0, 0], head.cluster2[2].bias
    xf = x.permute(0, 2, 3, 1)
    want = xf @ w1.T + b1 + torch.relu(xf @ w2.T + b2) @ w3.T + b3
    torch.testing.assert_close(s, want.permute(0, 3, 1, 2))
    assert torch.equal(head(x)[1], s)
    lin = SegmentationHead(32, 5, projection_type="linear", teacher_dropout=False).train()
    assert not hasattr(lin, "cluster2") and torch.equal(lin(x)[0], x)
    with pytest.raises(ValueError, match="projection_type"):
        SegmentationHead(32, 5, projection_type=None)


# ------------------------------------------------------------------ KNN
def _knn_store(n=40, dim=8, seed=0, ids=None):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(n, 3, 3, dim)).astype(np.float32)
    return TinyStore(t, np.zeros((n, 6, 6), np.int64), 2, ids=ids)


def test_knn_matches_brute_force_without_self():
    store = _knn_store()
    g = store._t.mean(axis=(1, 2))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled_descriptors(store, batch_size=7), g, rtol=1e-5, atol=1e-6)
    sims = g @ g.T
    np.fill_diagonal(sims, -np.inf)
    want = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    got = compute_knns(store, 10)
    assert got.dtype == np.int64 and got.shape == (40, 10)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(knn_search(pooled_descriptors(store), 10, block_size=7), want)
    ref = compute_knns(store, 10, knn_self_rank0=True)  # parity table: self at rank 0
    np.testing.assert_array_equal(ref[:, 0], np.arange(40))
    np.testing.assert_array_equal(ref[:, 1:], want[:, :9])
    with pytest.raises(ValueError, match="k=40"):
        compute_knns(store, 40)


def test_knn_duplicates_and_siblings():
    store = _knn_store(n=20)
    store._t[5] = store._t[3]  # exact duplicate: self must still be removed by index
    nns = compute_knns(store, 5)
    assert 3 not in nns[3] and nns[3, 0] == 5 and nns[5, 0] == 3
    ids = [f"im{i // 5}_c{i % 5}" for i in range(20)]
    np.testing.assert_array_equal(sibling_groups(ids), np.repeat(np.arange(4), 5))
    store = _knn_store(n=20, ids=ids)
    nns = compute_knns(store, 6, exclude_siblings=True)
    assert (nns // 5 != np.arange(20)[:, None] // 5).all()


def test_knn_cache_keyed_on_provenance(tmp_path):
    store = _knn_store()
    a = compute_knns(store, 5, cache_dir=tmp_path)
    reads = store.reads
    b = compute_knns(store, 5, cache_dir=tmp_path)
    assert store.reads == reads and np.array_equal(a, b)  # loaded, not recomputed
    store.provenance["weights_sha256"] = "1" * 64
    compute_knns(store, 5, cache_dir=tmp_path)
    assert store.reads > reads and len(list(tmp_path.glob("knn_*.npz"))) == 2


def test_knn_cache_damage_is_detected_and_recomputed(tmp_path):
    from stego_probe.projections.stego.knn import KNNCacheError, load_knns, save_knns

    store = _knn_store()
    want = compute_knns(store, 5, cache_dir=tmp_path)
    (path,) = tmp_path.glob("knn_*.npz")
    good = path.read_bytes()
    key = json.loads(str(np.load(path)["key"]))
    data_at = good.index(want.tobytes()[:64])  # first bytes of the table inside the zip

    def flipped(b):
        b = bytearray(b)
        b[data_at] ^= 0x01  # an index still in range: only the zip member's CRC catches it
        return bytes(b)

    damaged = {
        "empty": b"",
        "truncated_10": good[:10],
        "truncated_half": good[: len(good) // 2],
        "truncated_end": good[:-1],
        "flipped": flipped(good),
    }
    for name, content in damaged.items():
        path.write_bytes(content)
        with pytest.raises(KNNCacheError) as e:
            load_knns(path, key)
        msg = str(e.value)
        assert len(msg.splitlines()) == 1 and str(path) in msg and "expected" in msg, (name, msg)
        reads = store.reads
        with pytest.warns(UserWarning, match="recomputing"):
            got = compute_knns(store, 5, cache_dir=tmp_path)
        assert store.reads > reads, name  # recomputed from the store, not read as data
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(load_knns(path, key), want)  # and the cache repaired
    # a well-formed file whose table does not fit its key: shape, then index range
    for nns, what in ((want[:-1], "shape"), (want + 40, "outside")):
        save_knns(path, nns, key)
        with pytest.raises(KNNCacheError, match=what):
            load_knns(path, key)
        with pytest.warns(UserWarning, match="recomputing"):
            np.testing.assert_array_equal(compute_knns(store, 5, cache_dir=tmp_path), want)


# ------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def toy():
    t, labels = clustered_tokens(36, seed=0)
    return TinyStore(t[:24], labels[:24], 3), TinyStore(t[24:], labels[24:], 3), t[24:], labels[24:]


def _fit(train, val, steps, **kw):
    params = dict(
        n_components=8,
        steps=steps,
        batch_size=8,
        val_every=20,
        feature_samples=5,
        knn_k=8,
        lr=2e-3,
        progress=False,
        random_state=0,
    )
    params.update(kw)
    cache = params.pop("knn_cache_dir", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return StegoHead(**params).fit(train, val_store=val, knn_cache_dir=cache)


def _kmeans_miou(codes, labels):
    from stego_probe.metrics import segmentation_metrics
    from stego_probe.probes.kmeans import KMeansProbe

    pred = KMeansProbe(3, niter=20, nredo=1, random_state=0).fit(codes).predict(codes)
    return segmentation_metrics(pred, labels[:, ::2, ::2], 3)["miou"]


@pytest.fixture(scope="module")
def trained(toy):
    train, val, _, _ = toy
    return _fit(train, val, 60)


def test_training_lowers_loss_and_improves_miou(toy, trained):
    _, val, vt, vl = toy
    with torch.random.fork_rng():  # the initial head of a fit with random_state=0
        torch.manual_seed(0)
        init = SegmentationHead(vt.shape[-1], 8).eval()
    hist = trained.history_frame()
    assert hist["step"].tolist() == list(range(61))
    corr = hist.loc[hist.step > 0, "loss_corr"].to_numpy()
    assert corr[-10:].mean() < corr[:10].mean()
    val_rows = hist.dropna(subset=["val_cluster_miou"])
    assert val_rows["step"].tolist() == [0, 20, 40, 60]
    assert (
        val_rows.set_index("step").loc[trained.best_step_, "val_cluster_miou"]
        > hist.loc[0, "val_cluster_miou"]
    )
    x = vt.transpose(0, 3, 1, 2)
    init_codes = init.code(torch.from_numpy(x)).detach().numpy()
    assert _kmeans_miou(trained.transform(x), vl) > _kmeans_miou(init_codes, vl) + 5
    # the selected (best) step and the last state are both kept
    assert trained.selected_ == "best_val_cluster_miou"
    assert trained.selected_step_ == trained.best_step_
    assert set(trained.states_) == {"last", "best"}
    row = val_rows.set_index("step").loc[60]
    assert len(row["hist_rand"]) == 20 and sum(row["hist_rand"]) > 0


def test_training_is_seeded_and_leaves_global_rng_alone(toy):
    train, val, _, _ = toy
    state = torch.get_rng_state()
    a = _fit(train, None, 3, select="last")
    assert torch.equal(torch.get_rng_state(), state)
    b = _fit(train, None, 3, select="last")
    c = _fit(train, None, 3, select="last", random_state=1)
    assert a.history_ == b.history_ and a.history_ != c.history_
    x = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    assert np.array_equal(a.transform(x), b.transform(x))


def test_positive_ranks_respect_self_exclusion(toy, monkeypatch):
    from stego_probe.projections.stego import train as train_mod

    store = toy[0]
    nns = compute_knns(store, 8)
    seen = []
    real = train_mod._to_bchw
    monkeypatch.setattr(train_mod, "_to_bchw", lambda t, d: seen.append(t.copy()) or real(t, d))
    _fit(store, None, 4, select="last", num_neighbors=7)
    # every second tensor is the positives' tokens: each must be one of its anchor's 7 neighbours
    for anchors, positives in zip(seen[::2], seen[1::2]):
        for a, p in zip(anchors, positives):
            i = int(np.flatnonzero((store._t == a).all(axis=(1, 2, 3)))[0])
            j = int(np.flatnonzero((store._t == p).all(axis=(1, 2, 3)))[0])
            assert j != i and j in nns[i, :7]


def test_knn_dropout_parity_reaches_the_knn_table(toy, monkeypatch):
    from stego_probe.projections.stego import train as train_mod

    store = toy[0]
    calls = []
    real = train_mod.compute_knns
    monkeypatch.setattr(
        train_mod, "compute_knns", lambda *a, **kw: calls.append(kw) or real(*a, **kw)
    )
    _fit(store, None, 1, select="last", knn_dropout=0.1)
    _fit(store, None, 1, select="last")
    assert [c["dropout"] for c in calls] == [0.1, 0.0]
    # dropout on the pooled features changes the neighbours; eval mode is deterministic
    with_dropout = real(store, 8, dropout=0.5, random_state=0)
    assert not np.array_equal(with_dropout, real(store, 8))
    np.testing.assert_array_equal(real(store, 8), real(store, 8))


def test_save_load_roundtrip(tmp_path, trained):
    path = trained.save(tmp_path / "head.pt")
    back = StegoHead.load(path)
    x = torch.randn(2, 16, 4, 4)
    assert torch.equal(back.transform(x), trained.transform(x))
    assert back.history_ == trained.history_ and back.best_step_ == trained.best_step_
    assert back.get_params() == trained.get_params()
    assert back.provenance == trained.provenance
    for which in ("last", "best"):
        for part, sd in trained.states_[which].items():
            for k, v in sd.items():
                assert torch.equal(back.states_[which][part][k], v)
    cp, lp = back.probes()
    np.testing.assert_array_equal(cp.cluster_centers_, trained.cluster_probe_["clusters"].numpy())


def test_nan_tokens_name_the_store_and_the_image(toy):
    """One NaN token in the training store: the KNN descriptors, a preloaded store, a
    streamed store with a given KNN table (no descriptor pass) and the validation store each
    refuse naming the store, the image index and the image id (not a FAISS error or a NaN loss).
    """
    from stego_probe.projections.stego.train import train_stego

    train, val, _, _ = toy
    bad = TinyStore(train._t.copy(), train._l, 3)
    bad.path = "/data/stores/train_bad"
    bad._t[9, 1, 0, 2] = np.nan
    want = r"'/data/stores/train_bad' has NaN .*image index 9, id 'img9'"
    with pytest.raises(ValueError, match=want):
        pooled_descriptors(bad)
    with pytest.raises(ValueError, match=want):  # preloaded: checked whole before training
        _fit(bad, val, 2)
    cfg = StegoHead(n_components=8, steps=40, batch_size=8, knn_k=8).resolved_params()
    knn = compute_knns(train, 8)
    with pytest.raises(ValueError, match=want):  # streamed, table given: the batch read
        train_stego(bad, cfg, n_classes=3, knn=knn, progress=False, preload_bytes=0)
    bad_val = TinyStore(val._t.copy(), val._l, 3)
    bad_val._t[4, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"TinyStore has NaN .*image index 4, id 'img4'"):
        _fit(train, bad_val, 2)


def test_fit_input_errors(toy):
    train, _, t, _ = toy
    with pytest.raises(ValueError, match=r"\(N, h, w, C\)"):
        StegoHead(progress=False).fit(t.reshape(-1, 16))
    with pytest.raises(ValueError, match="select"):
        StegoHead(select="best").resolved_params()
    with pytest.raises(ValueError, match="batch_size=32 exceeds"):
        _fit(train, None, 1, batch_size=32)
    with pytest.raises(ValueError, match="knn"):
        StegoHead(steps=1, batch_size=4, progress=False).fit(train, knn=np.zeros((3, 8), int))


# ------------------------------------------------------------------ presets
def test_presets_match_protocol_table():
    table = {  # PROTOCOL §3.3
        "cocostuff27": (90, True, 0.1538476246415498, 1, 0.1, 1, 0.2, 0.12, 7000, 32, "five", 27),
        "cityscapes27": (
            100,
            False,
            0.9058762625226623,
            0.577453483136995,
            1,
            0.31361241889448443,
            0.1754346515479633,
            0.45828472207,
            7000,
            32,
            "five",
            27,
        ),
        "potsdam3": (70, True, 0.63, 0.25, 0.67, 0.76, 0.02, 0.08, 5000, 16, "none", 3),
    }
    keys = (
        "dim",
        "pointwise",
        "neg_inter_weight",
        "pos_inter_weight",
        "pos_intra_weight",
        "neg_inter_shift",
        "pos_inter_shift",
        "pos_intra_shift",
        "steps",
        "batch_size",
        "crop",
        "n_classes",
    )
    for name, values in table.items():
        p = {**get_preset(name).to_dict(), **RELEASES[name]}
        assert tuple(p[k] for k in keys) == values, name
        assert (
            p["lr"],
            p["probe_lr"],
            p["num_neighbors"],
            p["feature_samples"],
            p["neg_samples"],
            p["zero_clamp"],
            p["stabilize"],
            p["val_every"],
        ) == (5e-4, 5e-3, 7, 11, 5, True, False, 100)
        assert p["preset"] == name and get_preset(name) is PRESETS[name]
    assert RELEASES["potsdam3"]["backbone"] == "dino_vits8"
    assert (
        get_preset(None) == StegoConfig() == dataclasses.replace(PRESETS["potsdam3"], preset=None)
    )
    assert StegoHead(preset="cityscapes27").resolved_params()["pointwise"] is False
    cfg = StegoHead(preset="cocostuff27", n_components=12, steps=3).resolved_params()
    assert (cfg["dim"], cfg["steps"], cfg["batch_size"]) == (12, 3, 32)
    with pytest.raises(KeyError, match="unknown STEGO preset"):
        get_preset("voc")


# ------------------------------------------------------------------ StegoConfig / StegoHead params
@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("steps", 0, "an int >= 1"),
        ("steps", 2.0, "an int >= 1"),
        ("batch_size", True, "an int >= 1"),
        ("dim", -3, "an int >= 1"),
        ("random_state", -1, "an int >= 0"),
        ("extra_clusters", -1, "an int >= 0"),
        ("lr", 0.0, "a finite number > 0.0"),
        ("probe_lr", float("nan"), "a finite number > 0.0"),
        ("head_dropout", 1.0, "a finite number >= 0.0 and < 1.0"),
        ("knn_dropout", -0.1, "a finite number >= 0.0 and < 1.0"),
        ("neg_inter_shift", "0.5", "a finite number"),
        ("pointwise", 1, "True or False"),
        ("projection_type", None, "one of ('nonlinear', 'linear')"),
        ("neg_index", "perm", "one of ('derangement', 'super_perm')"),
    ],
)
def test_config_checks_name_the_field(field, value, expected):
    want = f"StegoConfig.{field}: expected {expected}, got"
    with pytest.raises(ValueError, match=re.escape(want)):
        StegoConfig(**{field: value})
    with pytest.raises(ValueError, match=re.escape(want)):  # replace() runs the checks too
        dataclasses.replace(PRESETS["potsdam3"], **{field: value})
    if value is not None:  # the estimator builds its config at construction
        with pytest.raises(ValueError, match=re.escape(want)):
            StegoHead(preset="synthetic", **{field: value})


def test_config_is_frozen_keyword_only_and_presets_are_instances():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["potsdam3"].steps = 1
    with pytest.raises(TypeError):
        StegoConfig(70)  # keyword-only
    cfg = dataclasses.replace(PRESETS["cocostuff27"], steps=3)
    assert (cfg.steps, cfg.dim, cfg.preset, PRESETS["cocostuff27"].steps) == (
        3,
        90,
        "cocostuff27",
        7000,
    )
    assert (
        StegoConfig(steps=np.int64(4)).steps == 4
        and type(StegoConfig(steps=np.int64(4)).steps) is int
    )


def test_stego_head_builds_one_config():
    head = StegoHead(preset="cocostuff27", n_components=12, steps=3, batch_size=None)
    assert head.config == dataclasses.replace(PRESETS["cocostuff27"], dim=12, steps=3)
    assert (head.preset, head.n_components, head.dim, head.random_state) == (
        "cocostuff27",
        12,
        12,
        0,
    )
    cfg = dataclasses.replace(PRESETS["synthetic"], steps=5)
    assert StegoHead(config=cfg).config is cfg and StegoHead(cfg, preset="synthetic").config is cfg
    assert StegoHead(cfg, knn_k=4).config == dataclasses.replace(cfg, knn_k=4)
    with pytest.raises(ValueError, match="disagree"):
        StegoHead(cfg, preset="potsdam3")
    with pytest.raises(ValueError, match="contradicts"):
        StegoHead(n_components=4, dim=5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'stepz'.*steps"):
        StegoHead(stepz=3)
    with pytest.raises(KeyError, match="unknown STEGO preset"):
        StegoHead(preset="voc")
    with pytest.raises(ValueError, match="n_classes"):
        StegoHead(n_classes=0).resolved_params()
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        StegoHead().transform(np.zeros((2, 6), np.float32))
    with pytest.raises(NotFittedError):
        StegoHead().probes()


def test_train_stego_preload_budget_counts_the_labels():
    """train_stego's preload_bytes covers tokens (float32) and labels (int64): with a budget
    the tokens fit in but not the labels, the store is streamed (read every step)."""
    from stego_probe.projections.stego.train import train_stego

    t, labels = clustered_tokens(12, label_scale=4, seed=0)
    tokens_bytes, labels_bytes = t.size * 4, labels.size * 8
    assert labels_bytes > tokens_bytes
    cfg = {**get_preset("synthetic").to_dict(), "steps": 3, "batch_size": 4, "knn_k": 4}
    knn = np.stack([np.roll(np.arange(12), -r) for r in range(1, 9)], axis=1)
    reads = {}
    for budget in (labels_bytes, tokens_bytes + labels_bytes):
        store = TinyStore(t, labels, 3)
        train_stego(store, cfg, n_classes=3, knn=knn, progress=False, preload_bytes=budget)
        reads[budget] = store.reads
    assert reads[tokens_bytes + labels_bytes] == 1  # preloaded: one read of the whole store
    assert reads[labels_bytes] == 2 * 3  # streamed: anchors and positives, every step


def test_get_set_params_and_clone():
    from sklearn.base import clone

    head = StegoHead(preset="synthetic", steps=7, n_classes=3, progress=False)
    params = head.get_params()
    assert set(params) == {"config", "preset", "n_classes", "select", "device", "progress"}
    copy = clone(head)
    assert copy.config == head.config and copy.n_classes == 3 and copy.progress is False
    copy.set_params(steps=9, n_components=5, device="cpu", select="last")
    assert (copy.config.steps, copy.config.dim, copy.select, copy.config.preset) == (
        9,
        5,
        "last",
        "synthetic",
    )
    assert head.config.steps == 7  # the original is unchanged
    copy.set_params(preset="potsdam3", batch_size=4)
    assert copy.config == dataclasses.replace(PRESETS["potsdam3"], batch_size=4)
    assert "steps=7" in repr(head) and "preset='synthetic'" in repr(head)


def test_flat_v1_file_still_loads(tmp_path):
    """A head file whose params were written by the flat 34-argument constructor (None: the
    preset's value) loads with the same configuration and the same codes."""
    from stego_fixtures import FLAT_PARAMS_V1

    tokens = np.random.default_rng(0).normal(size=(8, 4, 4, 6)).astype(np.float32)
    kw = dict(n_components=3, steps=2, batch_size=4, knn_k=3, num_neighbors=2)
    head = StegoHead(**kw, n_classes=2, select="last", progress=False).fit(tokens)
    from test_persist import legacy_projection_save

    from stego_probe.persist import read_estimator

    path = head.save(tmp_path / "new.pt")
    saved = read_estimator(path, kind="projection").params
    assert (
        saved["dim"] == 3
        and saved["feature_samples"] == 11
        and None not in (saved["pointwise"], saved["neg_inter_shift"])
    )  # every field written out, not "take the preset's"
    # the flat parameters were written in the torch.save format of that time
    legacy_projection_save(head, tmp_path / "v1.pt", params=FLAT_PARAMS_V1)
    old = StegoHead.load(tmp_path / "v1.pt")
    assert old.config == head.config == dataclasses.replace(StegoConfig(), **{
        "dim": 3, "steps": 2, "batch_size": 4, "knn_k": 3, "num_neighbors": 2
    })  # fmt: skip
    assert (old.n_classes, old.select, old.progress) == (2, "last", False)
    x = tokens[0].reshape(-1, 6)
    np.testing.assert_array_equal(old.transform(x), head.transform(x))
    assert StegoHead.load(path).config == head.config


def test_fit_knn_cache_dir(tmp_path, toy, monkeypatch):
    """fit(knn_cache_dir=) computes the table (sized by knn_table_size) once, caches it, reuses
    it, and trains exactly as with the table computed inside the loop."""
    from stego_probe.projections.stego import head as head_mod

    train, val, _, _ = toy
    calls = []
    real = head_mod.compute_knns
    monkeypatch.setattr(
        head_mod, "compute_knns", lambda *a, **kw: calls.append((a[1], kw)) or real(*a, **kw)
    )
    plain = _fit(train, None, 2, select="last", knn_dropout=0.1)
    cached = _fit(train, None, 2, select="last", knn_dropout=0.1, knn_cache_dir=tmp_path)
    assert len(calls) == 1 and calls[0][0] == 8 and calls[0][1]["dropout"] == 0.1
    assert calls[0][1]["cache_dir"] == tmp_path and len(list(tmp_path.glob("knn_*.npz"))) == 1
    assert plain.history_ == cached.history_ and cached._fit_info["knn"] == "cache"
    reads = train.reads
    again = _fit(train, None, 2, select="last", knn_dropout=0.1, knn_cache_dir=tmp_path)
    assert again.history_ == plain.history_
    assert train.reads - reads == 1  # the preload only: the table came from the cache


# ------------------------------------------------------------------ checkpoint import
#: --unpickler modes available here (omegaconf: only when it is installed).
MODES = ["auto", "stub"] + (["omegaconf"] if HAVE_OMEGACONF else [])


def _force_reader(monkeypatch, reader: str) -> None:
    """Make the safe loader use only one of its two readers."""
    if reader == "weights_only":  # the allow-list unpickler must not be needed
        monkeypatch.setattr(
            ckpt_mod, "_allow_list_pickle", lambda allowed: pytest.fail("fell back")
        )
    elif reader == "allow_list":  # as on torch < 2.5 (no safe_globals context)
        monkeypatch.delattr(torch.serialization, "safe_globals")


@pytest.mark.parametrize("reader", ["weights_only", "allow_list"])
@pytest.mark.parametrize("unpickler", MODES)
def test_import_checkpoint_roundtrip(tmp_path, monkeypatch, unpickler, reader):
    path = tmp_path / "fake.ckpt"
    sd = write_fake_checkpoint(path, in_dim=6, dim=4, n_classes=3, extra_clusters=1)
    _force_reader(monkeypatch, reader)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the safe loader has nothing to warn about
        head, hp = import_checkpoint(path, unpickler=unpickler)
    assert hp["n_classes"] == 3 and hp["backbone"] == "dino_vits8" and hp["global_step"] == 1234
    assert hp["cfg"]["neg_inter_shift"] == 0.76 and hp["cfg"]["nested"] == {"a": 1, "b": [1, 2]}
    assert hp["cfg"]["crop_type"] is None and hp["cfg"]["dropout"] is True
    assert (
        head.resolved_params_["neg_inter_shift"] == 0.76 and head.resolved_params_["steps"] == 5000
    )
    for k in ("cluster1.0.weight", "cluster2.0.bias", "cluster2.2.weight"):
        assert torch.equal(head.head_.state_dict()[k], sd[f"net.{k}"])
    assert torch.equal(head.cluster_probe_["clusters"], sd["cluster_probe.clusters"])
    assert torch.equal(head.linear_probe_["weight"], sd["linear_probe.weight"])
    x = torch.randn(2, 6, 3, 3)
    xf = x.permute(0, 2, 3, 1)

    def w(k):
        return sd[f"net.{k}.weight"][:, :, 0, 0], sd[f"net.{k}.bias"]

    (w1, b1), (w2, b2), (w3, b3) = w("cluster1.0"), w("cluster2.0"), w("cluster2.2")
    want = xf @ w1.T + b1 + torch.relu(xf @ w2.T + b2) @ w3.T + b3
    torch.testing.assert_close(head.transform(x), want.permute(0, 3, 1, 2))
    cp, lp = head.probes()
    assert cp.n_clusters == 4 and lp.n_classes == 3
    back = StegoHead.load(head.save(tmp_path / "imported.pt"))
    assert torch.equal(back.transform(x), head.transform(x))


@pytest.mark.parametrize("reader", ["default", "allow_list"])
def test_import_checkpoint_attribute_dict_hparams(tmp_path, monkeypatch, reader):
    """weights_only cannot fill a dict subclass (SETITEMS), so this needs the allow-list reader."""
    path = tmp_path / "ad.ckpt"
    write_fake_checkpoint(path, attribute_dict=True)  # Lightning is not installed to read it
    _force_reader(monkeypatch, reader)
    _, hp = import_checkpoint(path, unpickler="stub")
    assert hp["n_classes"] == 3 and hp["cfg"]["nested"] == {"a": 1, "b": [1, 2]}


@pytest.mark.parametrize("reader", ["default", "allow_list"])
def test_import_checkpoint_admits_numpy_data(tmp_path, monkeypatch, reader):
    """Metrics logged as numpy scalars / arrays (data only) do not make a checkpoint unreadable."""
    path = tmp_path / "np.ckpt"
    extra = {"metrics": {"miou": np.float64(0.25), "hist": np.arange(4, dtype=np.int32)}}
    sd = write_fake_checkpoint(path, extra_entries=extra)
    _force_reader(monkeypatch, reader)
    head, hp = import_checkpoint(path, unpickler="stub")
    assert hp["n_classes"] == 3
    assert torch.equal(head.head_.state_dict()["cluster1.0.weight"], sd["net.cluster1.0.weight"])


def _checkpoint_with_pickle(path, pkl: bytes) -> None:
    """A torch zip checkpoint whose ``data.pkl`` is ``pkl`` (hand-written opcodes)."""
    import io
    import zipfile

    buf = io.BytesIO()
    torch.save({"state_dict": {}}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            data = pkl if item.filename.endswith("data.pkl") else zin.read(item.filename)
            zout.writestr(item, data)


@pytest.mark.parametrize(
    "target",
    [
        ("torch.storage", "TypedStorage"),
        ("torch.storage", "UntypedStorage"),
        ("typing", "Any"),
        ("torch._utils", "_rebuild_tensor_v2"),
    ],
)
@pytest.mark.parametrize("reader", ["default", "allow_list"])
def test_crafted_checkpoint_cannot_set_state_on_admitted_globals(
    tmp_path, monkeypatch, reader, target
):
    """BUILD on an admitted class or function would setattr on it for the whole process."""
    import importlib

    def glob(mod, name):
        return b"c" + mod.encode() + b"\n" + name.encode() + b"\n"

    def text(s):
        return b"X" + len(s).to_bytes(4, "little") + s.encode()

    # (None, {"pwned_attr": codecs.encode}) as the BUILD state of `target`, then {"state_dict": {}}
    pkl = (
        b"\x80\x02" + glob(*target) + b"N}" + text("pwned_attr") + glob("_codecs", "encode")
        + b"s\x86b0}" + text("state_dict") + b"}s."
    )  # fmt: skip
    path = tmp_path / "build.ckpt"
    _checkpoint_with_pickle(path, pkl)
    _force_reader(monkeypatch, reader)
    obj = getattr(importlib.import_module(target[0]), target[1])
    with pytest.raises(ValueError, match=rf"build.ckpt: refusing to load: .*{target[1]}.*BUILD"):
        import_checkpoint(path, unpickler="stub")
    assert not hasattr(obj, "pwned_attr")


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
@pytest.mark.parametrize("reader", ["default", "allow_list"])
@pytest.mark.parametrize("unpickler", MODES)
def test_crafted_checkpoint_runs_nothing(tmp_path, monkeypatch, unpickler, reader, kind):
    path, marker = tmp_path / "evil.ckpt", tmp_path / "marker"
    name = write_payload_checkpoint(path, kind, marker)
    _force_reader(monkeypatch, reader)
    with pytest.raises(ValueError) as e:
        import_checkpoint(path, unpickler=unpickler)
    assert not marker.exists()
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and str(path) in msg and f"global {name}," in msg, msg


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_crafted_checkpoint_payload_is_live_under_trust(tmp_path, kind):
    """Control for the test above: with trust=True the same file does run its payload."""
    path, marker = tmp_path / "evil.ckpt", tmp_path / "marker"
    write_payload_checkpoint(path, kind, marker)
    with pytest.warns(UserWarning, match="runs any code"):
        import_checkpoint(path, trust=True)
    assert marker.exists()


def test_allow_list_is_by_name_not_by_module(tmp_path):
    """Admitted modules (torch, collections, builtins) do not admit their other callables."""

    class Call:
        def __init__(self, fn, *args):
            self.fn, self.args = fn, args

        def __reduce__(self):
            return self.fn, self.args

    for fn, args, name in (
        (torch.load, (str(tmp_path / "x.pt"),), "torch.serialization.load"),
        (getattr, (dict, "fromkeys"), "builtins.getattr"),
        (__import__("collections").namedtuple, ("T", "a"), "collections.namedtuple"),
    ):
        path = tmp_path / "call.ckpt"
        torch.save({"state_dict": {}, "hyper_parameters": Call(fn, *args)}, path)
        with pytest.raises(ValueError, match=f"global {name},"):
            import_checkpoint(path)


@pytest.mark.skipif(HAVE_OMEGACONF, reason="omegaconf is installed")
def test_unpickler_omegaconf_needs_omegaconf(tmp_path):
    path = tmp_path / "fake.ckpt"
    write_fake_checkpoint(path)
    with pytest.raises(ImportError, match="--unpickler omegaconf"):
        import_checkpoint(path, unpickler="omegaconf")
    with pytest.raises(ValueError, match="unpickler must be one of"):
        import_checkpoint(path, unpickler="pickle")


def test_import_checkpoint_strict_keys(tmp_path):
    bad = tmp_path / "bad.ckpt"
    write_fake_checkpoint(bad, extra_keys={"net.cluster3.0.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="net.cluster3.0.weight"):
        import_checkpoint(bad)
    miss = tmp_path / "miss.ckpt"
    write_fake_checkpoint(miss, drop_keys=("linear_probe.bias",))
    with pytest.raises(KeyError, match="linear_probe.bias"):
        import_checkpoint(miss)
    lin = tmp_path / "lin.ckpt"
    write_fake_checkpoint(lin, nonlinear=False)
    head, _ = import_checkpoint(lin)
    assert head.head_.projection_type == "linear"
    odd = tmp_path / "odd.ckpt"
    write_fake_checkpoint(odd, extra_keys={"net.model.extra": [1, 2]})
    with pytest.raises(ValueError, match="'state_dict' must map names to tensors.*net.model.extra"):
        import_checkpoint(odd)
    with pytest.raises(FileNotFoundError):
        import_checkpoint(tmp_path / "none.ckpt")


def test_cli_import_and_train(tmp_path, capsys, toy):
    from stego_probe.cli.main import main
    from stego_probe.store import FeatureStore

    ckpt = tmp_path / "fake.ckpt"
    write_fake_checkpoint(ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["import-checkpoint", str(ckpt), "--out", str(tmp_path / "imp")]) == 0
    out = capsys.readouterr().out
    assert "neg_inter_shift: 0.76" in out and "stego_head.pt" in out
    assert StegoHead.load(tmp_path / "imp" / "stego_head.pt").dim == 4

    train, val, _, _ = toy
    for name, src in (("train", train), ("val", val)):
        fs = FeatureStore.create(
            tmp_path / name,
            n_images=src.n_images,
            grid=src.grid,
            dim=src.dim,
            label_shape=src.label_shape,
            provenance={**src.provenance, "split": name},
            chunk_images=src.n_images,
        )
        fs.write_block(0, src._t, src._l, src.ids)
        fs.mark_complete()
    args = [
        "train-stego",
        "--train-store",
        str(tmp_path / "train"),
        "--val-store",
        str(tmp_path / "val"),
        "--preset",
        "synthetic",
        "--dim",
        "5",
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--val-every",
        "2",
        "--knn-cache",
        str(tmp_path / "knn"),
        "--no-progress",
        "--out",
        str(tmp_path / "h.pt"),
    ]
    assert main(args) == 0
    assert "selected best_val_cluster_miou" in capsys.readouterr().out
    head = StegoHead.load(tmp_path / "h.pt")
    assert head.dim == 5 and head.n_steps_completed_ == 4 and math.isfinite(head.best_step_)
    assert len(list((tmp_path / "knn").glob("knn_*.npz"))) == 1
    assert main(args[:5] + ["--preset", "nope"] + args[7:]) == 1  # clean error, no traceback


def _write_store(path, src, **prov):
    from stego_probe.store import FeatureStore

    fs = FeatureStore.create(
        path,
        n_images=src.n_images,
        grid=src.grid,
        dim=src.dim,
        label_shape=src.label_shape,
        provenance={**src.provenance, **prov},
        chunk_images=src.n_images,
    )
    fs.write_block(0, src._t, src._l, src.ids)
    fs.mark_complete()
    return fs


def test_cli_bad_input_is_one_clear_line(tmp_path, capsys, toy):
    from stego_probe.cli.main import main

    def err(argv):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            assert main(argv) == 1
        msg = capsys.readouterr().err.strip()
        assert len(msg.splitlines()) == 1 and "Traceback" not in msg, msg
        return msg

    # import-checkpoint on files that are not checkpoints: the file is named, nothing written
    for name, content in (("random.ckpt", bytes(range(256)) * 8), ("notes.ckpt", b"hello\n")):
        path = tmp_path / name
        path.write_bytes(content)
        msg = err(["import-checkpoint", str(path), "--out", str(tmp_path / "imp")])
        assert f"{path}: not a PyTorch checkpoint" in msg
    assert not (tmp_path / "imp").exists()
    taken = tmp_path / "taken.txt"
    taken.write_text("keep")
    ckpt = tmp_path / "fake.ckpt"
    write_fake_checkpoint(ckpt)
    assert "--out" in err(["import-checkpoint", str(ckpt), "--out", str(taken)])
    assert taken.read_text() == "keep"

    train, val, _, _ = toy
    _write_store(tmp_path / "train", train)
    _write_store(tmp_path / "other_val", val, backbone="other", split="val")
    args = ["train-stego", "--train-store", str(tmp_path / "train"), "--preset", "synthetic",
            "--steps", "2", "--batch-size", "8", "--no-progress"]  # fmt: skip
    out = str(tmp_path / "h.pt")
    # a val store of another backbone is refused before training
    msg = err(args + ["--val-store", str(tmp_path / "other_val"), "--out", out])
    assert "refusing to mix" in msg and "'fake' != 'other'" in msg
    assert "--val-store" in err(args + ["--val-store", str(tmp_path / "nope"), "--out", out])
    # --out naming a directory (here the training store) is refused before training
    before = sorted((tmp_path / "train").rglob("*"))
    assert "is a directory" in err(args + ["--out", str(tmp_path / "train")])
    assert sorted((tmp_path / "train").rglob("*")) == before
    if not torch.cuda.is_available():
        assert "CUDA is not available" in err(args + ["--device", "cuda", "--out", out])
    assert not (tmp_path / "h.pt").exists()


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_cli_import_crafted_checkpoint_runs_nothing(tmp_path, capsys, kind):
    from stego_probe.cli.checkpoint import UNPICKLERS
    from stego_probe.cli.main import main

    assert UNPICKLERS == ckpt_mod.UNPICKLERS
    path, marker, out = tmp_path / "evil.ckpt", tmp_path / "marker", tmp_path / "imp"
    name = write_payload_checkpoint(path, kind, marker)
    for mode in MODES:
        assert main(["import-checkpoint", str(path), "--unpickler", mode, "--out", str(out)]) == 1
        msg = capsys.readouterr().err.strip()
        assert len(msg.splitlines()) == 1 and "Traceback" not in msg, msg
        assert str(path) in msg and f"global {name}," in msg and "--trust-pickle" in msg, msg
        assert not marker.exists() and not out.exists()


def test_cli_import_trust_pickle(tmp_path, capsys):
    from stego_probe.cli.main import main

    path = tmp_path / "fake.ckpt"
    write_fake_checkpoint(path)
    argv = ["import-checkpoint", str(path), "--trust-pickle", "--out", str(tmp_path / "imp")]
    with pytest.warns(UserWarning, match="runs any code"):
        assert main(argv) == 0
    assert "neg_inter_shift: 0.76" in capsys.readouterr().out
    assert StegoHead.load(tmp_path / "imp" / "stego_head.pt").dim == 4


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--steps", "0", "expected a positive integer (>= 1), got '0'"),
        ("--steps", "-5", "expected a positive integer (>= 1), got '-5'"),
        ("--steps", "ten", "expected a positive integer (>= 1), got 'ten'"),
        ("--seed", "-1", "expected a non-negative integer (>= 0), got '-1'"),
        ("--batch-size", "0", "expected a positive integer (>= 1), got '0'"),
        ("--val-every", "0", "expected a positive integer (>= 1), got '0'"),
        ("--dim", "-2", "expected a positive integer (>= 1), got '-2'"),
    ],
)
def test_cli_train_int_flags_fail_at_parsing(tmp_path, capsys, flag, value, expected):
    from stego_probe.cli.main import main

    argv = ["train-stego", "--train-store", str(tmp_path / "nope"), "--preset", "synthetic",
            flag, value, "--out", str(tmp_path / "h.pt")]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"error: argument {flag}: {expected}"), err
    assert "Traceback" not in "\n".join(err) and not (tmp_path / "h.pt").exists()


def test_argtypes_accept_their_range():
    import argparse

    from stego_probe.cli.argtypes import nonneg_int, positive_int

    assert positive_int("1") == 1 and positive_int("7000") == 7000
    assert nonneg_int("0") == 0 and nonneg_int("3") == 3
    for fn, bad in ((positive_int, "0"), (nonneg_int, "-1"), (nonneg_int, "1.5")):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a"):
            fn(bad)
