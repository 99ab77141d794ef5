"""Tests of the dimension sweep: configs, point enumeration, results, resume, CLI.

One tiny sweep (synthetic scenes, descriptor backbone at 48 px, 16 images per split, a few
optimisation steps) is run once per module and shared; tests that mutate a run work on a copy.
"""

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stego_probe import sweep
from stego_probe.cli.main import main
from stego_probe.results import RESULT_COLUMNS, read_results
from stego_probe.sweep import (
    Point,
    SweepConfig,
    done_points,
    list_presets,
    load_config,
    run_sweep,
    summary_table,
    sweep_points,
)

#: Overrides of the ``synthetic`` preset that make a sweep take seconds.
TINY = {
    "dataset_kwargs": {"n_images": 16, "size": [48, 64]},
    "train": {"res": 48},
    "val": {"res": 48},
    "methods": ["dino", "pca", "rp", "stego"],
    "dims": [3, 100],  # 100 > C = 64: skipped
    "seeds": [0],
    "probe_kwargs": {
        "kmeans": {"n_train": 2000, "niter": 5, "nredo": 1},
        "linear": {"steps": 10, "batch_size": 4},
    },
    "method_kwargs": {"stego": {"steps": 4, "batch_size": 4, "val_every": 2}},
    "distinctness": {"n_tokens": 500, "seeds": [0]},
}
C = 64  # descriptor backbone width
KEY = ["method", "dim", "seed", "probe", "metric"]


def tiny_config(**over) -> SweepConfig:
    return load_config("synthetic", {**TINY, **over})


@dataclass
class Run:
    config: SweepConfig
    out: Path
    df: pd.DataFrame


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Run:
    config = tiny_config()
    out = tmp_path_factory.mktemp("sweep") / "run"
    return Run(config, out, run_sweep(config, out, progress=False))


def copy_run(run: Run, dest: Path, what=("stores",)) -> Path:
    """Copy parts of a finished run (``stores``, ``projections``, ``results.csv``...)."""
    for name in what:
        src = run.out / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / name)
    return dest


