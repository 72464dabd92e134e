#!/usr/bin/env python3
"""Benchmark: vzpkg install into a running VPS against apt-get run by hand inside a VPS with a
network of its own, and the second VPS of a template against the first: one run, one tree.

    sudo .venv/bin/python bench/packages.py [--rounds 3] [--package hello] [--ctid-base 76100]
        [--userns-pool BASE:SIZE] [--cache-from DIR] [--build-cache]

As bench/runtime.py does it (whose runners it uses): one cache of debian-12-x86_64-minimal (a
verified copy of the checkout's caches/ one, or one built with vzpkgcache) under a temp dir, a
host config of its own (VZPKG_CONF, its own PKGCACHE_DIR), CTIDs from --ctid-base on. Three
VPSs run: A and B take packages from vzpkg, C is the one "with its own network".

C's network: the bench adds nothing to any network namespace's addresses or routes. It opens a
listening socket on 127.0.0.1:3142 inside C's network namespace (setns, socket, setns back) and
relays each connection from the host's namespace to the mirror host the request names: an HTTP
proxy for C's apt-get (Acquire::http::Proxy), reaching the same mirror the host's apt uses, as a
VPS with its own route to it would. The relay costs C a loopback hop per connection; the mirror's
own time dominates.

Measures, as medians over the rounds after a warm-up round (the real CLIs, fresh processes):
  by hand, cold    vzctl exec2 C 'apt-get update && apt-get install -y PKG' (C has no lists:
                   the cache ships none)
  by hand, warm    vzctl exec2 C 'apt-get install -y PKG' with C's lists in place, the package
                   not downloaded yet
  vzpkg, cold      vzpkg install A PKG with the template's shared cache empty (no lists, no
                   package): the first VPS of a template on a host
  vzpkg, warm      vzpkg install A PKG with the shared lists fresh, the package not fetched yet
  vzpkg, second    vzpkg install B PKG right after A's: the shared cache has everything
Between measurements, untimed: the package is purged in the VPS (and apt-get clean in C; C's
lists and the shared cache emptied for the cold ones).

Goals (issue 12): vzpkg install <= 1.2 x apt-get install by hand in the same kind of VPS (cold
against cold: the first install in a VPS from a cache, with its lists; warm against warm is
printed beside it), the second VPS's install <= 0.5 x the first's (cold).

Everything is stopped, destroyed, unmounted and removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import urllib.parse
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runtime as rt

from vzpkg import syscalls
from vzpkg.pkgmgr.apt import find_host_mirror, host_apt_sources

CTID_BASE = 76100  # far from the tests' CTIDs and the other benches'
POOL_BASE = rt.POOL_BASE + (1 << 22)  # after bench/runtime.py's block of ids
POOL_SIZE = 1 << 20
PROXY_PORT = 3142
PROXY = f"http://127.0.0.1:{PROXY_PORT}/"
CLONE_NEWNET = 0x40000000
GOAL_RATIO = 1.2  # vzpkg install / apt-get install by hand
GOAL_SECOND = 0.5  # the second VPS's vzpkg install / the first's
TEMPLATE_KEY = "debian-12-x86_64"  # the shared cache's name (PKGCACHE_DIR/<os>-<ver>-<arch>)


class Relay:
    """A listening socket inside a VPS's network namespace; each connection relayed, from the
    host's namespace, to the host named by its first request (an absolute-form HTTP proxy
    request, as apt sends to a proxy)."""

    def __init__(self, init_pid: int) -> None:
        own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        theirs = os.open(f"/proc/{init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.setns(theirs, CLONE_NEWNET)
            try:
                self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self.listener.bind(("127.0.0.1", PROXY_PORT))
                self.listener.listen(64)
            finally:
                syscalls.setns(own, CLONE_NEWNET)
        finally:
            os.close(own)
            os.close(theirs)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n" not in head and len(head) < 65536:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            target = urllib.parse.urlsplit(head.split(b" ", 2)[1].decode())
            try:
                upstream = socket.create_connection((target.hostname, target.port or 80), 30)
            except OSError:
                return
            with upstream:
                upstream.sendall(head)
                pair = {client: upstream, upstream: client}
                while True:
                    ready, _, _ = select.select(list(pair), [], [], 60)
                    if not ready:
                        return
                    for side in ready:
                        data = side.recv(262144)
                        if not data:
                            return
                        pair[side].sendall(data)

    def close(self) -> None:
        self.closed = True
        self.listener.close()


class Bench:
    def __init__(self, vz: rt.Vzpkg, ctids: tuple[int, int, int], package: str) -> None:
        self.vz = vz
        self.a, self.b, self.c = ctids
        self.package = package
        self.vzpkg = str(rt.BIN / "vzpkg")
        self.shared = vz.base / "pkgcache"

    def pkg(self, ctid: int, *args: str) -> float:
        return rt.timed([self.vzpkg, "install", "-q", str(ctid), *args], self.vz.env)

    def inside(self, ctid: int, command: str) -> float:
        return rt.timed([self.vz.vzctl, "exec2", str(ctid), command], self.vz.env)

    def purge(self, ctid: int) -> None:
        self.inside(ctid, f"dpkg --purge {self.package} >/dev/null && apt-get clean")

    def empty_shared(self, *, lists: bool) -> None:
        for deb in (self.shared / TEMPLATE_KEY).glob(f"{self.package}_*.deb"):
            deb.unlink()
        if lists:
            shutil.rmtree(self.shared / f"{TEMPLATE_KEY}.apt", ignore_errors=True)

    def by_hand(self, *, update: bool) -> float:
        apt = f"apt-get -q -o Acquire::http::Proxy={PROXY}"
        install = f"{apt} install -y {self.package} >/dev/null"
        if update:
            self.inside(self.c, "rm -rf /var/lib/apt/lists/*")
            return self.inside(self.c, f"{apt} update >/dev/null && {install}")
        return self.inside(self.c, install)

    def round(self, times: dict[str, list[float]]) -> None:
        steps: list[tuple[str, Callable[[], float]]] = [
            ("by hand, cold", lambda: self.by_hand(update=True)),
            ("by hand, warm", lambda: self.by_hand(update=False)),
        ]
        for name, step in steps:
            self.purge(self.c)
            times[name].append(step())
        for ctid in (self.a, self.b):
            self.purge(ctid)
        self.empty_shared(lists=True)
        times["vzpkg, cold"].append(self.pkg(self.a, self.package))
        times["vzpkg, second"].append(self.pkg(self.b, self.package))
        self.purge(self.a)
        self.empty_shared(lists=False)
        times["vzpkg, warm"].append(self.pkg(self.a, self.package))


def report(times: dict[str, list[float]], rounds: int, package: str) -> bool:
    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"\n# packages into a running VPS: {package}, median of {rounds} rounds (seconds)\n")
    print("| | time | runs |")
    print("|---|---|---|")
    for name in ("by hand, cold", "by hand, warm", "vzpkg, cold", "vzpkg, warm", "vzpkg, second"):
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"| {name} | {med[name]:.2f} | {runs} |")
    cold = med["vzpkg, cold"] / med["by hand, cold"]
    warm = med["vzpkg, warm"] / med["by hand, warm"]
    second = med["vzpkg, second"] / med["vzpkg, cold"]
    second_warm = med["vzpkg, second"] / med["vzpkg, warm"]
    print()
    print(f"vzpkg install / by hand, cold (goal <= {GOAL_RATIO}): {cold:.2f}x "
          f"{'met' if cold <= GOAL_RATIO else 'MISSED'}")  # fmt: skip
    print(f"vzpkg install / by hand, warm (lists in place on both sides): {warm:.2f}x")
    print(f"second VPS / first, cold (goal <= {GOAL_SECOND}): {second:.2f}x "
          f"{'met' if second <= GOAL_SECOND else 'MISSED'}")  # fmt: skip
    print(f"second VPS / first, warm (only the package to fetch): {second_warm:.2f}x")
    return cold <= GOAL_RATIO and second <= GOAL_SECOND


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--package", default="hello")
    parser.add_argument("--ctid-base", type=int, default=CTID_BASE)
    parser.add_argument("--userns-pool", default=f"{POOL_BASE}:{POOL_SIZE}", metavar="BASE:SIZE")
    rt.add_cache_options(parser)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root")
    if not find_host_mirror(host_apt_sources(), ["bookworm"]):
        sys.exit("bench: the host's apt sources name no bookworm mirror")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    links = set(os.listdir("/sys/class/net"))
    base = Path(tempfile.mkdtemp(prefix="vzbench-pkg."))
    os.chmod(base, 0o755)
    pool_base, pool_size = (int(x) for x in args.userns_pool.split(":"))
    vz = rt.Vzpkg(base, base / "cache", (pool_base, pool_size))
    relay: Relay | None = None
    ok = False
    try:
        (base / "cache").mkdir()
        _, _, origin = rt.obtain_cache(base, vz, args.build_cache, args.cache_from)
        rt.log(f"cache {origin}")
        ctids = (args.ctid_base, args.ctid_base + 1, args.ctid_base + 2)
        for ctid in ctids:
            vz.create(ctid, "overlay")
            vz.ctl("start", str(ctid))
        relay = Relay(vz.init_pid(ctids[2]))
        bench = Bench(vz, ctids, args.package)
        times: dict[str, list[float]] = defaultdict(list)
        rt.log("warm-up round")
        bench.round(defaultdict(list))
        for n in range(args.rounds):
            rt.log(f"round {n + 1} of {args.rounds}")
            bench.round(times)
        ok = report(times, args.rounds, args.package)
    except rt.BenchError as e:
        rt.log(str(e))
    except KeyboardInterrupt:
        rt.log("interrupted")
    finally:
        with rt.signals_ignored():
            if relay is not None:
                relay.close()
            with contextlib.suppress(Exception):
                vz.cleanup()
            for problem in rt.cleanup([base], links, [], [], set()):
                rt.log(problem)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
