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


# --- namespaces and the new mount API ----------------------------------------------------------

CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
AT_NO_AUTOMOUNT = 0x800
AT_SYMLINK_NOFOLLOW = 0x100
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x00000004
MOVE_MOUNT_T_EMPTY_PATH = 0x00000040
MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004
MOUNT_ATTR_NOEXEC = 0x00000008
MS_PRIVATE = 1 << 18  # a propagation type (mount_setattr's propagation field)
MOUNT_ATTR_IDMAP = 0x00100000
UMOUNT_NOFOLLOW = 0x00000008
# x86_64 (and every architecture that uses the generic table for them: these came late enough
# to have the same numbers everywhere but alpha).
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442


class MountAttr(ctypes.Structure):
    """struct mount_attr (linux/mount.h)."""

    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def _check(result: int, what: str | os.PathLike[str] | None = None) -> int:
    if result < 0:
        _raise_errno(what)
    return result


def unshare(flags: int) -> None:
    """unshare(2) for this process (Python 3.11 has no os.unshare)."""
    _check(_libc().unshare(ctypes.c_int(flags)))


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc().setns(ctypes.c_int(fd), ctypes.c_int(nstype)))


def open_tree(path: str | os.PathLike[str], flags: int, dirfd: int = AT_FDCWD) -> int:
    """open_tree(2): with OPEN_TREE_CLONE, a detached copy of the mount at ``path``; an fd."""
    return _check(
        _libc().syscall(
            ctypes.c_long(SYS_OPEN_TREE),
            ctypes.c_int(dirfd),
            os.fsencode(path),
            ctypes.c_uint(flags),
        ),
        path,
    )


def mount_setattr(fd: int, attr: MountAttr, flags: int = AT_EMPTY_PATH, path: str = "") -> None:
    """mount_setattr(2) on the mount ``fd`` refers to (``path`` empty: fd itself)."""
    _check(
        _libc().syscall(
            ctypes.c_long(SYS_MOUNT_SETATTR),
            ctypes.c_int(fd),
            os.fsencode(path),
            ctypes.c_uint(flags),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        )
    )


def move_mount(fd: int, target: str | os.PathLike[str] | int) -> None:
    """move_mount(2) of the detached mount ``fd`` onto ``target``: a path, or an fd (O_PATH
    is enough) of exactly the file or directory to mount on."""
    if isinstance(target, int):
        to_fd, to_path, flags = target, b"", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH
    else:
        to_fd, to_path, flags = AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH
    _check(
        _libc().syscall(
            ctypes.c_long(SYS_MOVE_MOUNT),
            ctypes.c_int(fd),
            b"",
            ctypes.c_int(to_fd),
            to_path,
            ctypes.c_uint(flags),
        ),
        None if isinstance(target, int) else target,
    )


def umount(target: str | os.PathLike[str], flags: int = UMOUNT_NOFOLLOW) -> None:
    """umount2(2) of the mount on ``target`` (never through a symlink)."""
    _check(_libc().umount2(os.fsencode(target), ctypes.c_int(flags)), target)


def enter_userns(fd: int) -> None:
    """Become root of the user namespace ``fd`` refers to: between fork and exec, so that a
    program (tar unpacking a VPS's files) runs with the VPS's ids."""
    setns(fd, CLONE_NEWUSER)
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


RENAME_EXCHANGE = 2


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
    """renameat2(2) with RENAME_EXCHANGE: ``a`` and ``b`` swap names at once."""
    _check(
        _libc().renameat2(
            ctypes.c_int(AT_FDCWD),
            os.fsencode(a),
            ctypes.c_int(AT_FDCWD),
            os.fsencode(b),
            ctypes.c_uint(RENAME_EXCHANGE),
        ),
        a,
    )


# --- statx -------------------------------------------------------------------------------------

STATX_MNT_ID = 0x00001000  # stx_mnt_id: the mount's id, as the first field of mountinfo
STATX_ATTR_MOUNT_ROOT = 0x00002000  # the path is the root of a mount (Linux 5.8+)


class StatxTimestamp(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32), ("_pad", ctypes.c_int32))


class Statx(ctypes.Structure):
    """struct statx (linux/stat.h), 256 bytes; fields after stx_mnt_id left as padding."""

    _fields_ = (
        ("stx_mask", ctypes.c_uint32),
        ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16),
        ("_spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64),
        ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64),
        ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", StatxTimestamp),
        ("stx_btime", StatxTimestamp),
        ("stx_ctime", StatxTimestamp),
        ("stx_mtime", StatxTimestamp),
        ("stx_rdev_major", ctypes.c_uint32),
        ("stx_rdev_minor", ctypes.c_uint32),
        ("stx_dev_major", ctypes.c_uint32),
        ("stx_dev_minor", ctypes.c_uint32),
        ("stx_mnt_id", ctypes.c_uint64),
        ("_spare", ctypes.c_uint64 * 13),
    )


def statx(path: str | os.PathLike[str], mask: int, flags: int = 0, dirfd: int = AT_FDCWD) -> Statx:
    """statx(2) (Python's os.stat has no mount id nor attributes). What the kernel filled in is
    in ``stx_mask`` and ``stx_attributes_mask``: an older kernel leaves the newer fields out."""
    buf = Statx()
    _check(
        _libc().statx(
            ctypes.c_int(dirfd),
            os.fsencode(path),
            ctypes.c_int(flags),
            ctypes.c_uint(mask),
            ctypes.byref(buf),
        ),
        path,
    )
    return buf
