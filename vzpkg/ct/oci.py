"""The OCI bundle of a VPS: runtime-spec ``config.json`` as data.

``build_config`` is pure: everything it needs, including what it knows of the host (which
capabilities the kernel has and this process may hand on, how far RLIMIT_NOFILE may be raised),
comes in through ``BundleSpec``. ``probe_host`` reads those host facts; callers pass them in.

The shape follows LXC's defaults for system containers, not Docker's for application
containers: a VPS keeps almost every capability (it runs sshd, mounts tmpfs, configures its own
network namespace), and is kept away from the host by namespaces, the device cgroup, masked
``/proc`` paths, the five capabilities LXC drops and LXC's small seccomp deny list.
"""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

OCI_VERSION = "1.0.2"

# Capability numbers, as in linux/capability.h. Index = capability number.
CAP_NAMES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
CAP_SYS_RESOURCE = CAP_NAMES.index("CAP_SYS_RESOURCE")

# LXC's default drop list for system containers (lxc.cap.drop in common.conf).
DROPPED_CAPS = frozenset(
    {"CAP_MAC_ADMIN", "CAP_MAC_OVERRIDE", "CAP_SYS_TIME", "CAP_SYS_MODULE", "CAP_SYS_RAWIO"}
)

# runc's default spec, plus /proc/sysrq-trigger read-only (LXC's proc:mixed does the same).
MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
)
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

NOFILE = 1048576
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TINI_PATH = "/.vzpkg/tini"  # where the host's tini-static is bound, read-only

# (path, major, minor): created by runc in the fresh /dev tmpfs. /dev/ptmx (a symlink to
# pts/ptmx), /dev/fd, /dev/std* and, with a terminal, /dev/console are made by runc itself.
DEVICES: tuple[tuple[str, int, int], ...] = (
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
)
# Extra character devices the device cgroup lets through: console, ptmx, every pts.
_ALLOWED_CHAR_RULES: tuple[tuple[int, int | None], ...] = ((5, 1), (5, 2), (136, None))

# LXC's default seccomp policy (common.seccomp): with CAP_DAC_READ_SEARCH kept,
# open_by_handle_at would let the VPS open any host file by handle ("shocker").
_SECCOMP_DENIED = (
    "kexec_load",
    "kexec_file_load",
    "open_by_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
)
_MNT_FORCE = 1
_MS_REMOUNT, _MS_BIND = 32, 4096
_S_IFMT, _S_IFBLK = 0o170000, 0o060000
_SECCOMP_ARCHES = ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")

_CTID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]*$")


@dataclass(frozen=True)
class HostLimits:
    """What the host lets a container have; read by ``probe_host``.

    ``cap_bound`` is a bit mask (bit n = capability n): runc cannot give a container a
    capability its own bounding set lacks (capset fails with EPERM), so the container's set is
    the kernel's capabilities, minus the drop list, within this mask.
    """

    cap_last: int = len(CAP_NAMES) - 1
    cap_bound: int = (1 << len(CAP_NAMES)) - 1
    nofile_hard: int = NOFILE

    def nofile_limit(self, wanted: int = NOFILE) -> int:
        """RLIMIT_NOFILE for init: without CAP_SYS_RESOURCE it cannot go above our hard limit."""
        if self.cap_bound & (1 << CAP_SYS_RESOURCE):
            return wanted
        return min(wanted, self.nofile_hard)


def _read_cap_bound(status: str) -> int:
    for line in status.splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16)
    raise ValueError("no CapBnd line in /proc/self/status")


def probe_host(proc: Path = Path("/proc")) -> HostLimits:
    """This host's limits: the kernel's last capability, our bounding set, NOFILE's hard limit."""
    cap_last = int((proc / "sys/kernel/cap_last_cap").read_text())
    cap_bound = _read_cap_bound((proc / "self/status").read_text())
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return HostLimits(
        cap_last=cap_last,
        cap_bound=cap_bound,
        nofile_hard=NOFILE if hard == resource.RLIM_INFINITY else hard,
    )


@dataclass(frozen=True)
class BindMount:
    source: Path
    destination: str
    readonly: bool = True


