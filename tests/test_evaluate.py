"""Tests of the evaluation pipeline (arrays, stores, CLI)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from probe_helpers import assign_confusion

from stego_probe.cli.main import main
from stego_probe.evaluate import evaluate_codes, evaluate_stores, predict_batch
from stego_probe.metrics import ConfusionAccumulator, confusion_matrix, scores
from stego_probe.probes import ClusterLookupProbe, KMeansProbe, LinearProbe
from stego_probe.probes.defaults import LINEAR_MAX_IMAGES
from stego_probe.results import RESULT_COLUMNS, read_results
from stego_probe.store import FeatureStore

K = 3
FAST = {
    "kmeans": {"niter": 10, "nredo": 1},
    "cluster": {"steps": 30, "batch_size": 4},
    "linear": {"steps": 300, "batch_size": 4},
}


def onehot_data(n=8, grid=(4, 4), patch=2, d=5, noise=0.05, seed=0):
    """Codes = one-hot of row-stripe token labels + noise, (n, d, h, w); labels (n, H, W).

    Labels are constant along rows and aligned with tokens, so the upsampled code of a pixel
    always weighs its own token's code most: pixel and token predictions agree exactly.
    """
    rng = np.random.default_rng(seed)
    tok = np.repeat(rng.integers(0, K, (n, grid[0], 1)), grid[1], axis=2)
    codes = np.zeros((n, d, *grid), np.float32)
    codes[:, :K] = np.eye(K)[tok].transpose(0, 3, 1, 2)
    codes += rng.normal(0, noise, codes.shape).astype(np.float32)
    pix = np.repeat(np.repeat(tok, patch, 1), patch, 2)
    return codes, tok, pix


def make_store(path, codes, labels, flipped=None, **prov):
    """A complete store from channel-first codes (n, C, h, w) and labels (n, H, W)."""
    n, c, h, w = codes.shape
    provenance = {
        "dataset": "toy",
        "split": "train",
        "backbone": "toy_backbone",
        "weights_sha256": "abc",
        "n_classes": K,
        "class_names": ["a", "b", "c"],
        **prov,
    }
    store = FeatureStore.create(
        path,
        n_images=n,
        grid=(h, w),
        dim=c,
        label_shape=labels.shape[1:],
        provenance=provenance,
        chunk_images=4,
        flipped=flipped is not None,
    )
    for b in range(store.n_blocks):
        lo, hi = store.block_range(b)
        store.write_block(
            b,
            codes[lo:hi].transpose(0, 2, 3, 1),
            labels[lo:hi],
            [f"im{i}" for i in range(lo, hi)],
            None if flipped is None else flipped[lo:hi].transpose(0, 2, 3, 1),
        )
    store.mark_complete()
    return FeatureStore.open(path)


# ------------------------------------------------------------------ arrays


def test_evaluate_codes_recovers_known_truth():
    codes, _, pix = onehot_data()
    vcodes, _, vpix = onehot_data(seed=1)
    vpix[:, 0, :] = -1  # ignored pixels must not count
    res = evaluate_codes(codes, pix, vcodes, vpix, K, probe_kwargs=FAST)
    assert set(res) == {"kmeans", "cluster", "linear"}
    for name in ("kmeans", "linear"):
        assert res[name]["accuracy"] == pytest.approx(100.0)
        assert res[name]["miou"] == pytest.approx(100.0)
    assert res["linear"]["match"] == "identity" and res["kmeans"]["match"] == "hungarian"
    assert res["kmeans"]["n_pixels"] == int((vpix >= 0).sum())
    # a probe fitted on codes unrelated to the labels is at chance, so the pipeline can fail
    noise = np.random.default_rng(2).normal(size=vcodes.shape).astype(np.float32)
    bad = evaluate_codes(codes, pix, noise, vpix, K, probes="linear", probe_kwargs=FAST)
    assert bad["linear"]["accuracy"] < 80


def test_pixel_and_token_mode_agree_on_token_aligned_labels():
    codes, _, pix = onehot_data(noise=0.2)
    vcodes, vtok, vpix = onehot_data(seed=3, noise=0.2)
    kw = dict(probes="kmeans,linear", probe_kwargs=FAST, seed=1)
    px, fitted = evaluate_codes(codes, pix, vcodes, vpix, K, return_probes=True, **kw)
    tk = evaluate_codes(codes, pix, vcodes, vpix, K, mode="token", **kw)
    for name in ("kmeans", "linear"):
        # every token covers patch^2 = 4 pixels with the same prediction
        np.testing.assert_array_equal(px[name]["tp"], 4 * tk[name]["tp"])
        np.testing.assert_array_equal(px[name]["fp"], 4 * tk[name]["fp"])
        assert px[name]["miou"] == pytest.approx(tk[name]["miou"])
    # token-grid labels given directly are used as they are
    tk2 = evaluate_codes(codes, pix, vcodes, vtok, K, mode="token", **kw)
    assert tk2["kmeans"]["accuracy"] == pytest.approx(tk["kmeans"]["accuracy"])


def test_kmeans_pixel_assignment_equals_upsampling_the_code():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(3, 6, 4, 4)).astype(np.float32)
    labels = rng.integers(0, K, (3, 9, 7))
    for metric in ("cosine", "euclidean"):
        probe = KMeansProbe(4, niter=5, nredo=1, metric=metric).fit(codes)
        ours = confusion_matrix(predict_batch("kmeans", probe, codes, (9, 7)), labels, 4, K)
        ref = assign_confusion(probe, codes, labels, ConfusionAccumulator(4, K)).matrix
        np.testing.assert_array_equal(ours, ref)


def test_flip_codes_are_averaged():
    codes, _, pix = onehot_data()
    vcodes, _, vpix = onehot_data(seed=1, noise=0.5)
    other = np.random.default_rng(5).normal(size=vcodes.shape).astype(np.float32)
    kw = dict(probes="linear,cluster", probe_kwargs=FAST)
    flipped = evaluate_codes(codes, pix, vcodes, vpix, K, flip_codes=other, **kw)
    direct = evaluate_codes(codes, pix, 0.5 * (vcodes + other), vpix, K, **kw)
    plain = evaluate_codes(codes, pix, vcodes, vpix, K, **kw)
    for name in ("linear", "cluster"):
        np.testing.assert_array_equal(flipped[name]["tp"], direct[name]["tp"])
    assert not np.array_equal(flipped["linear"]["tp"], plain["linear"]["tp"])


def test_crf_matches_manual_pipeline():
    pytest.importorskip("pydensecrf.densecrf")
    from stego_probe.evaluate import log_probs_batch
    from stego_probe.probes import batch_crf

    codes, _, pix = onehot_data(n=4, noise=0.3)
    images = (np.random.default_rng(0).integers(0, 256, (*pix.shape, 3))).astype(np.uint8)
    res, probes = evaluate_codes(
        codes, pix, codes, pix, K, probes="cluster", crf=True, val_images=images,
        probe_kwargs=FAST, return_probes=True,
    )  # fmt: skip
    assert set(res) == {"cluster", "cluster+crf"}
    lp = log_probs_batch("cluster", probes["cluster"], codes, pix.shape[1:])
    pred = batch_crf(images, lp)
    manual = scores(confusion_matrix(pred, pix, K, K))
    np.testing.assert_array_equal(res["cluster+crf"]["tp"], manual["tp"])
    with pytest.raises(ValueError, match="val_images"):
        evaluate_codes(codes, pix, codes, pix, K, probes="cluster", crf=True, probe_kwargs=FAST)


def test_evaluate_codes_errors():
    codes, _, pix = onehot_data(n=4)
    nan = codes.copy()
    nan[1, 0, 2, 2] = np.nan
    with pytest.raises(ValueError, match="val_codes: expected finite"):
        evaluate_codes(codes, pix, nan, pix, K, probes="kmeans")
    with pytest.raises(ValueError, match="train_codes: empty split"):
        evaluate_codes(codes[:0], pix[:0], codes, pix, K, probes="kmeans")
    with pytest.raises(ValueError, match=r"val_labels: label values \[3\]"):
        evaluate_codes(codes, pix, codes, np.full_like(pix, 3), K, probes="kmeans")
    with pytest.raises(ValueError, match="code width"):
        evaluate_codes(codes, pix, codes[:, :4], pix, K, probes="kmeans")
    with pytest.raises(ValueError, match="unknown probe"):
        evaluate_codes(codes, pix, codes, pix, K, probes="svm")
    with pytest.raises(ValueError, match="val_labels: no labelled pixel"):
        evaluate_codes(codes, pix, codes, np.full_like(pix, -1), K, probes="kmeans",
                       probe_kwargs=FAST)  # fmt: skip
    with pytest.raises(ValueError, match="train_labels: no labelled pixel"):
        evaluate_codes(codes, np.full_like(pix, 255), codes, pix, K, probes="linear",
                       probe_kwargs=FAST)  # fmt: skip


# ------------------------------------------------------------------ stores and CLI


@pytest.fixture
def stores(tmp_path):
    codes, _, pix = onehot_data(n=8)
    vcodes, _, vpix = onehot_data(n=6, seed=1)
    other = np.random.default_rng(5).normal(size=vcodes.shape).astype(np.float16)
    train = make_store(tmp_path / "train", codes, pix)
    val = make_store(tmp_path / "val", vcodes, vpix, flipped=other, split="val")
    return train, val, (codes, pix, vcodes, vpix, other.astype(np.float32))


def test_evaluate_stores_rows_and_agreement_with_arrays(stores):
    train, val, (codes, pix, vcodes, vpix, other) = stores
    kw = dict(probes=["kmeans", "linear"], probe_kwargs=FAST, progress=False, batch_size=4)
    frame = evaluate_stores(train, val, **kw)
    assert list(frame.columns) == RESULT_COLUMNS
    acc = frame[frame.metric == "accuracy"].set_index("probe")["value"]
    assert acc["kmeans"] == pytest.approx(100.0) and acc["linear"] == pytest.approx(100.0)
    row = frame.iloc[0]
    assert (row["dataset"], row["backbone"], row["method"], row["dim"]) == (
        "toy",
        "toy_backbone",
        "dino",
        5,
    )
    assert (row["mode"], row["split"], row["weights_sha256"]) == ("pixel", "val", "abc")
    assert set(frame["metric"]) >= {"miou", "iou:a", "precision:b", "recall:c"}
    # the flip average reads tokens_flipped (stored as float16)
    ev = evaluate_stores(train, val, flip=True, **kw)
    assert set(ev["mode"]) == {"pixel_flip"}
    ref = evaluate_codes(
        codes, pix, 0.5 * (vcodes.astype(np.float16).astype(np.float32) + other), vpix, K,
        probes="kmeans", probe_kwargs=FAST,
    )  # fmt: skip
    got = ev[(ev.probe == "kmeans") & (ev.metric == "miou")]["value"].item()
    assert got == pytest.approx(ref["kmeans"]["miou"], abs=1e-6)
    tok = evaluate_stores(train, val, mode="token", **kw)
    assert set(tok["mode"]) == {"token"}


@pytest.mark.parametrize("solver,streamed", [("adam", False), ("lbfgs", False), ("lbfgs", True)])
def test_store_training_stream_equals_fit_on_arrays(stores, solver, streamed, monkeypatch):
    # Adam: the seeded mini-batch stream; L-BFGS: passes over the store (cached by the probe,
    # or read and projected again on every pass when the store is large)
    import stego_probe.evaluate as ev
    import stego_probe.probes.linear as linear_mod

    if streamed:
        monkeypatch.setattr(ev, "IN_MEMORY_BYTES", 0)
        monkeypatch.setattr(ev, "PASS_CHUNK_IMAGES", 5)
        monkeypatch.setattr(linear_mod, "PASS_CACHE_BYTES", 0)
    train, val, (codes, pix, *_) = stores
    kw = {
        "cluster": {"steps": 7, "batch_size": 3},
        "linear": {"steps": 7, "batch_size": 3, "solver": solver, "tol": 1e-6},
    }
    _, probes = evaluate_stores(
        train, val, probes="cluster,linear", probe_kwargs=kw, seed=4, progress=False,
        return_probes=True,
    )  # fmt: skip
    x = codes.astype(np.float16).astype(np.float32)  # the store keeps float16
    lin = LinearProbe(K, random_state=4, **kw["linear"]).fit(x, pix)
    clu = ClusterLookupProbe(K, random_state=4, **kw["cluster"]).fit(x)
    if solver == "adam":
        np.testing.assert_allclose(probes["linear"].coef_, lin.coef_, atol=1e-6)
    else:  # the store path takes its input statistics from a token sample, fit() from all codes
        assert probes["linear"].converged_ and lin.converged_
        assert probes["linear"].loss_history_[-1] == pytest.approx(lin.loss_history_[-1], abs=1e-6)
        np.testing.assert_array_equal(probes["linear"].predict(x), lin.predict(x))
    np.testing.assert_allclose(probes["cluster"].cluster_centers_, clu.cluster_centers_, atol=1e-6)


def test_crf_images_rebuilt_from_store_provenance(tmp_path):
    pytest.importorskip("pydensecrf.densecrf")
    from stego_probe.backbones import get_backbone
    from stego_probe.data import get_dataset
    from stego_probe.data.transforms import denormalize_to_uint8, stego_transform
    from stego_probe.evaluate import dataset_for_store, store_images
    from stego_probe.extract import extract

    bb = get_backbone("descriptor")
    ds = get_dataset("synthetic", split="val", n_images=3, size=(24, 32), seed=2)
    store = extract(ds, bb, tmp_path / "val", res=16, batch_size=3, progress=False)
    rebuilt = dataset_for_store(store)
    assert rebuilt.ids == ds.ids and rebuilt.info["seed"] == 2
    images = store_images(store, rebuilt)([0, 2], [store.ids[0], store.ids[2]])
    expected = denormalize_to_uint8(stego_transform(16, mean=bb.mean, std=bb.std)(ds[2])[0])
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[1], expected)
    wrong = store_images(store, get_dataset("synthetic", split="train", n_images=3))
    with pytest.raises(ValueError, match="has id"):
        wrong([0], [store.ids[0]])
    frame = evaluate_stores(
        store, store, probes="linear", crf=True, probe_kwargs=FAST, progress=False
    )
    assert set(frame["crf"]) == {False, True}


def test_evaluate_stores_refuses_mismatches(stores, tmp_path):
    train, val, (codes, pix, vcodes, vpix, _) = stores
    kw = dict(probes="kmeans", probe_kwargs=FAST, progress=False)
    other_bb = make_store(tmp_path / "bb", vcodes, vpix, backbone="dino_vitb8")
    with pytest.raises(ValueError, match="backbone: 'toy_backbone' != 'dino_vitb8'"):
        evaluate_stores(train, other_bb, **kw)
    other_k = make_store(tmp_path / "k", vcodes, vpix, n_classes=4, class_names=list("abcd"))
    with pytest.raises(ValueError, match="n_classes: 3 != 4"):
        evaluate_stores(train, other_k, **kw)
    plain_val = make_store(tmp_path / "plain", vcodes, vpix)
    with pytest.raises(ValueError, match="--flipped"):
        evaluate_stores(train, plain_val, flip=True, **kw)
    nan = vcodes.copy()
    nan[0, 0, 0, 0] = np.nan
    nan_val = make_store(tmp_path / "nan", nan, vpix)
    with pytest.raises(ValueError, match="expected finite"):
        evaluate_stores(train, nan_val, **kw)


def test_cli_evaluate_appends_rows(stores, tmp_path, capsys):
    train, val, _ = stores
    out = tmp_path / "res" / "results.csv"
    argv = ["evaluate", "--train-store", str(train.path), "--val-store", str(val.path),
            "--probe", "kmeans,linear", "--probe", "cluster", "--steps", "20",
            "--train-batch-size", "4", "--niter", "5", "--nredo", "1", "--no-progress",
            "--seeds", "0", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "kmeans" in printed and "miou" in printed
    df = read_results(out)
    assert list(df.columns[: len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert set(df["probe"]) == {"kmeans", "linear", "cluster"}
    assert set(df["method"]) == {"dino"}
    n = len(df)
    assert main(argv + ["--mode", "token", "--seed", "1"]) == 0
    df2 = read_results(out)
    assert len(df2) == 2 * n and set(df2["mode"]) == {"pixel", "token"}
    pd.testing.assert_frame_equal(df2.iloc[:n], df)
    # bad input: error message, exit status 1, nothing lost
    assert main(argv[:2] + [str(tmp_path / "missing")] + argv[3:]) == 1
    assert "no feature store" in capsys.readouterr().err
    assert len(read_results(out)) == 2 * n


def test_cli_evaluate_linear_solver_flag_and_settings(stores, tmp_path, capsys):
    train, val, _ = stores
    out = tmp_path / "lin.csv"
    argv = ["evaluate", "--train-store", str(train.path), "--val-store", str(val.path),
            "--probe", "linear", "--no-progress", "--seeds", "0", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "linear L-BFGS stopped after" in capsys.readouterr().out
    settings = json.loads((tmp_path / "lin.csv.settings.json").read_text())["points"]
    (record,) = settings.values()
    assert record["settings"]["linear_solver"] == "lbfgs" and "steps" not in record["settings"]
    # the cap as it acts: the store is smaller than the default cap, so every image was read
    assert train.n_images < LINEAR_MAX_IMAGES
    assert record["settings"]["linear_max_images"] is None
    # so 'all' (or any cap above the store's size) reruns the same rows: nothing recomputed
    assert main(argv + ["--linear-max-images", "all"]) == 0
    assert "already in" in capsys.readouterr().out
    # a cap below it gives other rows: refused on the same --out, recorded on another
    assert main(argv + ["--linear-max-images", "3"]) == 1
    assert "--linear-max-images None there, 3 now" in capsys.readouterr().err
    assert main(argv[:-1] + [str(tmp_path / "cap.csv"), "--linear-max-images", "3"]) == 0
    capsys.readouterr()
    settings = json.loads((tmp_path / "cap.csv.settings.json").read_text())["points"]
    assert next(iter(settings.values()))["settings"]["linear_max_images"] == 3
    with pytest.raises(SystemExit):
        main(argv + ["--linear-max-images", "0"])
    assert "positive integer (>= 1) or 'all'" in capsys.readouterr().err
    # the Adam parity mode on the same --out: other numbers, so the rerun is refused
    adam = ["--linear-solver", "adam", "--steps", "20", "--train-batch-size", "4"]
    assert main(argv + adam) == 1
    assert "--linear-solver 'lbfgs' there, 'adam' now" in capsys.readouterr().err
    assert main(argv[:-1] + [str(tmp_path / "adam.csv")] + adam) == 0
    assert "L-BFGS" not in capsys.readouterr().out
    # the token-sample solver: no pass over the store, recorded with the sample size
    tok = ["--linear-solver", "tokens", "--n-tokens", "500"]
    assert main(argv[:-1] + [str(tmp_path / "tok.csv")] + tok) == 0
    assert "passes over the token sample" in capsys.readouterr().out
    settings = json.loads((tmp_path / "tok.csv.settings.json").read_text())["points"]
    (record,) = settings.values()
    assert record["settings"]["linear_solver"] == "tokens"
    assert record["settings"]["stats_tokens"] == 500


def test_cli_evaluate_reads_the_settings_records_of_older_versions(stores, tmp_path, capsys):
    """An --out written before 0.3.0 (modes val / eval, --n-train, Adam linear probes without a
    solver in the record) keeps its meaning: an L-BFGS rerun is refused, the same Adam settings
    resume without recomputing, and the renamed --n-tokens is compared as --n-train was."""
    train, val, _ = stores
    out = tmp_path / "old.csv"
    argv = ["evaluate", "--train-store", str(train.path), "--val-store", str(val.path),
            "--probe", "kmeans,linear", "--no-progress", "--seeds", "0", "--niter", "5",
            "--nredo", "1", "--n-tokens", "3000", "--out", str(out)]  # fmt: skip
    adam = ["--linear-solver", "adam", "--steps", "20", "--train-batch-size", "4"]
    assert main(argv + adam) == 0
    capsys.readouterr()
    # rewrite --out and its record as 0.2.0 wrote them
    table = out.read_text().replace(",pixel,", ",val,")
    out.write_text(table)
    path = tmp_path / "old.csv.settings.json"
    data = json.loads(path.read_text())
    points = {}
    for key, value in data["points"].items():
        fields = json.loads(key)
        fields = ["val" if f == "pixel" else f for f in fields]
        rec = dict(value["settings"])
        rec.pop("linear_solver", None)
        if "n_tokens" in rec:
            rec["n_train"] = rec.pop("n_tokens")
        points[json.dumps(fields)] = {**value, "settings": rec}
    path.write_text(json.dumps({**data, "points": points}))
    before = out.read_bytes()
    assert main(argv) == 1  # today's default solver: other numbers
    assert "--linear-solver 'adam' there, 'lbfgs' now" in capsys.readouterr().err
    assert main(argv[:-4] + ["--n-tokens", "4000", "--out", str(out)] + adam) == 1
    assert "--n-tokens 3000 there, 4000 now" in capsys.readouterr().err
    assert main(argv + adam) == 0  # the same settings: nothing recomputed
    assert "already in" in capsys.readouterr().out and out.read_bytes() == before


def _snapshot(path):
    """{relative path: bytes} of every file under ``path`` (to check nothing was touched)."""
    return {q.relative_to(path): q.read_bytes() for q in sorted(path.rglob("*")) if q.is_file()}


def test_cli_evaluate_bad_input_is_one_clear_line(stores, tmp_path, capsys):
    train, val, (_, _, vcodes, vpix, _) = stores
    base = ["evaluate", "--train-store", str(train.path), "--val-store", str(val.path),
            "--probe", "kmeans", "--niter", "2", "--nredo", "1", "--no-progress"]  # fmt: skip
    before, res = _snapshot(Path(train.path)), str(tmp_path / "r.csv")

    def err(argv):
        assert main(argv) == 1
        msg = capsys.readouterr().err.strip()
        assert len(msg.splitlines()) == 1 and "Traceback" not in msg
        return msg

    # a missing store names the option and the path
    msg = err(base[:3] + ["--val-store", str(tmp_path / "nope"), *base[5:], "--out", res])
    assert "--val-store" in msg and "nope" in msg and "no feature store" in msg
    # a val store of another backbone is refused, naming both stores and the difference
    other = make_store(tmp_path / "other", vcodes, vpix, backbone="other_vit", split="val")
    msg = err(base[:3] + ["--val-store", str(other.path), *base[5:], "--out", res])
    assert "refusing to mix" in msg and "'toy_backbone' != 'other_vit'" in msg
    # an --out that is not a results table fails before any work and is left as it was
    for name, content in (("binary.csv", bytes(range(256)) * 4), ("notes.csv", b"a,b\n1,2\n")):
        bad = tmp_path / name
        bad.write_bytes(content)
        msg = err(base + ["--out", str(bad)])
        assert str(bad) in msg and "results table" in msg
        assert bad.read_bytes() == content
    msg = err(base + ["--out", str(tmp_path)])
    assert "is a directory" in msg
    assert not (tmp_path / "r.csv").exists()
    assert _snapshot(Path(train.path)) == before


# ------------------------------------------------------------------ pre-fitted probes


def test_prefitted_probes_are_evaluated_as_given(stores):
    train, val, _ = stores
    kw = dict(probe_kwargs=FAST, progress=False, batch_size=4)
    frame, fitted = evaluate_stores(
        train, val, probes="kmeans,cluster,linear", seed=0, return_probes=True, **kw
    )
    # a refit with another seed and a single step would give other probes; given ones are kept
    again, used = evaluate_stores(
        train, val, probes=fitted, seed=7, steps=1, return_probes=True, **kw
    )
    assert all(used[n] is fitted[n] for n in fitted)
    pd.testing.assert_series_equal(frame["value"], again["value"])
    # None = fit this one as usual (same seed -> same k-means), the others are taken as given
    mixed = evaluate_stores(train, val, probes={"kmeans": None, "linear": fitted["linear"]}, **kw)
    assert list(dict.fromkeys(mixed["probe"])) == ["kmeans", "linear"]
    ref = frame[frame["probe"].isin(["kmeans", "linear"])].reset_index(drop=True)
    pd.testing.assert_series_equal(mixed["value"], ref["value"])
    with pytest.raises(ValueError, match=r"probes\['cluster'\]: expected a fitted probe"):
        evaluate_stores(train, val, probes={"cluster": "centroids.npy"}, **kw)


def test_released_checkpoint_probes_on_stores_eval_mode(tmp_path):
    """A released STEGO checkpoint (head + its own probes) evaluated in eval mode on stores of
    the checkpoint's dataset: the reference name 'potsdam' is accepted for 'potsdam3'."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from stego_fixtures import write_fake_checkpoint

    from stego_probe.projections.stego.checkpoint import import_checkpoint

    codes, _, pix = onehot_data(n=8, d=6)
    vcodes, _, vpix = onehot_data(n=6, d=6, seed=1)
    flipped = np.random.default_rng(3).normal(size=vcodes.shape).astype(np.float16)
    prov = dict(dataset="potsdam3", backbone="dino_vits8")
    train = make_store(tmp_path / "train", codes, pix, **prov)
    val = make_store(tmp_path / "val", vcodes, vpix, flipped=flipped, split="val", **prov)
    write_fake_checkpoint(tmp_path / "potsdam_test.ckpt", in_dim=6, dim=4, n_classes=K)
    head, hparams = import_checkpoint(tmp_path / "potsdam_test.ckpt")
    assert head.provenance_["fit_data"]["dataset"] == "potsdam3"
    assert head.provenance_["fit_data"]["reference_dataset"] == "potsdam"
    cluster, linear = head.probes()
    frame = evaluate_stores(
        train, val, probes={"cluster": cluster, "linear": linear}, projection=head,
        method="stego_released", flip=True, progress=False, batch_size=4,
    )  # fmt: skip
    assert set(frame["method"]) == {"stego_released"} and set(frame["mode"]) == {"pixel_flip"}
    assert set(frame["dim"]) == {4}
    # by hand: c = (head(x) + head(flipped tokens)) / 2, upsampled, the checkpoint's probes
    x = vcodes.astype(np.float16).astype(np.float32)
    c = 0.5 * (head.transform(x) + head.transform(flipped.astype(np.float32)))
    c = np.asarray(c, dtype=np.float32)
    for name, probe, match in (("cluster", cluster, "hungarian"), ("linear", linear, "identity")):
        acc = ConfusionAccumulator(K, K)
        acc.update(predict_batch(name, probe, c, vpix.shape[1:]), vpix)
        want = acc.scores(match=match)
        got = frame[(frame.probe == name)].set_index("metric")["value"]
        assert got["miou"] == pytest.approx(want["miou"], abs=1e-4)
        assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-4)


