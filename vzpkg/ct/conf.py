"""Per-container configuration: OpenVZ's ``CONF_DIR/<CTID>.conf``, ``KEY="value"`` lines.

The keys vzpkg itself acts on become a frozen ``CtConfig``; every other key (resource
parameters, keys of other tools, keys of newer vzctl versions) is carried along in ``extra``
untouched. Rewriting a file keeps its comments, its order and every line whose value did not
change, so an administrator's notes survive ``vzctl set --save``.

Samples: ``vzctl create --config NAME`` reads ``ve-NAME.conf-sample``, first from CONF_DIR (the
host's own), then from the samples shipped with vzpkg.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vzpkg import checks, fsutil
from vzpkg.ct.ids import CTID_MAX, parse_ctid
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig, parse_kv
from vzpkg.hostvalues import decode_text
from vzpkg.openvz import OPENVZ_KEYS

LAYOUTS = checks.LAYOUTS
SHIPPED_SAMPLES = Path(__file__).resolve().parent / "samples"
SAMPLE_PREFIX, SAMPLE_SUFFIX = "ve-", ".conf-sample"

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KV_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")
_VEID = re.compile(r"\$(?:VEID\b|\{VEID\})")
_SAMPLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CONF_NAME = re.compile(r"([1-9][0-9]*)\.conf")

# File key -> CtConfig field, in the order new keys are appended to a file.
FIELD_OF_KEY: Mapping[str, str] = {
    "OSTEMPLATE": "ostemplate",
    "ORIGIN_SAMPLE": "origin_sample",
    "VE_LAYOUT": "ve_layout",
    "VE_ROOT": "ve_root",
    "VE_PRIVATE": "ve_private",
    "HOSTNAME": "hostname",
    "IP_ADDRESS": "ip_address",
    "NETIF": "netif",
    "NAMESERVER": "nameserver",
    "SEARCHDOMAIN": "searchdomain",
    "ONBOOT": "onboot",
    "STOP_TIMEOUT": "stop_timeout",
    "LOCAL_UID": "local_uid",
    "LOCAL_GID": "local_gid",
}
# OpenVZ keys kept in ``extra`` (their values as written) that vzpkg acts on: the resource
# limits (vzpkg.ct.resources) and the disk (vzpkg.ct.disk).
ACTED_ON_EXTRA = frozenset(
    {
        "PHYSPAGES",
        "SWAPPAGES",
        "CPUUNITS",
        "CPULIMIT",
        "CPUS",
        "CPUMASK",
        "NUMPROC",
        "DEVICES",
        "DEVNODES",
        "DISKSPACE",
        "DISKINODES",
    }
)
_LIST_FIELDS = frozenset({"ip_address", "nameserver", "searchdomain"})
# Keys of CTID.conf that neither vzpkg nor any OpenVZ version knows are refused (a typo would go
# unnoticed otherwise); OpenVZ's are carried along in ``extra``.


class CtConfigError(VzError):
    """Values no CtConfig may hold; ``problems`` lists each, naming its key."""

    def __init__(
        self,
        problems: list[str],
        code: ExitCode = ExitCode.INVALID_VALUE,
        hint: str | None = None,
    ) -> None:
        text = "invalid container configuration:\n  " + "\n  ".join(problems)
        super().__init__(text, code, hint)
        self.problems = problems


@dataclass(frozen=True)
class CtConfig:
    """The keys of ``CTID.conf`` vzpkg acts on. None (or an empty tuple) means the key is not
    set. VE_ROOT and VE_PRIVATE are kept as written, ``$VEID`` and all (see ``expand``)."""

    ostemplate: str | None = None
    ve_root: str | None = None
    ve_private: str | None = None
    ve_layout: str | None = None  # plain | overlay
    hostname: str | None = None
    ip_address: tuple[str, ...] = ()
    netif: str | None = None  # bridged veth interfaces, OpenVZ's NETIF (vzpkg.ct.netconf)
    nameserver: tuple[str, ...] = ()
    searchdomain: tuple[str, ...] = ()
    onboot: bool | None = None
    stop_timeout: int | None = None  # seconds; None: the host's STOP_TIMEOUT
    origin_sample: str | None = None
    # OpenVZ's keys for the first host uid/gid of the VPS's user namespace; 0: none (a
    # privileged VPS, also what a VPS made before user namespaces is).
    local_uid: int | None = None
    local_gid: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)  # every other key, as written

    def __post_init__(self) -> None:
        problems = _problems_of(self)
        if problems:
            raise CtConfigError(problems)

    @property
    def userns(self) -> tuple[int, int] | None:
        """The host uid and gid the VPS's ids 0..65535 map to; None: a privileged VPS."""
        if not self.local_uid or not self.local_gid:
            return None
        return self.local_uid, self.local_gid

    def to_values(self) -> dict[str, str]:
        """The keys this configuration sets, as file values (known keys first)."""
        values: dict[str, str] = {}
        for key, name in FIELD_OF_KEY.items():
            value = getattr(self, name)
            if value is None or value == ():
                continue
            if isinstance(value, bool):
                values[key] = "yes" if value else "no"
            elif isinstance(value, tuple):
                values[key] = " ".join(value)
            else:
                values[key] = str(value)
        values.update(self.extra)
        return values


