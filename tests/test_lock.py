"""Output-folder locks: a second live run is refused, a dead holder's lock is stale."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from stego_probe.lock import LOCK_NAME, FolderLockedError, folder_lock, lock_holder

HOLD = """
import sys, time
from stego_probe.lock import folder_lock
with folder_lock(sys.argv[1], what="sweep"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(folder):
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_run_is_refused_and_named(tmp_path):
    p = _holder(tmp_path)
    try:
        rec = lock_holder(tmp_path)
        assert rec is not None and rec["pid"] == p.pid and rec["what"] == "sweep"
        with pytest.raises(FolderLockedError, match=rf"in use by another sweep: pid {p.pid}"):
            with folder_lock(tmp_path):
                pass
    finally:
        p.kill()
        p.wait()


def test_killed_holder_leaves_a_stale_lock_that_is_taken_over(tmp_path):
    p = _holder(tmp_path)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    # The record is still in the file, but nobody holds the OS lock.
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == p.pid
    assert lock_holder(tmp_path) is None
    with folder_lock(tmp_path, what="evaluate") as rec:
        assert rec["pid"] == os.getpid()
        assert lock_holder(tmp_path)["what"] == "evaluate"
    assert lock_holder(tmp_path) is None
    # Released: the lock can be taken again at once.
    with folder_lock(tmp_path):
        pass


def test_stale_record_of_dead_pid_and_foreign_host(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    time.sleep(0.05)
    rec = {"pid": dead.pid, "host": socket.gethostname(), "started": "x", "command": "c"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(rec))
    with folder_lock(tmp_path):
        pass
    rec["host"] = "elsewhere.invalid"
    (tmp_path / LOCK_NAME).write_text(json.dumps(rec))
    with pytest.raises(FolderLockedError, match="another host.*delete"):
        with folder_lock(tmp_path):
            pass


def test_url_refused(tmp_path):
    with pytest.raises(ValueError, match="only local folders"):
        with folder_lock("s3://bucket/out"):
            pass
