"""vzlist's table: OpenVZ's columns, field names and formatting, as pure functions."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vzpkg.errors import ExitCode, VzError


@dataclass(frozen=True)
class Field:
    name: str
    header: str
    width: int
    right: bool  # numbers are right-aligned, as vzlist prints them
    get: Callable[[Mapping[str, Any]], Any]


def _dash(value: Any) -> Any:
    return "-" if value in (None, "", []) else value


FIELDS: Mapping[str, Field] = {
    f.name: f
    for f in (
        Field("ctid", "CTID", 10, True, lambda r: r["ctid"]),
        Field("nproc", "NPROC", 10, True, lambda r: _dash(r.get("nproc"))),
        Field("status", "STATUS", 9, False, lambda r: r["status"]),
        Field("ip", "IP_ADDR", 15, False, lambda r: _dash(" ".join(r.get("ip") or []))),
        Field(
            "netif",
            "NETIF",
            10,
            False,
            lambda r: _dash(" ".join(n["ifname"] for n in r.get("netif") or [])),
        ),
        Field("hostname", "HOSTNAME", 0, False, lambda r: _dash(r.get("hostname"))),
        Field("ostemplate", "OSTEMPLATE", 24, False, lambda r: _dash(r.get("ostemplate"))),
        Field("layout", "LAYOUT", 7, False, lambda r: _dash(r.get("layout"))),
        Field("onboot", "ONBOOT", 6, False, lambda r: "yes" if r.get("onboot") else "no"),
        Field("private", "PRIVATE", 24, False, lambda r: _dash(r.get("private"))),
        Field("root", "ROOT", 24, False, lambda r: _dash(r.get("root"))),
        Field("mounted", "MOUNTED", 7, False, lambda r: "yes" if r.get("mounted") else "no"),
        Field("userns", "USERNS", 6, False, lambda r: "yes" if r.get("userns") else "no"),
        Field("userns_base", "USERNS_BASE", 11, True, lambda r: _dash(r.get("userns_base"))),
    )
}


def _counter(resource: str, key: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda r: _dash((r.get("beancounters") or {}).get(resource, {}).get(key))


def _disk(resource: str, key: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda r: _dash((r.get("disk") or {}).get(resource, {}).get(key))


def _family(
    names: Sequence[str],
    suffixes: Sequence[tuple[str, str]],
    get: Callable[[str, str], Callable[[Mapping[str, Any]], Any]],
) -> dict[str, Field]:
    """Fields NAME and NAME.SUFFIX for each name, 12 wide, numbers."""
    return {
        f"{name}{suffix}": Field(
            f"{name}{suffix}", f"{name.upper()}{suffix.upper()}", 12, True, get(name, key)
        )
        for name in names
        for suffix, key in suffixes
    }


# OpenVZ's beancounter fields: NAME (held), NAME.m (maxheld), .b (barrier), .l (limit), .f
# (failcnt); memory in 4 KiB pages. A stopped VPS has none ("-"). Its disk fields: diskspace
# (KiB in use, while mounted), .s (soft limit), .h (hard limit); diskinodes in inodes.
FIELDS = {
    **FIELDS,
    **_family(
        ("numproc", "physpages", "swappages", "oomguarpages"),
        (("", "held"), (".m", "maxheld"), (".b", "barrier"), (".l", "limit"), (".f", "failcnt")),
        _counter,
    ),
    **_family(("diskspace", "diskinodes"), (("", "held"), (".s", "soft"), (".h", "hard")), _disk),
}
ALIASES = {"veid": "ctid", "vpsid": "ctid", "ip_addr": "ip"}
DEFAULT_FIELDS = ("ctid", "nproc", "status", "ip", "hostname")


def parse_fields(spec: str | None) -> list[Field]:
    if not spec:
        return [FIELDS[n] for n in DEFAULT_FIELDS]
    fields = []
    for raw in spec.split(","):
        name = ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if name not in FIELDS:
            raise VzError(
                f"unknown field {raw!r}",
                ExitCode.INVALID_VALUE,
                hint="known fields: " + ", ".join(FIELDS),
            )
        fields.append(FIELDS[name])
    return fields


def sort_records(records: Sequence[Mapping[str, Any]], key: str | None) -> list[Mapping[str, Any]]:
    if not key:
        return sorted(records, key=lambda r: int(r["ctid"]))
    reverse = key.startswith("-")
    name = ALIASES.get(key.lstrip("-").lower(), key.lstrip("-").lower())
    if name not in FIELDS:
        raise VzError(
            f"unknown sort field {key!r}",
            ExitCode.INVALID_VALUE,
            hint="known fields: " + ", ".join(FIELDS),
        )
    field = FIELDS[name]

    def sort_key(r: Mapping[str, Any]) -> tuple[int, Any]:
        value = field.get(r)
        return (0, value) if isinstance(value, int) else (1, str(value))

    return sorted(records, key=sort_key, reverse=reverse)


def _cell(field: Field, value: Any, last: bool) -> str:
    text = str(value)
    if last and not field.right:
        return text
    return text.rjust(field.width) if field.right else text.ljust(field.width)


def format_table(
    records: Sequence[Mapping[str, Any]], fields: Sequence[Field], header: bool = True
) -> str:
    lines = []
    if header:
        lines.append(
            " ".join(
                _cell(f, f.header, i == len(fields) - 1) for i, f in enumerate(fields)
            ).rstrip()
        )
    for r in records:
        lines.append(
            " ".join(
                _cell(f, f.get(r), i == len(fields) - 1) for i, f in enumerate(fields)
            ).rstrip()
        )
    return "\n".join(lines) + ("\n" if lines else "")
