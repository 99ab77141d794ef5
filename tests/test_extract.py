"""extract(): correctness against the backbone, five-crop / flipped, resumability, refusal to mix,
error messages, and the ``extract`` / ``info`` CLI."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stego_probe.backbones.base import Backbone
from stego_probe.data.base import Sample, SegDataset
from stego_probe.data.transforms import five_crop_sample, stego_transform
from stego_probe.extract import extract
from stego_probe.store import FeatureStore

K = 3
RES = 16


class ToyDataset(SegDataset):
    """Deterministic random RGB images of a few sizes, labels in [-1, K).

    ``bad``: index whose label shape does not match its image; ``unreadable``: index whose image
    file cannot be decoded."""

    def __init__(self, n: int = 10, bad: int | None = None, unreadable: int | None = None):
        super().__init__(
            name="toy",
            split="train",
            n_classes=K,
            class_names=["a", "b", "c"],
            ids=[f"toy_{i}" for i in range(n)],
        )
        self.bad, self.unreadable = bad, unreadable

    def load(self, i: int) -> Sample:
        if i == self.unreadable:
            Image.open(io.BytesIO(b"this is not an image")).convert("RGB")
        rng = np.random.default_rng(100 + i)
        h, w = (20, 24, 28)[i % 3], 28
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        lab = rng.integers(-1, K, (h, w))
        if i == self.bad:
            lab = lab[:-1]
        return Sample(img, lab, self.ids[i])


class ToyBackbone(Backbone):
    """Fixed random patch embedding + tanh (not flip-symmetric), p = 4, C = 8.

    ``fail_after``: raise after that many forward calls; ``hang_after``: block (until the
    process is killed) after that many forward calls."""

    name = "toy_backbone"
    patch_size = 4
    embed_dim = 8

    def __init__(self, seed: int = 0, fail_after: int | None = None, hang_after: int | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Conv2d(3, 8, 4, 4)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(8, 3, 4, 4, generator=g) * 0.3)
            self.proj.bias.copy_(torch.randn(8, generator=g))
        self.fail_after, self.hang_after, self.calls = fail_after, hang_after, 0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        if self.hang_after is not None and self.calls > self.hang_after:
            time.sleep(600)
        x = self.proj(images)
        return torch.tanh(x) + 0.1 * x.cumsum(dim=-1)


class OtherBackbone(ToyBackbone):
    name = "other_backbone"


def _tree(path) -> dict[str, bytes]:
    root = Path(path)
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _expected(backbone, samples, crop="center"):
    tf = stego_transform(RES, crop=crop, mean=backbone.mean, std=backbone.std)
    pairs = [tf(s) for s in samples]
    x = torch.stack([p[0] for p in pairs])
    feats = backbone(x).permute(0, 2, 3, 1).numpy()
    flipped = backbone(x.flip(-1)).flip(-1).permute(0, 2, 3, 1).numpy()
    return feats, np.stack([p[1].numpy() for p in pairs]), flipped


def _run(path, ds=None, bb=None, **kw):
    kw = {"res": RES, "batch_size": 2, "chunk_images": 4, "progress": False, **kw}
    return extract(ds or ToyDataset(), bb or ToyBackbone(), path, **kw)


def test_round_trip_matches_backbone(tmp_path):
    ds, bb = ToyDataset(), ToyBackbone()
    store = _run(tmp_path / "s", ds, bb, batch_size=3)
    feats, labels, _ = _expected(bb, [ds[i] for i in range(len(ds))])
    assert store.complete and store.n_images == len(ds) and store.ids == ds.ids
    assert store.grid == (RES // 4, RES // 4) and store.dim == 8
    assert store.label_shape == (RES, RES)
    np.testing.assert_allclose(store.tokens(slice(None)), feats, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(store.labels(slice(None)), labels)
    assert (labels == -1).any()  # the ignore value survives the int16 storage
    p = store.provenance
    assert (p["dataset"], p["split"], p["backbone"], p["res"], p["crop"]) == (
        "toy",
        "train",
        "toy_backbone",
        RES,
        "center",
    )
    assert p["n_classes"] == K and p["class_names"] == ["a", "b", "c"]
    assert p["transform"]["mean"] == list(bb.mean)
    assert "stego_probe_version" in p["package"]
    # crop="none" is the square resize
    square = _run(tmp_path / "sq", ds, bb, crop="none")
    _, lab_none, _ = _expected(bb, [ds[i] for i in range(len(ds))], crop="none")
    np.testing.assert_array_equal(square.labels(slice(None)), lab_none)


def test_five_crop_and_flipped(tmp_path):
    ds, bb = ToyDataset(3), ToyBackbone()
    store = _run(tmp_path / "s", ds, bb, crop="five", flipped=True, chunk_images=4)
    assert store.n_images == 15 and store.has_flipped
    assert store.ids == [f"toy_{i}_c{k}" for i in range(3) for k in range(5)]
    crops = [c for i in range(3) for c in five_crop_sample(ds[i], ratio=0.5)]
    feats, labels, flipped = _expected(bb, crops)
    np.testing.assert_allclose(store.tokens(slice(None)), feats, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(store.labels(slice(None)), labels)
    got_f = store.tokens(slice(None), flipped=True)
    np.testing.assert_allclose(got_f, flipped, rtol=1e-3, atol=1e-3)
    assert np.abs(got_f - store.tokens(slice(None))).max() > 0.1  # really the flipped image
    assert store.provenance["crop"] == "five" and store.provenance["n_source_images"] == 3


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    ref = _run(tmp_path / "ref")
    path = tmp_path / "s"
    # batches of 2, blocks of 4: the 4th forward call (block 1, second batch) fails
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(path, bb=ToyBackbone(fail_after=3))
    partial = FeatureStore.open(path, allow_incomplete=True)
    assert not partial.complete
    np.testing.assert_array_equal(partial.done_blocks(), [True, False, False])
    with pytest.raises(ValueError, match="incomplete"):
        FeatureStore.open(path)
    bb = ToyBackbone()
    resumed = _run(path, bb=bb)
    assert bb.calls == 3  # only the 6 missing images were recomputed
    assert resumed.complete
    assert _tree(path) == _tree(ref.path)


def test_resume_after_interrupted_creation(tmp_path):
    import shutil

    ref = _run(tmp_path / "ref")
    path = tmp_path / "s"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(path, bb=ToyBackbone(fail_after=0))
    # as if the run died while creating the arrays: only the group and some arrays exist
    shutil.rmtree(path / "tokens")
    shutil.rmtree(path / "written")
    assert not FeatureStore.open(path, allow_incomplete=True).done_blocks().any()
    assert _run(path).complete
    assert _tree(path) == _tree(ref.path)


def test_num_workers_and_memory_url_give_same_content(tmp_path):
    ref = _run(tmp_path / "ref")
    workers = _run(tmp_path / "w", num_workers=1)
    assert _tree(workers.path) == _tree(ref.path)
    url = f"memory://test_extract/{uuid.uuid4().hex}"
    mem = _run(url)
    assert mem.complete and FeatureStore.open(url).ids == ref.ids
    np.testing.assert_array_equal(mem.tokens(slice(None)), ref.tokens(slice(None)))
    np.testing.assert_array_equal(mem.labels(slice(None)), ref.labels(slice(None)))


def test_complete_store_is_returned_without_a_forward(tmp_path):
    """Extracting into a complete store returns it as it is, even one that lost a written
    marker (``verify`` reports that); nothing is recomputed, nothing written."""
    path = tmp_path / "s"
    _run(path)
    before = _tree(path)
    bb = ToyBackbone()
    again = _run(path, bb=bb)
    assert again.complete and bb.calls == 0
    marker = path / "written" / "c" / "1"
    assert marker.is_file()
    marker.unlink()
    bb = ToyBackbone()
    again = _run(path, bb=bb)
    assert again.complete and bb.calls == 0
    assert {k: v for k, v in _tree(path).items() if "written" not in str(k)} == {
        k: v for k, v in before.items() if "written" not in str(k)
    }


def test_num_workers_auto(tmp_path, monkeypatch, capsys):
    """``num_workers="auto"`` (the default): in-process on the CPU; on a CUDA device the
    machine's cores shared among its ranks, one left to each rank, 1 to AUTO_CUDA_WORKERS."""
    import stego_probe.threads as threads
    from stego_probe.cli.main import main
    from stego_probe.extract import AUTO_CUDA_WORKERS, auto_num_workers

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert auto_num_workers(cpu) == 0 and auto_num_workers(cpu, 1) == 0
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cores, ranks, want in [
        (16, 1, 8),
        (64, 1, 8),
        (16, 2, 7),
        (16, 8, 1),
        (2, 1, 1),
        (1, 4, 1),
    ]:
        monkeypatch.setattr(threads, "available_cores", lambda c=cores: c)
        assert auto_num_workers(cuda, ranks) == want, (cores, ranks)
    assert AUTO_CUDA_WORKERS == 8
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's ranks on this machine
    assert auto_num_workers(cuda) == 3
    # where workers are not forked (Windows, macOS) they would need a __main__ guard: none
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "spawn")
    assert auto_num_workers(cuda) == 0
    monkeypatch.undo()
    # the default on the CPU is the in-process loader: the same store as num_workers=0
    assert _tree(_run(tmp_path / "auto").path) == _tree(_run(tmp_path / "zero", num_workers=0).path)
    for bad in ("many", -1, True, 1.5):
        with pytest.raises(ValueError, match=r"num_workers \(--num-workers\): expected a non-neg"):
            _run(tmp_path / "bad", num_workers=bad)
    argv = ["extract", "--dataset", "synthetic", "--split", "val", "--backbone", "descriptor",
            "--store", str(tmp_path / "cli"), "--num-workers"]  # fmt: skip
    with pytest.raises(SystemExit):
        main(argv + ["x"])
    assert "argument --num-workers: expected a non-negative integer (>= 0) or 'auto', got 'x'" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    assert f"up to {AUTO_CUDA_WORKERS} on a GPU" in " ".join(capsys.readouterr().out.split())


