#!/usr/bin/env python3
"""Benchmark: vzctl start of a VPS with a routed address against one without, against runc
with the same network made by hand, and against LXC with a veth NIC: one run, one tree.

    sudo .venv/bin/python bench/network.py [--rounds 5] [--ctid-base 75100]
        [--userns-pool BASE:SIZE] [--cache-from DIR] [--build-cache]

Nothing is added to the machine's network namespace. The bench makes two of its own,
vzbench-host-PID (where everything runs: the bench runs itself again there under nsenter
--net, which keeps the machine's mount namespace for vzctl's mounts) and vzbench-lan-PID (a
"lan" joined to it by a veth pair lan0 <-> eth0, 198.51.100.1/24 and .2/24), sets
net.ipv4.ip_forward=1 in the first, and deletes both at the end, also on failure or Ctrl-C.
It checks that the machine's links, addresses, routes, proxy entries and forwarding sysctls
are the same before and after. Addresses come from 198.51.100.0/24 only.

Everything else as bench/runtime.py does it (whose runners it uses): one cache of
debian-12-x86_64-minimal (a verified copy of the checkout's caches/ one, or one built with
vzpkgcache) under a temp dir, a host config of its own (VZPKG_CONF, NEIGHBOUR_DEVS=all: the
proxy entries go on lan0), CTIDs from --ctid-base on, user namespace blocks from --userns-pool
(its last block is LXC's unprivileged containers'), runc's own --root, LXC's own lxcpath. Every
VPS/container runs the same init (the host's tini-static keeping a shell loop alive). LXC is
installed when missing (--no-install-recommends, its bridge disabled).

Measures, as medians over the rounds after a warm-up round (the real CLIs, fresh processes):
  vzpkg    vzctl create --ipadd 198.51.100.45 and vzctl create without an address (both with
           a user namespace, the default), start (the first one: renders the guest's files),
           stop, start again, stop again, destroy; a start again with NEIGHBOUR_DEVS=list:lan0
           (no device detection)
  runc     runc run -d of an unpacked copy of the root (runc spec's config: a new, empty network
           namespace; privileged, as in runtime.py); runc create + runc start of it; runc
           create --pid-file, the routed network by hand (ip -batch on the host: veth with its
           peer venet0 put in the container's namespace, 169.254.0.1 and fe80::1 on the host
           end, route and proxy ARP entry of the address; rp_filter on the host end; nsenter
           --net ip -batch inside: lo and venet0 up, the address /32, default routes onlink),
           runc start: what vzctl does, by hand. Stops: runc kill (SIGTERM, as vzctl sends
           tini), a wait for init to go, runc delete (+ ip -batch removing the proxy entry and
           veth). Not runc delete --force: runc 1.1 sleeps 100 ms in it before it looks again.
  lxc      lxc-copy -s -B overlay, lxc-start -d, lxc-stop, lxc-destroy (the create-to-destroy
           cycle) with lxc.net.0.type = empty and with a veth NIC in router mode (the address
           /32 routed to its host end, a proxy entry on lan0 through l2proxy, the host's lan
           address as gateway): privileged and unprivileged
and then where the time of vzctl start and stop goes: both run once more per round, each in a
fresh process that times every subprocess vzctl runs and some of its functions (SPANS).
Before every stop the bench waits, untimed, for the init's tini to run its child: a stop
signal sent earlier can be lost (a PID 1 drops what it has no handler for yet), and the stop
then waits out its timeout (vzctl: STOP_TIMEOUT, 60 s; lxc-stop -t 10), for runc, LXC and vzctl
alike. In the warm-up round every address is pinged from the lan namespace (raw ICMP, no ping tool
needed): each network measured works. The kinds alternate in order from round to round; a
difference "a - b" is the median of the rounds' differences (a and b measured back to back).

Goals (issue 10), of a VPS with a user namespace (the default): vzctl start with an address
adds at most 25 ms to vzctl start without one; vzctl start with an address <= 1.5 x runc create
+ the network by hand + runc start.

Everything is stopped, destroyed, unmounted and removed at the end, also on failure or Ctrl-C
(or SIGTERM to the bench): the command running then ends by itself (vzctl gets the terminal's
^C as it would from a user), never killed half way, and the run stops after it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import runtime as rt  # noqa: E402  (bench/runtime.py: its runners, LXC setup and cleanup)

from vzpkg.cache.archive import unpack_archive  # noqa: E402
from vzpkg.ct.common import cgroup_parent  # noqa: E402
from vzpkg.ct.guest import detect_init  # noqa: E402
from vzpkg.errors import VzError  # noqa: E402

TEMPLATE = rt.TEMPLATE
CTID_BASE = 75100  # base: the anchor VPS (keeps the overlay tree); base + 1, + 2: the timed ones
# User namespace blocks of its own (16 of them), apart from the host's VPSs', the tests' and
# bench/runtime.py's; the last is LXC's unprivileged containers'.
POOL_BASE = (1 << 30) + (1 << 28) + (1 << 27)  # 1476395008
POOL_SIZE = 1 << 20
BLOCK = rt.BLOCK
NETNS_DIR = Path("/run/netns")
NETNS_ENV = "VZBENCH_NET_NAMESPACES"  # set for the run inside: "HOST,LAN,OUTER" (OUTER: dev:ino)
LAN_DEV, LAN_PEER_DEV = "lan0", "eth0"
HOST_LAN_V4, LAN_V4 = "198.51.100.1", "198.51.100.2"  # /24
VPS_V4 = "198.51.100.45"  # vzctl's VPS
RAW_V4 = "198.51.100.46"  # runc's container, network by hand
LXC_V4 = {"privileged": "198.51.100.47", "unprivileged": "198.51.100.48"}
GATEWAY4, GATEWAY6 = "169.254.0.1", "fe80::1"  # vzctl's, on the routed host end
ROUTED_IF = "venet0"
RAW_HOST_END = "vzbnraw0"  # the host end of the network by hand
RAW_ID = "vzbench-net-raw"  # runc run -d, no network (not runtime.py's ids: no shared cgroup)
RAW_NET_ID = "vzbench-net-hand"  # runc create + network by hand + runc start
DEVS_LIST = f"list:{LAN_DEV}"

GOAL_NETWORK_MS = 25.0  # vzctl start with an address - vzctl start without
GOAL_HAND_RATIO = 1.5  # vzctl start with an address / runc create + network by hand + start

log = rt.log
BenchError = rt.BenchError


def ip_batch(lines: Sequence[str], pid: int | None = None, force: bool = False) -> float:
    """One ``ip -batch`` process (in the network namespace of ``pid`` when given, through
    nsenter --net as vzctl does it); returns its time."""
    argv = ["ip", *(["-force"] if force else []), "-batch", "-"]
    if pid is not None:
        argv = ["nsenter", f"--net=/proc/{pid}/ns/net", "--", *argv]
    start = time.perf_counter()
    proc = subprocess.run(
        argv, input="\n".join(lines) + "\n", capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 and not force:
        raise BenchError(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}\nlines: {lines}")
    return elapsed


def ipv6_on() -> bool:
    """Whether this namespace has IPv6 (vzctl then adds fe80::1 and a default route too)."""
    with contextlib.suppress(OSError):
        return Path("/proc/sys/net/ipv6/conf/all/disable_ipv6").read_text().strip() == "0"
    return False


PING = r"""
import os, socket, struct, sys, time
addr = sys.argv[1]
def csum(b):
    total = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(0.3)
