"""CLI failure behaviour: checks before work, per-probe writes, idempotent reruns, the output
lock, label refusals, argument errors, Ctrl-C and one-line errors (issue 9)."""

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_evaluate import make_store, onehot_data  # noqa: E402

import stego_probe.cli.evaluate as cli_evaluate  # noqa: E402
import stego_probe.evaluate as evaluate_mod  # noqa: E402
from stego_probe.cli.main import main  # noqa: E402
from stego_probe.lock import folder_lock, table_lock  # noqa: E402
from stego_probe.results import read_results  # noqa: E402


@pytest.fixture
def stores(tmp_path):
    codes, _, pix = onehot_data(n=8)
    vcodes, _, vpix = onehot_data(n=6, seed=1)
    train = make_store(tmp_path / "train", codes, pix)
    val = make_store(tmp_path / "val", vcodes, vpix, split="val")
    return train, val


def _argv(train, val, out, *extra, probes="kmeans,cluster,linear"):
    return ["evaluate", "--train-store", str(train.path), "--val-store", str(val.path),
            "--probe", probes, "--steps", "12", "--train-batch-size", "4",
            "--niter", "5", "--nredo", "1", "--no-progress", "--seeds", "0,1",
            "--out", str(out), *extra]  # fmt: skip


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def _forbid(monkeypatch, *targets):
    """Make each (object, attribute) fail the test if it is called."""

    def boom(*a, **k):
        raise AssertionError("called although the run should have stopped before")

    for obj, name in targets:
        monkeypatch.setattr(obj, name, boom)


def _point_counts(df):
    keys = ["seed", "probe", "crf", "mode", "metric"]
    return df.groupby(keys).size()


# ------------------------------------------------------------------ output checks first


def test_unwritable_out_fails_before_any_store_is_read(stores, tmp_path, capsys, monkeypatch):
    import stego_probe.cli.store as cli_store

    train, val = stores
    _forbid(monkeypatch, (evaluate_mod, "evaluate_stores"), (cli_store, "open_store"))
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    out = blocker / "results.csv"  # its folder is a file
    assert main(_argv(train, val, out)) == 1
    err = _one_line_error(capsys)
    assert err.startswith("stego-probe evaluate: error: --out") and str(out) in err
    # a folder the user may not write to (simulated: root may write anywhere)
    import tempfile

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    out = tmp_path / "ro" / "results.csv"
    assert main(_argv(train, val, out)) == 1
    err = _one_line_error(capsys)
    assert f"--out {out}: cannot write into folder" in err and "Permission denied" in err
    assert not out.exists()


def test_each_probes_rows_are_written_as_soon_as_scored(stores, tmp_path, capsys, monkeypatch):
    train, val = stores
    out = tmp_path / "r.csv"

    def crash(*a, **k):
        raise RuntimeError("simulated crash during the cluster / linear training")

    monkeypatch.setattr(evaluate_mod, "_train_stream_probes", crash)
    assert main(_argv(train, val, out, "--seeds", "0")) == 1
    assert "simulated crash" in _one_line_error(capsys)
    df = read_results(out)
    assert set(df["probe"]) == {"kmeans"} and set(df["seed"]) == {0}  # kept despite the crash
    km = df.copy()
    monkeypatch.undo()
    # the rerun computes only cluster and linear; their numbers equal a run from scratch
    assert main(_argv(train, val, out, "--seeds", "0")) == 0
    printed = capsys.readouterr().out
    assert "seed 0: kmeans already in" in printed
    df = read_results(out)
    pd.testing.assert_frame_equal(df.iloc[: len(km)], km, check_dtype=False)
    fresh = tmp_path / "fresh.csv"
    assert main(_argv(train, val, fresh, "--seeds", "0")) == 0
    ref = read_results(fresh)
    cols = ["seed", "probe", "crf", "mode", "metric"]
    a = df.set_index(cols)["value"].sort_index()
    b = ref.set_index(cols)["value"].sort_index()
    pd.testing.assert_series_equal(a, b)


