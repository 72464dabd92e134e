#!/usr/bin/env python3
"""Benchmark: the vzctl runtime against raw runc and LXC, in the same run, on the same tree.

    sudo .venv/bin/python bench/runtime.py [--rounds 5] [--vps 5] [--build-cache]
        [--ctid-base 73100] [--userns-pool BASE:SIZE]

Everything runs from one cache of debian-12-x86_64-minimal (a verified copy of the checkout's
caches/ one, or one built with vzpkgcache) under a temp dir (plus one in /dev/shm): a host
config of its own (VZPKG_CONF), runc's own --root, LXC's own lxcpath (-P). Every VPS/container
runs the same init: vzpkg's tini (the host's tini-static, bound read-only) keeping a shell loop
alive. LXC is installed when missing (--no-install-recommends, its bridge disabled) and never
gets a network (lxc.net.0.type = empty). VPSs get CTIDs from --ctid-base on and user namespace
blocks from --userns-pool, whose last block is LXC's unprivileged containers'.

Measures, as medians over the rounds after a warm-up round (the real CLIs, fresh processes):
  startup  python -c pass, import vzpkg.cli.vzctl, vzctl --help: what every vzctl command pays
           before doing anything ("work" = command time minus vzctl --help). Python commands
           get a bytecode cache in the temp dir, as an installed vzpkg has.
  vzpkg    vzctl create (overlay: the template tree exists; plain: the cache is unpacked, on
           disk and on tmpfs), start, exec CTID true, stop, destroy, each of a VPS with a user
           namespace (the default, --userns yes) and of a privileged one (--userns no);
           overlay create in-process
  runc     runc run -d, exec true, state, delete --force of an unpacked copy of the root (runc
           spec's config); runc run -d, exec true of vzctl's own bundle (its config.json, the
           root mounted by vzctl mount): what runc itself spends of a vzctl start / exec
  lxc      lxc-copy -s -B overlay (snapshot clone), lxc-start -d, lxc-attach -- true,
           lxc-stop, lxc-destroy; privileged (root's ids) and unprivileged (lxc.idmap u/g 0 BASE
           65536, run by root; its base rootfs chowned onto that block)
  unpack   zstd -d | tar -x (vzpkg's tar flags) into a fresh dir: on disk, + syncfs, on tmpfs
and then the host memory of --vps idle VPSs of each kind: PSS of the containers' processes plus
any monitor process on the host (LXC keeps one per container, vzpkg none), and the change of
the memory the host holds (anon, shmem, kernel objects: see held_memory_kb).

Goals (issue 9), of a VPS with a user namespace (the default): vzctl start <= 2 x runc run -d of
the same root, vzctl exec <= 2 x runc exec, memory per idle VPS <= 0.7 MiB, plain create <= 1.5 x
zstd -d | tar -x of the same cache on tmpfs.

Everything is stopped, destroyed, unmounted and removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vzpkg.cache.archive import unpack_archive, unpack_argv  # noqa: E402
from vzpkg.ct import conf as ct_conf  # noqa: E402
from vzpkg.ct import create as ct_create  # noqa: E402
from vzpkg.ct import layout as ct_layout  # noqa: E402
from vzpkg.ct.common import bundle_dir, cgroup_parent  # noqa: E402
from vzpkg.ct.guest import TINI_IN_CT, detect_init  # noqa: E402
from vzpkg.hostconf import HostConfig, load_host_config  # noqa: E402

BIN = Path(sys.executable).parent
TEMPLATE = "debian-12-x86_64-minimal"
HOST_TINI = Path("/usr/bin/tini-static")
CTID_BASE = 73100  # far from the CTIDs the tests use (--ctid-base to choose others)
CTIDS = 10  # CTIDs used from the base on besides the --vps ones of the memory step (base + 10 on)
# User namespace blocks of its own, apart from the host's VPSs' and the tests'.
POOL_BASE = (1 << 30) + (1 << 29) + (1 << 28) + (1 << 24)
POOL_SIZE = 1 << 22
BLOCK = 65536  # ids per user namespace, vzpkg's and LXC's alike
LXC_BASE = "vzbench-base"
LXC_UNPRIV_BASE = "vzbench-ubase"
RAW_ID = "vzbench-raw"
RAW_BUNDLE_ID = "vzbench-rawvz"  # runc on vzctl's own bundle
LXC_NET_DEFAULTS = Path("/etc/default/lxc-net")
LXC_LOCKS = Path("/run/lxc/lock")  # LXC's lock files, one directory per lxcpath
LXC_PIVOT = "lxc.pivot"  # the cgroup LXC's monitors move to before they exit (one per hierarchy)
MIB = 1024.0  # kB per MiB (smaps and meminfo count kB)

GOAL_START_RATIO = 2.0  # vzctl start / runc run -d
GOAL_EXEC_RATIO = 2.0  # vzctl exec / runc exec
GOAL_MEMORY_MIB = 0.7  # PSS per idle VPS, its processes and any monitor
GOAL_PLAIN_CREATE_RATIO = 1.5  # plain create / zstd -d | tar -x, both on tmpfs
RUNC_BUNDLE_START_USERNS = "runc run -d, vzctl's bundle, userns"
RUNC_BUNDLE_START_PRIV = "runc run -d, vzctl's bundle, privileged"
RUNC_BUNDLE_EXEC_USERNS = "runc exec true, vzctl's bundle, userns"
RUNC_BUNDLE_EXEC_PRIV = "runc exec true, vzctl's bundle, privileged"


class BenchError(Exception):
    pass


def log(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def run(
    argv: Sequence[str], env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        output = (proc.stderr or proc.stdout)[-3000:]
        raise BenchError(f"{shlex.join(argv)} failed ({proc.returncode}):\n{output}")
    return proc


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    run(argv, env)
    return time.perf_counter() - start


def timed_call(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


# --- host state: mounts, processes, memory ----------------------------------------------------


def mounts_below(top: Path) -> list[str]:
    """Mount points at or below ``top`` in the order mounted (/proc/mounts escapes octal)."""
    prefix = str(top).rstrip("/") + "/"
    points = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split(" ")[1])
        if point == str(top) or point.startswith(prefix):
            points.append(point)
    return points


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, cmdline or [comm]) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        text = cmdline.replace(b"\0", b" ").decode(errors="replace").strip() or f"[{name}]"
        table[int(entry.name)] = (int(fields[1]), text)
    return table


def descendants(table: dict[int, tuple[int, str]], root: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def rollup(pid: int) -> tuple[int, int]:
    """(Rss, Pss) of a process in kB."""
    values = {"Rss": 0, "Pss": 0}
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0])
    return values["Rss"], values["Pss"]


HELD = ("AnonPages", "Shmem", "SUnreclaim", "KernelStack", "PageTables", "Percpu")


def held_memory_kb() -> int:
    """Memory the host holds for processes and kernel objects (/proc/meminfo: anon, shmem,
    unreclaimable slab, kernel stacks, page tables, percpu), caches left out. Not MemTotal -
    MemAvailable: on a VM with free page reporting MemFree drifts by megabytes a second."""
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        info[key] = int(rest.split()[0])
    return sum(info[key] for key in HELD)


@dataclass(frozen=True)
class MemoryUse:
    vps: int
    processes: int
    pss_kb: int
    rss_kb: int
    monitors: int
    monitor_pss_kb: int
    monitor_names: tuple[str, ...]
    held_delta_kb: int
    held_drift_kb: int  # change of the same figure in 1 s before the VPSs were started

    @property
    def per_vps_kb(self) -> float:
        return (self.pss_kb + self.monitor_pss_kb) / self.vps


def memory_of(inits: Sequence[int], held_before_kb: int, drift_kb: int) -> MemoryUse:
    """Memory of the containers whose init pids are given, and of their monitors: the parent
    of an init unless that is the host's PID 1 (a reparented, unsupervised init)."""
    table = process_table()
    pids = [pid for init in inits for pid in descendants(table, init)]
    monitors = sorted({table[init][0] for init in inits} - {0, 1})
    sizes = [rollup(pid) for pid in pids]
    monitor_sizes = [rollup(pid) for pid in monitors]
    return MemoryUse(
        vps=len(inits),
        processes=len(pids),
        pss_kb=sum(pss for _, pss in sizes),
        rss_kb=sum(rss for rss, _ in sizes),
        monitors=len(monitors),
        monitor_pss_kb=sum(pss for _, pss in monitor_sizes),
        monitor_names=tuple(sorted({table[pid][1].split(" /")[0] for pid in monitors})),
        held_delta_kb=held_memory_kb() - held_before_kb,
        held_drift_kb=drift_kb,
    )


