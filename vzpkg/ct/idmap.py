"""User namespaces: each VPS's block of host ids, and the kernel objects that map onto it.

Every VPS made with a user namespace owns a block of ``BLOCK`` (65536) host uids and gids,
starting at its ``LOCAL_UID``/``LOCAL_GID`` (OpenVZ's keys for the base of a container's
mapping; ``0`` means no user namespace, a privileged VPS). Blocks come from a pool (host keys
``USERNS_POOL_BASE`` and ``USERNS_POOL_SIZE``) that is reserved for root in /etc/subuid and
/etc/subgid, so that useradd gives no user ids from it. A block is chosen under the lock
``userns-pool``: the first block no other VPS has (in its CTID.conf, or reserved by a create in
progress), that no other owner's subuid/subgid range overlaps and that holds no id of the
host's passwd or group file.

The kernel side: ``userns_fd`` makes a user namespace with a block's mapping (held by an fd);
``idmapped_bind`` mounts a directory through it (the shared template tree, seen as owned by the
VPS's root, one copy on disk); ``enter_userns`` runs a program as root of it (the unpacking of a
plain private area, whose files the kernel then owns by the block).
"""

from __future__ import annotations

import bisect
import contextlib
import grp
import os
import pwd
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vzpkg import fsutil, interrupts, lock, syscalls
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig

BLOCK = 65536
SUBUID, SUBGID = Path("/etc/subuid"), Path("/etc/subgid")
POOL_OWNER = "root"  # whose subordinate ids the pool is (as LXC and Incus reserve theirs)
POOL_PROBE_BASE = 1 << 31  # any mapping will do for a probe: nothing is ever attached with it
_RESERVATIONS = "userns"  # LOCKDIR/userns/<CTID>: the block of a create in progress


@dataclass(frozen=True)
class Range:
    owner: str
    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count

    def overlaps(self, start: int, count: int) -> bool:
        return self.start < start + count and start < self.end


def parse_subid(text: str) -> list[Range]:
    """The ``owner:start:count`` lines of /etc/subuid or /etc/subgid (others are skipped)."""
    ranges = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            ranges.append(Range(parts[0], int(parts[1]), int(parts[2])))
    return ranges


def _read_subid(path: Path) -> list[Range]:
    try:
        return parse_subid(path.read_text(errors="replace"))
    except FileNotFoundError:
        return []


def _is_pool(r: Range, host: HostConfig) -> bool:
    return (r.owner, r.start, r.count) == (
        POOL_OWNER,
        host.userns_pool_base,
        host.userns_pool_size,
    )


def _holds_pool(r: Range, host: HostConfig) -> bool:
    """An entry of root's that already covers the whole pool (a larger pool of this host)."""
    return (
        r.owner == POOL_OWNER
        and r.start <= host.userns_pool_base
        and host.userns_pool_base + host.userns_pool_size <= r.end
    )


def reserve_pool(host: HostConfig, files: Sequence[Path] | None = None) -> None:
    """Make sure /etc/subuid and /etc/subgid reserve the pool for root; refuse a pool that
    overlaps another entry of theirs. Called under the pool lock."""
    for path in (SUBUID, SUBGID) if files is None else files:
        ranges = _read_subid(path)
        if any(_is_pool(r, host) or _holds_pool(r, host) for r in ranges):
            continue
        clash = [r for r in ranges if r.overlaps(host.userns_pool_base, host.userns_pool_size)]
        if clash:
            raise VzError(
                f"the user namespace pool {host.userns_pool_base}-"
                f"{host.userns_pool_base + host.userns_pool_size - 1} overlaps {path}'s entry "
                f"{clash[0].owner}:{clash[0].start}:{clash[0].count}",
                ExitCode.CONFIG,
                hint="choose USERNS_POOL_BASE and USERNS_POOL_SIZE clear of it",
            )
        try:
            old = path.read_text() if path.exists() else ""
        except OSError as e:
            raise VzError(f"cannot read {path}: {e.strerror}", ExitCode.SYSTEM) from None
        line = f"{POOL_OWNER}:{host.userns_pool_base}:{host.userns_pool_size}\n"
        text = old + ("" if not old or old.endswith("\n") else "\n") + line
        try:
            fsutil.atomic_write(path, text.encode(), 0o644)
        except OSError as e:
            raise VzError(f"cannot write {path}: {e.strerror}", ExitCode.SYSTEM) from None