torch.set_num_threads(1)


def test_probe_results_do_not_depend_on_the_global_scale_of_the_codes():
    # the trap of issue 8 item 2: small-scale features must not handicap any probe
    codes, tok, pix = onehot_data(n=8, noise=0.2, seed=3)
    codes = codes + 2.0  # an offset, as raw backbone features have
    kw = dict(probes="kmeans,cluster,linear", mode="token", probe_kwargs=FAST)
    base = evaluate_codes(codes, tok, codes, tok, K, **kw)
    small = evaluate_codes(codes * 0.01, tok, codes * 0.01, tok, K, **kw)
    # cosine probes: the global scale cancels exactly (up to float rounding)
    for name in ("kmeans", "cluster"):
        assert small[name]["miou"] == pytest.approx(base[name]["miou"], abs=1e-6)
    # the linear probe standardises its input: equal within noise
    assert small["linear"]["accuracy"] == pytest.approx(base["linear"]["accuracy"], abs=1.0)
    assert base["linear"]["accuracy"] > 90
    # the reference's raw-input probe is the one with the trap
    raw = {**FAST, "linear": {**FAST["linear"], "solver": "adam", "standardize": "none"}}
    raw_small = evaluate_codes(
        codes * 0.01, tok, codes * 0.01, tok, K, probes="linear", mode="token", probe_kwargs=raw
    )
    assert raw_small["linear"]["accuracy"] < base["linear"]["accuracy"] - 10


