"""Distributed extraction: two local CPU ranks (gloo) write one store that is byte-identical to
a single-process extraction; a failed rank loses only its unfinished blocks and a re-run (any
number of ranks) completes the store to the same bytes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from stego_probe.distributed import Ranks
from stego_probe.store import FeatureStore

sys.path.insert(0, str(Path(__file__).parent))
from test_extract import ToyBackbone, ToyDataset, _run, _tree  # noqa: E402

N, CHUNK = 10, 2  # 5 blocks: rank 0 takes 0, 2, 4 and rank 1 takes 1, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DyingBackbone(ToyBackbone):
    """:class:`ToyBackbone` whose process exits at once (no clean-up, like a killed worker)
    on forward call ``die_at``."""

    def __init__(self, die_at: int) -> None:
        super().__init__()
        self.die_at = die_at

    def features(self, images):
        if self.calls + 1 == self.die_at:
            os._exit(9)
        return super().features(images)


def _rank_main(rank: int, world: int, port: int, store: str, out: str, fail_after, env) -> None:
    """One rank: extract into ``store``, then write its outcome to ``out``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    kw = {}
    if env:  # the torchrun way: RANK / WORLD_SIZE / LOCAL_RANK in the environment
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    else:
        kw = {"rank": rank, "world_size": world}
    try:
        ds = ToyDataset(N)
        if isinstance(fail_after, str) and fail_after.startswith("root:"):  # node-local data
            ds.root, bb = f"{fail_after.split(':', 1)[1]}/node{rank}", ToyBackbone()
        elif isinstance(fail_after, str) and fail_after.startswith("seed:"):  # other weights
            bb = ToyBackbone(seed=int(fail_after.split(":")[1]))
        elif isinstance(fail_after, str):  # "die:<k>": the process dies on forward call k
            bb = DyingBackbone(int(fail_after.split(":")[1]))
        else:
            bb = ToyBackbone(fail_after=fail_after)
        s = _run(store, ds, bb, chunk_images=CHUNK, **kw)
        result = {"ok": True, "complete": s.complete}
    except Exception as e:  # noqa: BLE001 - reported to the test
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    Path(out).write_text(json.dumps(result))