@dataclass(frozen=True)
class IdMapping:
    """One line of a uid_map / gid_map: ``size`` ids from ``container_id`` onto ``host_id``."""

    container_id: int
    host_id: int
    size: int


@dataclass(frozen=True)
class BundleSpec:
    """Everything ``config.json`` depends on."""

    ctid: str
    root: Path
    hostname: str
    init_argv: Sequence[str]
    env: Sequence[tuple[str, str]] = ()
    binds: Sequence[BindMount] = ()
    terminal: bool = False
    cgroup_parent: str = "vzpkg"
    uid_mappings: Sequence[IdMapping] = ()
    gid_mappings: Sequence[IdMapping] = ()
    host: HostLimits = field(default_factory=HostLimits)
    resources: Mapping[str, Any] = field(default_factory=dict)  # linux.resources: the limits
    nodes: Sequence[Mapping[str, Any]] = ()  # linux.devices beyond the standard ones

    def __post_init__(self) -> None:
        problems = []
        if not _CTID.match(self.ctid):
            problems.append(f"CTID {self.ctid!r} is not a valid container name")
        if not self.root.is_absolute():
            problems.append(f"root {self.root} is not an absolute path")
        if not self.init_argv:
            problems.append("init_argv is empty")
        if not self.hostname or "/" in self.hostname or len(self.hostname) > 64:
            problems.append(f"hostname {self.hostname!r} is not valid")
        for bind in self.binds:
            dest = PurePosixPath(bind.destination)
            if not dest.is_absolute() or ".." in dest.parts:
                problems.append(f"bind destination {bind.destination!r} is not a clean path")
            if not bind.source.is_absolute():
                problems.append(f"bind source {bind.source} is not an absolute path")
        if bool(self.uid_mappings) != bool(self.gid_mappings):
            problems.append("uid_mappings and gid_mappings must be given together")
        parent = PurePosixPath(self.cgroup_parent)
        if parent.is_absolute() or ".." in parent.parts or not parent.parts:
            problems.append(f"cgroup parent {self.cgroup_parent!r} is not a relative path")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def cgroups_path(self) -> str:
        # runc 1.1's cgroupfs driver takes an absolute path below each hierarchy's root
        # (a relative one would land below runc's own cgroup).
        return f"/{self.cgroup_parent}/{self.ctid}"

    @property
    def uses_user_namespace(self) -> bool:
        return bool(self.uid_mappings)


def capabilities(host: HostLimits) -> list[str]:
    """Every capability the kernel knows and we hold, minus LXC's drop list, in number order."""
    last = min(host.cap_last, len(CAP_NAMES) - 1)
    return [
        name
        for number, name in enumerate(CAP_NAMES[: last + 1])
        if name not in DROPPED_CAPS and host.cap_bound & (1 << number)
    ]


def _mounts(spec: BundleSpec) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            # With a user namespace, files decide: the VPS writes only what is delegated to it
            # (its own cgroup directories for systemd, never a limit); without, read-only.
            "options": ["nosuid", "noexec", "nodev", "relatime"]
            + ([] if spec.uses_user_namespace else ["ro"]),
        },
    ]
    for bind in spec.binds:
        options = ["rbind", "nosuid", "nodev"]
        if bind.readonly:
            options.append("ro")
        mounts.append(
            {
                "destination": bind.destination,
                "type": "bind",
                "source": os.fspath(bind.source),
                "options": options,
            }
        )
    return mounts


def _device_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    for _path, major, minor in DEVICES:
        rules.append({"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"})
    for major, wildcard_minor in _ALLOWED_CHAR_RULES:
        rule: dict[str, Any] = {"allow": True, "type": "c", "major": major, "access": "rwm"}
        if wildcard_minor is not None:
            rule["minor"] = wildcard_minor
        rules.append(rule)
    return rules


def _masked_eq(index: int, mask: int, value: int) -> dict[str, Any]:
    return {"index": index, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}