# ------------------------------------------------------------------ k-means protocol, exports


def test_kmeans_protocol_is_recorded_in_the_rows(stores):
    train, val, _ = stores
    kw = dict(probes="kmeans,linear", progress=False, batch_size=4, return_probes=True)
    probe_kwargs = {**FAST, "kmeans": {"niter": 40, "nredo": 2, "tol": 0}}
    frame, fitted = evaluate_stores(train, val, probe_kwargs=probe_kwargs, **kw)
    km = frame[frame.probe == "kmeans"]
    assert (km["kmeans_niter"] == 40).all() and (km["kmeans_nredo"] == 2).all()
    assert (km["kmeans_tol"] == 0).all()
    assert (km["kmeans_n_iter"] == fitted["kmeans"].n_iter_).all()
    assert 2 <= fitted["kmeans"].n_iter_ < 40 and fitted["kmeans"].converged_
    assert frame[frame.probe == "linear"][["kmeans_niter", "kmeans_n_iter"]].isna().all().all()
    # an early stop and a fixed count are recorded as such (tol=None is stored as 0)
    for tol, want in ((1e-2, 1e-2), (None, 0.0)):
        probe_kwargs["kmeans"]["tol"] = tol
        frame, fitted = evaluate_stores(train, val, probe_kwargs=probe_kwargs, **kw)
        km = frame[frame.probe == "kmeans"]
        assert (km["kmeans_tol"] == want).all()
        assert (km["kmeans_n_iter"] == fitted["kmeans"].n_iter_).all()
    assert (km["kmeans_n_iter"] == 40).all()  # tol=None: exactly niter iterations