def _problems_of(cfg: CtConfig) -> list[str]:
    problems: list[str] = []

    def check(key: str, func: Any, value: str) -> None:
        try:
            if func(value, key) != value:
                problems.append(f"{key}: {value!r} is not in canonical form")
        except VzError as e:
            problems.append(f"{key}: {e.message.removeprefix(f'Bad parameter for {key}: ')}")

    if cfg.ve_layout is not None and cfg.ve_layout not in LAYOUTS:
        problems.append(f"VE_LAYOUT: {cfg.ve_layout!r} is not one of {', '.join(LAYOUTS)}")
    if cfg.stop_timeout is not None and cfg.stop_timeout < 0:
        problems.append(f"STOP_TIMEOUT: {cfg.stop_timeout} is negative")
    for key in ("LOCAL_UID", "LOCAL_GID"):
        value = getattr(cfg, FIELD_OF_KEY[key])
        if value is not None and not 0 <= value <= (1 << 32) - 65537:
            problems.append(f"{key}: {value} is not a host id a 65536-id block can start at")
    if (cfg.local_uid == 0) != (cfg.local_gid == 0) and None not in (
        cfg.local_uid,
        cfg.local_gid,
    ):
        problems.append("LOCAL_UID and LOCAL_GID: one is 0 (no user namespace), the other not")
    for key, value in (("VE_ROOT", cfg.ve_root), ("VE_PRIVATE", cfg.ve_private)):
        if value is not None and not value.startswith("/"):
            problems.append(f"{key}: {value!r} is not an absolute path")
    for key, value in (("OSTEMPLATE", cfg.ostemplate), ("ORIGIN_SAMPLE", cfg.origin_sample)):
        if value is not None and (not value or _has_space(value) or "/" in value):
            problems.append(f"{key}: {value!r} must be one word without '/'")
    if cfg.hostname is not None:
        check("HOSTNAME", checks.hostname, cfg.hostname)
    for ip in cfg.ip_address:
        check("IP_ADDRESS", checks.ip_address, ip)
    if cfg.netif is not None:
        from vzpkg.ct import netconf

        try:
            netconf.parse_netifs(cfg.netif, 1)
        except VzError as e:
            problems.append(f"NETIF: {e.message.removeprefix('Bad parameter for NETIF: ')}")
    for server in cfg.nameserver:
        check("NAMESERVER", checks.nameserver, server)
    for name in cfg.searchdomain:
        check("SEARCHDOMAIN", checks.domain, name)
    for key, value in cfg.extra.items():
        if not _KEY.fullmatch(key):
            problems.append(f"{key!r} is not a valid key name")
        elif key in FIELD_OF_KEY:
            problems.append(f"{key} is a known key; set it through its field, not extra")
        elif key not in OPENVZ_KEYS:
            problems.append(f"unknown key {key} (not vzpkg's, nor any OpenVZ's)")
        if not isinstance(value, str):
            problems.append(f"{key}: value {value!r} is not a string")
    if not problems:  # to_values() needs string values
        for key, value in cfg.to_values().items():
            if "\n" in value or "\0" in value:
                problems.append(f"{key}: a value cannot contain a newline or NUL byte")
    return problems


def _has_space(value: str) -> bool:
    return any(char.isspace() for char in value)


def ctid_valid(ctid: str | int) -> int:
    """The CTID as an int (vzpkg.ct.ids.parse_ctid: the one CTID check of every entry point)."""
    return parse_ctid(ctid)


