#!/usr/bin/env python3
"""Benchmark: density. N idle VPSs of debian-12-x86_64-minimal at once, and the same for LXC:
host memory per idle VPS, create and start time per VPS and how both grow with N.

    sudo .venv/bin/python bench/density.py [--counts 100,300,1000] [--lxc | --no-lxc]
        [--lxc-kinds unprivileged,privileged] [--limits[='--numproc 512 --ram 256M']]
        [--ctid-base 80000] [--userns-pool BASE:SIZE] [--cache-from DIR] [--build-cache]

Each runtime grows one set of containers to each count in turn (100, then 200 more, then 700
more; one container at a time: create all of a step, then start all of it), measures them at
every count, and at the end stops and destroys them all, one at a time, timing each command:
  vzpkg    vzctl create CTID --ostemplate debian-12-x86_64-minimal (the defaults: overlay
           layout, a user namespace, the basic sample's limits), vzctl start, vzctl
           stop, vzctl destroy. An anchor VPS (--ctid-base, never started) keeps the shared
           template tree; the VPSs are --ctid-base + 1 on. With --limits, a second pass whose
           VPSs get `vzctl set CTID <those options> --save` before their start.
  lxc      lxc-copy -s -B overlay (snapshot clones of a base container), lxc-start -d,
           lxc-stop, lxc-destroy; unprivileged (lxc.idmap onto one block, root-run, as
           bench/runtime.py does it: what a vzpkg VPS with its user namespace compares with)
           and, with --lxc-kinds, privileged; lxc.net.0.type = empty.
Every VPS/container runs the same init: the host's tini-static keeping a shell loop alive (the
minimal template has no init of its own). No VPS has a network: nothing touches any network
namespace but the containers' own new, empty ones. No host sysctl or limit is changed.

At every count: the PSS of the containers' processes plus their monitors (LXC keeps one per
container, vzpkg none) and the change of the memory the host holds (anon, shmem, unreclaimable
slab, kernel stacks, page tables, percpu: bench/runtime.py's held_memory_kb) since the pass
began, each per container (and, after the teardown, how much of it came back); the entries
the host's mount table gained; `vzlist -a` (vzpkg) or `lxc-ls -f` (LXC), timed once. Start
time "at N" is the median of the last 50 starts before N were running (what one more start
costs there); its growth is also fitted over all starts (ms per 100 running).

Goals (issue 11): at most 1.0 MiB of host memory per idle VPS at the largest count, judged on
both figures (PSS of processes + monitors; held, which counts the kernel's objects: cgroups,
mounts, namespaces, but moves with whatever else the host does meanwhile); start time per VPS
flat as N grows (at the largest count at most 1.25 x what it is at the smallest); every VPS
stopped and destroyed cleanly afterwards (every stop and destroy exits 0 and nothing of the
VPSs is left: runc state, mounts, cgroups, processes, private areas, bundles, configs other
than CTID.conf.destroyed).

As bench/runtime.py and bench/network.py (whose runners it uses): one cache (a verified copy of
the checkout's caches/ one, or one built with vzpkgcache) under a temp dir, a host config of
its own (VZPKG_CONF: its own CONF_DIR, RUN_DIR with runc's own --root, LOCKDIR, trees, private
areas, and so its own cgroup parent), CTIDs from --ctid-base on, user namespace blocks from
--userns-pool (it must lie inside root's range in /etc/subuid and /etc/subgid: the bench
refuses a pool vzctl would have to add there; its last block is LXC's unprivileged
containers'), LXC's own lxcpath (-P). LXC must be installed (bench/runtime.py installs it).
Everything is stopped, destroyed, unmounted and removed at the end, also on failure or Ctrl-C
(or SIGTERM to the bench): the command running then finishes by itself (never killed half
way), and the run stops after it. The default run (vzpkg and unprivileged LXC to 1000) took 24
minutes on 2 cores shared with a test run, 21 of them vzpkg's: its commands slow down as VPSs
(and their host mounts) add up.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import network as nt  # noqa: E402  (bench/network.py: ^C handling, init readiness, cleanup)
import runtime as rt  # noqa: E402  (bench/runtime.py: runners, memory, LXC, cleanup)

from vzpkg.cache.archive import unpack_archive  # noqa: E402
from vzpkg.ct.common import cgroup_parent  # noqa: E402
from vzpkg.ct.guest import detect_init  # noqa: E402
from vzpkg.ct.ids import container_id  # noqa: E402
from vzpkg.ct.runcargv import state_root  # noqa: E402
from vzpkg.errors import VzError  # noqa: E402

TEMPLATE = rt.TEMPLATE
CTID_BASE = 80000  # the anchor; the VPSs are base + 1 on (far from the tests' and benches')
# User namespace blocks of its own: 1024 of them, apart from the host's VPSs', the tests'
# (1879048192 on), bench/runtime.py's and bench/network.py's; the last is LXC's.
POOL_BASE = (1 << 30) + (1 << 28) + (1 << 27) + (1 << 26)  # 1543503872
POOL_SIZE = 1 << 26
BLOCK = rt.BLOCK
COUNTS = (100, 300, 1000)
LXC_KINDS = ("unprivileged", "privileged")
LXC_DEFAULT = ("unprivileged",)  # the kind a vzpkg VPS compares with (a user namespace)
LIMITS = "--numproc 512 --ram 256M"  # --limits without a value
RAW_ID = "vzbench-dens-raw"  # runc by hand (its own cgroup /RAW_ID, not runtime.py's)
RAW_RUNS = 3  # runc run -d by hand at every count
TAIL = 50  # the starts before N whose median is the start time at N
MIB = rt.MIB
SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))

GOAL_MEMORY_MIB = 1.0  # per idle VPS: PSS (its processes and any monitor), and held
GOAL_FLAT_RATIO = 1.25  # start time at the largest count / at the smallest

log = rt.log
BenchError = rt.BenchError


# --- the runtimes, one container at a time -----------------------------------------------


class Runtime:
    """One kind of container, grown one at a time; ``i`` is the container's index (0 on)."""

    name = ""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def create(self, i: int) -> float:
        raise NotImplementedError

    def prepare(self, i: int) -> float | None:
        """What goes between create and start (vzctl set); its time, or None when nothing."""
        return None

    def start(self, i: int) -> float:
        raise NotImplementedError

    def init_pid(self, i: int) -> int:
        raise NotImplementedError

    def init_uid_ok(self, uid: int) -> bool:
        raise NotImplementedError

    def stop(self, i: int) -> float:
        raise NotImplementedError

    def destroy(self, i: int) -> float:
        raise NotImplementedError

    def listing(self) -> float:
        """A listing of every container, as an admin would ask for it; its time."""
        raise NotImplementedError

    def leftovers(self, count: int) -> list[str]:
        """What is left of containers 0..count-1 after their stop and destroy."""
        raise NotImplementedError