def test_old_results_tables_without_kmeans_columns_are_read(tmp_path):
    from stego_probe.results import KMEANS_COLUMNS, LINEAR_COLUMNS, append_csv, make_rows

    old = tmp_path / "old.csv"
    newer = KMEANS_COLUMNS + LINEAR_COLUMNS + ["kmeans_engine"]
    cols = [c for c in RESULT_COLUMNS if c not in newer]
    row = {**{c: "x" for c in cols}, "dim": 3, "seed": 0, "crf": False, "value": 1.5}
    pd.DataFrame([row], columns=cols).to_csv(old, index=False)
    df = read_results(old)
    assert list(df.columns) == RESULT_COLUMNS and df[KMEANS_COLUMNS].isna().all().all()
    assert df["linear_solver"].tolist() == [""] and df["kmeans_engine"].tolist() == [""]
    assert df[["linear_train_images", "linear_n_iter"]].isna().all().all()
    new = make_rows({"probe": "kmeans", "kmeans_niter": 300, "kmeans_tol": 0.0}, {"miou": 2.0})
    both = append_csv(new, old)
    assert both["kmeans_niter"].tolist()[1] == 300 and np.isnan(both["kmeans_niter"].iloc[0])
    assert list(read_results(old)["kmeans_niter"].fillna(-1)) == [-1, 300]


