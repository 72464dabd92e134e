"""Value checks shared by every entry point: command-line options, CTID.conf and the host
configuration call the same functions, so that a value is accepted or refused the same way
wherever it comes from.

Each check returns the canonical form of a good value and raises VzError naming the option or
key for a bad one (vzctl's "Bad parameter for --ipadd: ..."). ``what`` is how the caller names
the value: ``--ipadd`` on the command line, ``IP_ADDRESS`` for a configuration key.

Light to import (re and vzpkg.errors; ipaddress only when an address is checked).
"""

from __future__ import annotations

import math
import re

from vzpkg.errors import ExitCode, VzError

HOSTNAME_MAX = 64  # the kernel's limit for a UTS nodename (HOST_NAME_MAX)
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def bad(what: str, value: str, why: str, hint: str | None = None) -> VzError:
    shown = value if len(value) <= 80 else value[:77] + "..."
    return VzError(f"Bad parameter for {what}: {shown!r} {why}", ExitCode.INVALID_VALUE, hint=hint)


def hostname(value: str, what: str = "--hostname") -> str:
    """A host name as the kernel takes it (at most 64 bytes) made of DNS labels (letters,
    digits and inner hyphens, 1-63 each, dot-separated). A trailing dot is dropped."""
    name = value[:-1] if value.endswith(".") and len(value) > 1 else value
    if not name.isascii():
        raise bad(what, value, "is not an ASCII host name")
    if len(name) > HOSTNAME_MAX:
        raise bad(
            what,
            value,
            f"is {len(name)} characters long; the kernel takes at most {HOSTNAME_MAX}",
        )
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise bad(
                what,
                value,
                "is not a host name",
                hint="letters, digits and '-' in dot-separated labels, e.g. web1.example.com",
            )
    return name


def domain(value: str, what: str = "--searchdomain") -> str:
    """A DNS domain (for resolv.conf's search line): labels as in a host name, 253 at most."""
    name = value[:-1] if value.endswith(".") and len(value) > 1 else value
    if not name.isascii() or len(name) > 253:
        raise bad(what, value, "is not a domain name")
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise bad(what, value, "is not a domain name", hint="e.g. example.com")
    return name


def ip_address(value: str, what: str = "--ipadd", *, prefix: bool = True) -> str:
    """An IPv4 or IPv6 address, optionally ``/prefix`` (when ``prefix``), canonical:
    ``2001:DB8::0045`` becomes ``2001:db8::45``. Leading zeros in IPv4 are refused (they mean
    octal to some tools and decimal to others)."""
    import ipaddress  # lazy: only commands that take addresses pay for it

    address, slash, length = value.partition("/")
    if slash and not prefix:
        raise bad(what, value, "is not an IP address (no /prefix here)")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise bad(
            what, value, "is not an IP address", hint="e.g. 198.51.100.45 or 2001:db8::45"
        ) from None
    if ip.is_unspecified:
        raise bad(what, value, "is the unspecified address")
    if "%" in address:
        raise bad(what, value, "has a scope (%...): a VPS's addresses are global")
    if not slash:
        return str(ip)
    if not length.isascii() or not length.isdigit() or int(length) > ip.max_prefixlen:
        raise bad(what, value, f"has a bad prefix length (0 to {ip.max_prefixlen})")
    return f"{ip}/{int(length)}"


def vps_address(value: str, what: str = "--ipadd") -> str:
    """``ip_address``, and one a VPS can be given as its own: not loopback, multicast,
    link-local (the gateways 169.254.0.1 and fe80::1 are there), broadcast, reserved, the
    0.0.0.0/8 "this network" block or IPv4-mapped IPv6."""
    import ipaddress

    canonical = ip_address(value, what)
    ip = ipaddress.ip_address(canonical.partition("/")[0])
    why = None
    if ip.is_loopback:
        why = "is a loopback address"
    elif ip.is_multicast:
        why = "is a multicast address"
    elif ip.is_link_local:
        why = "is a link-local address (the VPS's gateway lives there)"
    elif ip.version == 4 and (ip.is_reserved or ip in ipaddress.ip_network("0.0.0.0/8")):
        why = "is a reserved or broadcast address"
    elif ip.version == 6 and ip.ipv4_mapped is not None:
        why = "is an IPv4-mapped IPv6 address: give the IPv4 address itself"
    if why:
        raise bad(what, value, why, hint="a VPS's own address, e.g. 198.51.100.45 or 2001:db8::45")
    return canonical


def nameserver(value: str, what: str = "--nameserver") -> str:
    """A nameserver address, or ``inherit`` (the host's)."""
    return "inherit" if value == "inherit" else ip_address(value, what, prefix=False)


def timeout(value: float | str, what: str = "--timeout", *, forever: bool = False) -> float:
    """Seconds: finite and not negative (``forever``: -1 means no limit)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise bad(what, str(value), "is not a number of seconds") from None
    if forever and seconds == -1:
        return seconds
    if not math.isfinite(seconds) or seconds < 0:
        raise bad(
            what,
            str(value),
            "is not a number of seconds (finite, 0 or more"
            + (", or -1: forever)" if forever else ")"),
        )
    return seconds


def whole_seconds(value: str, what: str) -> int:
    """A whole number of seconds (configuration keys: STOP_TIMEOUT)."""
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise bad(what, value, "is not a whole number of seconds")
    return int(text)


LAYOUTS = ("plain", "overlay")
DEFAULT_LAYOUT = "overlay"  # of new VPSs, unless VE_LAYOUT or --layout says otherwise
# OpenVZ's layouts: simfs is a plain directory tree; ploop images do not exist here.
_LAYOUT_ALIASES = {"simfs": "plain"}


def layout(value: str, what: str = "--layout") -> str:
    name = _LAYOUT_ALIASES.get(value, value)
    if name not in LAYOUTS:
        hint = (
            "ploop images are not supported; use overlay or plain"
            if value.startswith("ploop")
            else None
        )
        raise bad(
            what, value, "is not a layout: plain or overlay (OpenVZ's simfs means plain)", hint
        )
    return name
