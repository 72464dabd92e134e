"""A running VPS's network, made on a stock kernel with veth pairs and routes (docs/networking.md).

Routed mode (OpenVZ's venet, ``IP_ADDRESS``): one veth pair, host end ``venet0.<CTID>``, guest
end ``venet0`` holding the VPS's addresses (/32, /128), default routes through a link-local
gateway on the host end (169.254.0.1, fe80::1, onlink); on the host one route per address,
proxy ARP/NDP entries on the NEIGHBOUR_DEVS, and rp_filter on the host end so that the VPS
cannot send from an address it was not given. Bridged mode (``NETIF``): one veth pair per
interface, the host end joined to a bridge when one is named.

Everything is done with the host's own ``ip`` (``ip -batch``: one process per namespace), the
guest side through ``nsenter --net`` only: no binary of the VPS runs. What is added on the host
is written to ``RUN_DIR/net/CTID.json`` before it is added, so a crash at any point leaves a
record that ``teardown`` removes (it is harmless to repeat). Routes and the gateway addresses
go with their veth; the proxy entries, on devices of the host, are removed one by one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vzpkg import fsutil, run
from vzpkg.ct.netconf import ROUTED_IF, NeighbourDevs, Netif, generated_mac, routed_host_ifname
from vzpkg.errors import ExitCode, VzError

log = logging.getLogger("vzpkg")

GATEWAY4 = "169.254.0.1"
GATEWAY6 = "fe80::1"
STATE_SUBDIR = "net"
_OUR_HOST_ENDS = re.compile(r"(venet0\.[0-9]+|vzn[0-9]+|veth[0-9]+\.[0-9]+)")
_SYSCTL = Path("/proc/sys/net")  # the current network namespace's (not the machine's /sys)
DOCS = "docs/networking.md"


def address_of(entry: str) -> str:
    """An IP_ADDRESS entry's address: routed mode gives each address alone (/32, /128); a
    prefix written with it is kept in CTID.conf and not used here."""
    return entry.partition("/")[0]


def is_v6(address: str) -> bool:
    return ":" in address


@dataclass
class NetState:
    """What is on the host for one VPS (the state file). ``links``: host ends we made, with
    the ifindex they got (a name reused by someone else later is not ours to delete)."""

    netns: str = ""
    links: dict[str, int] = field(default_factory=dict)
    proxies: list[tuple[str, str]] = field(default_factory=list)  # (address, device)
    addresses: list[str] = field(default_factory=list)  # routed addresses in the VPS
    netifs: list[str] = field(default_factory=list)  # NETIF entries in the VPS
    routed: str | None = None  # the routed host end, once made
    rules: list[str] = field(default_factory=list)  # IPv6 policy rules (after "rule add")

    def to_json(self) -> bytes:
        data = {
            "netns": self.netns,
            "links": self.links,
            "proxies": [list(p) for p in self.proxies],
            "addresses": self.addresses,
            "netifs": self.netifs,
            "routed": self.routed,
            "rules": self.rules,
        }
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: Any) -> NetState:
        return cls(
            netns=str(data.get("netns", "")),
            links={str(k): int(v) for k, v in dict(data.get("links", {})).items()},
            proxies=[(str(a), str(d)) for a, d in data.get("proxies", [])],
            addresses=[str(a) for a in data.get("addresses", [])],
            netifs=[str(n) for n in data.get("netifs", [])],
            routed=data.get("routed") or None,
            rules=[str(r) for r in data.get("rules", [])],
        )


def host_lock(lock_dir: Path) -> contextlib.AbstractContextManager[Path]:
    """The lock every change of a VPS's network takes (after the VPS's own): address checks
    and the changes they allow are one step, host-wide."""
    from vzpkg import lock

    return lock.locked(
        lock_dir, "network", timeout=60, what="the host's VPS network", hint="try again"
    )


def state_path(run_dir: Path, ctid: int) -> Path:
    return run_dir / STATE_SUBDIR / f"{ctid}.json"


def load_state(run_dir: Path, ctid: int) -> NetState | None:
    try:
        return NetState.from_json(json.loads(state_path(run_dir, ctid).read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as e:
        log.warning(
            "CT %s: unreadable network state %s (%s): ignored", ctid, state_path(run_dir, ctid), e
        )
        return None


def _save_state(run_dir: Path, ctid: int, state: NetState) -> None:
    """Write the record: a temp file renamed over it (a killed vzctl leaves the old record or
    the new one). Not fsynced: RUN_DIR is runtime state, which a reboot clears anyway."""
    path = state_path(run_dir, ctid)
    tmp = path.with_name(f".{path.name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileNotFoundError:
        fsutil.makedirs_mode(path.parent, 0o700)
        fd = os.open(tmp, flags, 0o600)
    try:
        fsutil.write_all(fd, state.to_json())
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _drop_state(run_dir: Path, ctid: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path(run_dir, ctid))


def _netns_id(path: str = "/proc/self/ns/net") -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def _ifindex(name: str) -> int | None:
    """The interface's index in our network namespace (an ioctl there: /sys would show the
    namespace sysfs was mounted in), None when there is none."""
    import socket  # lazy: a start without network never asks

    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def _sysctl(rel: str) -> str | None:
    try:
        return (_SYSCTL / rel).read_text().strip()
    except OSError:
        return None


# --- checks, before anything changes --------------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    """What a VPS's network should be: routed addresses (canonical, no prefix) and netifs."""

    addresses: tuple[str, ...] = ()
    netifs: tuple[Netif, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.addresses and not self.netifs


def wanted(ip_address: Sequence[str], netifs: Sequence[Netif]) -> Wanted:
    return Wanted(tuple(dict.fromkeys(address_of(ip) for ip in ip_address)), tuple(netifs))


def holders(
    run_dir: Path, ctid: int, addresses: Iterable[str], is_running: Callable[[int], bool]
) -> dict[str, int]:
    """Which of ``addresses`` another running VPS of this host holds: address -> its CTID."""
    wanted_set = set(addresses)
    found: dict[str, int] = {}
    if not wanted_set:
        return found
    try:
        names = os.listdir(run_dir / STATE_SUBDIR)
    except FileNotFoundError:
        return found
    for name in names:
        other = name.removesuffix(".json")
        if not other.isdigit() or int(other) == ctid:
            continue
        state = load_state(run_dir, int(other))
        if state is None:
            continue
        for address in wanted_set.intersection(state.addresses):
            if is_running(int(other)):
                found[address] = int(other)
    return found


def check_free(
    run_dir: Path, ctid: int, addresses: Iterable[str], is_running: Callable[[int], bool]
) -> None:
    taken = holders(run_dir, ctid, addresses, is_running)
    if taken:
        address, other = sorted(taken.items())[0]
        raise VzError(
            f"Address already in use: {address} is held by running CT {other}",
            ExitCode.IP_IN_USE,
            hint=f"remove it there first: vzctl set {other} --ipdel {address} --save",
        )


def check_host(ctid: int, want: Wanted, devices: Sequence[str]) -> None:
    """The host's prerequisites for ``want``: forwarding for each family with addresses, proxy
    NDP where IPv6 addresses are announced, the bridges named. vzctl never sets a host sysctl
    itself: the error names the one to set."""
    v4 = [a for a in want.addresses if not is_v6(a)]
    v6 = [a for a in want.addresses if is_v6(a)]
    problems: list[tuple[str, str]] = []
    if v4 and _sysctl("ipv4/ip_forward") != "1":
        problems.append(("net.ipv4.ip_forward", "the host does not forward IPv4"))
    if v6:
        if _sysctl("ipv6/conf/all/disable_ipv6") in (None, "1"):
            raise VzError(
                f"CT {ctid} has IPv6 addresses ({v6[0]}), but IPv6 is disabled on this host",
                ExitCode.NET_SETUP,
                hint="enable IPv6 (net.ipv6.conf.all.disable_ipv6 = 0), or remove them: "
                f"vzctl set {ctid} --ipdel {v6[0]} --save",
            )
        if _sysctl("ipv6/conf/all/forwarding") != "1":
            problems.append(("net.ipv6.conf.all.forwarding", "the host does not forward IPv6"))
        if devices and _sysctl("ipv6/conf/all/proxy_ndp") != "1":
            missing = [d for d in devices if _sysctl(f"ipv6/conf/{d}/proxy_ndp") != "1"]
            if missing:
                problems.append(
                    (
                        "net.ipv6.conf.all.proxy_ndp",
                        f"the host does not answer neighbour solicitations for others on "
                        f"{', '.join(missing)}",
                    )
                )
    if problems:
        name, why = problems[0]
        raise VzError(
            f"CT {ctid} has addresses, but {why} ({name} is not 1)",
            ExitCode.NET_SETUP,
            hint=f"sysctl -w {name}=1, and put '{name} = 1' in /etc/sysctl.d/ to keep it "
            f"({DOCS} says why; vzctl never changes host sysctls itself)",
        )
    for netif in want.netifs:
        if netif.bridge and _ifindex(netif.bridge) is None:
            raise VzError(
                f"CT {ctid}: bridge {netif.bridge} of its interface {netif.ifname} does not "
                "exist on this host",
                ExitCode.NET_SETUP,
                hint=f"create it (ip link add {netif.bridge} type bridge), or change NETIF",
            )


def _host_links() -> list[dict[str, Any]]:
    proc = run.run(
        ["ip", "-j", "addr", "show"], stdout=subprocess.PIPE, error_code=ExitCode.NET_SETUP
    )
    data: Any = json.loads(proc.stdout or b"[]")
    return [d for d in data if isinstance(d, dict)]


def neighbour_devices(devs: NeighbourDevs, addresses: Sequence[str]) -> dict[str, list[str]]:
    """Where each routed address is announced (address -> host devices), per NEIGHBOUR_DEVS.
    Never a VPS's own host end, a bridge port, a loopback or a device without ARP."""
    if not addresses:
        return {}
    if devs.mode == "list":
        for dev in devs.devices:
            if _ifindex(dev) is None:
                raise VzError(
                    f"NEIGHBOUR_DEVS names {dev}, which this host does not have",
                    ExitCode.NET_SETUP,
                    hint="fix NEIGHBOUR_DEVS in the host configuration (list:DEV..., all or "
                    "detect)",
                )
        return {a: list(devs.devices) for a in addresses}
    candidates = [
        link
        for link in _host_links()
        if "UP" in link.get("flags", [])
        and not {"LOOPBACK", "NOARP"} & set(link.get("flags", []))
        and link.get("link_type") == "ether"
        and "master" not in link
        and not _OUR_HOST_ENDS.fullmatch(str(link.get("ifname", "")))
    ]
    import ipaddress  # lazy: only announcing to all or detected devices needs it

    found: dict[str, list[str]] = {}
    for address in addresses:
        ip = ipaddress.ip_address(address)
        found[address] = [
            str(link["ifname"])
            for link in candidates
            if devs.mode == "all" or _holds_network(link, ip)
        ]
    return found


def _holds_network(link: dict[str, Any], ip: Any) -> bool:
    import ipaddress

    for info in link.get("addr_info", []):
        with contextlib.suppress(KeyError, ValueError):
            net = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}").network
            if net.version == ip.version and net.prefixlen < net.max_prefixlen and ip in net:
                return True
    return False