def test_saved_predictions_rescore_to_the_reported_numbers(stores, tmp_path):
    from stego_probe.export import iter_predictions, score_predictions

    train, val, (_, _, _, vpix, _) = stores
    out = tmp_path / "pred"
    # 4 clusters for 3 classes: the Hungarian matching leaves one cluster without a class
    probe_kwargs = {**FAST, "kmeans": {"niter": 30, "nredo": 1, "n_clusters": 4}}
    for mode in ("pixel", "token"):
        folder = out / mode
        frame = evaluate_stores(
            train, val, probes="kmeans,linear", probe_kwargs=probe_kwargs, mode=mode,
            batch_size=4, progress=False, save_predictions=folder,
        )  # fmt: skip
        for probe in ("kmeans", "linear"):
            got = score_predictions(folder / probe, val)
            want = frame[frame.probe == probe].set_index("metric")["value"]
            assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-9)
            assert got["miou"] == pytest.approx(want["miou"], abs=1e-9)
            mapping = json.loads((folder / probe / "mapping.json").read_text())
            assert mapping["class_names"] == ["a", "b", "c"] and mapping["dtype"] == "uint8"
            assert list(mapping["files"]) == list(val.ids)
            preds = dict(iter_predictions(folder / probe))
            shape = vpix.shape[1:] if mode == "pixel" else val.grid
            assert all(p.shape == tuple(shape) for p in preds.values())
            assert set(np.unique(np.concatenate([p.ravel() for p in preds.values()]))) <= {
                -1, 0, 1, 2,
            }  # fmt: skip
        km = json.loads((folder / "kmeans" / "mapping.json").read_text())
        assert km["n_clusters"] == 4 and sorted(km["cluster_to_class"]) == [-1, 0, 1, 2]
    # every valid pixel of the one-hot data is predicted right by the linear probe
    lin = dict(iter_predictions(out / "pixel" / "linear"))
    np.testing.assert_array_equal(np.stack([lin[i] for i in val.ids]), vpix)
    with pytest.raises(ValueError, match="not an empty directory"):
        evaluate_stores(train, val, probes="linear", probe_kwargs=FAST, progress=False,
                        save_predictions=out)  # fmt: skip


