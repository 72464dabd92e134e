"""Every read and write of cgroup files (cgroup v1 hybrid and v2).

runc makes a VPS's cgroups (``/<parent>/<CTID>`` below each hierarchy) and removes them with
``runc delete``; vzpkg reads them to count a VPS's processes, to find a VPS that runs although
runc's state for it is gone, and removes the parent once it is empty. Light to import (os only):
``vzlist`` reads process counts through here.
"""

from __future__ import annotations

import contextlib
import os
import time

ROOT = "/sys/fs/cgroup"
PROCS = "cgroup.procs"


def hierarchies(root: str = ROOT) -> list[str]:
    """The mounted hierarchies: each v1 controller's directory and the v2 one (``unified``
    on a hybrid host, ``root`` itself on a pure v2 host)."""
    if os.path.isfile(os.path.join(root, PROCS)):
        return [root]  # pure cgroup v2
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(root, name)
        if (
            os.path.isdir(path)
            and not os.path.islink(path)
            and os.path.isfile(os.path.join(path, PROCS))
        ):
            found.append(path)
    return found


def procs_below(top: str) -> list[int]:
    """Pids in cgroup ``top`` and every cgroup below it (as ``runc ps`` lists them)."""
    pids: list[int] = []
    for directory, _, files in os.walk(top):
        if PROCS in files:
            try:
                with open(os.path.join(directory, PROCS), "rb") as f:
                    pids.extend(int(line) for line in f.read().split())
            except OSError:
                continue  # a cgroup removed while we walk
    return pids


def group_dirs(parent: str, name: str, root: str = ROOT) -> list[str]:
    """The directories of cgroup ``/<parent>/<name>`` in every hierarchy that has it."""
    return [
        path
        for hierarchy in hierarchies(root)
        if os.path.isdir(path := os.path.join(hierarchy, parent, name))
    ]


def procs_of_group(parent: str, name: str, root: str = ROOT) -> list[int]:
    """Every pid in cgroup ``/<parent>/<name>`` of any hierarchy (without duplicates)."""
    pids: set[int] = set()
    for path in group_dirs(parent, name, root):
        pids.update(procs_below(path))
    return sorted(pids)


def remove_group(parent: str, name: str, root: str = ROOT, patience: float = 2.0) -> bool:
    """rmdir cgroup ``/<parent>/<name>`` and the ones below it (a VPS's systemd makes its
    own). A cgroup whose last process has just died stays busy for a moment: retried for up to
    ``patience`` seconds. Returns whether it is gone."""
    deadline = time.monotonic() + patience
    while True:
        for path in group_dirs(parent, name, root):
            for directory, _, _ in sorted(os.walk(path), key=lambda w: len(w[0]), reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
        if not group_dirs(parent, name, root):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def remove_empty_parent(parent: str, root: str = ROOT) -> None:
    """runc delete removes a VPS's cgroups but not their common parent: drop it once empty
    (rmdir of a cgroup fails with EBUSY while another VPS still runs in it)."""
    for hierarchy in hierarchies(root):
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(hierarchy, parent))


# What makes a cgroup its user's (the kernel's cgroup v2 delegation, LXC's for v1): the
# directory (to make cgroups below it) and the files that move processes; never a limit file.
DELEGATED_FILES = ("cgroup.procs", "tasks", "cgroup.subtree_control", "cgroup.threads")


def delegate(path: str, uid: int, gid: int) -> None:
    """Hand cgroup ``path`` to a VPS's root: it may make cgroups below it and move its own
    processes between them (systemd as init does), bounded by every limit above it."""
    os.chown(path, uid, gid)
    for name in DELEGATED_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.chown(os.path.join(path, name), uid, gid)
