"""A VPS's own disk: its files on an ext4 filesystem in an image file of its own, loop-mounted
in its private area, so that its writes end in ENOSPC at DISKSPACE (OpenVZ's ploop, on a stock
kernel; docs/resources.md).

    --diskspace 10G      DISKSPACE="10G:10G"          the limit (OpenVZ: soft[:hard])
    --diskinodes 200000  DISKINODES="200000:200000"   its inodes, fixed when it is made

As with ploop, the first value is the limit and the second is kept (not below the first). A
plain number is KiB, as OpenVZ's; K, M, G, T suffixes and fractions (``2.2G``) are taken. A VPS
without DISKSPACE has no disk and no limit, as before.

    <private>/root.hdd   the image: a sparse file of root's, mode 0600
    <private>/fs/        where it is mounted (``mount -o loop,nodev,discard``) while the VPS is
        root/            plain: the VPS's root
        upper/ work/     overlay: its upper layer (the template tree stays shared, not counted)
        lost+found/      e2fsck's, never shown to the VPS

The mark ``trusted.vzpkg.disk`` on the private area, which only host root can set, says it has
a disk: a plain VPS without one cannot make its own ``root.hdd`` count. The VPS never sees the
image, only files in it, so the filesystem's metadata is the kernel's work, never the VPS's.

The image is made with room to grow (``ceiling``), and the limit is ext4's reserve
(``reserved_clusters`` in sysfs): blocks nobody may take, host root and an overlay's mounter
included. It is the kernel's only, set at each mount from CTID.conf, and moves both ways at once
on a mounted disk. Past the image's size the filesystem is resized (``resize``). The loop device
goes with the mount (autoclear).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from vzpkg import checks, run
from vzpkg.errors import ExitCode, VzError
from vzpkg.fsutil import mkdir_mode
from vzpkg.mounts import is_mounted, mount_on, unmount

IMAGE = "root.hdd"
MOUNT_DIR = "fs"
DISK_XATTR = "trusted.vzpkg.disk"
KEYS = ("DISKSPACE", "DISKINODES")
OPTION_OF_KEY = {"DISKSPACE": "--diskspace", "DISKINODES": "--diskinodes"}
MIN_SIZE = 32 << 20  # ext4 with a journal, and room for a little more than its metadata
MAX_SIZE = 1 << 50
BLOCK = 4096
MOUNT_OPTIONS = "loop,nodev,discard,errors=remount-ro"
# ASCII: under IGNORECASE alone "k" also matches the Kelvin sign, which no suffix is.
_AMOUNT = re.compile(r"([0-9]{1,19})(\.[0-9]{1,6})?([KMGTP]?)", re.IGNORECASE | re.ASCII)
_SHIFT = {"": 10, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50}  # no suffix: KiB, as OpenVZ


@dataclass(frozen=True)
class Disk:
    """DISKSPACE and DISKINODES: bytes and inodes; None where unset or unlimited."""

    space: int | None = None
    space_hard: int | None = None
    inodes: int | None = None
    inodes_hard: int | None = None


def _amount(text: str, what: str, value: str, shift: dict[str, int] | None) -> int | None:
    text = text.strip()
    if text.lower() == "unlimited" or text == "":
        return None
    match = _AMOUNT.fullmatch(text)
    if not match:
        hint = "e.g. 10G, 10G:11G or unlimited" if shift else "e.g. 200000"
        raise checks.bad(what, value, "is not a size" if shift else "is not a number", hint=hint)
    whole, fraction, suffix = match[1], match[2] or "", match[3].upper()
    if shift is None:
        if fraction or suffix:
            raise checks.bad(what, value, "is not a whole number of inodes")
        return int(whole)
    amount = int((int(whole) + (float(fraction) if fraction else 0)) * (1 << shift[suffix]))
    return amount if amount < 1 << 62 else None  # OpenVZ's LONG_MAX: unlimited


def _pair(value: str, what: str, shift: dict[str, int] | None) -> tuple[int | None, int | None]:
    soft_text, sep, hard_text = value.partition(":")
    if sep and not (soft_text.strip() and hard_text.strip()):
        raise checks.bad(what, value, "has an empty half", hint="e.g. 10G:11G")
    soft = _amount(soft_text, what, value, shift)
    hard = _amount(hard_text, what, value, shift) if sep else soft
    if soft is not None and hard is not None and hard < soft:
        raise checks.bad(what, value, "has a hard limit below its soft limit")
    if soft is None and hard is not None:
        soft = hard  # "unlimited:10G": the size is what is limited
    return soft, hard


def parse(values: Mapping[str, str], *, from_options: bool = False) -> Disk:
    """DISKSPACE and DISKINODES of CTID.conf (or the options); VzError (exit 21) naming the
    bad one."""

    def name(key: str) -> str:
        return OPTION_OF_KEY[key] if from_options else key

    space = hard = inodes = inodes_hard = None
    for key in KEYS:
        if from_options and key in values and not values[key].strip():
            raise checks.bad(name(key), values[key], "is empty", hint="e.g. 10G or unlimited")
    if "DISKSPACE" in values:
        space, hard = _pair(values["DISKSPACE"], name("DISKSPACE"), _SHIFT)
        if space is not None and not MIN_SIZE <= space <= MAX_SIZE:
            raise checks.bad(name("DISKSPACE"), values["DISKSPACE"],
                             "is not from 32M to 1P")  # fmt: skip
    if "DISKINODES" in values:
        inodes, inodes_hard = _pair(values["DISKINODES"], name("DISKINODES"), None)
        if inodes is not None and not 1024 <= inodes <= 1 << 32:
            raise checks.bad(name("DISKINODES"), values["DISKINODES"],
                             "is not from 1024 to 4294967296")  # fmt: skip
    return Disk(space, hard, inodes, inodes_hard)


def show(amount: int | None) -> str:
    if amount is None:
        return "unlimited"
    for suffix in ("T", "G", "M"):
        if amount % (1 << _SHIFT[suffix]) == 0:
            return f"{amount >> _SHIFT[suffix]}{suffix}"
    return str(-(-amount // 1024))  # KiB, OpenVZ's unit


def human(amount: int) -> str:
    """For messages: 152.3 MiB, 2.0 GiB."""
    if amount >= 1 << 30:
        return f"{amount / (1 << 30):.1f} GiB"
    return f"{amount / (1 << 20):.1f} MiB"


def config_values(options: Mapping[str, str]) -> dict[str, str]:
    """CTID.conf's values for --diskspace and --diskinodes (keys DISKSPACE, DISKINODES)."""
    disk = parse(options, from_options=True)
    values = {}
    if "DISKSPACE" in options:
        values["DISKSPACE"] = f"{show(disk.space)}:{show(disk.space_hard)}"
    if "DISKINODES" in options:
        n, h = disk.inodes, disk.inodes_hard
        values["DISKINODES"] = f"{n or 'unlimited'}:{h or 'unlimited'}"
    return values


