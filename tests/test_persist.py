"""The common estimator file format (stego_probe.persist) and the files of the formats before it.

The ``legacy_*`` writers below are the ``save`` bodies of the earlier code, copied verbatim
(only ``self`` became an argument): they pin the old formats, which must keep loading.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from stego_probe import persist
from stego_probe.fileio import to_jsonable
from stego_probe.persist import FORMAT, META_KEY, read_estimator, write_estimator
from stego_probe.probes import ClusterLookupProbe, KMeansProbe, LinearProbe
from stego_probe.projections import (
    PCAProjection,
    Projection,
    RandomProjection,
    load_projection,
)

# ---------------------------------------------------------------------------------------------
# the old writers, verbatim
# ---------------------------------------------------------------------------------------------


def legacy_kmeans_save(self, path, *, old_names=False):
    """``KMeansProbe.save`` before the common format (``old_names``: as it was before the
    ``n_train`` -> ``n_tokens`` rename)."""
    params = dict(self.get_params())
    if not isinstance(params["random_state"], int | type(None)):
        params["random_state"] = None
    state = {
        "best_redo_": self.best_redo_,
        "n_iter_": self.n_iter_,
        "n_tokens_used_": self.n_tokens_used_,
        "n_tokens_seen_": self.n_tokens_seen_,
        "n_features_in_": self.n_features_in_,
        "max_points_per_centroid_": self.max_points_per_centroid_,
        "inertia_": self.inertia_,
    }
    if old_names:
        params["n_train"] = params.pop("n_tokens")
        state["n_train_used_"] = state.pop("n_tokens_used_")
    arrays = {f"objective_redo_{i}": o for i, o in enumerate(self.objective_per_redo_)}
    with open(Path(path), "wb") as f:
        np.savez(
            f,
            cluster_centers_=self.cluster_centers_,
            meta=np.array(json.dumps({"params": params, "state": state})),
            **arrays,
        )
    return Path(path)


def legacy_probe_save(self, path):
    """``MinibatchProbe.save`` (ClusterLookupProbe / LinearProbe) before the common format."""
    path = Path(path)
    arrays = {k: v.detach().cpu().numpy() for k, v in self.params_.items()}
    extra = {f"extra:{k}": v for k, v in self._extra_arrays().items()}
    params = self.get_params()
    if not isinstance(params.get("random_state"), int | None):
        params["random_state"] = int(self.seed_)  # a RandomState is not JSON: keep its draw
    meta = {
        "class": type(self).__name__,
        "params": params,
        "n_features_in": self.n_features_in_,
        "n_steps": self.n_steps_,
        "seed": int(self.seed_),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(
            f,
            __meta__=np.array(json.dumps(meta)),
            loss_history=np.asarray(self.loss_history_, dtype=np.float64),
            **arrays,
            **extra,
        )
    return path


def legacy_projection_save(self, path, params=None):
    """``Projection.save`` before the common format (``torch.save`` of a dict; ``params``
    replaces the saved parameters, e.g. with an older constructor's)."""
    path = Path(path)
    arrays = {}
    for name in self._array_attrs:
        value = getattr(self, name, None)
        if value is not None:
            arrays[name] = torch.from_numpy(np.ascontiguousarray(value))
    for name, value in self._extra_state().items():
        arrays[f"extra:{name}"] = torch.from_numpy(np.ascontiguousarray(value))
    meta = {name: getattr(self, name, None) for name in self._meta_attrs}
    payload = {
        "format": "stego_probe.projection/v1",
        "class": type(self).__name__,
        "method": self.method_name,
        "params": json.dumps(to_jsonable(self._saved_params() if params is None else params)),
        "meta": json.dumps(to_jsonable(meta)),
        "provenance": json.dumps(to_jsonable(self.provenance_)),
        "arrays": arrays,
    }
    torch.save(payload, path)
    return path


# ---------------------------------------------------------------------------------------------
# fitted estimators
# ---------------------------------------------------------------------------------------------


def _tokens(n=400, c=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, c)) @ rng.normal(size=(c, c)) + 2.0).astype(np.float32)


def _images(seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, (6, 4, 4))
    codes = np.eye(3)[labels].transpose(0, 3, 1, 2) + rng.normal(0, 0.1, (6, 3, 4, 4))
    return codes.astype(np.float32), labels


def _kmeans():
    return KMeansProbe(3, niter=10, nredo=2, random_state=1).fit(_tokens())


def _linear():
    codes, labels = _images()
    return LinearProbe(3, steps=4, batch_size=2).fit(codes, labels)


def _cluster():
    return ClusterLookupProbe(3, steps=4, batch_size=2).fit(_images()[0])


