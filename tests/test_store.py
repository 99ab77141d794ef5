"""FeatureStore: layout, reading API, chunk invariance, label pooling, token sampling."""

from __future__ import annotations

import builtins
import uuid

import numpy as np
import pytest

from stego_probe.store import (
    ArrayStore,
    FeatureStore,
    TokenStore,
    check_store_pair,
    is_store,
    pool_labels,
    preloaded,
    store_pair_differences,
)

N, H, W, C, LH, LW, K = 10, 3, 4, 5, 6, 8, 3


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.standard_normal((N, H, W, C)).astype(np.float32) * 3
    labels = rng.integers(-1, K, (N, LH, LW))
    ids = [f"img_{i:03d}" for i in range(N)]
    return tokens, labels, ids


def _write(
    path, tokens, labels, ids, chunk_images=4, shard_images=None, flipped=None, blocks=None, **kw
):
    """A store of ``tokens, labels, ids``, opened for reading; ``blocks``: write only those
    (the store is then incomplete); ``kw``: more :meth:`FeatureStore.create` options."""
    store = FeatureStore.create(
        path,
        n_images=len(ids),
        grid=tokens.shape[1:3],
        dim=tokens.shape[3],
        label_shape=labels.shape[1:],
        provenance={"n_classes": K, "class_names": ["a", "b", "c"], "backbone": "toy"},
        chunk_images=chunk_images,
        shard_images=shard_images,
        flipped=flipped is not None,
        **kw,
    )
    for b in range(store.n_blocks) if blocks is None else blocks:
        s, e = store.block_range(b)
        store.write_block(
            b,
            tokens[s:e],
            labels[s:e],
            ids[s:e],
            None if flipped is None else flipped[s:e],
        )
    if blocks is not None:
        return FeatureStore.open(path, allow_incomplete=True)
    store.mark_complete()
    return FeatureStore.open(path)


def _mem_url() -> str:
    return f"memory://test_store/{uuid.uuid4().hex}"


def test_round_trip_and_indexing(tmp_path):
    tokens, labels, ids = _data()
    store = _write(tmp_path / "s", tokens, labels, ids)
    fp16 = tokens.astype(np.float16).astype(np.float32)
    assert store.complete and store.n_images == N and len(store) == N
    assert store.grid == (H, W) and store.dim == C and store.label_shape == (LH, LW)
    assert store.n_classes == K and store.class_names == ["a", "b", "c"]
    assert store.ids == ids
    all_t = store.tokens(slice(None))
    assert all_t.dtype == np.float32 and all_t.shape == (N, H, W, C)
    np.testing.assert_array_equal(all_t, fp16)
    np.testing.assert_allclose(all_t, tokens, rtol=1e-3, atol=1e-3)
    lab = store.labels(slice(None))
    assert lab.dtype == np.int64
    np.testing.assert_array_equal(lab, labels)
    # int -> n = 1; negative ints; unsorted index arrays with repeats; strided slices; masks
    np.testing.assert_array_equal(store.tokens(3), fp16[3:4])
    np.testing.assert_array_equal(store.tokens(-1), fp16[-1:])
    idx = np.array([7, 2, 7, 0, 9])
    np.testing.assert_array_equal(store.tokens(idx), fp16[idx])
    np.testing.assert_array_equal(store.labels(idx), labels[idx])
    np.testing.assert_array_equal(store.tokens([1, 2, 3]), fp16[1:4])
    for idx in ([0, 2, 3, 8, 9], [9, 8, 1, 0], [4, 4, 5]):  # gathered chunk by chunk
        np.testing.assert_array_equal(store.tokens(np.array(idx)), fp16[idx])
    np.testing.assert_array_equal(store.labels(slice(1, 9, 3)), labels[1:9:3])
    mask = np.zeros(N, bool)
    mask[[2, 5]] = True
    np.testing.assert_array_equal(store.tokens(mask), fp16[mask])
    assert store.tokens(np.array([], dtype=int)).shape == (0, H, W, C)
    with pytest.raises(IndexError, match="out of range"):
        store.tokens(N)
    with pytest.raises(ValueError, match="no tokens_flipped"):
        store.tokens(0, flipped=True)