# --- doing it -------------------------------------------------------------------------------


class _Batch:
    """``ip -batch`` lines for one namespace."""

    def __init__(self, *options: str) -> None:
        self.lines: list[str] = []
        self.options = options  # ip's own, e.g. -6 (a batch line cannot carry them)

    def add(self, *words: str) -> None:
        self.lines.append(" ".join(words))

    def run(
        self,
        ctid: int,
        where: str,
        fd: int | None = None,
        *,
        enter: bool = False,
        force: bool = False,
    ) -> None:
        """Run the lines; ``fd`` (a VPS's network namespace) is passed on, and with ``enter``
        they run in that namespace (nsenter --net: nothing else of the VPS is entered)."""
        if not self.lines:
            return
        argv = ["ip", *self.options, *(["-force"] if force else []), "-batch", "-"]
        if enter:
            argv = ["nsenter", f"--net=/proc/self/fd/{fd}", "--", *argv]
        proc = _run_with_fd(argv, fd, "\n".join(self.lines) + "\n")
        if proc.returncode != 0 and not force:
            text = proc.stderr.decode(errors="replace").strip()
            raise VzError(
                f"CT {ctid}: setting up its network {where} failed:\n  "
                + "\n  ".join(text.splitlines()[-6:]),
                ExitCode.NET_SETUP,
                hint=f"nothing of it was kept; {DOCS} lists what each part needs",
            )