# --- the three runtimes -----------------------------------------------------------------------


def python_env(base: Path) -> dict[str, str]:
    """The environment of every Python command timed: bytecode cached (in the temp dir), as an
    installed vzpkg has it, even when the caller set PYTHONDONTWRITEBYTECODE."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
    return env


class Vzpkg:
    """The real vzctl CLI against a host config of its own."""

    def __init__(self, base: Path, cache_dir: Path, pool: tuple[int, int]) -> None:
        self.base = base
        self.conf = base / "vzpkg.conf"
        self.run_dir = base / "run"
        values = {
            "CACHE_DIR": cache_dir,
            "PKGCACHE_DIR": base / "pkgcache",
            "LOCKDIR": base / "lock",
            "VE_ROOT": f"{base}/root/$VEID",
            "VE_PRIVATE": f"{base}/private/$VEID",
            "CONF_DIR": base / "conf",
            "TREES_DIR": base / "trees",
            "RUN_DIR": self.run_dir,
            "USERNS_POOL_BASE": pool[0],
            "USERNS_POOL_SIZE": pool[1],
        }
        self.conf.write_text("".join(f'{key}="{value}"\n' for key, value in values.items()))
        self.env = {**python_env(base), "VZPKG_CONF": str(self.conf)}
        self.vzctl = str(BIN / "vzctl")
        self.made: set[int] = set()

    def ctl(self, *args: str) -> float:
        return timed([self.vzctl, "-q", *args], self.env)

    def host(self) -> HostConfig:
        return load_host_config({"VZPKG_CONF": str(self.conf)})

    def create(
        self, ctid: int, layout: str, private: Path | None = None, userns: bool = True
    ) -> float:
        self.made.add(ctid)
        where = ["--private", str(private)] if private else []
        return self.ctl(
            "create", str(ctid), "--ostemplate", TEMPLATE, "--layout", layout, *where,
            "--userns", "yes" if userns else "no",
        )  # fmt: skip

    def bundle_config(self, ctid: int) -> dict[str, Any]:
        """The config.json vzctl start wrote for a running VPS."""
        config: dict[str, Any] = json.loads(
            (bundle_dir(self.host(), ctid) / "config.json").read_text()
        )
        return config

    def destroy(self, ctid: int) -> float:
        elapsed = self.ctl("destroy", str(ctid))
        self.made.discard(ctid)
        return elapsed

    def create_in_process(self, ctid: int) -> float:
        """create() itself, imports already done: the work of the command, nothing else."""
        host = self.host()
        self.made.add(ctid)
        return timed_call(lambda: ct_create.create(host, ctid, TEMPLATE, layout_name="overlay"))

    def runc_argv(self, *args: str) -> list[str]:
        return ["runc", "--root", str(self.run_dir / "runc"), *args]

    def init_pid(self, ctid: int) -> int:
        state: dict[str, Any] = json.loads(run(self.runc_argv("state", f"vz{ctid}")).stdout)
        return int(state["pid"])

    def cleanup(self) -> None:
        for ctid in sorted(self.made):
            run([self.vzctl, "-q", "stop", "--fast", str(ctid)], self.env, check=False)
            proc = run([self.vzctl, "-q", "destroy", str(ctid)], self.env, check=False)
            if proc.returncode != 0:
                log(f"cleanup: vzctl destroy {ctid}: {proc.stderr.strip()}")
        self.made.clear()
        if (self.run_dir / "runc").is_dir():
            for name in run(self.runc_argv("list", "-q"), check=False).stdout.split():
                log(f"cleanup: runc container {name} left behind by vzctl; deleting it")
                run(self.runc_argv("delete", "--force", name), check=False)


def spec_config(rootfs: Path, init_argv: Sequence[str]) -> dict[str, Any]:
    """runc spec's config.json, adjusted just enough to run the same init in the same root."""
    with tempfile.TemporaryDirectory() as scratch:
        run(["runc", "spec", "--bundle", scratch])
        config: dict[str, Any] = json.loads((Path(scratch) / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = list(init_argv)
    config["root"] = {"path": str(rootfs), "readonly": False}
    config["hostname"] = "raw"
    config["mounts"].append(
        {
            "destination": TINI_IN_CT,
            "type": "bind",
            "source": str(HOST_TINI),
            "options": ["bind", "ro", "nosuid", "nodev"],
        }
    )
    return config


class RawRunc:
    """runc by hand: one container ``ident`` of a bundle of our own with the config given
    (its cgroup renamed to /ident), in a runc --root of our own."""

    def __init__(self, base: Path, bundle: Path, ident: str) -> None:
        self.bundle = bundle
        self.ident = ident
        self.state_root = base / "runc-raw"
        self.running = False

    def configure(self, config: dict[str, Any]) -> None:
        self.bundle.mkdir(parents=True, exist_ok=True)
        config["linux"]["cgroupsPath"] = f"/{self.ident}"
        (self.bundle / "config.json").write_text(json.dumps(config, indent=2))

    def argv(self, *args: str) -> list[str]:
        return ["runc", "--root", str(self.state_root), *args]

    def start(self) -> float:
        """runc hands its stdio on to init: a pipe there would never reach EOF, so runc's own
        messages go to a log file."""
        log_file = self.bundle / "runc.log"
        argv = self.argv("--log", str(log_file), "run", "--detach", "--bundle", str(self.bundle))
        self.running = True
        start = time.perf_counter()
        code = subprocess.call(
            [*argv, self.ident],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        elapsed = time.perf_counter() - start
        if code != 0:
            raise BenchError(f"runc run failed ({code}): {log_file.read_text()[-3000:]}")
        return elapsed

    def exec_true(self) -> float:
        return timed(self.argv("exec", self.ident, "true"))

    def state(self) -> float:
        return timed(self.argv("state", self.ident))

    def delete(self) -> float:
        elapsed = timed(self.argv("delete", "--force", self.ident))
        self.running = False
        return elapsed

    def cleanup(self) -> None:
        if self.running or (self.state_root / self.ident).is_dir():
            run(self.argv("delete", "--force", self.ident), check=False)
            self.running = False


def shift_ids(top: Path, offset: int) -> None:
    """Add ``offset`` to the owner and group of everything below ``top`` (as LXC's uidmapshift
    does for an unprivileged container's rootfs); each inode once, however many hard links it
    has; the set-id bits chown clears are set again. (File capabilities are lost: the minimal
    template's files have none.)"""
    seen: set[int] = set()

    def shift(path: str) -> None:
        st = os.lstat(path)
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            if st.st_ino in seen:
                return
            seen.add(st.st_ino)
        os.lchown(path, st.st_uid + offset, st.st_gid + offset)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o6000:
            os.chmod(path, stat.S_IMODE(st.st_mode))

    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            shift(os.path.join(directory, name))
    shift(str(top))


class Lxc:
    """LXC with its own lxcpath; a base container with a plain rootfs, snapshot clones of it.
    With ``idmap_base``: unprivileged, root-run (lxc.idmap u/g 0 idmap_base 65536, LXC's
    userns.conf), the base rootfs shifted onto that block."""

    def __init__(self, lxcpath: Path, init_argv: Sequence[str], idmap_base: int | None) -> None:
        self.lxcpath = lxcpath
        self.init_argv = list(init_argv)
        self.idmap_base = idmap_base
        self.base = LXC_BASE if idmap_base is None else LXC_UNPRIV_BASE
        self.kind = "privileged" if idmap_base is None else "unprivileged"
        self.made: list[str] = []

    def argv(self, tool: str, name: str, *args: str) -> list[str]:
        return [tool, "-P", str(self.lxcpath), "-n", name, *args]

    def make_base(self, archive: Path) -> None:
        rootfs = self.lxcpath / self.base / "rootfs"
        rootfs.mkdir(parents=True)
        self.made.append(self.base)
        unpack_archive(archive, rootfs)
        unprivileged = ""
        if self.idmap_base is not None:
            shift_ids(rootfs, self.idmap_base)
            unprivileged = (
                "lxc.include = /usr/share/lxc/config/userns.conf\n"
                f"lxc.idmap = u 0 {self.idmap_base} {BLOCK}\n"
                f"lxc.idmap = g 0 {self.idmap_base} {BLOCK}\n"
            )
        (self.lxcpath / self.base / "config").write_text(
            "lxc.include = /usr/share/lxc/config/common.conf\n"
            + unprivileged
            + f"lxc.uts.name = {self.base}\n"
            f"lxc.rootfs.path = dir:{rootfs}\n"
            "lxc.net.0.type = empty\n"
            "lxc.tty.max = 0\n"
            "lxc.apparmor.profile = unconfined\n"
            f"lxc.mount.entry = {HOST_TINI} {TINI_IN_CT.lstrip('/')} none "
            "bind,ro,nosuid,nodev,create=file 0 0\n"
        )

    def copy(self, name: str) -> float:
        self.made.append(name)
        return timed(self.argv("lxc-copy", self.base, "-N", name, "-s", "-B", "overlay"))

    def start(self, name: str) -> float:
        # lxc.init.cmd splits at spaces without quoting: the init argv goes on the command line.
        return timed(self.argv("lxc-start", name, "-d", "--", *self.init_argv))

    def attach_true(self, name: str) -> float:
        return timed(self.argv("lxc-attach", name, "--", "true"))

    def stop(self, name: str) -> float:
        return timed(self.argv("lxc-stop", name, "-t", "10"))

    def destroy(self, name: str) -> float:
        elapsed = timed(self.argv("lxc-destroy", name))
        self.made.remove(name)
        return elapsed

    def init_pid(self, name: str) -> int:
        return int(run(self.argv("lxc-info", name, "-p", "-H")).stdout.strip())

    def cleanup(self) -> None:
        # Clones first: the base cannot go while snapshots of it exist.
        for name in sorted(self.made, key=lambda n: n == self.base):
            run(self.argv("lxc-stop", name, "-k"), check=False)
            proc = run(self.argv("lxc-destroy", name), check=False)
            if proc.returncode != 0:
                log(f"cleanup: lxc-destroy {name}: {proc.stderr.strip()}")
        self.made.clear()
        # LXC leaves a lock directory per lxcpath behind; remove ours and its empty parents.
        locks = self.lock_dir()
        shutil.rmtree(locks, ignore_errors=True)
        for parent in locks.parents:
            if parent == LXC_LOCKS or not parent.is_relative_to(LXC_LOCKS):
                break
            with contextlib.suppress(OSError):
                parent.rmdir()

    def lock_dir(self) -> Path:
        return LXC_LOCKS / str(self.lxcpath).lstrip("/")


def ensure_lxc() -> list[str]:
    """Install LXC if missing, with its bridge disabled; returns what was done."""
    notes = []

    def bridge_off() -> None:
        text = LXC_NET_DEFAULTS.read_text() if LXC_NET_DEFAULTS.exists() else ""
        if 'USE_LXC_BRIDGE="false"' not in text.splitlines():
            lines = [ln for ln in text.splitlines() if not ln.startswith("USE_LXC_BRIDGE=")]
            LXC_NET_DEFAULTS.write_text("\n".join([*lines, 'USE_LXC_BRIDGE="false"']) + "\n")
            notes.append(f'set USE_LXC_BRIDGE="false" in {LXC_NET_DEFAULTS}')

    if shutil.which("lxc-start") is None:
        bridge_off()
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = [
            "apt-get", "install", "-y", "-q", "--no-install-recommends",
            "-o", "Dpkg::Options::=--force-confold", "lxc",
        ]  # fmt: skip
        log("installing lxc (apt-get install --no-install-recommends lxc)")
        if run(install, env, check=False).returncode != 0:
            run(["apt-get", "update", "-q"], env)
            run(install, env)
        notes.append("installed lxc with apt-get install --no-install-recommends")
    bridge_off()
    if Path("/sys/class/net/lxcbr0").exists():
        helper = Path("/usr/libexec/lxc/lxc-net")
        if helper.exists():
            run([str(helper), "stop"], check=False)
        if Path("/sys/class/net/lxcbr0").exists():
            run(["ip", "link", "delete", "lxcbr0"], check=False)
        notes.append("stopped lxc-net and removed lxcbr0")
    return notes


# --- the benchmark ----------------------------------------------------------------------------


def obtain_cache(base: Path, vzpkg: Vzpkg, build: bool, source: Path) -> tuple[Path, str, str]:
    """The cache in vzpkg's CACHE_DIR: the one in ``source`` copied in (verified), or a fresh
    build."""
    cache_dir = base / "cache"
    archive, manifest = cache_dir / f"{TEMPLATE}.tar.zst", cache_dir / f"{TEMPLATE}.json"
    if not build and (source / archive.name).is_file() and (source / manifest.name).is_file():
        shutil.copy2(source / manifest.name, manifest)
        shutil.copy2(source / archive.name, archive)
        sha = json.loads(manifest.read_text())["archive"]["sha256"]
        with archive.open("rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() == sha:
                return archive, sha, f"copied from {source} (read only)"
        log("the checkout's cache changed while being copied; building one instead")
        archive.unlink()
        manifest.unlink()
    log(f"building {TEMPLATE} with vzpkgcache")
    elapsed = timed([str(BIN / "vzpkgcache"), "-q", TEMPLATE], vzpkg.env)
    sha = json.loads(manifest.read_text())["archive"]["sha256"]
    return archive, sha, f"built with vzpkgcache in {elapsed:.1f} s"


def raw_unpack_argv(archive: Path, target: Path, sync: bool) -> list[str]:
    script = (
        shlex.join(["zstd", "-dcq", "--", str(archive)])
        + " | "
        + shlex.join(unpack_argv("tar", target))
    )
    if sync:
        script += " && " + shlex.join(["sync", "-f", str(target)])
    return ["bash", "-o", "pipefail", "-c", script]


def import_breakdown(env: dict[str, str]) -> list[tuple[str, float]]:
    """Self import times of `import vzpkg.cli.vzctl`, summed per top-level package (ms)."""
    proc = run([sys.executable, "-X", "importtime", "-c", "import vzpkg.cli.vzctl"], env)
    groups: dict[str, float] = defaultdict(float)
    for line in proc.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \| +(\S+)", line)
        if match:
            root = match.group(2).split(".")[0]
            stdlib = root in sys.stdlib_module_names or root == "_distutils_hack"
            group = "stdlib" if stdlib else root
            groups[group] += int(match.group(1)) / 1000
    return sorted(groups.items(), key=lambda item: -item[1])


@dataclass
class Results:
    times: dict[str, list[float]]
    first_overlay_create: float
    memory: dict[str, MemoryUse]
    imports: list[tuple[str, float]]
    cache_note: str
    members_note: str
    lxc_notes: list[str]

    def med(self, key: str) -> float:
        return statistics.median(self.times[key])


KINDS = (("userns", True), ("privileged", False))  # vzctl create --userns yes / no


def bench_rounds(
    rounds: int,
    vzpkg: Vzpkg,
    raw: RawRunc,
    raw_vz: RawRunc,
    lxcs: Sequence[Lxc],
    archive: Path,
    disk: Path,
    shm: Path,
    ctid_base: int,
) -> dict[str, list[float]]:
    """Round 0 is a warm-up (bytecode cache, page cache, first-use costs of each tool) and is
    not counted. The disk-heavy steps run in reverse order every other round: on a VM disk with
    a write budget, whatever runs later pays for what ran before."""
    times: dict[str, list[float]] = defaultdict(list)
    python, env = sys.executable, vzpkg.env
    no_bytecode = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    no_bytecode.pop("PYTHONPYCACHEPREFIX", None)
    plain, plain_tmpfs, in_process, plain_tmpfs_priv = (ctid_base + i for i in range(2, 6))
    overlay = {"userns": ctid_base + 1, "privileged": ctid_base + 6}

    def settle() -> None:
        """Write back what earlier steps left dirty, so that no step pays for another's."""
        run(["sync", "-f", str(disk)])

    def unpack(top: Path, sync: bool) -> float:
        target = top / "unpack"
        target.mkdir()
        try:
            return timed(raw_unpack_argv(archive, target, sync))
        finally:
            shutil.rmtree(target)

    def plain_on_disk() -> dict[str, float]:
        created = vzpkg.create(plain, "plain")
        settle()
        return {"vzctl create plain": created, "vzctl destroy plain": vzpkg.destroy(plain)}

    def plain_on_tmpfs(ctid: int, userns: bool) -> dict[str, float]:
        private = shm / "private" / str(ctid)
        suffix = "" if userns else ", privileged"
        return {
            f"vzctl create plain, tmpfs{suffix}": vzpkg.create(ctid, "plain", private, userns),
            f"vzctl destroy plain, tmpfs{suffix}": vzpkg.destroy(ctid),
        }

    heavy: list[Callable[[], dict[str, float]]] = [
        plain_on_disk,
        lambda: {"zstd -d | tar -x": unpack(disk, False)},
        lambda: {"zstd -d | tar -x + syncfs": unpack(disk, True)},
        lambda: plain_on_tmpfs(plain_tmpfs, True),
        lambda: {"zstd -d | tar -x, tmpfs": unpack(shm, False)},
        lambda: plain_on_tmpfs(plain_tmpfs_priv, False),
    ]

    for round_ in range(rounds + 1):
        t: dict[str, list[float]] = defaultdict(list) if round_ == 0 else times
        t["python -c pass"].append(timed([python, "-c", "pass"], env))
        t["import vzpkg.cli.vzctl"].append(timed([python, "-c", "import vzpkg.cli.vzctl"], env))
        t["vzctl --help"].append(timed([vzpkg.vzctl, "--help"], env))
        t["vzctl --help, no bytecode"].append(timed([vzpkg.vzctl, "--help"], no_bytecode))

        # Every other round the privileged VPS goes first: neither kind always pays for the other.
        for kind, userns in KINDS if round_ % 2 else reversed(KINDS):
            ctid = overlay[kind]
            t[f"vzctl create overlay, {kind}"].append(vzpkg.create(ctid, "overlay", None, userns))
            t[f"vzctl start, {kind}"].append(vzpkg.ctl("start", str(ctid)))
            t[f"vzctl exec true, {kind}"].append(vzpkg.ctl("exec", str(ctid), "true"))
            config = vzpkg.bundle_config(ctid)
            t[f"vzctl stop, {kind}"].append(vzpkg.ctl("stop", str(ctid)))
            # A start of a VPS started before: its guest files come from the render cache,
            # without loading jinja2 (the first start of a VPS renders them).
            t[f"vzctl start again, {kind}"].append(vzpkg.ctl("start", str(ctid)))
            vzpkg.ctl("stop", str(ctid))
            # runc itself on what vzctl start gave it: its config.json, the root mounted again.
            # (and its gate, as vzctl start opens it: the path runc is given).
            vzpkg.ctl("mount", str(ctid))
            host = vzpkg.host()
            gate = ct_layout.gate_path(host, ctid)
            maps = config["linux"].get("uidMappings") or [{"hostID": 0}]
            owner = (maps[0]["hostID"], maps[0]["hostID"])
            ct_layout.open_gate(gate, ct_conf.root_path(host, ctid), owner)
            raw_vz.configure(config)
            t[f"runc run -d, vzctl's bundle, {kind}"].append(raw_vz.start())
            t[f"runc exec true, vzctl's bundle, {kind}"].append(raw_vz.exec_true())
            raw_vz.delete()
            ct_layout.release_gate(gate)
            vzpkg.ctl("umount", str(ctid))
            t[f"vzctl destroy overlay, {kind}"].append(vzpkg.destroy(ctid))
        t["create work in-process"].append(vzpkg.create_in_process(in_process))
        vzpkg.destroy(in_process)

        t["runc run -d"].append(raw.start())
        t["runc exec true"].append(raw.exec_true())
        t["runc state"].append(raw.state())
        t["runc delete --force"].append(raw.delete())

        for lxc in lxcs:
            name, kind = f"vzbench-{lxc.kind[0]}{round_}", lxc.kind
            t[f"lxc-copy -s -B overlay, {kind}"].append(lxc.copy(name))
            t[f"lxc-start -d, {kind}"].append(lxc.start(name))
            t[f"lxc-attach -- true, {kind}"].append(lxc.attach_true(name))
            t[f"lxc-stop, {kind}"].append(lxc.stop(name))
            t[f"lxc-destroy, {kind}"].append(lxc.destroy(name))

        for step in heavy if round_ % 2 else reversed(heavy):
            settle()
            for key, value in step().items():
                t[key].append(value)
        settle()
        log(
            (f"round {round_}/{rounds}: " if round_ else "warm-up round: ")
            + ", ".join(f"{k} {v[-1] * 1000:.0f}" for k, v in t.items())
            + " (ms)"
        )
    return times


def idle_drift() -> tuple[int, int]:
    """How much the host's held memory moves by itself in a second, and its value now. Waits
    (up to 10 s) for it to settle: the kernel frees the cgroups of the containers just removed
    a while later, and other work on the host moves it too."""
    now = held_memory_kb()
    for _ in range(10):
        time.sleep(1)
        first, now = now, held_memory_kb()
        if abs(now - first) < 256:
            break
    return now - first, now


def host_uid(pid: int) -> int:
    """The real uid of process ``pid`` as the host sees it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no Uid line")


def bench_memory(
    count: int, vzpkg: Vzpkg, lxcs: Sequence[Lxc], ctid_base: int, pool: tuple[int, int]
) -> dict[str, MemoryUse]:
    """Idle VPSs of vzpkg (with a user namespace, the default) and of each LXC; every init is
    checked to run as the ids it should (a block of the pool, LXC's block, host root)."""
    result = {}
    drift, before = idle_drift()
    ctids = [ctid_base + CTIDS + i for i in range(count)]
    for ctid in ctids:
        vzpkg.create(ctid, "overlay")
        vzpkg.ctl("start", str(ctid))
    time.sleep(1)
    inits = [vzpkg.init_pid(ctid) for ctid in ctids]
    for pid in inits:
        if not pool[0] <= host_uid(pid) < pool[0] + pool[1]:
            raise BenchError(f"a VPS's init runs as host uid {host_uid(pid)}: not from the pool")
    result["vzpkg"] = memory_of(inits, before, drift)
    for ctid in ctids:
        vzpkg.ctl("stop", str(ctid))
        vzpkg.destroy(ctid)

    for lxc in lxcs:
        drift, before = idle_drift()
        names = [f"vzbench-m{lxc.kind[0]}{i}" for i in range(count)]
        for name in names:
            lxc.copy(name)
            lxc.start(name)
        time.sleep(1)
        inits = [lxc.init_pid(name) for name in names]
        for pid in inits:
            if host_uid(pid) != (lxc.idmap_base or 0):
                raise BenchError(f"LXC {lxc.kind}: init runs as host uid {host_uid(pid)}")
        result[f"lxc {lxc.kind}"] = memory_of(inits, before, drift)
        for name in names:
            lxc.stop(name)
            lxc.destroy(name)
    return result


def check_clean(tops: Sequence[Path], links_before: set[str], cgroups: Sequence[str]) -> list[str]:
    """What is left of the run: mounts, files, links, processes, ``cgroups`` (names below every
    hierarchy's root: vzpkg's parent of this host configuration, the raw runc containers'), LXC's
    cgroups and locks."""
    problems = []
    for top in tops:
        if mounts_below(top):
            problems.append(f"mounts left: {mounts_below(top)}")
        if top.exists():
            problems.append(f"{top} not removed")
    links = set(os.listdir("/sys/class/net")) - links_before
    if links:
        problems.append(f"network links left: {sorted(links)}")
    if Path("/sys/class/net/lxcbr0").exists():
        problems.append("lxcbr0 exists")
    for pid, (_, cmdline) in process_table().items():
        ours = any(str(top) in cmdline for top in tops) or "vzbench-" in cmdline
        if pid != os.getpid() and ours:
            problems.append(f"process left: {pid} {cmdline}")
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        for name in cgroups:
            if (hierarchy / name).exists():
                problems.append(f"cgroup left: {hierarchy / name}")
        for path in hierarchy.glob("lxc.*.vzbench-*"):
            problems.append(f"cgroup left: {path}")
    locks = LXC_LOCKS / str(tops[0]).lstrip("/")
    if locks.exists():
        problems.append(f"LXC lock directory left: {locks}")
    return problems


def cleanup(
    tops: Sequence[Path],
    links_before: set[str],
    parts: Sequence[Vzpkg | RawRunc | Lxc | None],
    cgroups: Sequence[str],
    pivots_before: set[Path],
) -> list[str]:
    """Stop and remove every container, unmount and remove the temp dirs (``tops``, LXC's
    lxcpath in the first), then report whatever is still there."""
    for part in parts:
        if part is not None:
            try:
                part.cleanup()
            except Exception as e:
                log(f"cleanup of {type(part).__name__} failed: {e}")
    for top in tops:
        for point in reversed(mounts_below(top)):
            log(f"cleanup: unmounting {point}")
            if run(["umount", point], check=False).returncode != 0:
                run(["umount", "-l", point], check=False)
        if mounts_below(top):
            log(f"cleanup: mounts remain below {top}; not removing it")
        else:
            shutil.rmtree(top, ignore_errors=True)
    return check_clean(tops, links_before, cgroups) + remove_lxc_pivots(pivots_before)


def lxc_pivots() -> set[Path]:
    return {h / LXC_PIVOT for h in Path("/sys/fs/cgroup").iterdir() if (h / LXC_PIVOT).is_dir()}


def remove_lxc_pivots(before: set[Path]) -> list[str]:
    """LXC leaves its monitors' pivot cgroups behind: remove those the run made (when empty,
    as rmdir requires)."""
    problems = []
    for path in sorted(lxc_pivots() - before):
        try:
            path.rmdir()
        except OSError as e:
            problems.append(f"cgroup left: {path} ({e.strerror})")
    return problems


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def versions() -> str:
    runc = run(["runc", "--version"]).stdout.split("\n")[0].split()[-1]
    lxc = run(["lxc-start", "--version"]).stdout.strip()
    return (
        f"kernel {platform.release()}, runc {runc}, lxc {lxc}, python {platform.python_version()}"
        f", {os.cpu_count()} cpus"
    )


def report(r: Results, rounds: int, count: int, versions_line: str) -> None:
    ms = 1000.0
    startup = r.med("vzctl --help")
    print(f"\n{TEMPLATE}, {rounds} rounds, medians in ms; {versions_line}")
    print(f"cache: {r.cache_note}; {r.members_note}")
    rows: list[tuple[str, str | None, bool]] = [
        ("startup (every vzctl command pays this)", None, False),
        ("python -c pass", "python -c pass", False),
        ("python -c 'import vzpkg.cli.vzctl'", "import vzpkg.cli.vzctl", False),
        ("vzctl --help", "vzctl --help", False),
        ("vzctl --help, PYTHONDONTWRITEBYTECODE=1", "vzctl --help, no bytecode", False),
    ]
    for kind, title in (
        ("userns", "vzpkg, user namespace (--userns yes, the default)"),
        ("privileged", "vzpkg, privileged (--userns no)"),
    ):
        rows += [
            (title, None, False),
            ("vzctl create --layout overlay", f"vzctl create overlay, {kind}", True),
            ("vzctl start (first start: renders)", f"vzctl start, {kind}", True),
            ("vzctl start (again: render cache)", f"vzctl start again, {kind}", True),
            ("vzctl exec CTID true", f"vzctl exec true, {kind}", True),
            ("vzctl stop", f"vzctl stop, {kind}", True),
            ("vzctl destroy (overlay)", f"vzctl destroy overlay, {kind}", True),
            ("runc run -d of vzctl's bundle", f"runc run -d, vzctl's bundle, {kind}", False),
            ("runc exec of vzctl's bundle", f"runc exec true, vzctl's bundle, {kind}", False),
        ]
    rows += [
        ("vzpkg, plain layout and create's own work", None, False),
        ("vzctl create work (in-process, overlay)", "create work in-process", False),
        ("vzctl create --layout plain", "vzctl create plain", True),
        ("vzctl destroy (plain)", "vzctl destroy plain", True),
        ("vzctl create --layout plain, on tmpfs", "vzctl create plain, tmpfs", True),
        ("vzctl destroy (plain), on tmpfs", "vzctl destroy plain, tmpfs", True),
        ("  the same, --userns no", "vzctl create plain, tmpfs, privileged", True),
        ("  its destroy", "vzctl destroy plain, tmpfs, privileged", True),
        ("runc (by hand: runc spec, same root, same init)", None, False),
        ("runc run -d", "runc run -d", False),
        ("runc exec ID true", "runc exec true", False),
        ("runc state ID", "runc state", False),
        ("runc delete --force (kill+delete)", "runc delete --force", False),
    ]
    for kind in ("privileged", "unprivileged"):
        rows += [
            (f"lxc, {kind} (same tree, same init, no network)", None, False),
            ("lxc-copy -s -B overlay", f"lxc-copy -s -B overlay, {kind}", False),
            ("lxc-start -d", f"lxc-start -d, {kind}", False),
            ("lxc-attach -n X -- true", f"lxc-attach -- true, {kind}", False),
            ("lxc-stop", f"lxc-stop, {kind}", False),
            ("lxc-destroy (clone)", f"lxc-destroy, {kind}", False),
        ]
    rows += [
        ("unpack by hand", None, False),
        ("zstd -d | tar -x", "zstd -d | tar -x", False),
        ("zstd -d | tar -x + syncfs", "zstd -d | tar -x + syncfs", False),
        ("zstd -d | tar -x, on tmpfs", "zstd -d | tar -x, tmpfs", False),
    ]
    print(f"\n{'':<42} {'median':>8} {'min':>8} {'max':>8} {'work*':>8}")
    for label, key, work in rows:
        if key is None:
            print(label)
            continue
        values = r.times[key]
        line = (
            f"  {label:<40} {r.med(key) * ms:>8.1f} {min(values) * ms:>8.1f} "
            f"{max(values) * ms:>8.1f}"
        )
        if work:
            line += f" {(r.med(key) - startup) * ms:>8.1f}"
        print(line)
    print(f"  {'vzctl create overlay, first (makes tree)':<40} {r.first_overlay_create * ms:>8.1f}")
    print(f"* work = median - median of vzctl --help ({startup * ms:.1f} ms)")
    print(
        "Python commands run with a bytecode cache (PYTHONPYCACHEPREFIX in the temp dir), as an "
        "installed vzpkg has;\nwithout one (PYTHONDONTWRITEBYTECODE=1 and no __pycache__ in the "
        f"checkout: {not (REPO / 'vzpkg' / '__pycache__').is_dir()}) every command compiles vzpkg."
    )
    top = ", ".join(f"{name} {t:.1f}" for name, t in r.imports[:6])
    print(f"import vzpkg.cli.vzctl, self time by package (-X importtime, ms): {top}")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    def ratio(label: str, value: str, note: str = "") -> None:
        print(f"  {label:<46} {value:>9}  {note}".rstrip())

    python = r.med("python -c pass")
    print("\ngoals (issue 9), of a VPS with a user namespace (the default)")
    for what, runc_key, goal in (
        ("start", "runc run -d", GOAL_START_RATIO),
        ("exec", "runc exec true", GOAL_EXEC_RATIO),
    ):
        ours = r.med(f"vzctl {what}" + (" true" if what == "exec" else "") + ", userns")
        theirs = r.med(runc_key)
        ratio(
            f"vzctl {what} / {runc_key.removesuffix(' true')}",
            f"{ours / theirs:.2f}",
            f"goal <= {goal:.1f}: {verdict(ours / theirs <= goal)} "
            f"({ours * ms:.1f} vs {theirs * ms:.1f} ms)",
        )
    memory = r.memory["vzpkg"].per_vps_kb / MIB
    ratio(
        "memory per idle VPS (PSS, processes + monitors)",
        f"{memory:.2f} MiB",
        f"goal <= {GOAL_MEMORY_MIB} MiB: {verdict(memory <= GOAL_MEMORY_MIB)}",
    )
    plain = r.med("vzctl create plain, tmpfs") / r.med("zstd -d | tar -x, tmpfs")
    ratio(
        "plain create / zstd -d | tar -x, on tmpfs",
        f"{plain:.2f}",
        f"goal <= {GOAL_PLAIN_CREATE_RATIO}: {verdict(plain <= GOAL_PLAIN_CREATE_RATIO)} "
        f"({r.med('vzctl create plain, tmpfs') * ms:.1f} vs "
        f"{r.med('zstd -d | tar -x, tmpfs') * ms:.1f} ms)",
    )

    again = r.med("vzctl start again, userns") / r.med("runc run -d")
    ratio(
        "  the same, a VPS started before",
        f"{again:.2f}",
        f"goal <= {GOAL_START_RATIO:.1f}: {verdict(again <= GOAL_START_RATIO)} "
        f"({r.med('vzctl start again, userns') * ms:.1f} ms)",
    )

    print("\nwhere the time of vzctl start / exec goes (medians, ms)")
    for kind in ("userns", "privileged"):
        for what, runc_key in (
            ("start", "runc run -d"),
            ("start again", "runc run -d"),
            ("exec true", "runc exec true"),
        ):
            ours = r.med(f"vzctl {what}, {kind}")
            own = r.med(f"{runc_key}, vzctl's bundle, {kind}")
            ratio(
                f"vzctl {what.removesuffix(' true')}, {kind}",
                f"{ours * ms:.1f}",
                f"= runc on its bundle {own * ms:.1f} + vzpkg {(ours - own) * ms:.1f} (of which "
                f"python -c pass {python * ms:.1f}); runc spec's config: "
                f"{r.med(runc_key) * ms:.1f}",
            )
    ratio(
        "vzctl start / runc on vzctl's own bundle",
        f"{r.med('vzctl start, userns') / r.med(RUNC_BUNDLE_START_USERNS):.2f}",
        f"privileged: {r.med('vzctl start, privileged') / r.med(RUNC_BUNDLE_START_PRIV):.2f}",
    )
    ratio(
        "vzctl exec / runc exec of vzctl's own bundle",
        f"{r.med('vzctl exec true, userns') / r.med(RUNC_BUNDLE_EXEC_USERNS):.2f}",
        f"privileged: {r.med('vzctl exec true, privileged') / r.med(RUNC_BUNDLE_EXEC_PRIV):.2f}",
    )

    print("\nother ratios")
    ratio(
        "vzctl start / runc run -d, privileged",
        f"{r.med('vzctl start, privileged') / r.med('runc run -d'):.2f}",
    )
    ratio(
        "vzctl exec / runc exec, privileged",
        f"{r.med('vzctl exec true, privileged') / r.med('runc exec true'):.2f}",
    )
    for ct_kind, lxc_kind in (("userns", "unprivileged"), ("privileged", "privileged")):
        for what, lxc_what in (
            ("create overlay", "lxc-copy -s -B overlay"),
            ("start", "lxc-start -d"),
            ("exec true", "lxc-attach -- true"),
            ("stop", "lxc-stop"),
        ):
            tool = lxc_what.split(" ")[0]
            ratio(
                f"vzctl {what.removesuffix(' true')} {ct_kind} / {tool} {lxc_kind}",
                f"{r.med(f'vzctl {what}, {ct_kind}') / r.med(f'{lxc_what}, {lxc_kind}'):.2f}",
            )
    for what in ("create overlay", "start", "exec true", "stop"):
        ratio(
            f"vzctl {what.removesuffix(' true')}: userns / privileged",
            f"{r.med(f'vzctl {what}, userns') / r.med(f'vzctl {what}, privileged'):.2f}",
        )
    plain_userns = r.med("vzctl create plain, tmpfs")
    plain_privileged = r.med("vzctl create plain, tmpfs, privileged")
    ratio("plain create on tmpfs: userns / privileged", f"{plain_userns / plain_privileged:.2f}")
    for create, unpack in (
        ("vzctl create plain", "zstd -d | tar -x"),
        ("vzctl create plain", "zstd -d | tar -x + syncfs"),
        ("vzctl create plain, tmpfs, privileged", "zstd -d | tar -x, tmpfs"),
    ):
        label = f"{create.removeprefix('vzctl create ')} create / {unpack}"
        ratio(label, f"{r.med(create) / r.med(unpack):.2f}")

    print(f"\nmemory of {count} idle VPSs of each kind (kB = KiB; PSS from smaps_rollup)")
    print(
        f"  {'':<18} {'procs':>6} {'PSS':>8} {'RSS':>8} {'monitors':>9} {'mon. PSS':>9} "
        f"{'PSS/VPS MiB':>12} {'held/VPS MiB':>13}"
    )
    for kind, m in r.memory.items():
        print(
            f"  {kind:<18} {m.processes:>6} {m.pss_kb:>8} {m.rss_kb:>8} {m.monitors:>9} "
            f"{m.monitor_pss_kb:>9} {m.per_vps_kb / MIB:>12.2f} "
            f"{m.held_delta_kb / m.vps / MIB:>13.2f}"
        )
        if m.monitor_names:
            print(f"  {'':<18} monitor processes: {', '.join(m.monitor_names)}")
    drifts = ", ".join(f"{kind} {m.held_drift_kb / MIB:+.2f}" for kind, m in r.memory.items())
    print(
        f"  held = host-wide change of {' + '.join(HELD)} (/proc/meminfo);\n"
        f"  it moved by itself by {drifts} MiB in the second before each start: compare with "
        f"{count} x held/VPS"
    )
    ours_m = r.memory["vzpkg"]
    for kind in ("lxc unprivileged", "lxc privileged"):
        theirs_m = r.memory[kind]
        ratio(
            f"per-VPS PSS vzpkg / {kind}",
            f"{ours_m.per_vps_kb / theirs_m.per_vps_kb:.2f}",
            f"({ours_m.per_vps_kb / MIB:.2f} vs {theirs_m.per_vps_kb / MIB:.2f} MiB)",
        )
        held = theirs_m.held_delta_kb
        ratio(
            f"per-VPS held memory vzpkg / {kind}",
            f"{ours_m.held_delta_kb / held:.2f}" if held > 0 else "nan",
        )
    if r.lxc_notes:
        print("lxc: " + "; ".join(r.lxc_notes))


def add_cache_options(parser: argparse.ArgumentParser) -> None:
    """--build-cache and --cache-from, as every bench takes them (obtain_cache uses them)."""
    parser.add_argument(
        "--build-cache", action="store_true", help="build the cache even if caches/ has one"
    )
    parser.add_argument(
        "--cache-from",
        type=Path,
        default=REPO / "caches",
        metavar="DIR",
        help="where to copy the cache from, read only (default: the checkout's caches/)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vps", type=int, default=5, help="idle VPSs per kind for memory")
    add_cache_options(parser)
    parser.add_argument(
        "--ctid-base",
        type=int,
        default=CTID_BASE,
        help=f"the CTIDs used: this one on, {CTIDS} + --vps of them (default {CTID_BASE})",
    )
    parser.add_argument(
        "--userns-pool",
        default=f"{POOL_BASE}:{POOL_SIZE}",
        metavar="BASE:SIZE",
        help="host ids for the run's user namespaces (multiples of 65536): vzpkg's pool, "
        "but for its last block, which is LXC's (default %(default)s)",
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.vps < 1:
        parser.error("--rounds and --vps must be at least 1")
    pool_base, _, pool_size = args.userns_pool.partition(":")
    try:
        pool = int(pool_base), int(pool_size)
    except ValueError:
        parser.error("--userns-pool: expected BASE:SIZE")
    if pool[0] <= 0 or pool[0] % BLOCK or pool[1] % BLOCK or pool[1] < 2 * BLOCK:
        parser.error("--userns-pool: BASE and SIZE must be multiples of 65536, SIZE two or more")
    if not 0 < args.ctid_base <= 2**31 - 1 - CTIDS - args.vps:
        parser.error("--ctid-base: out of range")
    vzpkg_pool, lxc_block = (pool[0], pool[1] - BLOCK), pool[0] + pool[1] - BLOCK
    if os.geteuid() != 0:
        sys.exit("bench: run as root (vzctl, runc and LXC need it)")
    for tool in ("runc", "zstd", "tar", "umount"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is missing")
    if not HOST_TINI.is_file():
        sys.exit(f"bench: {HOST_TINI} is missing (apt-get install tini)")
    signal.signal(signal.SIGTERM, _interrupt)
    lxc_notes = ensure_lxc()

    links_before = set(os.listdir("/sys/class/net"))
    pivots_before = lxc_pivots()
    base = Path(tempfile.mkdtemp(prefix="vzpkg-bench-rt-"))
    base.chmod(0o755)
    shm = Path(tempfile.mkdtemp(prefix="vzpkg-bench-rt-", dir="/dev/shm"))
    shm.chmod(0o755)  # VPS roots below it are mounted as the VPSs' own ids
    vzpkg: Vzpkg | None = None
    raw: RawRunc | None = None
    raw_vz: RawRunc | None = None
    lxc: Lxc | None = None
    lxc_unpriv: Lxc | None = None
    cgroups = [RAW_ID, RAW_BUNDLE_ID]
    failed = True
    try:
        vzpkg = Vzpkg(base, base / "cache", vzpkg_pool)
        cgroups.append(cgroup_parent(vzpkg.host()))
        (base / "cache").mkdir()
        archive, sha, cache_note = obtain_cache(base, vzpkg, args.build_cache, args.cache_from)
        rootfs = base / "runc-bundle" / "rootfs"
        rootfs.mkdir(parents=True)
        unpacked = unpack_archive(archive, rootfs)
        members_note = (
            f"sha256 {sha[:12]}, {unpacked.members} members, "
            f"{unpacked.uncompressed_size / 2**20:.1f} MiB as tar"
        )
        init = detect_init(rootfs)
        if init.kind != "tini":
            raise BenchError(f"{TEMPLATE} has an init of its own ({init.kind}): expected none")
        raw = RawRunc(base, rootfs.parent, RAW_ID)
        raw.configure(spec_config(rootfs, init.argv))
        raw_vz = RawRunc(base, base / "runc-vzbundle", RAW_BUNDLE_ID)
        lxc = Lxc(base / "lxc", init.argv, None)
        lxc.make_base(archive)
        lxc_unpriv = Lxc(base / "lxc-u", init.argv, lxc_block)
        lxc_unpriv.make_base(archive)
        lxcs = [lxc, lxc_unpriv]
        # The anchor keeps the overlay tree for the whole run: every timed create finds it.
        first = vzpkg.create(args.ctid_base, "overlay")
        times = bench_rounds(
            args.rounds, vzpkg, raw, raw_vz, lxcs, archive, base, shm, args.ctid_base
        )
        memory = bench_memory(args.vps, vzpkg, lxcs, args.ctid_base, vzpkg_pool)
        results = Results(
            times=times,
            first_overlay_create=first,
            memory=memory,
            imports=import_breakdown(vzpkg.env),
            cache_note=cache_note,
            members_note=members_note,
            lxc_notes=lxc_notes,
        )
        versions_line = versions()
        failed = False
    except BenchError as e:
        log(str(e))
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        with signals_ignored():
            log("cleaning up")
            # runc on vzctl's bundle first: it runs in a root vzctl mounted.
            parts = [raw_vz, vzpkg, raw, lxc, lxc_unpriv]
            problems = cleanup([base, shm], links_before, parts, cgroups, pivots_before)
        for problem in problems:
            log(f"NOT CLEAN: {problem}")
    if failed:
        sys.exit(1)
    report(results, args.rounds, args.vps, versions_line)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