def _assert_same_probe(a, b, x):
    assert type(a) is type(b)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    if isinstance(a, KMeansProbe):
        assert b.get_params() == {**a.get_params(), "gpu": "auto"}
        np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
        for o1, o2 in zip(a.objective_per_redo_, b.objective_per_redo_, strict=True):
            np.testing.assert_array_equal(o1, o2)
        for k in ("n_tokens_used_", "n_tokens_seen_", "inertia_", "n_iter_", "converged_"):
            assert getattr(a, k) == getattr(b, k), k
    else:
        assert a.get_params() == b.get_params()
        assert (a.loss_history_, a.n_steps_, a.seed_) == (b.loss_history_, b.n_steps_, b.seed_)
        for k, p in a.params_.items():
            assert torch.equal(p, b.params_[k])
        np.testing.assert_array_equal(a.log_probs(x), b.log_probs(x))


def _assert_same_projection(a, b, x):
    assert type(a) is type(b) and a.get_params() == b.get_params()
    for name in type(a)._array_attrs:
        u, v = getattr(a, name), getattr(b, name)
        assert (u is None and v is None) or (u.dtype == v.dtype and np.array_equal(u, v)), name
    for name in type(a)._meta_attrs:
        assert getattr(a, name) == getattr(b, name), name
    assert a.provenance == b.provenance
    np.testing.assert_array_equal(a.transform(x), b.transform(x))


# ---------------------------------------------------------------------------------------------
# the format
# ---------------------------------------------------------------------------------------------


def test_write_read_keeps_everything_and_exact_dtypes(tmp_path):
    arrays = {
        "f64": np.linspace(0, 1, 5),
        "f32": np.ones((2, 3), np.float32),
        "f16": np.zeros(4, np.float16),
        "i64": np.arange(3),
        "u8": np.frombuffer(pickle.dumps({"a": 1}), dtype=np.uint8).copy(),
        "extra:last/head/w": torch.ones(2, 2, dtype=torch.float64),  # tensors are accepted
        "empty": np.zeros((0, 3), np.float32),
    }
    params = {"k": 2, "size": (3, 4), "name": None}
    state = {"n_": np.int64(7), "hist": [{"step": 1, "v": np.float32(0.5)}]}
    path = write_estimator(
        tmp_path / "sub" / "est.pt",  # any extension; the parent folder is created
        kind="projection",
        cls_name="Toy",
        params=params,
        state=state,
        arrays=arrays,
        provenance={"p": Path("a/b")},
    )
    assert path == tmp_path / "sub" / "est.pt"
    with zipfile.ZipFile(path) as z:  # an uncompressed npz
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z[META_KEY]))
    assert (meta["format"], meta["version"], meta["kind"], meta["class"]) == (
        FORMAT,
        1,
        "projection",
        "Toy",
    )
    saved = read_estimator(path, kind="projection", expected="Toy")
    assert saved.cls_name == "Toy" and saved.format == "stego_probe.estimator/1"
    assert saved.params == {"k": 2, "size": [3, 4], "name": None}
    assert saved.state == {"n_": 7, "hist": [{"step": 1, "v": 0.5}]}
    assert saved.provenance == {"p": "a/b"}
    assert set(saved.arrays) == set(arrays)
    for name, want in arrays.items():
        want = want.numpy() if isinstance(want, torch.Tensor) else want
        got = saved.arrays[name]
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    assert pickle.loads(saved.arrays["u8"].tobytes()) == {"a": 1}


