"""A VPS's resource limits: OpenVZ's parameters and value syntax, enforced with cgroups through
runc (the OCI config at start, ``runc update`` on a running VPS), in the VPS's own cgroup, which
its root cannot raise (docs/resources.md).

    --ram 512M       PHYSPAGES="0:512M"   memory limit (cgroup memory.limit / memory.max)
    --swap 256M      SWAPPAGES="0:256M"   swap beyond it (memory+swap = ram + swap)
    --cpuunits 1000  CPUUNITS="1000"      relative CPU weight (1000: an ordinary VPS)
    --cpulimit 25    CPULIMIT="25"        percent of one CPU (150: one and a half)
    --cpus 2         CPUS="2"             at most this many CPUs' worth of time
    --cpumask 0-1    CPUMASK="0-1"        which CPUs it runs on
    --numproc 64     NUMPROC="64:64"      tasks (processes and threads)

Sizes take K, M, G, T suffixes (powers of 1024), a plain number in PHYSPAGES and SWAPPAGES is
4 KiB pages as in OpenVZ, and ``unlimited`` lifts a limit. Values are kept in CTID.conf as
OpenVZ writes them; every value is checked before anything changes (exit 21 naming the option).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vzpkg import checks
from vzpkg.errors import ExitCode, VzError

PAGE = 4096
UNLIMITED = "unlimited"
CPU_PERIOD = 100_000  # microseconds: the CFS period every limit is expressed in
CPUUNITS_DEFAULT = 1000
_SIZE = re.compile(r"([0-9]{1,19})([KMGTP]?)", re.IGNORECASE)
_MASK = re.compile(r"[0-9]{1,4}(-[0-9]{1,4})?(,[0-9]{1,4}(-[0-9]{1,4})?)*")
_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50}
# The option of each key, for messages.
OPTION_OF_KEY = {
    "PHYSPAGES": "--ram",
    "SWAPPAGES": "--swap",
    "CPUUNITS": "--cpuunits",
    "CPULIMIT": "--cpulimit",
    "CPUS": "--cpus",
    "CPUMASK": "--cpumask",
    "NUMPROC": "--numproc",
    "DEVICES": "--devices",
    "DEVNODES": "--devnodes",
}
KEYS = tuple(OPTION_OF_KEY)


def size(value: str, what: str, *, pages: bool = False) -> int | None:
    """Bytes of ``512M``, ``2G``, ``unlimited`` (None); a plain number is bytes, or 4 KiB pages
    with ``pages`` (OpenVZ's PHYSPAGES and SWAPPAGES)."""
    text = value.strip()
    if text.lower() == UNLIMITED:
        return None
    match = _SIZE.fullmatch(text)
    if not match:
        raise checks.bad(what, value, "is not a size", hint="e.g. 512M, 2G or unlimited")
    number, suffix = int(match[1]), match[2].upper()
    amount = number << _SHIFT[suffix] if suffix else number * (PAGE if pages else 1)
    if amount >= 1 << 62:
        return None  # OpenVZ's LONG_MAX: unlimited
    return amount


def show_size(amount: int | None) -> str:
    """The shortest exact form: 512M, 1G, 4096K; ``unlimited``."""
    if amount is None:
        return UNLIMITED
    for suffix in ("T", "G", "M", "K"):
        if amount and amount % (1 << _SHIFT[suffix]) == 0:
            return f"{amount >> _SHIFT[suffix]}{suffix}"
    return str(amount)


def _pair(value: str) -> str:
    """The limit of OpenVZ's ``barrier:limit`` (the barrier is not enforced by cgroups)."""
    return value.partition(":")[2] if ":" in value else value


def whole(value: str, what: str, low: int, high: int) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or not low <= int(text) <= high:
        raise checks.bad(what, value, f"is not a whole number from {low} to {high}")
    return int(text)


@dataclass(frozen=True)
class Device:
    """A host device the VPS may use: ``kind`` b or c, ``minor`` None for all of a major;
    ``path``: the node made in the VPS's /dev (DEVNODES), if any."""

    kind: str
    major: int
    minor: int | None
    access: str  # r, w, rw
    path: str | None = None


_DEVICE = re.compile(r"([bc]):([0-9]{1,4}):([0-9]{1,7}|all):(r|w|rw|none)")
_DEVNODE = re.compile(r"([A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*):(r|w|rw|none)")


def devices(text: str, what: str) -> tuple[Device, ...]:
    """DEVICES / --devices: ``c:10:200:rw b:8:0:r c:136:all:rw``; ``none`` grants nothing."""
    found = []
    for word in text.split():
        match = _DEVICE.fullmatch(word)
        if not match:
            raise checks.bad(what, word, "is not b|c:MAJOR:MINOR|all:r|w|rw|none",
                             hint="e.g. c:10:200:rw")  # fmt: skip
        kind, major, minor, access = match.groups()
        if access != "none":
            found.append(Device(kind, int(major), None if minor == "all" else int(minor), access))
    return tuple(found)


def devnodes(text: str, what: str, dev: str = "/dev") -> tuple[Device, ...]:
    """DEVNODES / --devnodes: ``net/tun:rw``: the host's /dev/net/tun, its node made in the
    VPS's /dev at start and its use granted."""
    import stat

    found = []
    for word in text.split():
        match = _DEVNODE.fullmatch(word)
        if not match or ".." in match[1].split("/"):
            raise checks.bad(what, word, "is not NAME:r|w|rw|none", hint="e.g. net/tun:rw")
        if match[3] == "none":
            continue
        path = os.path.join(dev, match[1])
        try:
            st = os.stat(path)
        except OSError:
            raise checks.bad(what, word, f"names {path}, which this host does not have") from None
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise checks.bad(what, word, f"names {path}, which is not a device")
        kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
        found.append(
            Device(kind, os.major(st.st_rdev), os.minor(st.st_rdev), match[3], "/dev/" + match[1])
        )
    return tuple(found)


@dataclass(frozen=True)
class Limits:
    """What is enforced; None: no limit."""

    ram: int | None = None
    swap: int | None = None  # -1: unlimited
    cpuunits: int | None = None
    cpulimit: int | None = None  # percent of one CPU
    cpus: int | None = None
    cpumask: str | None = None
    numproc: int | None = None
    devices: tuple[Device, ...] = ()  # host devices granted (DEVICES, DEVNODES)

    @property
    def cpu_quota(self) -> int | None:
        """CFS quota per CPU_PERIOD: the smaller of CPULIMIT and CPUS."""
        quotas = [q for q in (self.cpulimit, None if self.cpus is None else self.cpus * 100) if q]
        return min(quotas) * CPU_PERIOD // 100 if quotas else None

    @property
    def cpu_shares(self) -> int | None:
        """cpu.shares; None for no CPUUNITS or the default weight, which needs no setting."""
        if self.cpuunits is None or self.cpuunits == CPUUNITS_DEFAULT:
            return None
        return max(2, min(262144, self.cpuunits * 1024 // CPUUNITS_DEFAULT))

    @property
    def memory_swap(self) -> int | None:
        """memory+swap: ram + swap; with ram and no SWAPPAGES, no swap at all (vSwap's
        default), so that the limit is what the VPS gets; -1: swap unlimited."""
        if self.ram is None:
            return None
        if self.swap == -1:
            return -1
        return self.ram + (self.swap or 0)


def parse(values: Mapping[str, str], *, from_options: bool = False) -> Limits:
    """The limits of CTID.conf's keys (or of the options, named in messages when
    ``from_options``); VzError (exit 21) naming the first bad one."""

    def name(key: str) -> str:
        return OPTION_OF_KEY[key] if from_options else key

    found: dict[str, Any] = {}
    if "PHYSPAGES" in values:
        found["ram"] = size(_pair(values["PHYSPAGES"]), name("PHYSPAGES"), pages=True)
        if found["ram"] is not None and found["ram"] < 16 << 20:
            raise checks.bad(name("PHYSPAGES"), values["PHYSPAGES"], "is below 16M")
    if "SWAPPAGES" in values:
        swap = size(_pair(values["SWAPPAGES"]), name("SWAPPAGES"), pages=True)
        found["swap"] = -1 if swap is None else swap
    if "CPUUNITS" in values:
        found["cpuunits"] = whole(values["CPUUNITS"], name("CPUUNITS"), 8, 500000)
    if "CPULIMIT" in values:
        text = values["CPULIMIT"].strip().removesuffix("%")
        found["cpulimit"] = whole(text, name("CPULIMIT"), 0, 100 * 4096) or None
    if "CPUS" in values:
        text = values["CPUS"].strip()
        # OpenVZ writes CPUS="0" for no limit; on the command line 0 CPUs is a mistake.
        unset = ("", UNLIMITED) if from_options else ("", "0", UNLIMITED)
        found["cpus"] = None if text in unset else whole(text, name("CPUS"), 1, 4096)
    if "CPUMASK" in values:
        text = values["CPUMASK"].strip()
        if text not in ("", "all") and not _MASK.fullmatch(text):
            raise checks.bad(name("CPUMASK"), text, "is not a CPU list", hint="e.g. 0-1,3 or all")
        found["cpumask"] = None if text in ("", "all") else text
    if "NUMPROC" in values:
        text = _pair(values["NUMPROC"]).strip()
        found["numproc"] = (
            None if text.lower() == UNLIMITED else whole(text, name("NUMPROC"), 1, 1 << 22)
        )
    granted = devices(values.get("DEVICES", ""), name("DEVICES"))
    nodes = devnodes(values.get("DEVNODES", ""), name("DEVNODES"))
    for key, listed in (("DEVICES", granted), ("DEVNODES", nodes)):
        seen = [(d.kind, d.major, d.minor) for d in listed]
        if len(set(seen)) != len(seen):
            raise checks.bad(name(key), values[key], "names one device twice",
                             hint="give each device once, with the access it gets")  # fmt: skip
    found["devices"] = granted + nodes
    return Limits(**found)


def config_values(options: Mapping[str, str]) -> dict[str, str]:
    """CTID.conf's values for ``--ram 512M`` and the like (keys as in OPTION_OF_KEY), checked
    and canonical: PHYSPAGES="0:512M", NUMPROC="64:64"."""
    limits = parse(options, from_options=True)
    values: dict[str, str] = {}
    for key in options:
        if key == "PHYSPAGES":
            values[key] = f"0:{show_size(limits.ram)}"
        elif key == "SWAPPAGES":
            values[key] = f"0:{show_size(None if limits.swap == -1 else limits.swap)}"
        elif key == "NUMPROC":
            n = UNLIMITED if limits.numproc is None else str(limits.numproc)
            values[key] = f"{n}:{n}"
        elif key == "CPULIMIT":
            values[key] = str(limits.cpulimit or 0)
        elif key == "CPUS":
            values[key] = str(limits.cpus or 0)
        elif key == "CPUMASK":
            values[key] = limits.cpumask or "all"
        elif key in ("DEVICES", "DEVNODES"):
            values[key] = " ".join(options[key].split())
        else:
            values[key] = str(getattr(limits, key.lower()))
    return values


def oci_resources(limits: Limits) -> dict[str, Any]:
    """The OCI config's linux.resources (beside the device rules) for ``limits``."""
    resources: dict[str, Any] = {}
    if limits.ram is not None:
        resources["memory"] = {"limit": limits.ram, "swap": limits.memory_swap}
    cpu: dict[str, Any] = {}
    if limits.cpu_shares is not None:
        cpu["shares"] = limits.cpu_shares
    if limits.cpu_quota is not None:
        cpu["quota"] = limits.cpu_quota
        cpu["period"] = CPU_PERIOD
    if limits.cpumask is not None:
        cpu["cpus"] = limits.cpumask
    if cpu:
        resources["cpu"] = cpu
    if limits.numproc is not None:
        resources["pids"] = {"limit": limits.numproc}
    if limits.devices:
        resources["devices"] = [
            {"allow": True, "type": d.kind, "major": d.major, "access": d.access}
            | ({} if d.minor is None else {"minor": d.minor})
            for d in limits.devices
        ]
    return resources


def device_nodes(limits: Limits) -> list[dict[str, Any]]:
    """The OCI config's linux.devices entries for DEVNODES (runc binds the host's node where a
    user namespace forbids mknod)."""
    return [
        {"path": d.path, "type": d.kind, "major": d.major, "minor": d.minor, "fileMode": 0o660,
         "uid": 0, "gid": 0}
        for d in limits.devices
        if d.path and d.minor is not None
    ]  # fmt: skip


def update_args(limits: Limits) -> list[str]:
    """``runc update`` options that set every one of ``limits`` (lifted ones included)."""
    args = [
        "--memory", str(limits.ram if limits.ram is not None else -1),
        "--memory-swap", str(limits.memory_swap if limits.memory_swap is not None else -1),
        "--cpu-share", str(limits.cpu_shares or 1024),
        "--cpu-period", str(CPU_PERIOD),
        "--cpu-quota", str(limits.cpu_quota if limits.cpu_quota is not None else -1),
        "--pids-limit", str(limits.numproc if limits.numproc is not None else -1),
    ]  # fmt: skip
    args += ["--cpuset-cpus", limits.cpumask or f"0-{(os.cpu_count() or 1) - 1}"]
    return args


# The cgroup v2 controller each limit needs, and the keys that set it.
_CONTROLLERS: tuple[tuple[str, Callable[[Limits], object], str], ...] = (
    ("memory", lambda limits: limits.ram, "PHYSPAGES/SWAPPAGES"),
    ("pids", lambda limits: limits.numproc, "NUMPROC"),
    ("cpu", lambda limits: limits.cpu_shares or limits.cpu_quota, "CPUUNITS/CPULIMIT/CPUS"),
    ("cpuset", lambda limits: limits.cpumask, "CPUMASK"),
)


def check_host(ctid: int, limits: Limits, cgroup_root: str = "/sys/fs/cgroup") -> None:
    """What this host cannot apply, named before anything starts (exit 10): swap limits
    without swap accounting, on a pure cgroup v2 host a controller it does not offer (a v1
    hierarchy may hold it), CPUs that do not exist."""
    offered = os.path.join(cgroup_root, "cgroup.controllers")  # only a pure v2 host has it
    if os.path.exists(offered):
        with open(offered) as f:
            controllers = set(f.read().split())
        for controller, wanted, keys in _CONTROLLERS:
            if controller not in controllers and wanted(limits):
                raise VzError(
                    f"CT {ctid}: {keys} cannot be applied: this host's cgroup v2 hierarchy "
                    f"offers no {controller} controller (it offers: "
                    f"{' '.join(sorted(controllers)) or 'none'})",
                    ExitCode.CONFIG,
                    hint=f"free the {controller} controller from cgroup v1 (boot with "
                    "systemd.unified_cgroup_hierarchy=1), or remove "
                    f"{keys.replace('/', ', ')} from CT {ctid}'s config",
                )
    if limits.ram is not None:
        v1 = os.path.join(cgroup_root, "memory")
        if os.path.isdir(v1) and not os.path.exists(
            os.path.join(v1, "memory.memsw.limit_in_bytes")
        ):
            raise VzError(
                f"CT {ctid}: PHYSPAGES/SWAPPAGES cannot be applied: this host's kernel does not "
                "account swap (memory.memsw.* is missing)",
                ExitCode.CONFIG,
                hint="boot the host with swapaccount=1, or remove PHYSPAGES and SWAPPAGES "
                f"from CT {ctid}'s config",
            )
    if limits.cpumask is not None:
        count = os.cpu_count() or 1
        for part in limits.cpumask.split(","):
            for number in part.split("-"):
                if int(number) >= count:
                    raise VzError(
                        f"CT {ctid}: CPUMASK {limits.cpumask} names CPU {number}, and this "
                        f"host has CPUs 0-{count - 1}",
                        ExitCode.CONFIG,
                        hint=f"vzctl set {ctid} --cpumask all --save",
                    )
