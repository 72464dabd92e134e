"""A VPS's network as its configuration says it: routed addresses (IP_ADDRESS), bridged veth
interfaces (NETIF) and the host's NEIGHBOUR_DEVS. Values only: parsed, checked, canonical and
written back; nothing here touches the kernel (vzpkg.ct.net does).

Light to import (re; hashlib only when a MAC is generated): vzctl set and vzlist parse these
without loading the rest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from vzpkg import checks
from vzpkg.errors import ExitCode, VzError

ROUTED_IF = "venet0"  # the guest end of a routed VPS's veth, as OpenVZ named its venet device
MAC_PREFIX = "00:18:51"  # OpenVZ's (SWsoft's) prefix for the MACs it generated
IFNAMSIZ = 15  # the kernel's limit for an interface name (16 with its NUL)
_IFNAME = re.compile(rf"[A-Za-z0-9_.-]{{1,{IFNAMSIZ}}}")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_NETIF_KEYS = ("ifname", "bridge", "mac", "host_ifname", "host_mac")  # NETIF's order
_ADD_ORDER = ("ifname", "mac", "host_ifname", "host_mac", "bridge")  # --netif_add's order


def ifname(value: str, what: str) -> str:
    """An interface name: 1-15 letters, digits, '.', '-' or '_', not . or .. (the kernel takes
    more, but quotes, '#' and the like would be read by ``ip -batch`` and NETIF's syntax)."""
    if not _IFNAME.fullmatch(value) or value in (".", ".."):
        raise checks.bad(
            what,
            value,
            "is not an interface name",
            hint=f"1 to {IFNAMSIZ} letters, digits, '.', '-' or '_'; e.g. eth0",
        )
    return value


def mac(value: str, what: str) -> str:
    """A unicast MAC address, canonical (lower case, colons): 00:18:51:AB:CD:EF."""
    text = value.strip().lower().replace("-", ":")
    if not _MAC.fullmatch(text):
        raise checks.bad(what, value, "is not a MAC address", hint="e.g. 00:18:51:12:34:56")
    if int(text[:2], 16) & 1:
        raise checks.bad(what, value, "is a multicast MAC address (its first octet is odd)")
    if text == "00:00:00:00:00:00":
        raise checks.bad(what, value, "is the all-zero MAC address")
    return text


def generated_mac(ctid: int, name: str, side: str) -> str:
    """A MAC that is the same at every start (so that the LAN's ARP caches and DHCP leases
    stay valid) and differs per VPS, interface and side: OpenVZ's prefix, then 3 bytes of a
    hash of the three."""
    import hashlib  # lazy: OpenSSL's load costs a start without interfaces ~3 ms

    digest = hashlib.sha256(f"{ctid}:{name}:{side}".encode()).digest()
    return MAC_PREFIX + "".join(f":{b:02x}" for b in digest[:3])


@dataclass(frozen=True)
class Netif:
    """One bridged veth interface: ``ifname`` inside the VPS, ``host_ifname`` on the host,
    which joins ``bridge`` when one is named."""

    ifname: str
    mac: str
    host_ifname: str
    host_mac: str
    bridge: str | None = None

    def to_text(self) -> str:
        values = {
            "ifname": self.ifname,
            "bridge": self.bridge,
            "mac": self.mac,
            "host_ifname": self.host_ifname,
            "host_mac": self.host_mac,
        }
        return ",".join(f"{k}={values[k]}" for k in _NETIF_KEYS if values[k])


def routed_host_ifname(ctid: int) -> str:
    """The host end of a routed VPS's veth: ``venet0.<CTID>`` as OpenVZ named it, or
    ``vzn<CTID>`` where that is longer than an interface name may be (CTIDs of 9+ digits)."""
    name = f"{ROUTED_IF}.{ctid}"
    return name if len(name) <= IFNAMSIZ else f"vzn{ctid}"


def parse_netifs(text: str, ctid: int, what: str = "NETIF") -> tuple[Netif, ...]:
    """NETIF's value: ``ifname=eth0,bridge=br0,mac=...,host_ifname=...,host_mac=...`` entries
    separated by ``;``. Missing MACs and host names get their defaults."""
    found: list[Netif] = []
    for entry in (e.strip() for e in text.split(";")):
        if not entry:
            continue
        values: dict[str, str] = {}
        for item in entry.split(","):
            key, sep, value = item.strip().partition("=")
            if not sep or key not in _NETIF_KEYS or key in values:
                raise checks.bad(
                    what,
                    entry,
                    f"has {item.strip()!r}, which is not one of {', '.join(_NETIF_KEYS)}=VALUE"
                    " (each once)",
                )
            values[key] = value.strip()
        if not values.get("ifname"):
            raise checks.bad(what, entry, "has no ifname=")
        if any(n.ifname == values["ifname"] for n in found):
            raise checks.bad(what, entry, f"names {values['ifname']} a second time")
        found.append(_netif(ctid, values, found, what))
    return tuple(found)


def netif_add(ctid: int, spec: str, current: Sequence[Netif]) -> Netif:
    """``--netif_add ifname[,mac,host_ifname,host_mac,bridge]`` as vzctl(8) has it; an empty
    field takes its default."""
    fields = [f.strip() for f in spec.split(",")]
    if len(fields) > len(_ADD_ORDER) or not fields[0]:
        raise checks.bad("--netif_add", spec, "is not ifname[,mac,host_ifname,host_mac,bridge]")
    values = {k: v for k, v in zip(_ADD_ORDER, fields, strict=False) if v}
    netif = _netif(ctid, values, current, "--netif_add")
    if any(n.ifname == netif.ifname for n in current):
        raise checks.bad("--netif_add", spec, f"names {netif.ifname}, which the VPS has already")
    return netif


def _netif(ctid: int, values: dict[str, str], others: Sequence[Netif], what: str) -> Netif:
    name = ifname(values["ifname"], what)
    if name in (ROUTED_IF, "lo"):
        raise checks.bad(what, name, "is reserved (lo, and venet0 for routed addresses)")
    host_name = values.get("host_ifname")
    if host_name:
        host_name = ifname(host_name, what)
    else:
        taken = {n.host_ifname for n in others}
        index = 0
        while f"veth{ctid}.{index}" in taken:
            index += 1
        host_name = f"veth{ctid}.{index}"
        if len(host_name) > IFNAMSIZ:
            raise checks.bad(
                what,
                name,
                f"needs a host_ifname: the default {host_name} is longer than {IFNAMSIZ} "
                "characters",
                hint=f"--netif_add {name},,vz{ctid % 10**8}.{index}",
            )
    if any(n.host_ifname == host_name for n in others) or host_name == routed_host_ifname(ctid):
        raise checks.bad(what, host_name, "is already the host end of another interface")
    bridge = values.get("bridge")
    return Netif(
        ifname=name,
        mac=mac(values["mac"], what) if values.get("mac") else generated_mac(ctid, name, "ct"),
        host_ifname=host_name,
        host_mac=mac(values["host_mac"], what)
        if values.get("host_mac")
        else generated_mac(ctid, name, "host"),
        bridge=ifname(bridge, what) if bridge else None,
    )


def netifs_text(netifs: Sequence[Netif]) -> str:
    return ";".join(n.to_text() for n in netifs)


def without(
    netifs: Sequence[Netif], names: Sequence[str], what: str = "--netif_del"
) -> tuple[Netif, ...]:
    """``--netif_del ifname|all``: the interfaces left; an unknown name is refused."""
    if "all" in names:
        return ()
    known = {n.ifname for n in netifs}
    for name in names:
        if name not in known:
            raise checks.bad(what, name, "is not an interface of this VPS")
    return tuple(n for n in netifs if n.ifname not in names)


@dataclass(frozen=True)
class NeighbourDevs:
    """NEIGHBOUR_DEVS: where a routed VPS's addresses are announced (proxy ARP/NDP entries).
    ``all``: every up, ARP-capable host device that is not a VPS's; ``detect``: the devices
    whose networks hold the address; ``list:DEV...``: those (none: no announcements)."""

    mode: str  # all | detect | list
    devices: tuple[str, ...] = ()

    def to_text(self) -> str:
        return "list:" + " ".join(self.devices) if self.mode == "list" else self.mode


def neighbour_devs(value: str, what: str = "NEIGHBOUR_DEVS") -> NeighbourDevs:
    text = value.strip()
    if text in ("", "all"):
        return NeighbourDevs("all")
    if text == "detect":
        return NeighbourDevs("detect")
    if text.startswith("list:"):
        devices = dict.fromkeys(ifname(d, what) for d in text[5:].split())
        return NeighbourDevs("list", tuple(devices))
    raise VzError(
        f"Bad parameter for {what}: {value!r} is not all, detect or list:DEV...",
        ExitCode.INVALID_VALUE,
    )