def size_of(private: Path) -> int:
    """The size of the disk of ``private``: its image's length."""
    return _check_image(image_path(private)).st_size


def rounded(amount: int) -> int:
    """A filesystem size: whole 4 KiB blocks."""
    return amount - amount % BLOCK


# --- the private area's disk -----------------------------------------------------------------


def has_disk(private: Path) -> bool:
    """Whether the private area is marked as having a disk (a mark only host root can set)."""
    try:
        os.getxattr(private, DISK_XATTR, follow_symlinks=False)
    except OSError:
        return False
    return True


def data_dir(private: Path) -> Path:
    """Where the VPS's own files are: the private area, or its mounted disk."""
    return private / MOUNT_DIR if has_disk(private) else private


def plain_root(private: Path) -> Path:
    """A plain VPS's root directory: its private area, or ``root/`` on its disk."""
    return private / MOUNT_DIR / "root" if has_disk(private) else private


def image_path(private: Path) -> Path:
    return private / IMAGE


def _check_image(image: Path) -> os.stat_result:
    try:
        st = image.lstat()
    except FileNotFoundError:
        raise VzError(
            f"the disk image {image} is missing",
            ExitCode.MOUNT_FAILED,
            hint="the private area is marked as having a disk but its image is gone: restore "
            "it from a backup",
        ) from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0:
        raise VzError(
            f"the disk image {image} is not a regular file of root's",
            ExitCode.MOUNT_FAILED,
            hint="nothing was mounted; check the private area",
        )
    return st


def ceiling(space: int) -> int:
    """The size of the image for a limit of ``space``: room to raise the limit live (to
    twice, and at least 2 GiB more) without resizing the filesystem. Sparse: the host holds
    only what is written."""
    return rounded(max(2 * space, space + (2 << 30)))