ident, deadline, seq = os.getpid() & 0xFFFF, time.monotonic() + 3, 0
while time.monotonic() < deadline:
    seq += 1
    body = struct.pack("!HH", ident, seq) + b"vzbench!"
    s.sendto(struct.pack("!BBH", 8, 0, csum(struct.pack("!BBH", 8, 0, 0) + body)) + body,
             (addr, 0))
    try:
        while True:
            data, src = s.recvfrom(1500)
            head = (data[0] & 15) * 4
            kind, _, _, got = struct.unpack("!BBHH", data[head:head + 6])
            if kind == 0 and got == ident and src[0] == addr:
                sys.exit(0)
    except TimeoutError:
        pass
sys.exit(1)
"""


@dataclass(frozen=True)
class Namespaces:
    host: str
    lan: str

    def path(self, name: str) -> str:
        return str(NETNS_DIR / name)

    def ping_from_lan(self, address: str) -> bool:
        """Whether ``address`` answers an ICMP echo from the lan (through lan0: proxy ARP,
        forwarding, the route to the VPS, its way back)."""
        argv = ["nsenter", f"--net={self.path(self.lan)}", "--", sys.executable, "-c", PING]
        return rt.run([*argv, address], check=False).returncode == 0


# --- the runtimes -------------------------------------------------------------------------


class HandNet(rt.RawRunc):
    """runc create, the routed network as vzctl makes it but by hand, runc start."""

    def __init__(self, base: Path, bundle: Path, ident: str, address: str) -> None:
        super().__init__(base, bundle, ident)
        self.address = address
        self.host_end_made = False

    def start_with_network(self) -> dict[str, float]:
        log_file, pid_file = self.bundle / "runc.log", self.bundle / "init.pid"
        pid_file.unlink(missing_ok=True)
        create = self.argv(
            "--log", str(log_file), "create", "--bundle", str(self.bundle),
            "--pid-file", str(pid_file), self.ident,
        )  # fmt: skip
        v6 = ipv6_on()
        self.running = True
        start = time.perf_counter()
        code = subprocess.call(
            create, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        created = time.perf_counter()
        if code != 0:
            raise BenchError(f"runc create failed ({code}): {log_file.read_text()[-3000:]}")
        pid = int(pid_file.read_text())
        end, address = RAW_HOST_END, self.address
        host = [
            f"link add {end} type veth peer name {ROUTED_IF} netns /proc/{pid}/ns/net",
            f"link set {end} up",
            f"addr add {GATEWAY4}/32 dev {end} scope link",
            *([f"addr add {GATEWAY6}/64 dev {end} nodad"] if v6 else []),
            f"route add {address}/32 dev {end}",
            f"neigh add proxy {address} dev {LAN_DEV}",
        ]
        guest = [
            "link set lo up",
            f"link set {ROUTED_IF} up",
            f"addr add {address}/32 dev {ROUTED_IF}",
            f"route add default via {GATEWAY4} dev {ROUTED_IF} onlink",
            *([f"route add ::/0 via {GATEWAY6} dev {ROUTED_IF} onlink"] if v6 else []),
        ]
        self.host_end_made = True
        host_time = ip_batch(host)
        Path(f"/proc/sys/net/ipv4/conf/{end}/rp_filter").write_text("1\n")
        guest_time = ip_batch(guest, pid)
        before_start = time.perf_counter()
        rt.run(self.argv("start", self.ident))
        done = time.perf_counter()
        return {
            "by hand: runc create + network + start": done - start,
            "by hand: runc create": created - start,
            "by hand: ip -batch on the host": host_time,
            "by hand: nsenter ip -batch inside": guest_time,
            "by hand: runc start": done - before_start,
        }

    def teardown_lines(self) -> list[str]:
        return [f"neigh del proxy {self.address} dev {LAN_DEV}", f"link del {RAW_HOST_END}"]

    def stop_with_network(self) -> float:
        """A stop (runc_stop()), then the host's objects (the veth would go with the container's
        namespace, but asynchronously; vzctl deletes it too)."""
        start = time.perf_counter()
        runc_stop(self)
        ip_batch(self.teardown_lines(), force=True)
        self.host_end_made = False
        return time.perf_counter() - start

    def cleanup(self) -> None:
        super().cleanup()
        if self.host_end_made:
            ip_batch(self.teardown_lines(), force=True)
            self.host_end_made = False


class NetVzpkg(rt.Vzpkg):
    """runtime.py's vzctl runner; its cleanup waits out a vzctl that still holds a VPS's
    lock (one finishing its own ^C)."""

    def cleanup(self) -> None:
        for ctid in sorted(self.made):
            for _ in range(60):
                argv = [self.vzctl, "-q"]
                rt.run([*argv, "stop", "--fast", str(ctid)], self.env, check=False)
                proc = rt.run([*argv, "destroy", str(ctid)], self.env, check=False)
                if proc.returncode == 0 or "is locked by" not in proc.stderr:
                    break
                time.sleep(0.5)
            if proc.returncode != 0 and "not found" not in proc.stderr:  # created, or half
                log(f"cleanup: vzctl destroy {ctid}: {proc.stderr.strip()}")
        self.made.clear()
        super().cleanup()  # runc containers vzctl left behind


STOP: list[int] = []  # signals received: the run stops at the next checkpoint


def request_stop(signum: int, frame: FrameType | None) -> None:
    """^C and SIGTERM: the command running finishes (vzctl gets the terminal's ^C itself and
    ends as it would for a user; it is never killed half way), then the run stops."""
    STOP.append(signum)


def checkpoint() -> None:
    if STOP:
        raise KeyboardInterrupt


def runc_stop(raw: rt.RawRunc) -> float:
    """runc kill (SIGTERM: tini passes it on, the shell's trap exits), a wait for init to be
    gone (or a zombie: runc calls that stopped), runc delete: the stop vzctl does."""
    state = json.loads((raw.state_root / raw.ident / "state.json").read_text())
    pid = int(state["init_process_pid"])
    init_ready(pid)
    start = time.perf_counter()
    rt.run(raw.argv("kill", raw.ident, "TERM"))
    deadline = start + 10
    while time.perf_counter() < deadline:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        if text[text.rindex(")") + 2] in "ZX":
            break
        time.sleep(0.001)
    else:
        raise BenchError(f"runc container {raw.ident}: init {pid} did not stop on SIGTERM")
    rt.run(raw.argv("delete", raw.ident))
    raw.running = False
    return time.perf_counter() - start


def create_start(raw: rt.RawRunc) -> float:
    """runc create + runc start without a network: the two-step start of vzctl with one."""
    log_file = raw.bundle / "runc.log"
    raw.running = True
    start = time.perf_counter()
    code = subprocess.call(
        raw.argv("--log", str(log_file), "create", "--bundle", str(raw.bundle), raw.ident),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if code != 0:
        raise BenchError(f"runc create failed ({code}): {log_file.read_text()[-3000:]}")
    rt.run(raw.argv("start", raw.ident))
    return time.perf_counter() - start


def stop_vps(vzpkg: rt.Vzpkg, ctid: str, notes: list[str]) -> float:
    """vzctl stop of a VPS whose init is ready (untimed wait, as for runc and LXC: a vzctl
    stop right after its start can lose the SIGTERM, and waits out STOP_TIMEOUT, 60 s)."""
    init_ready(vzpkg.init_pid(int(ctid)))
    elapsed = vzpkg.ctl("stop", ctid)
    if elapsed > 5:
        notes.append(f"vzctl stop {ctid} took {elapsed:.1f} s although its tini was ready")
    return elapsed


def lxc_ready(lxc: rt.Lxc, name: str) -> None:
    init_ready(lxc.init_pid(name))


def init_ready(pid: int) -> None:
    """Wait (up to 2 s, untimed) for a container's tini to run its child: a stop signal sent
    before tini set up its handlers is dropped (a PID 1 ignores what it does not handle),
    and the stop then waits out its whole timeout."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for _ in range(200):
        with contextlib.suppress(OSError):
            if children.read_text().strip():
                return
        time.sleep(0.01)


def lxc_leftovers(kind: str, address: str, notes: list[str]) -> None:
    """LXC 5.0 leaves the l2proxy entry of a stopped and destroyed container on lan0 (and the
    next start replaces it): noted, and removed so that every round starts alike."""
    proxies = ip("neigh", "show", "proxy").stdout.split("\n")
    if any(line.split()[:3] == [address, "dev", LAN_DEV] for line in proxies if line):
        note = f"LXC {kind} left its proxy entry {address} on {LAN_DEV} after lxc-destroy"
        if note not in notes:
            notes.append(note)
        ip("neigh", "del", "proxy", address, "dev", LAN_DEV)


def lxc_veth(config: Path, address: str) -> None:
    """A clone's config: its empty network replaced by a routed veth NIC (router mode: LXC
    routes the address to the host end and, with l2proxy, puts a proxy entry on lan0)."""
    text = config.read_text()
    empty = "lxc.net.0.type = empty\n"
    if empty not in text:
        raise BenchError(f"{config}: no '{empty.strip()}' line to replace")
    veth = (
        "lxc.net.0.type = veth\n"
        "lxc.net.0.veth.mode = router\n"
        f"lxc.net.0.link = {LAN_DEV}\n"
        "lxc.net.0.l2proxy = 1\n"
        "lxc.net.0.flags = up\n"
        f"lxc.net.0.name = {ROUTED_IF}\n"
        f"lxc.net.0.ipv4.address = {address}/32\n"
        f"lxc.net.0.ipv4.gateway = {HOST_LAN_V4}\n"
    )
    config.write_text(text.replace(empty, veth))


# --- the benchmark ------------------------------------------------------------------------

KINDS = ("address", "no address")


def bench_rounds(
    rounds: int,
    vzpkg: rt.Vzpkg,
    raw: rt.RawRunc,
    hand: HandNet,
    lxcs: Sequence[rt.Lxc],
    nets: Namespaces,
    ctid_base: int,
    notes: list[str],
) -> dict[str, list[float]]:
    """Round 0 is a warm-up (bytecode cache, page cache, first use of each tool) and is not
    counted; in it every address is pinged from the lan. The two kinds of VPS, and the runc
    runs, go in the other order every other round: neither always pays for the other."""
    times: dict[str, list[float]] = defaultdict(list)
    ctids = {"address": ctid_base + 1, "no address": ctid_base + 2}
    list_env = {**vzpkg.env, "VZPKG_NEIGHBOUR_DEVS": DEVS_LIST}

    def reachable(what: str, address: str) -> None:
        if not nets.ping_from_lan(address):
            raise BenchError(f"{what}: {address} does not answer from the lan")

    def plain(t: dict[str, list[float]], warm_up: bool) -> None:
        t["runc run -d"].append(raw.start())
        t["runc stop (no network)"].append(runc_stop(raw))
        t["runc create + start"].append(create_start(raw))
        runc_stop(raw)

    def by_hand(t: dict[str, list[float]], warm_up: bool) -> None:
        for key, value in hand.start_with_network().items():
            t[key].append(value)
        if warm_up:
            reachable("runc with the network by hand", RAW_V4)
        t["by hand: runc stop + ip teardown"].append(hand.stop_with_network())

    for round_ in range(rounds + 1):
        t: dict[str, list[float]] = defaultdict(list) if round_ == 0 else times
        for kind in KINDS if round_ % 2 else reversed(KINDS):
            checkpoint()
            ctid = str(ctids[kind])
            with_address = kind == "address"
            vzpkg.made.add(ctids[kind])
            extra = ["--ipadd", VPS_V4] if with_address else []
            t[f"vzctl create, {kind}"].append(
                vzpkg.ctl("create", ctid, "--ostemplate", TEMPLATE, *extra)
            )
            t[f"vzctl start, {kind}"].append(vzpkg.ctl("start", ctid))
            if round_ == 0 and with_address:
                reachable("vzctl's VPS", VPS_V4)
            t[f"vzctl stop, {kind}"].append(stop_vps(vzpkg, ctid, notes))
            t[f"vzctl start again, {kind}"].append(vzpkg.ctl("start", ctid))
            t[f"vzctl stop again, {kind}"].append(stop_vps(vzpkg, ctid, notes))
            if with_address:
                argv = [vzpkg.vzctl, "-q", "start", ctid]
                t["vzctl start again, address, list:lan0"].append(rt.timed(argv, list_env))
                if round_ == 0:
                    reachable("vzctl's VPS (NEIGHBOUR_DEVS=list:lan0)", VPS_V4)
                stop_vps(vzpkg, ctid, notes)
            t[f"vzctl destroy, {kind}"].append(vzpkg.destroy(ctids[kind]))

        for step in (plain, by_hand) if round_ % 2 else (by_hand, plain):
            checkpoint()
            step(t, round_ == 0)

        for lxc in lxcs:
            for net in ("empty", "veth"):
                checkpoint()
                name = f"vzbench-n{lxc.kind[0]}{net[0]}{round_}"
                key = f"{lxc.kind}, {net}"
                copy = lxc.copy(name)
                if net == "veth":
                    lxc_veth(lxc.lxcpath / name / "config", LXC_V4[lxc.kind])
                start = lxc.start(name)
                lxc_ready(lxc, name)
                if round_ == 0 and net == "veth":
                    reachable(f"LXC {lxc.kind}, veth", LXC_V4[lxc.kind])
                stop = lxc.stop(name)
                if stop > 5:
                    notes.append(
                        f"lxc-stop of {name} ({lxc.kind}, {net}) took {stop:.1f} s: the halt "
                        "signal went unanswered and LXC killed it at the timeout (-t 10)"
                    )
                destroy = lxc.destroy(name)
                if net == "veth":
                    lxc_leftovers(lxc.kind, LXC_V4[lxc.kind], notes)
                for what, value in (
                    ("lxc-copy -s -B overlay", copy),
                    ("lxc-start -d", start),
                    ("lxc-stop", stop),
                    ("lxc-destroy", destroy),
                    ("lxc cycle", copy + start + stop + destroy),
                ):
                    t[f"{what}, {key}"].append(value)
        log(
            (f"round {round_}/{rounds}: " if round_ else "warm-up round: ")
            + ", ".join(f"{k} {v[-1] * 1000:.0f}" for k, v in t.items() if "lxc" not in k)
            + " (ms)"
        )
    return times


# What the profiled start times besides its subprocesses (module, function): each span holds
# what the function runs.
SPANS = (
    ("vzpkg.ct.lifecycle", "write_guest_setup"),
    ("vzpkg.ct.guest", "render"),
    ("vzpkg.ct.guest", "_network_files"),
    ("vzpkg.ct.net", "prepare"),
    ("vzpkg.ct.net", "apply"),
    ("vzpkg.ct.net", "teardown"),
    ("vzpkg.ct.layout", "umount_ct"),
    ("vzpkg.ct.lifecycle", "remove_cgroups"),
    ("vzpkg.fsutil", "atomic_write"),
)
PROFILER = r"""
import json, os, subprocess, sys, time
T0 = time.perf_counter()
out, argv = sys.argv[1], sys.argv[2:]
calls, spans = [], {}
_run = subprocess.run
def run(*args, **kwargs):
    start = time.perf_counter()
    try:
        return _run(*args, **kwargs)
    finally:
        cmd = args[0] if args else kwargs["args"]
        calls.append([[str(a) for a in cmd], time.perf_counter() - start])
subprocess.run = run
import importlib
from vzpkg.cli.vzctl_entry import main
def wrap(module, name):
    orig = getattr(module, name)
    label = module.__name__.rpartition(".")[2] + "." + name
    def wrapped(*args, **kwargs):
        start = time.perf_counter()
        try:
            return orig(*args, **kwargs)
        finally:
            total, count = spans.get(label, (0.0, 0))
            spans[label] = (total + time.perf_counter() - start, count + 1)
    setattr(module, name, wrapped)
for module, name in SPANS:
    wrap(importlib.import_module(module), name)
T1 = time.perf_counter()
def dump():
    with open(out, "w") as f:
        json.dump({"imports": T1 - T0, "main": time.perf_counter() - T1, "calls": calls,
                   "spans": spans}, f)
_exit = os._exit
def exit_now(code):  # vzctl's short path for start/stop skips the interpreter's teardown
    dump()
    _exit(code)
os._exit = exit_now
sys.argv = ["vzctl", *argv]
try:
    main()
finally:
    dump()
"""

RUNC_VERBS = ("create", "start", "run", "state", "delete", "kill", "list", "exec")


def call_label(argv: Sequence[str]) -> str:
    """A subprocess of vzctl, named without its paths."""
    tool = os.path.basename(argv[0])
    if tool == "runc":
        verb = next((a for a in argv[1:] if a in RUNC_VERBS), "?")
        return f"runc {verb}"
    if tool == "nsenter":
        rest = argv[argv.index("--") + 1 :] if "--" in argv else argv[1:]
        return f"nsenter --net {call_label(rest)} (inside)"
    return " ".join([tool, *(a for a in argv[1:] if "/" not in a and a not in ("-", "--"))])


@dataclass
class Profile:
    """Medians over the profiled starts (ms) of: the whole command as the bench saw it, the
    imports before main(), main(), each subprocess (summed per label and start), the spans."""

    runs: int
    wall: float
    imports: float
    main: float
    calls: dict[str, float]
    call_counts: dict[str, int]
    spans: dict[str, float]
    span_counts: dict[str, int]
    subprocesses: float


class Samples:
    """The profiles of one command of one kind, run after run."""

    def __init__(self) -> None:
        self.walls: list[float] = []
        self.imports: list[float] = []
        self.mains: list[float] = []
        self.subs: list[float] = []
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.call_counts: dict[str, int] = {}
        self.spans: dict[str, list[float]] = defaultdict(list)
        self.span_counts: dict[str, int] = {}

    def add(self, wall: float, data: dict[str, Any]) -> None:
        self.walls.append(wall)
        self.imports.append(data["imports"])
        self.mains.append(data["main"])
        per: dict[str, float] = defaultdict(float)
        count: dict[str, int] = defaultdict(int)
        for call_argv, elapsed in data["calls"]:
            per[call_label(call_argv)] += elapsed
            count[call_label(call_argv)] += 1
        for label in per:
            self.calls[label].append(per[label])
            self.call_counts[label] = count[label]
        self.subs.append(sum(per.values()))
        for name, (elapsed, times) in data["spans"].items():
            self.spans[name].append(elapsed)
            self.span_counts[name] = times

    def profile(self) -> Profile:
        med = statistics.median
        return Profile(
            runs=len(self.walls),
            wall=med(self.walls),
            imports=med(self.imports),
            main=med(self.mains),
            calls={k: med(v) for k, v in self.calls.items()},
            call_counts=self.call_counts,
            spans={k: med(v) for k, v in self.spans.items()},
            span_counts=self.span_counts,
            subprocesses=med(self.subs),
        )


def bench_profile(
    runs: int, vzpkg: rt.Vzpkg, ctid_base: int, out: Path
) -> dict[tuple[str, str], Profile]:
    """vzctl start and stop of a fresh VPS of each kind, each in a fresh process that times
    what it runs (its findings in ``out``). The first run of each kind is a warm-up."""
    profiler = f"SPANS = {SPANS!r}\n{PROFILER}"
    samples: dict[tuple[str, str], Samples] = defaultdict(Samples)
    for i in range(runs + 1):
        for kind in KINDS if i % 2 else reversed(KINDS):
            checkpoint()
            ctid = ctid_base + (1 if kind == "address" else 2)
            vzpkg.made.add(ctid)
            extra = ["--ipadd", VPS_V4] if kind == "address" else []
            vzpkg.ctl("create", str(ctid), "--ostemplate", TEMPLATE, *extra)
            for command in ("start", "stop"):
                if command == "stop":
                    init_ready(vzpkg.init_pid(ctid))
                out.unlink(missing_ok=True)
                argv = [sys.executable, "-c", profiler, str(out), "-q", command, str(ctid)]
                wall = rt.timed(argv, vzpkg.env)
                if i:
                    samples[command, kind].add(wall, json.loads(out.read_text()))
            vzpkg.destroy(ctid)
    return {key: s.profile() for key, s in samples.items()}


def namespace_state() -> dict[str, str]:
    """What vzctl and the bench may add to the current network namespace."""
    state = {}
    for args in (
        ("-o", "link", "show"),
        ("-o", "addr", "show"),
        ("-4", "route", "show", "table", "all"),
        ("-6", "route", "show", "table", "all"),
        ("neigh", "show", "proxy"),
    ):
        text = rt.run(["ip", *args]).stdout
        # Address lifetimes count down by themselves.
        state["ip " + " ".join(args)] = re.sub(r"(valid|preferred)_lft \S+", "", text)
    for name in ("ipv4/ip_forward", "ipv6/conf/all/forwarding", "ipv6/conf/all/proxy_ndp"):
        with contextlib.suppress(OSError):
            state[name] = Path("/proc/sys/net", name).read_text()
    return state


def namespace_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    problems = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, ""), after.get(key, "")
        if old != new:
            added = sorted(set(new.splitlines()) - set(old.splitlines()))
            gone = sorted(set(old.splitlines()) - set(new.splitlines()))
            problems.append(f"{key} changed: added {added}, gone {gone}")
    return problems


