"""Tests of the offline demo: the CLI end to end, and the class-aligned qualitative predictions.

The demo is run once per module through ``stego-probe demo --quick`` (about 10 s on one core).
"""

import contextlib
import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stego_probe import demo
from stego_probe.cli.main import main
from stego_probe.metrics import confusion_matrix
from stego_probe.results import read_results
from stego_probe.store import FeatureStore

FIGURES = [
    "pca_cum_variance",
    "all_datasets_miou",
    "all_datasets_acc",
    "distinctness_over_dims",
    "kmeans_convergence",
    "qualitative",
    "feature_map",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    out, fig = tmp / "run", tmp / "fig"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["demo", "--quick", "--out", str(out), "--figures", str(fig), "--no-progress"])
    return {"rc": rc, "out": out, "fig": fig, "stdout": buf.getvalue()}


@pytest.mark.slow
def test_demo_cli_writes_results_figures_and_summary(demo_run):
    assert demo_run["rc"] == 0
    out, fig, text = demo_run["out"], demo_run["fig"], demo_run["stdout"]
    # --quick selected the QUICK overrides
    config = json.loads((out / "config.json").read_text())
    assert config["dims"] == demo.QUICK["dims"] and config["seeds"] == demo.QUICK["seeds"]
    # the preset's world (nuisance 0.5), shrunk
    assert config["dataset_kwargs"] == {"nuisance": 0.5, **demo.QUICK["dataset_kwargs"]}
    assert config["backbone"] == "descriptor"
    df = read_results(out / "results.csv")
    assert set(df["method"]) == {"dino", "pca", "rp", "stego"}
    assert {"kmeans", "linear", "none"} <= set(df["probe"])
    for name in FIGURES:
        path = fig / f"{name}.png"
        assert path.exists(), name
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) > 100
    # the printed summary: mIoU / accuracy tables, distinctness, where things are
    for words in (
        "miou (%) on the synthetic val split",
        "accuracy (%) on the synthetic val split",
        "cluster distinctness",
        CLAIMS_HEADER,
        f"results: {out / 'results.csv'}",
        str(fig / "qualitative.png"),
    ):
        assert words in text
    miou = df[
        (df["metric"] == "miou")
        & (df["method"] == "stego")
        & (df["dim"] == demo.QUICK["dims"][0])
        & (df["probe"] == "kmeans")
    ]
    assert f"{miou['value'].item():5.1f}" in text


def stores(out: Path):
    (train,) = (out / "stores").glob("synthetic_train_*")
    (val,) = (out / "stores").glob("synthetic_val_*")
    return FeatureStore.open(train), FeatureStore.open(val)


def test_class_aligned_predictions(demo_run):
    from stego_probe.export import class_aligned_predictions
    from stego_probe.probes.kmeans import KMeansProbe
    from stego_probe.projections import get_projection

    train, val = stores(demo_run["out"])
    k = int(val.n_classes)
    proj = get_projection("dino", None).fit(train)
    idx = np.arange(val.n_images)
    pred = class_aligned_predictions(
        train, val, proj, idx, seed=0, kmeans_kwargs={"n_tokens": 3000}
    )
    labels = val.labels(idx)
    assert pred.shape == labels.shape and pred.dtype == np.int64
    assert pred.min() >= 0 and pred.max() < k  # K clusters for K classes: all matched

    # 1. the predictions are a one-to-one relabelling of the k-means clusters
    sample = train.sample_tokens(3000, seed=0)
    probe = KMeansProbe(n_clusters=k, random_state=0).fit(
        np.ascontiguousarray(proj.transform(sample))
    )
    codes = np.asarray(proj.transform_tokens(val.tokens(idx)), dtype=np.float32)
    raw = probe.predict(codes, size=tuple(val.label_shape))
    pairs = set(zip(raw.ravel().tolist(), pred.ravel().tolist()))
    assert len(pairs) == len({c for c, _ in pairs}) == len({p for _, p in pairs})

    # 2. ... chosen to put the most pixels on the diagonal: no permutation of the classes
    # does better (the Hungarian optimum over the whole split, checked by brute force)
    ok = (labels >= 0) & (labels < k)
    M = confusion_matrix(pred[ok], labels[ok], k, k)
    best = max(sum(M[i, p[i]] for i in range(k)) for p in itertools.permutations(range(k)))
    assert np.trace(M) == best
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(k)
    while (shuffled == np.arange(k)).all():
        shuffled = rng.permutation(k)
    assert np.trace(confusion_matrix(shuffled[pred[ok]], labels[ok], k, k)) <= np.trace(M)

    # 3. the matching is global: a subset of images gets the same colours as in the full split
    sub = class_aligned_predictions(
        train, val, proj, [3, 0], seed=0, kmeans_kwargs={"n_tokens": 3000}
    )
    np.testing.assert_array_equal(sub, pred[[3, 0]])


def test_best_dim():
    import pandas as pd

    from stego_probe.summaries import best_dim

    rows = [
        ("stego", 3, 0, "kmeans", "miou", 10.0),
        ("stego", 3, 1, "kmeans", "miou", 30.0),  # mean 20
        ("stego", 12, 0, "kmeans", "miou", 25.0),  # mean 25: best for kmeans
        ("stego", 3, 0, "linear", "miou", 90.0),
        ("stego", 12, 0, "kmeans", "accuracy", 1.0),
        ("pca", 6, 0, "kmeans", "miou", 99.0),
    ]
    df = pd.DataFrame(rows, columns=["method", "dim", "seed", "probe", "metric", "value"])
    assert best_dim(df, "stego") == 12
    assert best_dim(df, "stego", "linear") == 3
    assert best_dim(df, "rp") is None


# ------------------------------------------------------------------------------------------
# labels that say what was run
# ------------------------------------------------------------------------------------------