def slow_extract(path: str) -> None:
    """Entry point of the SIGKILL test's child process: writes 3 of 6 blocks, then hangs."""
    _run(path, ds=ToyDataset(12), bb=ToyBackbone(hang_after=3), chunk_images=2)


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path):
    path = tmp_path / "killed"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import test_extract; test_extract.slow_extract({str(path)!r})"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "child.log", "wb")  # a file, not a pipe: the child never blocks
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=log)
    markers = path / "written" / "c"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = [f for f in markers.iterdir() if f.name.isdigit()] if markers.is_dir() else []
            if len(done) >= 3:  # (not counting a marker's *.partial temp file)
                break
            time.sleep(0.01)
        assert proc.poll() is None, (tmp_path / "child.log").read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    partial = FeatureStore.open(path, allow_incomplete=True)
    assert not partial.complete
    np.testing.assert_array_equal(partial.done_blocks(), [True] * 3 + [False] * 3)
    resumed = _run(path, ds=ToyDataset(12), chunk_images=2)
    ref = _run(tmp_path / "ref", ds=ToyDataset(12), chunk_images=2)
    assert resumed.complete
    assert _tree(path) == _tree(ref.path)


def test_mixing_refused_and_store_unchanged(tmp_path):
    path = tmp_path / "s"
    _run(path)
    before = _tree(path)
    with pytest.raises(ValueError, match="backbone: 'toy_backbone' != 'other_backbone'"):
        _run(path, bb=OtherBackbone())
    with pytest.raises(ValueError, match="res: 16 != 20"):
        _run(path, res=20)
    with pytest.raises(ValueError, match="crop: 'center' != 'five'"):
        _run(path, crop="five")
    with pytest.raises(ValueError, match="n_images: 10 != 4"):
        _run(path, limit=4)
    assert _tree(path) == before
    # an incomplete store is protected the same way
    part = tmp_path / "part"
    with pytest.raises(RuntimeError):
        _run(part, bb=ToyBackbone(fail_after=2))
    before = _tree(part)
    with pytest.raises(ValueError, match="flipped: False != True"):
        _run(part, flipped=True)
    assert _tree(part) == before


