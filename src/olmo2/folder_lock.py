"""One process at a time in a folder: two runs writing one run folder (or one token directory) would
silently replace each other's config, metrics and checkpoints, so the second one is refused.

The lock is ``fcntl.flock`` on a lock file in the folder, so the kernel releases it when the holder
dies, however it dies: a lock file left behind by a killed run is stale and simply taken over. The
file records the holder (host, pid, start time, command) for the refusal message. POSIX only (no
Windows: ``fcntl``). On a filesystem without ``flock`` support the folder is used unlocked, with a
warning. Imports no olmo2 module, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "FolderLocked", "hold_folder"]

LOCK_NAME = ".olmo2.lock"


class FolderLocked(ValueError):
    """Another live process holds the folder; the message names the folder and the holder."""


def _holder_text(path: Path) -> str:
    """The holder recorded in a lock file, in words."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {holder['pid']} on {holder['host']} since {holder['started']}: {holder['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not recorded itself yet"


def _take(path: Path) -> int | None:
    """An fd holding ``path``'s lock, or None when another process holds it. Retries when the file
    was replaced between open and lock (a holder removing it on release)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # we locked a file its holder had already removed: lock the current one


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike, name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold ``folder`` (which must exist) for the ``with`` block: raise :class:`FolderLocked` if
    another process holds it; take over a stale lock file with a note on stderr; remove the lock
    file on exit. Yields the lock file's path."""
    path = Path(folder) / name
    try:
        fd = _take(path)
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        print(
            f"warning: {folder}: this filesystem has no flock ({e.strerror}), so a second run into "
            "this folder is not prevented",
            file=sys.stderr,
            flush=True,
        )
        fd = -1
    if fd is None:
        raise FolderLocked(
            f"{folder} is in use by another run ({_holder_text(path)}); wait for it to finish, or use "
            f"another folder (remove {path} only if that process is gone)"
        )
    if fd < 0:
        with contextlib.suppress(OSError):
            path.unlink()
        yield path
        return
    try:
        if os.fstat(fd).st_size:
            print(
                f"{folder}: taking over the stale lock of a run that is gone ({_holder_text(path)})",
                file=sys.stderr,
                flush=True,
            )
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still locked: a waiting taker retries on the new file (see _take)
        os.close(fd)