def _all_texts(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    FigureCanvasAgg(fig).draw()
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]


def test_demo_summary_names_the_backbone_and_the_seeds(demo_run):
    text = demo_run["stdout"]
    summary = text[text.index("miou (%)") : text.index(CLAIMS_HEADER)]
    # one seed: the mean only, said so; the raw features are the descriptor's, not DINO's
    assert "±" not in summary and "1 seed (n=1)" in summary and "(n=1)" in summary
    assert "descriptor (raw)" in summary and "DINO" not in summary
    assert "dino" not in summary.lower().replace("descriptor", "")


CLAIMS_HEADER = "what the demo shows: the paper's qualitative claims"


def test_demo_prints_one_verdict_per_claim(demo_run):
    from stego_probe.claims import FRAMING, VERDICTS, check_claims, format_verdicts

    text = demo_run["stdout"]
    section = text[text.index(CLAIMS_HEADER) : text.index("results: ")]
    # after the tables, before the paths; the framing first (wrapped), then the verdicts
    assert text.index("cluster distinctness") < text.index(CLAIMS_HEADER)
    assert " ".join(section.split()).count(FRAMING) == 1
    lines = [line for line in section.splitlines() if line.startswith("claim ")]
    assert [line.split(" ", 2)[1] for line in lines] == ["1", "2", "3", "4", "5"]
    for line in lines:
        assert any(line.startswith(f"claim {line.split()[1]} {v}: ") for v in VERDICTS), line
        assert "Evidence: " in line
    # the lines are the library's verdicts on the written table, not the demo's own analysis
    table = check_claims(read_results(demo_run["out"] / "results.csv"))
    assert lines == format_verdicts(table).splitlines()
    # one seed: the means alone, said so; the raw features named after their backbone
    assert "±" not in "\n".join(lines) and "n=1 seed (no error bars)" in lines[0]
    assert "descriptor (raw)" in lines[1] and "DINO" not in "\n".join(lines)
    assert "at each small D (3, 12)" in lines[0]  # QUICK dims


@pytest.mark.slow
def test_demo_figures_label_the_descriptor_backbone(demo_run, tmp_path, monkeypatch):
    from stego_probe import plots

    figs = {}

    def capture(fig, path, dpi=200):
        figs[Path(path).stem] = fig
        return Path(path)

    monkeypatch.setattr(plots, "save_figure", capture)
    df = read_results(demo_run["out"] / "results.csv")
    config = demo.demo_config(quick=True)
    demo.extra_figures(config, df, demo_run["out"], tmp_path)
    plots.plot_all(df, tmp_path, published=False, fmt="png")
    assert set(figs) == set(FIGURES)
    for name, fig in figs.items():
        texts = _all_texts(fig)
        bad = [t for t in texts if "DINO" in t or "ViT" in t or "CRF" in t]
        assert not bad, (name, bad)
    qual = [ax.get_title() for ax in figs["qualitative"].axes if ax.get_title()]
    assert qual[:3] == ["Image", "Ground truth", "descriptor (raw)\nD=64, k-means"]
    assert qual[3].startswith("STEGO\nD=") and qual[4].startswith("PCA\nD=")
    maps = [ax.get_title() for ax in figs["feature_map"].axes]
    assert maps[0] == "descriptor (raw), D=64" and maps[1].startswith("STEGO, D=")
    assert "backbone width $C=64$" in figs["all_datasets_miou"].axes[0].get_title()
    assert (
        "1 seed (n=1): no error bars" in figs["all_datasets_miou"].legends[0].get_title().get_text()
    )


def _summary_rows(backbone, seeds):
    import pandas as pd

    rows = []
    for method in ("dino", "pca"):
        for s in seeds:
            rows.append(
                {
                    "backbone": backbone,
                    "method": method,
                    "dim": 64 if method == "dino" else 3,
                    "seed": s,
                    "probe": "kmeans",
                    "crf": False,
                    "mode": "pixel",
                    "metric": "miou",
                    "value": 10.0 + 2.0 * s,
                }
            )
    return pd.DataFrame(rows)


def test_summary_table_states_seeds_and_backbone():
    from stego_probe.sweep import summary_table

    one = summary_table(_summary_rows("descriptor", [0]))
    assert one.loc[("descriptor (raw)", 64), "kmeans"] == " 10.0 (n=1)"
    assert one.attrs["note"] == "1 seed (n=1): mean only"
    assert "±" not in one.to_string() and "DINO" not in one.to_string()
    three = summary_table(_summary_rows("dino_vits8", [0, 1, 2]))
    assert three.loc[("DINO", 64), "kmeans"] == f" 12.0 ± {np.std([10, 12, 14], ddof=1):4.1f} (n=3)"
    assert three.attrs["note"] == "mean ± sample std over 3 seeds"
    assert list(three.index.names) == ["method", "dim"]
    # a re-run with the same seed counts once (the last wins), as in the figures
    rerun = _summary_rows("descriptor", [0, 0])
    rerun.loc[1, "value"] = 20.0
    assert summary_table(rerun).loc[("descriptor (raw)", 64), "kmeans"] == " 20.0 (n=1)"
    # CRF wording only with CRF rows; then a method with CRF rows is split in two
    crf = _summary_rows("dino_vits8", [0])
    crf = pd_concat(crf, crf[crf.method == "dino"].assign(crf=True, value=50.0))
    table = summary_table(crf)
    assert table.loc[("DINO with CRF", 64), "kmeans"] == " 50.0 (n=1)"
    assert table.loc[("DINO w/o CRF", 64), "kmeans"] == " 10.0 (n=1)"
    assert ("PCA", 3) in table.index
    assert not any("CRF" in str(i) for i in three.index.get_level_values(0))


def pd_concat(*frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)
