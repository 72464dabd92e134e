"""What a running VPS uses, read from its cgroups (v1 or v2) as OpenVZ's beancounters showed it:
held, maxheld, barrier, limit and failcnt of numproc, physpages, swappages and oomguarpages
(whose failcnt counts OOM kills). Memory is in 4 KiB pages, as in /proc/user_beancounters;
an unlimited value is OpenVZ's LONG_MAX. Read-only: nothing here writes a cgroup file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

PAGE = 4096
LONG_MAX = 9223372036854775807  # OpenVZ's "unlimited"
RESOURCES = ("numproc", "physpages", "swappages", "oomguarpages")


@dataclass(frozen=True)
class Counter:
    held: int | None = None
    maxheld: int | None = None
    barrier: int | None = None
    limit: int | None = None
    failcnt: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return {
            "held": self.held,
            "maxheld": self.maxheld,
            "barrier": self.barrier,
            "limit": self.limit,
            "failcnt": self.failcnt,
        }


def _number(directory: str | None, name: str) -> int | None:
    """A cgroup file's number; ``max`` (and v1's near-2^63 "no limit") is LONG_MAX."""
    if not directory:
        return None
    try:
        with open(os.path.join(directory, name), "rb") as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == b"max":
        return LONG_MAX
    try:
        value = int(text)
    except ValueError:
        return None
    return LONG_MAX if value >= 1 << 62 else value


def _keyed(directory: str | None, name: str, key: str) -> int | None:
    """The value of ``key`` in a flat-keyed file (pids.events, memory.events, ...)."""
    if not directory:
        return None
    try:
        with open(os.path.join(directory, name), "rb") as f:
            for line in f:
                words = line.split()
                if len(words) == 2 and words[0] == key.encode():
                    return int(words[1])
    except (OSError, ValueError):
        return None
    return None


def _pages(value: int | None) -> int | None:
    if value is None or value == LONG_MAX:
        return value
    return value // PAGE


def _minus(a: int | None, b: int | None) -> int | None:
    if a is None or b is None or a == LONG_MAX:
        return a
    return max(0, a - b)


def counters(paths: Mapping[str, str]) -> dict[str, Counter]:
    """The beancounters of a VPS whose cgroup directories are ``paths`` (runc's
    cgroup_paths: controller -> directory, ``""`` the v2 one)."""
    if "" in paths and "memory" not in paths:
        return _counters_v2(paths[""])
    pids, memory = paths.get("pids"), paths.get("memory")
    numproc_limit = _number(pids, "pids.max")
    mem_limit = _pages(_number(memory, "memory.limit_in_bytes"))
    memsw_limit = _pages(_number(memory, "memory.memsw.limit_in_bytes"))
    usage = _number(memory, "memory.usage_in_bytes")
    return {
        "numproc": Counter(
            _number(pids, "pids.current"),
            _number(pids, "pids.peak"),
            numproc_limit,
            numproc_limit,
            _keyed(pids, "pids.events", "max"),
        ),
        "physpages": Counter(
            _pages(usage),
            _pages(_number(memory, "memory.max_usage_in_bytes")),
            0,
            mem_limit,
            _number(memory, "memory.failcnt"),
        ),
        "swappages": Counter(
            _pages(_minus(_number(memory, "memory.memsw.usage_in_bytes"), usage)),
            None,
            0,
            _minus(memsw_limit, mem_limit),
            _number(memory, "memory.memsw.failcnt"),
        ),
        "oomguarpages": Counter(
            _pages(usage), None, 0, LONG_MAX, _keyed(memory, "memory.oom_control", "oom_kill")
        ),
    }


def _counters_v2(group: str) -> dict[str, Counter]:
    numproc_limit = _number(group, "pids.max")
    current = _number(group, "memory.current")
    return {
        "numproc": Counter(
            _number(group, "pids.current"),
            _number(group, "pids.peak"),
            numproc_limit,
            numproc_limit,
            _keyed(group, "pids.events", "max"),
        ),
        "physpages": Counter(
            _pages(current),
            _pages(_number(group, "memory.peak")),
            0,
            _pages(_number(group, "memory.max")),
            _keyed(group, "memory.events", "max"),
        ),
        "swappages": Counter(
            _pages(_number(group, "memory.swap.current")),
            _pages(_number(group, "memory.swap.peak")),
            0,
            _pages(_number(group, "memory.swap.max")),
            _keyed(group, "memory.swap.events", "max"),
        ),
        "oomguarpages": Counter(
            _pages(current), None, 0, LONG_MAX, _keyed(group, "memory.events", "oom_kill")
        ),
    }


def table(ctid: int, found: Mapping[str, Counter]) -> str:
    """/proc/user_beancounters' layout for one VPS."""
    lines = []
    for index, name in enumerate(RESOURCES):
        counter = found.get(name, Counter())
        cells = [_cell(v) for v in counter.as_dict().values()]
        head = f"{ctid}:" if index == 0 else ""
        lines.append(f"{head:>11}  {name:<12}" + "".join(f"{c:>21}" for c in cells))
    return "\n".join(lines)


def header() -> str:
    return f"{'uid':>11}  {'resource':<12}" + "".join(
        f"{h:>21}" for h in ("held", "maxheld", "barrier", "limit", "failcnt")
    )


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)
