"""End-to-end tests of the experiment scripts (``experiments/*.py``) on tiny fixture data.

Everything is offline: tiny dataset trees in the CocoStuff / Cityscapes / Potsdam layouts
(``data_fixtures``), a tiny random-init DINO ViT written in the official checkpoint format and
loaded through ``get_backbone(..., weights=..., model_kwargs=...)`` (``--weights`` and
``--backbone-kwargs``), and fake released STEGO checkpoints of the same width
(``stego_fixtures``). The scripts run in-process through their ``main(argv)``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

TESTS = Path(__file__).resolve().parent
EXPERIMENTS = TESTS.parent / "experiments"
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(EXPERIMENTS))

from data_fixtures import write_cityscapes, write_cocostuff, write_potsdam  # noqa: E402
from reference_vit import random_official_state_dict  # noqa: E402
from stego_fixtures import write_fake_checkpoint  # noqa: E402

from stego_probe.published import PAPER_DATASETS  # noqa: E402
from stego_probe.released import released_checkpoints  # noqa: E402
from stego_probe.results import RESULT_COLUMNS, read_results  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch / FAISS thread: on 2 shared cores the tiny ops here are much faster serial."""
    import faiss

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    faiss.omp_set_num_threads(before[1])


WIDTH = 48
TINY_VIT = dict(depth=2, embed_dim=WIDTH, num_heads=3, img_size=64)
DATASETS = PAPER_DATASETS
N_CLASSES = {"cocostuff27": 27, "cityscapes27": 27, "potsdam3": 3}
#: (file name, reference cfg, code width D) of the fake released checkpoints.
RELEASED = {
    ds: (released_checkpoints()[ds], *cfg)
    for ds, cfg in {
        "cocostuff27": ("vit_base", "cocostuff27", 5),
        "cityscapes27": ("vit_base", "cityscapes", 6),
        "potsdam3": ("vit_small", "potsdam", 4),
    }.items()
}
#: Protocol settings shrunk to seconds (merged into every preset with --overrides).
FAST = {
    "batch_size": 8,
    "probe_kwargs": {
        "kmeans": {"n_tokens": 2000, "niter": 5, "nredo": 1},
        "cluster": {"batch_size": 4},
        "linear": {"batch_size": 4},
    },
    "method_kwargs": {
        "pca": {"n_images": 40},
        "stego": {"batch_size": 4, "val_every": 5, "num_neighbors": 3},
    },
    "distinctness": {"n_tokens": 400, "seeds": [0, 1]},
}


