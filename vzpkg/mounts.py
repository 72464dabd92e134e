"""The mount table as the kernel shows it (/proc/self/mountinfo), parsed exactly.

Paths are unescaped as the kernel escapes them, and compared whole, never as string prefixes
of each other, so /vz/root/10 is not taken for /vz/root/101.

Whether something is mounted on one path is asked of the kernel for that path alone (statx:
is it the root of a mount, and which mount): reading mountinfo costs time in proportion to the
host's mounts (each running VPS adds three; with 3000 one read takes ~19 ms), so a command
reads it only for what needs the whole table (who uses a directory) or a mount's details
(what is mounted on a VPS's root), and a command that asks about many paths reads it once
(``MountTable``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vzpkg import syscalls

MOUNTINFO = Path("/proc/self/mountinfo")
_MOUNTINFO_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo (proc(5)); paths unescaped."""

    mount_id: int  # statx's stx_mnt_id of the mount's paths
    device: str  # major:minor
    fs_root: str  # the directory of the filesystem that is mounted (a bind mount's source)
    mount_point: str
    fstype: str
    source: str
    super_options: str

    def option(self, name: str) -> str | None:
        for item in self.super_options.split(","):
            key, _, value = item.partition("=")
            if key == name:
                return value
        return None


def _unescape(field: bytes) -> str:
    """The kernel writes space, tab, newline and backslash as ``\\ooo``; all else is raw."""
    return os.fsdecode(_MOUNTINFO_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def parse_mountinfo(data: bytes) -> list[MountEntry]:
    entries = []
    for line in data.splitlines():
        fields = line.split(b" ")
        try:
            separator = fields.index(b"-", 6)  # optional fields come before it
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    device=fields[2].decode(),
                    fs_root=_unescape(fields[3]),
                    mount_point=_unescape(fields[4]),
                    fstype=_unescape(fields[separator + 1]),
                    source=_unescape(fields[separator + 2]),
                    super_options=_unescape(fields[separator + 3]),
                )
            )
        except (ValueError, IndexError):
            continue  # not a mountinfo line
    return entries


def read_mountinfo() -> list[MountEntry]:
    return parse_mountinfo(MOUNTINFO.read_bytes())


class MountTable:
    """mountinfo read once for a command that asks about many paths (vzlist: every VPS's
    root): read when first needed, and read again when the kernel names a mount the copy
    lacks (mounted since)."""

    def __init__(self) -> None:
        self._entries: list[MountEntry] | None = None
        self._by_id: dict[int, MountEntry] = {}

    def entries(self) -> list[MountEntry]:
        if self._entries is None:
            self._entries = read_mountinfo()
            self._by_id = {entry.mount_id: entry for entry in self._entries}
        return self._entries

    def by_id(self, mount_id: int) -> MountEntry | None:
        fresh = self._entries is None
        self.entries()
        if mount_id not in self._by_id and not fresh:
            self._entries = None
            self.entries()
        return self._by_id.get(mount_id)


def _real(path: Path) -> str:
    return os.path.realpath(path)


def _mount_at(path: Path) -> int | None:
    """The id of the mount whose root ``path`` is, as the kernel resolves ``path`` now
    (symlinks followed, the top of mounts stacked there); 0: ``path`` is no mount's root;
    None: the kernel cannot say (before Linux 5.8), ask mountinfo."""
    try:
        st = syscalls.statx(path, syscalls.STATX_MNT_ID, syscalls.AT_NO_AUTOMOUNT)
    except (FileNotFoundError, NotADirectoryError):
        return 0  # nothing there to mount on
    except OSError:
        return None
    if not (
        st.stx_attributes_mask & syscalls.STATX_ATTR_MOUNT_ROOT
        and st.stx_mask & syscalls.STATX_MNT_ID
    ):
        return None
    return st.stx_mnt_id if st.stx_attributes & syscalls.STATX_ATTR_MOUNT_ROOT else 0


def is_mounted(root: Path) -> bool:
    """Whether something is mounted exactly on ``root`` (not merely somewhere below it)."""
    found = _mount_at(root)
    if found is not None:
        return found != 0
    point = _real(root)
    return any(entry.mount_point == point for entry in read_mountinfo())


def mount_on(root: Path, table: MountTable | None = None) -> MountEntry | None:
    """What is mounted exactly on ``root`` (of mounts stacked there, the top one: what the
    path shows); None if nothing. mountinfo (``table``'s copy, else a fresh read) is read only
    when something is."""
    found = _mount_at(root)
    if found == 0:
        return None
    table = table if table is not None else MountTable()
    if found is not None:
        entry = table.by_id(found)
        if entry is not None:
            return entry
    point = _real(root)
    top = None
    for entry in table.entries():  # the last of a stack is the top one
        if entry.mount_point == point:
            top = entry
    return top


def _is_at_or_below(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def mount_of(path: Path, entries: list[MountEntry] | None = None) -> MountEntry | None:
    """The mount ``path`` is on (of mounts stacked on one point, the top one)."""
    target = _real(path)
    found = None
    for entry in read_mountinfo() if entries is None else entries:
        if _is_at_or_below(target, entry.mount_point) and (
            found is None or len(entry.mount_point) >= len(found.mount_point)
        ):
            found = entry
    return found


def mounts_using(path: Path) -> list[str]:
    """Mount points that show ``path`` or something below it: bind mounts of it (wherever
    they are), overlays with their upper layer in it or a lower layer from it, and mounts on
    it or below it."""
    target = _real(path)
    entries = read_mountinfo()
    # Where ``path`` lies inside its filesystem: the bind mounts of it have that as fs_root.
    holder = mount_of(path, entries)
    inside = None
    if holder is not None:
        relative = os.path.relpath(target, holder.mount_point)
        inside = os.path.normpath(os.path.join(holder.fs_root, relative))
    users = []
    for entry in entries:
        layers: list[str] = []
        if entry.fstype == "overlay":
            layers += (entry.option("lowerdir") or "").split(":")
            layers += [entry.option("upperdir") or "", entry.option("workdir") or ""]
        if (
            _is_at_or_below(entry.mount_point, target)
            or any(layer and _is_at_or_below(layer, target) for layer in layers)
            or (
                entry is not holder
                and holder is not None
                and inside is not None
                and entry.device == holder.device
                and _is_at_or_below(entry.fs_root, inside)
            )
        ):
            users.append(entry.mount_point)
    return users


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    top = os.path.realpath(path)
    points = [e.mount_point for e in read_mountinfo() if _is_at_or_below(e.mount_point, top)]
    return sorted(points, key=len, reverse=True)


def unmount(point: Path, hint: str | None = None) -> None:
    """Unmount everything stacked on ``point`` (nothing to do if nothing is); VzError (exit
    51) when umount fails or something stays."""
    from vzpkg import run  # run imports nothing of this module's users; kept lazy all the same
    from vzpkg.errors import ExitCode, VzError

    for _ in range(16):
        if not is_mounted(point):
            return
        run.run(["umount", str(point)], error_code=ExitCode.UMOUNT_FAILED, error_hint=hint)
    raise VzError(f"{point} is still mounted", ExitCode.UMOUNT_FAILED, hint=f"umount {point}")
