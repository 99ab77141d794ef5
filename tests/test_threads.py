"""The CPU thread policy (:mod:`stego_probe.threads`): resolution, restoring, wiring."""

from __future__ import annotations

import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from stego_probe import threads
from stego_probe.threads import (
    available_cores,
    check_threads,
    limit,
    resolve_threads,
    set_default,
    uses_threads,
)

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent / "experiments"))


def counts() -> tuple[int, int]:
    return torch.get_num_threads(), faiss.omp_get_max_threads()


@pytest.fixture
def no_env(monkeypatch):
    """No thread environment variables and no process default: "auto" is the bare policy."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    monkeypatch.setattr(threads, "_default", None)


@pytest.fixture
def one_thread():
    """Start (and end) every test at the suite's 1 torch / 1 FAISS thread."""
    before = counts()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    faiss.omp_set_num_threads(before[1])


# ------------------------------------------------------------------------------ resolving


def test_resolve_settings(no_env):
    cores = available_cores()
    assert resolve_threads("auto") == 1
    assert resolve_threads() == 1
    assert resolve_threads("auto", workload="large") == cores
    assert resolve_threads("AUTO") == 1
    assert resolve_threads(3) == 3
    assert resolve_threads("3", workload="large") == 3
    assert resolve_threads("all") == cores
    assert resolve_threads(None) is None


@pytest.mark.parametrize("bad", [0, -1, "0", "x", "", 1.5, True, [1]])
def test_bad_settings_name_threads(bad):
    with pytest.raises(ValueError, match="threads"):
        resolve_threads(bad)
    with pytest.raises(ValueError, match="threads"):
        with limit(bad):
            pass


def test_bad_workload():
    with pytest.raises(ValueError, match="workload"):
        resolve_threads(1, workload="huge")
    with pytest.raises(ValueError, match="workload"):
        uses_threads("huge")