class DensityVzpkg(nt.NetVzpkg):
    """bench/runtime.py's vzctl runner; its cleanup stops only the VPSs that run (runc has
    state for them), and waits out a vzctl that still holds a VPS's lock (network.py's)."""

    def runc_state(self, ctid: int) -> Path:
        return Path(state_root(self.run_dir)) / container_id(ctid) / "state.json"

    def cleanup(self) -> None:
        for ctid in sorted(self.made):
            if self.runc_state(ctid).exists():
                rt.run([self.vzctl, "-q", "stop", "--fast", str(ctid)], self.env, check=False)
        super().cleanup()  # stop --fast (quick for a stopped VPS), destroy, runc leftovers


class VzpkgRuntime(Runtime):
    def __init__(
        self, vzpkg: DensityVzpkg, ctid_base: int, pool: tuple[int, int], limits: list[str]
    ) -> None:
        super().__init__()
        self.vzpkg = vzpkg
        self.ctid_base = ctid_base
        self.pool = pool
        self.limits = limits
        self.name = "vzpkg" + (f", {shlex.join(limits)}" if limits else "")

    def ctid(self, i: int) -> int:
        return self.ctid_base + 1 + i

    def create(self, i: int) -> float:
        ctid = self.ctid(i)
        self.vzpkg.made.add(ctid)
        return self.vzpkg.ctl("create", str(ctid), "--ostemplate", TEMPLATE)

    def prepare(self, i: int) -> float | None:
        if not self.limits:
            return None
        return self.vzpkg.ctl("set", str(self.ctid(i)), *self.limits, "--save")

    def start(self, i: int) -> float:
        return self.vzpkg.ctl("start", str(self.ctid(i)))

    def init_pid(self, i: int) -> int:
        """From runc's state file (a runc state per VPS would cost 15 ms each)."""
        state = json.loads(self.vzpkg.runc_state(self.ctid(i)).read_text())
        return int(state["init_process_pid"])

    def init_uid_ok(self, uid: int) -> bool:
        return self.pool[0] <= uid < self.pool[0] + self.pool[1]

    def stop(self, i: int) -> float:
        return self.vzpkg.ctl("stop", str(self.ctid(i)))

    def destroy(self, i: int) -> float:
        return self.vzpkg.destroy(self.ctid(i))

    def listing(self) -> float:
        return rt.timed([str(rt.BIN / "vzlist"), "-a"], self.vzpkg.env)

    def leftovers(self, count: int) -> list[str]:
        vz, host = self.vzpkg, self.vzpkg.host()
        ctids = {self.ctid(i) for i in range(count)}
        problems = []
        left = sorted(c for c in ctids if vz.runc_state(c).parent.exists())
        if left:
            problems.append(f"runc state of {len(left)} VPSs, first {left[:5]}")
        parent = cgroup_parent(host)
        for hierarchy in sorted(Path("/sys/fs/cgroup").iterdir()):
            with contextlib.suppress(OSError):
                groups = [p.name for p in (hierarchy / parent).iterdir() if p.is_dir()]
                problems.append(f"cgroup {hierarchy / parent} left, with {len(groups)} groups")
        mounts = rt.mounts_below(vz.base)
        if mounts:
            problems.append(f"{len(mounts)} mounts below {vz.base}, first {mounts[:3]}")
        for what, top in (
            ("private areas", vz.base / "private"),
            ("mount points", vz.base / "root"),
            ("bundles or render caches", vz.run_dir / "ct"),
        ):
            with contextlib.suppress(FileNotFoundError):
                names = sorted(n for n in os.listdir(top) if n.split(".")[0].isdigit())
                names = [n for n in names if int(n.split(".")[0]) in ctids]
                if names:
                    problems.append(f"{what} left in {top}: {len(names)}, first {names[:5]}")
        with contextlib.suppress(FileNotFoundError):
            confs = [
                n for n in os.listdir(vz.base / "conf")
                if n.endswith(".conf") and n.removesuffix(".conf").isdigit()
                and int(n.removesuffix(".conf")) in ctids
            ]  # fmt: skip
            if confs:
                problems.append(f"{len(confs)} CTID.conf files not destroyed, first {confs[:5]}")
        procs = self.pool_processes()
        if procs:
            table = rt.process_table()
            shown = [
                f"{pid} {process_state(pid)} {table.get(pid, (0, '?'))[1]}, parent "
                f"{table.get(pid, (0, '?'))[0]}"
                for pid in procs
            ]
            waited = time.perf_counter()
            for _ in range(50):  # given up to 10 s to go (a zombie waits for its reaper)
                time.sleep(0.2)
                procs = self.pool_processes()
                if not procs:
                    self.notes.append(
                        f"right after the stops and destroys, {len(shown)} processes still ran "
                        f"as ids of the pool (pid, state, command, parent: {shown[:3]}); gone "
                        f"{time.perf_counter() - waited:.1f} s later"
                    )
                    break
        if procs:
            table = rt.process_table()
            shown = [f"{pid} {process_state(pid)} {table.get(pid, (0, '?'))[1]}" for pid in procs]
            problems.append(f"{len(procs)} processes run as ids of the pool: {shown[:5]}")
        return problems

    def pool_processes(self) -> list[int]:
        """Processes with ids of the pool in this run's cgroups. A process stays in its cgroup
        (which cannot go while it has one), so one of another host configuration whose pool
        overlaps this one (another session's VPSs) is not this run's: noted, not counted."""
        parent = f"/{cgroup_parent(self.vzpkg.host())}/"
        ours: list[int] = []
        others: list[int] = []
        for pid in rt.process_table():
            if self.init_uid_ok(process_uid(pid) or -1):
                try:
                    groups = Path(f"/proc/{pid}/cgroup").read_text()
                except OSError:
                    continue  # gone
                (ours if parent in groups else others).append(pid)
        if others:
            note = (
                f"{len(others)} processes of another host configuration (not in {parent}) run "
                "as ids of this run's pool: its pool overlaps this one"
            )
            if note not in self.notes:
                self.notes.append(note)
        return ours