def _run_with_fd(argv: list[str], fd: int | None, text: str) -> subprocess.CompletedProcess[bytes]:
    if fd is not None:
        run.inherit_in_children(fd)
    try:
        return run.run(argv, input=text.encode(), stdout=subprocess.PIPE, check=False)
    finally:
        if fd is not None:
            run.stop_inheriting(fd)


@contextlib.contextmanager
def guest_netns(ctid: int, pid: int) -> Iterator[int]:
    """An fd of the network namespace of process ``pid`` (the VPS's init), refused when it is
    our own: whatever the pid turned out to be, the host's network is never configured as a
    VPS's."""
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise VzError(
            f"CT {ctid}: its init ({pid}) is gone: {e.strerror}", ExitCode.NOT_RUNNING
        ) from None
    try:
        if _netns_id(f"/proc/self/fd/{fd}") == _netns_id():
            raise VzError(
                f"CT {ctid}: its init ({pid}) shares the host's network namespace: not configured",
                ExitCode.NET_SETUP,
            )
        yield fd
    finally:
        os.close(fd)


def prepare(
    run_dir: Path,
    ctid: int,
    want: Wanted,
    devs: NeighbourDevs,
    is_running: Callable[[int], bool],
) -> dict[str, list[str]]:
    """Everything checked before the VPS's network changes: its addresses free, the host's
    sysctls, the bridges. Returns where each new address is announced (for ``apply``)."""
    from vzpkg import checks

    state = load_state(run_dir, ctid) or NetState()
    _check_namespace(ctid, state)
    new = [a for a in want.addresses if a not in state.addresses]
    for address in new:
        checks.vps_address(address, "IP_ADDRESS")
    check_free(run_dir, ctid, new, is_running)
    if any(not is_v6(a) for a in new) and _sysctl("ipv4/conf/all/rp_filter") == "2":
        log.warning(
            "net.ipv4.conf.all.rp_filter is 2 (loose) on this host: it overrides the strict "
            "filter on VPS host ends, so a VPS can send from addresses it was not given; set "
            "it to 0 or 1 (%s)",
            DOCS,
        )
    proxies = neighbour_devices(devs, [a for a in new])
    check_host(ctid, want, sorted({d for a in new if is_v6(a) for d in proxies.get(a, [])}))
    return proxies


