"""Where a VPS lives, and proof that a place is its own.

A VPS owns two places: its private area (VE_PRIVATE) and the mount point of its root (VE_ROOT).
Both come from configuration files an administrator edits by hand, so before anything is made,
mounted, unmounted or removed there, vzpkg checks that the place

- is not a host system directory (``/etc``, ``/usr``, ``/`` ...) nor one of vzpkg's own;
- is not inside, equal to or above another VPS's private area or root (``check_apart``);
- really is this VPS's: a private area carries the CTID it was made for in the extended
  attribute ``trusted.vzpkg.ctid`` (only host root can set ``trusted.*``; it moves with the
  directory), and a root is unmounted only when what is mounted there comes from this VPS's
  private area (``is_own_mount``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vzpkg import fsutil
from vzpkg.ct import disk
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig
from vzpkg.mounts import MountEntry, MountTable, mount_on

log = logging.getLogger("vzpkg")

OWNER_XATTR = "trusted.vzpkg.ctid"
DESTROYING_SUFFIX = ".destroying"  # a private area being removed (see layout.destroy_private)
TMP_SUFFIX = ".tmp"  # a private area being made

# The host's own system: never a VPS's place, nor anything inside them.
SYSTEM_TREES = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/sbin",
    "/sys",
    "/usr",
)
# Below /dev only /dev/shm holds ordinary files (a tmpfs any program may use).
SYSTEM_TREE_EXCEPTIONS = ("/dev/shm",)
# Directories that hold the host's data: never a VPS's place themselves (a directory below
# them is fine: /srv/vz/private/101, /tmp/test/root/101).
SYSTEM_DIRS = (
    "/",
    "/dev/shm",
    "/home",
    "/media",
    "/mnt",
    "/opt",
    "/root",
    "/run",
    "/srv",
    "/tmp",
    "/var",
    "/var/cache",
    "/var/lib",
    "/var/log",
    "/var/tmp",
    "/vz",
    "/vz/private",
    "/vz/root",
)


@dataclass(frozen=True)
class Place:
    """The private area and root mount point of one VPS (as configured, normalised), and the
    first host uid of its user namespace (None: it has none)."""

    ctid: int
    private: Path
    root: Path
    userns_base: int | None = None
    userns_gid: int | None = None


def real(path: Path) -> str:
    """``path`` with symlinks of its existing part resolved: what the kernel would reach."""
    return os.path.realpath(path)


def is_at_or_below(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _relation(mine: str, theirs: str) -> str | None:
    if mine == theirs:
        return "is"
    if is_at_or_below(mine, theirs):
        return "is inside"
    if is_at_or_below(theirs, mine):
        return "contains"
    return None


def vzpkg_dirs(host: HostConfig) -> list[tuple[str, Path]]:
    """vzpkg's own directories, by the key that sets each."""
    dirs = [
        ("CONF_DIR", host.conf_dir),
        ("LOCKDIR", host.lock_dir),
        ("RUN_DIR", host.run_dir),
        ("TREES_DIR", host.trees_dir),
        ("CACHE_DIR", host.cache_dir),
        ("METADATA_DIR", host.metadata_dir),
        ("TEMPLATE", host.template_dir),
    ]
    return dirs


def check_place(host: HostConfig, ctid: int, what: str, path: Path, code: ExitCode) -> None:
    """Refuse ``path`` as a VPS's ``what`` ("private area", "root") when it is a host system
    directory, lies inside one, or overlaps one of vzpkg's own directories."""
    where = real(path)
    for tree in SYSTEM_TREES:
        inside = is_at_or_below(where, tree)
        excepted = any(is_at_or_below(where, e) for e in SYSTEM_TREE_EXCEPTIONS)
        if inside and not excepted:
            raise _misplaced(
                ctid, what, path, f"is inside the host's system directory {tree}", code
            )
    if where in SYSTEM_DIRS:
        raise _misplaced(ctid, what, path, "is a host system directory", code)
    for key, own in vzpkg_dirs(host):
        relation = _relation(where, real(own))
        if relation is not None:
            raise _misplaced(ctid, what, path, f"{relation} vzpkg's {key} {own}", code)


