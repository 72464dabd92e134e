"""Move a stopped VPS's own files from one block of host ids to another, in place.

``vzctl set CTID --userns yes --save`` gives a privileged VPS (made with ``--userns no``, or
before VPSs had user namespaces) a block of its own: every file of its private area (plain
layout) or of its upper directory (overlay: the template tree is shared and seen through an
idmapped mount) changes owner from host id n to base+n. ``--userns no`` moves them back.

What a chown does not carry is carried explicitly:
- POSIX ACLs (``system.posix_acl_access``/``_default``) name users and groups: their ids move.
- File capabilities (``security.capability``): a chown drops them, and the kernel reads them
  relative to a root id. They are written back for the new block (v3, ``rootid`` = the VPS's
  root; v2 for a privileged VPS).
- setuid/setgid bits, which a chown clears, are set again.

The tree is hostile input: it is walked by fd, a symlink is never followed, and nothing is done
across a mount point (a bind mount included) nor to a file with hard links outside the tree.
A shift can be cut short (^C, kill -9, power loss) at any file: the plan (the two blocks, and
the capabilities and setuid modes that a chown would lose) is written to
``CONF_DIR/CTID.shifting`` before the first file changes, CTID.conf names the new block from
then on, and every step is idempotent (an id in the new block is done), so running the same
command again finishes it. ``vzctl start`` refuses a VPS with a shift in progress.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from vzpkg import fsutil
from vzpkg.ct import conf, idmap, layout, places
from vzpkg.ct.common import opened_ct, runc_of, stray_pids
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig
from vzpkg.syscalls import syncfs

log = logging.getLogger("vzpkg")

CAPS_XATTR = "security.capability"
ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
_CAPS_V2, _CAPS_V3 = 0x02000000, 0x03000000
_CAPS_REVISION_MASK = 0xFF000000
_ACL_USER, _ACL_GROUP = 0x02, 0x08
_ACL_VERSION = 2
PRIVILEGED = (0, 0)


@dataclass
class Plan:
    """A shift of one VPS: from block ``src`` to ``dst`` ((uid, gid) bases; (0, 0) is
    privileged), and the fixups a chown would lose, by path relative to the shifted tree."""

    src: tuple[int, int]
    dst: tuple[int, int]
    modes: dict[str, int] = field(default_factory=dict)  # setuid/setgid files: their mode
    caps: dict[str, str] = field(default_factory=dict)  # security.capability, hex, as found

    def to_json(self) -> str:
        import json

        return json.dumps(
            {"from": self.src, "to": self.dst, "modes": self.modes, "caps": self.caps},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        import json

        data = json.loads(text)
        modes, caps = data["modes"], data["caps"]
        if not isinstance(modes, dict) or not isinstance(caps, dict):
            raise ValueError("not a plan")
        return cls(_pair(data["from"]), _pair(data["to"]), modes, caps)


def _pair(value: object) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2 or not all(type(v) is int for v in value):
        raise ValueError("not a pair of ids")
    return value[0], value[1]


def journal_path(host: HostConfig, ctid: int) -> Path:
    return host.conf_dir / f"{ctid}.shifting"


def in_progress(host: HostConfig, ctid: int) -> bool:
    return journal_path(host, ctid).exists()


def refuse_if_in_progress(host: HostConfig, ctid: int) -> None:
    if in_progress(host, ctid):
        raise VzError(
            f"CT {ctid}: a change of its user namespace was cut short; its files are half moved",
            ExitCode.BAD_CT,
            hint=f"finish it: vzctl set {ctid} --userns "
            f"{'no' if _journal_target(host, ctid) == PRIVILEGED else 'yes'} --save",
        )


def _journal_target(host: HostConfig, ctid: int) -> tuple[int, int] | None:
    try:
        return Plan.from_json(journal_path(host, ctid).read_text()).dst
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- the command ------------------------------------------------------------------------------


def set_userns(host: HostConfig, ctid: int, want: bool) -> str:
    """Give stopped CT ``ctid`` a user namespace (``want``) or make it privileged, moving its
    files' ids; saved in CTID.conf. Returns what was done, for the user."""
    with opened_ct(host, ctid) as (cfg, private, root):
        state = runc_of(host).state(ctid)
        running = (state is not None and state.is_active) or bool(stray_pids(host, ctid))
        if running or layout.is_mounted(root):
            raise VzError(
                f"CT {ctid} is {'running' if running else 'mounted'}: its files can change "
                "owners only while it is stopped; nothing was done",
                ExitCode.RUNNING if running else ExitCode.MOUNTED,
                hint=f"vzctl stop {ctid}, then run this again",
            )
        if layout.condition(private) != "present":
            raise layout.missing_private(ctid, private)
        overlay = layout.layout_of(host, ctid, private) == "overlay"
        tree = private / "upper" if overlay else private
        if overlay and layout.is_mounted(tree):  # (a mount on a plain area hides its mark)
            raise _refusal(f"{tree} is a mount point, not the VPS's own files", "unmount it first")
        if want and overlay:
            ok, fstype = idmap.can_idmap(host.run_dir, host.trees_dir)
            if not ok:
                raise VzError(
                    f"CT {ctid} is an overlay VPS, and its template tree cannot be seen with its "
                    f"own ids here (TREES_DIR {host.trees_dir}: {fstype}, kernel "
                    f"{os.uname().release}): it would not start; nothing was changed",
                    ExitCode.INVALID_VALUE,
                    hint="move TREES_DIR to a filesystem that can idmap (ext4, xfs, btrfs, "
                    "tmpfs), or make a new VPS (a plain copy with its own ids) and move the data",
                )
        plan = _resumable(host, ctid, cfg)
        with contextlib.ExitStack() as held:
            if plan is None:
                src = cfg.userns or PRIVILEGED
                if (src != PRIVILEGED) == want:
                    return (
                        f"CT {ctid} {'has a user namespace' if want else 'is privileged'} already"
                    )
                if want:
                    block = idmap.allocate(host, ctid, lambda: places.blocks_of_others(host, ctid))
                    held.callback(idmap.release, host, ctid)
                    dst = (block, block)
                else:
                    dst = PRIVILEGED
                plan = survey(tree, Plan(src, dst))
                fsutil.write_durably(
                    host.conf_dir, journal_path(host, ctid).name, plan.to_json(), 0o600
                )
                conf.write_ct_config(host, ctid, replace(cfg, local_uid=dst[0], local_gid=dst[1]))
            elif (plan.dst != PRIVILEGED) != want:
                raise VzError(
                    f"CT {ctid}: a change to {'privileged' if want else 'a user namespace'} "
                    "was cut short; finish it before changing back",
                    ExitCode.INVALID_ARGUMENT,
                    hint=f"vzctl set {ctid} --userns {'no' if want else 'yes'} --save",
                )
            started = time.monotonic()
            count = apply(tree, plan)
            syncfs(tree)
            journal_path(host, ctid).unlink()
            fsutil.fsync_dir(host.conf_dir)
        took = time.monotonic() - started
        log.info("moved the owners of %d files of CT %s in %.1f s", count, ctid, took)
        if want:
            return f"CT {ctid} has a user namespace now: host ids from {plan.dst[0]}"
        log.warning(
            "CT %s is privileged now: root in it is root on the host's kernel; "
            "docs/security.md says what that allows",
            ctid,
        )
        return f"CT {ctid} is privileged now"


