"""Tests of the dimension sweep: configs, point enumeration, results, resume, CLI.

One tiny sweep (synthetic scenes, descriptor backbone at 48 px, 16 images per split, a few
optimisation steps) is run once per module and shared; tests that mutate a run work on a copy.
"""

import inspect
import json
import os
import shutil
import subprocess
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stego_probe import sweep
from stego_probe.cli.main import main
from stego_probe.lock import (
    LOCK_NAME,
    FolderLockedError,
    folder_lock,
    lock_holder,
    table_lock_folder,
)
from stego_probe.persist import read_estimator
from stego_probe.probes.defaults import LINEAR_MAX_IMAGES
from stego_probe.results import RESULT_COLUMNS, make_rows, read_results
from stego_probe.sweep import (
    Point,
    SweepConfig,
    SweepError,
    SweepProgress,
    done_points,
    list_presets,
    load_config,
    point_weights,
    run_order,
    run_sweep,
    summary_table,
    sweep_points,
)

# The sweep's modules where a monkeypatch reaches a name as it is looked up (see
# test_monkeypatch_targets_are_where_the_names_are_looked_up).
from stego_probe.sweep import executors as sweep_executors
from stego_probe.sweep import fit as sweep_fit
from stego_probe.sweep import measure as sweep_measure
from stego_probe.sweep import run as sweep_run
from stego_probe.sweep.points import point_context

#: Overrides of the ``synthetic`` preset that make a sweep take seconds.
TINY = {
    "dataset_kwargs": {"n_images": 16, "size": [48, 64]},
    "train": {"res": 48},
    "val": {"res": 48},
    "methods": ["dino", "pca", "rp", "stego"],
    "dims": [3, 100],  # 100 > C = 64: skipped
    "seeds": [0],
    "probe_kwargs": {
        "kmeans": {"n_tokens": 2000, "niter": 5, "nredo": 1},
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


def failing_run_point(fail: dict[Point, str], calls: list | None = None):
    """A fast stand-in for ``run_point`` (patched into ``sweep_executors``): one kmeans miou row
    per point (value = D), or a ``ValueError(fail[point])`` for the points in ``fail``."""

    def run_point(config, point, train_store, val_store, cache_dir):
        if calls is not None:
            calls.append(point)
        if point in fail:
            raise ValueError(fail[point])
        context = {**point_context(config, val_store, point), "probe": "kmeans"}
        return make_rows({**context, "match": "hungarian"}, {"miou": float(point.dim)})

    return run_point


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
        ({"seeds": [0, -1]}, ValueError, ["seeds", "non-negative", "-1"]),
        ({"seeds": [2**32]}, ValueError, ["seeds"]),
        ({"seeds": ["a"]}, ValueError, ["seeds"]),
        ({"dims": []}, ValueError, ["dims"]),
        ({"train": {"res": 0}}, ValueError, ["train.res"]),
        ({"distinctness": {"n_tokens": 6}}, ValueError, ["distinctness.n_tokens=6", "K + 1 = 7"]),
        ({"distinctness": {"n_tokens": 0}}, ValueError, ["distinctness.n_tokens"]),
        ({"distinctness": {"seeds": [-2]}}, ValueError, ["distinctness.seeds"]),
        ({"distinctness": {"seeds": []}}, ValueError, ["distinctness.seeds"]),
        # K from dataset_kwargs: 3 classes need 4 tokens
        (
            {"dataset_kwargs": {"n_classes": 3}, "distinctness": {"n_tokens": 3}},
            ValueError,
            ["distinctness.n_tokens=3", "K = 3"],
        ),
    ],
)
def test_bad_config_errors_name_the_problem(overrides, exc, words):
    with pytest.raises(exc) as info:
        load_config("synthetic", overrides)
    for w in words:
        assert w in str(info.value)


def test_config_is_validated_on_construction(tmp_path):
    with pytest.raises(ValueError, match="seeds"):
        SweepConfig(name="t", dataset="synthetic", backbone="descriptor", seeds=[-1])
    with pytest.raises(ValueError, match="distinctness.n_tokens"):
        SweepConfig(
            name="t", dataset="cocostuff27", backbone="dino_vitb8", distinctness={"n_tokens": 27}
        )
    # distinctness off: n_tokens is not used, so not checked against K
    SweepConfig(
        name="t", dataset="synthetic", backbone="descriptor",
        distinctness={"enabled": False, "n_tokens": 2},
    )  # fmt: skip
    # config.json round trip
    config = tiny_config()
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    assert SweepConfig.from_json(path).to_dict() == config.to_dict()
    path.write_text(json.dumps({**config.to_dict(), "seeds": [-3]}))
    with pytest.raises(ValueError, match="seeds"):
        SweepConfig.from_json(path)