def point_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of sweep points (no Figure 3 spectrum), sorted by KEY."""
    df = df[df["metric"] != "explained_variance_ratio"]
    return df.sort_values(KEY).reset_index(drop=True)


# ----------------------------------------------------------------------------------- configs


def test_package_presets_load_with_protocol_dims():
    assert list_presets() == ["cityscapes27", "cocostuff27", "potsdam3", "synthetic"]
    plotted = {  # PROTOCOL §7.1
        "cocostuff27": ({768, 384, 192, 96, 90, 48, 24, 12, 6, 3}, "dino_vitb8"),
        "cityscapes27": ({768, 384, 192, 100, 96, 48, 24, 12, 6, 3}, "dino_vitb8"),
        "potsdam3": ({384, 192, 96, 70, 48, 24, 12, 6, 3}, "dino_vits8"),
    }
    for name, (dims, backbone) in plotted.items():
        cfg = load_config(name)
        assert cfg.name == name and cfg.dataset == name and cfg.backbone == backbone
        assert dims <= set(cfg.dims)
        assert cfg.method_kwargs["stego"]["preset"] == name
        assert {"dino", "pca", "rp", "stego"} <= set(cfg.methods)
    potsdam = load_config("potsdam3")
    assert max(potsdam.dims) == 384 and potsdam.train.crop == "center"
    assert load_config("cocostuff27").train.crop == "five"


def test_load_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "mine",
                "dataset": "synthetic",
                "backbone": "descriptor",
                "train": {"res": 32, "limit": 10},
                "dims": [2, 4],
                "probes": ["kmeans"],
                "mode": "token",
            }
        )
    )
    cfg = load_config(path)
    assert (cfg.name, cfg.dims, cfg.probes, cfg.mode) == ("mine", [2, 4], ["kmeans"], "token")
    assert (cfg.train.split, cfg.train.res, cfg.train.limit) == ("train", 32, 10)
    assert cfg.val.split == "val"  # dataclass default
    assert load_config(str(path)).to_dict() == cfg.to_dict()


def test_overrides_merge_into_nested_dicts():
    base = load_config("synthetic")
    cfg = load_config(
        "synthetic",
        {
            "train": {"res": 32},
            "probe_kwargs": {"linear": {"steps": 5}},
            "distinctness": {"n_tokens": 10},
            "backbone": None,  # None = keep the preset's value
            "seeds": [7],
        },
    )
    assert cfg.train.res == 32
    assert (cfg.train.split, cfg.train.crop) == (base.train.split, base.train.crop)
    assert cfg.probe_kwargs["linear"] == {**base.probe_kwargs["linear"], "steps": 5}
    assert cfg.probe_kwargs["kmeans"] == base.probe_kwargs["kmeans"]
    assert cfg.distinctness == {**base.distinctness, "n_tokens": 10}
    assert cfg.backbone == "descriptor" and cfg.seeds == [7]
    # the package preset itself is untouched
    assert load_config("synthetic").to_dict() == base.to_dict()


@pytest.mark.parametrize(
    "overrides, exc, words",
    [
        ({"dimz": [3]}, ValueError, ["unknown keys", "dimz"]),
        ({"train": {"resolution": 32}}, ValueError, ["unknown keys", "resolution", "train"]),
        ({"methods": ["pca", "tsne"]}, ValueError, ["tsne", "unknown"]),
        ({"probes": ["kmeans", "svm"]}, ValueError, ["svm"]),
        ({"mode": "patch"}, ValueError, ["mode", "patch", "pixel"]),
        ({"seeds": []}, ValueError, ["seeds"]),
        ({"dims": [0, 3]}, ValueError, ["dims"]),
        ({"method_kwargs": {"pcaa": {}}}, ValueError, ["method_kwargs", "pcaa"]),
        ({"probe_kwargs": {"kmean": {}}}, ValueError, ["probe_kwargs", "kmean"]),
        ({"mode": "token", "flip": True}, ValueError, ["flip", "token"]),
    ],
)
def test_bad_config_errors_name_the_problem(overrides, exc, words):
    with pytest.raises(exc) as info:
        load_config("synthetic", overrides)
    for w in words:
        assert w in str(info.value)


def test_bad_preset_errors(tmp_path):
    with pytest.raises(KeyError, match="nosuchpreset.*synthetic"):
        load_config("nosuchpreset")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(tmp_path / "list.yaml")


# ------------------------------------------------------------------------------------ points


def test_sweep_points():
    methods = ["dino", "pca", "rp", "stego", "umap"]
    cfg = tiny_config(methods=methods, dims=[12, 3, 100, 3], seeds=[0, 1])
    pts = sweep_points(cfg, C)
    assert len(pts) == len(set(pts))
    by = {m: sorted((p.dim, p.seed) for p in pts if p.method == m) for m in methods}
    assert by["dino"] == [(C, 0), (C, 1)]  # once per seed, full width
    full = [(d, s) for d in (3, 12, C) for s in (0, 1)]
    assert by["pca"] == by["rp"] == by["stego"] == full  # full width added, 100 > C skipped
    assert by["umap"] == [(d, s) for d in (3, 12) for s in (0, 1)]  # no full width added
    # full width is not duplicated when listed
    pca = [p for p in sweep_points(tiny_config(methods=["pca"], dims=[3, C]), C)]
    assert pca == [Point("pca", 3, 0), Point("pca", C, 0)]


def test_summary_table():
    rows = [
        {"method": "pca", "dim": 3, "seed": s, "probe": "kmeans", "metric": "miou", "value": v}
        for s, v in ((0, 10.0), (1, 20.0))
    ]
    rows.append({"method": "pca", "dim": 3, "seed": 0, "probe": "none", "metric": "miou"})
    table = summary_table(pd.DataFrame(rows).fillna({"value": 99.0}))
    assert list(table.columns) == ["kmeans"]
    assert table.loc[("pca", 3), "kmeans"] == f"{15.0:5.1f} ± {np.std([10, 20], ddof=1):4.1f}"
    assert summary_table(pd.DataFrame(rows), "accuracy").empty


# ----------------------------------------------------------------------------------- results


def test_results_table(tiny_run):
    out, df = tiny_run.out, tiny_run.df
    assert list(pd.read_csv(out / "results.csv", nrows=0).columns) == RESULT_COLUMNS
    assert list(df.columns) == RESULT_COLUMNS
    for name in ("config.json", "stores", "projections"):
        assert (out / name).exists()
    assert json.loads((out / "config.json").read_text())["dims"] == TINY["dims"]
    pts = sweep_points(tiny_run.config, C)
    assert done_points(out / "results.csv") == set(pts)
    assert not point_rows(df).duplicated(KEY).any()
    points = point_rows(df)
    for p in pts:
        rows = points[
            (points["method"] == p.method) & (points["dim"] == p.dim) & (points["seed"] == p.seed)
        ]
        for probe in ("kmeans", "linear"):
            r = rows[rows["probe"] == probe].set_index("metric")["value"]
            assert {"accuracy", "miou"} <= set(r.index), (p, probe)
            assert 0 <= r["miou"] <= r["accuracy"] <= 100
            assert (rows[rows["probe"] == probe]["crf"].astype(str) == "False").all()
        dist = rows[rows["probe"] == "none"]
        assert {"silhouette", "kmeans_ari"} <= set(dist["metric"])
        assert set(rows["mode"]) == {"val"} and set(rows["split"]) == {"val"}
    # Figure 3 rows: the PCA spectrum of the train store, one row per component
    evr = df[df["metric"] == "explained_variance_ratio"].sort_values("dim")
    assert evr["dim"].tolist() == list(range(1, C + 1))
    assert (evr["probe"] == "none").all() and (evr["split"] == "train").all()
    assert evr["value"].sum() == pytest.approx(1.0, abs=1e-4)
    assert (np.diff(evr["value"].to_numpy()) <= 1e-9).all()  # sorted, descending


def test_stego_point_selected_best_by_val(tiny_run):
    from stego_probe.projections import load_projection

    head = load_projection(tiny_run.out / "projections" / "stego_d3_seed0.pt")
    assert head.selected_ == "best_val_cluster_miou"
    # validated at steps 2 and 4 (val_every=2, steps=4): the selected step is the argmax
    val = [
        (h["val_cluster_miou"], h["step"])
        for h in head.history_
        if h["step"] > 0 and "val_cluster_miou" in h
    ]
    assert [s for _, s in val] == [2, 4]
    best = max(val, key=lambda t: (t[0], -t[1]))[1]
    assert head.best_step_ == head.selected_step_ == best


def test_rerun_recomputes_nothing(tiny_run, monkeypatch):
    before = (tiny_run.out / "results.csv").read_bytes()

    def boom(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(sweep, "run_point", boom)
    monkeypatch.setattr(sweep, "pca_spectrum_rows", boom)
    monkeypatch.setattr("stego_probe.extract.extract", boom)
    df = run_sweep(tiny_run.config, tiny_run.out, progress=False)
    pd.testing.assert_frame_equal(df, tiny_run.df)
    assert (tiny_run.out / "results.csv").read_bytes() == before


def test_killed_sweep_resumes_to_the_uninterrupted_table(tiny_run, tmp_path, monkeypatch):
    out = copy_run(tiny_run, tmp_path / "run")  # the stores only
    config = tiny_config(methods=["dino", "pca", "rp"])
    real, calls = sweep.run_point, []

    def killed_on_third(config, point, *args, **kwargs):
        calls.append(point)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(config, point, *args, **kwargs)

    monkeypatch.setattr(sweep, "run_point", killed_on_third)
    with pytest.raises(RuntimeError, match="killed"):
        run_sweep(config, out, progress=False)
    partial = read_results(out / "results.csv")
    finished = set(calls[:2])
    assert done_points(out / "results.csv") == finished

    calls.clear()
    monkeypatch.setattr(sweep, "run_point", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    df = run_sweep(config, out, progress=False)
    expected = set(sweep_points(config, C))
    assert len(calls) == len(set(calls)) and set(calls) == expected - finished
    assert done_points(out / "results.csv") == expected
    assert not df.duplicated(KEY).any()
    # the rows written before the kill are kept as they were
    kept = df.merge(partial[KEY + ["value"]], on=KEY, suffixes=("", "_before"))
    assert len(kept) == len(partial)
    np.testing.assert_array_equal(kept["value"], kept["value_before"])
    # and the whole table equals the uninterrupted run's rows for these points
    ref = tiny_run.df[tiny_run.df["method"].isin(config.methods)]
    got, want = point_rows(df), point_rows(ref)
    assert got[KEY].equals(want[KEY])
    np.testing.assert_allclose(got["value"], want["value"], rtol=0, atol=1e-6)
    spectrum = df[df["metric"] == "explained_variance_ratio"].sort_values("dim")
    want_spec = ref[ref["metric"] == "explained_variance_ratio"].sort_values("dim")
    np.testing.assert_allclose(spectrum["value"], want_spec["value"], rtol=0, atol=1e-9)


def test_extended_grid_computes_only_new_points(tiny_run, tmp_path, monkeypatch):
    out = copy_run(tiny_run, tmp_path / "run", ("stores", "projections", "results.csv"))
    shutil.copy(tiny_run.out / "config.json", out / "config.json")
    real, calls = sweep.run_point, []
    monkeypatch.setattr(sweep, "run_point", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    df = run_sweep(tiny_config(methods=["pca"], dims=[3, 6]), out, progress=False)
    assert calls == [Point("pca", 6, 0)]
    old = point_rows(tiny_run.df)
    pd.testing.assert_frame_equal(point_rows(df[df["dim"] != 6]), old)
    assert {"accuracy", "miou"} <= set(df[(df["method"] == "pca") & (df["dim"] == 6)]["metric"])


def test_resume_refuses_another_configuration(tiny_run, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(tiny_run.out / "config.json", out / "config.json")
    before = (out / "config.json").read_text()
    changed = {
        "dataset_kwargs": {"n_images": 20},
        "backbone": "dino_vits8",
        "probe_kwargs": {"linear": {"steps": 11}},
    }
    for key, value in changed.items():
        with pytest.raises(ValueError, match=key):
            run_sweep(tiny_config(**{key: value}), out, progress=False)
    assert (out / "config.json").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_mismatched_stores_refused(tiny_run, tmp_path, monkeypatch):
    from stego_probe.backbones import get_backbone
    from stego_probe.data import get_dataset
    from stego_probe.extract import extract
    from stego_probe.store import FeatureStore

    ds = get_dataset("synthetic", split="val", n_images=2, n_classes=3, size=(48, 64))
    other = extract(ds, get_backbone("descriptor"), tmp_path / "other", res=48, progress=False)
    train = FeatureStore.open(sweep.store_path(tiny_run.config, tiny_run.out, "train"))
    monkeypatch.setattr(sweep, "ensure_stores", lambda *a, **k: (train, other))
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="n_classes") as info:
        run_sweep(tiny_run.config, out, progress=False)
    assert str(tmp_path / "other") in str(info.value)
    assert not (out / "results.csv").exists()


def test_bad_executor(tmp_path):
    with pytest.raises(ValueError, match="executor"):
        run_sweep(tiny_config(), tmp_path / "run", executor="dask", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed")
def test_ray_executor_without_ray(tiny_run, tmp_path):
    out = copy_run(tiny_run, tmp_path / "run", ("stores", "projections", "results.csv"))
    with pytest.raises(ImportError, match=r"stego-probe\[ray\]"):
        run_sweep(tiny_run.config, out, executor="ray", progress=False)


# --------------------------------------------------------------------------------------- CLI


def test_cli_sweep(tiny_run, tmp_path, capsys):
    preset = tmp_path / "tiny.yaml"
    data = {**load_config("synthetic", TINY).to_dict(), "name": "tiny", "methods": ["pca"]}
    preset.write_text(yaml.safe_dump(data))
    out = copy_run(tiny_run, tmp_path / "run")
    rc = main(["sweep", "--preset", str(preset), "--out", str(out), "--dims", "3", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "mIoU (%) mean ± std over seeds, tiny" in text and "results.csv" in text
    df = read_results(out / "results.csv")
    assert done_points(out / "results.csv") == {Point("pca", 3, 0), Point("pca", C, 0)}
    miou = df[(df["method"] == "pca") & (df["dim"] == 3) & (df["metric"] == "miou")]
    for probe in ("kmeans", "linear"):
        value = miou[miou["probe"] == probe]["value"].item()
        assert f"{value:5.1f}" in text
    # errors are printed without a traceback
    rc = main(["sweep", "--preset", "nosuchpreset", "--out", str(tmp_path / "x")])
    assert rc == 1 and "nosuchpreset" in capsys.readouterr().err