def _misplaced(ctid: int, what: str, path: Path, why: str, code: ExitCode) -> VzError:
    key = "VE_PRIVATE" if what == "private area" else "VE_ROOT"
    return VzError(
        f"CT {ctid}: the {what} {path} {why}; nothing was done",
        code,
        hint=f"give CT {ctid} a {what} of its own ({key}, --{key.removeprefix('VE_').lower()})",
    )


def check_apart(
    ctid: int, private: Path, root: Path, others: Iterable[Place], code: ExitCode
) -> None:
    """Refuse when this VPS's private area and root overlap each other or any place of
    ``others`` (equal, inside or above)."""
    mine = (("private area", private, real(private)), ("root", root, real(root)))
    if _relation(mine[1][2], mine[0][2]) is not None:
        raise VzError(
            f"CT {ctid}: its root {root} and private area {private} overlap",
            code,
            hint="VE_ROOT (where the VPS is mounted) and VE_PRIVATE (its files) must be apart",
        )
    resolve = _Resolver()
    for other in others:
        theirs = (
            ("private area", other.private, resolve(other.private)),
            ("root", other.root, resolve(other.root)),
        )
        for what, path, where in mine:
            for their_what, their_path, their_where in theirs:
                relation = _relation(where, their_where)
                if relation is not None:
                    raise VzError(
                        f"CT {ctid}: the {what} {path} {relation} the {their_what} {their_path} "
                        f"of CT {other.ctid}; nothing was done",
                        code,
                        hint="every VPS needs a private area and a root of its own",
                    )


class _Resolver:
    """``real`` for the many places of other VPSs, which mostly share their parent directory
    (/vz/private/101, /vz/private/102 ...): the parent is resolved once, and a path whose last
    part is no symlink is its resolved parent joined with that part, which is what realpath
    would say (one lstat instead of one per part)."""

    def __init__(self) -> None:
        self._parents: dict[str, str] = {}

    def __call__(self, path: Path) -> str:
        text = os.path.normpath(path)
        parent, name = os.path.split(text)
        if not name or name in (".", ".."):
            return real(path)
        try:
            is_link = stat.S_ISLNK(os.lstat(text).st_mode)
        except FileNotFoundError:
            is_link = False
        except OSError:
            return real(path)
        if is_link:
            return real(path)
        if parent not in self._parents:
            self._parents[parent] = real(Path(parent))
        return os.path.join(self._parents[parent], name)


def places_of_others(host: HostConfig, ctid: int) -> list[Place]:
    """The places of every other VPS that has a CTID.conf. A configuration that does not
    parse (a typo in another key, bytes that are not UTF-8) is read leniently for VE_PRIVATE
    and VE_ROOT alone: one broken file must not hide a VPS's places from the check."""
    return OtherPlaces(host, ctid)()


PLACES_CACHE = "places.json"  # in RUN_DIR: the places read from each CTID.conf, by version


class OtherPlaces:
    """``places_of_others`` for a command that asks more than once (create: before and after
    it takes its places' locks, and the user namespace blocks under the pool's lock). Every
    ask lists CONF_DIR and stats each CTID.conf afresh, so a VPS made, changed or destroyed
    since is seen; a file that is unchanged since it was last read (the same inode, size,
    mtime and ctime) is not read and parsed again (1000 of them take ~100 ms). What was read
    is kept in RUN_DIR (root's alone) for the next command: a missing or damaged copy only
    costs the reading again."""

    def __init__(self, host: HostConfig, ctid: int) -> None:
        self.host = host
        self.ctid = ctid
        self._cache = host.run_dir / PLACES_CACHE
        self._known = _load_places(self._cache)

    def __call__(self) -> list[Place]:
        from vzpkg.ct import conf  # conf needs nothing from here; imported late to stay light

        places = []
        known = {}
        for other in conf.list_ctids(self.host):
            if other == self.ctid:
                if other in self._known:
                    known[other] = self._known[other]  # kept for the next command's asks
                continue
            try:
                st = os.stat(conf.conf_path(self.host, other))
                version = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            except OSError:
                version = None  # gone meanwhile: read as before, which says what it finds
            cached = self._known.get(other)
            if version is not None and cached is not None and cached[0] == version:
                place = cached[1]
            else:
                place = _place_of(self.host, other)  # stat first: a change after it is seen
            if version is not None:
                known[other] = (version, place)
            if place is not None:
                places.append(place)
        if known != self._known:
            self._known = known
            _save_places(self._cache, known)
        return places