def test_flipped_tokens_stored_separately(tmp_path):
    tokens, labels, ids = _data()
    flipped = -tokens[:, :, ::-1] + 1
    store = _write(tmp_path / "s", tokens, labels, ids, flipped=flipped)
    assert store.has_flipped
    np.testing.assert_array_equal(
        store.tokens(slice(None), flipped=True), flipped.astype(np.float16).astype(np.float32)
    )
    both = [
        (a[0], b[0])
        for a, b in zip(store.iter_batches(3), store.iter_batches(3, flipped=True), strict=True)
    ]
    np.testing.assert_array_equal(np.concatenate([t for t, _ in both]), store.tokens(slice(None)))
    np.testing.assert_array_equal(
        np.concatenate([f for _, f in both]), store.tokens(slice(None), flipped=True)
    )


@pytest.mark.parametrize("batch_size", [1, 3, 4, 7, 64])
def test_iter_batches_is_batch_size_invariant(tmp_path, batch_size):
    tokens, labels, ids = _data(1)
    store = _write(tmp_path / "s", tokens, labels, ids, chunk_images=4)
    batches = list(store.iter_batches(batch_size))
    assert [len(b[2]) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    assert all(t.dtype == np.float32 and lab.dtype == np.int64 for t, lab, _ in batches)
    np.testing.assert_array_equal(
        np.concatenate([b[0] for b in batches]), store.tokens(slice(None))
    )
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels)
    assert sum((b[2] for b in batches), []) == ids
    # a sub-range that starts and stops inside chunks
    part = list(store.iter_batches(batch_size, start=3, stop=9))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in part]), labels[3:9])
    assert sum((b[2] for b in part), []) == ids[3:9]


@pytest.mark.parametrize("chunk_images,shard_images", [(1, None), (3, None), (32, None), (2, 4)])
def test_layout_does_not_change_content(tmp_path, chunk_images, shard_images):
    tokens, labels, ids = _data(2)
    ref = _write(tmp_path / "ref", tokens, labels, ids, chunk_images=4)
    other = _write(tmp_path / "o", tokens, labels, ids, chunk_images, shard_images)
    assert other.block_images == (shard_images or chunk_images)
    np.testing.assert_array_equal(other.tokens(slice(None)), ref.tokens(slice(None)))
    np.testing.assert_array_equal(other.labels(slice(None)), ref.labels(slice(None)))
    assert other.ids == ref.ids
    for (t1, l1, i1), (t2, l2, i2) in zip(ref.iter_batches(3), other.iter_batches(3), strict=True):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(l1, l2)
        assert i1 == i2


def test_pool_labels_majority_hand_case():
    # one 4x4 image, grid 2x2 -> 2x2-pixel cells
    lab = np.array(
        [
            [0, 0, 1, -1],
            [0, 2, -1, -1],
            [2, 2, -1, -1],
            [1, 1, -1, 7],  # 7 >= K: ignored like -1
        ]
    )[None]
    out = pool_labels(lab, (2, 2), n_classes=3)
    assert out.dtype == np.int64
    # cell (0,0): 0,0,0,2 -> 0; cell (0,1): 1 (only valid pixel); cell (1,0): 2,2,1,1 tie -> 1
    # (smaller id); cell (1,1): no valid pixel -> -1
    np.testing.assert_array_equal(out, [[[0, 1], [1, -1]]])
    # non-divisible grid: rows {0,1} -> 0 / {2} -> 1, columns {0} -> 0 / {1,2} -> 1
    lab = np.array([[0, 1, 1], [0, 2, 2], [2, 2, 1]])[None]
    np.testing.assert_array_equal(pool_labels(lab, (2, 2), 3), [[[0, 1], [2, 1]]])
    # n_classes=None uses max + 1; identity grid gives the labels back
    lab = np.array([[[3, -1], [0, 1]]])
    np.testing.assert_array_equal(pool_labels(lab, (2, 2)), lab)
    with pytest.raises(ValueError, match="grid"):
        pool_labels(lab, (3, 2), 4)