def _check_namespace(ctid: int, state: NetState) -> None:
    if state.netns and state.netns != _netns_id():
        raise VzError(
            f"CT {ctid}'s network was made in another network namespace of the host than "
            "this command runs in",
            ExitCode.NET_SETUP,
            hint="run vzctl in the namespace the VPS was started in",
        )


def apply(
    run_dir: Path,
    ctid: int,
    pid: int,
    want: Wanted,
    proxies: dict[str, list[str]],
) -> NetState:
    """Make the VPS's network what ``want`` says, from what the state file says it is (nothing
    at a start): links, addresses, routes and proxy entries added or removed. The state file
    is written before anything is added (holding the union of old and new), and again after."""
    state = load_state(run_dir, ctid) or NetState(netns=_netns_id())
    _check_namespace(ctid, state)
    with guest_netns(ctid, pid) as ns_fd:
        host, guest, inverse = _Batch(), _Batch(), _Batch()
        old_addresses = list(state.addresses)
        new_addresses = [a for a in want.addresses if a not in old_addresses]
        gone_addresses = [a for a in old_addresses if a not in want.addresses]
        routed = routed_host_ifname(ctid)
        new_texts = [n.to_text() for n in want.netifs]
        # The record while this runs: everything before and everything to come, so that a
        # kill at any point leaves a record that covers it all.
        pending = NetState(
            netns=state.netns or _netns_id(),
            links=dict(state.links),
            proxies=list(state.proxies),
            addresses=list(dict.fromkeys(state.addresses + list(want.addresses))),
            netifs=list(dict.fromkeys(state.netifs + new_texts)),
            routed=state.routed,
            rules=list(state.rules),
        )
        rules6 = _Batch("-6")  # ip rule takes no family from a batch line
        if want.addresses and state.routed is None:
            _routed_link(ctid, host, guest, routed, ns_fd)
            pending.links[routed] = -1
            pending.routed = routed
            if _sysctl("ipv6/conf/all/disable_ipv6") == "0":
                for rule in (_allow_rule("fe80::/10", routed), _drop_rule(routed)):
                    rules6.add("rule", "add", rule)
                    pending.rules.append(rule)
        elif not want.addresses and state.routed is not None:
            host.add("link", "del", state.routed)
            gone_addresses = []  # the veth takes its routes and addresses with it
        v4_index = -1
        for address in want.addresses:
            v4_index += 0 if is_v6(address) else 1
            if address not in new_addresses:
                continue
            bits = 128 if is_v6(address) else 32
            if is_v6(address):
                guest.add("addr", "add", f"{address}/128", "dev", ROUTED_IF, "nodad")
            else:
                label = f"{ROUTED_IF}:{v4_index}"
                guest.add("addr", "add", f"{address}/32", "dev", ROUTED_IF, "label", label)
            host.add("route", "add", f"{address}/{bits}", "dev", routed)
            inverse.add("route", "del", f"{address}/{bits}", "dev", routed)
            if is_v6(address):
                rule = _allow_rule(f"{address}/128", routed)
                rules6.add("rule", "add", rule)
                pending.rules.append(rule)
            for dev in dict.fromkeys(proxies.get(address, [])):
                host.add("neigh", "replace", "proxy", address, "dev", dev)
                if (address, dev) not in pending.proxies:
                    pending.proxies.append((address, dev))
        gone_rules = [
            r
            for r in state.rules
            if not want.addresses
            or any(r == _allow_rule(f"{a}/128", routed) for a in gone_addresses)
        ]
        for rule in gone_rules:
            rules6.add("rule", "del", rule)
        for address in gone_addresses:
            bits = 128 if is_v6(address) else 32
            guest.add("addr", "del", f"{address}/{bits}", "dev", ROUTED_IF)
            host.add("route", "del", f"{address}/{bits}", "dev", routed)
            inverse.add("route", "add", f"{address}/{bits}", "dev", routed)
        gone_proxies = [(a, d) for a, d in state.proxies if a not in want.addresses]
        shared = _held_by_others(run_dir, ctid) if gone_proxies else set()
        for address, dev in gone_proxies:
            if (address, dev) not in shared:
                host.add("neigh", "del", "proxy", address, "dev", dev)
                inverse.add("neigh", "replace", "proxy", address, "dev", dev)
        for netif in want.netifs:
            if netif.to_text() not in state.netifs:
                _bridged_link(host, guest, netif, ns_fd)
                pending.links[netif.host_ifname] = -1
        for text in state.netifs:
            if text not in new_texts:
                name = dict(i.partition("=")[::2] for i in text.split(",")).get("host_ifname")
                if name and state.links.get(name) == _ifindex(name):
                    host.add("link", "del", name)
        # Written before anything exists: a crash from here on leaves a record of all of it.
        _save_state(run_dir, ctid, pending)
        try:
            host.run(ctid, "on the host", ns_fd)
            rules6.run(ctid, "on the host (IPv6 source rules)")
            for name in list(pending.links):
                if pending.links[name] == -1:
                    pending.links[name] = _ifindex(name) or -1
            _save_state(run_dir, ctid, pending)
            for name in pending.links:
                if name not in state.links:
                    _harden(ctid, name)
            guest.run(ctid, "inside it", ns_fd, enter=True)
        except BaseException:
            # Undo what this call did; what was there before stays, and so does its record.
            inverse.run(ctid, "undo", ns_fd, force=True)
            _undo(run_dir, ctid, pending, state)
            if state.links or state.proxies:
                _save_state(run_dir, ctid, state)
            else:
                _drop_state(run_dir, ctid)
            raise
        done = NetState(
            netns=pending.netns,
            links={
                k: v
                for k, v in pending.links.items()
                if (k == pending.routed and want.addresses)
                or k in {n.host_ifname for n in want.netifs}
            },
            proxies=[(a, d) for a, d in pending.proxies if a in want.addresses],
            addresses=list(want.addresses),
            netifs=new_texts,
            routed=pending.routed if want.addresses else None,
            rules=[r for r in pending.rules if r not in gone_rules],
        )
        if done.links or done.proxies or done.rules:
            _save_state(run_dir, ctid, done)
        else:
            _drop_state(run_dir, ctid)
        return done