def _privileged_rules() -> list[dict[str, Any]]:
    """What a VPS without a user namespace is denied besides (it holds CAP_SYS_ADMIN and
    CAP_MKNOD over the host's objects): remounting a superblock (a plain VPS's ``mount -o
    remount,ro /`` would make the host's filesystem read-only, and sysvinit's halt does it),
    reconfiguring one through the new mount API, making block device nodes, and the kernel
    keyrings."""
    eperm = {"action": "SCMP_ACT_ERRNO", "errnoRet": 1}
    return [
        # mount(source, target, type, flags, data): MS_REMOUNT without MS_BIND changes the
        # superblock; with MS_BIND only this mount's flags (allowed).
        {"names": ["mount"], **eperm, "args": [_masked_eq(3, _MS_REMOUNT | _MS_BIND, _MS_REMOUNT)]},
        {"names": ["fspick"], **eperm},
        {"names": ["mknod"], **eperm, "args": [_masked_eq(1, _S_IFMT, _S_IFBLK)]},
        {"names": ["mknodat"], **eperm, "args": [_masked_eq(2, _S_IFMT, _S_IFBLK)]},
        # Its root is host uid 0: root's user keyring and every key of uid 0 would be its
        # own. No keyrings at all, as LXC's default policy (ENOSYS: "no keyring support").
        {"names": ["keyctl", "add_key", "request_key"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
    ]


def _seccomp(privileged: bool = False) -> dict[str, Any]:
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": list(_SECCOMP_ARCHES),
        "syscalls": [
            *(_privileged_rules() if privileged else []),
            {"names": list(_SECCOMP_DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {
                # LXC's reject_force_umount: umount2(..., MNT_FORCE) fails with EACCES.
                "names": ["umount2"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 13,
                "args": [
                    {
                        "index": 1,
                        "value": _MNT_FORCE,
                        "valueTwo": _MNT_FORCE,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
            },
        ],
    }


def _id_mappings(mappings: Sequence[IdMapping]) -> list[dict[str, int]]:
    return [{"containerID": m.container_id, "hostID": m.host_id, "size": m.size} for m in mappings]


def build_config(spec: BundleSpec) -> dict[str, Any]:
    """The runtime-spec config.json of a VPS, as a dict ready for ``json.dumps``."""
    caps = capabilities(spec.host)
    env = {"PATH": DEFAULT_PATH, "TERM": "xterm", "container": "vzpkg"}
    env.update(dict(spec.env))
    nofile = spec.host.nofile_limit()
    granted = list(spec.resources.get("devices", []))  # after the deny-all rule
    extra_nodes = list(spec.nodes)
    namespaces: list[dict[str, str]] = [
        {"type": "pid"},
        {"type": "mount"},
        {"type": "uts"},
        {"type": "ipc"},
        {"type": "network"},  # fresh and empty (only lo) until networking configures it
        {"type": "cgroup"},
    ]
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "cgroupsPath": spec.cgroups_path,
        "resources": {**spec.resources, "devices": _device_rules() + granted},
        "devices": extra_nodes
        + [
            {
                "path": path,
                "type": "c",
                "major": major,
                "minor": minor,
                "fileMode": 0o666,
                "uid": 0,
                "gid": 0,
            }
            for path, major, minor in DEVICES
        ],
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
        "seccomp": _seccomp(privileged=not spec.uses_user_namespace),
        # Host mounts below the root still reach the VPS; the VPS's own never reach the host.
        "rootfsPropagation": "rslave",
    }
    if spec.uses_user_namespace:
        namespaces.append({"type": "user"})
        linux["uidMappings"] = _id_mappings(spec.uid_mappings)
        linux["gidMappings"] = _id_mappings(spec.gid_mappings)
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": spec.terminal,
            "user": {"uid": 0, "gid": 0},
            "args": list(spec.init_argv),
            "env": [f"{key}={value}" for key, value in env.items()],
            "cwd": "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                "inheritable": [],
                "ambient": [],
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            # A VPS has setuid binaries (su, passwd, ping) that must keep working.
            "noNewPrivileges": False,
        },
        "root": {"path": os.fspath(spec.root), "readonly": False},
        "hostname": spec.hostname,
        "mounts": _mounts(spec),
        "linux": linux,
    }


def tini_bind(tini: Path) -> BindMount:
    """The host's static tini, bound read-only where a template without an init finds it."""
    return BindMount(source=tini, destination=TINI_PATH, readonly=True)