_Known = dict[int, tuple[tuple[int, int, int, int], Place | None]]


def _load_places(path: Path) -> _Known:
    try:
        data = json.loads(path.read_bytes())
        known: _Known = {}
        for key, (version, private, root, uid, gid) in data.items():
            numbers = tuple(int(n) for n in version)
            if len(numbers) != 4 or not all(
                isinstance(v, (int, type(None))) and not isinstance(v, bool) for v in (uid, gid)
            ):
                raise ValueError(key)
            place = None
            if private is not None:
                place = Place(int(key), Path(str(private)), Path(str(root)), uid, gid)
            known[int(key)] = ((numbers[0], numbers[1], numbers[2], numbers[3]), place)
        return known
    except (OSError, ValueError, TypeError, AttributeError):
        return {}  # none yet, or damaged: every CTID.conf is read


def _save_places(path: Path, known: _Known) -> None:
    data = {
        str(ctid): [
            list(version),
            *(
                (None, None, None, None)
                if place is None
                else (str(place.private), str(place.root), place.userns_base, place.userns_gid)
            ),
        ]
        for ctid, (version, place) in known.items()
    }
    try:
        if path.parent.is_dir():  # RUN_DIR is made by the commands that need it
            fsutil.atomic_write(path, json.dumps(data).encode(), 0o600)
    except OSError as e:
        log.debug("cannot keep the places read in %s: %s", path, e)


def _place_of(host: HostConfig, other: int) -> Place | None:
    from vzpkg.ct import conf

    try:
        cfg = conf.read_ct_config(host, other)
        ids = cfg.userns
        return Place(
            other,
            conf.private_path(host, other, cfg),
            conf.root_path(host, other, cfg),
            None if ids is None else ids[0],
            None if ids is None else ids[1],
        )
    except VzError:
        return _place_of_broken(host, other)


def blocks_of_others(host: HostConfig, ctid: int, others: OtherPlaces | None = None) -> list[int]:
    """The first host uid and gid of every other VPS's user namespace block, read afresh
    (``others``: the command's ``OtherPlaces``, which reads only what changed)."""
    blocks = []
    for other in (others or OtherPlaces(host, ctid))():
        blocks += [b for b in (other.userns_base, other.userns_gid) if b]
    return blocks


def _place_of_broken(host: HostConfig, ctid: int) -> Place | None:
    from vzpkg.ct import conf
    from vzpkg.hostvalues import parse_values

    try:
        text = conf.conf_path(host, ctid).read_bytes().decode(errors="replace")
    except OSError:
        return None
    values, problems = parse_values(text, "")  # the lines that do parse
    unknown = [p for p in problems if "VE_PRIVATE" in p or "VE_ROOT" in p or "expected KEY" in p]
    if unknown:
        conf_file = conf.conf_path(host, ctid)
        raise VzError(
            f"CT {ctid}'s config {conf_file} cannot be read, so where its private area and root "
            "are is unknown; nothing that could overlap them is done",
            ExitCode.CONFIG,
            hint=f"correct {conf_file} first (vzctl status {ctid} says what is wrong)",
        )
    found = []
    for key, default in (("VE_PRIVATE", host.ve_private), ("VE_ROOT", host.ve_root)):
        path = conf.expand(values.get(key) or default, ctid)
        if not path.startswith("/"):
            return None
        found.append(Path(os.path.normpath(path)))
    log.debug("CT %s: config unreadable; its places read leniently: %s", ctid, found)
    uid, gid = values.get("LOCAL_UID", ""), values.get("LOCAL_GID", "")
    return Place(
        ctid,
        found[0],
        found[1],
        int(uid) if uid.isdigit() and uid != "0" else None,
        int(gid) if gid.isdigit() and gid != "0" else None,
    )


# --- ownership --------------------------------------------------------------------------------