def test_saved_probes_reload_and_predict_identically(stores, tmp_path):
    from stego_probe.export import load_probes, save_probes

    train, val, (_, _, vcodes, vpix, _) = stores
    kw = dict(probe_kwargs=FAST, progress=False, batch_size=4)
    frame, fitted = evaluate_stores(
        train, val, probes="kmeans,cluster,linear", return_probes=True, **kw
    )
    paths = save_probes(fitted, tmp_path / "probes", {"seed": 0})
    assert sorted(p.name for p in paths.values()) == ["cluster.npz", "kmeans.npz", "linear.npz"]
    loaded = load_probes(tmp_path / "probes")
    assert list(loaded) == ["kmeans", "cluster", "linear"]
    x = vcodes.astype(np.float16).astype(np.float32)
    for name, probe in loaded.items():
        assert type(probe) is type(fitted[name])
        np.testing.assert_array_equal(
            predict_batch(name, probe, x, vpix.shape[1:]),
            predict_batch(name, fitted[name], x, vpix.shape[1:]),
        )
    again = evaluate_stores(train, val, probes=loaded, **kw)
    pd.testing.assert_series_equal(again["value"], frame["value"])
    with pytest.raises(ValueError, match="not an empty directory"):
        save_probes(fitted, tmp_path / "probes")