def _check_free_name(name: str, what: str) -> None:
    """A host interface about to be made must not exist: it would be someone else's (and an
    undo would delete it)."""
    if _ifindex(name) is not None:
        raise VzError(
            f"the host already has an interface {name} ({what}), which is not this VPS's",
            ExitCode.NET_SETUP,
            hint=f"remove or rename it (ip link show {name}), or choose another name",
        )


def _routed_link(ctid: int, host: _Batch, guest: _Batch, name: str, ns_fd: int) -> None:
    _check_free_name(name, f"the host end of CT {ctid}'s venet0")
    host.add(
        "link", "add", name, "address", generated_mac(ctid, ROUTED_IF, "host"), "type", "veth",
        "peer", "name", ROUTED_IF, "address", generated_mac(ctid, ROUTED_IF, "ct"),
        "netns", f"/proc/self/fd/{ns_fd}",
    )  # fmt: skip
    host.add("link", "set", name, "up")
    host.add("addr", "add", f"{GATEWAY4}/32", "dev", name, "scope", "link")
    guest.add("link", "set", "lo", "up")
    guest.add("link", "set", ROUTED_IF, "up")
    guest.add("route", "add", "default", "via", GATEWAY4, "dev", ROUTED_IF, "onlink")
    if _sysctl("ipv6/conf/all/disable_ipv6") == "0":
        host.add("addr", "add", f"{GATEWAY6}/64", "dev", name, "nodad")
        guest.add("route", "add", "::/0", "via", GATEWAY6, "dev", ROUTED_IF, "onlink")