def test_rerun_into_the_same_out_adds_no_duplicates(stores, tmp_path, capsys, monkeypatch):
    train, val = stores
    out = tmp_path / "r.csv"
    assert main(_argv(train, val, out)) == 0
    first = read_results(out)
    assert (_point_counts(first) == 1).all() and set(first["seed"]) == {0, 1}
    capsys.readouterr()
    _forbid(monkeypatch, (evaluate_mod, "evaluate_stores"))  # nothing left to compute
    assert main(_argv(train, val, out)) == 0
    printed = capsys.readouterr().out
    assert "seed 1: kmeans, cluster, linear already in" in printed
    assert "appended 0 rows" in printed and "mean ± std over 2 seed(s)" in printed
    pd.testing.assert_frame_equal(read_results(out), first)
    # one more seed: only its rows are added
    monkeypatch.undo()
    assert main(_argv(train, val, out, "--seeds", "0,1,2")) == 0
    third = read_results(out)
    assert (_point_counts(third) == 1).all() and set(third["seed"]) == {0, 1, 2}
    assert len(third) == len(first) * 3 // 2


def test_rerun_with_other_settings_is_refused_not_skipped(stores, tmp_path, capsys):
    train, val = stores
    out = tmp_path / "r.csv"
    assert main(_argv(train, val, out, "--seeds", "0")) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(_argv(train, val, out, "--seeds", "0", "--steps", "13")) == 1
    err = _one_line_error(capsys)
    assert "other settings" in err and "--steps 12 there, 13 now" in err
    assert "seed 0 cluster" in err and "seed 0 kmeans" not in err  # k-means ignores --steps
    assert out.read_bytes() == before


# ------------------------------------------------------------------ the lock


def test_concurrent_run_into_the_same_out_is_refused(stores, tmp_path, capsys, monkeypatch):
    train, val = stores
    out = tmp_path / "r.csv"
    _forbid(monkeypatch, (evaluate_mod, "evaluate_stores"))
    with table_lock(out, what="evaluate"):
        assert main(_argv(train, val, out)) == 1
    err = _one_line_error(capsys)
    assert "in use by another evaluate" in err and "pid" in err
    # a sweep writing into the folder of --out
    with folder_lock(tmp_path, what="sweep"):
        assert main(_argv(train, val, out)) == 1
    err = _one_line_error(capsys)
    assert f"its folder {tmp_path} is in use by a running sweep" in err
    # a sweep that started after the folder check holds the table lock of its results.csv;
    # a symlinked folder reaches the same table, hence the same lock
    link = tmp_path / "link"
    link.symlink_to(tmp_path, target_is_directory=True)
    with table_lock(out, what="sweep"):
        assert main(_argv(train, val, link / "r.csv")) == 1
    assert "in use by another sweep" in _one_line_error(capsys)
    assert not out.exists()
    # released: the run goes ahead (two CSVs of one folder do not block each other)
    monkeypatch.undo()
    with table_lock(tmp_path / "other.csv", what="evaluate"):
        assert main(_argv(train, val, out, "--seeds", "0", probes="kmeans")) == 0


# ------------------------------------------------------------------ labels


def test_no_labelled_train_pixel_refuses_the_linear_probe(tmp_path, capsys, monkeypatch):
    codes, _, pix = onehot_data(n=8)
    vcodes, _, vpix = onehot_data(n=6, seed=1)
    train = make_store(tmp_path / "train", codes, np.full_like(pix, -1))
    val = make_store(tmp_path / "val", vcodes, vpix, split="val")
    _forbid(monkeypatch, (evaluate_mod, "_train_stream_probes"))  # refused before training
    out = tmp_path / "r.csv"
    assert main(_argv(train, val, out, probes="linear")) == 1
    err = _one_line_error(capsys)
    assert f"train store {train.path}" in err and "all train labels are ignore" in err
    assert not out.exists()
    # k-means alone needs no train labels
    monkeypatch.undo()
    assert main(_argv(train, val, out, "--seeds", "0", probes="kmeans")) == 0