def test_write_refuses_bad_input_and_leaves_no_file(tmp_path, monkeypatch):
    kw = dict(kind="probe", cls_name="Toy", params={}, state={})
    for bad in ({"__meta__": np.ones(1)}, {"file": np.ones(1)}, {"o": np.array([{}], object)}):
        with pytest.raises(ValueError, match="arrays"):
            write_estimator(tmp_path / "x.npz", arrays=bad, **kw)
    with pytest.raises(ValueError, match="kind"):
        write_estimator(tmp_path / "x.npz", arrays={}, **{**kw, "kind": "model"})
    assert list(tmp_path.iterdir()) == []
    # a failure while writing: nothing is left, and an existing file keeps its content
    path = write_estimator(tmp_path / "x.npz", arrays={"a": np.ones(2)}, **kw)
    before = path.read_bytes()

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(persist.np, "savez", fail)
    with pytest.raises(OSError, match="disk full"):
        write_estimator(path, arrays={"a": np.zeros(2)}, **kw)
    with pytest.raises(OSError, match="disk full"):
        write_estimator(tmp_path / "new.npz", arrays={"a": np.zeros(2)}, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]
    assert path.read_bytes() == before


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        read_estimator(tmp_path / "missing.npz", kind="probe")
    junk = tmp_path / "junk.npz"
    for content in (b"not a file of ours", b""):
        junk.write_bytes(content)
        with pytest.raises(ValueError, match="junk.npz: not a stego_probe estimator file"):
            read_estimator(junk, kind="probe")
    np.savez(tmp_path / "plain.npz", a=np.ones(2))  # an npz without a header
    with pytest.raises(ValueError, match="plain.npz: not a stego_probe estimator file"):
        read_estimator(tmp_path / "plain.npz", kind="probe")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")  # a torch file of another format
    with pytest.raises(ValueError, match="other.pt: not a stego_probe estimator file"):
        read_estimator(tmp_path / "other.pt", kind="projection")
    path = write_estimator(
        tmp_path / "p.npz", kind="probe", cls_name="Toy", params={}, state={}, arrays={}
    )
    with pytest.raises(ValueError, match=r"p.npz: holds a probe \(Toy\), not a projection"):
        read_estimator(path, kind="projection")
    with pytest.raises(ValueError, match="p.npz: holds a Toy, not a Other"):
        read_estimator(path, kind="probe", expected="Other")
    with pytest.raises(ValueError, match="holds a Toy, not a Base"):
        read_estimator(path, kind="probe", expected=lambda name: False, what="Base")
    assert read_estimator(path, kind="probe", expected=lambda name: name == "Toy").cls_name
    with pytest.raises(ValueError, match="kind"):
        read_estimator(path, kind="model")
    # a newer version is refused with a clear message
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z[META_KEY]))
    np.savez(tmp_path / "new.npz", __meta__=np.array(json.dumps({**meta, "version": 99})))
    with pytest.raises(ValueError, match="newer stego_probe"):
        read_estimator(tmp_path / "new.npz", kind="probe")


def test_read_renames_old_parameter_names_in_every_format(tmp_path):
    path = write_estimator(
        tmp_path / "p.npz",
        kind="probe",
        cls_name="Toy",
        params={"n_train": 5},
        state={"n_train_used_": 4},
        arrays={},
    )
    saved = read_estimator(path, kind="probe")
    assert saved.params == {"n_tokens": 5} and saved.state == {"n_tokens_used_": 4}


# ---------------------------------------------------------------------------------------------
# every estimator family: round trips, and the files of the old formats
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [_kmeans, _linear, _cluster], ids=["kmeans", "linear", "cluster"])
def test_probe_round_trip_and_legacy_files(tmp_path, make):
    probe = make()
    x = _tokens(c=6) if isinstance(probe, KMeansProbe) else _images()[0]
    cls = type(probe)
    path = probe.save(tmp_path / "new.npz")
    assert read_estimator(path, kind="probe").format == "stego_probe.estimator/1"
    _assert_same_probe(probe, cls.load(path), x)
    if isinstance(probe, KMeansProbe):
        legacy = [legacy_kmeans_save(probe, tmp_path / "old.npz")]
        legacy.append(legacy_kmeans_save(probe, tmp_path / "older.npz", old_names=True))
        fmt = "legacy-kmeans"
    else:
        legacy = [legacy_probe_save(probe, tmp_path / "old.npz")]
        fmt = "legacy-probe"
    for old in legacy:
        assert read_estimator(old, kind="probe").format == fmt
        _assert_same_probe(probe, cls.load(old), x)
    other = ClusterLookupProbe if cls is not ClusterLookupProbe else LinearProbe
    for file in (path, *legacy):
        with pytest.raises(ValueError, match=f"holds a {cls.__name__}, not a {other.__name__}"):
            other.load(file)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        cls.load(tmp_path / "missing.npz")


def test_linear_probe_keeps_its_labelled_pixel_count(tmp_path):
    probe = _linear()
    back = LinearProbe.load(probe.save(tmp_path / "lin.npz"))
    assert back.n_labelled_ == probe.n_labelled_ > 0
    back.check_labelled()


def _projections():
    x = _tokens(c=6)
    return x, [
        PCAProjection(4, random_state=3).fit(x),
        PCAProjection(3, standardize=None).fit(x),
        RandomProjection(3, random_state=2).fit(x),
        RandomProjection(3, kind="sparse", standardize="batch", random_state=2).fit(x),
    ]