def make(private: Path, want: Disk, owner: tuple[int, int]) -> None:
    """Make the image of a new private area ``private`` (being built): a sparse file with an
    empty ext4 filesystem, its root directory ``owner``'s, and the mark."""
    assert want.space is not None
    run.check_tool("mkfs.ext4", "to make VPS disks (DISKSPACE)", package="e2fsprogs")
    image = image_path(private)
    try:
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
        try:
            os.ftruncate(fd, ceiling(want.space))
        finally:
            os.close(fd)
    except OSError as e:
        raise VzError(f"cannot make the disk image {image}: {e.strerror}",
                      ExitCode.DQ_SET) from None  # fmt: skip
    # No blocks reserved for root (the limit is set at each mount, vzpkg's reserve); inode
    # tables and journal are not written out now, so the image stays sparse.
    argv = ["mkfs.ext4", "-F", "-q", "-T", "default", "-b", str(BLOCK), "-m", "0", "-L",
            "vzpkg-disk", "-E", f"root_owner={owner[0]}:{owner[1]},lazy_itable_init=1,"
            "lazy_journal_init=1"]  # fmt: skip
    if want.inodes is not None:
        argv += ["-N", str(want.inodes)]
    _tool([*argv, str(image)], "the DISKINODES value may not fit the DISKSPACE")
    mkdir_mode(private / MOUNT_DIR, 0o700)
    os.setxattr(private, DISK_XATTR, b"ext4", follow_symlinks=False)


