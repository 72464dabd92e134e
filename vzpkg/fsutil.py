"""File operations inside a tree the host must not trust (a new root, a container's root).

Every path is walked one component at a time with O_NOFOLLOW relative to a directory fd, so a
symlink planted in the tree (``etc -> /etc``) can never redirect a host-side write outside it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from vzpkg import run
from vzpkg.errors import ExitCode, VzError
from vzpkg.mounts import mounts_under

log = logging.getLogger("vzpkg")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _parts(rel: str | PurePosixPath) -> list[str]:
    parts = [p for p in PurePosixPath(rel).parts if p not in ("/", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f"path {rel} leaves its root")
    return parts


def _split(rel: str) -> tuple[str, str]:
    """``rel`` as (parent, name) where name is an entry beneath the root: never ``..`` (which
    made ``remove_beneath(root, "..")`` empty the root's parent), never the root itself."""
    parts = _parts(rel)
    if not parts:
        raise ValueError(f"path {rel!r} names the root itself, not an entry beneath it")
    return "/".join(parts[:-1]) or ".", parts[-1]


def write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked; loop until everything is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextlib.contextmanager
def open_dir_beneath(
    root: Path,
    rel: str | PurePosixPath = ".",
    *,
    create: bool = False,
    owner: tuple[int, int] | None = None,
) -> Iterator[int]:
    """An fd of directory ``root/rel``, never following a symlink on the way. With ``create``
    missing directories are made (owned by ``owner`` when given)."""
    parts = _parts(rel)
    fd = os.open(root, _DIR_FLAGS)
    try:
        for depth, part in enumerate(parts, start=1):
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                if owner is not None:
                    os.fchown(nxt, *owner)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                # Same errno (callers tell "nothing to do" by it), but a message that says why.
                raise OSError(
                    e.errno,
                    "not a directory (a symlink is never followed here)",
                    str(root.joinpath(*parts[:depth])),
                ) from None
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def write_file_beneath(
    root: Path,
    rel: str,
    data: bytes,
    mode: int = 0o644,
    *,
    owner: tuple[int, int] | None = None,
) -> None:
    """Replace ``root/rel`` with a regular file holding ``data`` (a symlink there is replaced),
    owned by ``owner`` (uid, gid) when given: a VPS's root, when the VPS has its own ids.

    On failure (a full disk, a directory where the file should be) nothing of ours is left
    behind, and the OSError names ``root/rel``.
    """
    parent, name = _split(rel)
    with open_dir_beneath(root, parent, create=True, owner=owner) as dfd:
        tmp = f".{name}.vzpkg-tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        try:
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                mode,
                dir_fd=dfd,
            )
            try:
                write_all(fd, data)
                if owner is not None:
                    os.fchown(fd, *owner)
                os.fchmod(fd, mode)  # after fchown, which would clear setuid bits
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise OSError(e.errno, e.strerror, str(root / rel)) from None


def remove_beneath(root: Path, rel: str) -> None:
    """Remove ``root/rel`` (file, symlink or whole directory) if it exists."""
    parent, name = _split(rel)
    try:
        with open_dir_beneath(root, parent) as dfd:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return
            if stat.S_ISDIR(st.st_mode):
                # shutil.rmtree with dir_fd is the fd-based, symlink-safe implementation.
                shutil.rmtree(name, dir_fd=dfd)
            else:
                os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            return  # a symlink where a directory was expected: nothing of ours to remove
        raise


def _names_beneath(root: Path, rel: str) -> list[str]:
    """Entries of directory ``root/rel``; none when it is missing or is a planted symlink."""
    try:
        with open_dir_beneath(root, rel) as dfd:
            return os.listdir(dfd)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        if e.errno == errno.ELOOP:
            return []
        raise


def empty_dir_beneath(root: Path, rel: str, *, keep: tuple[str, ...] = ()) -> None:
    """Remove everything inside directory ``root/rel`` except the names in ``keep``."""
    for name in _names_beneath(root, rel):
        if name not in keep:
            remove_beneath(root, f"{rel}/{name}")


