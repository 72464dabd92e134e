"""Shared template trees of the overlay layout: one read-only copy of a cache per cache version.

``TREES_DIR/<sha256>/root`` is the unpacked cache, used only as an overlay lowerdir (no VPS can
write to it); ``TREES_DIR/<sha256>/refs/<CTID>`` records each VPS using it and holds that VPS's
private path. A tree is made on first use and removed with its last reference. A tree is made,
referenced, unreferenced and removed only under the lock ``tree-<sha256>``; the caller holds
the CT's own lock.

TREES_DIR is the host's: no VPS can write there, so a reference is proof that a private area
belongs to an overlay VPS (see layout).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

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
from vzpkg.lock import locked
from vzpkg.mounts import mounts_using
from vzpkg.syscalls import syncfs

log = logging.getLogger("vzpkg")

SHA256 = re.compile(r"[0-9a-f]{64}")
_REF_NAME = re.compile(r"[1-9][0-9]*")


def sha_valid(sha256: str) -> str:
    if not SHA256.fullmatch(sha256):
        raise VzError(f"invalid cache sha256 {sha256!r}", ExitCode.INVALID_VALUE)
    return sha256


def tree_path(host: HostConfig, sha256: str) -> Path:
    return host.trees_dir / sha_valid(sha256)


def _tree_lock(host: HostConfig, sha256: str) -> contextlib.AbstractContextManager[Path]:
    return locked(
        host.lock_dir,
        f"tree-{sha256}",
        timeout=-1,
        what=f"template tree {sha256[:12]}",
        on_wait=f"waiting for template tree {sha256[:12]}",
    )


def ref_holds(host: HostConfig, sha256: str, ctid: int, private: Path) -> bool:
    """Whether tree ``sha256`` holds a reference of CT ``ctid`` for private area ``private``."""
    return read_small(host.trees_dir / sha256 / "refs" / str(ctid)) == str(private)


def refs_in(tree: Path) -> list[str]:
    try:
        return [name for name in os.listdir(tree / "refs") if _REF_NAME.fullmatch(name)]
    except FileNotFoundError:
        return []


def reference_tree(host: HostConfig, ctid: int, archive: Path, sha: str, private: Path) -> Path:
    """The tree of ``sha``, made from ``archive`` if it does not exist, referenced by ``ctid``."""
    tree = host.trees_dir / sha
    try:
        makedirs_mode(host.trees_dir, 0o700)  # nothing in it is a host user's business
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
            else:
                tree.chmod(0o700)  # trees made before they were root's only
            try:
                write_durably(tree / "refs", str(ctid), str(private) + "\n", 0o600)
            except BaseException:
                if made and not refs_in(tree):
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


def sweep_stale(host: HostConfig) -> list[Path]:
    """Remove the temporaries of tree makes and removals that were cut short, of any cache
    version: a temp is stale when nobody holds its tree's lock (whoever makes or removes a tree
    holds it). Without this, the temp of the last tree of an old cache would stay for good."""
    pattern = re.compile(r"([0-9a-f]{64})\.tmp-[0-9]+")
    swept: list[Path] = []
    try:
        names = sorted(os.listdir(host.trees_dir))
    except FileNotFoundError:
        return swept
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        try:
            with locked(host.lock_dir, f"tree-{match.group(1)}", what="tree"):
                if os.path.lexists(host.trees_dir / name):
                    remove_tree_safely(host.trees_dir / name)
                    swept.append(host.trees_dir / name)
        except VzError:
            continue  # being made or removed right now
    return swept


def sweep_temps_of(host: HostConfig, pid: int) -> None:
    """Remove the temporary trees process ``pid`` was making (after it was killed)."""
    for stale in host.trees_dir.glob(f"*.tmp-{pid}"):
        remove_tree_safely(stale)


def _make_tree(host: HostConfig, archive: Path, sha: str, tree: Path) -> None:
    _sweep_tree_temps(host, sha)
    tmp = host.trees_dir / f"{sha}.tmp-{os.getpid()}"
    try:
        mkdir_mode(tmp, 0o700)
        mkdir_mode(tmp / "root", 0o700)  # unpacking gives it the mode of the archive's root
        mkdir_mode(tmp / "refs", 0o700)
        from vzpkg.cache.archive import unpack_archive

        unpack_archive(archive, tmp / "root", expected_sha256=sha, validated=host.validated_dir)
        syncfs(tmp)
        os.chown(tmp, 0, 0)
        # Root's only: the tree holds the template's setuid-root programs, with host uid 0.
        # VPSs reach it through their overlay (mounted by root), never by this path.
        tmp.chmod(0o700)
        os.rename(tmp, tree)
        fsync_dir(host.trees_dir)
    except BaseException:
        discard(tmp)
        raise


def drop_ref(host: HostConfig, sha: str, ctid: int, private: Path) -> bool:
    """Remove CT ``ctid``'s reference to tree ``sha``, and the tree once nothing refers to it.

    Returns whether the tree was removed.
    """
    tree = host.trees_dir / sha
    with _tree_lock(host, sha):
        if ref_holds(host, sha, ctid, private):
            (tree / "refs" / str(ctid)).unlink()
            fsync_dir(tree / "refs")
        if not os.path.isdir(tree) or refs_in(tree):
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


def trees_referencing(host: HostConfig, ctid: int, private: Path) -> Iterator[str]:
    """The trees that hold a reference of CT ``ctid`` for ``private``."""
    try:
        names = os.listdir(host.trees_dir)
    except FileNotFoundError:
        return
    for name in sorted(names):
        if SHA256.fullmatch(name) and ref_holds(host, name, ctid, private):
            yield name