def _bridged_link(host: _Batch, guest: _Batch, netif: Netif, ns_fd: int) -> None:
    _check_free_name(netif.host_ifname, f"host_ifname of {netif.ifname}")
    host.add(
        "link", "add", netif.host_ifname, "address", netif.host_mac, "type", "veth",
        "peer", "name", netif.ifname, "address", netif.mac, "netns", f"/proc/self/fd/{ns_fd}",
    )  # fmt: skip
    if netif.bridge:
        host.add("link", "set", netif.host_ifname, "master", netif.bridge)
    host.add("link", "set", netif.host_ifname, "up")
    guest.add("link", "set", "lo", "up")
    guest.add("link", "set", netif.ifname, "up")


def _harden(ctid: int, name: str) -> None:
    """Per-device settings of a host end that the VPS must not be able to use: strict
    reverse-path filtering (a packet whose source is not routed back through this end, an
    address the VPS was not given, is dropped), and no router advertisements, autoconfiguration
    or redirects taken from the VPS (its root could otherwise change the host's routes)."""
    for rel, value in (
        (f"ipv4/conf/{name}/rp_filter", "1"),
        (f"ipv4/conf/{name}/accept_redirects", "0"),
        (f"ipv6/conf/{name}/accept_ra", "0"),
        (f"ipv6/conf/{name}/autoconf", "0"),
        (f"ipv6/conf/{name}/accept_redirects", "0"),
    ):
        try:
            (_SYSCTL / rel).write_text(value + "\n")
        except FileNotFoundError:
            if rel.startswith("ipv4"):
                raise VzError(
                    f"CT {ctid}: no interface {name} on the host", ExitCode.NET_SETUP
                ) from None
        except OSError as e:
            raise VzError(
                f"CT {ctid}: cannot set {rel.replace('/', '.')} on the host: {e.strerror}",
                ExitCode.NET_SETUP,
            ) from None


def _held_by_others(run_dir: Path, ctid: int) -> set[tuple[str, str]]:
    """Proxy entries another VPS's record lists (the same address, taken over after the other
    VPS's init died): never deleted on this VPS's behalf."""
    held: set[tuple[str, str]] = set()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(run_dir / STATE_SUBDIR):
            other = name.removesuffix(".json")
            if other.isdigit() and int(other) != ctid:
                state = load_state(run_dir, int(other))
                if state is not None:
                    held.update(state.proxies)
    return held