def _resumable(host: HostConfig, ctid: int, cfg: conf.CtConfig) -> Plan | None:
    """The plan of a shift cut short, when its files may be half moved (CTID.conf names its
    target); a plan whose CTID.conf was never written moved nothing and is dropped."""
    path = journal_path(host, ctid)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        plan = Plan.from_json(text)
    except (ValueError, KeyError, TypeError):
        raise VzError(
            f"CT {ctid}: {path} (the plan of a user namespace change cut short) is damaged",
            ExitCode.CONFIG,
            hint="restore the VPS from a backup, or destroy and recreate it",
        ) from None
    if (cfg.userns or PRIVILEGED) == plan.dst:
        return plan
    path.unlink()
    return None


# --- the walk ---------------------------------------------------------------------------------


def _moved(value: int, src: int, dst: int) -> int | None:
    """``value`` in the new block; None when it is in neither block."""
    if dst <= value < dst + idmap.BLOCK:
        return value
    if src <= value < src + idmap.BLOCK:
        return value - src + dst
    return None


MAX_DEPTH = 512  # directories deep; Debian's deepest is about 15
_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _entries(top: Path) -> Iterator[tuple[str, str, int, os.stat_result]]:
    """(relative path, name, dir fd, lstat) of ``top`` and everything below it, parents first.
    Iterative (a VPS's root can make a tree deeper than Python's recursion limit), one fd per
    level; refuses a mount point below ``top`` (a bind mount of a host directory, which the
    device number alone does not tell) and a tree deeper than MAX_DEPTH."""
    from vzpkg.mounts import mounts_under

    inside = [m for m in mounts_under(top) if m != os.path.realpath(top)]
    if inside:
        raise _refusal(f"{inside[-1]} is a mount point inside the VPS's files", "unmount it first")
    device = os.lstat(top).st_dev
    parent = os.open(top.parent, _DIR_OPEN)
    try:
        yield ".", top.name, parent, os.lstat(top.name, dir_fd=parent)
    finally:
        os.close(parent)
    stack: list[tuple[int, str, Iterator[os.DirEntry[str]]]] = []
    try:
        fd = os.open(top, _DIR_OPEN)
        stack.append((fd, "", os.scandir(fd)))
        while stack:
            fd, rel, names = stack[-1]
            entry = next(names, None)
            if entry is None:
                stack.pop()
                os.close(fd)
                continue
            name = entry.name
            st = os.lstat(name, dir_fd=fd)
            path = rel + name
            if st.st_dev != device:
                raise _refusal(f"{top / path} is on another filesystem", "unmount it first")
            yield path, name, fd, st
            if stat.S_ISDIR(st.st_mode):
                if len(stack) > MAX_DEPTH:
                    raise _refusal(
                        f"{top / path} is more than {MAX_DEPTH} directories deep",
                        "move what is below it up, or remove it, then run this again",
                    )
                sub = os.open(name, _DIR_OPEN, dir_fd=fd)
                stack.append((sub, path + "/", os.scandir(sub)))
    finally:
        for fd, _, names in stack:
            names.close()  # type: ignore[attr-defined]
            os.close(fd)


