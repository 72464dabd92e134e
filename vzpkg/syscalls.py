"""Every ctypes wrapper vzpkg uses: one function per system call that Python's os module lacks,
each raising OSError with the errno and the path it was about.

Kept in one place so that the next ones (unshare, setns, open_tree, mount_setattr, move_mount)
join them here rather than each caller loading libc its own way.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal

PR_SET_PDEATHSIG = 1
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _raise_errno(what: str | os.PathLike[str] | None = None) -> None:
    code = ctypes.get_errno()
    raise OSError(code, os.strerror(code), None if what is None else os.fspath(what))


def syncfs(path: str | os.PathLike[str]) -> None:
    """syncfs(2): flush the filesystem holding directory ``path`` (files tar wrote were never
    fsynced one by one)."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        if _libc().syncfs(fd) != 0:
            _raise_errno(path)
    finally:
        os.close(fd)


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """prctl(PR_SET_PDEATHSIG): this process gets ``sig`` when its parent thread dies.

    Called in a child between fork and exec (subprocess's preexec_fn), where raising would only
    make the spawn fail: the error is raised all the same, so that a child that could outlive
    vzpkg never starts.
    """
    if _libc().prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        _raise_errno()