def test_token_labels_match_pooling(tmp_path):
    tokens, labels, ids = _data(3)
    store = _write(tmp_path / "s", tokens, labels, ids)
    tl = store.token_labels(slice(None))
    assert tl.shape == (N, H, W) and tl.dtype == np.int64
    np.testing.assert_array_equal(tl, pool_labels(labels, (H, W), K))
    np.testing.assert_array_equal(store.token_labels([4, 1]), tl[[4, 1]])


def _position_coded(n=12, h=3, w=4, c=4):
    """Tokens whose values encode (image, row, col) exactly in float16."""
    t = np.zeros((n, h, w, c), np.float32)
    t[..., 0] = np.arange(n)[:, None, None]
    t[..., 1] = np.arange(h)[None, :, None]
    t[..., 2] = np.arange(w)[None, None, :]
    t[..., 3] = 0.5
    return t


def test_sample_tokens(tmp_path, monkeypatch):
    tokens = _position_coded()
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, K, (12, 6, 8))
    ids = [str(i) for i in range(12)]
    store = _write(tmp_path / "s", tokens, labels, ids, chunk_images=4)
    tl = store.token_labels(slice(None))

    x, y = store.sample_tokens(40, seed=1, with_labels=True)
    assert x.shape == (40, 4) and x.dtype == np.float32 and y.dtype == np.int64
    pos = x[:, :3].astype(int)
    assert len({tuple(p) for p in pos}) == 40  # without replacement
    np.testing.assert_array_equal(y, tl[pos[:, 0], pos[:, 1], pos[:, 2]])
    # deterministic per seed, different across seeds
    np.testing.assert_array_equal(store.sample_tokens(40, seed=1), x)
    assert not np.array_equal(store.sample_tokens(40, seed=2), x)
    # asking for more than exists returns every token exactly once
    everything = store.sample_tokens(10_000, seed=0)
    assert everything.shape == (12 * 3 * 4, 4)
    assert len({tuple(p) for p in everything[:, :3].astype(int)}) == 12 * 12
    # images=int: k random images; images=array: only those
    sub = store.sample_tokens(10_000, seed=3, images=2)
    assert len(np.unique(sub[:, 0])) == 2 and sub.shape[0] == 2 * 12
    only = store.sample_tokens(5, seed=0, images=[5, 9])
    assert set(np.unique(only[:, 0]).astype(int)) <= {5, 9}

    # only the chunks holding drawn tokens are read: mapped chunk files of a local store,
    # zarr reads of a memory:// one
    mem = _write(_mem_url(), tokens, labels, ids, chunk_images=4)
    mapped, reads = [], []
    real_map, real_arr = FeatureStore._chunk_values, FeatureStore._arr
    monkeypatch.setattr(
        FeatureStore,
        "_chunk_values",
        lambda self, name, k: mapped.append((name, k)) or real_map(self, name, k),
    )

    class Spy:
        def __init__(self, arr):
            self.arr = arr

        def __getitem__(self, key):
            reads.append(key)
            return self.arr[key]

    def spy_arr(self, name):
        arr = real_arr(self, name)
        return Spy(arr) if name == "tokens" else arr

    monkeypatch.setattr(FeatureStore, "_arr", spy_arr)
    got = store.sample_tokens(6, seed=0, images=[5])
    assert set(got[:, 0].astype(int)) == {5}
    assert mapped == [("tokens", 1)] and not reads  # chunk 1 = images 4..7
    np.testing.assert_array_equal(mem.sample_tokens(6, seed=0, images=[5]), got)
    assert reads and all(k.start >= 4 and k.stop <= 8 for k in reads)