def _refusal(what: str, hint: str) -> VzError:
    return VzError(f"{what}; nothing of the VPS was changed", ExitCode.BAD_CT, hint=hint)


def survey(top: Path, plan: Plan) -> Plan:
    """``plan`` with the fixups of ``top``'s files, after checking that every owner is in one
    of the two blocks (nothing has changed yet)."""
    linked: dict[tuple[int, int], tuple[str, int]] = {}  # inode: (a name of it, its nlink)
    names_seen: Counter[tuple[int, int]] = Counter()
    for rel, name, dirfd, st in _entries(top):
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            linked.setdefault((st.st_dev, st.st_ino), (rel, st.st_nlink))
            names_seen[st.st_dev, st.st_ino] += 1
        if _moved(st.st_uid, plan.src[0], plan.dst[0]) is None or (
            _moved(st.st_gid, plan.src[1], plan.dst[1]) is None
        ):
            raise VzError(
                f"{top / rel} is owned by {st.st_uid}:{st.st_gid}, outside the VPS's ids "
                f"({plan.src[0]}-{plan.src[0] + idmap.BLOCK - 1}); nothing was changed",
                ExitCode.BAD_CT,
                hint=f"give it an owner of the VPS's: chown -h {plan.src[0]}:{plan.src[1]} "
                f"{top / rel}",
            )
        if not stat.S_ISREG(st.st_mode):
            continue
        if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            plan.modes[rel] = stat.S_IMODE(st.st_mode)
        caps = _get_xattr(_proc_path(dirfd, name), CAPS_XATTR)
        if caps is not None:
            plan.caps[rel] = caps.hex()
    for inode, (path, nlink) in linked.items():
        if names_seen[inode] != nlink:
            raise _refusal(
                f"{top / path} has hard links outside the VPS's files ({nlink} links, "
                f"{names_seen[inode]} inside): moving its owner would move theirs",
                f"give the VPS a file of its own: cp -a {top / path} {top / path}.copy && "
                f"mv {top / path}.copy {top / path}; then run this again",
            )
    return plan


