"""Host devices granted to or taken from a running VPS (``vzctl set --devices/--devnodes``).

The device cgroup rules change in the VPS's v1 devices cgroup; a node of ``--devnodes`` is the
host's node, bound onto a new file in the VPS's ``/dev`` from inside its mount namespace, as
runc does at start (a user namespace cannot make device nodes). No VPS binary runs: a child of
vzctl enters the VPS's mount namespace and makes only system calls there, every path component
opened without following symlinks (the VPS's root owns its ``/dev``). On a pure cgroup v2 host
runc's device filter is an eBPF program that ``runc update`` does not change: the changes apply
at the next start, and vzctl says so.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from vzpkg import cgroups, syscalls
from vzpkg.ct import inside
from vzpkg.ct.resources import Device
from vzpkg.errors import ExitCode, VzError
from vzpkg.fsutil import atomic_write, open_dir_beneath

log = logging.getLogger("vzpkg")

MNT_DETACH = inside.MNT_DETACH


RECORD = "devices.json"  # in the VPS's bundle: what it was granted at start and since


def record(bundle: Path, granted: Sequence[Device]) -> None:
    """Note what a VPS is granted now (written at start, and by each live change)."""
    data = json.dumps([dataclasses.asdict(d) for d in granted]).encode()
    atomic_write(bundle / RECORD, data, 0o600)


def recorded(bundle: Path) -> tuple[Device, ...] | None:
    """What ``record`` noted; None when nothing is (a VPS started by an older vzctl)."""
    try:
        return tuple(Device(**entry) for entry in json.loads((bundle / RECORD).read_bytes()))
    except (OSError, ValueError, TypeError):
        return None


def rule(device: Device) -> str:
    """The v1 rule of ``device``: ``c 10:229 rw``."""
    minor = "*" if device.minor is None else str(device.minor)
    return f"{device.kind} {device.major}:{minor} {device.access}"


def change(
    ctid: int,
    cgroup_paths: dict[str, str],
    init_pid: int,
    before: Sequence[Device],
    after: Sequence[Device],
) -> str | None:
    """Make the running VPS's devices ``after`` instead of ``before``; a note for the user when
    they apply only at its next start."""
    directory = cgroup_paths.get("devices")
    if directory is None:
        return f"--devices and --devnodes apply at CT {ctid}'s next start on this host (cgroup v2)"
    gone = [d for d in before if d not in after]
    added = [d for d in after if d not in before]
    if not gone and not added:
        return None
    # Nodes first: a node without its rule opens nothing, so a failure on the way leaves the
    # VPS no more than it had.
    bound: list[Device] = []
    try:
        for device in added:
            if device.path:
                _bind_node(init_pid, device)
                bound.append(device)
        for device in gone:
            if device.path and device.path not in {d.path for d in after}:
                _in_vps(init_pid, lambda: _remove_node(device))  # noqa: B023 - runs at once
    except BaseException:
        for device in bound:
            try:
                _in_vps(init_pid, lambda: _remove_node(device))  # noqa: B023 - runs at once
            except VzError as e:
                log.error("CT %s: could not take %s back: %s", ctid, device.path, e.message)
        raise
    mine = {rule(d) for d in before}
    # What runc allowed stays allowed, even where a taken grant overlapped it (deny takes
    # the access out of the merged entry, the allow puts runc's back).
    base = [line for line in cgroups.device_rules(directory) if line not in mine]
    try:
        cgroups.change_device_rules(directory, [rule(d) for d in gone],
                                    base + [rule(d) for d in after])  # fmt: skip
    except OSError as e:
        raise VzError(
            f"CT {ctid}: cannot change its device rules in {directory}: {e.strerror}",
            ExitCode.SYSTEM,
        ) from None
    return None


def _bind_node(init_pid: int, device: Device) -> None:
    """Bind the host's node of ``device`` onto ``device.path`` in the VPS (taken here, before
    the child enters the VPS)."""
    assert device.path is not None
    source = syscalls.open_tree(device.path, syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC)
    try:
        _in_vps(init_pid, lambda: _bind_onto(source, device))
    finally:
        os.close(source)


def _in_vps(init_pid: int, action: Callable[[], None]) -> None:
    inside.in_vps(init_pid, action, "change a device node")


def _bind_onto(source: int, device: Device) -> None:
    """Bind the host's node ``source`` (a detached mount) onto a new file ``device.path``."""
    assert device.path is not None
    parts = device.path.strip("/").split("/")
    with open_dir_beneath(Path("/"), "/".join(parts[:-1]), create=True) as directory:
        try:
            st = os.stat(parts[-1], dir_fd=directory, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            node = stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            if node and st.st_rdev == os.makedev(device.major, device.minor or 0):
                return  # there already
            raise OSError(errno.EEXIST, f"{device.path} exists in the VPS")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        os.close(os.open(parts[-1], flags, 0o600, dir_fd=directory))
        target = os.open(parts[-1], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
        try:
            syscalls.move_mount(source, target)
        finally:
            os.close(target)


def _remove_node(device: Device) -> None:
    """Unmount and remove ``device.path`` in the VPS (nothing to do if it is gone)."""
    assert device.path is not None
    parts = device.path.strip("/").split("/")
    try:
        with open_dir_beneath(Path("/"), "/".join(parts[:-1])) as directory:
            os.fchdir(directory)  # umount2 of a name here: the last component is not followed
            try:
                syscalls.umount(parts[-1], MNT_DETACH | syscalls.UMOUNT_NOFOLLOW)
            except OSError as e:
                if e.errno != errno.EINVAL:  # not a mount point
                    raise
            os.unlink(parts[-1], dir_fd=directory)
    except FileNotFoundError:
        pass
