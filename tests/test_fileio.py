"""atomic_write and to_jsonable: the one home of file mechanics."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from stego_probe.fileio import atomic_write, canonical_json, is_temp_file, to_jsonable


def test_atomic_write_bytes_text_and_callback(tmp_path):
    p = tmp_path / "sub" / "a.bin"
    assert atomic_write(p, b"\x00\x01") == p and p.read_bytes() == b"\x00\x01"
    atomic_write(p, "héllo")
    assert p.read_text(encoding="utf-8") == "héllo"
    npz = tmp_path / "t.npz"  # np.savez appends .npz unless the temp name ends in it
    atomic_write(npz, lambda tmp: np.savez(tmp, x=np.arange(3)))
    with np.load(npz) as z:
        assert z["x"].tolist() == [0, 1, 2]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["sub", "t.npz"]


def test_atomic_write_keeps_old_file_when_writer_raises(tmp_path):
    p = tmp_path / "results.csv"
    p.write_text("old,content\n")

    def writer(tmp):
        Path(tmp).write_text("half-writ")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, writer)
    assert p.read_text() == "old,content\n"
    assert [f.name for f in tmp_path.iterdir()] == ["results.csv"]  # no temp file left
    with pytest.raises(TypeError, match="content must be bytes, str or a writer"):
        atomic_write(p, 3)
    assert p.read_text() == "old,content\n"


def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write(tmp_path / "m.json", "{}")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600


def test_is_temp_file():
    assert is_temp_file(".a.json.1f2e3d4c.tmp.json", "a.json")
    assert not is_temp_file("a.json", "a.json") and not is_temp_file(".a.json.tmp", "b.json")


def test_to_jsonable_numpy_path_tuple_nested():
    obj = {
        "size": (96, 128),
        "w": np.float32(0.5),
        "n": np.int64(3),
        "flag": np.bool_(True),
        "arr": np.arange(4).reshape(2, 2),
        "t": torch.tensor([1.5, 2.0]),
        "path": Path("/data/coco"),
        2: [{"inner": (np.int8(1), None)}],
        "s": {3, 1},
    }
    got = to_jsonable(obj)
    assert got == {
        "size": [96, 128],
        "w": 0.5,
        "n": 3,
        "flag": True,
        "arr": [[0, 1], [2, 3]],
        "t": [1.5, 2.0],
        "path": "/data/coco",
        "2": [{"inner": [1, None]}],
        "s": [1, 3],
    }
    assert type(got["n"]) is int and type(got["flag"]) is bool and type(got["w"]) is float
    assert json.loads(json.dumps(got)) == got  # plain JSON: the round trip is the identity
    assert to_jsonable(object) == str(object)


def test_canonical_json_tells_int_float_bool_apart():
    assert canonical_json({"b": 1, "a": (2,)}) == '{"a": [2], "b": 1}'
    assert canonical_json(1) != canonical_json(1.0) != canonical_json(True)