def expand(template: str, ctid: str | int) -> str:
    """``template`` with ``$VEID`` and ``${VEID}`` replaced by the CTID (VE_ROOT, VE_PRIVATE)."""
    number = str(ctid_valid(ctid))
    return _VEID.sub(number, template)


def private_path(host: HostConfig, ctid: str | int, cfg: CtConfig | None = None) -> Path:
    """The CT's private area: its VE_PRIVATE, else the host's."""
    template = cfg.ve_private if cfg is not None and cfg.ve_private else host.ve_private
    return _absolute(expand(template, ctid), "VE_PRIVATE")


def root_path(host: HostConfig, ctid: str | int, cfg: CtConfig | None = None) -> Path:
    """Where the CT's root is mounted: its VE_ROOT, else the host's."""
    template = cfg.ve_root if cfg is not None and cfg.ve_root else host.ve_root
    return _absolute(expand(template, ctid), "VE_ROOT")


def _absolute(path: str, key: str) -> Path:
    if not path.startswith("/") or "$" in path:
        raise VzError(
            f"{key} expands to {path!r}, not an absolute path",
            ExitCode.INVALID_VALUE,
            hint=f"set {key} to an absolute path; $VEID is the only variable it may use",
        )
    return Path(os.path.normpath(path))


def conf_path(host: HostConfig, ctid: str | int) -> Path:
    return host.conf_dir / f"{ctid_valid(ctid)}.conf"


def list_ctids(host: HostConfig) -> list[int]:
    """CTIDs that have a configuration file in CONF_DIR, in ascending order.

    ``0.conf`` (OpenVZ's file for the host itself) and names that are not a canonical CTID
    (``0101.conf``, ``101.conf.bak``, editor temps) are not containers.
    """
    try:
        names = os.listdir(host.conf_dir)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise VzError(f"cannot read {host.conf_dir}: {e.strerror}", ExitCode.SYSTEM) from None
    ctids = []
    for name in names:
        match = _CONF_NAME.fullmatch(name)
        if match and int(match.group(1)) <= CTID_MAX and (host.conf_dir / name).is_file():
            ctids.append(int(match.group(1)))
    return sorted(ctids)


def ct_config_from(values: Mapping[str, str], source: str) -> CtConfig:
    """A CtConfig from parsed ``KEY="value"`` pairs; every problem is reported at once."""
    problems: list[str] = []
    known: dict[str, Any] = {}
    extra: dict[str, str] = {}
    for key, value in values.items():
        name = FIELD_OF_KEY.get(key)
        if name is None:
            extra[key] = value
        elif name in _LIST_FIELDS:
            # OpenVZ writes 0.0.0.0 (and ::) for "no address" and skips them: so do we.
            given = [w for w in value.split() if not (key == "IP_ADDRESS" and w in _NO_ADDRESS)]
            words = [_canonical(key, word, problems, source) for word in given]
            known[name] = tuple(word for word in words if word is not None)
        elif name == "hostname":
            if value and (canonical := _canonical(key, value, problems, source)):
                known[name] = canonical
        elif name == "ve_layout":
            if value.split(":")[0] == "ploop":
                problems.append(
                    f"{source}: VE_LAYOUT: {value!r}: ploop images are not supported by vzpkg"
                )
            elif value:
                try:
                    known[name] = checks.layout(value, "VE_LAYOUT")
                except VzError:
                    problems.append(f"{source}: VE_LAYOUT: {value!r} is not plain or overlay")
        elif name == "onboot":
            if value in ("yes", "no", "auto"):  # Virtuozzo 7's auto: vzpkg has no such mode
                known[name] = value == "yes"
            elif value:
                problems.append(f"{source}: ONBOOT: {value!r} is not yes or no")
        elif name == "stop_timeout":
            if value.strip():
                try:
                    known[name] = checks.whole_seconds(value, "STOP_TIMEOUT")
                except VzError:
                    problems.append(f"{source}: STOP_TIMEOUT: {value!r} is not a whole number")
        elif name in ("local_uid", "local_gid"):
            text = value.strip()
            if text.isascii() and text.isdigit() and len(text) <= 10:
                known[name] = int(text)
            elif text:
                problems.append(f"{source}: {key}: {value!r} is not a host id")
        elif value:
            known[name] = value
    try:
        cfg = CtConfig(**known, extra=extra)  # the values that did convert: more problems?
    except CtConfigError as e:
        problems += [f"{source}: {problem}" for problem in e.problems]
    if problems:
        raise CtConfigError(problems, ExitCode.CONFIG, hint=f"correct {source}")
    return cfg