@dataclass
class Results:
    times: dict[str, list[float]]
    profile: dict[tuple[str, str], Profile]
    cache_note: str
    members_note: str
    notes: list[str]

    def med(self, key: str) -> float:
        return statistics.median(self.times[key])

    def diff(self, a: str, b: str) -> float:
        """The median of the rounds' differences a - b (both measured in each round, one
        right after the other: slower and faster stretches of a busy host cancel out)."""
        return statistics.median(x - y for x, y in zip(self.times[a], self.times[b], strict=True))


def report(r: Results, rounds: int, versions_line: str) -> None:
    ms = 1000.0

    def row(label: str, key: str, indent: int = 2) -> None:
        values = r.times[key]
        print(
            f"{'':<{indent}}{label:<{60 - indent}} {r.med(key) * ms:>8.1f} "
            f"{min(values) * ms:>8.1f} {max(values) * ms:>8.1f}"
        )

    print(f"\n{TEMPLATE}, {rounds} rounds, medians in ms; {versions_line}")
    print(f"cache: {r.cache_note}; {r.members_note}")
    print(f"\n{'':<60} {'median':>8} {'min':>8} {'max':>8}")
    print(f"vzpkg, user namespace (the default); address {VPS_V4}, NEIGHBOUR_DEVS=all")
    for label, key in (
        (f"vzctl create --ipadd {VPS_V4}", "vzctl create, address"),
        ("vzctl create (no address)", "vzctl create, no address"),
        ("vzctl start, address (first start: renders)", "vzctl start, address"),
        ("vzctl start, no address (first start)", "vzctl start, no address"),
        ("vzctl start again, address", "vzctl start again, address"),
        ("vzctl start again, no address", "vzctl start again, no address"),
        ("vzctl start again, address, NEIGHBOUR_DEVS=list:lan0", "vzctl start again, address, "
         "list:lan0"),
        ("vzctl stop, address", "vzctl stop, address"),
        ("vzctl stop, no address", "vzctl stop, no address"),
        ("vzctl stop again, address", "vzctl stop again, address"),
        ("vzctl stop again, no address", "vzctl stop again, no address"),
        ("vzctl destroy, address", "vzctl destroy, address"),
        ("vzctl destroy, no address", "vzctl destroy, no address"),
    ):  # fmt: skip
        row(label, key)
    print("runc by hand (runc spec's config: same root, same init, a new network namespace)")
    for label, key, indent in (
        ("runc run -d (no network)", "runc run -d", 2),
        ("runc kill TERM, wait, runc delete (no network)", "runc stop (no network)", 2),
        ("runc create + runc start (no network)", "runc create + start", 2),
        (f"runc create + network by hand + runc start ({RAW_V4})",
         "by hand: runc create + network + start", 2),
        ("runc create --pid-file", "by hand: runc create", 4),
        ("ip -batch on the host (veth, addresses, route, proxy)",
         "by hand: ip -batch on the host", 4),
        ("nsenter --net ip -batch inside (up, address, routes)",
         "by hand: nsenter ip -batch inside", 4),
        ("runc start", "by hand: runc start", 4),
        ("the same + ip -batch (proxy, veth)", "by hand: runc stop + ip teardown", 2),
    ):  # fmt: skip
        row(label, key, indent)
    for kind in ("privileged", "unprivileged"):
        print(f"lxc, {kind} (same tree, same init); veth: router mode, {LXC_V4[kind]}")
        for what in ("lxc-copy -s -B overlay", "lxc-start -d", "lxc-stop", "lxc-destroy"):
            for net in ("empty", "veth"):
                row(f"{what}, {net}", f"{what}, {kind}, {net}")
        for net in ("empty", "veth"):
            row(f"create-to-destroy cycle (the four), {net}", f"lxc cycle, {kind}, {net}")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    def line(label: str, value: str, note: str = "") -> None:
        print(f"  {label:<56} {value:>9}  {note}".rstrip())

    start_addr, start_none = r.med("vzctl start, address"), r.med("vzctl start, no address")
    again_addr, again_none = (
        r.med("vzctl start again, address"),
        r.med("vzctl start again, no address"),
    )
    hand = r.med("by hand: runc create + network + start")
    print(
        "\ngoals (issue 10), of a VPS with a user namespace (the default); a - b: the median "
        "of the rounds' differences"
    )
    net_part = r.diff("vzctl start, address", "vzctl start, no address") * ms
    line(
        "vzctl start: address - no address",
        f"{net_part:.1f} ms",
        f"goal <= {GOAL_NETWORK_MS:.0f} ms: {verdict(net_part <= GOAL_NETWORK_MS)} "
        f"({start_addr * ms:.1f} vs {start_none * ms:.1f} ms)",
    )
    again_part = r.diff("vzctl start again, address", "vzctl start again, no address") * ms
    line(
        "  the same, VPSs started before",
        f"{again_part:.1f} ms",
        f"goal <= {GOAL_NETWORK_MS:.0f} ms: {verdict(again_part <= GOAL_NETWORK_MS)} "
        f"({again_addr * ms:.1f} vs {again_none * ms:.1f} ms)",
    )
    ratio = start_addr / hand
    line(
        "vzctl start, address / runc + network by hand",
        f"{ratio:.2f}",
        f"goal <= {GOAL_HAND_RATIO}: {verdict(ratio <= GOAL_HAND_RATIO)} "
        f"({start_addr * ms:.1f} vs {hand * ms:.1f} ms)",
    )
    again_ratio = again_addr / hand
    line(
        "  the same, a VPS started before",
        f"{again_ratio:.2f}",
        f"goal <= {GOAL_HAND_RATIO}: {verdict(again_ratio <= GOAL_HAND_RATIO)} "
        f"({again_addr * ms:.1f} ms)",
    )

    print("\nother figures (a - b: the median of the rounds' differences)")
    by_hand_net = r.diff("by hand: runc create + network + start", "runc run -d") * ms
    line(
        "network by hand: its start - runc run -d",
        f"{by_hand_net:.1f} ms",
        "- runc create + start: "
        f"{r.diff('by hand: runc create + network + start', 'runc create + start') * ms:.1f} ms",
    )
    line(
        "vzctl's network part / the one by hand",
        f"{net_part / by_hand_net:.2f}" if by_hand_net > 0 else "nan",
        "(start address - no address) / (by hand - runc run -d)",
    )
    line("vzctl start, no address / runc run -d", f"{start_none / r.med('runc run -d'):.2f}")
    listed = r.diff("vzctl start again, address", "vzctl start again, address, list:lan0")
    line(
        "start again, address: NEIGHBOUR_DEVS all - list:lan0",
        f"{listed * ms:.1f} ms",
        "(device detection: ip -j addr show)",
    )
    stop_diff = r.diff("vzctl stop, address", "vzctl stop, no address")
    stop_again = r.diff("vzctl stop again, address", "vzctl stop again, no address")
    line(
        "vzctl stop: address - no address",
        f"{stop_diff * ms:.1f} ms",
        f"stop again: {stop_again * ms:.1f} ms",
    )
    line(
        "stop by hand: network - none",
        f"{r.diff('by hand: runc stop + ip teardown', 'runc stop (no network)') * ms:.1f} ms",
    )
    line(
        "vzctl stop, address / stop by hand with the network",
        f"{r.med('vzctl stop, address') / r.med('by hand: runc stop + ip teardown'):.2f}",
    )
    steps = ("create", "start", "stop", "destroy")
    cycle = {kind: sum(r.med(f"vzctl {what}, {kind}") for what in steps) for kind in KINDS}
    line(
        "vzctl create-to-destroy, address (sum of medians)",
        f"{cycle['address'] * ms:.1f} ms",
        f"no address: {cycle['no address'] * ms:.1f} ms",
    )
    for kind in ("privileged", "unprivileged"):
        veth = r.diff(f"lxc cycle, {kind}, veth", f"lxc cycle, {kind}, empty")
        start = r.diff(f"lxc-start -d, {kind}, veth", f"lxc-start -d, {kind}, empty")
        line(
            f"lxc {kind}: cycle veth - empty",
            f"{veth * ms:.1f} ms",
            f"lxc-start: {start * ms:.1f} ms",
        )
        line(
            f"vzctl start, address / lxc-start -d veth, {kind}",
            f"{start_addr / r.med(f'lxc-start -d, {kind}, veth'):.2f}",
        )

    def cell(v: float | None) -> str:
        return f"{v * ms:>9.1f}" if v is not None else f"{'-':>9}"

    def prow(label: str, a: float | None, b: float | None) -> None:
        print(f"  {label:<56} {cell(a)} {cell(b)}")

    def times(label: str, *counts: dict[str, int]) -> str:
        found = sorted({c.get(label, 0) for c in counts} - {0})
        return "/".join(str(n) for n in found)

    for command in ("start", "stop"):
        addr, none = r.profile[command, "address"], r.profile[command, "no address"]
        print(
            f"\nwhere the time of vzctl {command} goes (a fresh VPS, a fresh process timing its "
            f"subprocesses; medians of {addr.runs}, ms)"
        )
        print(f"  {'':<56} {'address':>9} {'no addr.':>9}")
        prow("the command, as the bench sees it", addr.wall, none.wall)
        prow(
            "  interpreter start and exit",
            addr.wall - addr.imports - addr.main,
            none.wall - none.imports - none.main,
        )
        prow("  imports before main() (vzctl_entry, the spans')", addr.imports, none.imports)
        prow("  main()", addr.main, none.main)
        prow("    of which subprocesses", addr.subprocesses, none.subprocesses)
        for label in sorted(
            set(addr.calls) | set(none.calls),
            key=lambda k: -max(addr.calls.get(k, 0), none.calls.get(k, 0)),
        ):
            n = times(label, addr.call_counts, none.call_counts)
            prow(f"      {label} (x{n})", addr.calls.get(label), none.calls.get(label))
        print("    spans (each with what it runs):")
        for module, name in SPANS:
            label = f"{module.rpartition('.')[2]}.{name}"
            if label in addr.spans or label in none.spans:
                n = times(label, addr.span_counts, none.span_counts)
                prow(f"      {label} (x{n})", addr.spans.get(label), none.spans.get(label))
    if r.notes:
        print("notes: " + "; ".join(r.notes))