def test_incomplete_store(tmp_path):
    tokens, labels, ids = _data()
    path = tmp_path / "s"
    store = FeatureStore.create(
        path,
        n_images=N,
        grid=(H, W),
        dim=C,
        label_shape=(LH, LW),
        provenance={"n_classes": K},
        chunk_images=4,
    )
    store.write_block(1, tokens[4:8], labels[4:8], ids[4:8])
    with pytest.raises(ValueError, match=r"incomplete \(1/3 blocks"):
        FeatureStore.open(path)
    with pytest.raises(ValueError, match=r"blocks \[0, 2\]"):
        store.mark_complete()
    partial = FeatureStore.open(path, allow_incomplete=True)
    assert not partial.complete
    np.testing.assert_array_equal(partial.done_blocks(), [False, True, False])
    np.testing.assert_array_equal(partial.labels(slice(4, 8)), labels[4:8])
    assert (partial.labels(0) == -1).all() and (partial.tokens(0) == 0).all()
    assert partial.info()["blocks_written"] == 1


def test_memory_url_store():
    tokens, labels, ids = _data(4)
    url = _mem_url()
    store = _write(url, tokens, labels, ids, chunk_images=3)
    assert store.path == url and FeatureStore.exists(url)
    again = FeatureStore.open(url)
    assert again.complete and again.ids == ids
    np.testing.assert_array_equal(again.labels(slice(None)), labels)
    np.testing.assert_array_equal(
        again.tokens([9, 0]), tokens[[9, 0]].astype(np.float16).astype(np.float32)
    )
    info = again.info()
    assert info["size_bytes"] >= N * H * W * C * 2  # float16 tokens, uncompressed
    assert info["n_images"] == N and info["complete"]


def test_create_and_open_errors(tmp_path):
    tokens, labels, ids = _data()
    with pytest.raises(FileNotFoundError, match="no feature store"):
        FeatureStore.open(tmp_path / "missing")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    kw = dict(n_images=N, grid=(H, W), dim=C, label_shape=(LH, LW), provenance={})
    with pytest.raises(ValueError, match="not an empty directory"):
        FeatureStore.create(other, **kw)
    assert (other / "notes.txt").read_text() == "keep me"
    path = tmp_path / "s"
    _write(path, tokens, labels, ids)
    with pytest.raises(FileExistsError, match="exists already"):
        FeatureStore.create(path, **kw)
    fresh = FeatureStore.create(path, overwrite=True, chunk_images=4, **kw)
    assert not fresh.done_blocks().any() and not fresh.complete
    with pytest.raises(ValueError, match="tokens: expected"):
        fresh.write_block(0, tokens[:3], labels[:4], ids[:4])
    with pytest.raises(ValueError, match="ids: expected 4"):
        fresh.write_block(0, tokens[:4], labels[:4], ids[:3])
    with pytest.raises(ValueError, match="shard_images"):
        FeatureStore.create(tmp_path / "x", chunk_images=4, shard_images=6, **kw)
    read_only = FeatureStore.open(path, allow_incomplete=True)
    with pytest.raises(ValueError, match="read-only"):
        read_only.write_block(0, tokens[:4], labels[:4], ids[:4])


# ------------------------------------------------------------------ the store contract


def test_array_store_reads_as_the_feature_store(tmp_path):
    """Same content, same answers: tokens, labels, token labels, batches and the seeded token
    sample (the draw is shared), so an ArrayStore can stand in for a FeatureStore anywhere."""
    tokens, labels, ids = _data()
    disk = _write(tmp_path / "s", tokens.astype(np.float16), labels, ids)
    mem = ArrayStore(tokens.astype(np.float16), labels, n_classes=K, ids=ids)
    assert isinstance(mem, TokenStore) and isinstance(disk, TokenStore)
    assert is_store(mem) and is_store(disk) and not is_store(tokens) and not is_store(None)
    idx = np.array([7, 2, 5])
    np.testing.assert_array_equal(mem.tokens(idx), disk.tokens(idx))
    np.testing.assert_array_equal(mem.labels(idx), disk.labels(idx))
    np.testing.assert_array_equal(mem.token_labels(idx), disk.token_labels(idx))
    for seed, images in ((0, None), (3, 4), (1, [8, 1, 1])):
        a = mem.sample_tokens(17, seed=seed, with_labels=True, images=images)
        b = disk.sample_tokens(17, seed=seed, with_labels=True, images=images)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    for (t1, l1, i1), (t2, l2, i2) in zip(mem.iter_batches(3), disk.iter_batches(3), strict=True):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(l1, l2)
        assert list(i1) == list(i2)
    out = mem.tokens(slice(0, 2))
    out[:] = 0  # reads are copies: the store is unchanged
    assert np.array_equal(mem.tokens(slice(0, 2)), tokens[:2].astype(np.float16).astype(np.float32))


