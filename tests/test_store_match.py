"""A sweep's stores against its config (``check_store_matches``): dataset options a store does
not record (written before the option existed) and stores extracted with an image ``limit``.

Stores are extracted with the tiny synthetic config of ``test_sweep`` (descriptor backbone,
48 px, 16 images); an "old" store is a copy whose provenance lacks an option.
"""

import shutil
from pathlib import Path

import pytest
from data_fixtures import write_folder
from test_sweep import TINY, tiny_config

from stego_probe import sweep
from stego_probe.data import dataset_defaults
from stego_probe.store import FeatureStore


def without_option(path, option: str) -> None:
    """Rewrite the store at ``path`` (through the store API) as a store written before dataset
    option ``option`` existed: absent from ``dataset_args``, ``dataset_info`` and its ``args``."""
    src_path = Path(f"{path}.orig")
    shutil.move(path, src_path)
    src = FeatureStore.open(src_path)
    prov = dict(src.provenance)
    prov["dataset_args"] = {k: v for k, v in prov["dataset_args"].items() if k != option}
    info = {k: v for k, v in prov["dataset_info"].items() if k != option}
    info["args"] = {k: v for k, v in info["args"].items() if k != option}
    prov["dataset_info"] = info
    new = FeatureStore.create(
        path, n_images=src.n_images, grid=src.grid, dim=src.dim, label_shape=src.label_shape,
        provenance=prov, chunk_images=src.chunk_images, flipped=src.has_flipped,
    )  # fmt: skip
    for b in range(new.n_blocks):
        a, z = new.block_range(b)
        new.write_block(b, src.tokens(slice(a, z)), src.labels(slice(a, z)), src.ids[a:z])
    new.mark_complete()
    shutil.rmtree(src_path)


def config_with(**dataset_kwargs):
    """The tiny sweep config; ``nuisance`` 0 unless given (the packaged preset sets 0.5)."""
    kwargs = {**TINY["dataset_kwargs"], "nuisance": 0, **dataset_kwargs}
    return tiny_config(dataset_kwargs=kwargs)


@pytest.fixture(scope="module")
def old_stores(tmp_path_factory) -> Path:
    """A sweep folder whose stores were extracted without the ``nuisance`` option."""
    out = tmp_path_factory.mktemp("old") / "run"
    sweep.ensure_stores(config_with(), out, progress=False)
    for which in ("train", "val"):
        without_option(sweep.store_path(config_with(), out, which), "nuisance")
    return out


def test_old_store_without_an_option_is_compared_with_its_default(old_stores):
    """A store that records no ``nuisance`` was extracted with the default (0): it matches a
    config with nuisance 0 (or 0.0), and is refused, naming option, values and store, for 0.5."""
    assert dataset_defaults("synthetic")["nuisance"] == 0
    train = sweep.store_path(config_with(), old_stores, "train")
    assert "nuisance" not in FeatureStore.open(train).provenance["dataset_args"]
    for cfg in (config_with(nuisance=0), config_with(nuisance=0.0)):
        sweep.ensure_stores(cfg, old_stores, progress=False)  # reused, not refused
    with pytest.raises(ValueError) as info:
        sweep.ensure_stores(config_with(nuisance=0.5), old_stores, progress=False)
    msg = str(info.value)
    assert f"train store {train}" in msg
    assert "dataset_kwargs.nuisance: store 0.0 (the default; not recorded), config 0.5" in msg


def test_given_old_store_is_refused_for_another_option_value(old_stores):
    val = sweep.store_path(config_with(), old_stores, "val")
    store = FeatureStore.open(val)
    cfg = config_with(nuisance=0.5)
    with pytest.raises(ValueError, match=r"nuisance: store 0.0 \(the default; not recorded\)"):
        sweep.check_store_matches(cfg, "val", store, what=f"val store {val}", strict=False)
    assert sweep.check_store_matches(config_with(), "val", store, what="s", strict=True) == []