def glob_remove_beneath(root: Path, rel_dir: str, prefix: str) -> None:
    """Remove entries of ``root/rel_dir`` whose name starts with ``prefix``."""
    for name in _names_beneath(root, rel_dir):
        if name.startswith(prefix):
            remove_beneath(root, f"{rel_dir}/{name}")


GUEST_FILE_MAX = 1 << 20  # a guest's config file vzpkg reads: larger ones are refused


def read_file_beneath(root: Path, rel: str, limit: int = GUEST_FILE_MAX) -> bytes:
    """Read regular file ``root/rel`` without following any symlink on the way (ELOOP if the
    file itself is a symlink); EFBIG past ``limit`` bytes (a VPS's root can make a sparse file
    of any size: reading it must not cost the host its memory)."""
    parent, name = str(PurePosixPath(rel).parent), PurePosixPath(rel).name
    with open_dir_beneath(root, parent) as dfd:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, f"{rel} is not a regular file")
            if st.st_size > limit:  # refused before a byte is read (it may grow meanwhile)
                raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(root / rel))
            chunks = []
            size = 0
            while chunk := os.read(fd, 1 << 16):
                size += len(chunk)
                if size > limit:
                    raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(root / rel))
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old file or the new one, even
    across a crash: temp file in the same directory, fsync, rename, fsync of the directory."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            write_all(fd, data)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


RMTREE_PATIENCE = 10.0  # seconds


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree_safely(path: Path) -> None:
    """Detach any mount left below ``path`` (never recurse into one), then delete it."""
    points = mounts_under(path)
    for point in points:
        run.run(["umount", "--lazy", point], check=False)
    if points and mounts_under(path):  # (mountinfo is read again only when there were some)
        raise VzError(
            f"cannot remove {path}: it still has mounts below it",
            ExitCode.SYSTEM,
            hint=f"umount them by hand: grep {path} /proc/mounts",
        )
    # Processes of an interrupted bootstrap are SIGKILLed with their PID namespace, which the
    # kernel finishes asynchronously: one may still create a file while we delete. Retry.
    deadline = time.monotonic() + RMTREE_PATIENCE
    while True:
        # rm walks iteratively: Python's rmtree recurses once per level, and a tree a VPS
        # made 2500 levels deep would end it with RecursionError. It follows no symlink and,
        # here, crosses no mount.
        run.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False, die_with_us=True)
        if not os.path.lexists(path):
            return
        if time.monotonic() > deadline:
            raise VzError(f"cannot remove {path}", ExitCode.SYSTEM, hint=f"rm -rf {path}")
        time.sleep(0.1)


def discard(path: Path) -> None:
    """Remove a temporary on the way out of a failure; never mask the failure itself."""
    try:
        if os.path.lexists(path):
            remove_tree_safely(path)
    except Exception as e:
        log.error("could not remove %s: %s", path, e)


def makedirs_mode(path: Path, mode: int) -> None:
    """Create ``path`` and missing parents with ``mode`` (whatever the umask)."""
    if path.is_dir():
        return
    makedirs_mode(path.parent, mode)
    with contextlib.suppress(FileExistsError):
        path.mkdir()
        path.chmod(mode)


def mkdir_mode(path: Path, mode: int) -> None:
    """mkdir with exactly ``mode`` (whatever the umask)."""
    path.mkdir()
    path.chmod(mode)


def read_small(path: Path) -> str | None:
    """The text of regular file ``path`` (4 KiB at most, stripped); None if it is missing, a
    symlink or not a regular file. O_NONBLOCK: a FIFO planted in a VPS's tree must not hang us.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 4096).decode(errors="replace").strip()
    finally:
        os.close(fd)


def write_durably(directory: Path, name: str, text: str, mode: int) -> None:
    """Replace ``directory/name`` with ``text`` (temp, fsync, rename, fsync of the directory),
    never following a symlink at ``name``."""
    tmp = f".{name}.tmp"
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
        try:
            try:
                write_all(fd, text.encode())
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