_NO_ADDRESS = frozenset({"0.0.0.0", "::", "::0"})
_CANONICAL = {
    "IP_ADDRESS": checks.ip_address,
    "NAMESERVER": checks.nameserver,
    "SEARCHDOMAIN": checks.domain,
    "HOSTNAME": checks.hostname,
}


def _canonical(key: str, value: str, problems: list[str], source: str) -> str | None:
    """``value`` of ``key`` in canonical form (``2001:DB8::0045`` -> ``2001:db8::45``); None
    for a bad one, which is listed in ``problems``."""
    try:
        return str(_CANONICAL[key](value, key))
    except VzError as e:
        problems.append(f"{source}: {key}: {e.message.removeprefix(f'Bad parameter for {key}: ')}")
        return None


def parse_ct_config(text: str, source: str) -> CtConfig:
    return ct_config_from(parse_kv(text, source), source)


def read_ct_config(host: HostConfig, ctid: str | int) -> CtConfig:
    path = conf_path(host, ctid)
    try:
        text = decode_text(path.read_bytes(), str(path))
    except FileNotFoundError:
        raise VzError(
            f"container configuration file {path} not found",
            ExitCode.CT_CONFIG_MISSING,
            hint=f"is CT {ctid} created? vzctl create {ctid} --ostemplate NAME",
        ) from None
    except OSError as e:
        raise VzError(f"cannot read {path}: {e.strerror}", ExitCode.SYSTEM) from None
    cfg = parse_ct_config(text, str(path))
    unused = sorted(k for k in cfg.extra if k not in ACTED_ON_EXTRA)
    if unused:
        from vzpkg import notes

        notes.once(host.run_dir, str(path), unused)
    return cfg


def _quote(value: str, *, keep_veid: bool) -> str:
    """``value`` in double quotes, as parse_kv (and sh) read it back.

    ``$VEID`` stays as it is, as OpenVZ writes it (vzctl's own parser knows no escapes), unless
    the file defines a VEID key that would expand it.
    """
    out: list[str] = []
    i = 0
    while i < len(value):
        match = _VEID.match(value, i) if keep_veid else None
        if match:
            out.append(match.group(0))
            i = match.end()
            continue
        char = value[i]
        out.append("\\" + char if char in '\\"$`' else char)
        i += 1
    return '"' + "".join(out) + '"'


def render_ct_config(cfg: CtConfig, base_text: str | None = None) -> str:
    """The file text for ``cfg``.

    With ``base_text`` (the current file, or the sample it was made from) comments, blank lines
    and the lines of unchanged keys are kept as they are; changed keys are rewritten in place,
    keys no longer set are dropped and new keys are appended.
    """
    values = cfg.to_values()
    keep_veid = "VEID" not in values
    if base_text:
        with contextlib.suppress(VzError):
            text = _render_over(base_text, values, keep_veid)
            # A line may refer to another ($KEY); if a change altered what such a line
            # means, the edited text would not read back as cfg: write it afresh instead.
            if parse_ct_config(text, "rendered") == cfg:
                return text
    return "".join(f"{key}={_quote(value, keep_veid=keep_veid)}\n" for key, value in values.items())


def _render_over(base_text: str, values: Mapping[str, str], keep_veid: bool) -> str:
    lines = base_text.splitlines()
    last_line_of: dict[str, int] = {}
    for number, line in enumerate(lines):
        match = _KV_LINE.match(line)
        if match:
            last_line_of[match.group(1)] = number
    out: list[str] = []
    for number, line in enumerate(lines):
        match = _KV_LINE.match(line)
        if not match:
            out.append(line + "\n")
            continue
        key = match.group(1)
        if last_line_of[key] != number:
            continue  # shadowed by a later line: sh reads the last
        # What the line means where it stands: parse the text up to it.
        old = parse_kv("\n".join(lines[: number + 1]), "base")[key]
        if key not in values:
            if key in FIELD_OF_KEY and not old.strip():
                out.append(line + "\n")  # KEY="" still says "not set"
            continue
        if not _same_value(key, old, values[key]):
            line = f"{key}={_quote(values[key], keep_veid=keep_veid)}"
        out.append(line + "\n")
    for key, value in values.items():
        if key not in last_line_of:
            out.append(f"{key}={_quote(value, keep_veid=keep_veid)}\n")
    return "".join(out)