# --- inside the bench's network namespace -------------------------------------------------


def netns_id(path: str = "/proc/self/ns/net") -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def check_namespace(nets: Namespaces, outer: str) -> None:
    """Refuse to run anywhere but in the bench's own host namespace (``outer``: the one the
    bench was started in, the machine's)."""
    own = netns_id()
    if own == outer:
        raise SystemExit("bench: refusing to run in the network namespace it was started in")
    if own != netns_id(nets.path(nets.host)):
        raise SystemExit(f"bench: not in the network namespace {nets.host}")
    if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "1":
        raise SystemExit(f"bench: net.ipv4.ip_forward is not 1 in {nets.host}")


def settle_dad() -> None:
    """Wait (up to 5 s) for lan0's link-local address to leave duplicate address detection:
    the namespace's state is taken after, for the comparison at the end."""
    for _ in range(50):
        if not ip("-6", "addr", "show", "tentative").stdout.strip():
            return
        time.sleep(0.1)


def inside(args: argparse.Namespace, nets: Namespaces, outer: str) -> int:
    check_namespace(nets, outer)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    pool = parse_pool(args.userns_pool)
    vzpkg_pool, lxc_block = (pool[0], pool[1] - BLOCK), pool[0] + pool[1] - BLOCK
    notes = list(args.note)
    links_before = set(os.listdir("/sys/class/net"))
    pivots_before = rt.lxc_pivots()
    settle_dad()
    ns_before = namespace_state()
    base = Path(tempfile.mkdtemp(prefix="vzpkg-bench-net-"))
    base.chmod(0o755)
    vzpkg: rt.Vzpkg | None = None
    raw: rt.RawRunc | None = None
    hand: HandNet | None = None
    lxc: rt.Lxc | None = None
    lxc_unpriv: rt.Lxc | None = None
    cgroups = [RAW_ID, RAW_NET_ID]
    failed = True
    problems: list[str] = []
    try:
        vzpkg = NetVzpkg(base, base / "cache", vzpkg_pool)
        with vzpkg.conf.open("a") as conf:
            conf.write('NEIGHBOUR_DEVS="all"\n')
        # Only the host config's values: none of the caller's VZPKG_* overrides.
        vzpkg.env = {
            k: v for k, v in vzpkg.env.items() if not k.startswith("VZPKG_") or k == "VZPKG_CONF"
        }
        cgroups.append(cgroup_parent(vzpkg.host()))
        (base / "cache").mkdir()
        archive, sha, cache_note = rt.obtain_cache(base, vzpkg, args.build_cache, args.cache_from)
        rootfs = base / "runc-bundle" / "rootfs"
        rootfs.mkdir(parents=True)
        checkpoint()
        unpacked = unpack_archive(archive, rootfs)
        members_note = (
            f"sha256 {sha[:12]}, {unpacked.members} members, "
            f"{unpacked.uncompressed_size / 2**20:.1f} MiB as tar"
        )
        init = detect_init(rootfs)
        if init.kind != "tini":
            raise BenchError(f"{TEMPLATE} has an init of its own ({init.kind}): expected none")
        config = rt.spec_config(rootfs, init.argv)
        raw = rt.RawRunc(base, rootfs.parent, RAW_ID)
        raw.configure(json.loads(json.dumps(config)))
        hand = HandNet(base, base / "runc-hand", RAW_NET_ID, RAW_V4)
        hand.configure(config)
        lxc = rt.Lxc(base / "lxc", init.argv, None)
        checkpoint()
        lxc.make_base(archive)
        lxc_unpriv = rt.Lxc(base / "lxc-u", init.argv, lxc_block)
        checkpoint()
        lxc_unpriv.make_base(archive)
        # The anchor keeps the overlay tree for the whole run: every timed create finds it.
        vzpkg.made.add(args.ctid_base)
        checkpoint()
        vzpkg.ctl("create", str(args.ctid_base), "--ostemplate", TEMPLATE)
        times = bench_rounds(
            args.rounds, vzpkg, raw, hand, [lxc, lxc_unpriv], nets, args.ctid_base, notes
        )
        log("profiling vzctl start and stop")
        profile = bench_profile(args.rounds, vzpkg, args.ctid_base, base / "profile.json")
        results = Results(times, profile, cache_note, members_note, notes)
        versions_line = rt.versions() + ", " + rt.run(["ip", "-V"]).stdout.strip()
        failed = False
    except (BenchError, VzError) as e:  # VzError: of vzpkg's own code run in-process (unpack)
        log("interrupted" if STOP else str(e))  # a ^C ends the command running too
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        with rt.signals_ignored():
            log("cleaning up")
            parts = [hand, raw, vzpkg, lxc, lxc_unpriv]
            problems = rt.cleanup([base], links_before, parts, cgroups, pivots_before)
            for kind, address in LXC_V4.items():  # what LXC leaves of an interrupted cycle
                with contextlib.suppress(BenchError):
                    lxc_leftovers(kind, address, notes)
            problems += [
                f"in {nets.host}: {p}" for p in namespace_changes(ns_before, namespace_state())
            ]
        for problem in problems:
            log(f"NOT CLEAN: {problem}")
    if failed:
        return 1
    report(results, args.rounds, versions_line)
    return 1 if problems else 0