class LxcRuntime(Runtime):
    def __init__(self, lxc: rt.Lxc) -> None:
        super().__init__()
        self.lxc = lxc
        self.name = f"lxc {lxc.kind}"

    def ident(self, i: int) -> str:
        return f"vzbench-d{self.lxc.kind[0]}{i}"

    def create(self, i: int) -> float:
        return self.lxc.copy(self.ident(i))

    def start(self, i: int) -> float:
        return self.lxc.start(self.ident(i))

    def init_pid(self, i: int) -> int:
        return self.lxc.init_pid(self.ident(i))

    def init_uid_ok(self, uid: int) -> bool:
        return uid == (self.lxc.idmap_base or 0)

    def stop(self, i: int) -> float:
        return self.lxc.stop(self.ident(i))

    def destroy(self, i: int) -> float:
        return self.lxc.destroy(self.ident(i))

    def listing(self) -> float:
        return rt.timed(["lxc-ls", "-P", str(self.lxc.lxcpath), "-f"])

    def leftovers(self, count: int) -> list[str]:
        prefix = f"vzbench-d{self.lxc.kind[0]}"
        problems = []
        names = [n for n in os.listdir(self.lxc.lxcpath) if n.startswith(prefix)]
        if names:
            problems.append(f"{len(names)} containers left in {self.lxc.lxcpath}")
        groups = [
            str(p) for h in Path("/sys/fs/cgroup").iterdir() for p in h.glob(f"lxc.*.{prefix}*")
        ]
        if groups:
            problems.append(f"{len(groups)} LXC cgroups left, first {groups[:3]}")
        procs = [
            pid for pid, (_, cmd) in rt.process_table().items() if f"{prefix}" in cmd.split("/")[-1]
        ]
        if procs:
            problems.append(f"{len(procs)} processes of the containers left, first {procs[:5]}")
        return problems


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (Z: a zombie), or '-' when gone."""
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2]
    return "-"


def process_uid(pid: int) -> int | None:
    with contextlib.suppress(OSError, BenchError):
        return rt.host_uid(pid)
    return None


# --- one pass: grow to each count, measure, stop and destroy everything ------------------


@dataclass
class Step:
    count: int
    memory: rt.MemoryUse
    start_wall: float  # the starts of this step, back to back (s)
    listing: float  # vzlist -a / lxc-ls -f with ``count`` containers (s)
    runc_start: float  # runc run -d by hand (runc spec's config), median of RAW_RUNS (s)
    mounts: int  # entries in the host's mount table


@dataclass
class Pass:
    name: str
    creates: list[float] = field(default_factory=list)  # index i: container i's
    prepares: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    stops: list[tuple[int, float]] = field(default_factory=list)  # (running before it, s)
    destroys: list[tuple[int, float]] = field(default_factory=list)  # (existing before it, s)
    steps: list[Step] = field(default_factory=list)
    failure: str | None = None  # what kept it from the largest count
    teardown_failures: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mounts_before: int = 0
    held_before_kb: int = 0  # held_memory_kb() when the pass began
    held_after_kb: int | None = None  # ... once everything was stopped and destroyed
    wall: float = 0.0

    @property
    def reached(self) -> int:
        return len(self.starts)

    def start_at(self, count: int) -> float:
        """The median of the last TAIL starts before ``count`` containers ran."""
        return statistics.median(self.starts[max(0, count - TAIL) : count])

    def create_at(self, count: int) -> float:
        return statistics.median(self.creates[max(0, count - TAIL) : count])

    def start_slope(self) -> float | None:
        """ms per 100 more containers running, fitted over every start."""
        if len(self.starts) < 3:
            return None
        fit = statistics.linear_regression(range(len(self.starts)), self.starts)
        return fit.slope * 1000 * 100

    def create_slope(self) -> float | None:
        if len(self.creates) < 3:
            return None
        fit = statistics.linear_regression(range(len(self.creates)), self.creates)
        return fit.slope * 1000 * 100


def mount_count() -> int:
    return len(Path("/proc/self/mountinfo").read_text().splitlines())


def failure_text(what: str, error: Exception) -> str:
    text = str(error).strip().replace("\n", " | ")
    return f"{what}: {text[-600:]}"


def raw_start(raw: rt.RawRunc) -> float:
    """runc run -d of runc spec's config with what runs now around it: runc's own share of a
    start, and how the host (its mount table, its cgroups) slows it."""
    times = []
    for _ in range(RAW_RUNS):
        nt.checkpoint()
        times.append(raw.start())
        raw.delete()
    return statistics.median(times)


def grow_and_measure(rt_: Runtime, counts: Sequence[int], p: Pass, raw: rt.RawRunc) -> list[int]:
    """Containers 0.. created and started up to each count, measured there; returns the
    init pids (container i's at index i) of those that started."""
    inits: list[int] = []
    drift, before = rt.idle_drift()
    p.held_before_kb = before
    p.mounts_before = mount_count()
    made = 0
    for count in counts:
        step_start = len(p.starts)
        for i in range(made, count):
            nt.checkpoint()
            try:
                p.creates.append(rt_.create(i))
            except BenchError as e:
                if nt.STOP:
                    raise KeyboardInterrupt from None
                p.failure = failure_text(f"create of container {i + 1}", e)
                break
            made = i + 1
            prepared = rt_.prepare(i)
            if prepared is not None:
                p.prepares.append(prepared)
        begun = time.perf_counter()
        for i in range(len(p.starts), made):
            nt.checkpoint()
            try:
                p.starts.append(rt_.start(i))
            except BenchError as e:
                if nt.STOP:
                    raise KeyboardInterrupt from None
                p.failure = failure_text(f"start of container {i + 1}", e)
                break
        start_wall = time.perf_counter() - begun
        for i in range(len(inits), len(p.starts)):
            inits.append(rt_.init_pid(i))
            nt.init_ready(inits[-1])
        if len(p.starts) == step_start:
            break  # nothing more started: nothing new to measure
        time.sleep(1)
        for pid in inits:
            uid = process_uid(pid)
            if uid is None or not rt_.init_uid_ok(uid):
                raise BenchError(f"{rt_.name}: an init ({pid}) runs as host uid {uid}")
        memory = rt.memory_of(inits, before, drift)
        step = Step(len(p.starts), memory, start_wall, rt_.listing(), raw_start(raw), mount_count())
        p.steps.append(step)
        log(
            f"{rt_.name}: {step.count} running, start {p.start_at(step.count) * 1000:.0f} ms, "
            f"create {p.create_at(step.count) * 1000:.0f} ms, PSS/VPS "
            f"{memory.per_vps_kb / MIB:.2f} MiB, held/VPS "
            f"{memory.held_delta_kb / memory.vps / MIB:.2f} MiB"
        )
        if p.failure:
            break
    return inits


def teardown(rt_: Runtime, p: Pass, created: int, inits: Sequence[int]) -> None:
    """Stop every container that started (the last started first), then destroy every one
    made; a failure is noted and the others go on (the final cleanup tries again)."""
    running = len(p.starts)
    for i in reversed(range(running)):
        nt.checkpoint()
        if i < len(inits):
            nt.init_ready(inits[i])
        try:
            p.stops.append((i + 1, rt_.stop(i)))
        except BenchError as e:
            if nt.STOP:
                raise KeyboardInterrupt from None
            p.teardown_failures.append(failure_text(f"stop of container {i + 1}", e))
    for i in reversed(range(created)):
        nt.checkpoint()
        try:
            p.destroys.append((i + 1, rt_.destroy(i)))
        except BenchError as e:
            if nt.STOP:
                raise KeyboardInterrupt from None
            p.teardown_failures.append(failure_text(f"destroy of container {i + 1}", e))


def run_pass(rt_: Runtime, counts: Sequence[int], raw: rt.RawRunc) -> Pass:
    p = Pass(rt_.name)
    log(f"{rt_.name}: growing to {', '.join(map(str, counts))}")
    begun = time.perf_counter()
    inits = grow_and_measure(rt_, counts, p, raw)
    log(f"{rt_.name}: stopping and destroying {len(p.creates)}")
    teardown(rt_, p, len(p.creates), inits)
    p.leftovers = rt_.leftovers(len(p.creates))
    _, p.held_after_kb = rt.idle_drift()
    p.notes = rt_.notes
    p.wall = time.perf_counter() - begun
    log(f"{rt_.name}: done in {p.wall:.0f} s")
    return p


# --- the host: subordinate ids and limits -------------------------------------------------


def check_subids(pool: tuple[int, int]) -> None:
    """The pool must lie inside a range /etc/subuid and /etc/subgid reserve for root: the
    bench does not let vzctl create add a line there."""
    end = pool[0] + pool[1]
    for path in SUBID_FILES:
        text = path.read_text() if path.exists() else ""
        roots = []
        for line in text.splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[0] == "root" and parts[1].isdigit() and parts[2].isdigit():
                roots.append((int(parts[1]), int(parts[2])))
        if not any(s <= pool[0] and end <= s + c for s, c in roots):
            have = ", ".join(f"{s}:{c}" for s, c in roots) or "none"
            raise SystemExit(
                f"bench: --userns-pool {pool[0]}:{pool[1]} is not inside a range {path} "
                f"reserves for root (root's: {have}); choose a pool inside one"
            )


def host_limits() -> str:
    """The kernel limits a thousand containers come near, as they are (never changed)."""
    values = []
    for name in (
        "kernel/pid_max", "kernel/threads-max", "user/max_user_namespaces",
        "user/max_mnt_namespaces", "user/max_pid_namespaces", "fs/mount-max",
        "fs/inotify/max_user_instances", "kernel/pty/max",
    ):  # fmt: skip
        with contextlib.suppress(OSError):
            values.append(f"{name.split('/')[-1]} {Path('/proc/sys', name).read_text().strip()}")
    return ", ".join(values)


# --- the report ---------------------------------------------------------------------------


def report(passes: Sequence[Pass], counts: Sequence[int], header: str, wall: float) -> None:
    ms = 1000.0
    print(f"\n{header}")
    heads = (
        ("N", "", ""), ("create", "ms", "at N*"), ("start", "ms", "at N*"),
        ("start", "ms", "step"), ("starts", "s", "total"), ("runc", "ms", "by hand"),
        ("PSS", "MiB", "per VPS"), ("held", "MiB", "per VPS"), ("procs", "", ""),
        ("mon.", "", ""), ("mounts", "+", ""), ("list", "s", ""),
    )  # fmt: skip
    print()
    for row in range(3):
        print("  " + " ".join(f"{head[row]:>7}" for head in heads))
    for p in passes:
        print(p.name)
        total = 0.0
        for n, step in enumerate(p.steps):
            total += step.start_wall
            m = step.memory
            segment = p.starts[p.steps[n - 1].count if n else 0 : step.count]
            cells = (
                f"{step.count}", f"{p.create_at(step.count) * ms:.1f}",
                f"{p.start_at(step.count) * ms:.1f}", f"{statistics.median(segment) * ms:.1f}",
                f"{total:.1f}", f"{step.runc_start * ms:.1f}", f"{m.per_vps_kb / MIB:.3f}",
                f"{m.held_delta_kb / m.vps / MIB:.3f}", f"{m.processes}", f"{m.monitors}",
                f"{step.mounts - p.mounts_before}", f"{step.listing:.2f}",
            )  # fmt: skip
            print("  " + " ".join(f"{cell:>7}" for cell in cells))
        if p.failure:
            print(f"  stopped at {p.reached}: {p.failure}")
    print(
        f"* the median of the last {TAIL} creates / starts before N ran; step: the median of the "
        "starts of this step;\n  total: the starts' time up to N, back to back; runc by hand: "
        f"runc run -d of runc spec's config (median of {RAW_RUNS}) with N there;\n  PSS: the "
        "containers' processes + monitors; held: the host-wide change of "
        f"{' + '.join(rt.HELD)}\n  since the pass began (other work on the host moves it too); "
        "mounts +: entries the host's mount table gained;\n  list: vzlist -a (vzpkg) or lxc-ls "
        "-f (LXC) with N there"
    )

    print("\nper container (medians, ms)             create   start    stop destroy     wall s")
    for p in passes:
        stops = [t for _, t in p.stops]
        destroys = [t for _, t in p.destroys]
        extra = f"  (vzctl set: {statistics.median(p.prepares) * ms:.1f})" if p.prepares else ""
        if p.steps:
            drift = p.steps[0].memory.held_drift_kb / MIB
            extra += f"  held moved by itself {drift:+.2f} MiB in 1 s before it"
        print(
            f"  {p.name:<36} {med(p.creates) * ms:>7.1f} {med(p.starts) * ms:>7.1f} "
            f"{med(stops) * ms:>7.1f} {med(destroys) * ms:>7.1f} {p.wall:>10.0f}{extra}"
        )
        for label, values in (("stop", p.stops), ("destroy", p.destroys)):
            parts = []
            bounds = [0, *(s.count for s in p.steps)]
            for low, high in itertools.pairwise(bounds):
                part = [t for n, t in values if low < n <= high]
                if part:
                    parts.append(f"{high}..{low + 1}: {statistics.median(part) * ms:.1f}")
            if parts:
                print(f"    {label} while N of them were there: {'; '.join(reversed(parts))}")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    def line(label: str, value: str, note: str = "") -> None:
        print(f"    {label:<46} {value:>10}  {note}".rstrip())

    print("\ngoals (issue 11): vzpkg's; LXC's figures for comparison")
    lxcs = [p for p in passes if p.name.startswith("lxc") and p.steps]
    for p in passes:
        if not p.steps:
            continue
        ours = not p.name.startswith("lxc")
        print(f"  {p.name}")
        first, last = p.steps[0], p.steps[-1]
        memory = last.memory.per_vps_kb / MIB
        note = f"goal <= {GOAL_MEMORY_MIB} MiB: {verdict(memory <= GOAL_MEMORY_MIB)}"
        line(f"PSS per idle VPS at N = {last.count}", f"{memory:.3f} MiB", note if ours else "")
        held = last.memory.held_delta_kb / last.count / MIB
        note = f"goal <= {GOAL_MEMORY_MIB} MiB: {verdict(held <= GOAL_MEMORY_MIB)}"
        line(f"held per idle VPS at N = {last.count}", f"{held:.3f} MiB", note if ours else "")
        if p.held_after_kb is not None:
            freed = (p.held_before_kb + last.memory.held_delta_kb - p.held_after_kb) / MIB
            kept = (p.held_after_kb - p.held_before_kb) / MIB
            line(
                "  held given back by the stops and destroys",
                f"{freed / last.count:.3f} MiB",
                f"per VPS; after them the host holds {kept:+.1f} MiB against the pass's start",
            )
        ratio = p.start_at(last.count) / p.start_at(first.count)
        slope = p.start_slope()
        note = f"({p.start_at(last.count) * ms:.1f} vs {p.start_at(first.count) * ms:.1f} ms"
        note += f"; fit: {slope:+.1f} ms per 100 running)" if slope is not None else ")"
        if ours:
            note = f"goal <= {GOAL_FLAT_RATIO}: {verdict(ratio <= GOAL_FLAT_RATIO)} {note}"
        line(f"start at N = {last.count} / at N = {first.count}", f"{ratio:.2f}", note)
        create_slope = p.create_slope()
        if create_slope is not None:
            line(
                f"create at N = {last.count} / at N = {first.count}",
                f"{p.create_at(last.count) / p.create_at(first.count):.2f}",
                f"({p.create_at(last.count) * ms:.1f} vs {p.create_at(first.count) * ms:.1f} "
                f"ms; fit: {create_slope:+.1f} ms per 100 existing)",
            )
        clean = not p.teardown_failures and not p.leftovers and len(p.stops) == p.reached
        clean = clean and len(p.destroys) == len(p.creates)
        note = f"{len(p.stops)} stops, {len(p.destroys)} destroys of {len(p.creates)}"
        if ours:
            note = f"goal: {verdict(clean)} ({note})"
        line("every one stopped and destroyed cleanly", "yes" if clean else "NO", note)
        for problem in p.teardown_failures[:5] + p.leftovers + p.notes:
            print(f"      {problem}")
        if len(p.teardown_failures) > 5:
            print(f"      ... {len(p.teardown_failures) - 5} more failures")
        if p.failure:
            print(f"      reached {p.reached} of {counts[-1]}: {p.failure}")
        if not ours:
            continue
        for other in lxcs:
            common = sorted({s.count for s in p.steps} & {s.count for s in other.steps})
            if not common:
                continue
            n = common[-1]
            mine = next(s for s in p.steps if s.count == n).memory
            theirs = next(s for s in other.steps if s.count == n).memory
            held = theirs.held_delta_kb
            held_ratio = f"{mine.held_delta_kb / held:.2f}" if held > 0 else "n/a"
            line(
                f"/ {other.name} at N = {n}: PSS per VPS",
                f"{mine.per_vps_kb / theirs.per_vps_kb:.2f}",
                f"held per VPS: {held_ratio}; start: {p.start_at(n) / other.start_at(n):.2f}",
            )
    print(f"\nwall time of the whole run: {wall / 60:.1f} min")


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- main ---------------------------------------------------------------------------------


def parse_counts(text: str) -> list[int]:
    counts = sorted({int(n) for n in text.split(",") if n.strip()})
    if not counts or counts[0] < 1:
        raise ValueError(text)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--counts",
        default=",".join(map(str, COUNTS)),
        help="the numbers of idle containers measured (default %(default)s)",
    )
    parser.add_argument(
        "--lxc", action=argparse.BooleanOptionalAction, default=True, help="measure LXC too"
    )
    parser.add_argument(
        "--lxc-kinds",
        default=",".join(LXC_DEFAULT),
        help="LXC's kinds measured, of: unprivileged, privileged (default %(default)s)",
    )
    parser.add_argument(
        "--limits",
        nargs="?",
        const=LIMITS,
        default=None,
        metavar="OPTIONS",
        help=f"a second vzpkg pass, each VPS with `vzctl set CTID OPTIONS --save` before its "
        f"start (default OPTIONS: '{LIMITS}'; give others as --limits='...')",
    )
    rt.add_cache_options(parser)
    parser.add_argument(
        "--ctid-base",
        type=int,
        default=CTID_BASE,
        help=f"the anchor's CTID; the VPSs' are the next ones, those of --limits' pass the "
        f"ones after (default {CTID_BASE})",
    )
    parser.add_argument(
        "--userns-pool",
        default=f"{POOL_BASE}:{POOL_SIZE}",
        metavar="BASE:SIZE",
        help="host ids for the run's user namespaces (multiples of 65536, inside root's range "
        "in /etc/subuid and /etc/subgid): vzpkg's pool, but for its last block, which is LXC's "
        "(default %(default)s)",
    )
    args = parser.parse_args()
    try:
        counts = parse_counts(args.counts)
    except ValueError:
        parser.error("--counts: expected numbers from 1 on, separated by commas")
    kinds = [k.strip() for k in args.lxc_kinds.split(",") if k.strip()]
    if not set(kinds) <= set(LXC_KINDS):
        parser.error(f"--lxc-kinds: choose from {', '.join(LXC_KINDS)}")
    limits = shlex.split(args.limits) if args.limits is not None else None
    try:
        pool = nt.parse_pool(args.userns_pool)
    except ValueError:
        parser.error("--userns-pool: expected BASE:SIZE")
    if pool[0] <= 0 or pool[0] % BLOCK or pool[1] % BLOCK or pool[1] < 2 * BLOCK:
        parser.error("--userns-pool: BASE and SIZE must be multiples of 65536, SIZE two or more")
    blocks = pool[1] // BLOCK - 1  # the last is LXC's
    if counts[-1] + 1 > blocks:
        parser.error(
            f"--userns-pool: {blocks} blocks for vzpkg hold the anchor and {blocks - 1} VPSs, "
            f"not {counts[-1]}: a larger SIZE, or smaller --counts"
        )
    if not 0 < args.ctid_base <= 2**31 - 2 - 2 * counts[-1]:
        parser.error("--ctid-base: out of range")
    if os.geteuid() != 0:
        sys.exit("bench: run as root (vzctl, runc and LXC need it)")
    for tool in ("runc", "zstd", "tar", "umount", *(["lxc-start", "lxc-ls"] if args.lxc else [])):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is missing")
    if not rt.HOST_TINI.is_file():
        sys.exit(f"bench: {rt.HOST_TINI} is missing (apt-get install tini)")
    check_subids(pool)
    vzpkg_pool, lxc_block = (pool[0], pool[1] - BLOCK), pool[0] + pool[1] - BLOCK
    signal.signal(signal.SIGINT, nt.request_stop)
    signal.signal(signal.SIGTERM, nt.request_stop)

    begun = time.perf_counter()
    links_before = set(os.listdir("/sys/class/net"))
    pivots_before = rt.lxc_pivots()
    base = Path(tempfile.mkdtemp(prefix="vzpkg-bench-dens-"))
    base.chmod(0o755)
    vzpkg: DensityVzpkg | None = None
    raw: rt.RawRunc | None = None
    lxcs: list[rt.Lxc] = []
    cgroups: list[str] = [RAW_ID]
    passes: list[Pass] = []
    failed = True
    problems: list[str] = []
    header = ""
    try:
        vzpkg = DensityVzpkg(base, base / "cache", vzpkg_pool)
        # Only the host config's values: none of the caller's VZPKG_* overrides.
        vzpkg.env = {
            k: v for k, v in vzpkg.env.items() if not k.startswith("VZPKG_") or k == "VZPKG_CONF"
        }
        cgroups.append(cgroup_parent(vzpkg.host()))
        (base / "cache").mkdir()
        archive, sha, cache_note = rt.obtain_cache(base, vzpkg, args.build_cache, args.cache_from)
        nt.checkpoint()
        # The anchor keeps the overlay tree for the whole run: every create finds it.
        vzpkg.made.add(args.ctid_base)
        vzpkg.ctl("create", str(args.ctid_base), "--ostemplate", TEMPLATE)
        rootfs = base / "runc-bundle" / "rootfs"
        rootfs.mkdir(parents=True)
        unpack_archive(archive, rootfs)
        init = detect_init(rootfs)
        if init.kind != "tini":
            raise BenchError(f"{TEMPLATE} has an init of its own ({init.kind}): expected none")
        raw = rt.RawRunc(base, rootfs.parent, RAW_ID)
        raw.configure(rt.spec_config(rootfs, init.argv))
        runtimes: list[Runtime] = [VzpkgRuntime(vzpkg, args.ctid_base, vzpkg_pool, [])]
        if limits is not None:
            base_limits = args.ctid_base + counts[-1]
            runtimes.append(VzpkgRuntime(vzpkg, base_limits, vzpkg_pool, limits))
        if args.lxc:
            for kind in kinds:
                nt.checkpoint()
                idmap = lxc_block if kind == "unprivileged" else None
                lxc = rt.Lxc(base / f"lxc-{kind[0]}", init.argv, idmap)
                lxcs.append(lxc)
                lxc.make_base(archive)
                runtimes.append(LxcRuntime(lxc))
        for runtime in runtimes:
            passes.append(run_pass(runtime, counts, raw))
        header = (
            f"{TEMPLATE}, idle (tini + sh loop), no network; {rt.versions()}\n"
            f"cache: {cache_note}, sha256 {sha[:12]}; host limits (unchanged): {host_limits()}"
        )
        failed = False
    except (BenchError, VzError) as e:
        log("interrupted" if nt.STOP else str(e))
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        with rt.signals_ignored():
            log("cleaning up")
            parts: list[rt.Vzpkg | rt.RawRunc | rt.Lxc | None] = [raw, vzpkg, *lxcs]
            problems = rt.cleanup([base], links_before, parts, cgroups, pivots_before)
        for problem in problems:
            log(f"NOT CLEAN: {problem}")
    if failed:
        sys.exit(1)
    report(passes, counts, header, time.perf_counter() - begun)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