@pytest.mark.parametrize("present", [True, False], ids=["data", "no-data"])
def test_missing_option_of_any_dataset_is_compared_with_its_default(tmp_path, present):
    """Generic, not only ``nuisance``: a folder store that does not record ``ignore_value``
    matches ``ignore_value=255`` (the factory default, recorded as ``[255]``) and is refused
    for 11; with the data present and without it."""
    from stego_probe.backbones import get_backbone
    from stego_probe.data import get_dataset
    from stego_probe.extract import extract

    root = tmp_path / "data"
    write_folder(root, stems=tuple(f"im{i}" for i in range(4)), size=(32, 32), n_classes=3)
    ds = get_dataset("folder", root, "train", n_classes=3)
    path = tmp_path / "s"
    extract(ds, get_backbone("descriptor"), path, res=32, progress=False)
    without_option(path, "ignore_value")
    store = FeatureStore.open(path)
    assert "ignore_value" not in store.provenance["dataset_args"]
    data_root = root if present else tmp_path / "gone"

    def check(**kw):
        cfg = tiny_config(
            dataset="folder", data_root=str(data_root), train={"res": 32},
            dataset_kwargs={"n_classes": 3, **kw},
        )  # fmt: skip
        return sweep.check_store_matches(cfg, "train", store, what=f"store {path}", strict=True)

    assert check() == []
    assert check(ignore_value=255) == []
    assert check(ignore_value=[255]) == []
    with pytest.raises(ValueError, match=r"dataset_kwargs.ignore_value: store \[?255\]? \(the def"):
        check(ignore_value=11)


# --------------------------------------------------------------------------------- limits


def limited_config(limit):
    return tiny_config(val={"res": 48, "limit": limit})


@pytest.mark.parametrize("limit", [10, 16, 40], ids=["under", "all", "over"])
def test_limited_store_resumes_with_the_same_config(tmp_path, limit):
    """A sweep whose val store has ``limit: N`` reuses that store when it runs again (its
    recorded file fingerprint is that of the first N images), also for N >= the split size."""
    out = tmp_path / "run"
    _, val = sweep.ensure_stores(limited_config(limit), out, progress=False)
    assert val.n_images == min(limit, 16)
    _, again = sweep.ensure_stores(limited_config(limit), out, progress=False)
    assert again.ids == val.ids
    # a given store: accepted as it is, no warning for the same limit
    path = sweep.store_path(limited_config(limit), out, "val")
    assert sweep.open_existing_store(limited_config(limit), "val", path).ids == val.ids


def test_limited_store_with_another_limit_is_detected(tmp_path):
    out = tmp_path / "run"
    sweep.ensure_stores(limited_config(10), out, progress=False)
    path = sweep.store_path(limited_config(10), out, "val")
    store = FeatureStore.open(path)
    with pytest.raises(ValueError, match=r"limit: store 10, config 5"):
        sweep.check_store_matches(limited_config(5), "val", store, what="s", strict=True)
    with pytest.raises(ValueError, match=r"limit: store 10, config None"):
        sweep.check_store_matches(tiny_config(), "val", store, what="s", strict=True)
    # a given store with another limit: used, with a warning naming the limits
    with pytest.warns(RuntimeWarning, match=r"limit 10 \(config 5\)"):
        sweep.open_existing_store(limited_config(5), "val", path)
    # the limited store of another dataset option is still refused
    cfg = tiny_config(
        val={"res": 48, "limit": 10}, dataset_kwargs=config_with(seed=1).dataset_kwargs
    )
    with pytest.raises(ValueError, match=r"dataset_kwargs.seed: store 0, config 1"):
        sweep.check_store_matches(cfg, "val", store, what="s", strict=True)


def test_resume_of_a_config_written_before_an_option_existed(tmp_path):
    """A run recorded without ``nuisance`` (the default, 0) resumes under ``nuisance: 0``
    spelled out, and is refused under ``nuisance: 0.5``."""
    import json

    from stego_probe.sweep.run import _check_resume

    zero = config_with(nuisance=0)
    old = zero.to_dict()
    old["dataset_kwargs"] = {k: v for k, v in old["dataset_kwargs"].items() if k != "nuisance"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "results.csv").write_text("dataset,metric,value\nsynthetic,miou,1.0\n")
    _check_resume(zero, tmp_path)
    _check_resume(config_with(nuisance=0.0), tmp_path)
    with pytest.raises(ValueError, match="dataset_kwargs"):
        _check_resume(config_with(nuisance=0.5), tmp_path)
