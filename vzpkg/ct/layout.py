"""Private areas and mounting of a VPS's root, for the layouts ``plain`` and ``overlay``.

plain
    The cache is unpacked into ``<private>.tmp`` and renamed to ``<private>``; mounting binds
    ``<private>`` onto VE_ROOT.
overlay
    The cache is unpacked once per cache version into a shared template tree (vzpkg.ct.trees)
    used as the overlay's lowerdir; the private area holds ``upper/``, ``work/`` and
    ``.vzpkg-tree`` naming the tree's sha256. Mounting is ``mount -t overlay`` on VE_ROOT.

Nothing half-made is ever visible: private areas are built under a temporary name and renamed
into place, and any failure or interrupt removes the temporary. A private area is removed by
renaming it to ``<private>.destroying`` first: a destroy cut short leaves that name, which
status reports, start refuses and the next destroy finishes. The caller holds the CT's lock.

A private area is marked with its CTID (vzpkg.ct.places) when it is made; nothing is mounted
from it, and nothing in it is removed, unless the mark (or, for overlay, the tree's reference)
says it is this CT's. A plain private area is the VPS's root, so everything in it is under the
VPS's control: a VPS can create a ``.vzpkg-tree`` of its own. A private area therefore counts
as overlay only when the tree it names holds a reference for this CT and this private path,
which lives in TREES_DIR where no VPS can write.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from vzpkg import checks, run, syscalls
from vzpkg.ct import disk, idmap, places, trees
from vzpkg.ct.conf import LAYOUTS, ctid_valid, root_path
from vzpkg.errors import ExitCode, VzError
from vzpkg.fsutil import (
    discard,
    fsync_dir,
    makedirs_mode,
    mkdir_mode,
    read_small,
    remove_tree_safely,
    write_durably,
)
from vzpkg.hostconf import HostConfig
from vzpkg.mounts import is_mounted as is_mounted  # callers ask the layout
from vzpkg.mounts import mounts_using, unmount
from vzpkg.syscalls import syncfs

log = logging.getLogger("vzpkg")

TREE_MARKER = ".vzpkg-tree"

# mount(8) splits -o at commas, overlayfs splits lowerdir at colons and reads backslashes as
# escapes: a path with any of them would mount something other than what was meant.
_UNSAFE_IN_OPTION = re.compile(r"[,:\\=\s]")


# --- small helpers -------------------------------------------------------------------------


def _absolute(path: Path, what: str) -> Path:
    if not path.is_absolute():
        raise VzError(f"{what} {path} is not an absolute path", ExitCode.INVALID_VALUE)
    return Path(os.path.normpath(path))


# --- layout detection ----------------------------------------------------------------------


def _detect(host: HostConfig, ctid: int, private: Path) -> tuple[str, str | None]:
    """("plain", None), ("overlay", sha256), or ("unknown", marker text) when a marker is
    there but no tree vouches for it."""
    try:
        st = private.lstat()
    except FileNotFoundError:
        raise missing_private(ctid, private) from None
    if not stat.S_ISDIR(st.st_mode):
        raise VzError(
            f"private area {private} of CT {ctid} is not a directory",
            ExitCode.SYSTEM,
            hint="a private area is never a symlink or a file; check VE_PRIVATE",
        )
    marker = private / TREE_MARKER
    if not os.path.lexists(marker):
        return "plain", None
    text = read_small(marker)
    if (
        text is not None
        and trees.SHA256.fullmatch(text)
        and trees.ref_holds(host, text, ctid, private)
    ):
        return "overlay", text
    return "unknown", text


def missing_private(ctid: int, private: Path) -> VzError:
    """The refusal for a private area that is not there: never made, or being destroyed."""
    if os.path.lexists(places.destroying_path(private)):
        return VzError(
            f"CT {ctid} is half destroyed: a destroy was interrupted and left "
            f"{places.destroying_path(private)}",
            ExitCode.PRIVATE_MISSING,
            hint=f"finish it: vzctl destroy {ctid}",
        )
    return VzError(
        f"private area {private} of CT {ctid} does not exist",
        ExitCode.PRIVATE_MISSING,
        hint=f"check VE_PRIVATE in CT {ctid}'s config, or create the CT: vzctl create {ctid}",
    )


def condition(private: Path) -> str:
    """``present``, ``missing``, or ``destroying`` (a destroy was interrupted)."""
    if os.path.isdir(private) and not os.path.islink(private):
        return "present"
    if os.path.lexists(places.destroying_path(private)):
        return "destroying"
    return "missing"


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


def is_own_private(
    host: HostConfig, ctid: int, private: Path, *, as_named: Path | None = None
) -> bool:
    """Whether ``private`` is provably CT ``ctid``'s private area: marked with its CTID, or an
    overlay area whose tree holds this CT's reference (areas made before marks existed).

    ``as_named``: the path the area was made under (the tree's reference names that path), when
    it has been renamed since (``.destroying``).
    """
    if places.stamp_of(private) == ctid:
        return True
    named = as_named or private
    text = read_small(private / TREE_MARKER)
    return (
        text is not None
        and trees.SHA256.fullmatch(text) is not None
        and trees.ref_holds(host, text, ctid, named)
    )


# --- create ----------------------------------------------------------------------------------


def _check_private_free(private: Path) -> None:
    try:
        st = private.lstat()
    except FileNotFoundError:
        st = None
    if st is not None and not (stat.S_ISDIR(st.st_mode) and not any(private.iterdir())):
        raise VzError(
            f"private area {private} already exists",
            ExitCode.PRIVATE_EXISTS,
            hint=f"destroy the CT that owns it first, or remove {private}",
        )
    # An empty directory is taken over, but not a mount point: the new area is renamed onto it.
    for path in (private, places.destroying_path(private)):
        users = mounts_using(path) if os.path.lexists(path) else []
        if users or (path == private and st is not None and is_mounted(private)):
            raise VzError(
                f"private area {private} is in use by the mount(s) {', '.join(users)}",
                ExitCode.PRIVATE_EXISTS,
                hint="choose another VE_PRIVATE, or unmount them",
            )
    if os.path.lexists(places.destroying_path(private)):
        raise VzError(
            f"{places.destroying_path(private)} is left from a destroy that was interrupted",
            ExitCode.PRIVATE_EXISTS,
            hint="finish that destroy first (vzctl destroy CTID), or remove it by hand",
        )


def create_private(
    host: HostConfig,
    ctid: str | int,
    layout: str,
    cache_archive: Path,
    cache_sha256: str,
    private: Path,
    userns: tuple[int, int] | None = None,
    disk_of: disk.Disk | None = None,
) -> None:
    """Make the private area of a new CT from a cache archive whose sha256 is known.

    plain unpacks (and so verifies) the whole archive. overlay reuses the tree of that sha256
    when it exists, which makes it fast; the archive is read only to make the tree. ``userns``
    (the host uid and gid of the VPS's root) makes the VPS's own files owned by its ids: plain
    unpacks as root of its user namespace, overlay gives it an upper directory of its own
    (the shared tree stays the host's, seen through an idmapped mount). ``disk_of`` with a
    size (DISKSPACE) puts the VPS's own files on a disk of their own (vzpkg.ct.disk). The
    caller holds the CT's lock.
    """
    number = ctid_valid(ctid)
    if layout not in LAYOUTS:
        raise VzError(
            f"unknown layout {layout!r}",
            ExitCode.INVALID_VALUE,
            hint=f"use one of {', '.join(LAYOUTS)}",
        )
    sha = trees.sha_valid(cache_sha256.lower())
    private = _absolute(private, "private area")
    if layout == "overlay":  # what every later mount would refuse: refused now
        overlay_options(trees.tree_path(host, sha) / "root", private / "upper", private / "work")
    _check_private_free(private)
    tmp = places.tmp_path(private)
    try:
        makedirs_mode(private.parent, 0o700)
        if os.path.lexists(tmp):
            remove_tree_safely(tmp)  # an interrupted create of this CT; we hold its lock
    except OSError as e:
        raise VzError(f"cannot prepare {tmp}: {e.strerror}", ExitCode.SYSTEM) from None
    space = disk_of.space if disk_of is not None else None
    size = None if space is None else (space, disk_of.inodes if disk_of else None)
    if layout == "plain":
        _create_plain(number, cache_archive, sha, private, tmp, userns, host.validated_dir, size)
    else:
        _create_overlay(host, number, cache_archive, sha, private, tmp, userns, size)


@contextlib.contextmanager
def _files_of_new(
    tmp: Path, size: tuple[int, int | None] | None, owner: tuple[int, int]
) -> Iterator[Path]:
    """Where a new private area ``tmp`` keeps the VPS's own files: ``tmp`` itself, or the
    disk of ``size`` (bytes, inodes) made for it and mounted for the block."""
    if size is None:
        yield tmp
        return
    want = disk.Disk(space=size[0], inodes=size[1])
    disk.make(tmp, want, owner)
    with disk.attached(tmp) as point:
        disk.limit(point, want.space)
        yield point
        syncfs(point)


def _create_plain(
    ctid: int,
    archive: Path,
    sha: str,
    private: Path,
    tmp: Path,
    userns: tuple[int, int] | None,
    validated: Path,
    size: tuple[int, int | None] | None = None,
) -> None:
    try:
        mkdir_mode(tmp, 0o700)  # unpacking gives it the mode of the archive's root
        from vzpkg.cache.archive import unpack_archive  # lazy: zstandard, tarfile

        with _files_of_new(tmp, size, userns or (0, 0)) as files:
            target = files / "root" if size is not None else files
            if size is not None:
                mkdir_mode(target, 0o700)
            if userns is None:
                unpack_archive(archive, target, expected_sha256=sha, validated=validated)
            else:
                os.chown(target, *userns)  # the root of the VPS's user namespace unpacks into it
                with idmap.userns_fd(*userns) as fd:
                    unpack_archive(
                        archive, target, expected_sha256=sha, userns_fd=fd, validated=validated
                    )
        places.stamp(tmp, ctid)  # after unpacking: the archive's own xattrs never count
        syncfs(tmp)
        os.rename(tmp, private)
        fsync_dir(private.parent)
    except BaseException as e:
        discard(tmp)
        if isinstance(e, OSError):
            raise _create_failed(private, e) from None
        if isinstance(e, VzError) and size is not None and "is full" in e.message:
            raise _disk_too_small(private, size[0]) from None
        raise


def _disk_too_small(private: Path, size: int) -> VzError:
    return VzError(
        f"the VPS's files do not fit a disk of {disk.human(size)} (DISKSPACE); nothing was "
        f"changed at {private}",
        ExitCode.FS_NO_DISK_SPACE,
        hint="give a larger --diskspace",
    )


def _create_failed(private: Path, error: OSError) -> VzError:
    hint = None
    if error.errno == 28:  # ENOSPC
        hint = (
            f"the filesystem of {private.parent} is full: free space, or choose another VE_PRIVATE"
        )
    where = f" ({error.filename})" if error.filename else ""
    return VzError(
        f"cannot create private area {private}: {error.strerror or error}{where}",
        ExitCode.SYSTEM,
        hint,
    )


def _create_overlay(
    host: HostConfig,
    ctid: int,
    archive: Path,
    sha: str,
    private: Path,
    tmp: Path,
    userns: tuple[int, int] | None,
    size: tuple[int, int | None] | None = None,
) -> None:
    tree = trees.reference_tree(host, ctid, archive, sha, private)
    try:
        mkdir_mode(tmp, 0o700)
        with _files_of_new(tmp, size, (0, 0)) as files:
            # The overlay's root directory takes its mode and owner from upper/.
            top = (tree / "root").stat()
            upper = files / "upper"
            mkdir_mode(upper, stat.S_IMODE(top.st_mode))
            shift = userns or (0, 0)
            os.chown(upper, top.st_uid + shift[0], top.st_gid + shift[1])
            mkdir_mode(files / "work", 0o700)
        write_durably(tmp, TREE_MARKER, sha + "\n", 0o644)
        places.stamp(tmp, ctid)
        os.rename(tmp, private)
        fsync_dir(private.parent)
    except BaseException as e:
        discard(tmp)
        try:
            trees.drop_ref(host, sha, ctid, private)
        except Exception as drop_error:
            log.error("could not drop the reference of CT %s to %s: %s", ctid, tree, drop_error)
        if isinstance(e, OSError):
            raise _create_failed(private, e) from None
        raise


# --- the disk --------------------------------------------------------------------------------


def change_disk(
    host: HostConfig,
    ctid: int,
    private: Path,
    root: Path,
    want: disk.Disk,
    *,
    inodes_given: bool,
    layout: str | None = None,
) -> str:
    """Give CT ``ctid``'s private area the disk ``want`` says (DISKSPACE, DISKINODES): grow
    it (also while the VPS runs), shrink it (stopped), or move the files of a stopped VPS
    without one onto a new one. Returns what was done, for the user. The caller holds the
    CT's lock; nothing changes when this raises."""
    if condition(private) != "present":
        raise missing_private(ctid, private)
    if not disk.has_disk(private):
        if want.space is None:
            return f"CT {ctid} has no disk of its own: no limit"
        if is_mounted(root):
            raise VzError(
                f"CT {ctid} is mounted: moving its files onto a disk of their own needs it "
                "stopped; nothing was changed",
                ExitCode.MOUNTED,
                hint=f"vzctl stop {ctid}, then set --diskspace again",
            )
        _move_onto_disk(host, ctid, private, want, layout)
        return f"CT {ctid}'s files moved onto a disk of {disk.human(want.space)}"
    if inodes_given and want.inodes is not None:
        raise checks.bad(
            "--diskinodes",
            str(want.inodes),
            f"cannot change CT {ctid}'s disk: its inodes were fixed when it was made (they "
            "grow with --diskspace)",
        )
    point = private / disk.MOUNT_DIR
    if disk.is_attached(private) and not is_mounted(root):
        disk.detach(private)  # left by a crash: the VPS itself is not mounted
    running = disk.is_attached(private)
    if not running:
        disk.held_elsewhere(ctid, private, "changing")
    if want.space is not None and not running:
        with disk.attached(private) as mounted:
            small = want.space > disk.room(mounted)
        if small:
            disk.resize(ctid, private, want.space, mounted=False)
    elif want.space is not None and want.space > disk.room(point):
        disk.resize(ctid, private, want.space, mounted=True)
    with disk.attached(private) as mounted:
        in_use = disk.used(mounted)
        if want.space is not None and in_use > want.space:
            raise VzError(
                f"CT {ctid} has {disk.human(in_use)} of files on its disk: a limit of "
                f"{disk.human(want.space)} is too small; nothing was changed",
                ExitCode.NOTENOUGH_QUOTA_LIMITS,
                hint="remove files in the VPS first, or choose a larger --diskspace",
            )
        disk.limit(mounted, want.space)
    if want.space is None:
        with disk.attached(private) as mounted:
            what = f"no limit but its size, {disk.human(disk.room(mounted))}"
    else:
        what = disk.human(want.space)
    return f"CT {ctid}'s disk: {what}" + ("" if running else " (from its next start)")


def _move_onto_disk(
    host: HostConfig, ctid: int, private: Path, want: disk.Disk, layout: str | None
) -> None:
    """Copy a stopped VPS's files onto a new disk, made beside its private area, and swap the
    two at once (renameat2 RENAME_EXCHANGE); the old files are removed last. A failure leaves
    the private area as it was; a crash after the swap leaves the old files in
    ``<private>.tmp``, which the next destroy (or change of the disk) removes."""
    assert want.space is not None
    kind, sha = _resolve_layout(host, ctid, private, layout)
    if not is_own_private(host, ctid, private):
        raise places.not_owned(ctid, private, "nothing was changed", ExitCode.DQ_SET)
    tmp = places.tmp_path(private)
    swapped = False
    try:
        if os.path.lexists(tmp):
            remove_tree_safely(tmp)
        mkdir_mode(tmp, 0o700)
        with _files_of_new(tmp, (want.space, want.inodes), (0, 0)) as files:
            name = "root" if kind == "plain" else "upper"
            source = private if kind == "plain" else private / "upper"
            # cp -a copies links as links and crosses no mount; the VPS is stopped.
            run.run(["cp", "-a", "--one-file-system", "--", f"{source}/.", str(files / name)],
                    error_code=ExitCode.DQ_SET, die_with_us=True)  # fmt: skip
            if kind == "overlay":
                mkdir_mode(files / "work", 0o700)
        if sha is not None:
            write_durably(tmp, TREE_MARKER, sha + "\n", 0o644)
        places.stamp(tmp, ctid)
        syncfs(tmp)
        syscalls.exchange(tmp, private)
        swapped = True
        fsync_dir(private.parent)
    except BaseException as e:
        if not swapped:
            discard(tmp)
        if isinstance(e, OSError):
            raise _create_failed(private, e) from None
        if isinstance(e, VzError) and "No space left" in e.message:
            raise _disk_too_small(private, want.space) from None
        raise
    remove_tree_safely(tmp)  # the old files
    fsync_dir(private.parent)


# --- destroy ---------------------------------------------------------------------------------


def destroy_private(
    host: HostConfig, ctid: str | int, private: Path, *, root: Path | None = None
) -> tuple[str, ...]:
    """Remove a CT's private area and, for overlay, its tree reference (and the tree once no
    reference is left). Returns the sha256 of each tree removed.

    Only a private area that is provably this CT's is removed (see ``is_own_private``). It is
    renamed to ``<private>.destroying`` first, so that a destroy cut short is seen as such and
    finished by the next one. Refuses while the CT's ``root`` or anything else shows the area:
    the caller stops and unmounts the CT first. The caller holds the CT's lock.
    """
    number = ctid_valid(ctid)
    private = _absolute(private, "private area")
    root = root if root is not None else root_path(host, number)
    doomed, tmp = places.destroying_path(private), places.tmp_path(private)
    if is_mounted(root):
        raise VzError(
            f"CT {number} is mounted at {root}",
            ExitCode.MOUNTED,
            hint=f"stop it, or unmount it: vzctl umount {number}",
        )
    for path in (private, doomed):  # a disk left mounted (a crash): ours to unmount
        if disk.has_disk(path) and is_own_private(host, number, path, as_named=private):
            disk.detach(path)
    # A move onto a disk cut short before its swap leaves the new disk mounted in ``tmp``,
    # marked as a disk but not yet stamped: ours too (unless it is stamped as another CT's).
    if disk.has_disk(tmp) and places.stamp_of(tmp) in (None, number):
        disk.detach(tmp)
    for path in (private, doomed, tmp):
        if os.path.islink(path):
            raise VzError(
                f"{path} is a symlink, not a private area; nothing was removed",
                ExitCode.DESTROY_FAILED,
                hint=f"check VE_PRIVATE of CT {number}; remove the link by hand",
            )
        users = mounts_using(path) if os.path.lexists(path) else []
        if users:
            raise VzError(
                f"{path} is in use by the mount(s) {', '.join(users)}; nothing was removed",
                ExitCode.DESTROY_FAILED,
                hint=f"stop and unmount CT {number} first; else umount them by hand",
            )
    try:
        if os.path.lexists(private):
            if not is_own_private(host, number, private):
                raise places.not_owned(
                    number, private, "nothing was removed", ExitCode.DESTROY_FAILED
                )
            if os.path.lexists(doomed):
                _remove_doomed(host, number, private, doomed)
            if places.stamp_of(private) != number:
                places.stamp(private, number)  # made before marks: its tree's reference proved it
            os.rename(private, doomed)
            fsync_dir(private.parent)
        # The tree reference goes first (removing the last VPS's tree takes long): a destroy
        # cut short meanwhile still shows as one, by the .destroying area that is left.
        removed = []
        for sha in trees.trees_referencing(host, number, private):
            if trees.drop_ref(host, sha, number, private):
                removed.append(sha)
        if os.path.lexists(doomed):
            _remove_doomed(host, number, private, doomed)
        if os.path.lexists(tmp):
            remove_tree_safely(tmp)  # an interrupted create of this CT; we hold its lock
            fsync_dir(tmp.parent)
        trees.sweep_stale(host)
    except OSError as e:
        raise VzError(
            f"cannot destroy private area {private}: {e}",
            ExitCode.DESTROY_FAILED,
            hint=f"fix the cause and run vzctl destroy {number} again to finish",
        ) from None
    return tuple(removed)


def _remove_doomed(host: HostConfig, ctid: int, private: Path, doomed: Path) -> None:
    if not is_own_private(host, ctid, doomed, as_named=private):
        raise places.not_owned(ctid, doomed, "nothing was removed", ExitCode.DESTROY_FAILED)
    remove_tree_safely(doomed)
    fsync_dir(doomed.parent)


# --- mount -----------------------------------------------------------------------------------


def _mount_point_ready(root: Path) -> None:
    try:
        # Root's only: runc reaches a VPS's root through its gate (gate_path), and no host
        # user has anything to do in VPSs' roots (an existing directory keeps its mode).
        makedirs_mode(root.parent, 0o700)
        with contextlib.suppress(FileExistsError):
            mkdir_mode(root, 0o755)
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


def check_own_mount(ctid: int, root: Path, private: Path, code: ExitCode) -> bool:
    """Whether something is mounted on ``root``; raise (``code``) when it is not this CT's."""
    entry = places.top_mount(root)
    if entry is None:
        return False
    if not places.is_own_mount(root, private, entry):
        raise places.foreign_mount(ctid, root, private, entry, code)
    return True


def staging_path(host: HostConfig, ctid: int) -> Path:
    """Where an overlay VPS with a user namespace sees its template tree through an idmapped
    mount (its overlay's lowerdir): ``RUN_DIR/lower/CTID``, mounted while the VPS is."""
    return host.run_dir / "lower" / str(ctid)


def release_staging(staging: Path) -> None:
    """Unmount and remove a VPS's idmapped view of its tree (nothing to do if there is none)."""
    unmount(staging)
    with contextlib.suppress(FileNotFoundError, OSError):
        staging.rmdir()


def gate_path(host: HostConfig, ctid: int) -> Path:
    """Where runc finds a running VPS's root: ``RUN_DIR/ct/CTID.rootfs/root``, a bind of
    VE_ROOT. The directory ``CTID.rootfs`` belongs to the VPS's root and lets only it pass
    (mode 0100): runc mounts the root as the VPS's own ids, which must get through every
    directory above it, and no other host user can. So the directories above VE_ROOT need not
    let others pass (the default /vz/root is 0700): no host user reaches a VPS's files.

    The gate is there only while runc sets the VPS up: once its init runs, the VPS's mount
    namespace has a mount of its own of the root, and the start unmounts the gate (one host
    mount less per running VPS; every mount on the host slows runc and mount(8), which read
    the whole mount table). Its directories stay until the stop (``close_gate``)."""
    return host.run_dir / "ct" / f"{ctid}.rootfs"


def open_gate(gate: Path, root: Path, owner: tuple[int, int]) -> Path:
    """Bind the mounted VPS root ``root`` at ``gate``/root (again if a crash left one), for
    ``owner``'s eyes only; the path to give runc."""
    makedirs_mode(gate.parent, 0o711)
    for directory in (gate.parent.parent, gate.parent):  # RUN_DIR and RUN_DIR/ct, vzpkg's own
        st = directory.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            what = (
                "a symlink"
                if stat.S_ISLNK(st.st_mode)
                else f"owner {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"
            )
            raise VzError(
                f"{directory} is not a directory of root's that only root can write ({what}): "
                "another user could move what vzctl puts there",
                ExitCode.CONFIG,
                hint=(
                    f"replace the symlink by a directory of root's: mkdir -m 711 {directory}"
                    if stat.S_ISLNK(st.st_mode)
                    else f"chown root: {directory}; chmod go-w {directory}"
                )
                + " (or choose another RUN_DIR)",
            )
        if not st.st_mode & 0o001:
            os.chmod(directory, stat.S_IMODE(st.st_mode) | 0o001)  # pass, not read
    release_gate(gate)
    mkdir_mode(gate, 0o700)
    target = gate / "root"
    mkdir_mode(target, 0o700)
    os.chown(gate, *owner)
    os.chmod(gate, 0o100)
    mount_fd = syscalls.open_tree(root, syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC)
    try:
        syscalls.move_mount(mount_fd, target)
    finally:
        os.close(mount_fd)
    return target


def close_gate(gate: Path) -> None:
    """Unmount a running VPS's gate, keeping its (then empty) directories: runc exec starts
    its helper in the root's path (the working directory it forks it in), before it enters
    the VPS's namespaces, so the path must still be there."""
    target = gate / "root"
    for _ in range(16):
        if not is_mounted(target):
            break
        syscalls.umount(target)


def release_gate(gate: Path) -> None:
    """Unmount and remove a VPS's gate (nothing to do if there is none)."""
    target = gate / "root"
    close_gate(gate)
    with contextlib.suppress(FileNotFoundError):
        target.rmdir()
    with contextlib.suppress(FileNotFoundError):
        gate.rmdir()


def mount_root(
    host: HostConfig,
    ctid: str | int,
    private: Path,
    root: Path,
    *,
    layout: str | None = None,
    userns: tuple[int, int] | None = None,
    disk_space: int | None = None,
) -> None:
    """Mount the CT's root filesystem on ``root``; nothing to do if it is mounted there already.
    A private area with a disk gets it mounted too, limited to ``disk_space`` (DISKSPACE).

    ``layout`` is the CT's VE_LAYOUT when set; it is checked against the private area. Refuses
    a ``root`` where something else is mounted, and a private area that is not provably this
    CT's. With ``userns`` an overlay's lower layer is the template tree seen through an
    idmapped mount (``staging_path``): the host's files, owned by the VPS's root inside.
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
    if check_own_mount(number, root, private, ExitCode.MOUNT_FAILED):
        return
    layout, sha = _resolve_layout(host, number, private, layout)
    if not is_own_private(host, number, private):
        raise places.not_owned(number, private, "it was not mounted", ExitCode.MOUNT_FAILED)
    staging = None
    attached = False
    try:
        if disk.has_disk(private):
            point, attached = disk.attach(private)
            disk.limit(point, disk_space)
            if disk_space is not None and disk_space > disk.room(point):
                log.warning(
                    "CT %s: DISKSPACE is %s but its disk holds %s: that is its limit until "
                    "it grows (vzctl set %s --diskspace ... --save)",
                    number,
                    disk.human(disk_space),
                    disk.human(disk.room(point)),
                    number,
                )
        if layout == "plain":
            plain_root = disk.plain_root(private)
            if not stat.S_ISDIR(plain_root.lstat().st_mode):
                raise VzError(f"{plain_root} is not a directory", ExitCode.SYSTEM)
            argv = mount_argv("plain", plain_root, root)
        else:
            assert sha is not None
            lower = host.trees_dir / sha / "root"
            files = disk.data_dir(private)
            upper, work = files / "upper", files / "work"
            for path in (lower, upper, work):
                # lstat: a symlink here would be followed by mount(2) on the host.
                if not stat.S_ISDIR(path.lstat().st_mode):
                    raise VzError(f"{path} is not a directory", ExitCode.SYSTEM)
            if userns is not None:
                staging = staging_path(host, number)
                lower = _idmapped_lower(lower, staging, userns)
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
    except BaseException:
        # The overlay may be mounted already (an interrupt right after mount): then the
        # caller's undo unmounts it, its staging and its disk together; never mask what
        # happened.
        if not is_mounted(root):
            try:
                if staging is not None:
                    release_staging(staging)
                if attached:
                    disk.detach(private)
            except Exception as cleanup:
                log.error("could not release what was mounted for %s: %s", root, cleanup)
        raise


def _idmapped_lower(tree: Path, staging: Path, userns: tuple[int, int]) -> Path:
    release_staging(staging)  # what a crash left
    try:
        makedirs_mode(staging.parent, 0o700)
        mkdir_mode(staging, 0o700)
        with idmap.userns_fd(*userns) as fd:
            idmap.idmapped_bind(tree, staging, fd)
    except OSError as e:
        release_staging(staging)
        raise VzError(
            f"cannot mount the template tree {tree} with the VPS's ids on {staging}: {e}",
            ExitCode.MOUNT_FAILED,
            hint="idmapped mounts need kernel 5.19+ and a filesystem that supports them "
            "(ext4, xfs, btrfs, tmpfs) for TREES_DIR",
        ) from None
    return staging


def umount_ct(host: HostConfig, ctid: int, root: Path, private: Path) -> None:
    """Unmount everything of a CT's root: its gate, the root, its idmapped tree."""
    umount_root(ctid, root, private, staging=staging_path(host, ctid), gate=gate_path(host, ctid))


def umount_root(
    ctid: int,
    root: Path,
    private: Path,
    *,
    staging: Path | None = None,
    gate: Path | None = None,
) -> None:
    """Unmount the CT's root (its gate first, and its idmapped view of its tree, ``staging``,
    last); nothing to do if nothing is mounted there. Refuses (and unmounts nothing but the
    gate, vzpkg's own place) when what is mounted on ``root`` is not from this CT's
    ``private`` area."""
    root = _absolute(root, "VE_ROOT")
    if gate is not None:
        release_gate(gate)
    for _ in range(16):  # mounts stacked on the root, innermost last
        if not check_own_mount(ctid, root, private, ExitCode.UMOUNT_FAILED):
            if staging is not None:
                release_staging(staging)
            if disk.has_disk(private):
                disk.detach(private)
                still = disk.loops_of(disk.image_path(private))
                if still:
                    log.warning(
                        "CT %s's disk is unmounted here but still mounted in another mount "
                        "namespace (%s): its size cannot change until that ends",
                        ctid,
                        ", ".join(still),
                    )
            return
        umount_busy_retried(root)
    raise VzError(f"{root} is still mounted", ExitCode.SYSTEM, hint=f"umount {root} by hand")


# Waits before each new try of an unmount the kernel found busy: 2 s in all. A stop unmounts
# right after runc reports the VPS's processes gone; what they held on the root is released
# by the kernel a little later (the last reference to a file, a working directory or a mount
# namespace of an exiting task is dropped through deferred work: task_work, delayed mntput,
# an RCU grace period before a namespace's mounts go), and with parallel stops on a loaded
# host that once took long enough for a bare umount to fail (exit 51, "target is busy").
# Milliseconds to tens of them are what that takes; 2 s covers a busy host many times over and
# still says soon that something really uses the root (a shell whose directory is in it).
UMOUNT_BUSY_WAITS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.4, 0.4, 0.4)


def umount_busy_retried(
    root: Path,
    waits: Sequence[float] = UMOUNT_BUSY_WAITS,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Unmount the top mount on ``root`` (never through a symlink); while the kernel says it
    is busy, try again after each of ``waits``; then refuse (UMOUNT_FAILED)."""
    log.debug("+ umount %s", root)
    for wait in (*waits, None):
        try:
            syscalls.umount(root)
            return
        except OSError as e:
            if e.errno == errno.EBUSY and wait is not None:
                log.debug("%s is busy; trying again in %s s", root, wait)
                sleep(wait)
                continue
            raise VzError(
                f"cannot unmount {root}: {e.strerror}"
                + (f" (still after {sum(waits):.1f} s)" if e.errno == errno.EBUSY else ""),
                ExitCode.UMOUNT_FAILED,
                hint=f"processes may still use it: fuser -vm {root}",
            ) from None