def test_no_labelled_val_pixel_is_refused_before_fitting(tmp_path, capsys, monkeypatch):
    from stego_probe.probes import KMeansProbe

    codes, _, pix = onehot_data(n=8)
    vcodes, _, vpix = onehot_data(n=6, seed=1)
    train = make_store(tmp_path / "train", codes, pix)
    val = make_store(tmp_path / "val", vcodes, np.full_like(vpix, -1), split="val")
    _forbid(monkeypatch, (KMeansProbe, "fit"), (evaluate_mod, "_train_stream_probes"))
    for probe in ("kmeans", "cluster"):
        assert main(_argv(train, val, tmp_path / "r.csv", probes=probe)) == 1
        err = _one_line_error(capsys)
        assert f"val store {val.path}" in err and "nothing to score" in err


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    "flag,value,words",
    [
        ("--seed", "-1", "expected a non-negative integer (>= 0), got '-1'"),
        ("--seeds", "0,-1", "expected distinct non-negative integers"),
        ("--steps", "0", "expected a positive integer (>= 1), got '0'"),
        ("--steps", "-5", "expected a positive integer"),
        ("--train-batch-size", "0", "expected a positive integer"),
        ("--n-tokens", "0", "expected a positive integer"),
        ("--n-train", "0", "expected a positive integer"),  # the old name of --n-tokens
        ("--batch-size", "0", "expected a positive integer"),
        ("--n-clusters", "0", "expected a positive integer"),
        ("--crf-workers", "-1", "expected a non-negative integer"),
    ],
)
def test_bad_numbers_fail_at_parse_time(tmp_path, capsys, flag, value, words):
    argv = ["evaluate", "--train-store", str(tmp_path / "t"), "--val-store", str(tmp_path / "v"),
            "--out", str(tmp_path / "r.csv"), flag, value]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if "error:" in x]
    # an option with an alias is named by both spellings (``--n-tokens/--n-train``)
    assert len(line) == 1 and re.search(
        rf"argument (\S+/)?{flag}(/\S+)?: {re.escape(words)}", line[0]
    )
    assert "Traceback" not in err and not (tmp_path / "r.csv").exists()


# ------------------------------------------------------------------ Ctrl-C and errors


@pytest.mark.parametrize(
    "command,argv,words",
    [
        ("evaluate", ["--train-store", "t", "--val-store", "v", "--out", "r.csv"],
         "rows already appended to --out are kept"),
        ("sweep", ["--preset", "p", "--out", "o"], "finished points are kept"),
        ("extract", None, "finished blocks are kept"),
    ],
)  # fmt: skip
def test_ctrl_c_prints_one_line_and_exits_130(monkeypatch, capsys, command, argv, words):
    from stego_probe.cli.main import build_parser

    def interrupted(args):
        raise KeyboardInterrupt

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices[command].set_defaults(func=interrupted)
    if argv is None:  # the required arguments of the subcommand, as its usage names them
        argv = _minimal_argv(sub.choices[command])
    monkeypatch.setattr("stego_probe.cli.main.build_parser", lambda: parser)
    assert main([command, *argv]) == 130
    err = _one_line_error(capsys)
    assert err.startswith(f"stego-probe {command}: interrupted:") and words in err
    assert "rerun the same command" in err
    with pytest.raises(KeyboardInterrupt):  # --debug keeps the traceback
        main(["--debug", command, *argv])


def _minimal_argv(subparser) -> list[str]:
    argv = []
    for action in subparser._actions:
        if action.required and action.option_strings:
            argv += [action.option_strings[0], "x"]
        elif not action.option_strings and action.nargs not in ("?", "*"):
            argv.append("x")
    return argv


