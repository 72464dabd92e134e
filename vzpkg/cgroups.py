"""Every read and write of cgroup files (cgroup v1 hybrid and v2).

runc makes a VPS's cgroups (``/<parent>/<CTID>`` below each hierarchy) and removes them with
``runc delete``; vzpkg reads them to count a VPS's processes, to find a VPS that runs although
runc's state for it is gone, and removes the parent once it is empty. Light to import (os only):
``vzlist`` reads process counts through here.

The two layouts, as runc tells them apart (is ``/sys/fs/cgroup`` itself cgroup2?):

- hybrid (cgroup v1 with systemd's v2 beside it): a tmpfs at ``/sys/fs/cgroup`` holds one
  directory per v1 hierarchy (``memory``, ``pids``, ..., systemd's named ``systemd``) and the
  cgroup2 one at ``unified``. A VPS has a cgroup in each; runc's state names them by controller,
  ``name=systemd`` and ``""`` (the unified one).
- pure v2 (systemd 252's default): ``/sys/fs/cgroup`` is the one cgroup2 hierarchy; a VPS has
  one cgroup, ``/sys/fs/cgroup/<parent>/<CTID>``, named ``""`` in runc's state.

Every function below works on both: a hierarchy is a directory with a ``cgroup.procs`` file.
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


# The hierarchies systemd as init manages for itself (runc's names for them): the cgroup2 one
# ("", the only one of a pure v2 host) and v1's named "name=systemd" (hybrid). No controller's
# hierarchy is among them: in v1 a controller's cgroup directory is its limits.
DELEGATED_HIERARCHIES = ("", "name=systemd")

# What makes a cgroup its user's (the kernel's cgroup v2 delegation, as systemd and LXC hand it
# out; "tasks" is v1's cgroup.threads): the directory (to make cgroups below it) and the files
# that move processes and turn controllers on below it; never a limit file, and none of the
# other files of the cgroup itself (cgroup.max.*, cgroup.freeze, cgroup.kill, memory.oom.group).
DELEGATED_FILES = ("cgroup.procs", "tasks", "cgroup.subtree_control", "cgroup.threads")


def delegated_dirs(paths: dict[str, str]) -> list[str]:
    """Of a container's cgroup directories by hierarchy (as runc's state names them), the ones
    its own root is given: the cgroup2 one and systemd's named v1 one, whichever exist."""
    return [paths[key] for key in DELEGATED_HIERARCHIES if key in paths]


def delegate(path: str, uid: int, gid: int) -> None:
    """Hand cgroup ``path`` to a VPS's root: it may make cgroups below it, move its own
    processes between them and turn controllers on for them (systemd as init does), bounded by
    every limit above it. Files the kernel adds later (a controller turned on above) are made
    by root, and stay root's."""
    os.chown(path, uid, gid)
    for name in DELEGATED_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.chown(os.path.join(path, name), uid, gid)


def device_rules(devices_dir: str) -> list[str]:
    """A v1 devices cgroup's rules as it lists them: ``c 1:3 rwm``, ``c 136:* rwm``."""
    with open(os.path.join(devices_dir, "devices.list")) as f:
        return [line.strip() for line in f if line.strip()]


def change_device_rules(devices_dir: str, deny: list[str], allow: list[str]) -> None:
    """Write ``deny`` rules, then ``allow`` ones, to a v1 devices cgroup (one rule a write, as
    the kernel takes them)."""
    for name, rules in (("devices.deny", deny), ("devices.allow", allow)):
        for rule in rules:
            with open(os.path.join(devices_dir, name), "w") as f:
                f.write(rule)
