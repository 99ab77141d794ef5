"""The analyses the experiment scripts and the demo print, as library functions.

``stego_probe.published.compare_with_published`` (Table 2 next to the paper's numbers),
``stego_probe.released`` (the released checkpoints and Table 2's evaluation loop),
``stego_probe.results.done_keys`` (the resume check) and ``stego_probe.summaries``.
End-to-end runs of these through the scripts are in test_experiments.py / test_demo.py.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stego_probe.published import (  # noqa: E402
    COMPARISON_COLUMNS,
    PAPER_DATASETS,
    TABLE2_METHODS,
    TABLE2_PROBES,
    compare_with_published,
)
from stego_probe.results import (  # noqa: E402
    RESULT_COLUMNS,
    append_csv,
    as_bool,
    coerce_types,
    done_keys,
    key_value,
    make_rows,
    read_results,
    to_frame,
)
from stego_probe.summaries import (  # noqa: E402
    best_dim,
    cumulative_variance,
    distinctness_summary,
)


def result_rows(rows: list[dict]) -> pd.DataFrame:
    base = {c: "" for c in RESULT_COLUMNS}
    return pd.DataFrame([{**base, **r} for r in rows])


# ------------------------------------------------------------------------- compare_with_published


def row(dataset, method, dim, probe, crf, seed, metric, value, mode="pixel_flip"):
    return dict(dataset=dataset, method=method, dim=dim, probe=probe, crf=crf, seed=seed,
                mode=mode, metric=metric, value=value)  # fmt: skip


def test_compare_with_published_deltas_against_the_issue_logs():
    # Potsdam-3, released checkpoint, with CRF: the issue #39 logs are cluster 77.03 / 62.57 and
    # linear 85.85 / 74.83; the digitised Figure 4 has cluster 62.54, linear 74.81 mIoU
    rows = [
        row("potsdam3", "stego_released", 70, "linear", "True", 0, "accuracy", 86.0),
        row("potsdam3", "stego_released", 70, "linear", "True", 0, "miou", 75.0),
        row("potsdam3", "stego_released", 70, "cluster", "true", 0, "accuracy", 77.0),
        row("potsdam3", "stego_released", 70, "cluster", "true", 0, "miou", 62.0),
        # a second seed of the cluster probe, and a rerun of it (counts once, the last wins)
        row("potsdam3", "stego_released", 70, "cluster", True, 1, "miou", 99.0),
        row("potsdam3", "stego_released", 70, "cluster", True, 1, "miou", 63.0),
        row("potsdam3", "stego_released", 70, "cluster", True, 1, "accuracy", 78.0),
        # the DINO baseline without CRF: no issue target, Figure 4 has none for Potsdam no-CRF
        row("potsdam3", "dino", 384, "kmeans", "False", 0, "miou", 40.0),
        # ignored: other probes / metrics
        row("potsdam3", "stego_released", 70, "none", "False", 0, "silhouette", 0.3),
        row("potsdam3", "stego_released", 70, "cluster", "True", 0, "iou:road", 1.0),
    ]
    table = compare_with_published(result_rows(rows))
    assert list(table.columns) == COMPARISON_COLUMNS
    assert list(zip(table["method"], table["probe"])) == [
        ("stego_released", "cluster"),
        ("stego_released", "linear"),
        ("dino", "kmeans"),
    ]
    cluster, linear, dino = (table.iloc[i] for i in range(3))
    assert table["crf"].tolist() == [True, True, False]  # "True" / "true" / True: one key
    assert (cluster["acc"], cluster["miou"], cluster["seeds"]) == (77.5, 62.5, 2)
    assert round(cluster["acc"] - cluster["target_acc"], 6) == round(77.5 - 77.03, 6)
    assert round(cluster["miou"] - cluster["target_miou"], 6) == round(62.5 - 62.57, 6)
    assert cluster["fig4_miou"] == 62.54
    assert (linear["target_acc"], linear["target_miou"], linear["fig4_miou"]) == (
        85.85,
        74.83,
        74.81,
    )
    assert (linear["acc"], linear["miou"], linear["seeds"]) == (86.0, 75.0, 1)
    assert math.isnan(dino["acc"]) and dino["miou"] == 40.0
    assert dino[["target_acc", "target_miou", "fig4_miou"]].isna().all()


def test_compare_with_published_orders_rows_like_table2():
    rows = []
    for ds in reversed(PAPER_DATASETS):
        for method in reversed(TABLE2_METHODS):
            for probe in reversed(TABLE2_PROBES):
                rows.append(row(ds, method, 8, probe, "False", 0, "miou", 1.0))
    rows.append(row("synthetic", "pca", 8, "kmeans", "False", 0, "miou", 1.0))
    table = compare_with_published(result_rows(rows))
    expected = [(d, m, p) for d in PAPER_DATASETS for m in TABLE2_METHODS for p in TABLE2_PROBES]
    got = list(zip(table["dataset"], table["method"], table["probe"]))
    assert got == expected + [("synthetic", "pca", "kmeans")]  # other datasets last


def test_compare_with_published_empty_and_bad_input():
    empty = compare_with_published(
        result_rows([row("x", "pca", 3, "none", "", 0, "silhouette", 1)])
    )
    assert empty.empty and list(empty.columns) == COMPARISON_COLUMNS
    with pytest.raises(ValueError, match=r"lacks the results columns \['mode'\]"):
        compare_with_published(pd.DataFrame(columns=RESULT_COLUMNS).drop(columns="mode"))


# ------------------------------------------------------------------------- done_keys


def write_results(path: Path) -> None:
    for method, dim, seed, crf in (("pca", 3, 0, False), ("pca", 3, 0, True), ("rp", 6, 1, False)):
        ctx = dict(dataset="potsdam3", backbone="dino_vits8", method=method, dim=dim, seed=seed,
                   probe="kmeans", crf=crf, mode="pixel", split="val")  # fmt: skip
        append_csv(make_rows(ctx, {"miou": 1.0, "accuracy": 2.0}), path)
    ctx = dict(dataset="cityscapes27", backbone="dino_vitb8", method="pca", dim=1, seed=0,
               probe="none", crf=False, mode="pixel", split="train")  # fmt: skip
    append_csv(make_rows(ctx, {"explained_variance_ratio": 0.5}), path)


def test_done_keys_of_a_results_csv(tmp_path):
    path = tmp_path / "results.csv"
    assert done_keys(path, ["method"]) == set()  # not written yet: nothing done
    assert done_keys(None, ["method"]) == set()
    write_results(path)
    keys = done_keys(path, ["method", "dim", "seed"])
    assert keys == {("pca", 3, 0), ("rp", 6, 1), ("pca", 1, 0)}
    assert all(type(v) is int for _, d, s in keys for v in (d, s))  # CSV ints as Python ints
    evr = {"metric": "explained_variance_ratio"}
    assert done_keys(path, ["method", "dim", "seed"], exclude=evr) == {("pca", 3, 0), ("rp", 6, 1)}
    assert done_keys(path, ["dataset"], where=evr) == {("cityscapes27",)}
    # a Table 2 style key with CRF rows only; booleans match the CSV's spelling
    assert done_keys(path, ["dataset", "method", "seed"], where={"crf": True}) == {
        ("potsdam3", "pca", 0)
    }
    assert done_keys(path, ["method"], where={"crf": False, "dim": [6.0, 1]}) == {("rp",), ("pca",)}


def test_done_keys_agrees_with_the_sweep_resume_set(tmp_path):
    from stego_probe.sweep import Point, done_points

    path = tmp_path / "results.csv"
    write_results(path)
    keys = done_keys(
        path, ["method", "dim", "seed"], exclude={"metric": "explained_variance_ratio"}
    )
    assert {Point(*k) for k in keys} == done_points(path)


def test_done_keys_of_a_frame_and_errors():
    df = pd.DataFrame({"method": ["pca", "pca"], "dim": [3.0, 3.0], "crf": [True, False]})
    assert done_keys(df, ["method", "dim"]) == {("pca", 3)}
    assert done_keys(df, ["dim"], where={"crf": False}) == {(3,)}
    assert done_keys(df.iloc[:0], ["method"]) == set()
    with pytest.raises(ValueError, match=r"no column\(s\) \['seed'\]"):
        done_keys(df, ["method", "seed"])
    with pytest.raises(ValueError, match="at least one column"):
        done_keys(df, [])


# ------------------------------------------------------------------------- typed tables


def test_read_results_types_the_columns(tmp_path):
    path = tmp_path / "results.csv"
    write_results(path)
    # a row written by hand: other crf spellings, an all-digit version, an empty dim
    with open(path, "a") as f:
        f.write("potsdam3,b,,pca,,0,none,yes,val,,val,silhouette,inf,,,,,10\n")
        f.write("potsdam3,b,,pca,4,0,none,0,val,,val,silhouette,0.25,,,,,1.10\n")
    df = read_results(path)
    assert df["crf"].dtype == bool
    assert df["crf"].tolist() == [False] * 2 + [True] * 2 + [False] * 3 + [True, False]
    assert df["seed"].dtype == np.int64 and df["value"].dtype == np.float64
    assert df["dim"].dtype == np.float64 and np.isnan(df["dim"].iloc[-2])  # an empty cell
    assert df["value"].iloc[-2] == np.inf
    assert df["kmeans_niter"].dtype == np.float64  # empty in every row here
    # text stays text: "10" and "1.10" are versions, not numbers; empty cells are ""
    assert df["stego_probe_version"].tolist()[-2:] == ["10", "1.10"]
    assert df["match"].tolist()[-1] == "" and df["weights_sha256"].iloc[0] == ""
    # a table without empty integer cells: dim is int64
    clean = tmp_path / "clean.csv"
    write_results(clean)
    assert read_results(clean)["dim"].dtype == np.int64


def test_to_frame_agrees_with_read_results(tmp_path):
    ctx = dict(dataset="synthetic", method="pca", dim=3, seed=0, probe="kmeans", crf=True,
               mode="pixel", split="val")  # fmt: skip
    rows = make_rows(ctx, {"miou": 1.0}) + make_rows({**ctx, "crf": ""}, {"miou": 2.0})
    path = tmp_path / "results.csv"
    append_csv(rows, path)
    pd.testing.assert_frame_equal(to_frame(rows), read_results(path))
    assert to_frame(rows)["crf"].tolist() == [True, False]  # an empty crf cell is False


@pytest.mark.parametrize("cell", ["maybe", "t", "2", "1.0"])
def test_read_results_refuses_a_crf_that_is_not_a_boolean(tmp_path, cell):
    path = tmp_path / "results.csv"
    write_results(path)
    text = path.read_text().splitlines()
    crf = RESULT_COLUMNS.index("crf")
    cells = text[1].split(",")
    cells[crf] = cell
    path.write_text("\n".join([text[0], ",".join(cells), *text[2:]]) + "\n")
    with pytest.raises(ValueError, match=rf"{path.name}: column 'crf' has the value '{cell}'"):
        read_results(path)


def test_read_results_refuses_text_in_a_numeric_column(tmp_path):
    path = tmp_path / "results.csv"
    write_results(path)
    text = path.read_text().replace(
        "potsdam3,dino_vits8,,pca,3,", "potsdam3,dino_vits8,,pca,x3,", 1
    )
    path.write_text(text)
    with pytest.raises(ValueError, match=r"results.csv: column 'dim' has the value 'x3'"):
        read_results(path)


def test_as_bool_and_the_crf_row_key():
    for v in (True, np.True_, 1, 1.0, "True", " yes ", "1", "TRUE"):
        assert as_bool(v) is True, v
    for v in (False, 0, 0.0, "False", "no", "0", "", None, float("nan")):
        assert as_bool(v) is False, v
    for v in ("maybe", "t", 2, "1.0"):
        with pytest.raises(ValueError, match="not a boolean"):
            as_bool(v)
    # row keys use the same parser: an empty crf cell and False are one key
    assert {key_value("crf", v) for v in (True, "True", "yes", 1)} == {"true"}
    assert {key_value("crf", v) for v in (False, "", None, "0")} == {"false"}
    with pytest.raises(ValueError, match="not a boolean"):
        key_value("crf", "maybe")


def test_coerce_types_of_an_in_memory_subset():
    df = pd.DataFrame({"method": ["pca", None], "dim": [3.0, "4"], "crf": ["True", np.nan],
                       "extra": [object(), 1]})  # fmt: skip
    t = coerce_types(df)
    assert t["method"].tolist() == ["pca", ""] and t["crf"].tolist() == [True, False]
    assert t["dim"].dtype == np.int64 and t["dim"].tolist() == [3, 4]
    assert t["extra"].tolist() == df["extra"].tolist()  # other columns untouched
    assert df["crf"].tolist()[0] == "True"  # a copy
    with pytest.raises(ValueError, match=r"mine: column 'crf' has the value 'x'"):
        coerce_types(df.assign(crf="x"), name="mine")


# ------------------------------------------------------------------------- summaries


def test_cumulative_variance_at_fractions_of_the_width():
    ratios = 0.5 ** np.arange(1, 17)  # 16 components: 1/2, 1/4, ...
    df = pd.DataFrame({"dataset": "potsdam3", "dim": np.arange(16, 0, -1), "value": ratios[::-1],
                       "metric": "explained_variance_ratio"})  # fmt: skip
    df = pd.concat([df, df.assign(dataset="a", metric="miou")], ignore_index=True)
    out = cumulative_variance(df)
    assert list(out["dataset"]) == ["potsdam3"] * 4
    assert list(out["dim"]) == [1, 4, 8, 12] and set(out["n_components"]) == {16}
    np.testing.assert_allclose(out["cumulative"], [1 - 0.5**d for d in (1, 4, 8, 12)])
    small = cumulative_variance(df.iloc[:3].assign(dim=[1, 2, 3]), fractions=(0.1, 1.0))
    assert list(small["dim"]) == [1, 3]  # never below D = 1


def test_distinctness_summary_per_dataset_and_seed_note():
    rows = []
    for ds, base in (("potsdam3", 0.1), ("cocostuff27", 0.5)):
        for seed in (0, 1):
            for metric in ("silhouette", "kmeans_ari", "scatter_ratio"):
                rows.append(dict(dataset=ds, backbone="dino_vits8", method="dino", dim=384,
                                 seed=seed, probe="none", metric=metric,
                                 value=base + seed / 10))  # fmt: skip
    rows.append({**rows[0], "value": 0.0})  # a rerun of seed 0: the last row wins
    df = pd.DataFrame(rows)
    wide = distinctness_summary(df, index=("dataset", "method", "dim"))
    assert list(wide.columns) == ["kmeans_ari", "silhouette"]
    assert wide.attrs["note"] == "mean over 2 seeds"
    assert wide.loc[("cocostuff27", "DINO", 384), "kmeans_ari"] == 0.55
    assert wide.loc[("potsdam3", "DINO", 384), "silhouette"] == 0.1  # (0.0 + 0.2) / 2: rerun
    one = distinctness_summary(df[df["seed"] == 1])
    assert one.attrs["note"] == "1 seed (n=1)"
    assert one.loc[("DINO", 384), "silhouette"] == round((0.2 + 0.6) / 2, 3)  # datasets pooled
    assert distinctness_summary(df[df["metric"] == "scatter_ratio"]).empty


def test_best_dim_ties_go_to_the_smallest_width():
    df = pd.DataFrame({"method": "pca", "dim": [3, 6, 6], "seed": [0, 0, 1], "probe": "kmeans",
                       "metric": "miou", "value": [10.0, 5.0, 15.0]})  # fmt: skip
    assert best_dim(df, "pca") == 3


# ------------------------------------------------------------------------- released


def test_released_checkpoint_names_and_paths(tmp_path):
    from stego_probe.released import RELEASED_URL, released_checkpoint, released_checkpoints

    names = released_checkpoints()
    assert names == {
        "cocostuff27": "cocostuff27_vit_base_5.ckpt",
        "cityscapes27": "cityscapes_vit_base_1.ckpt",
        "potsdam3": "potsdam_test.ckpt",
    }
    with pytest.raises(FileNotFoundError, match=RELEASED_URL + "potsdam_test.ckpt"):
        released_checkpoint("potsdam3", tmp_path)
    (tmp_path / "potsdam_test.ckpt").write_bytes(b"")
    assert released_checkpoint("potsdam3", tmp_path) == tmp_path / "potsdam_test.ckpt"
    assert released_checkpoint("synthetic", tmp_path, "x.ckpt") == Path("x.ckpt")
    with pytest.raises(KeyError, match="no released STEGO checkpoint for 'synthetic'"):
        released_checkpoint("synthetic", tmp_path)


def test_load_released_checks_the_backbone(tmp_path):
    from stego_fixtures import write_fake_checkpoint

    from stego_probe.released import load_released

    path = tmp_path / "potsdam_test.ckpt"
    write_fake_checkpoint(path, in_dim=6, dim=4, n_classes=3,
                          cfg={"model_type": "vit_small", "dataset_name": "potsdam",
                               "dino_patch_size": 8})  # fmt: skip
    head = load_released(path, backbone="dino_vits8")
    assert head.probes(device="cpu")[0].n_clusters == 3
    with pytest.raises(ValueError, match="trained on dino_vits8 features but the stores use"):
        load_released(path, backbone="dino_vitb8")


def test_evaluate_released_checks_its_points():
    from stego_probe.released import evaluate_released

    with pytest.raises(ValueError, match=r"unknown methods \['pca'\]"):
        list(evaluate_released(None, None, None, [("pca", 0)]))
    with pytest.raises(ValueError, match="need the released head"):
        list(evaluate_released(None, None, None, [("dino", 0), ("stego_released", 0)]))
    assert list(evaluate_released(None, None, None, [])) == []
