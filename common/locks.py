"""One writer at a time: an advisory flock on a lock file that names its holder.

The kernel releases an flock when its process dies, so a lock left by a killed writer is never
"held": the next writer takes it at once and only the name left in the file tells what
happened (:func:`stale_owner`). Used by scene stores (one writer per store) and training runs
(one trainer per run directory).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from common.errors import UserError


def acquire(lock_path: str | Path, what: str, error: type[UserError] = UserError) -> int:
    """Take the lock or raise ``error`` naming the live holder; returns the file descriptor."""
    lock_path = Path(lock_path)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _owner(fd)
        os.close(fd)
        raise error(f"{what} is being written by another process ({holder}); one writer at a "
                    "time: wait for it to finish or stop it") from None
    previous = _owner(fd)
    if previous and previous != "unknown":
        # The file names a writer but nobody holds the lock: that writer died.
        logging.getLogger(__name__).warning("%s: recovered a stale lock left by %s", what, previous)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "since": time.time()}).encode(), 0)
    return fd


def release(fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)  # an empty lock file means "cleanly closed"
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def stale_owner(lock_path: str | Path) -> str | None:
    """The writer named in the lock file if it is not running any more (else None)."""
    lock_path = Path(lock_path)
    if not lock_path.exists():
        return None
    fd = os.open(lock_path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # a live writer holds it
        owner = _owner(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return owner or None
    finally:
        os.close(fd)


def _owner(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0)
        if not raw:
            return ""
        info = json.loads(raw)
        return f"pid {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError):
        return "unknown"