def test_cli_rejects_bad_seeds_and_tokens_before_any_work(tmp_path, capsys):
    out = tmp_path / "x"
    for flag, value in (("--seeds", "-1"), ("--seeds", "0,x"), ("--dims", "0")):
        with pytest.raises(SystemExit) as info:
            main(["sweep", "--preset", "synthetic", "--out", str(out), flag, value])
        err = capsys.readouterr().err
        assert info.value.code == 2 and f"argument {flag}" in err, err
    preset = tmp_path / "bad.yaml"
    data = {**load_config("synthetic", TINY).to_dict(), "name": "bad"}
    data["distinctness"] = {"n_tokens": 5}
    preset.write_text(yaml.safe_dump(data))
    rc = main(["sweep", "--preset", str(preset), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "distinctness.n_tokens=5" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused when the config was loaded: nothing extracted


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
    want = f"{15.0:5.1f} ± {np.std([10, 20], ddof=1):4.1f} (n=2)"
    assert table.loc[("PCA", 3), "kmeans"] == want
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
            assert rows["crf"].dtype == bool and not rows[rows["probe"] == probe]["crf"].any()
        dist = rows[rows["probe"] == "none"]
        assert {"silhouette", "kmeans_ari"} <= set(dist["metric"])
        assert set(rows["mode"]) == {"pixel"} and set(rows["split"]) == {"val"}
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


@pytest.mark.parametrize(
    "module, caller, name",
    [
        (sweep_executors, "run_local", "run_point"),
        (sweep_run, "_run_backbone", "ensure_stores"),
        (sweep_run, "_run_backbone", "pca_spectrum_rows"),
        (sweep_run, "run_sweep", "check_dependencies"),
        (sweep_measure, "run_point", "val_code_sample"),
    ],
)
def test_monkeypatch_targets_are_where_the_names_are_looked_up(module, caller, name):
    """The tests patch these names in the sweep module whose function looks them up; were a
    name moved to another module, such a patch would silently replace nothing."""
    code = inspect.unwrap(getattr(module, caller)).__code__
    assert name in code.co_names
    assert getattr(module, name) is getattr(sweep, name)


def test_rerun_recomputes_nothing(tiny_run, monkeypatch):
    before = (tiny_run.out / "results.csv").read_bytes()

    def boom(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(sweep_executors, "run_point", boom)
    monkeypatch.setattr(sweep_run, "pca_spectrum_rows", boom)
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
            raise KeyboardInterrupt  # a kill stops at once (a failing point would not)
        return real(config, point, *args, **kwargs)

    monkeypatch.setattr(sweep_executors, "run_point", killed_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, out, progress=False)
    assert lock_holder(out) is None  # Ctrl-C released the folder
    assert not (out / "failures.log").exists()  # an interrupt is not a failed point
    partial = read_results(out / "results.csv")
    finished = set(calls[:2])
    assert done_points(out / "results.csv") == finished

    calls.clear()
    monkeypatch.setattr(
        sweep_executors, "run_point", lambda *a, **k: calls.append(a[1]) or real(*a, **k)
    )
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
    monkeypatch.setattr(
        sweep_executors, "run_point", lambda *a, **k: calls.append(a[1]) or real(*a, **k)
    )
    df = run_sweep(tiny_config(methods=["pca"], dims=[3, 6]), out, progress=False)
    assert calls == [Point("pca", 6, 0)]
    old = point_rows(tiny_run.df)
    pd.testing.assert_frame_equal(point_rows(df[df["dim"] != 6]), old)
    assert {"accuracy", "miou"} <= set(df[(df["method"] == "pca") & (df["dim"] == 6)]["metric"])


def test_resume_refuses_another_configuration(tiny_run, tmp_path):
    out = copy_run(tiny_run, tmp_path / "run", ("config.json", "results.csv"))
    before = (out / "config.json").read_text()
    table = (out / "results.csv").read_bytes()
    changed = {
        "dataset_kwargs": {"n_images": 20},
        "backbone": "dino_vits8",
        "probe_kwargs": {"linear": {"steps": 11}},
    }
    for key, value in changed.items():
        with pytest.raises(ValueError, match=key):
            run_sweep(tiny_config(**{key: value}), out, progress=False)
    assert (out / "config.json").read_text() == before
    assert (out / "results.csv").read_bytes() == table
    # nothing written apart from the (released) folder and table lock files
    locks = {LOCK_NAME, table_lock_folder(out / "results.csv").parent.name}
    assert sorted(p.name for p in out.iterdir() if p.name not in locks) == [
        "config.json",
        "results.csv",
    ]
    assert lock_holder(out) is None


def test_mismatched_stores_refused(tiny_run, tmp_path, monkeypatch):
    from stego_probe.backbones import get_backbone
    from stego_probe.data import get_dataset
    from stego_probe.extract import extract
    from stego_probe.store import FeatureStore

    ds = get_dataset("synthetic", split="val", n_images=2, n_classes=3, size=(48, 64))
    other = extract(ds, get_backbone("descriptor"), tmp_path / "other", res=48, progress=False)
    train = FeatureStore.open(sweep.store_path(tiny_run.config, tiny_run.out, "train"))
    monkeypatch.setattr(sweep_run, "ensure_stores", lambda *a, **k: (train, other))
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="n_classes") as info:
        run_sweep(tiny_run.config, out, progress=False)
    assert str(tmp_path / "other") in str(info.value)
    assert not (out / "results.csv").exists()


def test_bad_executor(tmp_path):
    with pytest.raises(ValueError, match="executor"):
        run_sweep(tiny_config(), tmp_path / "run", executor="dask", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "module, extra, executor, methods",
    [
        ("ray", "ray", "ray", ["dino", "pca"]),
        ("umap", "umap", "local", ["pca", "umap"]),
        ("hnne", "hnne", "local", ["hnne"]),
    ],
)
def test_missing_extra_fails_before_any_work(
    tmp_path, monkeypatch, module, extra, executor, methods
):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import <module>` raise ImportError

    def boom(*args, **kwargs):
        raise AssertionError("work started before the dependency check")

    monkeypatch.setattr(sweep_run, "ensure_stores", boom)
    monkeypatch.setattr("stego_probe.extract.extract", boom)
    out = tmp_path / "run"
    with pytest.raises(ImportError, match=rf"pip install 'stego-probe\[{extra}\]'"):
        run_sweep(tiny_config(methods=methods), out, executor=executor, progress=False)
    assert not out.exists()  # no store directory, no config.json
    assert sweep.required_extras(tiny_config(methods=methods), executor) == [extra]
    assert sweep.required_extras(tiny_config(), "local") == []


# --------------------------------------------------------------------------------------- CLI


def test_cli_sweep(tiny_run, tmp_path, capsys):
    preset = tmp_path / "tiny.yaml"
    data = {**load_config("synthetic", TINY).to_dict(), "name": "tiny", "methods": ["pca"]}
    preset.write_text(yaml.safe_dump(data))
    out = copy_run(tiny_run, tmp_path / "run")
    rc = main(["sweep", "--preset", str(preset), "--out", str(out), "--dims", "3", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "mIoU (%), 1 seed (n=1): mean only, tiny" in text and "results.csv" in text
    df = read_results(out / "results.csv")
    assert done_points(out / "results.csv") == {Point("pca", 3, 0), Point("pca", C, 0)}
    miou = df[(df["method"] == "pca") & (df["dim"] == 3) & (df["metric"] == "miou")]
    for probe in ("kmeans", "linear"):
        value = miou[miou["probe"] == probe]["value"].item()
        assert f"{value:5.1f}" in text
    # errors are printed without a traceback
    rc = main(["sweep", "--preset", "nosuchpreset", "--out", str(tmp_path / "x")])
    assert rc == 1 and "nosuchpreset" in capsys.readouterr().err


def test_cli_sweep_failed_points_exit_nonzero(tiny_run, tmp_path, capsys, monkeypatch):
    preset = tmp_path / "tiny.yaml"
    data = {**load_config("synthetic", TINY).to_dict(), "name": "tiny", "methods": ["pca"]}
    preset.write_text(yaml.safe_dump(data))
    out = copy_run(tiny_run, tmp_path / "run")
    monkeypatch.setattr(
        sweep_executors, "run_point", failing_run_point({Point("pca", C, 0): "no memory"})
    )
    rc = main(["sweep", "--preset", str(preset), "--out", str(out), "--dims", "3", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1
    assert f"(pca, D={C}, seed=0): ValueError: no memory" in captured.err
    assert "1 of 2 points failed" in captured.err
    # the finished point is summarised and kept
    assert "kmeans" in captured.out and "results.csv" in captured.out
    assert done_points(out / "results.csv") == {Point("pca", 3, 0)}


# ------------------------------------------------------------------------- early failures


def test_failing_point_keeps_the_others_and_reports_all(tiny_run, tmp_path, monkeypatch, capsys):
    out = copy_run(tiny_run, tmp_path / "run")
    config = tiny_config(methods=["dino", "pca", "rp"])
    fail = {Point("pca", 3, 0): "boom pca", Point("rp", C, 0): "boom rp"}
    calls: list[Point] = []
    monkeypatch.setattr(sweep_executors, "run_point", failing_run_point(fail, calls))
    with pytest.raises(SweepError) as info:
        run_sweep(config, out, progress=True)
    points = set(sweep_points(config, C))
    assert set(calls) == points  # the sweep went on after the first failure
    err = info.value
    assert [p for p, _ in err.failures] == [p for p in calls if p in fail]
    msg = str(err)
    assert "2 of 5 points failed" in msg
    assert "(pca, D=3, seed=0): ValueError: boom pca" in msg
    assert f"(rp, D={C}, seed=0): ValueError: boom rp" in msg
    assert isinstance(err, RuntimeError) and isinstance(err.__cause__, ValueError)
    # every finished point's rows are written, and returned with the error
    assert done_points(out / "results.csv") == points - set(fail)
    pd.testing.assert_frame_equal(err.results, read_results(out / "results.csv"))
    assert (err.results["metric"] == "explained_variance_ratio").sum() == C
    log = (out / "failures.log").read_text()
    assert "=== (pca, D=3, seed=0)" in log and "Traceback" in log and "boom rp" in log
    # the bar named the points and reported the failures as they happened
    text = capsys.readouterr().err
    assert "now (dino, D=64, seed=0)" in text and "now (rp, D=3, seed=0)" in text
    assert "sweep point (pca, D=3, seed=0) failed: ValueError: boom pca" in text
    assert "5/5 points, 2 failed" in text

    # running again retries only the failed points; a clean run removes the log
    calls.clear()
    monkeypatch.setattr(sweep_executors, "run_point", failing_run_point({}, calls))
    df = run_sweep(config, out, progress=False)
    assert sorted(calls, key=str) == sorted(fail, key=str)
    assert done_points(out / "results.csv") == points
    assert not (out / "failures.log").exists()
    assert not point_rows(df).duplicated(KEY).any()


class FakeTaskError(Exception):
    """Like ``ray.exceptions.RayTaskError``: a remote traceback text, the task's error in
    ``cause``."""

    def __init__(self, cause: BaseException):
        super().__init__(f"ray::task() (pid=1)\n  File 'remote.py'\n{cause!r}")
        self.cause = cause


class FakeRay(types.ModuleType):
    """In-process stand-in for the few Ray calls of the sweep driver. Tasks run when their result
    is fetched; ``wait`` hands them back in reverse submission order."""

    def __init__(self):
        super().__init__("ray")
        self.initialized = False
        self.tasks: list = []
        self.options: dict = {}

    def is_initialized(self):
        return self.initialized

    def init(self, **kwargs):
        self.initialized = True

    def remote(self, **options):
        self.options = options

        def decorate(fn):
            def submit(*args):
                self.tasks.append((fn, args))
                return len(self.tasks) - 1  # the object ref

            return types.SimpleNamespace(remote=submit)

        return decorate

    def wait(self, refs, num_returns=1):
        return refs[-num_returns:], refs[:-num_returns]

    def get(self, ref):
        fn, args = self.tasks[ref]
        try:
            return fn(*args)
        except Exception as e:
            raise FakeTaskError(e) from e


def test_ray_executor_keeps_finished_points_and_reports_failures(tiny_run, tmp_path, monkeypatch):
    ray = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    out = copy_run(tiny_run, tmp_path / "run")
    config = tiny_config(methods=["pca", "rp"], seeds=[0, 1])
    inner = failing_run_point({Point("rp", 3, 1): "cuda error"})

    def run_point(config, point, train_store, val_store, cache_dir):
        if point.method == "pca":  # fitted once per seed by the driver, before any task
            assert (Path(cache_dir) / f"pca_seed{point.seed}.pt").exists()
        return inner(config, point, train_store, val_store, cache_dir)

    monkeypatch.setattr(sweep_executors, "run_point", run_point)
    with pytest.raises(SweepError, match=r"\(rp, D=3, seed=1\): ValueError: cuda error") as info:
        run_sweep(config, out, executor="ray", progress=False)
    assert ray.initialized and "num_gpus" in ray.options
    points = set(sweep_points(config, C))
    assert len(ray.tasks) == len(points) == 8
    assert done_points(out / "results.csv") == points - {Point("rp", 3, 1)}
    assert "1 of 8 points failed" in str(info.value)
    assert "cuda error" in (out / "failures.log").read_text()


def test_folder_without_results_is_not_a_resume(tiny_run, tmp_path, monkeypatch):
    from stego_probe.projections import load_projection

    out = copy_run(tiny_run, tmp_path / "run")
    first = tiny_config(methods=["rp"], dims=[3])

    def evaluate_fails(*args, **kwargs):
        raise RuntimeError("probe crashed")

    # a first run fails before any result, after fitting its projections
    with monkeypatch.context() as m:
        m.setattr("stego_probe.evaluate.evaluate_stores", evaluate_fails)
        with pytest.raises(SweepError, match="2 of 2 points failed"):
            run_sweep(first, out, progress=False)
    assert (out / "config.json").exists() and not (out / "results.csv").exists()
    assert load_projection(out / "projections" / "rp_d3_seed0.pt").standardize == "train"

    # a run with other result-defining settings is not refused: it starts afresh
    second = tiny_config(
        methods=["rp"],
        dims=[3],
        method_kwargs={**TINY["method_kwargs"], "rp": {"standardize": None}},
        probe_kwargs={**TINY["probe_kwargs"], "linear": {"steps": 5, "batch_size": 4}},
    )
    with pytest.warns(RuntimeWarning, match="removing .*projections"):
        df = run_sweep(second, out, progress=False)
    assert json.loads((out / "config.json").read_text()) == json.loads(
        json.dumps(second.to_dict(), default=str)
    )
    assert done_points(out / "results.csv") == set(sweep_points(second, C))
    assert {"accuracy", "miou"} <= set(df["metric"])
    # the stale projection fitted under the first settings was not reused
    assert load_projection(out / "projections" / "rp_d3_seed0.pt").standardize is None
    # now the folder has results: other settings are refused again
    with pytest.raises(ValueError, match="another configuration"):
        run_sweep(first, out, progress=False)


@pytest.mark.parametrize(
    "change, removed",
    [
        ({"dataset_kwargs": {"n_images": 20, "size": [48, 64]}}, True),  # other store content
        ({"probe_kwargs": {"linear": {"steps": 3}}}, False),  # stores and fits still valid
    ],
)
def test_fresh_folder_drops_only_stale_stores_and_fits(tmp_path, monkeypatch, change, removed):
    config, out = tiny_config(**change), tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(tiny_config().to_dict(), default=str))
    left = [Path(sweep.store_path(config, out, w)) for w in ("train", "val")]
    left.append(out / "projections")
    for d in left:
        d.mkdir(parents=True)
        (d / "marker").write_text("left by the failed run")
    seen = {}

    def stop(config, out_dir, **kwargs):
        seen.update({d: d.exists() for d in left})
        raise RuntimeError("stop")

    monkeypatch.setattr(sweep_run, "ensure_stores", stop)
    with pytest.warns(RuntimeWarning) if removed else warnings.catch_warnings():
        if not removed:
            warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="stop"):
            run_sweep(config, out, progress=False)
    assert seen == {d: not removed for d in left}
    assert json.loads((out / "config.json").read_text())["dataset_kwargs"] == (
        config.dataset_kwargs
    )


# ------------------------------------------------------------------------------- progress


def test_run_order_times_every_method_early():
    config = tiny_config(methods=["dino", "pca", "rp", "stego"], dims=[3, 12], seeds=[0, 1])
    points = sweep_points(config, C)
    order = run_order(points)
    assert sorted(order, key=str) == sorted(points, key=str) and len(order) == len(points)
    assert order[:4] == [Point("dino", C, 0), Point("pca", 3, 0), Point("rp", 3, 0)] + [
        Point("stego", 3, 0)
    ]
    rest = [p for p in points if p not in order[:4]]
    assert order[4:] == rest  # then the enumeration order
    assert run_order(order) == order  # deterministic: a resumed sweep keeps its order
    todo = [p for p in points if p.seed == 1]
    assert run_order(todo)[:4] == [Point(m, C if m == "dino" else 3, 1) for m in config.methods]


def test_point_weights_follow_training_steps():
    adam = {"steps": 10, "batch_size": 4, "solver": "adam"}
    config = tiny_config(methods=["pca", "stego"], probe_kwargs={"linear": adam})
    w = point_weights(config, sweep_points(config, C))
    stego = 1 + sweep.STEGO_STEP_COST * (4 * 4) / (10 * 4)  # head 4 x 4, linear probe 10 x 4
    assert w[Point("pca", 3, 0)] == 1.0
    assert w[Point("stego", 3, 0)] == pytest.approx(stego)
    # with the cluster probe as well, the probes' share of the work doubles
    probe_kwargs = {"linear": adam, "cluster": {"steps": 10, "batch_size": 4}}
    both = tiny_config(methods=["stego"], probes=["linear", "cluster"], probe_kwargs=probe_kwargs)
    w2 = point_weights(both, [Point("stego", 3, 0)])
    assert w2[Point("stego", 3, 0)] == pytest.approx(1 + sweep.STEGO_STEP_COST * 16 / 80)


def test_point_weights_price_the_lbfgs_probe_by_passes_over_its_images():
    # the default (L-BFGS) linear probe: the prior passes over its capped image set, not
    # Adam's steps x batch_size (which it does not run)
    config = tiny_config(methods=["stego"], probe_kwargs={"linear": {"max_images": 50}})
    assert config.probe_kwargs["linear"]["solver"] == "lbfgs"
    w = point_weights(config, [Point("stego", 3, 0)])
    work = sweep.LBFGS_PASSES_PRIOR * 50
    assert w[Point("stego", 3, 0)] == pytest.approx(1 + sweep.STEGO_STEP_COST * 16 / work)
    # the recorded default cap
    assert tiny_config().probe_kwargs["linear"]["max_images"] == LINEAR_MAX_IMAGES


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_eta_is_calibrated_per_method():
    """Cheap points first and STEGO points last: counting points underestimates the time left
    5-fold; the weighted, per-method estimate is exact once each method has been timed."""
    cheap = [Point("pca", d, 0) for d in (3, 6, 12, 24, 48, 64)]
    stego = [Point("stego", d, 0) for d in (3, 12, 64)]
    cost = {**{p: 2.0 for p in cheap}, **{p: 40.0 for p in stego}}
    clock = Clock()
    bar = SweepProgress(
        run_order(cheap + stego), {p: 3.0 if p in stego else 1.0 for p in cheap + stego},
        disable=True, clock=clock,
    )  # fmt: skip
    assert bar.eta() is None and bar.fraction_done() == 0.0
    history = []
    for p in bar.points:
        bar.start(p)
        assert p.method in bar.postfix() and f"D={p.dim}" in bar.postfix()
        clock.t += cost[p]
        bar.finish(p)
        history.append((p, bar.eta(), bar.fraction_done()))
    truth = sum(cost.values())
    # after the first PCA point only the prior (STEGO = 3 PCA points) is known
    assert history[0][1] == pytest.approx(5 * 2 + 3 * 3 * 2)
    # after the first STEGO point (2nd in run order) the estimate is exact
    assert history[1][0] == stego[0]
    assert history[1][1] == pytest.approx(truth - 2 - 40)
    for i, (_, eta, frac) in enumerate(history[1:], start=1):
        elapsed = sum(cost[p] for p, *_ in history[: i + 1])
        assert eta == pytest.approx(truth - elapsed)
        assert frac == pytest.approx(elapsed / truth)
    assert history[-1][2] == 1.0 and bar.eta() == 0.0


def test_progress_eta_divides_by_measured_parallelism():
    clock = Clock()
    points = [Point("rp", d, 0) for d in (3, 6, 12, 24, 48, 64)]
    bar = SweepProgress(points, disable=True, clock=clock)
    for p in points:
        bar.start(p)  # Ray: all submitted at once
    assert "6 submitted" in bar.postfix()
    clock.t = 10.0
    for p in points[:2]:  # two workers: two 10 s points finish at t = 10
        bar.finish(p, seconds=10.0)
    assert bar.eta() == pytest.approx(4 * 10.0 / 2)
    assert "last (rp, D=6, seed=0)" in bar.postfix()
    bar.finish(points[2], error=RuntimeError("x"))  # failures do not bias the estimate
    assert bar.eta() == pytest.approx(3 * 10.0 / 2)
    assert [p for p, _ in bar.failures] == [points[2]] and bar.done[points[2]] is None


# ------------------------------------------------------------- existing stores, k-means flags


def test_sweep_uses_given_stores_without_copying(tiny_run, tmp_path, monkeypatch):
    train = sweep.store_path(tiny_run.config, tiny_run.out, "train")
    val = sweep.store_path(tiny_run.config, tiny_run.out, "val")
    monkeypatch.setattr("stego_probe.extract.extract", lambda *a, **k: pytest.fail("extracted"))
    config = tiny_config(methods=["pca"], dims=[3])
    out = tmp_path / "run"
    df = run_sweep(config, out, progress=False, train_store=train, val_store=val)
    assert not (out / "stores").exists()  # nothing extracted or copied
    assert json.loads((out / "stores.json").read_text()) == {
        "train": str(Path(train).resolve()),
        "val": str(Path(val).resolve()),
    }
    # the same stores give the same rows as the sweep that extracted them
    got = point_rows(df[(df.method == "pca") & (df.dim == 3)])
    ref = tiny_run.df
    want = point_rows(ref[(ref.method == "pca") & (ref.dim == 3)])
    assert got[KEY].equals(want[KEY])
    np.testing.assert_allclose(got["value"], want["value"], rtol=0, atol=1e-6)
    # a resume of this folder with other stores would mix results: refused
    with pytest.raises(ValueError, match="other stores"):
        run_sweep(config, out, progress=False, train_store=val, val_store=val)


def test_given_stores_must_match_the_config(tiny_run, tmp_path):
    from stego_probe.backbones import get_backbone
    from stego_probe.data import get_dataset
    from stego_probe.extract import extract
    from stego_probe.store import FeatureStore

    train = sweep.store_path(tiny_run.config, tiny_run.out, "train")
    config = tiny_config(methods=["pca"], dims=[3])
    ds = get_dataset("synthetic", split="val", n_images=2, n_classes=3, size=(48, 64))
    other = extract(ds, get_backbone("descriptor"), tmp_path / "other", res=48, progress=False)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="val store") as info:
        run_sweep(config, out, progress=False, train_store=train, val_store=other.path)
    msg = str(info.value)
    assert "n_classes: store 3, config 6" in msg and "dataset_kwargs.n_images: store 2" in msg
    assert not (out / "results.csv").exists() and not (out / "stores").exists()
    # the wrong split for the train store
    val = sweep.store_path(tiny_run.config, tiny_run.out, "val")
    with pytest.raises(ValueError, match="split: store 'val', config 'train'"):
        run_sweep(config, out, progress=False, train_store=val, val_store=val)
    with pytest.raises(FileNotFoundError, match="no feature store"):
        run_sweep(config, out, progress=False, train_store=tmp_path / "nothing")
    # an incomplete store
    part = FeatureStore.create(
        tmp_path / "part", n_images=4, grid=(6, 6), dim=64, label_shape=(48, 48),
        provenance=dict(FeatureStore.open(val).provenance), chunk_images=2,
    )  # fmt: skip
    with pytest.raises(ValueError, match="incomplete"):
        run_sweep(config, out, progress=False, train_store=train, val_store=part.path)
    # resolution differs from the preset's store spec: allowed, with a warning
    with pytest.warns(RuntimeWarning, match="res 48 .config 64."):
        sweep.open_existing_store(tiny_config(val={"res": 64}), "val", val)


def test_cli_sweep_kmeans_flags_and_existing_stores(tiny_run, tmp_path, capsys):
    train = sweep.store_path(tiny_run.config, tiny_run.out, "train")
    val = sweep.store_path(tiny_run.config, tiny_run.out, "val")
    preset = tmp_path / "tiny.yaml"
    data = {**load_config("synthetic", TINY).to_dict(), "name": "tiny", "methods": ["rp"]}
    preset.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    argv = ["sweep", "--preset", str(preset), "--out", str(out), "--dims", "3", "--no-progress",
            "--tol", "1e-3", "--niter", "7", "--nredo", "2",
            "--train-store", train, "--val-store", val]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert not (out / "stores").exists()
    config = json.loads((out / "config.json").read_text())
    # merged into the preset's k-means settings (n_tokens kept)
    want = {"n_tokens": 2000, "niter": 7, "nredo": 2, "tol": 1e-3}
    assert config["probe_kwargs"]["kmeans"] == want
    df = read_results(out / "results.csv")
    km = df[df.probe == "kmeans"]
    assert len(km) and (km["kmeans_tol"] == 1e-3).all() and (km["kmeans_niter"] == 7).all()
    assert (km["kmeans_nredo"] == 2).all() and km["kmeans_n_iter"].between(1, 7).all()
    # distinctness rows record their own k-means protocol
    dist = df[df.probe == "none"]
    assert (dist["kmeans_tol"] == 1e-4).all() and (dist["kmeans_niter"] == 50).all()
    assert (dist["kmeans_nredo"] == 1).all() and dist["kmeans_n_iter"].isna().all()
    # unset flags keep the preset's values; bad values are argparse errors
    for flag, value in (("--tol", "-1"), ("--niter", "0"), ("--nredo", "x")):
        with pytest.raises(SystemExit) as info:
            main(["sweep", "--preset", str(preset), "--out", str(tmp_path / "x"), flag, value])
        assert info.value.code == 2 and f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_presets_state_the_kmeans_stopping_rule():
    for name in list_presets():
        km = load_config(name).probe_kwargs["kmeans"]
        assert km["tol"] == 0 and km["niter"] >= 300 and km["nredo"] >= 3, name
        assert len(load_config(name).seeds) >= 3, name


def test_has_results(tiny_run, tmp_path):
    path = tmp_path / "results.csv"
    assert not sweep.has_results(path)
    path.write_text("")
    assert not sweep.has_results(path)
    path.write_text(",".join(RESULT_COLUMNS) + "\n")  # a header only
    assert not sweep.has_results(path)
    assert sweep.has_results(tiny_run.out / "results.csv")


# ------------------------------------------------------------------ integrity (issue 9)


def rebuild_store(src, path, tokens=None, labels=None):
    """A copy of store ``src`` at ``path`` written through the store API, with ``tokens(t, a)``
    / ``labels(l, a)`` applied to each block (``a`` = first image of the block)."""
    from stego_probe.store import FeatureStore

    new = FeatureStore.create(
        path, n_images=src.n_images, grid=src.grid, dim=src.dim, label_shape=src.label_shape,
        provenance=dict(src.provenance), chunk_images=src.chunk_images, overwrite=True,
    )  # fmt: skip
    for b in range(new.n_blocks):
        a, z = new.block_range(b)
        t, lab = src.tokens(slice(a, z)), src.labels(slice(a, z))
        t = t if tokens is None else tokens(t, a)
        lab = lab if labels is None else labels(lab, a)
        new.write_block(b, t, lab, src.ids[a:z])
    new.mark_complete()
    return FeatureStore.open(path)


def nan_at_image(k):
    def poison(t, a):
        t = t.copy()
        if a <= k < a + len(t):
            t[k - a, 1, 2, 3] = np.nan
        return t

    return poison


def tiny_stores(run: Run):
    from stego_probe.store import FeatureStore

    return tuple(
        FeatureStore.open(sweep.store_path(run.config, run.out, w)) for w in ("train", "val")
    )


def test_reused_store_must_match_the_config(tiny_run, tmp_path):
    """A complete store at OUT/stores/<tag> extracted with other dataset options is refused,
    naming the store and the field (the tag does not encode dataset_kwargs)."""
    out = copy_run(tiny_run, tmp_path / "run")  # stores only: no config.json, not a resume
    other = tiny_config(dataset_kwargs={**TINY["dataset_kwargs"], "seed": 1})
    train = sweep.store_path(other, out, "train")
    assert train == sweep.store_path(tiny_run.config, out, "train")  # same tag
    with pytest.raises(ValueError) as info:
        run_sweep(other, out, progress=False)
    msg = str(info.value)
    assert f"train store {train}" in msg and "dataset_kwargs.seed: store 0, config 1" in msg
    assert "Delete it" in msg
    assert not (out / "results.csv").exists() and not (out / "projections").exists()
    # the other way round: the store has seed 1 and the config leaves seed at its default 0
    out2 = tmp_path / "run2"
    sweep.ensure_stores(other, out2, progress=False)
    with pytest.raises(ValueError, match=r"seed: store 1, config 0"):
        run_sweep(tiny_config(), out2, progress=False)


def test_check_store_matches_compares_every_recorded_dataset_option(tmp_path):
    """A folder dataset's ignore_value / class_names are constructor options that its
    dataset_info does not repeat under their own names: they are compared through the
    store's dataset_args, with the data present (the dataset is built) and without it."""
    from data_fixtures import write_folder

    from stego_probe.backbones import get_backbone
    from stego_probe.data import get_dataset
    from stego_probe.extract import extract

    root = tmp_path / "data"
    write_folder(root, stems=tuple(f"im{i}" for i in range(4)), size=(32, 32), n_classes=3)
    ds = get_dataset("folder", root, "train", n_classes=3)
    store = extract(ds, get_backbone("descriptor"), tmp_path / "s", res=32, progress=False)
    assert store.provenance["dataset_args"]["ignore_value"] == [255]

    def config(data_root, **kw):
        return tiny_config(
            dataset="folder", data_root=str(data_root), train={"res": 32},
            dataset_kwargs={"n_classes": 3, **kw},
        )  # fmt: skip

    def check(cfg):
        return sweep.check_store_matches(cfg, "train", store, what="s", strict=False)

    moved = tmp_path / "gone"  # the data is not there: only the recorded options compare
    for data_root in (root, moved):
        assert check(config(data_root)) == []
        assert check(config(data_root, ignore_value=255)) == []  # 255 is recorded as [255]
        with pytest.raises(ValueError, match=r"dataset_kwargs.ignore_value: store \[255\], conf"):
            check(config(data_root, ignore_value=11))
        names = ["sky", "road", "car"]
        with pytest.raises(ValueError, match=r"dataset_kwargs.class_names: store \['class0'"):
            check(config(data_root, class_names=names))
    # an older store without dataset_args: the options inside dataset_info are used
    old = FakeStore({k: v for k, v in store.provenance.items() if k != "dataset_args"}, 3)
    with pytest.raises(ValueError, match=r"ignore_value: store \[255\], config 11"):
        sweep.check_store_matches(
            config(moved, ignore_value=11), "train", old, what="s", strict=False
        )


class FakeStore:
    def __init__(self, provenance, n_classes=6, has_flipped=False):
        self.provenance, self.n_classes, self.has_flipped = provenance, n_classes, has_flipped


def test_check_store_matches_weights_backbone_and_spec(tiny_run, tmp_path):
    train, _ = tiny_stores(tiny_run)
    config = tiny_config()
    prov = dict(train.provenance)
    assert sweep.check_store_matches(config, "train", train, what="s", strict=True) == []
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    cfg = tiny_config(weights=str(weights))
    with pytest.raises(ValueError, match=r"weights: store None .sha256 None., config .*w.pth"):
        sweep.check_store_matches(cfg, "train", train, what="s", strict=True)
    bb = {"pretrained": False, "init_seed": 0}
    fake = FakeStore({**prov, "backbone_info": bb})
    with pytest.raises(ValueError, match="backbone_kwargs.pretrained: store False, config True"):
        sweep.check_store_matches(config, "train", fake, what="s", strict=True)
    cfg = tiny_config(backbone_kwargs={"pretrained": False, "seed": 1})
    with pytest.raises(ValueError, match="backbone_kwargs.seed: store 0, config 1"):
        sweep.check_store_matches(cfg, "train", fake, what="s", strict=True)
    # resolution / crop / limit: refused for the sweep's own store, warned about for a given one
    fake = FakeStore({**prov, "res": 64, "limit": 8})
    with pytest.raises(ValueError, match="res: store 64, config 48; limit: store 8, config None"):
        sweep.check_store_matches(config, "train", fake, what="s", strict=True)
    assert sweep.check_store_matches(config, "train", fake, what="s", strict=False) == [
        "res 64 (config 48)",
        "limit 8 (config None)",
    ]
    # the val store of a flip sweep needs flipped tokens
    with pytest.raises(ValueError, match="flip"):
        sweep.check_store_matches(
            tiny_config(flip=True), "val", FakeStore({**prov, "split": "val"}), what="s",
            strict=True,
        )  # fmt: skip


def test_sweep_locks_its_output_folder(tiny_run, tmp_path, capsys, monkeypatch):
    out = copy_run(tiny_run, tmp_path / "run")
    config = tiny_config(methods=["pca"], dims=[3])
    monkeypatch.setattr(sweep_executors, "run_point", failing_run_point({}))
    with folder_lock(out, what="sweep"):  # another run holds the folder
        with pytest.raises(FolderLockedError, match=f"in use by another sweep: pid {os.getpid()}"):
            run_sweep(config, out, progress=False)
        preset = tmp_path / "tiny.yaml"
        preset.write_text(yaml.safe_dump({**config.to_dict(), "name": "tiny"}))
        rc = main(["sweep", "--preset", str(preset), "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 1 and len(err.strip().splitlines()) == 1, err
        assert "in use by another sweep" in err and f"pid {os.getpid()}" in err
        assert not (out / "results.csv").exists() and not (out / "config.json").exists()
    run_sweep(config, out, progress=False)  # free again
    assert done_points(out / "results.csv") == set(sweep_points(config, C))


#: A sweep process whose points wait for a release file (so that two processes certainly
#: overlap), then write one fake row each.
BLOCKING_SWEEP = """
import sys, time
from pathlib import Path
from stego_probe.results import make_rows
from stego_probe.sweep import executors
from stego_probe.sweep.points import point_context

release = Path(sys.argv[1])

def run_point(config, point, train_store, val_store, cache_dir):
    deadline = time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    context = {**point_context(config, val_store, point), "probe": "kmeans"}
    return make_rows({**context, "match": "hungarian"}, {"miou": float(point.dim)})

executors.run_point = run_point
from stego_probe.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_two_sweeps_started_together_write_one_set_of_rows(tiny_run, tmp_path):
    import time

    out = copy_run(tiny_run, tmp_path / "run")
    preset = tmp_path / "tiny.yaml"
    config = tiny_config(methods=["dino", "rp"], dims=[3])
    preset.write_text(yaml.safe_dump({**config.to_dict(), "name": "tiny"}))
    release = tmp_path / "release"
    argv = [sys.executable, "-c", BLOCKING_SWEEP, str(release), "sweep", "--preset", str(preset),
            "--out", str(out), "--no-progress", "--threads", "1"]  # fmt: skip
    procs = [
        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        # the holder's points wait for the release file: only a refused process can end first
        deadline = time.monotonic() + 120
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        first = next((p for p in procs if p.poll() is not None), None)
    finally:
        release.write_text("")
        codes = [p.wait(timeout=300) for p in procs]
    errs = [p.stderr.read() for p in procs]
    for p in procs:
        p.stderr.close()
    assert first is not None and first.returncode == 1, (codes, errs)
    refused = errs[procs.index(first)]
    assert len(refused.strip().splitlines()) == 1 and "Traceback" not in refused, refused
    assert "in use by another sweep" in refused and "pid " in refused
    other = 1 - procs.index(first)
    assert codes[other] == 0, errs[other]
    df = read_results(out / "results.csv")
    assert done_points(out / "results.csv") == set(sweep_points(config, C))
    assert len(df) == len(sweep_points(config, C))  # one row per point: exactly one set
    assert lock_holder(out) is None


def test_appending_a_point_twice_keeps_one_copy(tiny_run, tmp_path):
    from stego_probe.results import IDENTITY_COLUMNS, append_csv

    results = tmp_path / "results.csv"
    point = Point("pca", 3, 0)
    rows = [r for r in tiny_run.df.to_dict("records") if (r["method"], r["dim"]) == ("pca", 3)]
    assert len(rows) > 10
    assert sweep.append_point(point, rows, results)
    before = results.read_bytes()
    with pytest.warns(RuntimeWarning, match=r"already in .*not appended again"):
        assert not sweep.append_point(point, rows, results)
    assert results.read_bytes() == before
    # row-level: the same rows read back from the CSV (types as pandas reads them) are dropped
    again = read_results(results).to_dict("records")
    append_csv(again, results, unique=IDENTITY_COLUMNS)
    assert len(read_results(results)) == len(rows)
    append_csv(again, results)  # without unique: a plain append
    assert len(read_results(results)) == 2 * len(rows)


def test_non_finite_rows_are_not_appended(tiny_run, tmp_path):
    rows = [r for r in tiny_run.df.to_dict("records") if (r["method"], r["dim"]) == ("rp", 3)]
    bad = [dict(r, value=float("nan")) if r["metric"] == "miou" else r for r in rows]
    results = tmp_path / "results.csv"
    with pytest.raises(ValueError, match=r"\(rp, D=3, seed=0\).*non-finite.*miou=nan"):
        sweep.append_point(Point("rp", 3, 0), bad, results)
    inf = [dict(r, value=float("inf")) if r["metric"] == "silhouette" else r for r in rows]
    with pytest.raises(ValueError, match="silhouette=inf"):
        sweep.append_point(Point("rp", 3, 0), inf, results)
    assert not results.exists()
    # NaN where a metric is undefined by definition (restart agreement with one seed) is kept
    assert any(np.isnan(r["value"]) for r in rows if r["metric"] == "kmeans_ari")
    assert sweep.append_point(Point("rp", 3, 0), rows, results)


def test_nan_token_in_train_store_is_refused_and_nothing_cached(tiny_run, tmp_path):
    """One NaN token: the fit refuses naming the store and the image; no spectrum rows, no
    cached fit; once the store is fixed the rerun succeeds (no poisoned cache)."""
    train, val = tiny_stores(tiny_run)
    out = tmp_path / "run"
    bad_path = tmp_path / "train_bad"
    rebuild_store(train, bad_path, tokens=nan_at_image(5))
    config = tiny_config(methods=["pca", "rp"], dims=[3])
    with pytest.raises(ValueError) as info:
        run_sweep(config, out, progress=False, train_store=bad_path, val_store=val.path)
    msg = str(info.value)
    assert str(bad_path) in msg and "image index 5" in msg and f"id {train.ids[5]!r}" in msg
    assert not (out / "results.csv").exists()  # no NaN spectrum rows
    assert not list((out / "projections").glob("*.pt"))  # nothing cached
    assert lock_holder(out) is None
    # the store is fixed in place: the rerun fits afresh and succeeds
    rebuild_store(train, bad_path)
    df = run_sweep(config, out, progress=False, train_store=bad_path, val_store=val.path)
    assert done_points(out / "results.csv") == set(sweep_points(config, C))
    spectrum = df[df["metric"] == "explained_variance_ratio"]["value"]
    assert len(spectrum) == C and np.isfinite(spectrum).all()


def test_nan_token_fails_every_method_naming_the_image(tiny_run, tmp_path):
    """One NaN token, methods whose fit does not stream the store (RP without
    standardisation, the raw DINO codes) and STEGO (KNN descriptors, training): each point
    fails naming the store, the image index and its id; nothing non-finite is cached or
    appended; the val store's distinctness sample is traced back to its image too."""
    train, val = tiny_stores(tiny_run)
    out = tmp_path / "run"
    bad_path = tmp_path / "train_bad"
    rebuild_store(train, bad_path, tokens=nan_at_image(5))
    methods = ["dino", "rp", "stego"]
    kwargs = {**TINY["method_kwargs"], "rp": {"standardize": None}}
    config = tiny_config(methods=methods, dims=[3], method_kwargs=kwargs)
    with pytest.raises(SweepError) as info:
        run_sweep(config, out, progress=False, train_store=bad_path, val_store=val.path)
    failures = {p.method: str(e) for p, e in info.value.failures}
    assert sorted(failures) == methods
    for method, msg in failures.items():
        assert f"feature store {str(bad_path)!r}" in msg, (method, msg)
        assert f"image index 5, id {train.ids[5]!r}" in msg, (method, msg)
    assert not (out / "results.csv").exists() or not sweep.has_results(out / "results.csv")
    from stego_probe.projections.base import Projection

    cached = sorted(p.name for p in (out / "projections").glob("*.pt"))
    assert "stego_d3_seed0.pt" not in cached
    for name in cached:  # RP without standardisation and the identity fit read no tokens
        sweep.check_projection_finite(Projection.load(out / "projections" / name), name)
    assert not list(out.rglob("knn_*.npz"))
    # distinctness samples the val store: a NaN there names the val image
    bad_val = rebuild_store(val, tmp_path / "val_bad", tokens=nan_at_image(3))
    proj = sweep.fit_projection(config, Point("rp", 3, 0), train, tmp_path / "cache")
    with pytest.raises(ValueError, match=rf"val_bad' has NaN .*index 3, id {val.ids[3]!r}"):
        sweep.val_code_sample(bad_val, proj, n_tokens=10**6, seed=0)


def test_cached_projection_is_refitted_when_its_inputs_change(tiny_run, tmp_path, monkeypatch):
    from stego_probe.projections import PCAProjection

    train, _ = tiny_stores(tiny_run)
    config = tiny_config()
    cache = tmp_path / "projections"
    path = tmp_path / "train"
    store = rebuild_store(train, path)
    first = sweep.fit_projection(config, Point("pca", 3, 0), store, cache)
    cached = read_estimator(cache / "pca_seed0.pt", kind="projection")
    assert cached.provenance["sweep_inputs"]["train"]["n_images"] == 16
    # unchanged inputs: the cache is reused (no fit, no warning)
    with monkeypatch.context() as m, warnings.catch_warnings():
        warnings.simplefilter("error")
        m.setattr(PCAProjection, "fit", lambda *a, **k: pytest.fail("refitted"))
        again = sweep.fit_projection(config, Point("pca", 6, 0), store, cache)
    np.testing.assert_array_equal(again.mean_, first.mean_)
    # the store is extracted again with other content at the same path: refitted
    store = rebuild_store(train, path, tokens=lambda t, a: t * 2 + 1)
    with pytest.warns(
        RuntimeWarning, match=r"refitting .*pca_seed0.pt: its inputs changed .*train"
    ):
        refit = sweep.fit_projection(config, Point("pca", 3, 0), store, cache)
    np.testing.assert_allclose(refit.mean_, first.mean_ * 2 + 1, rtol=1e-2, atol=1e-2)
    # another seed of the method or other method_kwargs are other inputs too
    other = tiny_config(method_kwargs={"pca": {"n_images": 8}})
    with pytest.warns(RuntimeWarning, match=r"inputs changed \(method_kwargs\)"):
        sweep.fit_projection(other, Point("pca", 3, 0), store, cache)
    # a poisoned cache without a fingerprint (an older version) is refitted, never used
    bad = PCAProjection(random_state=0).fit(store)
    bad.mean_ = bad.mean_.copy()
    bad.mean_[0] = np.nan
    bad.save(cache / "pca_seed0.pt")
    with pytest.warns(RuntimeWarning, match="records no fingerprint"):
        proj = sweep.fit_projection(config, Point("pca", 3, 0), store, cache)
    assert np.isfinite(proj.mean_).all()
    # a non-finite fit is never written
    with pytest.raises(ValueError, match=r"mean_ \(1 of 64\).*not cached"):
        sweep_fit._save_fit(bad, cache / "x.pt", {}, Point("pca", 3, 0))
    assert not (cache / "x.pt").exists()


def test_degenerate_point_is_recorded_and_the_others_go_on(tiny_run, tmp_path, monkeypatch, capsys):
    """Constant codes for one point (distinctness cannot cluster them): that point is
    recorded as failed with its reason, the others finish, the CLI exits 1 with a summary, and
    a resume retries only it, again without aborting."""
    out = copy_run(tiny_run, tmp_path / "run")
    config = tiny_config(methods=["pca", "rp"], dims=[3])
    real = sweep.val_code_sample

    def constant_for_rp3(val_store, projection, n_tokens, seed):
        codes, labels = real(val_store, projection, n_tokens, seed)
        if projection.method_name == "rp" and projection.dim == 3:
            codes = np.ones_like(codes)
        return codes, labels

    monkeypatch.setattr(sweep_measure, "val_code_sample", constant_for_rp3)
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump({**config.to_dict(), "name": "tiny"}))
    argv = ["sweep", "--preset", str(preset), "--out", str(out), "--no-progress"]
    for _attempt in range(2):  # the first run, then a resume
        rc = main(argv)
        captured = capsys.readouterr()
        assert rc == 1
        assert "1 of" in captured.err and "(rp, D=3, seed=0): ValueError: distinctness" in (
            captured.err
        )
        assert "val store" in captured.err
        done = done_points(out / "results.csv")
        assert done == set(sweep_points(config, C)) - {Point("rp", 3, 0)}
        assert "(rp, D=3, seed=0)" in (out / "failures.log").read_text()
    df = read_results(out / "results.csv")
    assert not df.duplicated(KEY).any()


def test_val_split_with_one_class_fails_its_points_not_the_sweep(tiny_run, tmp_path):
    train, val = tiny_stores(tiny_run)
    one = rebuild_store(val, tmp_path / "val_one", labels=lambda lab, a: np.zeros_like(lab))
    out = tmp_path / "run"
    config = tiny_config(methods=["dino", "rp"], dims=[3])
    with pytest.raises(SweepError) as info:
        run_sweep(config, out, progress=False, train_store=train.path, val_store=one.path)
    err = info.value
    assert {p for p, _ in err.failures} == set(sweep_points(config, C))
    assert all("need at least 2 classes" in str(e) for _, e in err.failures)
    assert "3 of 3 points failed" in str(err)
    assert not done_points(out / "results.csv")  # no rows of failed points
    assert lock_holder(out) is None


def test_resume_across_linear_image_caps_above_the_train_store(tiny_run, tmp_path):
    """A folder written before the L-BFGS image cap (or under another cap) resumes when no cap
    is below its train store's size (both read every image: the same rows); a cap below it is
    refused."""
    import json

    from stego_probe.store import FeatureStore

    out = copy_run(
        tiny_run, tmp_path / "run", ("stores", "stores.json", "results.csv", "config.json")
    )
    recorded = json.loads((out / "config.json").read_text())
    recorded["probe_kwargs"]["linear"].pop("max_images")  # as written before the cap
    (out / "config.json").write_text(json.dumps(recorded))
    n_train = FeatureStore.open(sweep.store_path(tiny_run.config, out, "train")).n_images
    sweep_run._check_resume(tiny_run.config, out)  # default cap 1000 >= n_train: resumes
    # given stores elsewhere (recorded in stores.json with absolute paths): their size counts
    elsewhere = tmp_path / "given"
    shutil.move(str(out / "stores"), str(elsewhere))
    record = json.loads((out / "stores.json").read_text())
    given = {w: str(elsewhere / Path(p).name) for w, p in record.items()}
    (out / "stores.json").write_text(json.dumps(given))
    sweep_run._check_resume(tiny_run.config, out)
    low = tiny_run.config.probe_kwargs["linear"] | {"max_images": n_train - 1}
    capped = tiny_config(probe_kwargs={**tiny_run.config.probe_kwargs, "linear": low})
    with pytest.raises(ValueError, match="'max_images': None"):
        sweep_run._check_resume(capped, out)