def _host_ids() -> set[int]:
    """uids and gids of the host's passwd and group databases."""
    ids = {p.pw_uid for p in pwd.getpwall()}
    ids.update(g.gr_gid for g in grp.getgrall())
    return ids


def _reservation_dir(host: HostConfig) -> Path:
    return host.lock_dir / _RESERVATIONS


def _reserved_by_creates(host: HostConfig, ctid: int) -> set[int]:
    """Blocks of creates in progress (their CT lock held); stale reservations are dropped."""
    blocks = set()
    directory = _reservation_dir(host)
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if not name.isdigit() or int(name) == ctid:
                continue
            if lock.is_locked(host.lock_dir, f"ct-{name}"):
                text = fsutil.read_small(directory / name)
                if text is not None and text.isdigit():
                    blocks.add(int(text))
            else:
                with contextlib.suppress(OSError):
                    (directory / name).unlink()
    return blocks


def allocate(host: HostConfig, ctid: int, taken: Callable[[], Iterable[int]]) -> int:
    """A free block for CT ``ctid`` (its base host id), reserved until ``release`` or until
    the create (which holds the CT's lock) ends. ``taken`` gives the first host uids and gids
    of every other VPS's block, from their configs: it is asked under the pool's lock, so that
    a create that finished meanwhile is seen."""
    with lock.locked(host.lock_dir, "userns-pool", timeout=30, what="the user namespace pool"):
        reserve_pool(host)
        # Reservations first, configs second: a create drops its reservation only after its
        # CTID.conf is written, so whichever of the two it has when we look, we see it.
        busy = _reserved_by_creates(host, ctid)
        busy |= set(taken())
        foreign = [
            r
            for path in (SUBUID, SUBGID)
            for r in _read_subid(path)
            if not _is_pool(r, host) and not _holds_pool(r, host)
        ]
        # Sorted, so that each candidate is one bisection, not a pass over every VPS's block
        # (1000 VPSs: 0.2 s).
        near = sorted(busy)
        host_ids = sorted(_host_ids())
        base = host.userns_pool_base
        while base + BLOCK <= host.userns_pool_base + host.userns_pool_size:
            if (
                not _any_between(near, base - BLOCK + 1, base + BLOCK)
                and not any(r.overlaps(base, BLOCK) for r in foreign)
                and not _any_between(host_ids, base, base + BLOCK)
            ):
                directory = _reservation_dir(host)
                directory.mkdir(mode=0o700, exist_ok=True)
                fsutil.write_durably(directory, str(ctid), f"{base}\n", 0o600)
                return base
            base += BLOCK
    raise VzError(
        f"the user namespace pool is full ({host.userns_pool_size // BLOCK} VPSs)",
        ExitCode.CONFIG,
        hint="raise USERNS_POOL_SIZE, or destroy VPSs you no longer need",
    )


def _any_between(ordered: Sequence[int], low: int, high: int) -> bool:
    """Whether sorted ``ordered`` holds a value in [low, high)."""
    at = bisect.bisect_left(ordered, low)
    return at < len(ordered) and ordered[at] < high


def release(host: HostConfig, ctid: int) -> None:
    """Drop CT ``ctid``'s reservation (its CTID.conf records the block from now on)."""
    with contextlib.suppress(FileNotFoundError):
        (_reservation_dir(host) / str(ctid)).unlink()


# --- the kernel side ---------------------------------------------------------------------


@contextlib.contextmanager
def userns_fd(uid: int, gid: int, count: int = BLOCK) -> Iterator[int]:
    """An fd of a new user namespace whose uids 0..count-1 are host uids uid..uid+count-1
    (and gids likewise from ``gid``). The namespace lives as long as the fd.

    A child makes the namespace (unshare) and waits; we write its maps, open it, and let the
    child go. The child keeps nothing of ours open (a Guardian's pipe it held would make the
    Guardian wait for it), and whatever interrupts us, it is let go and reaped.
    """
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid, fd = -1, -1
    try:
        with interrupts.held_back():  # the child never acts on signals: it waits, then exits
            pid = os.fork()
            if pid == 0:
                _namespace_child(ready_w, done_r)
        os.close(ready_w)
        os.close(done_r)
        ready_w = done_r = -1
        if os.read(ready_r, 1) != b"x":
            raise VzError("could not make a user namespace", ExitCode.SYSTEM)
        for name, base in (("uid_map", uid), ("gid_map", gid)):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(f"0 {base} {count}\n")
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    finally:
        for end in (ready_r, ready_w, done_r, done_w):
            if end >= 0:
                os.close(end)  # done_w: the child exits
        if pid > 0:
            os.waitpid(pid, 0)
    try:
        yield fd
    finally:
        os.close(fd)