def attach(private: Path) -> tuple[Path, bool]:
    """Mount the disk of ``private`` at ``private/fs`` (its limit is ``limit``'s to set);
    (that path, whether this call mounted it)."""
    point = private / MOUNT_DIR
    if is_mounted(point):
        return point, False
    image = image_path(private)
    _check_image(image)
    st = point.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise VzError(f"{point} is not a directory", ExitCode.MOUNT_FAILED)
    run.check_tool("mount", "to mount VPS disks", package="mount")
    run.run(
        ["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(image), str(point)],
        error_code=ExitCode.MOUNT_FAILED,
        error_hint="the kernel log says why (dmesg | tail); a damaged filesystem is repaired "
        f"with the VPS stopped: e2fsck -f {image}",
    )
    return point, True


def detach(private: Path) -> None:
    """Unmount the disk of ``private`` (its loop device goes with it); nothing to do if it is
    not mounted."""
    point = private / MOUNT_DIR
    unmount(point, f"something still uses the VPS's disk: fuser -vm {point}")


@contextlib.contextmanager
def attached(private: Path) -> Iterator[Path]:
    """The disk of ``private`` mounted for the block (unmounted after, if this mounted it)."""
    point, mounted = attach(private)
    try:
        yield point
    finally:
        if mounted:
            detach(private)


def loops_of(image: Path) -> list[str]:
    """The loop devices whose backing file is ``image``: after its mount here is gone, a
    mount namespace that copied it (a build's ``unshare --mount``, a service's private /tmp)
    keeps the device, and its filesystem, alive."""
    wanted = os.path.realpath(image)
    found = []
    for entry in sorted(Path("/sys/block").glob("loop*")):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing == wanted:
            found.append("/dev/" + entry.name)
    return found


def held_elsewhere(ctid: int, private: Path, doing: str) -> None:
    """Refuse (exit 62) ``doing`` to the image while some mount namespace still has its
    filesystem mounted: e2fsck or resize2fs on the file under a live filesystem corrupt it."""
    if is_attached(private):
        return
    devices = loops_of(image_path(private))
    if devices:
        raise VzError(
            f"CT {ctid}'s disk is still mounted in another mount namespace (through "
            f"{', '.join(devices)}), although not here: {doing} it now would corrupt it; "
            "nothing was changed",
            ExitCode.DQ_SET,
            hint=f"find the holder: grep -l {devices[0].removeprefix('/dev/')} "
            "/proc/*/mountinfo (a build or a service that copied the host's mounts); try "
            "again once it has ended",
        )


def is_attached(private: Path) -> bool:
    return is_mounted(private / MOUNT_DIR)


def used(point: Path) -> int:
    """Bytes in use on the disk mounted at ``point`` (df's Used)."""
    st = os.statvfs(point)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _sysfs(point: Path) -> Path:
    entry = mount_on(point)
    if entry is None or entry.fstype != "ext4":
        raise VzError(f"{point} is not a mounted disk", ExitCode.SYSTEM)
    return Path("/sys/fs/ext4") / os.path.basename(entry.source) / "reserved_clusters"


def limit(point: Path, space: int | None) -> None:
    """Let the disk mounted at ``point`` hold ``space`` bytes (df's Used + Avail), through
    ext4's reserve (``reserved_clusters``: blocks nobody, not even host root, may take, so
    the limit holds for writes through an overlay too). Kept in memory only: set at each
    mount, from CTID.conf."""
    st = os.statvfs(point)
    total = st.f_blocks
    default = min(total // 50, 4096)  # what the kernel keeps for itself
    reserve = default if space is None else max(default, total - space // st.f_frsize)
    try:
        _sysfs(point).write_text(f"{reserve}\n")
    except OSError as e:
        raise VzError(
            f"cannot limit the disk at {point} to {show(space)}: {e.strerror}",
            ExitCode.DQ_SET,
            hint="the kernel's ext4 must offer /sys/fs/ext4/DEV/reserved_clusters (Linux 3.14+)",
        ) from None


@contextlib.contextmanager
def lifted(private: Path, space: int | None) -> Iterator[None]:
    """The limit of the mounted disk of ``private`` lifted for the block, ``space`` again
    after: for vzctl's own few writes into a VPS that is not running yet (its guest settings
    at start), which a full disk must not refuse, or the VPS could never start again. Nothing
    to do without a mounted disk."""
    point = private / MOUNT_DIR
    if not has_disk(private) or not is_mounted(point):
        yield
        return
    limit(point, None)
    try:
        yield
    finally:
        limit(point, space)


def room(point: Path) -> int:
    """The most a limit on the disk mounted at ``point`` can be without resizing it."""
    st = os.statvfs(point)
    return (st.f_blocks - min(st.f_blocks // 50, 4096)) * st.f_frsize


@dataclass(frozen=True)
class Usage:
    """A mounted disk's size and use: bytes and inodes."""

    size: int
    used: int
    inodes: int
    inodes_used: int


def usage(private: Path) -> Usage | None:
    """What the VPS uses of its disk, None when it has none or it is not mounted."""
    point = private / MOUNT_DIR
    if not has_disk(private) or not is_mounted(point):
        return None
    st = os.statvfs(point)
    return Usage(
        (st.f_blocks - st.f_bfree + st.f_bavail) * st.f_frsize,
        (st.f_blocks - st.f_bfree) * st.f_frsize,
        st.f_files,
        st.f_files - st.f_ffree,
    )


def _can_resize_mounted() -> bool:
    """Whether this process may resize a mounted ext4 (the kernel asks for CAP_SYS_RESOURCE,
    which some container hosts withhold)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return False
    effective = next((line.split()[1] for line in text.splitlines()
                      if line.startswith("CapEff:")), "0")  # fmt: skip
    return bool(int(effective, 16) >> 24 & 1)  # CAP_SYS_RESOURCE


def resize(ctid: int, private: Path, space: int, *, mounted: bool) -> None:
    """Make the disk of ``private`` big enough for a limit of ``space``: its image grows to
    ``ceiling(space)``, the filesystem with it (online when ``mounted``)."""
    image = image_path(private)
    size = ceiling(space)
    run.check_tool("resize2fs", "to resize VPS disks", package="e2fsprogs")
    if mounted:
        if not _can_resize_mounted():
            raise VzError(
                f"CT {ctid}'s disk can grow to {human(room(private / MOUNT_DIR))} while it "
                f"runs; {human(space)} needs a larger filesystem, which this host cannot resize "
                "while it is mounted (no CAP_SYS_RESOURCE); nothing was changed",
                ExitCode.DQ_SET,
                hint=f"vzctl stop {ctid}, set --diskspace again, vzctl start {ctid}",
            )
        entry = mount_on(private / MOUNT_DIR)
        assert entry is not None
        _truncate(image, size)
        _tool(["losetup", "--set-capacity", entry.source], "the disk keeps its old size")
        _tool(["resize2fs", entry.source], "the disk keeps its old size; dmesg says why")
        return
    held_elsewhere(ctid, private, "resizing")
    _tool(["e2fsck", "-f", "-p", str(image)], f"repair it by hand: e2fsck -f {image}", ok=(0, 1))
    _truncate(image, size)
    _tool(["resize2fs", str(image), f"{size // 1024}K"], "the disk keeps its old size")


def _tool(argv: list[str], hint: str, ok: tuple[int, ...] = (0,)) -> None:
    """Run an e2fsprogs or util-linux tool on a disk: what it says is shown only when it fails
    (``ok``: the exit codes that are success; e2fsck's 1 is "errors corrected")."""
    proc = run.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if proc.returncode not in ok:
        raise VzError(run.failure_message(argv, proc.returncode, proc.stdout), ExitCode.DQ_SET,
                      hint=hint)  # fmt: skip


def _truncate(image: Path, size: int) -> None:
    try:
        os.truncate(image, size)
    except OSError as e:
        raise VzError(
            f"cannot grow {image}: {e.strerror}",
            ExitCode.FS_NO_DISK_SPACE if e.errno == errno.ENOSPC else ExitCode.DQ_SET,
        ) from None