def test_expected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    from stego_probe.cli.main import build_parser
    from stego_probe.lock import FolderLockedError

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    raised = {}

    def fail(args):
        raise raised["error"]

    sub.choices["evaluate"].set_defaults(func=fail)
    monkeypatch.setattr("stego_probe.cli.main.build_parser", lambda: parser)
    argv = ["evaluate", "--train-store", "t", "--val-store", "v", "--out", "r.csv"]
    for error in (
        ValueError("--out r.csv: bad"),
        FileNotFoundError("no feature store at t"),
        FolderLockedError("output folder x is in use"),
        KeyError("no such thing"),
    ):
        raised["error"] = error
        assert main(argv) == 1
        err = _one_line_error(capsys)
        assert err == f"stego-probe evaluate: error: {error.args[0]}"
    raised["error"] = ValueError("--out r.csv: bad")
    with pytest.raises(ValueError, match="bad"):
        main(["--debug", *argv])
    monkeypatch.setenv("STEGO_PROBE_DEBUG", "1")
    with pytest.raises(ValueError, match="bad"):
        main(argv)
    monkeypatch.delenv("STEGO_PROBE_DEBUG")
    raised["error"] = TypeError("a bug")  # not an expected error: keeps its traceback
    with pytest.raises(TypeError):
        main(argv)


def test_rerun_dedupe_uses_the_results_row_keys(stores, tmp_path, capsys, monkeypatch):
    """The CLI's point keys are results.row_key over its own columns: a settings record that
    spells the same values differently (5.0 for 5, 'false' for False) still matches, and rows
    that another writer put into --out after the run planned are not appended twice."""
    import json

    from stego_probe.results import append_csv, row_key

    train, val = stores
    out = tmp_path / "r.csv"
    assert main(_argv(train, val, out, "--seeds", "0")) == 0
    capsys.readouterr()
    settings = Path(str(out) + cli_evaluate.SETTINGS_SUFFIX)
    data = json.loads(settings.read_text())
    numeric = {"dim", "seed", "kmeans_niter", "kmeans_tol", "kmeans_nredo"}

    def respell(key):  # the spelling of an older version: floats and lower-case booleans
        return [
            repr(float(v)) if c in numeric and v else v
            for c, v in zip(cli_evaluate.POINT_COLUMNS, key, strict=True)
        ]

    data["points"] = {json.dumps(respell(json.loads(k))): v for k, v in data["points"].items()}
    assert any('"5.0"' in k for k in data["points"])  # niter 5 spelt as 5.0
    settings.write_text(json.dumps(data))
    assert main(_argv(train, val, out, "--seeds", "0", "--steps", "13")) == 1
    assert "--steps 12 there, 13 now" in _one_line_error(capsys)  # the record still matched
    # another writer appends seed 1's rows while this run computes them: no duplicates
    other = tmp_path / "other.csv"
    assert main(_argv(train, val, other, "--seeds", "1")) == 0
    capsys.readouterr()
    real = evaluate_mod.evaluate_stores

    def racing(*a, **k):
        append_csv(read_results(other).to_dict("records"), out)  # past the lock, unchecked
        return real(*a, **k)

    monkeypatch.setattr(evaluate_mod, "evaluate_stores", racing)
    assert main(_argv(train, val, out, "--seeds", "0,1")) == 0
    df = read_results(out)
    assert (_point_counts(df) == 1).all() and set(df["seed"]) == {0, 1}
    keys = [row_key(r, cli_evaluate.ROW_COLUMNS) for r in df.to_dict("records")]
    assert len(keys) == len(set(keys))


_LIGHT_CHECK = """
import contextlib, io, sys
from stego_probe.cli.main import build_parser, main
build_parser()
for argv in {argvs!r}:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(argv)
heavy = [m for m in ("torch", "sklearn", "faiss") if m in sys.modules]
print("HEAVY", heavy)
"""


@pytest.mark.parametrize(
    "argvs",
    [[["--help"]], [["--version"]], [["evaluate", "--help"], ["sweep", "--help"]], "info"],
)
def test_help_version_and_info_import_neither_torch_nor_sklearn(argvs, tmp_path):
    """Building the parser, ``--help`` (also of the subcommands), ``--version`` and
    ``info STORE`` start without torch, scikit-learn or FAISS (issue 13)."""
    import subprocess

    if argvs == "info":
        codes, _, pix = onehot_data(n=4)
        argvs = [["info", str(make_store(tmp_path / "s", codes, pix).path)]]
    out = subprocess.run(
        [sys.executable, "-c", _LIGHT_CHECK.format(argvs=argvs)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
