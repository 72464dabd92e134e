"""Private areas and mounting of a VPS's root, for the layouts ``plain`` and ``overlay``.

plain
    The cache is unpacked into ``<private>.tmp`` and renamed to ``<private>``; mounting binds
    ``<private>`` onto VE_ROOT.
overlay
    The cache is unpacked once per cache version into ``TREES_DIR/<sha256>/root``, shared by
    every VPS made from it (one copy on disk, one page cache) and only ever used as an overlay
    lowerdir, so no VPS can write to it. ``TREES_DIR/<sha256>/refs/<CTID>`` records each user
    (holding its private path); the private area holds ``upper/``, ``work/`` and
    ``.vzpkg-tree`` naming the sha256. Mounting is ``mount -t overlay`` on VE_ROOT.

Nothing half-made is ever visible: private areas and trees are built under a temporary name
and renamed into place, and any failure or interrupt removes the temporary. A tree is created,
referenced, unreferenced and removed only under the lock ``tree-<sha256>``; the caller holds
the CT's own lock.

A plain private area is the VPS's root, so everything in it is under the VPS's control: a VPS
can create a ``.vzpkg-tree`` of its own. A private area therefore counts as overlay only when
the tree it names holds a reference for this CT and this private path, which lives in TREES_DIR
where no VPS can write.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from vzpkg import run
from vzpkg.ct.conf import LAYOUTS, ctid_valid, root_path
from vzpkg.errors import ExitCode, VzError
from vzpkg.fsutil import fsync_dir, remove_tree_safely
from vzpkg.hostconf import HostConfig
from vzpkg.lock import locked
from vzpkg.mounts import is_mounted as is_mounted  # callers ask the layout
from vzpkg.mounts import mounts_using

log = logging.getLogger("vzpkg")

TREE_MARKER = ".vzpkg-tree"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_REF_NAME = re.compile(r"[1-9][0-9]*")
# mount(8) splits -o at commas, overlayfs splits lowerdir at colons and reads backslashes as
# escapes: a path with any of them would mount something other than what was meant.
_UNSAFE_IN_OPTION = re.compile(r"[,:\\=\s]")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


# --- small helpers -------------------------------------------------------------------------


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def syncfs(path: Path) -> None:
    """syncfs(2): flush the filesystem holding ``path`` (what tar wrote was never fsynced)."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        if _libc().syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)


def _makedirs(path: Path, mode: int) -> None:
    """Create ``path`` and missing parents with ``mode`` (whatever the umask)."""
    if path.is_dir():
        return
    _makedirs(path.parent, mode)
    with contextlib.suppress(FileExistsError):
        path.mkdir()
        path.chmod(mode)


def _mkdir(path: Path, mode: int) -> None:
    path.mkdir()
    path.chmod(mode)


def _absolute(path: Path, what: str) -> Path:
    if not path.is_absolute():
        raise VzError(f"{what} {path} is not an absolute path", ExitCode.INVALID_VALUE)
    return Path(os.path.normpath(path))


def _tmp_of(private: Path) -> Path:
    return private.with_name(private.name + ".tmp")


def _discard(path: Path) -> None:
    """Remove a temporary on the way out of a failure; never mask the failure itself."""
    try:
        if os.path.lexists(path):
            remove_tree_safely(path)
    except Exception as e:
        log.error("could not remove %s: %s", path, e)


def _sha_valid(sha256: str) -> str:
    if not _SHA256.fullmatch(sha256):
        raise VzError(f"invalid cache sha256 {sha256!r}", ExitCode.INVALID_VALUE)
    return sha256


def tree_path(host: HostConfig, sha256: str) -> Path:
    return host.trees_dir / _sha_valid(sha256)


def _tree_lock(host: HostConfig, sha256: str) -> contextlib.AbstractContextManager[Path]:
    return locked(
        host.lock_dir,
        f"tree-{sha256}",
        timeout=-1,
        what=f"template tree {sha256[:12]}",
        on_wait=f"waiting for template tree {sha256[:12]}",
    )