def test_complete_store_is_reused_and_overwrite_recreates(tmp_path):
    path = tmp_path / "s"
    _run(path)
    before = _tree(path)
    idle = ToyBackbone(fail_after=0)  # any forward call would raise
    store = _run(path, bb=idle)
    assert idle.calls == 0 and store.complete and _tree(path) == before
    other = _run(path, bb=ToyBackbone(seed=5), overwrite=True)
    assert other.complete
    assert not np.allclose(other.tokens(0), FeatureStore.open(tmp_path / "s").tokens(0) + 1)
    assert _tree(path) != before


def test_bad_label_names_the_sample_and_keeps_written_blocks(tmp_path):
    ref = _run(tmp_path / "ref")
    path = tmp_path / "s"
    with pytest.raises(ValueError, match=r"'toy_6'.*label shape \(19, 28\)"):
        _run(path, ds=ToyDataset(bad=6))
    partial = FeatureStore.open(path, allow_incomplete=True)
    np.testing.assert_array_equal(partial.done_blocks(), [True, False, False])
    np.testing.assert_array_equal(partial.tokens(slice(0, 4)), ref.tokens(slice(0, 4)))
    assert partial.ids[:4] == ref.ids[:4]
    with pytest.raises(ValueError, match=r"'toy_2'.*UnidentifiedImageError"):
        _run(tmp_path / "u", ds=ToyDataset(unreadable=2))


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="crop"):
        _run(tmp_path / "a", crop="random")
    with pytest.raises(ValueError, match="not divisible by the backbone's patch size 4"):
        _run(tmp_path / "b", res=18)
    with pytest.raises(ValueError, match="batch_size"):
        _run(tmp_path / "c", batch_size=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_extract_and_info(tmp_path, capsys):
    from stego_probe.cli.main import main
    from stego_probe.cli.store import parse_key_values

    assert parse_key_values(["n_images=3", "size=[32, 48]", "x=abc"]) == {
        "n_images": 3,
        "size": [32, 48],
        "x": "abc",
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_key_values(["oops"])
    path = str(tmp_path / "cli")
    common = ["extract", "--dataset", "synthetic", "--split", "val", "--backbone", "descriptor"]
    args = common + ["--dataset-arg", "n_images=5", "--res", "32", "--limit", "3"]
    args += ["--batch-size", "2", "--device", "cpu", "--no-progress", "--store", path]
    assert main(args) == 0
    store = FeatureStore.open(path)
    assert store.n_images == 3 and store.grid == (4, 4) and store.complete
    assert store.provenance["backbone"] == "descriptor"
    assert store.provenance["limit"] == 3
    from stego_probe.data import get_dataset

    assert store.ids == get_dataset("synthetic", split="val", n_images=5).ids[:3]
    capsys.readouterr()
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    for needle in [
        "images          3",
        "grid            4x4",
        "descriptor",
        "complete        True",
        "compression     tokens raw, labels zstd",
    ]:
        assert needle in out
    # a different resolution into the same store is refused with a readable error
    bad = [a if a != "32" else "48" for a in args]
    assert main(bad) == 1
    assert "refusing to mix" in capsys.readouterr().err
    # --raw-labels: the same content with labels stored uncompressed
    raw = str(tmp_path / "raw")
    assert main([a if a != path else raw for a in args] + ["--raw-labels"]) == 0
    raw_store = FeatureStore.open(raw)
    assert raw_store.info()["compress_labels"] is False and store.info()["compress_labels"]
    np.testing.assert_array_equal(raw_store.labels(slice(None)), store.labels(slice(None)))
    np.testing.assert_array_equal(raw_store.tokens(slice(None)), store.tokens(slice(None)))
    capsys.readouterr()
    assert main(["info", raw]) == 0
    assert "compression     tokens raw, labels raw" in capsys.readouterr().out


def test_cli_extract_bad_input_is_one_clear_line(tmp_path, capsys):
    from stego_probe.backbones import register_backbone, unregister_backbone
    from stego_probe.cli.main import main

    def err(argv):
        assert main(argv) == 1
        msg = capsys.readouterr().err.strip()
        assert len(msg.splitlines()) == 1 and "Traceback" not in msg, msg
        return msg

    path = tmp_path / "store"
    argv = ["extract", "--dataset", "synthetic", "--split", "val", "--dataset-arg", "n_images=2",
            "--res", "16", "--no-progress", "--store", str(path)]  # fmt: skip
    assert main(argv + ["--backbone", "descriptor"]) == 0
    capsys.readouterr()
    before = _tree(path)
    register_backbone("ux_other", lambda **kw: OtherBackbone(), patch_size=4, embed_dim=8)
    try:
        msg = err(argv + ["--backbone", "ux_other"])
    finally:
        unregister_backbone("ux_other")
    assert f"refusing to mix incompatible feature store {path}" in msg
    assert "backbone: 'descriptor' != 'other_backbone'" in msg and "--overwrite" in msg
    other = argv[:8] + ["48"] + argv[9:]  # another --res
    assert "res: 16 != 48" in err(other + ["--backbone", "descriptor"])
    assert _tree(path) == before
    bad = {
        "unknown dataset 'nope'": ["--dataset", "nope"],
        "unknown backbone 'nope'": ["--backbone", "nope"],
        "not divisible by the backbone's patch size 8": ["--res", "20"],
        "batch_size (--batch-size): expected a positive int, got -2": ["--batch-size", "-2"],
        "dataset 'synthetic': unknown option(s) colour": ["--dataset-arg", "colour=red"],
    }
    if not torch.cuda.is_available():
        bad["--device cuda: CUDA is not available"] = ["--device", "cuda"]
    fresh = [a if a != str(path) else str(tmp_path / "fresh") for a in argv]
    for needle, extra in bad.items():
        assert needle in err(fresh + ["--backbone", "descriptor", *extra])
    nodata = ["cocostuff27", "--data-root", str(tmp_path / "nodata")]
    coco = fresh[:2] + nodata + fresh[3:5] + fresh[7:]  # without --dataset-arg
    assert str(tmp_path / "nodata" / "cocostuff") in err(coco + ["--backbone", "descriptor"])
    assert not (tmp_path / "fresh").exists()


def test_five_crop_is_refused_for_potsdam(tmp_path):
    from data_fixtures import write_potsdam

    from stego_probe.data import get_dataset

    write_potsdam(tmp_path / "data")
    ds = get_dataset("potsdam3", root=tmp_path / "data", split="train")
    with pytest.raises(ValueError, match="potsdam3 is used without cropping"):
        extract(ds, ToyBackbone(), str(tmp_path / "store"), res=8, crop="five", progress=False)
    assert not (tmp_path / "store").exists()


def test_float32_tokens_are_exact_and_cannot_be_mixed_with_float16(tmp_path):
    ds, bb = ToyDataset(), ToyBackbone()
    store = _run(tmp_path / "s", ds, bb, token_dtype="float32")
    feats, _, _ = _expected(bb, [ds[i] for i in range(len(ds))])
    # float32 storage is bit-exact, float16 storage is not
    np.testing.assert_array_equal(store.tokens(slice(None)), feats)
    half = _run(tmp_path / "h", ds, bb)
    assert np.abs(half.tokens(slice(None)) - feats).max() > 0
    with pytest.raises(ValueError, match="token_dtype"):
        _run(tmp_path / "s", ds, bb, token_dtype="float16")


# ----------------------------------------------------------------------------- inputs never mixed


def _synthetic(seed=0, n=10):
    from stego_probe.data import get_dataset

    return get_dataset("synthetic", split="train", n_images=n, size=(16, 20), seed=seed)


def test_resume_with_another_dataset_seed_is_refused(tmp_path):
    path = tmp_path / "s"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(path, ds=_synthetic(0), bb=ToyBackbone(fail_after=2))
    assert FeatureStore.open(path, allow_incomplete=True).done_blocks().tolist() == [
        True,
        False,
        False,
    ]
    before = _tree(path)
    with pytest.raises(ValueError) as e:
        _run(path, ds=_synthetic(1))
    msg = str(e.value)
    assert f"refusing to mix incompatible feature store {path}" in msg
    assert "dataset_args.seed: 0 != 1" in msg and "--dataset-arg seed=" in msg, msg
    assert "`extract --overwrite`" in msg and "overwrite=True" in msg
    assert _tree(path) == before
    # the same seed resumes; the complete store is then refused to the other seed too
    store = _run(path, ds=_synthetic(0))
    ref = _run(tmp_path / "ref", ds=_synthetic(0))
    assert store.complete and _tree(path) == _tree(ref.path)
    assert store.provenance["dataset_args"]["seed"] == 0
    with pytest.raises(ValueError, match="dataset_args.seed: 0 != 1"):
        _run(path, ds=_synthetic(1))
    # other options of the generator, and the split's file list, are covered as well
    with pytest.raises(ValueError, match=r"dataset_args.size: \[16, 20\] != \[16, 24\]"):
        _run(path, ds=_synthetic(0).__class__("train", n_images=10, size=(16, 24)))


def test_resume_from_another_data_root_is_refused(tmp_path, monkeypatch):
    from data_fixtures import write_folder

    from stego_probe.data import get_dataset

    stems = tuple(f"im{i}" for i in range(6))
    write_folder(tmp_path / "a", stems=stems, size=(16, 16), n_classes=K, seed=0)
    write_folder(tmp_path / "b", stems=stems, size=(16, 16), n_classes=K, seed=1)

    def folder(root):
        return get_dataset("folder", root, "train", n_classes=K)

    path = tmp_path / "s"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(path, ds=folder(tmp_path / "a"), bb=ToyBackbone(fail_after=2))
    before = _tree(path)
    with pytest.raises(ValueError) as e:
        _run(path, ds=folder(tmp_path / "b"))  # same file names, other images
    msg = str(e.value)
    assert f"data_root: '{tmp_path / 'a'}' != '{tmp_path / 'b'}'" in msg and "--data-root" in msg
    assert "files_sha256" not in msg  # same names: only the root differs
    assert _tree(path) == before
    # the same root given as a relative path is the same input
    monkeypatch.chdir(tmp_path)
    assert _run(path, ds=folder("a")).complete
    # another file list under the same root is refused (a file renamed, same count)
    for d in ("imgs", "labels"):
        (tmp_path / f"a/{d}/train/im5.png").rename(tmp_path / f"a/{d}/train/im9.png")
    with pytest.raises(ValueError, match="files_sha256: '[0-9a-f]{64}' != '[0-9a-f]{64}'"):
        _run(path, ds=folder("a"))
    # with --limit only the files used count: a file after the limit may change
    lim = tmp_path / "lim"
    assert _run(lim, ds=folder("a"), limit=4).complete
    (tmp_path / "a/imgs/train/im9.png").rename(tmp_path / "a/imgs/train/im8.png")
    (tmp_path / "a/labels/train/im9.png").rename(tmp_path / "a/labels/train/im8.png")
    assert _run(lim, ds=folder("a"), limit=4).complete


def _labels_up_to_11(root, n=6, bad_from=0):
    """A folder dataset whose labels hold 0..10 and the value 11 (meant as "ignore") in images
    ``bad_from`` and later."""
    (root / "imgs/train").mkdir(parents=True)
    (root / "labels/train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            root / f"imgs/train/im{i}.png"
        )
        lab = rng.integers(0, 11, (16, 16)).astype(np.uint8)
        if i >= bad_from:
            lab[0, :3] = 11
        Image.fromarray(lab).save(root / f"labels/train/im{i}.png")


NAMES = [f"name{k}" for k in range(11)]


def test_failed_first_run_then_rerun_with_other_dataset_args_records_the_rerun(tmp_path, capsys):
    import json

    from stego_probe.cli.main import main

    root = tmp_path / "data"
    _labels_up_to_11(root)
    path = str(tmp_path / "store")
    argv = ["extract", "--dataset", "folder", "--data-root", str(root), "--split", "train",
            "--backbone", "descriptor", "--res", "16", "--device", "cpu", "--no-progress",
            "--chunk-images", "2", "--store", path, "--dataset-arg", "n_classes=11"]  # fmt: skip
    # first run: value 11 is no class of 11 and not the ignore value 255 -> fails at image 0
    assert main(argv) == 1
    assert "im0.png" in capsys.readouterr().err
    assert not FeatureStore.open(path, allow_incomplete=True).done_blocks().any()
    # rerun with the options that fit the data
    rerun = argv + ["--dataset-arg", "ignore_value=11", "--dataset-arg",
                    f"class_names={json.dumps(NAMES)}"]  # fmt: skip
    assert main(rerun) == 0
    capsys.readouterr()
    assert main(["info", "--json", path]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class_names"] == NAMES
    store = FeatureStore.open(path)
    prov = store.provenance
    assert prov["class_names"] == NAMES and prov["dataset_args"]["ignore_value"] == [11]
    assert prov["dataset_info"]["ignore_values"] == [11]
    assert (store.labels(slice(None))[:, 0, :3] == -1).all()  # 11 stored as ignore
    capsys.readouterr()
    assert main(["info", path]) == 0
    assert "name0, name1" in capsys.readouterr().out


def test_rerun_with_other_label_options_after_some_blocks_is_refused(tmp_path):
    from stego_probe.data import get_dataset

    root = tmp_path / "data"
    _labels_up_to_11(root, bad_from=4)  # images 0-3 are fine: blocks 0 and 1 get written
    path = tmp_path / "store"
    first = get_dataset("folder", root, "train", n_classes=11)
    with pytest.raises(ValueError, match=r"im4\.png"):
        _run(path, ds=first, chunk_images=2)
    assert FeatureStore.open(path, allow_incomplete=True).done_blocks().tolist() == [
        True,
        True,
        False,
    ]
    before = _tree(path)
    other = get_dataset("folder", root, "train", n_classes=11, ignore_value=11, class_names=NAMES)
    with pytest.raises(ValueError) as e:
        _run(path, ds=other, chunk_images=2)
    msg = str(e.value)
    for needle in [
        "class_names: ['class0', ",
        "dataset_args.ignore_value: [255] != [11]",
        "dataset_args.class_names",
        "--dataset-arg ignore_value=",
        "--dataset-arg class_names=",
    ]:
        assert needle in msg, (needle, msg)
    assert _tree(path) == before
    # overwrite=True starts again from the new options
    store = _run(path, ds=other, chunk_images=2, overwrite=True)
    assert store.complete and store.class_names == NAMES


def test_incomplete_store_without_written_blocks_is_recreated_from_the_new_inputs(tmp_path):
    path = tmp_path / "s"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(path, ds=_synthetic(0), bb=ToyBackbone(fail_after=0))
    # anything may change, backbone included: there is no data to mix with
    store = _run(path, ds=_synthetic(3), bb=OtherBackbone(seed=2), res=20, chunk_images=5)
    ref = _run(tmp_path / "ref", ds=_synthetic(3), bb=OtherBackbone(seed=2), res=20, chunk_images=5)
    assert store.provenance["dataset_args"]["seed"] == 3 and store.chunk_images == 5
    assert _tree(path) == _tree(ref.path)


def test_random_init_backbones_with_other_seeds_are_refused_on_resume(tmp_path):
    from stego_probe.backbones import get_backbone

    tiny = {"depth": 1, "embed_dim": 48, "num_heads": 3, "img_size": 32}

    def rand(seed):
        return get_backbone(
            "timm:vit_small_patch16_224", pretrained=False, seed=seed, model_kwargs=tiny
        )

    path = tmp_path / "vit"
    with pytest.raises(ValueError, match="'toy_6'"):
        _run(path, ds=ToyDataset(bad=6), bb=rand(1), res=32)
    assert FeatureStore.open(path, allow_incomplete=True).done_blocks().any()
    before = _tree(path)
    with pytest.raises(ValueError, match="weights_sha256: '[0-9a-f]{64}' != '[0-9a-f]{64}'"):
        _run(path, bb=rand(2), res=32)
    assert _tree(path) == before
    store = _run(path, bb=rand(1), res=32)  # the same seed: the same weights, resumed
    assert store.complete and store.provenance["backbone_info"]["init_seed"] == 1
    # a custom backbone without a weight file: its weights are fingerprinted by extract
    toy = tmp_path / "toy"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(toy, bb=ToyBackbone(seed=0, fail_after=2))
    with pytest.raises(ValueError, match="weights_sha256"):
        _run(toy, bb=ToyBackbone(seed=5))
    store = _run(toy, bb=ToyBackbone(seed=0))
    assert store.complete
    fp = store.provenance["weights_sha256"]
    assert fp == store.provenance["backbone_info"]["weights_fingerprint"] and len(fp) == 64
    from stego_probe.backbones.weights import state_dict_fingerprint

    assert fp == state_dict_fingerprint(ToyBackbone(seed=0))
    # a backbone without weights at all (descriptor) records none
    desc = extract(ToyDataset(2), get_backbone("descriptor"), tmp_path / "d", res=16,
                   progress=False)  # fmt: skip
    assert desc.provenance["weights_sha256"] is None


def test_resume_with_features_of_another_block_is_refused(tmp_path):
    """``layer=`` changes what the tokens are: a store of another block never takes them."""
    from stego_probe.backbones import get_backbone

    tiny = {"depth": 2, "embed_dim": 48, "num_heads": 3, "img_size": 32}

    def vit(layer):
        return get_backbone(
            "timm:vit_small_patch16_224", pretrained=False, seed=0, model_kwargs=tiny, layer=layer
        )

    path = tmp_path / "vit"
    with pytest.raises(ValueError, match="'toy_6'"):
        _run(path, ds=ToyDataset(bad=6), bb=vit(0), res=32)
    before = _tree(path)
    with pytest.raises(ValueError, match=r"layer: 0 != None.*--layer"):
        _run(path, bb=vit(None), res=32)
    assert _tree(path) == before
    store = _run(path, bb=vit(0), res=32)
    assert store.complete and store.provenance["layer"] == 0


class BadOutputBackbone(ToyBackbone):
    """ToyBackbone whose ``call``-th forward pass puts ``value`` into sample ``row``."""

    def __init__(self, call: int, row: int, value: float, scale_all: bool = False):
        super().__init__()
        self.bad_call, self.row, self.value, self.scale_all = call, row, value, scale_all

    def features(self, images):
        out = super().features(images)
        if self.calls == self.bad_call:
            out = out.clone()
            if self.scale_all:
                out[self.row] *= self.value
            else:
                out[self.row, 1, 0, 2] = self.value
        return out


def test_non_finite_backbone_output_is_refused_naming_the_sample(tmp_path):
    path = tmp_path / "s"
    # batches of 2, blocks of 4: call 4 = images 6, 7 (block 1); row 0 = image 6
    with pytest.raises(ValueError) as e:
        _run(path, bb=BadOutputBackbone(call=4, row=0, value=float("nan")))
    msg = str(e.value)
    assert "non-finite tokens for sample 'toy_6' (index 6)" in msg and "1 NaN" in msg, msg
    partial = FeatureStore.open(path, allow_incomplete=True)
    assert partial.done_blocks().tolist() == [True, False, False]  # block 1 not written
    assert np.isfinite(partial.tokens(slice(0, 4))).all()
    assert (partial.tokens(slice(4, 8)) == 0).all()
    assert _run(path).complete and np.isfinite(FeatureStore.open(path).tokens(slice(None))).all()
    with pytest.raises(ValueError, match=r"'toy_3' \(index 3\).*infinite"):
        _run(tmp_path / "inf", bb=BadOutputBackbone(call=2, row=1, value=float("-inf")))
    assert not FeatureStore.open(tmp_path / "inf", allow_incomplete=True).done_blocks().any()
    # finite values beyond float16: refused, with the way out; float32 tokens store them
    big = BadOutputBackbone(call=1, row=1, value=1e6, scale_all=True)
    with pytest.raises(ValueError, match=r"'toy_1' \(index 1\).*overflow float16.*--float32"):
        _run(tmp_path / "big", bb=big)
    big = BadOutputBackbone(call=1, row=1, value=1e6, scale_all=True)
    store = _run(tmp_path / "big32", bb=big, token_dtype="float32")
    assert np.isfinite(store.tokens(1)).all() and np.abs(store.tokens(1)).max() > 65504
    # the flipped tokens are checked too (the 2nd call of a batch is the flipped pass)
    with pytest.raises(ValueError, match=r"non-finite flipped tokens for sample 'toy_0'"):
        _run(tmp_path / "f", bb=BadOutputBackbone(call=2, row=0, value=float("nan")), flipped=True)


def test_a_store_being_written_is_locked(tmp_path):
    from stego_probe.extract import _store_lock
    from stego_probe.lock import FolderLockedError

    path = tmp_path / "s"
    with _store_lock(str(path)):
        with pytest.raises(FolderLockedError, match=rf"feature store {path} is being written"):
            _run(path)
    assert _run(path).complete  # released
    assert (tmp_path / ".s.lock").is_file()


def test_cli_errors_name_the_cli_options(tmp_path, capsys):
    from stego_probe.cli.main import main

    def err(argv):
        assert main(argv) == 1
        msg = capsys.readouterr().err.strip()
        assert len(msg.splitlines()) == 1 and "Traceback" not in msg, msg
        return msg

    path = str(tmp_path / "s")
    argv = ["extract", "--dataset", "synthetic", "--split", "val", "--backbone", "descriptor",
            "--res", "16", "--device", "cpu", "--no-progress", "--store", path,
            "--dataset-arg", "n_images=3"]  # fmt: skip
    assert main(argv + ["--dataset-arg", "seed=0"]) == 0
    capsys.readouterr()
    msg = err(argv + ["--dataset-arg", "seed=1"])
    assert "dataset_args.seed: 0 != 1" in msg and "--dataset-arg seed=" in msg
    assert "`extract --overwrite`" in msg
    msg = err(argv + ["--dataset-arg", "seed=0", "--res", "32"])
    assert "--res" in msg and "res: 16 != 32" in msg
    assert "limit (--limit): expected a positive int, got 0" in err(argv + ["--limit", "0"])
    with pytest.raises(SystemExit):  # at parse time, naming the flag
        main(argv + ["--num-workers", "-1"])
    assert "argument --num-workers: expected a non-negative" in capsys.readouterr().err
    folder = ["extract", "--dataset", "folder", "--split", "train", "--backbone", "descriptor",
              "--store", str(tmp_path / "f")]  # fmt: skip
    assert "root (--data-root)" in err(folder)