def test_cli_evaluate_seeds_kmeans_flags_and_exports(stores, tmp_path, capsys):
    from stego_probe.export import load_probes, score_predictions

    train, val, _ = stores
    out = tmp_path / "r.csv"
    argv = ["evaluate", "--train-store", str(train.path), "--val-store", str(val.path),
            "--probe", "kmeans,linear", "--steps", "20", "--train-batch-size", "4",
            "--niter", "60", "--tol", "0", "--nredo", "2", "--seeds", "0,1", "--no-progress",
            "--save-probes", str(tmp_path / "probes"),
            "--save-predictions", str(tmp_path / "pred"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mean ± std over 2 seed(s) 0,1" in printed and "fixed point reached" in printed
    df = read_results(out)
    assert sorted(df["seed"].unique()) == [0, 1]
    km = df[df.probe == "kmeans"]
    assert (km["kmeans_niter"] == 60).all() and (km["kmeans_nredo"] == 2).all()
    assert (km["kmeans_tol"] == 0).all() and (km["kmeans_n_iter"] < 60).all()
    for seed in (0, 1):
        rows = df[(df.seed == seed) & (df.probe == "kmeans")].set_index("metric")["value"]
        got = score_predictions(tmp_path / "pred" / f"seed{seed}" / "kmeans", val)
        assert got["miou"] == pytest.approx(rows["miou"], abs=1e-9)
        probes = load_probes(tmp_path / "probes" / f"seed{seed}")
        assert probes["kmeans"].random_state == seed and probes["kmeans"].nredo == 2
    # --tol none -> exactly niter iterations, recorded as tol 0
    assert main(argv[:-6] + ["--tol", "none", "--seed", "3", "--out", str(out)]) == 0
    capsys.readouterr()
    km = read_results(out).query("seed == 3 and probe == 'kmeans'")
    assert (km["kmeans_n_iter"] == 60).all() and (km["kmeans_tol"] == 0).all()


@pytest.mark.parametrize(
    "flag,value,words",
    [
        ("--tol", "-1", "finite number >= 0 or 'none'"),
        ("--tol", "abc", "a number >= 0 or 'none'"),
        ("--tol", "nan", "finite number"),
        ("--niter", "0", "positive integer"),
        ("--nredo", "1.5", "positive integer"),
        ("--seeds", "0,0", "distinct non-negative"),
        ("--seeds", "a", "comma-separated integers"),
        ("--seed", "1,2", "expected one seed"),
    ],
)
def test_cli_evaluate_bad_kmeans_flags(stores, tmp_path, capsys, flag, value, words):
    train, val, _ = stores
    argv = ["evaluate", "--train-store", str(train.path), "--val-store", str(val.path),
            "--out", str(tmp_path / "r.csv"), flag, value]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and words in err
    assert not (tmp_path / "r.csv").exists()


def test_cli_evaluate_refuses_non_empty_export_folders(stores, tmp_path, capsys):
    train, val, _ = stores
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("keep")
    for flag in ("--save-probes", "--save-predictions"):
        argv = ["evaluate", "--train-store", str(train.path), "--val-store", str(val.path),
                "--probe", "kmeans", "--niter", "5", "--seeds", "0", flag, str(busy),
                "--no-progress", "--out", str(tmp_path / "r.csv")]  # fmt: skip
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert flag in err and "not an empty directory" in err
    assert (busy / "x.txt").read_text() == "keep" and not (tmp_path / "r.csv").exists()


@pytest.fixture(scope="module")
def demo_world_stores(tmp_path_factory):
    """Train / val stores of the demo's world (synthetic scenes, descriptor backbone), small."""
    from stego_probe.backbones import get_backbone
    from stego_probe.data import get_dataset
    from stego_probe.extract import extract

    root = tmp_path_factory.mktemp("demo_world")
    backbone = get_backbone("descriptor")
    out = []
    for split, n in (("train", 48), ("val", 12)):
        ds = get_dataset("synthetic", split=split, n_images=n)
        out.append(extract(ds, backbone, str(root / split), res=64, progress=False))
    return out


@pytest.mark.slow
def test_full_width_pca_and_raw_features_agree_under_the_linear_probe(demo_world_stores):
    # A full-width PCA is a rotation of the (standardised) raw features: the linear probe
    # must see the same information in both. Before input standardisation the raw features
    # trailed by ~35 mIoU on the demo's data (Adam); the converged L-BFGS probe scores both
    # alike, to a tenth of a point.
    from stego_probe.projections import get_projection

    train, val = demo_world_stores
    pca = get_projection("pca", None, random_state=0).fit(train)
    kw = dict(probes="linear", steps=150, probe_kwargs={"linear": {"batch_size": 8}})
    raw = evaluate_stores(train, val, progress=False, **kw)
    rot = evaluate_stores(train, val, projection=pca, progress=False, **kw)
    miou = [f[f.metric == "miou"]["value"].item() for f in (raw, rot)]
    assert abs(miou[0] - miou[1]) < 0.1, miou
    assert min(miou) > 40, miou
    adam = {"linear": {"batch_size": 8, "solver": "adam"}}
    rot_adam, raw_adam = (
        evaluate_stores(train, val, projection=proj, progress=False, **{**kw, "probe_kwargs": adam})
        for proj in (pca, None)
    )
    got = [f[f.metric == "miou"]["value"].item() for f in (raw_adam, rot_adam)]
    assert abs(got[0] - got[1]) < 6, got  # Adam-150 with standardisation: within a few points
    parity = {"linear": {"batch_size": 8, "solver": "adam", "standardize": "none"}}
    old = evaluate_stores(train, val, progress=False, **{**kw, "probe_kwargs": parity})
    assert old[old.metric == "miou"]["value"].item() < miou[0] - 10  # the trap is real here


def test_nan_tokens_in_either_store_name_the_store_and_the_image(stores, tmp_path, monkeypatch):
    """One NaN token: every path that reads it (the k-means / statistics sample, the probe
    training stream, cached or streamed, the validation pass, flipped tokens) refuses with the
    store, the image index and the image id, never with a row of a projected matrix."""
    import stego_probe.evaluate as ev

    train, val, (codes, pix, vcodes, vpix, other) = stores
    bad = codes.copy()
    bad[5, 1, 2, 3] = np.nan
    bad_train = make_store(tmp_path / "bad_train", bad, pix)
    kw = dict(probe_kwargs=FAST, progress=False, batch_size=4)
    want = rf"'{bad_train.path}' has NaN .*image index 5, id 'im5'"
    for probes in ("kmeans", "linear", "cluster"):  # sample; sample (statistics); stream
        with pytest.raises(ValueError, match=want):
            evaluate_stores(bad_train, val, probes=probes, **kw)
    monkeypatch.setattr(ev, "IN_MEMORY_BYTES", 0)  # the training stream read batch by batch
    with pytest.raises(ValueError, match=want):
        evaluate_stores(bad_train, val, probes="cluster", **kw)
    monkeypatch.undo()
    # the validation store: its tokens, and its flipped tokens in eval mode
    vbad = vcodes.copy()
    vbad[2, 0, 1, 1] = np.inf
    bad_val = make_store(tmp_path / "bad_val", vbad, vpix, flipped=other, split="val")
    with pytest.raises(ValueError, match=rf"'{bad_val.path}' has NaN .*image index 2, id 'im2'"):
        evaluate_stores(train, bad_val, probes="kmeans", **kw)
    fbad = other.copy()
    fbad[4, 2, 0, 0] = np.nan
    bad_flip = make_store(tmp_path / "bad_flip", vcodes, vpix, flipped=fbad, split="val")
    with pytest.raises(
        ValueError, match=r"infinite tokens \(array tokens_flipped\).*image index 4, id 'im4'"
    ):
        evaluate_stores(train, bad_flip, probes="kmeans", flip=True, **kw)
    # the same stores without the bad values evaluate (the checks see only real damage)
    evaluate_stores(train, val, probes="kmeans", flip=True, **kw)


def test_kmeans_only_never_reads_the_whole_train_store(tmp_path, monkeypatch):
    """probes="kmeans" fits on a token sample: the train store is never preloaded (nor read
    as a whole batch stream); with a trained probe the preload happens (issue 13)."""
    import stego_probe.evaluate as ev
    from stego_probe.store import FeatureStore

    codes, _, pix = onehot_data(n=8)
    vcodes, _, vpix = onehot_data(n=6, seed=1)
    train = make_store(tmp_path / "train", codes, pix)
    val = make_store(tmp_path / "val", vcodes, vpix, split="val")
    calls = []

    def no_preload(store, *args, **kwargs):
        calls.append(store.path)
        raise AssertionError("the train store was preloaded")

    monkeypatch.setattr(ev, "preloaded", no_preload)
    whole = []
    real_tokens = FeatureStore.tokens

    def tokens(self, idx, *args, **kwargs):
        if self.path == train.path and not isinstance(idx, slice | int):
            whole.append(len(np.atleast_1d(idx)))  # a mini-batch read of the train store
        return real_tokens(self, idx, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "tokens", tokens)
    kw = {"kmeans": {"niter": 5, "nredo": 1}}
    df = ev.evaluate_stores(train, val, probes="kmeans", probe_kwargs=kw, progress=False)
    assert set(df["probe"]) == {"kmeans"} and not calls and not whole
    with pytest.raises(AssertionError, match="preloaded"):  # the check itself bites
        ev.evaluate_stores(train, val, probes=("kmeans", "cluster"), steps=2, progress=False)


def test_kmeans_sample_is_projected_by_blocks_and_statistics_see_it_raw(tmp_path, monkeypatch):
    """The token sample is projected block by block while it is drawn (same values as at
    once; the raw sample never whole), the linear probe's input statistics see it before
    k-means normalises it in place, and k-means clusters it without copying."""
    import stego_probe.store.tokens as store_tokens

    codes, _, pix = onehot_data(n=8, d=5, noise=0.3)
    codes *= 3.0  # norms far from 1: a normalised sample would show
    store = make_store(tmp_path / "s", codes, pix)
    monkeypatch.setattr(store_tokens, "TRANSFORM_BLOCK", 10)  # 128 tokens -> 13 blocks
    rows_per_call = []

    class Scale:
        def transform(self, x):
            if np.ndim(x) == 2:  # token rows: the sample (scoring projects image batches)
                rows_per_call.append(len(x))
            return np.asarray(x) * 2.0 + 1.0

    seen = {}
    fit_scaler = LinearProbe.fit_scaler
    monkeypatch.setattr(
        LinearProbe,
        "fit_scaler",
        lambda self, x: (seen.setdefault("stats", np.array(x)), fit_scaler(self, x))[1],
    )
    kfit = KMeansProbe.fit
    monkeypatch.setattr(
        KMeansProbe, "fit", lambda self, x, y=None: (seen.setdefault("km", x), kfit(self, x))[1]
    )
    evaluate_stores(store, store, probes="kmeans,linear", projection=Scale(),
                    probe_kwargs=FAST, seed=0, mode="token")  # fmt: skip
    expected = store.sample_tokens(1_000_000, seed=0) * 2.0 + 1.0
    np.testing.assert_allclose(seen["stats"], expected, rtol=1e-6)
    assert max(rows_per_call) <= 10 and sum(rows_per_call) == len(expected) == 128
    # k-means got that very array (no copy) and normalised it in place, after the statistics
    np.testing.assert_allclose(np.linalg.norm(seen["km"], axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(np.linalg.norm(seen["stats"], axis=1), 1.0)