# --- outside: the namespaces, and the machine's network before and after ------------------


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return rt.run(["ip", *args], check=check)


def make_namespaces(nets: Namespaces, made: list[str]) -> None:
    """The two namespaces (``made``: those made so far, for the cleanup) and the lan."""
    for name in (nets.host, nets.lan):
        if (NETNS_DIR / name).exists():
            raise BenchError(f"network namespace {name} exists already: not ours to use")
    for name in (nets.host, nets.lan):
        made.append(name)
        ip("netns", "add", name)
    # Forwarding (the VPSs' traffic to the lan) in the bench's host namespace only.
    rt.run(["nsenter", f"--net={nets.path(nets.host)}", "--", "sysctl", "-qw",
            "net.ipv4.ip_forward=1"])  # fmt: skip
    ip("link", "add", LAN_DEV, "netns", nets.host, "type", "veth", "peer", "name",
       LAN_PEER_DEV, "netns", nets.lan)  # fmt: skip
    for ns, dev, address in ((nets.host, LAN_DEV, HOST_LAN_V4), (nets.lan, LAN_PEER_DEV, LAN_V4)):
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
        ip("-n", ns, "link", "set", dev, "up")


def delete_namespaces(made: Sequence[str]) -> list[str]:
    problems = []
    for name in made:
        if (NETNS_DIR / name).exists():
            proc = ip("netns", "del", name, check=False)
            if proc.returncode != 0:
                problems.append(f"ip netns del {name}: {proc.stderr.strip()}")
    return problems