def load_script(name: str):
    """Import ``experiments/<name>.py`` as a module (its ``main(argv)`` runs the experiment)."""
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Data trees, tiny DINO weights and fake released checkpoints in one folder."""
    root = tmp_path_factory.mktemp("experiments")
    data = root / "data"
    write_cocostuff(data, n_train=3, n_val=2, size=(24, 32))
    write_cityscapes(data, n_per_city=2, size=(16, 32))
    write_potsdam(data, n_train=10, n_val=3, size=(20, 20))
    weights = root / "dino_tiny.pth"
    torch.save(
        random_official_state_dict(patch_size=8, embed_dim=WIDTH, depth=2, num_heads=3, grid=8),
        weights,
    )
    ckpts = root / "saved_models"
    ckpts.mkdir()
    for ds, (fname, model, ref_name, dim) in RELEASED.items():
        write_fake_checkpoint(
            ckpts / fname,
            in_dim=WIDTH,
            dim=dim,
            n_classes=N_CLASSES[ds],
            cfg={"model_type": model, "dataset_name": ref_name, "dino_patch_size": 8},
        )
    return root


def common_args(ws: Path, *datasets: str) -> list[str]:
    return [
        "--datasets", ",".join(datasets or DATASETS),
        "--data-root", str(ws / "data"),
        "--weights", str(ws / "dino_tiny.pth"),
        "--backbone-kwargs", json.dumps({"model_kwargs": TINY_VIT}),
        "--train-res", "32",
        "--val-res", "32",
        "--device", "cpu",
        "--seeds", "0",
        "--steps", "6",
        "--overrides", json.dumps(FAST),
        "--no-progress",
    ]  # fmt: skip


HAVE_CRF = importlib.util.find_spec("pydensecrf") is not None


# ------------------------------------------------------------------------------ --help


@pytest.mark.parametrize(
    "name, words",
    [
        ("table2", "released STEGO checkpoints"),
        ("figure3", "explained variance"),
        ("figure4", "Appendix Figure 1"),
        ("distinctness", "distinctness"),
    ],
)
def test_help_explains_the_script(name, words):
    out = subprocess.run(
        [sys.executable, str(EXPERIMENTS / f"{name}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert words in out.stdout
    for flag in ("--data-root", "--out", "--device", "--seeds", "--steps", "--weights"):
        assert flag in out.stdout


# ------------------------------------------------------------------------------ table 2


def test_table2_released_checkpoints_and_dino(ws, capsys):
    table2 = load_script("table2")
    argv = common_args(ws) + [
        "--stores", str(ws / "runs" / "figure4"),
        "--out", str(ws / "runs" / "table2"),
        "--checkpoints", str(ws / "saved_models"),
    ] + ([] if HAVE_CRF else ["--no-crf"])  # fmt: skip
    assert table2.main(argv) == 0
    printed = capsys.readouterr().out
    # DINO-style banner: git SHA, then the sorted arguments
    assert printed.index("git:") < printed.index("checkpoints: ") < printed.index("datasets: ")
    df = read_results(ws / "runs" / "table2" / "results.csv")
    assert list(df.columns[: len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    crfs = {False, True} if HAVE_CRF else {False}
    main_rows = df[df["metric"].isin(["accuracy", "miou"])]
    for ds in DATASETS:
        for method, dim in (("stego_released", RELEASED[ds][3]), ("dino", WIDTH)):
            sel = main_rows[(main_rows.dataset == ds) & (main_rows.method == method)]
            assert set(sel["probe"]) == {"cluster", "linear", "kmeans"}
            assert set(sel["dim"]) == {dim}
            assert set(sel["mode"]) == {"pixel_flip"}
            assert sel["crf"].dtype == bool and set(sel["crf"]) == crfs  # typed by read_results
            assert len(sel) == 3 * len(crfs) * 2
            assert sel["value"].between(0, 100).all()
    # the comparison table: one row per dataset x method x probe x crf, targets attached
    table = pd.read_csv(ws / "runs" / "table2" / "table2.csv")
    assert len(table) == 3 * 2 * 3 * len(crfs)
    coco = table[
        (table.dataset == "cocostuff27")
        & (table.method == "stego_released")
        & (table.probe == "cluster")
    ]
    assert set(coco["target_miou"].dropna()) == ({28.19} if HAVE_CRF else set())
    assert table.loc[table.method == "dino", "target_miou"].isna().all()
    assert "cocostuff27" in printed and "target_miou" in printed
    # resuming: nothing left to do, no row appended
    n = len(df)
    assert table2.main(argv) == 0
    assert len(read_results(ws / "runs" / "table2" / "results.csv")) == n
    assert "already in results, skipped" in capsys.readouterr().out


def test_table2_missing_checkpoint_names_the_download(ws, tmp_path):
    table2 = load_script("table2")
    argv = common_args(ws, "potsdam3") + [
        "--stores", str(tmp_path / "stores"),
        "--out", str(tmp_path / "t2"),
        "--checkpoints", str(tmp_path / "none"),
        "--no-crf",
    ]  # fmt: skip
    with pytest.raises(FileNotFoundError, match="potsdam_test.ckpt"):
        table2.main(argv)
    assert table2.run(table2.main, argv) == 1


def test_dataset_config_precedence_and_weights():
    from _common import dataset_config, make_parser, weights_for

    parser = make_parser("x", "test", sweep=True)
    args = parser.parse_args([
        "--datasets", "potsdam3",
        "--weights", "/w/default.pth", "--weights", "dino_vitb8=/w/b8.pth",
        "--weights", "cityscapes27=/w/city.pth",
        "--steps", "11", "--seeds", "3,4", "--dims", "3,6", "--val-res", "64",
        "--device", "cpu",
        "--overrides", json.dumps({"probe_kwargs": {"linear": {"steps": 5}}, "seeds": [9]}),
    ])  # fmt: skip
    assert weights_for(args.weights, "cocostuff27", "dino_vitb8") == "/w/b8.pth"
    assert weights_for(args.weights, "cityscapes27", "dino_vitb8") == "/w/city.pth"
    assert weights_for(args.weights, "potsdam3", "dino_vits8") == "/w/default.pth"
    config = dataset_config(args, "potsdam3")
    assert config.backbone == "dino_vits8" and config.weights == "/w/default.pth"
    # preset < flags < --overrides
    assert config.seeds == [9] and config.dims == [3, 6] and config.batch_size == 16
    assert config.probe_kwargs["cluster"]["steps"] == 11
    assert config.probe_kwargs["linear"]["steps"] == 5
    assert config.probe_kwargs["linear"]["batch_size"] == 16  # the preset's, kept
    assert config.method_kwargs["stego"] == {"preset": "potsdam3", "device": "cpu", "steps": 11}
    assert (config.val.res, config.val.crop, config.train.res) == (64, "center", 224)


def test_compare_with_published_exact_values():
    from stego_probe.published import compare_with_published

    base = {c: "" for c in RESULT_COLUMNS}
    rows = []
    for seed, acc, miou in ((0, 50.0, 20.0), (1, 60.0, 30.0), (1, 60.0, 30.0)):
        for metric, value in (("accuracy", acc), ("miou", miou), ("iou:sky", 1.0)):
            rows.append({**base, "dataset": "cocostuff27", "method": "stego_released",
                         "dim": 90, "seed": seed, "probe": "cluster", "crf": True,
                         "mode": "pixel_flip", "metric": metric, "value": value})  # fmt: skip
    rows.append({**rows[0], "probe": "none", "metric": "silhouette", "value": 0.3})
    table = compare_with_published(pd.DataFrame(rows))
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["acc"], row["miou"], row["seeds"]) == (55.0, 25.0, 2)
    assert (row["target_acc"], row["target_miou"]) == (56.93, 28.19)
    assert np.isfinite(row["fig4_miou"])


# ------------------------------------------------------------------------------ figure 3


def test_figure3_pca_spectra(ws, capsys):
    figure3 = load_script("figure3")
    out, figs = ws / "runs" / "figure3", ws / "figures" / "figure3"
    argv = common_args(ws) + [
        "--stores", str(ws / "runs" / "figure4"), "--out", str(out), "--figures", str(figs),
    ]  # fmt: skip
    assert figure3.main(argv) == 0
    df = read_results(out / "results.csv")
    assert set(df["metric"]) == {"explained_variance_ratio"}
    for ds in DATASETS:
        g = df[df.dataset == ds]
        assert sorted(g["dim"]) == list(range(1, WIDTH + 1))
        assert g["value"].sum() == pytest.approx(1.0, abs=1e-4)
        assert (np.diff(g.sort_values("dim")["value"].to_numpy()) <= 1e-9).all()
    assert (figs / "pca_cum_variance.pdf").stat().st_size > 0
    assert "cumulative explained variance" in capsys.readouterr().out
    # redraw only, another format
    assert figure3.main(argv + ["--results", str(out / "results.csv"), "--fmt", "png"]) == 0
    assert (figs / "pca_cum_variance.png").stat().st_size > 0


# ------------------------------------------------------------------------------ figure 4


@pytest.mark.slow
def test_figure4_sweep_and_figures(ws, tmp_path, capsys):
    from stego_probe.results import append_csv, make_rows

    figure4 = load_script("figure4")
    out, figs = ws / "runs" / "figure4", ws / "figures" / "figure4"
    # eval-mode reference points as Table 2 writes them (the released checkpoint, ± CRF)
    table2 = tmp_path / "table2.csv"
    for crf in (False, True):
        for probe in ("linear", "cluster"):
            ctx = dict(dataset="potsdam3", backbone="dino_vits8", method="stego_released",
                       dim=4, seed=0, probe=probe, crf=crf, mode="pixel_flip", split="val")  # fmt: skip
            append_csv(make_rows(ctx, {"miou": 30.0 + crf, "accuracy": 60.0}), table2)
    argv = common_args(ws, "potsdam3", "cocostuff27") + [
        "--methods", "dino,pca,rp,stego",
        "--dims", "3",
        "--probes", "kmeans,linear,cluster",
        "--out", str(out),
        "--figures", str(figs),
        "--table2", str(table2),
        "--fmt", "png",
    ]  # fmt: skip
    assert figure4.main(argv) == 0
    for ds in ("potsdam3", "cocostuff27"):
        df = read_results(out / ds / "results.csv")
        sel = df[df["metric"] == "miou"]
        points = set(zip(sel["method"], sel["dim"]))
        # width methods at the asked D and at full width, where the curves meet DINO
        widths = {(m, d) for m in ("pca", "rp", "stego") for d in (3, WIDTH)}
        assert points == {("dino", WIDTH)} | widths
        assert set(sel["probe"]) == {"kmeans", "linear", "cluster"}
        assert set(sel["mode"]) == {"pixel"}
        assert (df["metric"] == "silhouette").any()
    for stem in ("all_datasets_miou", "all_datasets_acc"):
        assert (figs / f"{stem}.png").stat().st_size > 0
    drawn = read_results(out / "figure4.csv")
    assert set(drawn["dataset"]) == {"potsdam3", "cocostuff27"}
    released = drawn[drawn["method"] == "stego_released"]
    assert len(released) == 8 and set(released["mode"]) == {"pixel_flip"}
    assert "mIoU (%), 1 seed (n=1): mean only, potsdam3" in capsys.readouterr().out
    # redraw only (no sweep, no Table 2 rows), into another folder
    argv2 = common_args(ws, "potsdam3") + [
        "--results", str(out / "potsdam3" / "results.csv"),
        "--figures", str(ws / "redraw"), "--table2", "none",
    ]  # fmt: skip
    assert figure4.main(argv2) == 0
    assert (ws / "redraw" / "all_datasets_miou.pdf").stat().st_size > 0


# ------------------------------------------------------------------------------ distinctness


@pytest.mark.slow
def test_distinctness_runs_missing_sweep_then_draws(ws, tmp_path, capsys):
    script = load_script("distinctness")
    argv = common_args(ws, "potsdam3") + [
        "--methods", "dino,pca",
        "--dims", "3",
        "--probes", "kmeans",
        "--mode", "token",
        "--sweeps", str(tmp_path / "sweeps"),
        "--out", str(tmp_path / "out"),
        "--figures", str(tmp_path / "figs"),
    ]  # fmt: skip
    assert script.main(argv) == 0
    printed = capsys.readouterr().out
    assert "running the sweep" in printed and "silhouette" in printed
    df = pd.read_csv(tmp_path / "out" / "distinctness.csv")
    assert set(df["probe"]) == {"none"}
    assert set(zip(df["method"], df["dim"])) == {("dino", WIDTH), ("pca", 3), ("pca", WIDTH)}
    assert {"silhouette", "kmeans_ari", "kmeans_iterations"} <= set(df["metric"])
    for stem in ("distinctness_over_dims", "kmeans_convergence"):
        assert (tmp_path / "figs" / f"{stem}.pdf").stat().st_size > 0
    # the sweep exists now: a second call only reads it
    assert script.main(argv) == 0
    assert "running the sweep" not in capsys.readouterr().out
