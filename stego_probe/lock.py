"""Exclusive locks on output folders, so two runs never write into one folder at once.

A sweep or an ``evaluate`` run appends rows to files in its output folder; two runs started
together into the same folder would both append every row. :func:`folder_lock` takes an
exclusive lock for the lifetime of a run:

* the lock file is ``<folder>/.stego_probe.lock``; it holds a JSON record of the holder
  (``pid``, ``host``, ``started``, ``command``), so the error a second run gets names who holds
  the folder;
* the lock itself is an OS advisory lock (``fcntl.flock``) on that file, which the kernel
  releases when the holder exits in any way (including ``kill -9``): a lock file left behind by
  a dead run is *stale* and is taken over without any user action;
* where ``flock`` is unavailable or not enforced (some network filesystems), the record is the
  fallback: a record naming a live process on this host (other than the caller) refuses the
  lock, a record naming a dead process on this host is stale, and a record from another host is
  refused with the instruction to delete the file once that run has ended.

The lock file is left in place after release (emptied): deleting a file others may hold open
would let two runs lock two different files.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

#: Name of the lock file inside a locked folder.
LOCK_NAME = ".stego_probe.lock"


class FolderLockedError(RuntimeError):
    """Another live run holds the folder's lock (the message names it and what to do)."""


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:  # pragma: no cover - platform without signal 0
        return True
    return True


def _read_record(path: Path) -> dict | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    if not text.strip():
        return None
    try:
        rec = json.loads(text)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def _describe(rec: dict) -> str:
    return (
        f"pid {rec.get('pid')} on host {rec.get('host')!r} since {rec.get('started')} "
        f"({rec.get('command') or 'unknown command'})"
    )


def lock_holder(folder: str | os.PathLike) -> dict | None:
    """The record of the live run holding ``folder``'s lock, or None when it is free.

    A stale record (its process is dead, or its OS lock is released) counts as free.
    """
    path = Path(folder) / LOCK_NAME
    rec = _read_record(path)
    if rec is None:
        return None
    if fcntl is not None:
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return rec
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    if rec.get("host") == socket.gethostname() and not _pid_alive(int(rec.get("pid") or 0)):
        return None
    if rec.get("host") == socket.gethostname() and fcntl is not None:
        # The OS lock is free although the recorded process lives: flock works on this
        # filesystem, so the record is left over from a process that released it (or a pid
        # reused since). Free.
        return None
    return rec


def _flock_briefly_retried(fd: int, tries: int = 5, wait_s: float = 0.05) -> None:
    """``flock(LOCK_EX | LOCK_NB)``, retried a few times: :func:`lock_holder` takes the lock for
    an instant to test it, which must not make a run starting at that moment fail."""
    for i in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            if i == tries - 1:
                raise
            time.sleep(wait_s)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[dict]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the ``with`` block.

    Args:
        folder: the output folder (local path; URLs are not lockable and are refused).
        what: the holder's description for other runs' error messages (e.g. ``"sweep"``).

    Yields:
        the holder record written to ``<folder>/.stego_probe.lock``
        (``{"pid", "host", "started", "command", "what"}``).

    Raises:
        FolderLockedError: another live run holds the lock; the message names its pid, host,
            start time and command, and how to proceed.
        ValueError: ``folder`` is a URL.
    """
    if "://" in str(folder):
        raise ValueError(f"output folder {folder}: only local folders can be locked")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    host = socket.gethostname()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                _flock_briefly_retried(fd)
            except OSError:
                rec = _read_record(path) or {}
                raise FolderLockedError(
                    f"output folder {folder} is in use by another {rec.get('what', 'run')}: "
                    f"{_describe(rec)}. Wait for it to finish, or write to another folder"
                ) from None
        rec = _read_record(path)
        if rec is not None and rec.get("pid") != os.getpid():
            same_host = rec.get("host") == host
            if not same_host:
                raise FolderLockedError(
                    f"output folder {folder} is locked by {_describe(rec)}, another host. If "
                    f"that run has ended, delete {path} and start again"
                )
            if fcntl is None and _pid_alive(int(rec.get("pid") or 0)):
                raise FolderLockedError(
                    f"output folder {folder} is in use by another {rec.get('what', 'run')}: "
                    f"{_describe(rec)}. Wait for it to finish, or write to another folder"
                )
            # Same host, and either the OS lock was free or the process is dead: stale.
        record = {
            "pid": os.getpid(),
            "host": host,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
            "what": what,
        }
        data = (json.dumps(record) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        try:
            yield record
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            if fcntl is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def table_lock_folder(table: str | os.PathLike) -> Path:
    """The folder whose lock serialises every writer of the results table ``table``:
    ``<real folder of table>/.stego_probe.locks/<file name>`` (symlinks resolved, so two paths
    to one file share one lock)."""
    real = Path(os.path.realpath(table))
    return real.parent / ".stego_probe.locks" / real.name


@contextlib.contextmanager
def table_lock(table: str | os.PathLike, what: str = "run") -> Iterator[dict]:
    """Hold the exclusive lock of the results table ``table`` (a CSV path) for the block.

    Every writer of a results table takes it — ``evaluate --out FILE`` and a sweep for its
    ``OUT/results.csv`` — so two runs never append to one table at once, whatever else they
    lock. Two tables in one folder have two locks.

    Yields / Raises: as :func:`folder_lock` (on :func:`table_lock_folder`).
    """
    with folder_lock(table_lock_folder(table), what=what) as rec:
        yield rec
