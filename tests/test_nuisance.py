"""The nuisance experiment (issue 11): :mod:`stego_probe.plots.factors` on hand-built tables and
``experiments/nuisance.py`` end to end on a tiny synthetic world."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stego_probe.plots import plot_advantage_over_factor
from stego_probe.plots.factors import advantage_table, factor_table
from stego_probe.results import read_results

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"

#: value of (method, nuisance, seed), k-means mIoU; dino at its full width 64, the rest at D=6.
VALUES = {
    ("stego", 0.0): [30.0, 32.0, 34.0],
    ("stego", 1.0): [20.0, 21.0, 25.0],
    ("pca", 0.0): [20.0, 21.0, 22.0],
    ("pca", 1.0): [18.0, 18.0, 18.0],
    ("rp", 0.0): [25.0, 24.0, 26.0],
    ("rp", 1.0): [19.0, 22.0, 20.0],
    ("dino", 0.0): [40.0, 40.0, 41.0],
    ("dino", 1.0): [15.0, 16.0, 17.0],
}


def _row(method, dim, seed, level, value, probe="kmeans", metric="miou", **kw):
    return {
        "dataset": "synthetic", "backbone": "descriptor", "weights_sha256": "",
        "method": method, "dim": dim, "seed": seed, "probe": probe, "crf": False,
        "mode": "pixel", "match": "hungarian", "split": "val", "metric": metric,
        "value": value, "nuisance": level, **kw,
    }  # fmt: skip


def table() -> pd.DataFrame:
    rows = []
    for (method, level), vals in VALUES.items():
        dim = 64 if method == "dino" else 6
        for seed, v in enumerate(vals):
            rows.append(_row(method, dim, seed, level, v))
            rows.append(_row(method, dim, seed, level, v - 5, probe="linear"))  # other probe
            rows.append(_row(method, dim, seed, level, 70.0, metric="accuracy"))
            if method != "dino":  # the sweep's full-width point: must not be picked at D=6
                rows.append(_row(method, 64, seed, level, 99.0))
    return pd.DataFrame(rows)


def expected(baseline: str, level: float) -> tuple[float, float]:
    diff = np.subtract(VALUES[("stego", level)], VALUES[(baseline, level)])
    return float(diff.mean()), float(diff.std(ddof=1))


def _containers(ax) -> dict:
    return {c.get_label(): c for c in ax.containers}


def _yerr(container) -> np.ndarray:
    segs = container.lines[2][0].get_segments()
    return np.array([(s[1][1] - s[0][1]) / 2 for s in segs])


def test_advantage_lines_are_the_mean_paired_differences():
    fig = plot_advantage_over_factor(table(), dim=6)
    ax, ax_abs = fig.axes[:2]
    lines = _containers(ax)
    assert set(lines) == {"STEGO − PCA", "STEGO − RP", "STEGO − descriptor (raw) (D=64)"}
    for label, b in (("STEGO − PCA", "pca"), ("STEGO − RP", "rp")):
        xy = lines[label].lines[0].get_xydata()
        np.testing.assert_allclose(xy[:, 0], [0.0, 1.0])
        want = [expected(b, 0.0), expected(b, 1.0)]
        np.testing.assert_allclose(xy[:, 1], [m for m, _ in want])
        np.testing.assert_allclose(_yerr(lines[label]), [s for _, s in want])
    dino = lines["STEGO − descriptor (raw) (D=64)"].lines[0].get_ydata()
    np.testing.assert_allclose(dino, [expected("dino", 0.0)[0], expected("dino", 1.0)[0]])
    # the zero line, the labels naming D, probe and metric
    assert any(np.allclose(line.get_ydata(), 0.0) for line in ax.get_lines())
    assert "D=6" in ax.get_title() and "k-means probe" in ax.get_title()
    assert "mIoU" in ax.get_ylabel() and "points" in ax.get_ylabel()
    assert ax.get_xlabel() == "nuisance"
    assert "paired differences over 3 seeds" in ax.get_legend().get_title().get_text()
    # the absolute panel: mean over seeds per method
    absolute = _containers(ax_abs)
    np.testing.assert_allclose(
        absolute["STEGO"].lines[0].get_ydata(), [np.mean(VALUES[("stego", lv)]) for lv in (0, 1)]
    )
    np.testing.assert_allclose(
        absolute["descriptor (raw) (D=64)"].lines[0].get_ydata(),
        [np.mean(VALUES[("dino", lv)]) for lv in (0.0, 1.0)],
    )


def test_advantage_pairs_seeds_and_tables_agree():
    df = table()
    drop = (df["method"] == "pca") & (df["nuisance"] == 1.0) & (df["seed"] == 2)
    df = df[~drop]
    adv = advantage_table(df, dim=6, baselines=("pca",))
    got = adv.set_index("nuisance")
    assert got.loc[1.0, "n"] == 2 and got.loc[0.0, "n"] == 3
    diff = np.subtract(VALUES[("stego", 1.0)][:2], VALUES[("pca", 1.0)][:2])
    assert got.loc[1.0, "mean"] == pytest.approx(diff.mean())
    assert got.loc[1.0, "std"] == pytest.approx(diff.std(ddof=1))
    tab = factor_table(table(), dim=6, methods=("stego", "dino"))
    assert tab[["method", "dim"]].drop_duplicates().values.tolist() == [["stego", 6], ["dino", 64]]
    # linear probe, single-panel figure, dim inferred (STEGO has D 6 and 64 -> must be given)
    fig = plot_advantage_over_factor(
        table()[lambda d: d["dim"] == 6], probe="linear", absolute=False, baselines=("pca",)
    )
    assert len(fig.axes) == 1 and "linear probe" in fig.axes[0].get_title()


def test_errors_name_the_problem():
    df = table()
    with pytest.raises(ValueError, match="factor column 'nuisance'"):
        plot_advantage_over_factor(df.drop(columns="nuisance"))
    with pytest.raises(ValueError, match=r"method\(s\) \['rp'\].*methods present"):
        plot_advantage_over_factor(df[df["method"] != "rp"], dim=6)
    with pytest.raises(ValueError, match="several D"):
        plot_advantage_over_factor(df)
    with pytest.raises(ValueError, match="no stego rows at D=12"):
        plot_advantage_over_factor(df, dim=12)
    with pytest.raises(ValueError, match="no rows with probe='cluster'"):
        plot_advantage_over_factor(df, dim=6, probe="cluster")
    with pytest.raises(ValueError, match="must be numeric"):
        plot_advantage_over_factor(df.assign(nuisance="strong"), dim=6)
    with pytest.raises(ValueError, match="mix crf"):
        plot_advantage_over_factor(pd.concat([df, df.head(1).assign(crf=True)]), dim=6)
    with pytest.raises(ValueError, match="lacks columns"):
        plot_advantage_over_factor(df.drop(columns="seed"), dim=6)
    with pytest.raises(ValueError, match="no seed in common"):
        other = df.copy()
        other.loc[other["method"] == "pca", "seed"] += 10
        advantage_table(other, dim=6, baselines=("pca",))


# ------------------------------------------------------------------------- the script

#: Overrides that make a level's sweep take seconds (as tests/test_sweep.py's TINY).
TINY = {
    "dataset_kwargs": {"size": [48, 64]},
    "train": {"res": 48},
    "val": {"res": 48},
    "probe_kwargs": {"kmeans": {"n_tokens": 2000, "niter": 5, "nredo": 1}},
    "method_kwargs": {"stego": {"steps": 4, "batch_size": 4, "val_every": 2}},
    "distinctness": {"n_tokens": 500, "seeds": [0]},
}


def load_script():
    sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(
        "experiment_nuisance", EXPERIMENTS / "nuisance.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nuisance_script_end_to_end_and_resume(tmp_path, capsys):
    script = load_script()
    out, figs = tmp_path / "runs", tmp_path / "figs"
    argv = [
        "--levels", "0,1", "--dims", "3", "--seeds", "0", "--n-images", "16", "--device", "cpu",
        "--probes", "kmeans",
        "--out", str(out), "--figures", str(figs), "--fmt", "png", "--no-progress",
        "--overrides", json.dumps(TINY),
    ]  # fmt: skip
    assert script.main(argv) == 0
    for level in ("0", "1"):
        cfg = json.loads((out / f"nuisance_{level}" / "config.json").read_text())
        assert cfg["dataset_kwargs"]["nuisance"] == float(level)
        assert cfg["dataset_kwargs"]["n_images"] == 16 and cfg["dims"] == [3]
    df = read_results(out / "results.csv")
    assert sorted(df["nuisance"].unique()) == [0.0, 1.0]
    assert set(df["method"]) == {"dino", "pca", "rp", "stego"}
    assert set(df["probe"]) == {"kmeans", "none"}  # distinctness rows: probe none
    assert sorted(p.name for p in figs.iterdir()) == ["nuisance_advantage_kmeans_d3.png"]
    assert "STEGO - baseline" in capsys.readouterr().out
    # resume: nothing is recomputed, the combined table is the same
    before = {p: p.stat().st_mtime_ns for p in out.glob("nuisance_*/results.csv")}
    assert script.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("nuisance_*/results.csv")} == before
    assert len(read_results(out / "results.csv")) == len(df)
    # redraw only, and the refusals
    assert script.main([*argv, "--results", str(out / "results.csv")]) == 0
    with pytest.raises(SystemExit):
        script.parse_args(["--levels", "0,2"])
    with pytest.raises(ValueError, match="nuisance is set per level"):
        script.main([*argv[:-1], json.dumps({"dataset_kwargs": {"nuisance": 0.5}})])
