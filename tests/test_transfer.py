"""Transfer runs (:mod:`stego_probe.transfer`) and their figure (:mod:`stego_probe.plots.transfer`)
on two tiny, differently styled synthetic datasets (seed 0 / nuisance 0 and seed 1 / nuisance
0.5; descriptor backbone, 48-px stores, a few training steps)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stego_probe.transfer as transfer
from stego_probe.evaluate import evaluate_stores
from stego_probe.results import TRANSFER_COLUMNS, make_rows, read_results
from stego_probe.sweep import Point, ensure_stores, fit_projection, load_config, sweep_points
from stego_probe.sweep.measure import probe_kwargs_for
from stego_probe.transfer import run_transfer, transfer_pairs

TINY = {
    "dataset_kwargs": {"n_images": 8, "size": [48, 64]},
    "train": {"res": 48},
    "val": {"res": 48},
    "methods": ["dino", "pca", "rp", "stego"],
    "dims": [3],
    "seeds": [0],
    "probes": ["kmeans", "linear"],
    "probe_kwargs": {
        "kmeans": {"n_tokens": 2000, "niter": 5, "nredo": 1},
        "linear": {"steps": 10, "batch_size": 4},
    },
    "method_kwargs": {"stego": {"steps": 4, "batch_size": 4, "val_every": 2}},
    "distinctness": {"enabled": False},
}
STYLES = {  # two differently styled worlds of the same dataset type
    "plain": {"seed": 0, "nuisance": 0.0},
    "styled": {"seed": 1, "nuisance": 0.5},
}
KEY = ["fit_dataset", "eval_dataset", "method", "dim", "seed", "probe", "metric"]


def tiny(name: str, **over):
    kwargs = {**TINY["dataset_kwargs"], **STYLES[name]}
    return load_config("synthetic", {**TINY, "name": name, "dataset_kwargs": kwargs, **over})


CONFIGS = {name: tiny(name) for name in STYLES}


@dataclass
class Runs:
    out: Path
    first: pd.DataFrame  # eval_on=["plain"] only
    second: pd.DataFrame  # every eval dataset, nothing refittable
    mtimes: dict  # projection cache file -> mtime_ns after the first call
    calls: list  # (fit, eval) of the evaluations of the second call


def _cache_mtimes(out: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in sorted((out / "projections").rglob("*.pt"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    out = tmp_path_factory.mktemp("transfer") / "run"
    first = run_transfer(CONFIGS, out, eval_on=["plain"], progress=False)
    mtimes = _cache_mtimes(out)
    calls = []
    real = transfer._evaluate

    def counting(configs, fit, ev, *args):
        calls.append((fit, ev))
        return real(configs, fit, ev, *args)

    def no_fit(self, *a, **k):
        raise AssertionError(f"{type(self).__name__} was refitted")

    from stego_probe.projections import projection_class

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transfer, "_evaluate", counting)
        for method in TINY["methods"]:
            mp.setattr(projection_class(method), "fit", no_fit)
        second = run_transfer(CONFIGS, out, progress=False)
    return Runs(out, first, second, mtimes, calls)


def _miou(df):
    return df[df["metric"] == "miou"]


def test_rows_for_every_pair(runs):
    df = runs.second
    assert list(TRANSFER_COLUMNS) == ["fit_dataset", "eval_dataset"]
    pairs = set(zip(df["fit_dataset"], df["eval_dataset"]))
    assert pairs == {(a, b) for a in STYLES for b in STYLES}
    points = {(p.method, p.dim, p.seed) for p in sweep_points(CONFIGS["plain"], 64)}
    for (_fit, _ev), g in _miou(df).groupby(["fit_dataset", "eval_dataset"]):
        assert set(zip(g["method"], g["dim"], g["seed"])) == points
        assert set(g["probe"]) == {"kmeans", "linear"}
        assert (g["dataset"] == "synthetic").all()
    assert not df.duplicated(KEY).any()
    # transfer_pairs: the in-domain pair first within each fit dataset
    assert transfer_pairs(["a", "b", "c"], fit_on=["b"]) == [("b", "b"), ("b", "a"), ("b", "c")]
    with pytest.raises(ValueError, match="eval_on.*'nope'"):
        transfer_pairs(["a", "b"], eval_on=["nope"])


def _plain_evaluate(cfg, stores, point, proj, transfer=False):
    """What a plain evaluate_stores gives on one dataset with a given projection."""
    train, val = stores
    df = evaluate_stores(
        train,
        val,
        probes=cfg.probes,
        projection=None if point.method == "dino" else proj,
        method=point.method,
        mode=cfg.mode,
        seed=point.seed,
        probe_kwargs=probe_kwargs_for(cfg),
        batch_size=cfg.batch_size,
        progress=False,
        transfer=transfer,
    )
    return df.assign(dim=point.dim)


@pytest.mark.parametrize(
    "fit,ev,point",
    [
        ("plain", "plain", Point("pca", 3, 0)),
        ("plain", "plain", Point("stego", 3, 0)),
        ("plain", "plain", Point("dino", 64, 0)),
        ("styled", "styled", Point("rp", 3, 0)),
        ("styled", "plain", Point("stego", 3, 0)),  # transferred: B's probes on B's train codes
    ],
)
def test_rows_equal_plain_evaluate(runs, fit, ev, point):
    cfg_fit, cfg_ev = CONFIGS[fit], CONFIGS[ev]
    train_fit, val_fit = ensure_stores(cfg_fit, runs.out / fit, progress=False)
    proj = fit_projection(
        cfg_fit, point, train_fit, runs.out / "projections" / fit, val_store=val_fit
    )
    want = _plain_evaluate(
        cfg_ev, ensure_stores(cfg_ev, runs.out / ev, progress=False), point, proj, fit != ev
    )
    got = runs.second[
        (runs.second["fit_dataset"] == fit)
        & (runs.second["eval_dataset"] == ev)
        & (runs.second["method"] == point.method)
        & (runs.second["dim"] == point.dim)
        & (runs.second["seed"] == point.seed)
    ]
    key = ["probe", "metric"]
    merged = want.merge(got, on=key, suffixes=("_want", "_got"), validate="1:1")
    assert len(merged) == len(want) == len(got) > 0
    a, b = merged["value_want"].to_numpy(), merged["value_got"].to_numpy()
    assert np.array_equal(a, b, equal_nan=True)  # exact


def test_adding_an_eval_dataset_refits_and_recomputes_nothing(runs):
    first, second = runs.first, runs.second
    assert set(first["eval_dataset"]) == {"plain"}
    # the second call fitted nothing (every fit raised) and left the cache files as they were
    assert _cache_mtimes(runs.out) == runs.mtimes and len(runs.mtimes) >= 6
    # it evaluated only the new eval dataset, once per fit dataset and point
    n_points = len(sweep_points(CONFIGS["plain"], 64))
    assert sorted(set(runs.calls)) == [("plain", "styled"), ("styled", "styled")]
    assert len(runs.calls) == 2 * n_points
    # the first call's rows are unchanged
    old = first.set_index(KEY)["value"]
    new = second.set_index(KEY)["value"].loc[old.index]
    assert np.array_equal(old.to_numpy(), new.to_numpy(), equal_nan=True)
    # a third call resumes with nothing to do
    calls = []
    real = transfer.evaluate_stores
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transfer, "evaluate_stores", lambda *a, **k: calls.append(1) or real(*a, **k))
        third = run_transfer(CONFIGS, runs.out, progress=False)
    assert not calls and len(third) == len(second)


def test_config_checks(runs, tmp_path):
    other = {"plain": CONFIGS["plain"], "vit": tiny("styled", backbone="dino_vits8")}
    with pytest.raises(ValueError, match=r"'plain' and 'vit'.*backbone.*descriptor.*dino_vits8"):
        run_transfer(other, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="fit_on"):
        run_transfer(CONFIGS, tmp_path / "x", fit_on=["nope"], progress=False)
    # a resume with another result-defining setting for a name with rows is refused
    changed = {**CONFIGS, "plain": tiny("plain", mode="token")}
    with pytest.raises(ValueError, match="'plain'.*mode"):
        run_transfer(changed, runs.out, progress=False)


def test_tables_without_transfer_columns_still_read(tmp_path):
    rows = make_rows({"dataset": "synthetic", "method": "pca", "dim": 3, "seed": 0}, {"miou": 1})
    path = tmp_path / "old.csv"
    pd.DataFrame(rows).drop(columns=TRANSFER_COLUMNS).to_csv(path, index=False)
    df = read_results(path)
    assert (df[TRANSFER_COLUMNS] == "").all().all() and df["value"].tolist() == [1.0]


# ------------------------------------------------------------------------------------ figure


def _hand_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for ev in ("x", "y"):
        for fit in ("x", "y"):
            for method in ("pca", "stego"):
                for dim in (3, 6, 12):
                    for seed in (0, 1, 2):
                        context = {
                            "dataset": "synthetic",
                            "backbone": "descriptor",
                            "method": method,
                            "dim": dim,
                            "seed": seed,
                            "probe": "kmeans",
                            "crf": False,
                            "mode": "pixel",
                            "match": "hungarian",
                            "split": "val",
                            "fit_dataset": fit,
                            "eval_dataset": ev,
                        }
                        rows += make_rows(context, {"miou": rng.uniform(10, 60), "accuracy": 1})
    return pd.DataFrame(rows)


def _line(ax, label):
    for c in ax.containers:
        if c.get_label() == label:
            return c.lines[0]
    raise AssertionError(f"no series {label!r} in {[c.get_label() for c in ax.containers]}")


def test_plot_transfer_lines_are_table_means():
    from stego_probe.plots import plot_transfer

    df = _hand_table()
    fig = plot_transfer(df, probe="kmeans", metric="miou")
    assert len(fig.axes) == 2
    for ax, ev in zip(fig.axes, ("x", "y")):
        assert ev in ax.get_title() and ax.get_xscale() == "log"
        for fit in ("x", "y"):
            for method, name in (("pca", "PCA"), ("stego", "STEGO")):
                own = fit == ev
                label = f"{name} (in-domain)" if own else f"{name} (fitted on {fit})"
                line = _line(ax, label)
                g = df[
                    (df.eval_dataset == ev)
                    & (df.fit_dataset == fit)
                    & (df.method == method)
                    & (df.metric == "miou")
                ].groupby("dim")["value"]
                assert np.allclose(line.get_xdata(), g.mean().index)
                assert np.allclose(line.get_ydata(), g.mean().to_numpy())
                assert line.get_linestyle() == ("-" if own else "--")
        # one colour per method
        assert _line(ax, "PCA (in-domain)").get_color() == _line(ax, "PCA (fitted on " + (
            "y" if ev == "x" else "x") + ")").get_color()  # fmt: skip
    with pytest.raises(ValueError, match="no transfer rows"):
        plot_transfer(df.assign(fit_dataset=""))
    with pytest.raises(ValueError, match="no transfer rows"):
        plot_transfer(df, probe="linear")


# ------------------------------------------------------------------------------------ script


def _script():
    import importlib.util
    import sys

    experiments = Path(__file__).resolve().parents[1] / "experiments"
    sys.path.insert(0, str(experiments))
    spec = importlib.util.spec_from_file_location(
        "experiment_transfer", experiments / "transfer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~25 s on 2 shared cores
def test_script_offline_mode_and_paper_backbone(tmp_path, capsys):
    import json

    script = _script()
    shrink = {
        "dataset_kwargs": {"n_images": 8},
        "train": {"res": 48},
        "val": {"res": 48},
        "probe_kwargs": TINY["probe_kwargs"],
        "method_kwargs": {"stego": TINY["method_kwargs"]["stego"]},
    }
    argv = ["--synthetic", "--methods", "pca", "--dims", "3", "--seeds", "0", "--fmt", "png"]
    argv += ["--out", str(tmp_path / "run"), "--figures", str(tmp_path / "fig"), "--no-progress"]
    assert script.main([*argv, "--overrides", json.dumps(shrink)]) == 0
    df = read_results(tmp_path / "run" / "results.csv")
    assert set(zip(df.fit_dataset, df.eval_dataset)) == {
        (a, b) for a in script.SYNTHETIC_WORLDS for b in script.SYNTHETIC_WORLDS
    }
    assert set(df.probe) == {"kmeans", "linear"}
    names = {p.name for p in (tmp_path / "fig").iterdir()}
    assert names == {f"transfer_{p}_{m}.png" for p in ("kmeans", "linear") for m in script.METRICS}
    assert "mIoU (%)" in capsys.readouterr().out
    # the paper datasets get one backbone: the first dataset's preset
    args = script.parse_args(["--datasets", "cocostuff27,potsdam3"])
    configs = script.transfer_configs(args)
    assert {c.backbone for c in configs.values()} == {"dino_vitb8"}
    assert list(configs) == ["cocostuff27", "potsdam3"] and args.probes == ["kmeans", "linear"]


def test_a_projection_of_another_dataset_needs_transfer_true(runs):
    """check_stores (run by evaluate_stores) refuses a projection fitted on another dataset
    unless transfer=True; its backbone is checked either way."""
    from types import SimpleNamespace

    from stego_probe.evaluate import check_stores

    train, val = ensure_stores(CONFIGS["plain"], runs.out / "plain", progress=False)
    fit = {"dataset": "cityscapes27", "backbone": val.provenance["backbone"]}
    other = SimpleNamespace(provenance={"fit_data": fit})
    with pytest.raises(ValueError, match="dataset"):
        check_stores(train, val, other)
    check_stores(train, val, other, transfer=True)
    wrong = SimpleNamespace(provenance={"fit_data": {**fit, "backbone": "dino_vits8"}})
    with pytest.raises(ValueError, match="backbone"):
        check_stores(train, val, wrong, transfer=True)