def apply(top: Path, plan: Plan) -> int:
    """Move the owners (and ACL ids) of everything below ``top``, then restore what the
    chowns dropped. Idempotent. Returns the number of entries seen."""
    count = 0
    for _rel, name, dirfd, st in _entries(top):
        count += 1
        uid = _moved(st.st_uid, plan.src[0], plan.dst[0])
        gid = _moved(st.st_gid, plan.src[1], plan.dst[1])
        if uid is None or gid is None:
            raise VzError(
                f"{top / _rel} changed owner while its VPS's ids were being moved "
                f"({st.st_uid}:{st.st_gid}); run the command again",
                ExitCode.BAD_CT,
            )
        if (uid, gid) != (st.st_uid, st.st_gid):
            os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            path = _proc_path(dirfd, name)
            for attr in set(ACL_XATTRS).intersection(os.listxattr(path, follow_symlinks=False)):
                _shift_acl(path, attr, plan)
    for rel in sorted(set(plan.modes) | set(plan.caps)):
        _restore(top, rel, plan)
    return count


def _restore(top: Path, rel: str, plan: Plan) -> None:
    parent, name = os.path.split(rel)
    with fsutil.open_dir_beneath(top, parent or ".") as dfd:
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd
            )
        except FileNotFoundError:
            return
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return
            if rel in plan.caps:
                caps = shifted_caps(bytes.fromhex(plan.caps[rel]), plan)
                if caps is not None:
                    os.setxattr(fd, CAPS_XATTR, caps)
                else:  # made for a root outside both blocks (or not by the kernel)
                    log.warning("%s: its file capabilities were not the VPS's: dropped", top / rel)
            if rel in plan.modes:
                os.fchmod(fd, plan.modes[rel])
        finally:
            os.close(fd)


def _proc_path(dirfd: int, name: str) -> str:
    # The entry itself (never followed: callers pass follow_symlinks=False or skip symlinks),
    # reached through the directory fd the walk holds.
    return f"/proc/self/fd/{dirfd}/{name}"


def _get_xattr(path: str, attr: str) -> bytes | None:
    try:
        return os.getxattr(path, attr, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise


def shifted_caps(value: bytes, plan: Plan) -> bytes | None:
    """A ``security.capability`` value for the new block: the same capabilities, for the
    root of the new block (v3 with its rootid; v2 for a privileged VPS). None: not one the
    kernel made (left out)."""
    if len(value) not in (20, 24):
        return None
    magic = struct.unpack_from("<I", value)[0]
    revision = magic & _CAPS_REVISION_MASK
    if (revision, len(value)) not in ((_CAPS_V2, 20), (_CAPS_V3, 24)):
        return None
    root = struct.unpack_from("<I", value, 20)[0] if revision == _CAPS_V3 else 0
    new_root = _moved(root, plan.src[0], plan.dst[0])
    if new_root is None:
        return None
    flags, body = magic & ~_CAPS_REVISION_MASK, value[4:20]
    if new_root == 0:
        return struct.pack("<I", _CAPS_V2 | flags) + body
    return struct.pack("<I", _CAPS_V3 | flags) + body + struct.pack("<I", new_root)


def shifted_acl(value: bytes, plan: Plan) -> bytes:
    """A POSIX ACL xattr with its named users and groups moved to the new block (an id in
    neither block is kept: it names no one in the VPS either way)."""
    if len(value) < 4 or (len(value) - 4) % 8 or struct.unpack_from("<I", value)[0] != _ACL_VERSION:
        return value
    out = bytearray(value)
    for offset in range(4, len(value), 8):
        tag, _perm, ident = struct.unpack_from("<HHI", value, offset)
        src, dst = (plan.src[0], plan.dst[0]) if tag == _ACL_USER else (plan.src[1], plan.dst[1])
        if tag in (_ACL_USER, _ACL_GROUP):
            moved = _moved(ident, src, dst)
            if moved is not None:
                struct.pack_into("<I", out, offset + 4, moved)
    return bytes(out)


def _shift_acl(path: str, attr: str, plan: Plan) -> None:
    value = _get_xattr(path, attr)
    if value is not None:
        new = shifted_acl(value, plan)
        if new != value:
            os.setxattr(path, attr, new, follow_symlinks=False)
