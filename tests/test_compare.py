"""Backbones as a sweep axis: multi-backbone sweeps, resume per backbone, the ranking and the
hue="backbone" / x="fraction" figure (docs/compare.md).

The sweeps use the fast stand-in ``run_point`` of tests/test_sweep.py (one k-means row per
point), so only the stores of two tiny backbones are extracted.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_sweep import TINY, failing_run_point

from stego_probe.backbones import register_extractor
from stego_probe.compare import rank_backbones
from stego_probe.plots import plot_metric_over_dims
from stego_probe.results import make_rows
from stego_probe.sweep import SweepConfig, load_config, run_sweep, sweep_points
from stego_probe.sweep import executors as sweep_executors
from stego_probe.sweep import run as sweep_run

POOL = "test_pool12"  # a registered custom extractor, width 12
register_extractor(
    POOL,
    torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Conv2d(3, 12, 1)).requires_grad_(False),
    patch_size=8,
    embed_dim=12,
    overwrite=True,
)
WIDTHS = {"descriptor": 64, POOL: 12}
FAST = {**TINY, "methods": ["dino", "rp"], "dims": [3, 12]}


def multi_config(backbones, **over) -> SweepConfig:
    return load_config("synthetic", {**FAST, "backbones": backbones, **over})


@pytest.fixture
def fast_points(monkeypatch):
    calls = []
    monkeypatch.setattr(sweep_executors, "run_point", failing_run_point({}, calls))
    return calls


def test_config_backbones_normalised_and_single_unchanged():
    single = load_config("synthetic", FAST)
    assert single.backbones is None and not single.multi_backbone
    assert single.backbone_configs() == [single]
    assert single.backbone_entries() == [{"name": "descriptor", "weights": None, "kwargs": {}}]
    assert "backbones" in single.to_dict() and single.to_dict()["backbones"] is None
    multi = multi_config(["descriptor", {"name": POOL, "kwargs": {}}])
    assert multi.backbone is None  # the override replaced the preset's single backbone
    assert [c.backbone for c in multi.backbone_configs()] == ["descriptor", POOL]
    assert all(c.backbones is None for c in multi.backbone_configs())
    assert SweepConfig.from_dict(multi.to_dict()) == multi
    with pytest.raises(ValueError, match="same name"):
        multi_config(["descriptor", "descriptor"])
    with pytest.raises(ValueError, match="unknown keys"):
        multi_config([{"name": "descriptor", "weight": "x"}])
    with pytest.raises(ValueError, match="either 'backbone'"):
        SweepConfig("x", "synthetic", backbone="descriptor", backbones=["descriptor"])


def test_sweep_of_two_backbones_then_resume_adds_a_third(tmp_path, fast_points, monkeypatch):
    out = tmp_path / "run"
    config = multi_config(["descriptor"])
    run_sweep(config, out, progress=False)
    first = set(fast_points)
    fast_points.clear()
    # adding a backbone runs only its points: the descriptor's are not recomputed
    df = run_sweep(multi_config(["descriptor", POOL]), out, progress=False)
    assert set(fast_points) == set(sweep_points(config, WIDTHS[POOL]))
    assert {p.backbone for p in fast_points} == {POOL}
    assert first == set(sweep_points(config, 64))
    rows = df[df["metric"] == "miou"]
    for bb, width in WIDTHS.items():
        mine = rows[rows["backbone"] == bb]
        assert mine["dim"].max() == width
        assert set(zip(mine["method"], mine["dim"])) == {
            (p.method, p.dim) for p in sweep_points(config, width)
        }
    assert sweep_run.projections_dir(config, out, POOL) == out / "projections" / POOL
    stores = json.loads((out / "stores.json").read_text())
    assert set(stores) == {"descriptor", POOL}
    assert stores["descriptor"]["train"] != stores[POOL]["train"]

    # a rerun recomputes nothing and extracts nothing
    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(sweep_executors, "run_point", boom)
    monkeypatch.setattr("stego_probe.extract.extract", boom)
    again = run_sweep(multi_config(["descriptor", POOL]), out, progress=False)
    pd.testing.assert_frame_equal(again, df)
    # changing one backbone's settings is refused for that backbone
    with pytest.raises(ValueError, match=f"backbone\\(s\\) \\['{POOL}'\\]"):
        run_sweep(
            multi_config(["descriptor", {"name": POOL, "kwargs": {"x": 1}}]), out, progress=False
        )


def test_single_backbone_layout_unchanged(tmp_path, fast_points):
    out = tmp_path / "run"
    df = run_sweep(load_config("synthetic", FAST), out, progress=False)
    assert set(df["backbone"]) == {"descriptor"}
    assert not (out / "projections" / "descriptor").exists()
    assert set(json.loads((out / "stores.json").read_text())) == {"train", "val"}
    assert all(p.backbone is None for p in fast_points)
    # resuming a single-backbone folder with another backbone is still refused
    with pytest.raises(ValueError, match="another configuration"):
        run_sweep(load_config("synthetic", {**FAST, "backbone": POOL}), out, progress=False)


def test_monkeypatched_run_sweep_helpers_are_looked_up_in_run():
    assert "ensure_stores" in sweep_run._run_backbone.__code__.co_names


def _hand_table() -> pd.DataFrame:
    """kmeans / linear miou and STEGO silhouette rows of two backbones, two seeds."""
    rows = []
    ctx = dict(dataset="synthetic", crf=False, mode="pixel", split="val", match="hungarian")

    def add(bb, method, dim, probe, metric, values):
        for seed, v in enumerate(values):
            c = {**ctx, "backbone": bb, "method": method, "dim": dim, "seed": seed, "probe": probe}
            rows.extend(make_rows(c, {metric: v}))

    add("a", "dino", 16, "kmeans", "miou", [30, 32])
    add("a", "pca", 4, "kmeans", "miou", [40, 44])  # best of a
    add("a", "stego", 4, "kmeans", "miou", [35, 37])
    add("a", "stego", 16, "kmeans", "miou", [20, 22])
    add("a", "dino", 16, "linear", "miou", [50, 54])
    add("a", "pca", 16, "linear", "miou", [60, 60])  # not the raw features: not chosen
    add("a", "stego", 4, "none", "silhouette", [0.2, 0.4])  # at STEGO's best D
    add("a", "stego", 16, "none", "silhouette", [0.9, 0.9])
    add("b", "dino", 8, "kmeans", "miou", [50, 50])
    add("b", "rp", 4, "kmeans", "miou", [20, 30])
    add("b", "dino", 8, "linear", "miou", [70, 72])
    return pd.DataFrame(rows)


def test_ranking_equals_hand_computed_means():
    t = rank_backbones(_hand_table()).set_index("backbone")
    assert list(t.index) == ["b", "a"] and list(t["rank"]) == [1, 2]
    a, b = t.loc["a"], t.loc["b"]
    assert (a["width"], b["width"]) == (16, 8)
    assert a["kmeans_miou"] == 42 and a["kmeans_method"] == "pca" and a["kmeans_dim"] == 4
    np.testing.assert_allclose(a["kmeans_miou_std"], np.std([40, 44], ddof=1))
    assert a["linear_miou"] == 52 and a["linear_method"] == "dino"
    assert a["stego_dim"] == 4
    np.testing.assert_allclose(a["stego_silhouette"], 0.3)
    np.testing.assert_allclose(a["stego_silhouette_std"], np.std([0.2, 0.4], ddof=1))
    assert b["kmeans_miou"] == 50 and b["kmeans_method"] == "dino" and b["linear_miou"] == 71
    assert pd.isna(b["stego_silhouette"]) and b["n_seeds"] == 2


def test_figure_hue_backbone_and_fraction_axis():
    df = _hand_table()
    with pytest.raises(ValueError, match="hue='backbone'"):
        plot_metric_over_dims(pd.concat([df, df.assign(backbone="c")]), probe_rows=["kmeans"])
    fig = plot_metric_over_dims(df, probe_rows=["kmeans"], hue="backbone")
    lines = series_lines(fig.axes[0])
    pairs = {("a", m) for m in ("dino", "pca", "stego")} | {("b", m) for m in ("dino", "rp")}
    assert len(lines) == len(pairs)
    assert {"a: PCA [pixel]", "a: raw [pixel]", "b: raw [pixel]", "b: RP [pixel]"} <= set(lines)
    fig = plot_metric_over_dims(df, probe_rows=["kmeans"], hue="backbone", x="fraction")
    lines = series_lines(fig.axes[0])
    np.testing.assert_allclose(lines["a: STEGO [pixel]"].get_xdata(), [4 / 16, 16 / 16])
    np.testing.assert_allclose(lines["b: RP [pixel]"].get_xdata(), [4 / 8])
    fig = plot_metric_over_dims(
        df, probe_rows=["kmeans"], hue="backbone", x="fraction", widths={"b": 16}
    )
    np.testing.assert_allclose(series_lines(fig.axes[0])["b: RP [pixel]"].get_xdata(), [4 / 16])


def series_lines(ax) -> dict:
    """label -> data line of every error-bar series of a panel."""
    return {c.get_label(): c.lines[0] for c in ax.containers}


def test_cli_compare_imports_a_custom_extractor(tmp_path, monkeypatch, capsys, fast_points):
    from stego_probe.cli.main import main

    mod = tmp_path / "ext_mod.py"
    mod.write_text(
        "import torch\nfrom stego_probe.backbones import register_extractor\n"
        "register_extractor('test_ext10', torch.nn.Sequential(torch.nn.AvgPool2d(8), "
        "torch.nn.Conv2d(3, 10, 1)), patch_size=8, embed_dim=10, overwrite=True)\n"
    )
    monkeypatch.chdir(tmp_path)
    over = "dims=[3],seeds=[0],dataset_kwargs.n_images=16,dataset_kwargs.size=[48,64],"
    over += 'train.res=48,val.res=48,methods=["dino","rp"],probes=["kmeans"]'
    rc = main(
        ["compare", "--preset", "synthetic", "--out", "o", "--import", "ext_mod",
         "--backbones", "descriptor,test_ext10", "--set", over, "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "test_ext10" in text and "descriptor" in text
    ranking = pd.read_csv(tmp_path / "o" / "ranking.csv")
    assert set(ranking["backbone"]) == {"descriptor", "test_ext10"}
    assert (tmp_path / "o" / "compare.png").stat().st_size > 0