def test_preloaded_copies_small_stores_once_and_checks_them(tmp_path):
    tokens, labels, ids = _data()
    disk = _write(tmp_path / "s", tokens.astype(np.float16), labels, ids)
    big = preloaded(disk, limit_bytes=10)
    assert big is disk  # too large: streamed, unchecked here
    mem = preloaded(disk, limit_bytes=2**20)
    assert isinstance(mem, ArrayStore) and mem._tokens.dtype == np.float16  # lossless half
    assert mem.ids == disk.ids and mem.path == disk.path
    np.testing.assert_array_equal(mem.tokens(slice(None)), disk.tokens(slice(None)))
    pooled = preloaded(disk, limit_bytes=2**20, token_labels=True)
    np.testing.assert_array_equal(pooled.labels([1, 4]), disk.token_labels([1, 4]))
    assert preloaded(mem, 0) is mem  # in memory already
    bad = tokens.copy()
    bad[6, 0, 1, 2] = np.inf
    broken = _write(tmp_path / "b", bad, labels, ids)
    with pytest.raises(ValueError, match=r"infinite tokens .*image index 6, id 'img_006'"):
        preloaded(broken, limit_bytes=2**20)


def test_preloaded_counts_the_int64_labels_in_the_budget(tmp_path):
    """The budget covers the labels as int64, pixel grid or token grid (issue 13): a store
    whose tokens fit but whose labels alone exceed the budget is streamed."""
    tokens, labels, ids = _data()
    disk = _write(tmp_path / "s", tokens.astype(np.float16), labels, ids)
    token_bytes = N * H * W * C * 4
    pixel_labels, token_labels = N * LH * LW * 8, N * H * W * 8
    assert pixel_labels > token_bytes  # the labels alone exceed a budget the tokens fit in
    assert preloaded(disk, limit_bytes=token_bytes) is disk
    assert preloaded(disk, limit_bytes=pixel_labels) is disk  # labels alone: still too much
    assert preloaded(disk, limit_bytes=token_bytes + pixel_labels - 1) is disk
    assert isinstance(preloaded(disk, limit_bytes=token_bytes + pixel_labels), ArrayStore)
    # pooled to the token grid the labels are smaller, and counted at that size
    assert preloaded(disk, limit_bytes=token_bytes + token_labels - 1, token_labels=True) is disk
    pooled = preloaded(disk, limit_bytes=token_bytes + token_labels, token_labels=True)
    assert isinstance(pooled, ArrayStore)


def test_check_store_pair_lists_every_difference():
    t = np.zeros((2, 1, 1, 3), np.float32)
    prov = {"backbone": "vit", "weights_sha256": "a", "dataset": "d", "n_classes": 3}
    train = ArrayStore(t, n_classes=3, provenance=prov, path="/stores/train")
    check_store_pair(train, ArrayStore(t, n_classes=3, provenance=prov))  # compatible
    other = ArrayStore(
        np.zeros((0, 1, 1, 4), np.float32),
        n_classes=None,
        provenance={**prov, "backbone": "rn50", "patch_size": 16},
        path="/stores/val",
    )
    diffs = store_pair_differences(train, other)
    assert diffs == [
        "backbone: 'vit' != 'rn50'",
        "patch_size: None != 16",
        "val store is empty (no images)",
        "val store's provenance has no n_classes",
        "token width C: 3 != 4",
    ]
    with pytest.raises(ValueError, match=r"train store /stores/train and val store /stores/val: "):
        check_store_pair(train, other)