def test_projection_round_trip_legacy_files_and_dtypes(tmp_path):
    x, projections = _projections()
    for i, est in enumerate(projections):
        path = est.save(tmp_path / f"new{i}.pt")
        saved = read_estimator(path, kind="projection")
        assert saved.format == "stego_probe.estimator/1" and saved.cls_name == type(est).__name__
        for name in type(est)._array_attrs:  # exact dtypes: float64 statistics stay float64
            if getattr(est, name, None) is not None:
                assert saved.arrays[name].dtype == np.asarray(getattr(est, name)).dtype, name
        old = legacy_projection_save(est, tmp_path / f"old{i}.pt")
        assert read_estimator(old, kind="projection").format == "legacy-projection-pt"
        for file in (path, old):
            _assert_same_projection(est, load_projection(file), x)
            _assert_same_projection(est, type(est).load(file), x)
            with pytest.raises(ValueError, match="holds a .*, not a probe"):
                KMeansProbe.load(file)
    pca = projections[0]
    assert np.asarray(pca.mean_).dtype == np.float64  # what the dtype check above pins
    other = RandomProjection if isinstance(pca, PCAProjection) else PCAProjection
    with pytest.raises(ValueError, match="not a RandomProjection"):
        other.load(tmp_path / "new0.pt")
    with pytest.raises(ValueError, match="holds a probe .*, not a projection"):
        Projection.load(_kmeans().save(tmp_path / "km.npz"))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Projection.load(tmp_path / "missing.pt")


def test_projection_file_with_unknown_class(tmp_path):
    path = write_estimator(
        tmp_path / "p.pt", kind="projection", cls_name="TSNE", params={}, state={}, arrays={}
    )
    with pytest.raises(ValueError, match="p.pt: unknown projection class 'TSNE'"):
        Projection.load(path)
    with pytest.raises(ValueError, match="p.pt: holds a TSNE, not a PCAProjection"):
        PCAProjection.load(path)


def test_projection_legacy_file_with_old_parameter_names(tmp_path):
    pytest.importorskip("umap")
    from stego_probe.projections import UMAPProjection

    x = _tokens(n=120)
    um = UMAPProjection(2, n_tokens=100, n_neighbors=5, n_epochs=5, random_state=0).fit(x)
    params = {**um._saved_params()}
    params["n_samples"] = params.pop("n_tokens")  # as UMAP files were written before the rename
    old = legacy_projection_save(um, tmp_path / "old.pt", params=params)
    new = um.save(tmp_path / "new.pt")
    saved = read_estimator(new, kind="projection")
    assert saved.arrays["extra:umap_pickle"].dtype == np.uint8
    for file in (old, new):
        with pytest.raises(ValueError, match="trust=True"):
            load_projection(file)
        back = load_projection(file, trust=True)
        assert back.n_tokens == 100 and back.get_params() == um.get_params()
        np.testing.assert_array_equal(back.transform(x[:10]), um.transform(x[:10]))


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: proof that a loader executed file content."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_model_in_the_new_format_runs_nothing_unless_trusted(tmp_path):
    marker = tmp_path / "pwned"
    blob = np.frombuffer(pickle.dumps(_Payload(marker)), dtype=np.uint8).copy()
    path = write_estimator(
        tmp_path / "umap.pt",
        kind="projection",
        cls_name="UMAPProjection",
        params={"n_components": 2},
        state={"n_features_in_": 4, "fitted_n_components_": 2},
        arrays={"mean_": np.zeros(4), "scale_": np.ones(4), "extra:umap_pickle": blob},
    )
    read_estimator(path, kind="projection")  # reading never unpickles
    for load in (lambda: load_projection(path), lambda: Projection.load(path)):
        with pytest.raises(ValueError, match="trust=True"):
            load()
    with pytest.raises(ValueError, match="not a PCAProjection"):
        PCAProjection.load(path, trust=True)
    assert not marker.exists()


def test_stego_head_round_trip_and_legacy_file(tmp_path):
    from stego_probe.projections.stego import StegoHead

    tokens = np.random.default_rng(0).normal(size=(8, 4, 4, 6)).astype(np.float32)
    kw = dict(n_components=3, steps=2, batch_size=4, knn_k=3, num_neighbors=2)
    head = StegoHead(**kw, n_classes=2, select="last", progress=False).fit(tokens)
    x = tokens[0].reshape(-1, 6)
    new = head.save(tmp_path / "head.pt")
    old = legacy_projection_save(head, tmp_path / "old.pt")
    assert read_estimator(new, kind="projection").format == "stego_probe.estimator/1"
    for file in (new, old):
        back = StegoHead.load(file)
        assert back.get_params() == head.get_params() and back.config == head.config
        assert back.history_ == head.history_ and back.provenance == head.provenance
        np.testing.assert_array_equal(back.transform(x), head.transform(x))
        for part, sd in head.states_["last"].items():
            for k, v in sd.items():
                assert torch.equal(back.states_["last"][part][k], v)
        with pytest.raises(ValueError, match="holds a StegoHead, not a PCAProjection"):
            PCAProjection.load(file)
