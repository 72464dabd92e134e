"""Network namespaces for the tests: a "host" namespace that vzctl runs in (nsenter --net: the
mount namespace stays the machine's, so VPS mounts are where vzctl expects them) and a "lan"
namespace joined to it by a veth pair, on documentation addresses only.

Nothing is added to the machine's own network namespace: every route, veth and proxy entry of
a test VPS lives in the test host namespace, and goes with it when the namespace is deleted.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HOST_LAN_V4, LAN_V4 = "198.51.100.1", "198.51.100.2"  # /24
HOST_LAN_V6, LAN_V6 = "2001:db8:51::1", "2001:db8:51::2"  # /64
LAN_DEV = "lan0"  # the test host's device towards the lan
NETNS_DIR = Path("/run/netns")


def _ip(
    *args: str, netns: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *args] if netns is None else ["ip", "-n", netns, *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@dataclass
class NetLab:
    host_ns: str
    lan_ns: str

    @property
    def host_path(self) -> str:
        return str(NETNS_DIR / self.host_ns)

    def in_host(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A host tool run in the test host's network namespace."""
        return in_netns(self.host_ns, argv, timeout)

    def in_lan(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A host tool run in the lan's network namespace."""
        return in_netns(self.lan_ns, argv, timeout)

    def sysctl(self, name: str, value: str) -> None:
        """A sysctl of the test host's namespace (never the machine's)."""
        proc = self.in_host("sysctl", "-qw", f"{name}={value}")
        assert proc.returncode == 0, proc.stderr

    def host_objects(self) -> dict[str, list[str]]:
        """What vzctl may add to a host, as ip lists it: links, routes, proxy entries."""
        return snapshot(self.host_ns)


def in_netns(
    netns: str, argv: Sequence[str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={NETNS_DIR / netns}", "--", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def snapshot(netns: str | None = None) -> dict[str, list[str]]:
    def lines(*args: str) -> list[str]:
        return sorted(_ip(*args, netns=netns).stdout.splitlines())

    return {
        "links": sorted(
            line.split(":")[1].strip().split("@")[0] for line in lines("-o", "link", "show")
        ),
        "routes4": lines("-4", "route", "show", "table", "all"),
        "routes6": [r for r in lines("-6", "route", "show", "table", "all") if "fe80::" not in r],
        "proxies": lines("neigh", "show", "proxy"),
        "rules": lines("-4", "rule", "show") + lines("-6", "rule", "show"),
        "addresses": sorted(" ".join(line.split()[1:4]) for line in lines("-o", "addr", "show")),
    }


def make(tag: str) -> NetLab:
    net = NetLab(f"vzt-host-{tag}", f"vzt-lan-{tag}")
    remove(net)  # a namespace a killed run left
    _ip("netns", "add", net.host_ns)
    _ip("netns", "add", net.lan_ns)
    _ip("link", "add", LAN_DEV, "netns", net.host_ns, "type", "veth", "peer", "name", "eth0",
        "netns", net.lan_ns)  # fmt: skip
    for ns, dev, v4, v6 in (
        (net.host_ns, LAN_DEV, HOST_LAN_V4, HOST_LAN_V6),
        (net.lan_ns, "eth0", LAN_V4, LAN_V6),
    ):
        _ip("link", "set", "lo", "up", netns=ns)
        _ip("addr", "add", f"{v4}/24", "dev", dev, netns=ns)
        _ip("-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad", netns=ns)
        _ip("link", "set", dev, "up", netns=ns)
    for name in (
        "net.ipv4.ip_forward",
        "net.ipv6.conf.all.forwarding",
        "net.ipv6.conf.all.proxy_ndp",
    ):
        net.sysctl(name, "1")
    return net


def remove(net: NetLab) -> None:
    """Delete both namespaces: what a VPS's network left in them goes too."""
    for ns in (net.host_ns, net.lan_ns):
        if (NETNS_DIR / ns).exists():
            _ip("netns", "del", ns, check=False)