def subid_note(pool: tuple[int, int]) -> str | None:
    """Whether /etc/subuid and /etc/subgid reserve the pool for root (vzctl create adds the
    line when they do not, and refuses a pool that overlaps someone else's range)."""
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        ranges = []
        with contextlib.suppress(FileNotFoundError):
            for text in path.read_text().splitlines():
                parts = text.strip().split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    ranges.append((parts[0], int(parts[1]), int(parts[2])))
        end = pool[0] + pool[1]
        if any(o == "root" and s <= pool[0] and end <= s + c for o, s, c in ranges):
            continue
        clash = [r for r in ranges if r[1] < end and pool[0] < r[1] + r[2]]
        if clash:
            raise SystemExit(
                f"bench: --userns-pool {pool[0]}:{pool[1]} overlaps {path}'s entry "
                f"{':'.join(map(str, clash[0]))}: choose another"
            )
        return f"vzctl create reserves the pool in {path} (root:{pool[0]}:{pool[1]})"
    return None


def parse_pool(text: str) -> tuple[int, int]:
    base, _, size = text.partition(":")
    return int(base), int(size)


def outside(args: argparse.Namespace) -> int:
    """Make the namespaces, run the bench in them, delete them; compare the machine's
    network namespace before and after."""
    notes = []
    if shutil.which("lxc-start") is None:
        notes += rt.ensure_lxc()
    note = subid_note(parse_pool(args.userns_pool))
    if note:
        notes.append(note)
    before = namespace_state()
    nets = Namespaces(f"vzbench-host-{os.getpid()}", f"vzbench-lan-{os.getpid()}")
    child: subprocess.Popen[bytes] | None = None
    made: list[str] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        STOP.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    # ^C reaches the run inside too (same process group): it cleans up, and this one waits
    # for it. A handler, not SIG_IGN: that would be inherited and keep ^C from the run inside.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, forward)
    code = 1
    problems = []
    try:
        make_namespaces(nets, made)
        env = {**os.environ, NETNS_ENV: f"{nets.host},{nets.lan},{netns_id()}"}
        argv = [
            "nsenter", f"--net={nets.path(nets.host)}", "--",
            sys.executable, str(Path(__file__).resolve()), *sys.argv[1:],
            *(f"--note={n}" for n in notes),
        ]  # fmt: skip
        if not STOP:
            child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
            if signal.SIGTERM in STOP:  # came before child was set: forward it now
                child.send_signal(signal.SIGTERM)
            code = child.wait()
        else:
            log("interrupted")
    except BenchError as e:
        log(str(e))
    finally:
        with rt.signals_ignored():
            if child is not None and child.poll() is None:
                child.wait()
            problems = delete_namespaces(made)
            problems += [
                f"the machine's network namespace: {p}"
                for p in namespace_changes(before, namespace_state())
            ]
    for problem in problems:
        log(f"NOT CLEAN: {problem}")
    return code or (1 if problems else 0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    rt.add_cache_options(parser)
    parser.add_argument(
        "--ctid-base",
        type=int,
        default=CTID_BASE,
        help=f"the CTIDs used: this one and the two after it (default {CTID_BASE})",
    )
    parser.add_argument(
        "--userns-pool",
        default=f"{POOL_BASE}:{POOL_SIZE}",
        metavar="BASE:SIZE",
        help="host ids for the run's user namespaces (multiples of 65536): vzpkg's pool, "
        "but for its last block, which is LXC's (default %(default)s)",
    )
    # Notes of the run outside (what it installed or found) for the report inside.
    parser.add_argument("--note", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        pool = parse_pool(args.userns_pool)
    except ValueError:
        parser.error("--userns-pool: expected BASE:SIZE")
    if pool[0] <= 0 or pool[0] % BLOCK or pool[1] % BLOCK or pool[1] < 2 * BLOCK:
        parser.error("--userns-pool: BASE and SIZE must be multiples of 65536, SIZE two or more")
    if not 0 < args.ctid_base <= 2**31 - 1 - 2:
        parser.error("--ctid-base: out of range")
    if os.geteuid() != 0:
        sys.exit("bench: run as root (vzctl, runc, ip and LXC need it)")
    for tool in ("runc", "zstd", "tar", "umount", "ip", "nsenter", "sysctl"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is missing")
    if not rt.HOST_TINI.is_file():
        sys.exit(f"bench: {rt.HOST_TINI} is missing (apt-get install tini)")
    namespaces = os.environ.get(NETNS_ENV)
    if namespaces:
        host, lan, outer = namespaces.split(",")
        sys.exit(inside(args, Namespaces(host, lan), outer))
    sys.exit(outside(args))


if __name__ == "__main__":
    main()
