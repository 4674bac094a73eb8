"""An advisory lock per output folder, so two writers never interleave in one cohort.

``filelock`` takes an OS lock (``flock``) on ``<folder>/.ctsgan.lock``; the kernel drops it when the holder exits,
however it dies, so the lock of a dead process is taken over by the next writer without any cleanup. Who holds the
lock (pid, host, stage, start time) is written beside it in ``.ctsgan.lock.json`` for the second writer's error.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from ..errors import CTSGANError
from .atomic import atomic_write_bytes

LOCK_FILE = ".ctsgan.lock"
HOLDER_FILE = ".ctsgan.lock.json"
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def _holder(folder: Path) -> str:
    try:
        h = json.loads((folder / HOLDER_FILE).read_text(encoding="utf-8"))
        return f"pid {h['pid']} on {h['host']} (`ctsgan {h['stage']}` since {h['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def folder_lock(folder: str | Path, stage: str) -> Iterator[None]:
    """Hold the write lock of ``folder`` (created if missing) for the block.

    Parameters
    ----------
    folder : the output folder (cohort, shard, phantoms folder)
    stage : the command, named in the holder record (``prepare``, ``generate``, ``phantoms``)

    Raises
    ------
    CTSGANError
        ``<folder>: in use by pid <pid> on <host> (...)`` when another live process holds it.

    Notes
    -----
    A folder that cannot be written at all (read-only file system) is entered without a lock: no other writer can
    change it either, and the stage fails cleanly at its first write if it needs one.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CTSGANError(f"{folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise CTSGANError(f"{folder}: in use by {_holder(folder)}; wait for it to finish or write elsewhere") from None
    except OSError as exc:
        if exc.errno not in _READ_ONLY or os.access(folder, os.W_OK):
            raise
        yield
        return
    try:
        atomic_write_bytes(folder / HOLDER_FILE, json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "stage": stage,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode() + b"\n")
        yield
    finally:
        lock.release()