def _undo(run_dir: Path, ctid: int, pending: NetState, before: NetState) -> None:
    """After a failed apply: remove the links and proxy entries it meant to add."""
    added = NetState(
        netns=pending.netns,
        links={k: v for k, v in pending.links.items() if k not in before.links},
        proxies=[p for p in pending.proxies if p not in before.proxies],
        rules=[r for r in pending.rules if r not in before.rules],
    )
    _remove(run_dir, ctid, added)


def _remove(run_dir: Path, ctid: int, state: NetState) -> None:
    """Delete the record's proxy entries that exist (a missing one would stop ``ip -batch``
    at once, -force or not) and no other VPS's record lists, and its links that still have
    the index they were made with."""
    batch = _Batch()
    if state.proxies:
        proc = run.run(["ip", "-j", "neigh", "show", "proxy"], stdout=subprocess.PIPE, check=False)
        try:
            present = {
                (str(e.get("dst")), str(e.get("dev"))) for e in json.loads(proc.stdout or b"[]")
            }
        except (ValueError, AttributeError):
            present = set(state.proxies)
        shared = _held_by_others(run_dir, ctid)
        for entry in dict.fromkeys(state.proxies):
            if entry in present and entry not in shared:
                batch.add("neigh", "del", "proxy", *entry[:1], "dev", entry[1])
    for name, index in state.links.items():
        now = _ifindex(name)
        # -1: made by a command that died before it noted the index; the name is ours.
        if now is not None and index in (-1, now):
            batch.add("link", "del", name)
    batch.run(ctid, "teardown", force=True)
    if state.rules:
        rules6 = _Batch("-6")
        present_rules = _present_rules()
        for rule in dict.fromkeys(state.rules):
            if _rule_key(rule) in present_rules:
                rules6.add("rule", "del", rule)
        rules6.run(ctid, "teardown", force=True)


RULE_PREF_ALLOW, RULE_PREF_DROP = 1000, 1001  # before main (32766), after local (0)


def _allow_rule(source: str, dev: str) -> str:
    """IPv6 has no rp_filter: a policy rule per address lets the VPS's own sources through
    its host end, and the next drops every other (link-local ones pass, for neighbour
    discovery)."""
    return f"from {source} iif {dev} lookup main pref {RULE_PREF_ALLOW}"


def _drop_rule(dev: str) -> str:
    return f"iif {dev} blackhole pref {RULE_PREF_DROP}"


def _rule_key(rule: str) -> tuple[str, str, str]:
    words = rule.split()
    value = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w in ("from", "iif", "pref")}
    return value.get("pref", ""), value.get("iif", ""), value.get("from", "all")


def _present_rules() -> set[tuple[str, str, str]]:
    proc = run.run(["ip", "-6", "-j", "rule", "show"], stdout=subprocess.PIPE, check=False)
    try:
        data = json.loads(proc.stdout or b"[]")
    except ValueError:
        return set()
    found = set()
    for rule in data if isinstance(data, list) else []:
        src = str(rule.get("src", "all"))
        if src != "all":
            src = f"{src}/{rule.get('srclen', 128)}"
        found.add((str(rule.get("priority", "")), str(rule.get("iif", "")), src))
    return found


def teardown(run_dir: Path, ctid: int) -> bool:
    """Remove what the state file says is on the host for the VPS; harmless to repeat.
    Returns whether there was anything."""
    state = load_state(run_dir, ctid)
    if state is None:
        return False
    if state.netns and state.netns != _netns_id():
        # Kept: a command run in the right namespace removes them.
        log.warning(
            "CT %s: its network was made in another network namespace of the host than this "
            "command runs in; its host ends %s and proxy entries %s are left there (and in "
            "%s) until vzctl runs there",
            ctid,
            " ".join(state.links) or "-",
            " ".join(f"{a}@{d}" for a, d in state.proxies) or "-",
            state_path(run_dir, ctid),
        )
        return True
    _remove(run_dir, ctid, state)
    _drop_state(run_dir, ctid)
    return True