def _same_value(key: str, old: str, new: str) -> bool:
    if FIELD_OF_KEY.get(key) in _LIST_FIELDS:
        return " ".join(old.split()) == new  # spacing may differ, the meaning does not
    return old == new


def write_ct_config(
    host: HostConfig, ctid: str | int, cfg: CtConfig, *, base_text: str | None = None
) -> Path:
    """Write ``CTID.conf`` atomically (temp file, fsync, rename, fsync of the directory).

    ``base_text`` is the text whose comments and layout to keep; by default the current file.
    The caller holds the CT's lock.
    """
    path = conf_path(host, ctid)
    if base_text is None:
        with contextlib.suppress(FileNotFoundError):
            base_text = decode_text(path.read_bytes(), str(path))
    data = render_ct_config(cfg, base_text).encode()
    try:
        host.conf_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        fsutil.atomic_write(path, data)
    except OSError as e:
        raise VzError(
            f"cannot write {path}: {e.strerror}", ExitCode.SYSTEM, hint=f"check {host.conf_dir}"
        ) from None
    return path


def update_ct_config(host: HostConfig, ctid: str | int, **changes: Any) -> CtConfig:
    """Change some fields of ``CTID.conf`` (``hostname="web"``, ``onboot=True``, ...) and
    return the new configuration. ``extra={...}`` replaces the unknown keys as a whole."""
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(CtConfig)})
    if unknown:
        raise TypeError(f"CtConfig has no field(s) {', '.join(unknown)}")
    path = conf_path(host, ctid)
    current = read_ct_config(host, ctid)
    new = dataclasses.replace(current, **changes)
    if new != current:
        write_ct_config(host, ctid, new, base_text=decode_text(path.read_bytes(), str(path)))
    return new


def sample_name_valid(name: str) -> str:
    if not _SAMPLE_NAME.fullmatch(name):
        raise VzError(
            f"invalid sample name {name!r}",
            ExitCode.INVALID_ARGUMENT,
            hint="a sample name is letters, digits, '.', '_' and '-' (e.g. basic)",
        )
    return name


def sample_dirs(host: HostConfig) -> tuple[Path, ...]:
    """Where samples are looked up, first match wins: the host's, then vzpkg's own."""
    return (host.conf_dir, SHIPPED_SAMPLES)


def list_samples(host: HostConfig) -> list[str]:
    names: set[str] = set()
    for where in sample_dirs(host):
        with contextlib.suppress(OSError):
            for entry in os.listdir(where):
                if entry.startswith(SAMPLE_PREFIX) and entry.endswith(SAMPLE_SUFFIX):
                    name = entry[len(SAMPLE_PREFIX) : -len(SAMPLE_SUFFIX)]
                    if _SAMPLE_NAME.fullmatch(name) and (where / entry).is_file():
                        names.add(name)
    return sorted(names)


def sample_path(host: HostConfig, name: str) -> Path:
    """The file of sample ``name`` (``--config NAME``): CONF_DIR's overrides the shipped one."""
    file_name = f"{SAMPLE_PREFIX}{sample_name_valid(name)}{SAMPLE_SUFFIX}"
    for where in sample_dirs(host):
        if (where / file_name).is_file():
            return where / file_name
    available = ", ".join(list_samples(host)) or "none"
    raise VzError(
        f"sample configuration {file_name} not found in {host.conf_dir} or {SHIPPED_SAMPLES}",
        ExitCode.INVALID_VALUE,
        hint=f"available samples: {available}",
    )


def read_sample(host: HostConfig, name: str) -> tuple[CtConfig, str]:
    """Sample ``name`` as a configuration and as text (to pass on as ``base_text``)."""
    path = sample_path(host, name)
    try:
        text = decode_text(path.read_bytes(), str(path))
    except OSError as e:
        raise VzError(f"cannot read {path}: {e.strerror}", ExitCode.SYSTEM) from None
    return parse_ct_config(text, str(path)), text