@pytest.mark.parametrize("kind", ["feature", "array", "memory"])
def test_sample_tokens_transform_is_applied_in_blocks_while_drawing(tmp_path, monkeypatch, kind):
    """sample_tokens(transform=f) equals f(sample_tokens()) row for row, whatever the block
    size, with the label flags unchanged; f never sees more than one block of rows."""
    import stego_probe.store.tokens as store_tokens

    tokens, labels, ids = _data()
    if kind == "array":
        store = ArrayStore(tokens.astype(np.float16), labels, n_classes=K)
    else:
        store = _write(tmp_path / "s" if kind == "feature" else _mem_url(), tokens, labels, ids)
    proj = np.random.default_rng(1).standard_normal((C, 2)).astype(np.float32)
    calls = []

    def f(rows):
        calls.append(rows.shape)
        return rows @ proj

    raw, lab, soft = store.sample_tokens(70, seed=3, with_labels=True, soft_labels=True)
    for block in (7, 1 << 16):
        monkeypatch.setattr(store_tokens, "TRANSFORM_BLOCK", block)
        calls.clear()
        codes, lab2, soft2 = store.sample_tokens(
            70, seed=3, with_labels=True, soft_labels=True, transform=f
        )
        assert codes.dtype == np.float32 and codes.shape == (70, 2)
        np.testing.assert_allclose(codes, raw @ proj, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(lab2, lab)
        np.testing.assert_array_equal(soft2, soft)
        assert max(s[0] for s in calls) <= block and sum(s[0] for s in calls) == 70
        assert all(s[1] == C for s in calls)
    # one block: a single call, in sample order, as f(sample) would be
    np.testing.assert_array_equal(codes, f(raw))
    # nothing drawn: the transform's width from no rows
    assert store.sample_tokens(0, transform=f).shape == (0, 2)
    with pytest.raises(ValueError, match=r"transform must map \(m, C\) rows to \(m, D\)"):
        store.sample_tokens(5, transform=lambda r: r[:1])


def _store_pair(tmp_path, n_classes, compress_tokens, label_hw=(LH, LW), compress_labels=True):
    """The same content in a local store (chunks read straight from their files) and a
    memory:// one (read through zarr)."""
    rng = np.random.default_rng(7)
    tokens = rng.standard_normal((N, H, W, C)).astype(np.float16)
    labels = rng.integers(-1, n_classes, (N, *label_hw))
    labels[:, :2] = n_classes - 1  # the largest class id survives the round trip
    ids = [f"im{i}" for i in range(N)]

    def write(path):
        store = FeatureStore.create(
            path,
            n_images=N,
            grid=(H, W),
            dim=C,
            label_shape=label_hw,
            provenance={"n_classes": n_classes},
            chunk_images=4,
            compress_tokens=compress_tokens,
            compress_labels=compress_labels,
        )
        for b in range(store.n_blocks):
            s, e = store.block_range(b)
            store.write_block(b, tokens[s:e], labels[s:e], ids[s:e])
        store.mark_complete()
        return FeatureStore.open(path)

    return write(tmp_path / "local"), write(_mem_url()), tokens, labels


@pytest.mark.parametrize(
    "n_classes,compress_tokens,label_hw,compress_labels",
    [
        (K, False, (LH, LW), True),
        (40_000, True, (LH, LW), True),
        (K, False, (128, 128), True),
        (K, False, (128, 128), False),
        (40_000, False, (LH, LW), False),
    ],
    ids=[
        "int16-labels",
        "int32-labels+zstd-tokens",
        "torch-cast-labels",
        "raw-labels",
        "raw-int32-labels",
    ],
)
def test_direct_chunk_reads_equal_zarr_reads(
    tmp_path, n_classes, compress_tokens, label_hw, compress_labels
):
    local, mem, tokens, labels = _store_pair(
        tmp_path, n_classes, compress_tokens, label_hw, compress_labels
    )
    ldt = local._arr("labels").dtype
    assert str(ldt) == ("int32" if n_classes > 32766 else "int16")
    assert local.info()["compress_labels"] is compress_labels
    layout = local._raw_layout("labels")
    # zstd level 3 (or raw, mapped), read without zarr
    assert layout is not None and layout[3] == (3 if compress_labels else None)
    codecs = [c["name"] for c in local._arr("labels").metadata.to_dict()["codecs"]]
    assert codecs == (["bytes", "zstd"] if compress_labels else ["bytes"])
    assert local._raw_layout("tokens")[3] == (1 if compress_tokens else None)
    assert mem._raw_layout("labels") is None
    for idx in (slice(None), slice(3, 9), 5, [9, 0, 4], np.array([1, 2, 3, 6])):
        lab = local.labels(idx)
        assert lab.dtype == np.int64
        np.testing.assert_array_equal(lab, mem.labels(idx))
        np.testing.assert_array_equal(local.tokens(idx), mem.tokens(idx))
    np.testing.assert_array_equal(local.labels(slice(None)), labels)
    np.testing.assert_array_equal(local.tokens(slice(None)), tokens.astype(np.float32))
    for bs in (1, 3, 4, 7):
        got = list(local.iter_batches(bs))
        want = list(mem.iter_batches(bs))
        assert [g[2] for g in got] == [w[2] for w in want]
        for (gt, gl, _), (wt, wl, _) in zip(got, want, strict=True):
            assert gl.dtype == np.int64 and gt.dtype == np.float32
            np.testing.assert_array_equal(gl, wl)
            np.testing.assert_array_equal(gt, wt)
    for a, b in zip(
        local.sample_tokens(50, seed=2, with_labels=True, soft_labels=True),
        mem.sample_tokens(50, seed=2, with_labels=True, soft_labels=True),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_zstd_content_size_reads_the_frame_header():
    from numcodecs import Zstd

    from stego_probe.store.feature_store import _zstd_content_size

    for n in (0, 1, 255, 256, 300, 65_535, 65_791, 70_000, 3_000_000):
        assert _zstd_content_size(Zstd(level=3).encode(bytes(n))) == n
    magic = (0xFD2FB528).to_bytes(4, "little")
    # single segment, 1-byte size; FCS flag 1 (2 bytes, +256) after a window byte; no size
    assert _zstd_content_size(magic + bytes([0x20, 77]) + b"\0" * 4) == 77
    assert _zstd_content_size(magic + bytes([0x40, 0x00, 0x10, 0x00]) + b"\0" * 4) == 16 + 256
    assert _zstd_content_size(magic + bytes([0x00, 0x00]) + b"\0" * 4) is None
    assert _zstd_content_size(b"not a zstd frame") is None


def test_label_chunk_without_a_size_in_its_header_reads_the_same(tmp_path, monkeypatch):
    """A chunk whose zstd frame records no decompressed size (a streaming encoder) is decoded,
    its size compared, and read like any other; one that decodes to the wrong size is read
    through zarr, which names the damage."""
    from stego_probe.store import StoreCorruptError, feature_store

    local, mem, _, labels = _store_pair(tmp_path, K, False)
    monkeypatch.setattr(feature_store, "_zstd_content_size", lambda frame: None)
    np.testing.assert_array_equal(local.labels(slice(None)), labels)
    fresh = FeatureStore.open(local.path)
    np.testing.assert_array_equal(fresh.labels(slice(2, 9)), mem.labels(slice(2, 9)))
    # a chunk whose frame decodes to the wrong size is not used: zarr names the block
    from numcodecs import Zstd

    chunk = tmp_path / "local" / "labels" / "c" / "1" / "0" / "0"
    chunk.write_bytes(Zstd(level=3).encode(bytes(10)))
    with pytest.raises(StoreCorruptError) as e:
        FeatureStore.open(local.path).labels(slice(4, 6))
    assert "labels images 4..7 (block 1)" in str(e.value)


@pytest.mark.parametrize("n", [10, 1 << 17])  # numpy below TORCH_CAST_MIN, torch from it
def test_conversions_equal_numpy_astype(n):
    from stego_probe.store import to_float32, to_int64
    from stego_probe.store.tokens import TORCH_CAST_MIN, cast_into

    assert (n >= TORCH_CAST_MIN) == (n > 10)
    rng = np.random.default_rng(0)
    f16 = (rng.standard_normal(n) * 1e3).astype(np.float16)
    f16[:3] = [np.inf, -np.inf, 6.1e-5]  # inf and a subnormal convert exactly too
    for src in (
        rng.integers(-32768, 32767, n, dtype=np.int16),
        rng.integers(-(2**31), 2**31 - 1, n, dtype=np.int32),
    ):
        got = to_int64(src)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, src.astype(np.int64))
    got = to_float32(f16)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, f16.astype(np.float32))
    ro = f16.reshape(-1, 2)
    ro.flags.writeable = False  # read-only input (a decoded or mapped chunk)
    dst = np.empty(ro.shape, np.float32)
    cast_into(dst, ro)
    np.testing.assert_array_equal(dst, ro.astype(np.float32))
    with pytest.raises(ValueError, match=r"src: expected shape \(2, 2\)"):
        cast_into(np.empty((2, 2), np.float32), f16[:4])