def test_environment_and_process_default_set_auto(no_env, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert resolve_threads("auto") == 2
    monkeypatch.setenv(threads.ENV_VAR, "3")  # the package's own variable wins
    assert resolve_threads("auto", workload="large") == 3
    set_default(5)
    assert resolve_threads("auto") == 5
    assert resolve_threads(4) == 4  # an explicit setting still wins
    set_default("auto")  # back to the environment
    assert resolve_threads("auto") == 3
    monkeypatch.setenv(threads.ENV_VAR, "many")
    with pytest.raises(ValueError, match=threads.ENV_VAR):
        resolve_threads("auto")


def test_store_workload_by_token_size(tmp_path):
    from test_evaluate import make_store

    from stego_probe.threads import LARGE_STORE

    labels = np.zeros((1, 8, 8), np.int64)
    small = make_store(tmp_path / "s", np.zeros((1, 64, 4, 4), np.float32), labels)
    big = make_store(tmp_path / "b", np.zeros((1, LARGE_STORE // 16, 4, 4), np.float32), labels)
    assert threads.store_workload(small) == "small"
    assert threads.store_workload(big) == "large"
    assert threads.store_workload(str(big.path)) == "large"  # a path is opened
    assert threads.store_workload(tmp_path / "missing") == "small"
    assert threads.store_workload(None) == "small"


def test_check_threads_normalises():
    assert check_threads(" All ") == "all"
    assert check_threads("8") == 8
    assert check_threads(None) is None
    with pytest.raises(ValueError, match="--threads"):
        check_threads("-2", "--threads")


# ------------------------------------------------------------------------------ limit


def test_limit_sets_and_restores_torch_faiss_and_blas(one_thread):
    from threadpoolctl import threadpool_info

    def blas():
        return {
            i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"
        }

    before = blas()
    with limit(2) as n:
        assert n == 2
        assert counts() == (2, 2)
        assert set(blas().values()) <= {2}
    assert counts() == (1, 1)
    assert blas() == before
    with pytest.raises(RuntimeError, match="boom"):
        with limit(2):
            raise RuntimeError("boom")
    assert counts() == (1, 1)


def test_limit_none_changes_nothing(one_thread):
    with limit(None) as n:
        assert n is None
        assert counts() == (1, 1)


def test_nested_auto_inherits_an_explicit_setting_only(no_env, one_thread):
    with limit(2):
        assert resolve_threads("auto", workload="large") == 2
        with limit("auto") as n:
            assert n == 2
            assert counts() == (2, 2)
        assert counts() == (2, 2)
    assert counts() == (1, 1)
    with limit("auto") as n:  # an automatic outer count is not imposed on other workloads
        assert n == 1
        assert resolve_threads("auto", workload="large") == available_cores()


def test_uses_threads_reads_keyword_and_positional_settings(one_thread):
    seen = []

    @uses_threads()
    def work(a, threads="auto"):
        seen.append(counts())
        return a

    assert work(1, 2) == 1
    assert work(1, threads=2) == 1
    assert work(1, None) == 1  # library defaults: unchanged here
    assert seen == [(2, 2), (2, 2), (1, 1)]
    assert counts() == (1, 1)
    with pytest.raises(TypeError, match="threads"):
        uses_threads()(lambda a: a)


def test_set_num_threads_is_process_wide_and_sets_auto(no_env, one_thread):
    from stego_probe.sweep import set_num_threads  # the backward-compatible alias

    try:
        set_num_threads(2)
        assert counts() == (2, 2)
        assert resolve_threads("auto") == 2
        set_num_threads(None)  # changes nothing
        assert counts() == (2, 2)
    finally:
        set_default(None)


def test_passive_wait_only_when_it_can_take_effect(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert not threads.passive_wait()  # torch is imported: too late, nothing set
    assert "OMP_WAIT_POLICY" not in threads.os.environ


# ------------------------------------------------------------------------------ wiring


@pytest.fixture
def toy_stores(tmp_path):
    from test_evaluate import make_store, onehot_data

    codes, _, pix = onehot_data(n=8)
    vcodes, _, vpix = onehot_data(n=4, seed=1)
    return make_store(tmp_path / "train", codes, pix), make_store(
        tmp_path / "val", vcodes, vpix, split="val"
    )


def test_evaluate_stores_applies_and_restores(toy_stores, one_thread, no_env, monkeypatch):
    from stego_probe import evaluate

    seen = []
    real = evaluate.get_probe

    def spy(*args, **kwargs):
        seen.append(counts())
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "get_probe", spy)
    kw = dict(probes=["kmeans"], probe_kwargs={"kmeans": {"niter": 5, "nredo": 1}}, progress=False)
    frame = evaluate.evaluate_stores(*toy_stores, threads=2, **kw)
    assert not frame.empty
    assert seen == [(2, 2)]
    assert counts() == (1, 1)
    torch.set_num_threads(2)  # "auto" brings a 2-thread process down to 1 for the call
    faiss.omp_set_num_threads(2)
    evaluate.evaluate_stores(*toy_stores, **kw)
    assert seen[-1] == (1, 1)
    assert counts() == (2, 2)


def test_evaluate_stores_auto_uses_all_cores_on_vit_sized_stores(
    tmp_path, one_thread, no_env, monkeypatch
):
    from test_evaluate import make_store, onehot_data

    from stego_probe import evaluate
    from stego_probe.threads import LARGE_STORE

    codes, _, pix = onehot_data(n=4, d=LARGE_STORE // 16)  # 4 x 4 tokens of LARGE_STORE / 16
    store = make_store(tmp_path / "big", codes, pix)
    seen = []
    real = evaluate.get_probe

    def spy(*args, **kwargs):
        seen.append(counts())
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "get_probe", spy)
    kw = dict(probes=["kmeans"], probe_kwargs={"kmeans": {"niter": 20, "nredo": 1}}, progress=False)
    evaluate.evaluate_stores(store, store, **kw)
    cores = available_cores()
    assert seen == [(cores, cores)]
    assert counts() == (1, 1)


def test_run_sweep_applies_and_restores(tmp_path, one_thread, no_env, monkeypatch):
    from stego_probe import sweep

    seen = []
    real = sweep.check_dependencies

    def spy(*args, **kwargs):
        seen.append(counts())
        return real(*args, **kwargs)

    monkeypatch.setattr("stego_probe.sweep.run.check_dependencies", spy)  # run_sweep looks it up
    config = sweep.load_config(
        "synthetic",
        {
            "dataset_kwargs": {"n_images": 6, "size": [32, 32]},
            "train": {"res": 32},
            "val": {"res": 32},
            "methods": ["dino"],
            "seeds": [0],
            "probes": ["kmeans"],
            "probe_kwargs": {"kmeans": {"n_tokens": 500, "niter": 30, "nredo": 1}},
            "distinctness": {"enabled": False},
            "device": "cpu",
        },
    )
    df = sweep.run_sweep(config, tmp_path / "run", progress=False, threads=2)
    assert (df["probe"] == "kmeans").any()
    assert seen == [(2, 2)]
    assert counts() == (1, 1)
    with pytest.raises(ValueError, match="threads"):
        sweep.run_sweep(config, tmp_path / "run", progress=False, threads=0)


# ------------------------------------------------------------------------------ CLI

COMMANDS = {
    "sweep": ["sweep", "--preset", "synthetic", "--out", "o"],
    "evaluate": ["evaluate", "--train-store", "a", "--val-store", "b", "--out", "o.csv"],
    "extract": [
        "extract",
        "--dataset",
        "synthetic",
        "--split",
        "val",
        "--backbone",
        "descriptor",
        "--store",
        "s",
    ],  # fmt: skip
    "train-stego": ["train-stego", "--train-store", "a", "--preset", "synthetic", "--out", "h.pt"],
    "demo": ["demo"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_threads_option(command, capsys):
    from stego_probe.cli.main import build_parser

    parser = build_parser()
    argv = COMMANDS[command]
    assert parser.parse_args(argv).threads == "auto"
    assert parser.parse_args([*argv, "--threads", "1"]).threads == 1
    assert parser.parse_args([*argv, "--threads", "all"]).threads == "all"
    for bad in ("0", "x"):
        with pytest.raises(SystemExit) as e:
            parser.parse_args([*argv, "--threads", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "--threads" in err and repr(bad) in err


def test_cli_runs_the_command_under_its_threads(one_thread, no_env, monkeypatch, capsys):
    from stego_probe.cli import main as cli
    from stego_probe.cli import store

    seen = []

    def spy(path, option):
        seen.append(counts())
        raise FileNotFoundError(f"{option}: {path} does not exist")

    monkeypatch.setattr(store, "open_store", spy)
    argv = ["train-stego", "--train-store", "nowhere", "--preset", "synthetic", "--out", "h.pt"]
    assert cli.main([*argv, "--threads", "2"]) == 1
    assert cli.main(argv) == 1  # auto: 1 thread for STEGO training
    assert seen == [(2, 2), (1, 1)]
    assert counts() == (1, 1)
    assert "nowhere does not exist" in capsys.readouterr().err


def test_experiments_threads_option(capsys):
    from _common import make_parser

    p = make_parser("x", "test")
    assert p.parse_args([]).threads == "auto"
    assert p.parse_args(["--threads", "1"]).threads == 1
    with pytest.raises(SystemExit):
        p.parse_args(["--threads", "0"])
    assert "--threads" in capsys.readouterr().err


def test_kmeans_result_does_not_depend_on_threads(one_thread):
    """The policy is a speed setting: the same k-means fit with 1 and 2 threads."""
    from stego_probe.probes.kmeans import KMeansProbe

    x = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    fits = []
    for n in (1, 2):
        with limit(n):
            fits.append(KMeansProbe(4, niter=50, nredo=1, random_state=0, gpu=False).fit(x))
    np.testing.assert_allclose(
        fits[0].cluster_centers_, fits[1].cluster_centers_, rtol=1e-4, atol=1e-4
    )