def _namespace_child(ready_w: int, done_r: int) -> None:
    """The child of ``userns_fd``: nothing but its two pipe ends open, signals blocked."""
    code = 1
    try:
        low, high = sorted((ready_w, done_r))
        os.closerange(3, low)
        os.closerange(low + 1, high)
        os.closerange(high + 1, 1 << 16)
        syscalls.unshare(syscalls.CLONE_NEWUSER)
        os.write(ready_w, b"x")
        os.read(done_r, 1)
        code = 0
    finally:
        os._exit(code)


def idmapped_bind(source: Path, target: Path, fd: int) -> None:
    """Mount ``source`` read-only on ``target`` with its ids seen through user namespace
    ``fd`` (host id base+n shows as n... and the other way round: a file of host uid 0 is
    seen by the VPS as its own root's)."""
    mount_fd = syscalls.open_tree(source, syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC)
    try:
        attr = syscalls.MountAttr(
            # Not nosuid: the tree's setuid binaries (su, passwd) must keep working inside.
            attr_set=syscalls.MOUNT_ATTR_IDMAP
            | syscalls.MOUNT_ATTR_RDONLY
            | syscalls.MOUNT_ATTR_NODEV,
            userns_fd=fd,
        )
        syscalls.mount_setattr(mount_fd, attr)
        syscalls.move_mount(mount_fd, target)
    finally:
        os.close(mount_fd)


# --- can this host idmap? ----------------------------------------------------------------------

IDMAPPED_OVERLAY_LOWER = (5, 19)  # the first kernel with an idmapped mount as overlay lowerdir
_PROBES = "idmap-probes"  # RUN_DIR/idmap-probes/<fstype>:<device>:<kernel>: "yes" or "no"


def kernel_release(release: str | None = None) -> tuple[int, int]:
    import re

    found = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return (int(found[1]), int(found[2])) if found else (0, 0)


def can_idmap(run_dir: Path, directory: Path) -> tuple[bool, str]:
    """Whether a VPS can see a tree in ``directory`` (or, while it does not exist yet, in its
    nearest existing parent) through an idmapped overlay lower layer, and the filesystem's
    type. Probed once per filesystem (as Incus does at start) and remembered in RUN_DIR, which
    is emptied at boot."""
    from vzpkg.mounts import mount_of

    while not directory.is_dir() and directory != directory.parent:
        directory = directory.parent
    entry = mount_of(directory)
    fstype = entry.fstype if entry is not None else "unknown"
    if kernel_release() < IDMAPPED_OVERLAY_LOWER:
        return False, fstype
    # The kernel's release too: RUN_DIR is on tmpfs as a rule, but need not be.
    record = run_dir / _PROBES / f"{fstype}:{os.stat(directory).st_dev}:{os.uname().release}"
    known = fsutil.read_small(record)
    if known in ("yes", "no"):
        return known == "yes", fstype
    ok = _probe(directory)
    with contextlib.suppress(OSError):
        fsutil.makedirs_mode(record.parent, 0o700)
        fsutil.atomic_write(record, b"yes\n" if ok else b"no\n", 0o600)
    return ok, fstype


def _probe(directory: Path) -> bool:
    """Try it: a detached copy of ``directory``'s mount, idmapped (nothing is attached)."""
    try:
        mount_fd = syscalls.open_tree(
            directory, syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC
        )
    except OSError:
        return False
    try:
        with userns_fd(POOL_PROBE_BASE, POOL_PROBE_BASE) as fd:
            syscalls.mount_setattr(
                mount_fd, syscalls.MountAttr(attr_set=syscalls.MOUNT_ATTR_IDMAP, userns_fd=fd)
            )
        return True
    except OSError:
        return False
    finally:
        os.close(mount_fd)