@pytest.mark.parametrize("token_dtype", ["float16", "float32"])
def test_random_index_reads_from_files_equal_zarr_reads(tmp_path, token_dtype):
    """Index arrays (unsorted, repeats, runs across chunks) read the same before and after
    their blocks are verified (chunk values, then the chunk files themselves), on complete and
    incomplete stores; a chunk file cut short after it was verified is read through zarr,
    which names the damage."""
    from stego_probe.store import StoreCorruptError

    rng = np.random.default_rng(3)
    tokens = rng.standard_normal((N, H, W, C)).astype(token_dtype)
    labels = rng.integers(-1, K, (N, LH, LW))
    ids = [f"im{i}" for i in range(N)]
    idxs = (
        np.array([9, 0, 4, 4, 5, 6, 7, 8, 1]),
        np.array([9, 8, 3, 2]),
        np.array([0, 2, 4, 6, 8]),
        np.array([5]),
    )

    path = tmp_path / "s"
    store = _write(path, tokens, labels, ids, token_dtype=token_dtype)
    assert store._raw_layout("tokens")[3] is None  # raw chunks: read from their files
    for _ in range(2):  # first pass verifies (chunk values), second reads the files
        for idx in idxs:
            got = store.tokens(idx)
            assert got.dtype == np.float32 and got.shape == (idx.size, H, W, C)
            np.testing.assert_array_equal(got, tokens[idx].astype(np.float32))
    assert store._verified["tokens"] == {0, 1, 2}

    # one chunk file open at a time, however many chunks a batch spans (a batch over more
    # chunks than the open-file limit must not fail)
    from stego_probe.store import feature_store

    open_now, most = [0], [0]

    class Tracked:
        def __init__(self, *a, **kw):
            self.f = builtins.open(*a, **kw)
            open_now[0] += 1
            most[0] = max(most[0], open_now[0])

        def __getattr__(self, attr):
            return getattr(self.f, attr)

        def close(self):
            open_now[0] -= 1
            self.f.close()

    fine = _write(tmp_path / "many", tokens, labels, ids, chunk_images=1, token_dtype=token_dtype)
    every = np.arange(N)[::-1]
    np.testing.assert_array_equal(fine.tokens(every), tokens[every].astype(np.float32))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(feature_store, "open", Tracked, raising=False)
        np.testing.assert_array_equal(fine.tokens(every), tokens[every].astype(np.float32))
    assert most[0] == 1 and open_now[0] == 0

    # chunks 0 and 2 never written: fill values
    partial = _write(tmp_path / "p", tokens, labels, ids, blocks=[1], token_dtype=token_dtype)
    for _ in range(2):
        got = partial.tokens(np.array([6, 0, 9, 5]))
        np.testing.assert_array_equal(got[[0, 3]], tokens[[6, 5]].astype(np.float32))
        assert (got[[1, 2]] == 0).all()

    # cut short after its block was verified: not read from the file, zarr names the block
    chunk = path / "tokens" / "c" / "1" / "0" / "0" / "0"
    assert chunk.is_file()
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(StoreCorruptError, match=r"tokens images 4\.\.7 \(block 1\)"):
        store.tokens(np.array([9, 5]))