def stamp(private: Path, ctid: int) -> None:
    """Mark directory ``private`` as CT ``ctid``'s private area."""
    try:
        os.setxattr(private, OWNER_XATTR, str(ctid).encode(), follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise VzError(
                f"the filesystem of {private} has no trusted extended attributes, which vzpkg "
                "uses to mark a private area as a VPS's own",
                ExitCode.SYSTEM,
                hint="put VE_PRIVATE on ext4, xfs, btrfs or tmpfs",
            ) from None
        raise


def stamp_of(path: Path) -> int | None:
    """The CTID ``path`` is marked for; None when it carries no (valid) mark."""
    try:
        value = os.getxattr(path, OWNER_XATTR, follow_symlinks=False)
    except OSError:
        return None
    text = value.decode("ascii", errors="replace")
    return int(text) if text.isascii() and text.isdigit() and len(text) < 11 else None


def not_owned(ctid: int, path: Path, what: str, code: ExitCode) -> VzError:
    """The refusal for a private area that cannot be proved CT ``ctid``'s."""
    owner = stamp_of(path)
    if owner is not None:
        why = f"it is marked as CT {owner}'s"
        hint = f"check VE_PRIVATE in CT {ctid}'s config: it names another VPS's private area"
    else:
        why = f"it carries no mark ({OWNER_XATTR}) that vzpkg made it for CT {ctid}"
        hint = (
            f"check VE_PRIVATE in CT {ctid}'s config; if {path} really is its private area "
            f"(made before vzpkg marked them), mark it: setfattr -n {OWNER_XATTR} -v {ctid} {path}"
            " (setfattr is in Debian's attr package)"
        )
    return VzError(f"CT {ctid}: {path} is not provably its private area: {why}; {what}", code, hint)


def check_traversable(ctid: int, run_dir: Path, code: ExitCode) -> None:
    """runc mounts a VPS's root from inside the VPS's user namespace, through its gate below
    ``run_dir`` (layout.gate_path): every directory above RUN_DIR must let others through (x
    for others), or the start fails with a bare EACCES. (RUN_DIR itself is vzpkg's own: the
    start makes it passable.)"""
    for directory in Path(real(run_dir)).parents:
        try:
            mode = directory.stat().st_mode
        except OSError:
            continue
        if not mode & 0o001:
            raise VzError(
                f"CT {ctid}: {directory} (above RUN_DIR {run_dir}, where runc finds the VPS's "
                f"root) cannot be passed through by the VPS's own ids (mode {mode & 0o7777:04o})",
                code,
                hint=f"let others pass (not read): chmod o+x {directory}; or choose a RUN_DIR "
                "whose directories allow it",
            )


def destroying_path(private: Path) -> Path:
    return private.with_name(private.name + DESTROYING_SUFFIX)


def tmp_path(private: Path) -> Path:
    return private.with_name(private.name + TMP_SUFFIX)


# --- mounts -----------------------------------------------------------------------------------


def top_mount(root: Path, table: MountTable | None = None) -> MountEntry | None:
    """What is mounted on ``root`` (the top of a stack of mounts there); None if nothing.
    ``table``: a command's one copy of mountinfo, for a command that asks about many roots."""
    return mount_on(root, table)


def is_own_mount(root: Path, private: Path, entry: MountEntry) -> bool:
    """Whether ``entry`` (mounted on ``root``) shows ``private``: an overlay whose upper layer
    is ``private/upper``, or a bind mount of ``private`` itself (or the same on the private
    area's disk, vzpkg.ct.disk)."""
    if entry.fstype == "overlay":
        return entry.option("upperdir") == real(disk.data_dir(private) / "upper")
    try:
        shown, mine = os.stat(root), os.stat(disk.plain_root(private), follow_symlinks=False)
    except OSError:
        return False
    return (shown.st_dev, shown.st_ino) == (mine.st_dev, mine.st_ino)


def foreign_mount(
    ctid: int, root: Path, private: Path, entry: MountEntry, code: ExitCode
) -> VzError:
    """The refusal for a root mount point that shows something else than CT ``ctid``'s files."""
    return VzError(
        f"CT {ctid}: {root} is mounted, but not from its private area {private} "
        f"({entry.fstype} from {entry.source}{' ' + entry.fs_root if entry.fs_root != '/' else ''}"
        "); nothing was done",
        code,
        hint=f"another VPS or the host uses {root}: give CT {ctid} a VE_ROOT of its own",
    )
