"""flock-based locks in a root-only directory.

The kernel drops an flock when its holder dies, so a crashed or killed holder never blocks the
next command (no stale lock files to clean). The file's content names the holder so a refusal can
say who holds it; it is informational only.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from vzpkg.errors import ExitCode, VzError

log = logging.getLogger("vzpkg")

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def ensure_private_dir(path: Path, what: str = "lock directory", key: str = "LOCKDIR") -> None:
    """``path`` exists as a directory root alone can write (made 0700 when missing)."""
    try:
        if not os.path.lexists(path):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as e:
        raise VzError(
            f"{what} {path} cannot be made: {e.strerror}",
            ExitCode.SYSTEM,
            hint=f"{key} must name a directory (or a place for one) that root can write: {path}",
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise VzError(
            f"{what} {path} is not a directory",
            ExitCode.SYSTEM,
            hint=f"set {key} in the host configuration to a directory, or remove what is there",
        )
    if os.geteuid() == 0 and (st.st_uid != 0 or st.st_mode & 0o022):
        raise VzError(
            f"{what} {path} is writable by others or not owned by root",
            ExitCode.SYSTEM,
            hint=f"chown root: {path} && chmod 700 {path}",
        )


def holder_of(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown process"
    return text or "unknown process"


@contextlib.contextmanager
def locked(
    lock_dir: Path,
    name: str,
    *,
    timeout: float = 0,
    what: str | None = None,
    on_wait: str | None = None,
    hint: str = "wait for it to finish, or pass --timeout SECONDS to wait",
) -> Iterator[Path]:
    """Hold the lock ``name`` for the duration of the block.

    timeout 0 fails at once when the lock is held; a positive timeout waits that many seconds;
    a negative one waits forever. Raises VzError(LOCKED) naming the holder, with ``hint``
    (which names the command's own way to wait, if it has one).
    """
    ensure_private_dir(lock_dir)
    path = lock_dir / (_SAFE.sub("_", name) + ".lck")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise VzError(
            f"cannot open lock file {path}: {e.strerror}",
            ExitCode.SYSTEM,
            hint=f"{path} must be a regular file (or absent) in a directory root can write",
        ) from None
    try:
        deadline = None if timeout < 0 else time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise VzError(
                        f"{what or name} is locked by {holder_of(path)}",
                        ExitCode.LOCKED,
                        hint=hint,
                    ) from None
                if not announced and on_wait:
                    log.warning("%s (held by %s)", on_wait, holder_of(path))
                    announced = True
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        argv = " ".join(sys.argv[:4])
        os.pwrite(fd, f"pid {os.getpid()} ({argv})\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def is_locked(lock_dir: Path, name: str) -> bool:
    path = lock_dir / (_SAFE.sub("_", name) + ".lck")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
