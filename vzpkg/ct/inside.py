"""System calls made inside a running VPS for the host: a child of vzctl or vzpkg enters the
VPS's user namespace (as its root: it can do no more than the VPS's root can) and its mount
namespace, and makes only system calls there; no VPS binary runs. What it attaches there is
taken on the host first (a detached mount), and every path in the VPS is opened without
following a symlink (the VPS's root owns its tree)."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from vzpkg import syscalls
from vzpkg.errors import ExitCode, VzError
from vzpkg.fsutil import open_dir_beneath

MNT_DETACH = 2
# A read-only view for a VPS: nothing to run, no set-id program, no device node through it.
READ_ONLY = (
    syscalls.MOUNT_ATTR_RDONLY
    | syscalls.MOUNT_ATTR_NOSUID
    | syscalls.MOUNT_ATTR_NODEV
    | syscalls.MOUNT_ATTR_NOEXEC
)


def in_vps(init_pid: int, action: Callable[[], None], what: str) -> None:
    """Run ``action`` in a child inside the VPS whose init is ``init_pid``; its error, if
    any, raised here as "cannot ``what`` inside the VPS: ..." (exit 3)."""
    userns = os.open(f"/proc/{init_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    own = os.stat("/proc/self/ns/user").st_ino == os.fstat(userns).st_ino  # privileged VPS
    ns = os.open(f"/proc/{init_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    read, write = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # the child: one system call after another, then _exit
            code = 0
            try:
                os.close(read)
                if not own:
                    syscalls.enter_userns(userns)
                syscalls.setns(ns, syscalls.CLONE_NEWNS)
                action()
            except BaseException as e:  # reported to the parent
                os.write(write, str(e).encode()[:4000] or b"failed")
                code = 1
            os._exit(code)
        os.close(write)
        write = -1
        message = b""
        while chunk := os.read(read, 4096):
            message += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(ns)
        os.close(userns)
        os.close(read)
        if write >= 0:
            os.close(write)
    if status != 0:
        raise VzError(
            f"cannot {what} inside the VPS: {message.decode(errors='replace')}", ExitCode.SYSTEM
        )


def shares_host_ids(init_pid: int) -> bool:
    """Whether the VPS runs in the host's user namespace (a privileged VPS: its root is the
    host's root, and no file of the host's is safe from it)."""
    return os.stat(f"/proc/{init_pid}/ns/user").st_ino == os.stat("/proc/self/ns/user").st_ino


def bind_read_only(init_pid: int, views: Mapping[str, Path]) -> None:
    """Show host directory ``views[path]`` read-only at ``path`` in the VPS (made there as the
    VPS's root if missing). Its files stay the host's root's: a VPS in a user namespace sees
    them owned by nobody and cannot change them, even where it could remount the view."""
    detached = {}
    try:
        for path, source in views.items():
            fd = syscalls.open_tree(source, syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC)
            detached[path] = fd
            # Private: a host mount that is shared must not make the view a peer of it, through
            # which what the VPS mounts below the view would show on the host.
            attrs = syscalls.MountAttr(attr_set=READ_ONLY, propagation=syscalls.MS_PRIVATE)
            syscalls.mount_setattr(fd, attrs)

        def attach() -> None:
            for path, fd in detached.items():
                with open_dir_beneath(Path("/"), path.strip("/"), create=True) as target:
                    syscalls.move_mount(fd, target)

        in_vps(init_pid, attach, "show the package cache")
    finally:
        for fd in detached.values():
            os.close(fd)


def unbind(init_pid: int, paths: Iterable[str]) -> None:
    """Take every mount at each of ``paths`` in the VPS away (nothing to do where none is)."""
    wanted = list(paths)

    def detach() -> None:
        for path in wanted:
            parent, _, name = path.strip("/").rpartition("/")
            try:
                with open_dir_beneath(Path("/"), parent) as directory:
                    os.fchdir(directory)  # umount2 of a name here: the name is not followed
                    while True:
                        try:
                            syscalls.umount(name, MNT_DETACH | syscalls.UMOUNT_NOFOLLOW)
                        except OSError as e:
                            if e.errno in (errno.EINVAL, errno.ENOENT):  # no (more) mount
                                break
                            raise
                    with contextlib.suppress(OSError):  # the empty mount point goes too
                        os.rmdir(name, dir_fd=directory)
            except FileNotFoundError:
                continue

    in_vps(init_pid, detach, "take the package cache away")