def _launch(tmp_path, store, world=2, fail=None, env=False) -> list[dict]:
    """Run ``world`` ranks as spawned processes; ``fail``: rank -> forward calls before it
    raises. Returns each rank's outcome."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    outs = [tmp_path / f"rank{r}.json" for r in range(world)]
    procs = [
        ctx.Process(
            target=_rank_main,
            args=(r, world, port, str(store), str(outs[r]), (fail or {}).get(r), env),
        )
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        if p.exitcode is None:
            p.kill()
        assert p.exitcode in (0, 9), f"rank process exited with {p.exitcode}"
    return [json.loads(o.read_text()) if o.exists() else None for o in outs]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "s"
    _run(path, ToyDataset(N), ToyBackbone(), chunk_images=CHUNK)
    return _tree(path)


def test_two_ranks_byte_identical_to_one_process(tmp_path, reference):
    store = tmp_path / "s"
    results = _launch(tmp_path, store, env=True)
    assert results == [{"ok": True, "complete": True}] * 2
    assert _tree(store) == reference


def test_failed_rank_loses_only_its_blocks_and_rerun_completes(tmp_path, reference):
    store = tmp_path / "s"
    # rank 1 finishes block 1 (one batch), then fails in block 3
    r0, r1 = _launch(tmp_path, store, fail={1: 1})
    assert not r0["ok"] and "rank 1" in r0["error"] and "simulated crash" in r0["error"]
    assert not r1["ok"] and "simulated crash" in r1["error"]
    partial = FeatureStore.open(store, allow_incomplete=True)
    assert not partial.complete
    np.testing.assert_array_equal(partial.done_blocks(), [True, True, True, False, True])
    assert all(partial.check_block(b) == [] for b in (0, 1, 2, 4))  # written blocks are valid
    # a single-process re-run extracts block 3 only and ends with the reference bytes
    s = _run(store, ToyDataset(N), ToyBackbone(), chunk_images=CHUNK)
    assert s.complete
    assert _tree(store) == reference


def test_killed_rank_loses_only_its_blocks(tmp_path, reference):
    store = tmp_path / "s"
    # rank 1 computes block 1, then its process dies in block 3 without any clean-up (block 1
    # may still have been in its writer thread: a killed rank loses its blocks in flight)
    r0, r1 = _launch(tmp_path, store, fail={1: "die:2"})
    assert r1 is None  # it died
    assert not r0["ok"]  # rank 0 finished its blocks, then saw its peer gone
    partial = FeatureStore.open(store, allow_incomplete=True)
    done = partial.done_blocks()
    assert done[[0, 2, 4]].all() and not done[3] and not partial.complete
    assert all(partial.check_block(b) == [] for b in np.flatnonzero(done))
    assert _launch(tmp_path, store) == [{"ok": True, "complete": True}] * 2
    assert _tree(store) == reference


def test_rerun_with_two_ranks_after_single_process_failure(tmp_path, reference):
    store = tmp_path / "s"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(store, ToyDataset(N), ToyBackbone(fail_after=3), chunk_images=CHUNK)
    assert FeatureStore.open(store, allow_incomplete=True).done_blocks().sum() == 3
    assert _launch(tmp_path, store) == [{"ok": True, "complete": True}] * 2
    assert _tree(store) == reference


def test_a_rank_with_other_weights_is_refused_before_it_writes(tmp_path, reference):
    """Every rank checks its own inputs against rank 0's store: a rank whose backbone has other
    weights (e.g. a random init seeded differently) writes nothing and fails every rank, naming
    itself and the difference; the blocks of the good rank are kept and a re-run completes."""
    store = tmp_path / "s"
    r0, r1 = _launch(tmp_path, store, fail={1: "seed:1"})
    assert not r1["ok"] and "rank 1 would write other inputs" in r1["error"]
    assert "weights_sha256" in r1["error"]
    assert not r0["ok"] and "rank 1:" in r0["error"] and "other inputs" in r0["error"]
    partial = FeatureStore.open(store, allow_incomplete=True)
    np.testing.assert_array_equal(partial.done_blocks(), [True, False, True, False, True])
    assert _launch(tmp_path, store) == [{"ok": True, "complete": True}] * 2
    assert _tree(store) == reference


def test_ranks_may_read_their_own_copy_of_the_data(tmp_path, reference):
    """Machines with node-local copies of the same files (another data root, same file hashes)
    extract one store together."""
    store = tmp_path / "s"
    fail = {r: f"root:{tmp_path}" for r in range(2)}
    assert _launch(tmp_path, store, fail=fail) == [{"ok": True, "complete": True}] * 2


def test_memory_stores_are_refused_for_several_ranks():
    with pytest.raises(ValueError, match=r"memory:// store lives in one process; 2 ranks"):
        _run("memory://dist/s", ToyDataset(N), ToyBackbone(), rank=0, world_size=2)


def test_ranks_resolve(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert Ranks.resolve() == Ranks(0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert Ranks.resolve() == Ranks(3, 4, 1)
    assert Ranks.resolve(rank=0, world_size=1) == Ranks(0, 1, 0)
    assert Ranks(1, 2).mine(range(5)) == [1, 3]
    with pytest.raises(ValueError, match="rank"):
        Ranks.resolve(rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        Ranks.resolve(rank=0, world_size=0)
    # a world size passed under torchrun still takes the rank from RANK
    assert Ranks.resolve(world_size=4) == Ranks(3, 4, 1)
    assert Ranks.resolve(rank=np.int64(2), world_size=np.int64(4)) == Ranks(2, 4, 1)
    assert Ranks.resolve(world_size=1) == Ranks(0, 1, 0)  # a world of one is rank 0
    monkeypatch.delenv("RANK")
    with pytest.raises(ValueError, match="no rank was given and RANK is not set"):
        Ranks.resolve(world_size=2)
    with pytest.raises(ValueError, match="rank: expected an int"):
        Ranks.resolve(rank="1", world_size=2)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        Ranks.resolve()


def test_a_complete_store_is_checked_on_every_rank(tmp_path, reference):
    """A store that is complete already is returned to every rank whose inputs match it; a rank
    with other inputs is told so (and so is rank 0) instead of getting a store of someone else's
    features; the store is left as it was."""
    store = tmp_path / "s"
    _run(store, ToyDataset(N), ToyBackbone(), chunk_images=CHUNK)
    assert _launch(tmp_path, store) == [{"ok": True, "complete": True}] * 2
    r0, r1 = _launch(tmp_path, store, fail={1: "seed:1"})
    assert not r1["ok"] and "rank 1 found rank 0's store complete" in r1["error"]
    assert "weights_sha256" in r1["error"]
    assert not r0["ok"] and "rank 1:" in r0["error"] and "other inputs" in r0["error"]
    assert _tree(store) == reference