def _read_small(path: Path) -> str | None:
    """The text of regular file ``path``; None if it is missing or not a regular file.

    O_NONBLOCK: a FIFO planted in a VPS's tree must not hang us.
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


def _write_durably(directory: Path, name: str, text: str, mode: int) -> None:
    tmp = f".{name}.tmp"
    dir_fd = os.open(directory, _DIR_FLAGS)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
        try:
            try:
                os.write(fd, text.encode())
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


# --- layout detection ----------------------------------------------------------------------


def _ref_holds(host: HostConfig, sha256: str, ctid: int, private: Path) -> bool:
    return _read_small(host.trees_dir / sha256 / "refs" / str(ctid)) == str(private)


def _detect(host: HostConfig, ctid: int, private: Path) -> tuple[str, str | None]:
    """("plain", None), ("overlay", sha256), or ("unknown", marker text) when a marker is
    there but no tree vouches for it."""
    try:
        st = private.lstat()
    except FileNotFoundError:
        raise VzError(
            f"private area {private} of CT {ctid} does not exist",
            ExitCode.PRIVATE_MISSING,
            hint=f"create the CT first: vzctl create {ctid}",
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise VzError(
            f"private area {private} of CT {ctid} is not a directory",
            ExitCode.SYSTEM,
            hint="a private area is never a symlink or a file; check VE_PRIVATE",
        )
    marker = private / TREE_MARKER
    if not os.path.lexists(marker):
        return "plain", None
    text = _read_small(marker)
    if text is not None and _SHA256.fullmatch(text) and _ref_holds(host, text, ctid, private):
        return "overlay", text
    return "unknown", text


def layout_of(host: HostConfig, ctid: str | int, private: Path) -> str:
    """The layout of a CT's private area, ``plain`` or ``overlay``.

    Raises when the area carries an overlay marker that no tree in TREES_DIR vouches for (see
    the module's docstring): a forged marker in a plain VPS, or an overlay VPS whose tree is
    gone. VE_LAYOUT in the CT's config settles the first case.
    """
    number = ctid_valid(ctid)
    private = _absolute(private, "private area")
    layout, sha = _detect(host, number, private)
    if layout == "unknown":
        raise _unvouched(host, number, private, sha)
    return layout


def _unvouched(host: HostConfig, ctid: int, private: Path, marker: str | None) -> VzError:
    return VzError(
        f"private area {private} has a {TREE_MARKER} marker ({marker!r}) but no template tree "
        f"in {host.trees_dir} holds a reference for CT {ctid} there",
        ExitCode.SYSTEM,
        hint=(
            f'if CT {ctid} is a plain VPS, set VE_LAYOUT="plain" in its config; if it is an '
            "overlay VPS, its template tree was removed and it must be recreated"
        ),
    )


def _resolve_layout(
    host: HostConfig, ctid: int, private: Path, layout: str | None
) -> tuple[str, str | None]:
    """The layout to use: the configured one (VE_LAYOUT), checked against the area itself."""
    if layout is not None and layout not in LAYOUTS:
        raise VzError(f"unknown layout {layout!r}", ExitCode.INVALID_VALUE)
    detected, sha = _detect(host, ctid, private)
    if layout is None or layout == detected:
        if detected == "unknown":
            raise _unvouched(host, ctid, private, sha)
        return detected, sha
    if layout == "plain" and detected == "unknown":
        return "plain", None  # a marker the VPS made itself: its root, its files
    if layout == "plain":
        # Binding an overlay area would hand the VPS its own upper/ and work/ to replace with
        # symlinks that the next overlay mount would follow on the host.
        raise VzError(
            f"CT {ctid} is configured as plain but {private} is an overlay private area",
            ExitCode.SYSTEM,
            hint='set VE_LAYOUT="overlay" in its config',
        )
    if detected == "unknown":
        raise _unvouched(host, ctid, private, sha)
    raise VzError(
        f"CT {ctid} is configured as overlay but {private} is a plain private area",
        ExitCode.SYSTEM,
        hint='set VE_LAYOUT="plain" in its config',
    )


# --- create ----------------------------------------------------------------------------------


def _check_private_free(private: Path) -> None:
    try:
        st = private.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode) and not any(private.iterdir()):
        return  # an empty directory (a mount point the admin prepared, say) is taken over
    raise VzError(
        f"private area {private} already exists",
        ExitCode.PRIVATE_EXISTS,
        hint=f"destroy the CT that owns it first, or remove {private}",
    )


def create_private(
    host: HostConfig,
    ctid: str | int,
    layout: str,
    cache_archive: Path,
    cache_sha256: str,
    private: Path,
) -> None:
    """Make the private area of a new CT from a cache archive whose sha256 is known.

    plain unpacks (and so verifies) the whole archive. overlay reuses the tree of that sha256
    when it exists, which makes it fast; the archive is read only to make the tree. The caller
    holds the CT's lock.
    """
    number = ctid_valid(ctid)
    if layout not in LAYOUTS:
        raise VzError(
            f"unknown layout {layout!r}",
            ExitCode.INVALID_VALUE,
            hint=f"use one of {', '.join(LAYOUTS)}",
        )
    sha = _sha_valid(cache_sha256.lower())
    private = _absolute(private, "private area")
    _check_private_free(private)
    tmp = _tmp_of(private)
    try:
        _makedirs(private.parent, 0o700)
        if os.path.lexists(tmp):
            remove_tree_safely(tmp)  # an interrupted create of this CT; we hold its lock
    except OSError as e:
        raise VzError(f"cannot prepare {tmp}: {e.strerror}", ExitCode.SYSTEM) from None
    if layout == "plain":
        _create_plain(cache_archive, sha, private, tmp)
    else:
        _create_overlay(host, number, cache_archive, sha, private, tmp)


def _create_plain(archive: Path, sha: str, private: Path, tmp: Path) -> None:
    try:
        _mkdir(tmp, 0o700)  # unpacking gives it the mode of the archive's root
        from vzpkg.cache.archive import unpack_archive  # lazy: zstandard, tarfile

        unpack_archive(archive, tmp, expected_sha256=sha)
        syncfs(tmp)
        os.rename(tmp, private)
        fsync_dir(private.parent)
    except BaseException as e:
        _discard(tmp)
        if isinstance(e, OSError):
            raise VzError(f"cannot create private area {private}: {e}", ExitCode.SYSTEM) from None
        raise


def _create_overlay(
    host: HostConfig, ctid: int, archive: Path, sha: str, private: Path, tmp: Path
) -> None:
    tree = _reference_tree(host, ctid, archive, sha, private)
    try:
        _mkdir(tmp, 0o700)
        # The overlay's root directory takes its mode and owner from upper/.
        top = (tree / "root").stat()
        upper = tmp / "upper"
        _mkdir(upper, stat.S_IMODE(top.st_mode))
        os.chown(upper, top.st_uid, top.st_gid)
        _mkdir(tmp / "work", 0o700)
        _write_durably(tmp, TREE_MARKER, sha + "\n", 0o644)
        os.rename(tmp, private)
        fsync_dir(private.parent)
    except BaseException as e:
        _discard(tmp)
        try:
            _drop_ref(host, sha, ctid, private)
        except Exception as drop_error:
            log.error("could not drop the reference of CT %s to %s: %s", ctid, tree, drop_error)
        if isinstance(e, OSError):
            raise VzError(f"cannot create private area {private}: {e}", ExitCode.SYSTEM) from None
        raise


def _reference_tree(host: HostConfig, ctid: int, archive: Path, sha: str, private: Path) -> Path:
    """The tree of ``sha``, made from ``archive`` if it does not exist, referenced by ``ctid``."""
    tree = host.trees_dir / sha
    try:
        _makedirs(host.trees_dir, 0o755)
        with _tree_lock(host, sha):
            made = not os.path.lexists(tree)
            if made:
                _make_tree(host, archive, sha, tree)
            elif tree.is_symlink() or not (tree / "root").is_dir():
                raise VzError(
                    f"template tree {tree} is damaged (no root/ in it)",
                    ExitCode.SYSTEM,
                    hint=f"remove it once no VPS uses it: rm -rf {tree}",
                )
            try:
                _write_durably(tree / "refs", str(ctid), str(private) + "\n", 0o600)
            except BaseException:
                if made and not _refs_in(tree):
                    _remove_tree(host, sha)
                raise
    except OSError as e:
        raise VzError(f"cannot prepare template tree {tree}: {e}", ExitCode.SYSTEM) from None
    return tree


def _sweep_tree_temps(host: HostConfig, sha: str) -> None:
    """Remove what interrupted makes and removals of this tree left. Needs the tree's lock."""
    pattern = re.compile(rf"{sha}\.tmp-[0-9]+")
    for path in host.trees_dir.iterdir():
        if pattern.fullmatch(path.name):
            remove_tree_safely(path)


def _make_tree(host: HostConfig, archive: Path, sha: str, tree: Path) -> None:
    _sweep_tree_temps(host, sha)
    tmp = host.trees_dir / f"{sha}.tmp-{os.getpid()}"
    try:
        _mkdir(tmp, 0o700)
        _mkdir(tmp / "root", 0o700)  # unpacking gives it the mode of the archive's root
        _mkdir(tmp / "refs", 0o700)
        from vzpkg.cache.archive import unpack_archive

        unpack_archive(archive, tmp / "root", expected_sha256=sha)
        syncfs(tmp)
        os.chown(tmp, 0, 0)
        tmp.chmod(0o755)
        os.rename(tmp, tree)
        fsync_dir(host.trees_dir)
    except BaseException:
        _discard(tmp)
        raise


# --- destroy ---------------------------------------------------------------------------------


def _refs_in(tree: Path) -> list[str]:
    try:
        return [name for name in os.listdir(tree / "refs") if _REF_NAME.fullmatch(name)]
    except FileNotFoundError:
        return []


def _drop_ref(host: HostConfig, sha: str, ctid: int, private: Path) -> bool:
    """Remove CT ``ctid``'s reference to tree ``sha``, and the tree once nothing refers to it.

    Returns whether the tree was removed.
    """
    tree = host.trees_dir / sha
    with _tree_lock(host, sha):
        if _ref_holds(host, sha, ctid, private):
            (tree / "refs" / str(ctid)).unlink()
            fsync_dir(tree / "refs")
        if not os.path.isdir(tree) or _refs_in(tree):
            return False
        users = mounts_using(tree)
        if users:
            log.warning(
                "template tree %s has no references but is in use by %s; kept",
                tree,
                ", ".join(users),
            )
            return False
        _remove_tree(host, sha)
        return True


def _remove_tree(host: HostConfig, sha: str) -> None:
    """Remove tree ``sha``. Needs the tree's lock.

    Renamed first, so that a removal cut short leaves a temp (swept by the next make of that
    tree) rather than a tree with part of its files.
    """
    doomed = host.trees_dir / f"{sha}.tmp-{os.getpid()}"
    if os.path.lexists(doomed):
        remove_tree_safely(doomed)
    os.rename(host.trees_dir / sha, doomed)
    fsync_dir(host.trees_dir)
    remove_tree_safely(doomed)


def _trees_referencing(host: HostConfig, ctid: int, private: Path) -> Iterator[str]:
    try:
        names = os.listdir(host.trees_dir)
    except FileNotFoundError:
        return
    for name in sorted(names):
        if _SHA256.fullmatch(name) and _ref_holds(host, name, ctid, private):
            yield name


def destroy_private(
    host: HostConfig, ctid: str | int, private: Path, *, root: Path | None = None
) -> tuple[str, ...]:
    """Remove a CT's private area and, for overlay, its tree reference (and the tree once no
    reference is left). Returns the sha256 of each tree removed.

    Refuses while the CT's root (``root``, by default the host's VE_ROOT for the CT) or anything
    else shows the area: the caller stops and unmounts the CT first. Safe to repeat after an
    interrupted destroy. The caller holds the CT's lock.
    """
    number = ctid_valid(ctid)
    private = _absolute(private, "private area")
    root = root if root is not None else root_path(host, number)
    if is_mounted(root):
        raise VzError(
            f"CT {number} is mounted at {root}",
            ExitCode.MOUNTED,
            hint=f"stop it, or unmount it: vzctl umount {number}",
        )
    tmp = _tmp_of(private)
    for path in (private, tmp):
        users = mounts_using(path) if os.path.lexists(path) else []
        if users:
            raise VzError(
                f"{path} is in use by the mount(s) {', '.join(users)}",
                ExitCode.SYSTEM,
                hint=f"stop and unmount CT {number} first; else umount them by hand",
            )
    try:
        for path in (private, tmp):
            if os.path.islink(path):
                raise VzError(
                    f"{path} is a symlink, not a private area",
                    ExitCode.SYSTEM,
                    hint=f"check VE_PRIVATE of CT {number}; remove the link by hand",
                )
            if os.path.lexists(path):
                remove_tree_safely(path)
                fsync_dir(path.parent)
        removed = []
        for sha in _trees_referencing(host, number, private):
            if _drop_ref(host, sha, number, private):
                removed.append(sha)
    except OSError as e:
        raise VzError(
            f"cannot destroy private area {private}: {e}",
            ExitCode.DESTROY_FAILED,
        ) from None
    return tuple(removed)


# --- mount -----------------------------------------------------------------------------------


def _mount_point_ready(root: Path) -> None:
    try:
        _makedirs(root.parent, 0o755)
        with contextlib.suppress(FileExistsError):
            _mkdir(root, 0o755)
        st = root.lstat()
    except OSError as e:
        raise VzError(
            f"cannot create mount point {root}: {e.strerror}",
            ExitCode.MOUNT_FAILED,
            hint="check VE_ROOT",
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise VzError(
            f"mount point {root} is not a directory",
            ExitCode.SYSTEM,
            hint="a VE_ROOT is never a symlink or a file; check VE_ROOT",
        )


def _option_path(path: Path) -> str:
    text = str(path)
    if _UNSAFE_IN_OPTION.search(text):
        raise VzError(
            f"{text} cannot be an overlay layer: it contains a comma, colon, '=', backslash "
            "or white space",
            ExitCode.INVALID_VALUE,
            hint="choose VE_PRIVATE and TREES_DIR paths without them",
        )
    return text


def overlay_options(lower: Path, upper: Path, work: Path) -> str:
    return (
        f"lowerdir={_option_path(lower)},upperdir={_option_path(upper)},"
        f"workdir={_option_path(work)}"
    )


def mount_argv(layout: str, source: Path | str, root: Path, options: str = "") -> list[str]:
    """mount(8) arguments. Private propagation: nothing mounted later under the root (or where
    the root's filesystem is shared to) travels between the host and the VPS."""
    if layout == "plain":
        return ["mount", "--bind", "--make-private", str(source), str(root)]
    return ["mount", "--make-private", "-t", "overlay", "-o", options, str(source), str(root)]


def mount_root(
    host: HostConfig, ctid: str | int, private: Path, root: Path, *, layout: str | None = None
) -> None:
    """Mount the CT's root filesystem on ``root``; nothing to do if something is mounted there.

    ``layout`` is the CT's VE_LAYOUT when set; it is checked against the private area.
    """
    number = ctid_valid(ctid)
    private = _absolute(private, "private area")
    root = _absolute(root, "VE_ROOT")
    if os.path.islink(root):
        raise VzError(
            f"mount point {root} is a symlink",
            ExitCode.SYSTEM,
            hint="a VE_ROOT is never a symlink; check VE_ROOT",
        )
    if is_mounted(root):
        return
    layout, sha = _resolve_layout(host, number, private, layout)
    if layout == "plain":
        argv = mount_argv("plain", private, root)
    else:
        assert sha is not None
        lower = host.trees_dir / sha / "root"
        upper, work = private / "upper", private / "work"
        for path in (lower, upper, work):
            # lstat: a symlink here would be followed by mount(2) on the host.
            if not stat.S_ISDIR(path.lstat().st_mode):
                raise VzError(f"{path} is not a directory", ExitCode.SYSTEM)
        argv = mount_argv("overlay", "overlay", root, overlay_options(lower, upper, work))
    _mount_point_ready(root)
    run.check_tool("mount", "to mount VPS roots", package="mount")
    hint = (
        "the kernel log says why: dmesg | tail"
        if layout == "plain"
        else "the filesystem of VE_PRIVATE must support overlay upper layers (ext4, xfs, "
        "btrfs, tmpfs); the kernel log says why: dmesg | tail"
    )
    run.run(argv, error_code=ExitCode.MOUNT_FAILED, error_hint=hint)
    if not is_mounted(root):
        raise VzError(f"mount reported success but {root} is not mounted", ExitCode.SYSTEM)


def umount_root(root: Path) -> None:
    """Unmount the CT's root; nothing to do if nothing is mounted there."""
    root = _absolute(root, "VE_ROOT")
    for _ in range(16):  # mounts stacked on the root, innermost last
        if not is_mounted(root):
            return
        run.run(
            ["umount", str(root)],
            error_code=ExitCode.UMOUNT_FAILED,
            error_hint=f"processes may still use it: fuser -vm {root}",
        )
    raise VzError(f"{root} is still mounted", ExitCode.SYSTEM, hint=f"umount {root} by hand")
