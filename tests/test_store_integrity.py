"""Feature-store integrity: per-block checksums verified on read, layout checked on open,
damaged metadata reported in one line, format-1 stores, ``stego-probe verify [--repair]``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from stego_probe.cli.main import main
from stego_probe.store import FeatureStore, StoreCorruptError, block_checksum
from stego_probe.verify import repair_store, verify_store

N, H, W, C, LH, LW, K = 10, 3, 4, 5, 6, 8, 3


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.standard_normal((N, H, W, C)).astype(np.float32)
    labels = rng.integers(-1, K, (N, LH, LW))
    ids = [f"img_{i:03d}" for i in range(N)]
    return tokens, labels, ids


def _write(path, chunk_images=4, shard_images=None, flipped=False, seed=0) -> Path:
    tokens, labels, ids = _data(seed)
    store = FeatureStore.create(
        path,
        n_images=N,
        grid=(H, W),
        dim=C,
        label_shape=(LH, LW),
        provenance={"n_classes": K, "backbone": "toy"},
        chunk_images=chunk_images,
        shard_images=shard_images,
        flipped=flipped,
    )
    for b in range(store.n_blocks):
        s, e = store.block_range(b)
        store.write_block(b, tokens[s:e], labels[s:e], ids[s:e], -tokens[s:e] if flipped else None)
    store.mark_complete()
    return Path(path)


def _chunk(path: Path, array: str, b: int) -> Path:
    nd = {"tokens": 4, "tokens_flipped": 4, "labels": 3, "ids": 1}[array]
    return path / array / "c" / "/".join([str(b)] + ["0"] * (nd - 1))


def _truncate(f: Path) -> None:
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)


def _flip_bit(f: Path, at: float = 0.5) -> None:
    raw = bytearray(f.read_bytes())
    raw[int(len(raw) * at)] ^= 0x10
    f.write_bytes(bytes(raw))


def _edit_attrs(path: Path, fn) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    fn(meta["attributes"])
    (path / "zarr.json").write_text(json.dumps(meta))


def _assert_names_block(e, path, array, lo, hi, b):
    msg = str(e.value)
    assert str(path) in msg and array in msg
    assert f"images {lo}..{hi} (block {b})" in msg
    assert f"stego-probe verify {path} --repair" in msg
    assert e.value.array == array and e.value.block == b and e.value.images == (lo, hi + 1)


def test_checksums_written_and_intact_store_reads(tmp_path):
    path = _write(tmp_path / "s")
    store = FeatureStore.open(path)
    assert store.checksummed
    layout = json.loads((path / "zarr.json").read_text())["attributes"]["layout"]
    assert layout["checksums"] == {"algorithm": "crc32", "arrays": ["tokens", "labels", "ids"]}
    rows = np.asarray(store._arr("checksums")[:])
    assert rows.shape == (3, 3) and rows.dtype == np.int64
    tok = store._arr("tokens")[4:8]
    assert rows[1, 0] == block_checksum(tok)
    assert rows[2, 2] == block_checksum(np.asarray(store.ids[8:10], dtype=object))
    assert verify_store(path).ok


def test_deleted_token_chunk_is_detected_on_every_read_path(tmp_path):
    path = _write(tmp_path / "s")
    _chunk(path, "tokens", 1).unlink()
    store = FeatureStore.open(path)
    # blocks 0 and 2 are intact and read fine
    assert store.tokens(slice(0, 4)).shape == (4, H, W, C)
    assert store.tokens([9, 0]).shape == (2, H, W, C)
    for read in (
        lambda: store.tokens(5),
        lambda: store.tokens(slice(None)),
        lambda: store.tokens(np.array([0, 9, 6])),  # non-contiguous: oindex path
        lambda: list(store.iter_batches(3)),
        lambda: store.sample_tokens(100, seed=0),
    ):
        with pytest.raises(StoreCorruptError) as e:
            read()
        _assert_names_block(e, path, "tokens", 4, 7, 1)
        assert "chunk file is missing" in str(e.value)
    # labels of the same block are intact
    assert store.labels(5).shape == (1, LH, LW)


def test_deleted_label_chunk_is_not_read_as_all_ignore(tmp_path):
    path = _write(tmp_path / "s")
    _chunk(path, "labels", 2).unlink()
    store = FeatureStore.open(path)
    for read in (
        lambda: store.labels(9),
        lambda: store.token_labels(slice(6, 10)),
        lambda: list(store.iter_batches(4)),
        lambda: store.sample_tokens(500, seed=1, with_labels=True),
    ):
        with pytest.raises(StoreCorruptError) as e:
            read()
        _assert_names_block(e, path, "labels", 8, 9, 2)


@pytest.mark.parametrize("array,damage", [("tokens", "truncate"), ("labels", "truncate")])
def test_truncated_chunk_names_store_array_and_images(tmp_path, array, damage):
    path = _write(tmp_path / "s")
    _truncate(_chunk(path, array, 0))
    store = FeatureStore.open(path)
    read = store.tokens if array == "tokens" else store.labels
    with pytest.raises(StoreCorruptError) as e:
        read(slice(2, 6))  # spans blocks 0 and 1: the failing block is located
    _assert_names_block(e, path, array, 0, 3, 0)
    assert "cannot be decoded" in str(e.value)
    # the raw zarr message ("cannot reshape" / "Zstd decompression error") is kept as detail
    assert ("reshape" in str(e.value)) or ("Zstd" in str(e.value))


def test_flipped_bit_is_detected(tmp_path):
    path = _write(tmp_path / "s", flipped=True)
    _flip_bit(_chunk(path, "tokens_flipped", 1))  # uncompressed: still decodes
    store = FeatureStore.open(path)
    np.testing.assert_array_equal(store.tokens(5), store.tokens(5))  # plain tokens fine
    with pytest.raises(StoreCorruptError, match="checksum mismatch") as e:
        store.tokens(5, flipped=True)
    _assert_names_block(e, path, "tokens_flipped", 4, 7, 1)


def test_damaged_ids_sharded_store_and_markers(tmp_path):
    # sharded: a block is a shard of two chunks
    path = _write(tmp_path / "s", chunk_images=2, shard_images=4)
    _flip_bit(_chunk(path, "tokens", 1))
    with pytest.raises(StoreCorruptError) as e:
        FeatureStore.open(path).tokens(6)
    _assert_names_block(e, path, "tokens", 4, 7, 1)
    # ids: a rewritten id chunk with other content is caught when the ids are read
    path = _write(tmp_path / "i")
    _chunk(path, "ids", 2).unlink()
    with pytest.raises(StoreCorruptError) as e:
        _ = FeatureStore.open(path).ids
    _assert_names_block(e, path, "ids", 8, 9, 2)
    # a deleted checksum row / written marker of a complete store is reported by verify
    path = _write(tmp_path / "m")
    (path / "checksums" / "c" / "0" / "0").unlink()
    (path / "written" / "c" / "2").unlink()
    with pytest.raises(StoreCorruptError, match="checksum is missing"):
        FeatureStore.open(path).tokens(0)
    rep = verify_store(path)
    assert rep.damaged_blocks == [0, 2]
    assert any("no written marker" in d.reason for d in rep.damaged if d.block == 2)


def test_each_block_is_verified_once_per_handle(tmp_path, monkeypatch):
    from stego_probe.store import integrity  # where reads look up block_checksum

    path = _write(tmp_path / "s")
    calls = []
    real = integrity.block_checksum
    monkeypatch.setattr(integrity, "block_checksum", lambda a: calls.append(len(a)) or real(a))
    store = FeatureStore.open(path)
    store.tokens(1)
    assert calls == [4]  # the whole block 0 (4 images), once
    store.tokens(slice(0, 3))
    store.tokens([2, 0])
    assert calls == [4]
    list(store.iter_batches(5))  # tokens of blocks 1, 2; labels of 0, 1, 2; ids of 0, 1, 2
    assert len(calls) == 1 + 2 + 3 + 3
    list(store.iter_batches(5))
    assert len(calls) == 1 + 2 + 3 + 3
    FeatureStore.open(path).tokens(1)  # a new handle verifies again
    assert len(calls) == 10


def test_incomplete_store_reads_unwritten_blocks_without_error(tmp_path):
    tokens, labels, ids = _data()
    store = FeatureStore.create(
        tmp_path / "s", n_images=N, grid=(H, W), dim=C, label_shape=(LH, LW),
        provenance={"n_classes": K}, chunk_images=4,
    )  # fmt: skip
    store.write_block(1, tokens[4:8], labels[4:8], ids[4:8])
    part = FeatureStore.open(tmp_path / "s", allow_incomplete=True)
    assert (part.tokens(0) == 0).all()  # unwritten block: fill values by design
    np.testing.assert_array_equal(part.labels(slice(4, 8)), labels[4:8])
    rep = verify_store(tmp_path / "s")
    assert rep.ok and rep.unwritten == [0, 2] and rep.blocks_checked == 1
    # Block 0 written later by another handle, then damaged: the reader that saw it unwritten
    # must check it now, not keep reading fill values or trust it unverified.
    writer = FeatureStore.open(tmp_path / "s", mode="r+", allow_incomplete=True)
    writer.write_block(0, tokens[0:4], labels[0:4], ids[0:4])
    np.testing.assert_array_equal(part.tokens(slice(0, 4)), tokens[0:4].astype(np.float16))
    part2 = FeatureStore.open(tmp_path / "s", allow_incomplete=True)
    assert (part2.tokens(8) == 0).all()  # block 2 still unwritten
    writer.write_block(2, tokens[8:10], labels[8:10], ids[8:10])
    _chunk(tmp_path / "s", "tokens", 2).unlink()
    with pytest.raises(StoreCorruptError, match="checksum mismatch"):
        part2.tokens(8)


@pytest.mark.parametrize(
    "attr,value,needle",
    [
        (
            "dim",
            7,
            "layout attribute dim=7 does not match array tokens: it holds tokens of width 5",
        ),
        ("n_images", 12, "layout attribute n_images=12 does not match array tokens: it holds 10"),
        (
            "grid",
            [4, 4],
            "layout attribute grid=[4, 4] does not match array tokens: it holds a 3x4",
        ),
        ("label_shape", [6, 6], "label_shape=[6, 6] does not match array labels: it holds 6x8"),
        ("chunk_images", 5, "chunk_images=5 does not match array tokens: it holds chunks of 4"),
        ("dim", "big", "layout attribute dim='big' is malformed"),
    ],
)
def test_edited_layout_attributes_are_refused(tmp_path, attr, value, needle):
    path = _write(tmp_path / "s")
    _edit_attrs(path, lambda a: a["layout"].__setitem__(attr, value))
    with pytest.raises(StoreCorruptError) as e:
        FeatureStore.open(path)
    assert needle in str(e.value) and str(path) in str(e.value)
    rep = verify_store(path)
    assert not rep.ok and needle in rep.problems[0]


@pytest.mark.parametrize(
    "where,content,needle",
    [
        ("", b"\x00\xffgarbage", "zarr.json is not valid JSON"),
        ("", b"", "zarr.json is empty"),
        ("", "partial", "zarr.json is not valid JSON"),
        ("", b'{"zarr_format": 3, "node_type": "group"}', "missing attributes"),
        ("tokens", "partial", "tokens/zarr.json is not valid JSON"),
        ("labels", b'{"zarr_format": 3, "node_type": "array"}', "missing shape"),
    ],
)
def test_damaged_zarr_json_is_one_clear_line(tmp_path, capsys, where, content, needle):
    path = _write(tmp_path / "s")
    f = path / where / "zarr.json" if where else path / "zarr.json"
    if content == "partial":
        content = f.read_bytes()[: len(f.read_bytes()) // 2]
    f.write_bytes(content)
    with pytest.raises(StoreCorruptError) as e:
        FeatureStore.open(path)
    msg = str(e.value)
    assert needle in msg and str(f) in msg and "expected" in msg
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err and "Traceback" not in err


def test_overwrite_replaces_a_store_with_garbage_zarr_json(tmp_path):
    path = _write(tmp_path / "s")
    (path / "zarr.json").write_bytes(b"{not json")
    fresh = FeatureStore.create(
        path, n_images=2, grid=(H, W), dim=C, label_shape=(LH, LW), provenance={},
        overwrite=True,
    )  # fmt: skip
    assert fresh.n_blocks == 1
    other = tmp_path / "other"
    other.mkdir()
    (other / "zarr.json").write_bytes(b"{not json")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        FeatureStore.create(
            other, n_images=2, grid=(H, W), dim=C, label_shape=(LH, LW), provenance={},
            overwrite=True,
        )  # fmt: skip


def _make_format1(path: Path) -> None:
    """Turn a store into what stego_probe 0.2 wrote: format 1, no checksums."""
    import shutil

    _edit_attrs(
        path,
        lambda a: (a.__setitem__("format_version", 1), a["layout"].pop("checksums")),
    )
    shutil.rmtree(path / "checksums")


def test_format1_store_opens_read_only_with_a_warning(tmp_path, capsys):
    from stego_probe.store import feature_store

    path = _write(tmp_path / "s")
    _make_format1(path)
    feature_store._WARNED_UNVERIFIABLE.discard(str(path))
    with pytest.warns(UserWarning, match="no checksums: its content cannot be verified"):
        store = FeatureStore.open(path)
    assert not store.checksummed
    tokens, labels, _ = _data()
    np.testing.assert_array_equal(store.labels(slice(None)), labels)
    with pytest.raises(ValueError, match="cannot be written by this stego_probe"):
        FeatureStore.open(path, mode="r+")
    assert main(["verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "UNVERIFIABLE" in out and "no damage found" in out
    # missing chunks are still found (decode errors too)
    _chunk(path, "tokens", 1).unlink()
    _truncate(_chunk(path, "labels", 2))
    rep = verify_store(path)
    assert rep.damaged_blocks == [1, 2] and not rep.checksummed
    with pytest.raises(ValueError, match="format-1 store"):
        repair_store(path)


def test_verify_cli_exit_codes_and_output(tmp_path, capsys):
    path = _write(tmp_path / "s", flipped=True)
    assert main(["verify", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "blocks checked: 3/3" in out and "no damage found" in out
    _chunk(path, "tokens", 1).unlink()
    # the last block holds 2 of the chunk's 4 images: flip a bit inside them (the padding of
    # an edge chunk is not content)
    _flip_bit(_chunk(path, "tokens_flipped", 2), at=0.2)
    _truncate(_chunk(path, "labels", 2))
    assert main(["verify", str(path), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "damaged blocks: 2" in out
    assert "block 1 (images 4..7) tokens: checksum mismatch" in out
    assert "block 2 (images 8..9) tokens_flipped: checksum mismatch" in out
    assert "block 2 (images 8..9) labels: its chunk cannot be decoded" in out
    assert main(["verify", str(path), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["damaged_blocks"] == [1, 2] and not rep["ok"] and rep["blocks_checked"] == 3
    assert main(["verify", str(tmp_path / "nothing")]) == 1
    assert "no feature store" in capsys.readouterr().err


def test_invalidate_blocks(tmp_path):
    path = _write(tmp_path / "s")
    store = FeatureStore.open(path, mode="r+")
    store.invalidate_blocks([1])
    assert not store.complete and not (path / "_SUCCESS").exists()
    np.testing.assert_array_equal(store.done_blocks(), [True, False, True])
    assert not _chunk(path, "tokens", 1).exists() and not _chunk(path, "labels", 1).exists()
    with pytest.raises(ValueError, match="incomplete"):
        FeatureStore.open(path)
    with pytest.raises(ValueError, match="read-only"):
        FeatureStore.open(path, allow_incomplete=True).invalidate_blocks([0])
    # rewriting the block completes the store again
    tokens, labels, ids = _data()
    store.write_block(1, tokens[4:8], labels[4:8], ids[4:8])
    store.mark_complete()
    assert verify_store(path).ok


def _synthetic_store(path, **kw):
    from stego_probe.backbones import get_backbone
    from stego_probe.data import get_dataset
    from stego_probe.extract import extract

    ds = get_dataset("synthetic", split="val", n_images=10, size=[32, 32])
    return extract(
        ds, get_backbone("descriptor"), path, res=32, chunk_images=4, progress=False, **kw
    )


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


def test_repair_restores_byte_identical_content(tmp_path, capsys):
    ref = tmp_path / "ref"
    bad = tmp_path / "bad"
    _synthetic_store(ref, flipped=True)
    _synthetic_store(bad, flipped=True)
    assert _files(ref) == _files(bad)
    _chunk(bad, "tokens", 0).unlink()
    _truncate(_chunk(bad, "labels", 2))
    assert main(["verify", str(bad), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "block 0 (images 0..3) tokens" in out and "block 2 (images 8..9) labels" in out
    assert main(["verify", str(bad), "--repair", "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "re-extracted blocks 0, 2" in out and "no damage found" in out
    assert _files(ref) == _files(bad)
    a, b = FeatureStore.open(ref), FeatureStore.open(bad)
    assert b.complete and a.ids == b.ids
    np.testing.assert_array_equal(a.tokens(slice(None)), b.tokens(slice(None)))
    np.testing.assert_array_equal(a.labels(slice(None)), b.labels(slice(None)))
    np.testing.assert_array_equal(
        np.asarray(a._arr("checksums")[:]), np.asarray(b._arr("checksums")[:])
    )
    # an intact store: nothing to repair
    assert main(["verify", str(bad), "--repair", "--no-progress"]) == 0


def test_repair_without_rebuildable_inputs_prints_the_extract_command(tmp_path, capsys):
    path = _write(tmp_path / "s")  # hand-written: provenance has no dataset / backbone
    _flip_bit(_chunk(path, "tokens", 1))
    assert main(["verify", str(path), "--repair", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "blocks 1 are marked not written" in out
    assert "stego-probe extract --dataset" in out and f"--store {path}" in out
    store = FeatureStore.open(path, allow_incomplete=True)
    np.testing.assert_array_equal(store.done_blocks(), [True, False, True])


def test_repair_command_for_a_moved_dataset(tmp_path):
    path = tmp_path / "s"
    _synthetic_store(path)
    _chunk(path, "tokens", 1).unlink()
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["provenance"]["backbone"] = "no_such_backbone"
    (path / "zarr.json").write_text(json.dumps(meta))
    res = repair_store(path)
    assert not res.ok and res.invalidated == [1] and "no_such_backbone" in res.reason
    assert "--dataset synthetic" in res.command and "--dataset-arg n_images=10" in res.command
    assert "--res 32" in res.command and "--backbone no_such_backbone" in res.command


def test_repair_of_every_block_keeps_the_layout(tmp_path):
    """A repair that invalidates every block re-creates the store: with its own chunking and
    label compression (raw labels stay raw), and the printed command says so too."""
    ref, bad = tmp_path / "ref", tmp_path / "bad"
    for p in (ref, bad):
        _synthetic_store(p, compress_labels=False)
    for b in range(3):  # early in the chunk: the last block fills half of its chunk
        _flip_bit(_chunk(bad, "tokens", b), at=0.1)
    res = repair_store(bad)
    assert res.ok and res.invalidated == [0, 1, 2]
    assert "--chunk-images 4" in res.command and "--raw-labels" in res.command
    info = FeatureStore.open(bad).info()
    assert info["chunk_images"] == 4 and info["compress_labels"] is False
    assert _files(ref) == _files(bad)
