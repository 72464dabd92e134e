"""Per-distribution guest setup and init handling, done from the host before a VPS starts.

Files are rendered from jinja2 templates under vzpkg/ct/dists/<family>/ (falling back to
dists/common/) and written with vzpkg.fsutil, which never follows a symlink the VPS controls.
What must run inside the VPS (ssh host keys, passwords) is done with the runtime's exec, as the
VPS's root in its namespaces, never as the host's root.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from vzpkg import fsutil

if TYPE_CHECKING:
    import jinja2
from vzpkg.errors import ExitCode, VzError

DISTS = Path(__file__).resolve().parent / "dists"
TINI_IN_CT = "/.vzpkg/tini"
SYMLINK_HOPS = 40
_GETTY = re.compile(r"^[^#:]*:[^:]*:respawn:\S*getty\b.*\btty[0-9]+\b")


@dataclass(frozen=True)
class GuestSettings:
    hostname: str | None = None
    ips: Sequence[str] = ()
    nameservers: Sequence[str] = ()
    searchdomain: str | None = None


@dataclass(frozen=True)
class InitKind:
    """What runs as PID 1 and how to ask it to stop."""

    kind: str  # sysvinit | systemd | tini
    argv: tuple[str, ...]
    stop_signal: str


@functools.cache
def _environment() -> jinja2.Environment:
    import jinja2  # lazy: most vzctl commands render nothing

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(DISTS)),
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def render(family: str, name: str, **values: object) -> str:
    import jinja2

    env = _environment()
    for candidate in (f"{family}/{name}.j2", f"common/{name}.j2"):
        try:
            return env.get_template(candidate).render(**values)
        except jinja2.TemplateNotFound:
            continue
    raise VzError(f"no guest template {name} for family {family}", ExitCode.SYSTEM)


class RenderCache:
    """Rendered guest files kept between starts of one VPS, so that a start with unchanged
    settings does not load jinja2 (~20 ms).

    A JSON file (root-only, in the VPS's runtime directory) maps (family, template, values,
    the template files' size and mtime) to the text rendered from them; what a start did not
    ask for is dropped when it is saved. A missing or unreadable file is an empty cache.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, str] = {}
        self.used: dict[str, str] = {}
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
            self.entries = data

    def render(self, family: str, name: str, **values: object) -> str:
        stamps = []
        for candidate in (f"{family}/{name}.j2", f"common/{name}.j2"):
            try:
                st = os.stat(DISTS / candidate)
            except FileNotFoundError:
                continue
            stamps.append([candidate, st.st_size, st.st_mtime_ns])
        key = json.dumps([family, name, values, stamps], sort_keys=True)
        text = self.entries.get(key)
        if text is None:
            text = render(family, name, **values)
        self.used[key] = text
        return text

    def save(self) -> None:
        if self.used != self.entries:
            data = json.dumps(self.used, sort_keys=True).encode()
            fsutil.atomic_write(self.path, data, 0o600)


def resolve_in_root(root: Path, path: str) -> PurePosixPath | None:
    """Resolve ``path`` as the VPS would see it (symlinks relative to its own /), without ever
    leaving ``root``. None when it does not exist."""
    parts = list(PurePosixPath(path).parts[1:])
    resolved = PurePosixPath("/")
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            resolved = resolved.parent
            continue
        candidate = resolved / part
        try:
            st = os.lstat(root / str(candidate).lstrip("/"))
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > SYMLINK_HOPS:
                return None
            target = os.readlink(root / str(candidate).lstrip("/"))
            parts = list(PurePosixPath(target).parts[1 if target.startswith("/") else 0 :]) + parts
            if target.startswith("/"):
                resolved = PurePosixPath("/")
            continue
        resolved = candidate
    return resolved


def detect_init(root: Path) -> InitKind:
    """The template's init when it has a real one, else tini (bind-mounted from the host)."""
    init = resolve_in_root(root, "/sbin/init")
    if init is not None and (root / str(init).lstrip("/")).is_file():
        name = init.name
        if name == "systemd":
            return InitKind("systemd", ("/sbin/init",), "SIGRTMIN+3")
        if name == "init" and "busybox" not in str(init):
            return InitKind("sysvinit", ("/sbin/init",), "SIGPWR")
    # No init, or busybox's (which wants ttys to spawn shells on): tini keeps the VPS up,
    # reaps orphans, and exits on SIGTERM after passing it on.
    return InitKind(
        "tini",
        (
            TINI_IN_CT,
            "-s",
            "-g",
            "--",
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done",
        ),
        "SIGTERM",
    )


def _read(root: Path, rel: str) -> str | None:
    try:
        return fsutil.read_file_beneath(root, rel).decode(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None  # a symlink planted by the VPS: not ours to read
        raise


def apply_guest_setup(
    root: Path,
    family: str,
    settings: GuestSettings,
    init: InitKind,
    cache: RenderCache | None = None,
    owner: tuple[int, int] | None = None,
) -> None:
    """Write hostname, hosts, resolv.conf and the init's stop hook into the VPS's root
    (rendered through ``cache`` when given), owned by ``owner`` (the host ids of the VPS's
    root, when it has a user namespace)."""
    render_text = cache.render if cache is not None else render

    def write(rel: str, data: bytes, mode: int = 0o644) -> None:
        fsutil.write_file_beneath(root, rel, data, mode, owner=owner)

    if settings.hostname:
        write("etc/hostname", f"{settings.hostname}\n".encode())
    short = settings.hostname.split(".")[0] if settings.hostname else None
    write(
        "etc/hosts",
        render_text(
            family, "hosts", hostname=settings.hostname, short=short, ips=list(settings.ips)
        ).encode(),
    )
    if settings.nameservers or settings.searchdomain:
        write(
            "etc/resolv.conf",
            render_text(
                family,
                "resolv.conf",
                nameservers=list(settings.nameservers),
                searchdomain=settings.searchdomain,
            ).encode(),
        )
    _network_files(root, family, settings, render_text, write)
    if init.kind == "sysvinit":
        inittab = _read(root, "etc/inittab")
        if inittab is not None:
            line = render_text(family, "inittab-powerfail").strip().splitlines()[-1]
            # A VPS has no virtual consoles: gettys on tty1..6 would only respawn and fail.
            kept = [
                "#" + x if _GETTY.match(x) else x
                for x in inittab.splitlines()
                if not x.startswith("pf:")
            ]
            if line not in kept:
                kept.append(line)
            text = "\n".join(kept) + "\n"
            if text != inittab:
                write("etc/inittab", text.encode())


VENET_BEGIN = "# --- vzpkg venet0:"
VENET_END = "# --- vzpkg venet0 end ---"
NM_CONNECTION = "etc/NetworkManager/system-connections/venet0.nmconnection"


def _network_files(
    root: Path,
    family: str,
    settings: GuestSettings,
    render_text: Callable[..., str],
    write: Callable[..., None],
) -> None:
    """The routed addresses in the guest's own network configuration, so that a restart of
    its networking inside keeps them: a block of /etc/network/interfaces (Debian family, where
    ifupdown's /etc/network exists; the rest of the file is the admin's), or a NetworkManager
    keyfile (rpm family, where NetworkManager is installed)."""
    values = {
        "v4": [ip for ip in settings.ips if ":" not in ip],
        "v6": [ip for ip in settings.ips if ":" in ip],
        "gateway4": "169.254.0.1",
        "gateway6": "fe80::1",
    }
    if family == "deb" and _is_dir(root, "etc/network"):
        text = _read(root, "etc/network/interfaces")
        kept = _without_block(text or "auto lo\niface lo inet loopback\n")
        block = render_text(family, "interfaces-venet0", **values) if settings.ips else ""
        new = kept + ("\n" if kept and not kept.endswith("\n\n") and block else "") + block
        if new != (text or "") and (text is not None or block):
            write("etc/network/interfaces", new.encode())
    elif family == "rpm" and _is_dir(root, "etc/NetworkManager/system-connections"):
        if settings.ips:
            text = render_text(family, "venet0.nmconnection", **values)
            write(NM_CONNECTION, text.encode(), 0o600)
        elif _read(root, NM_CONNECTION) is not None:
            fsutil.remove_beneath(root, NM_CONNECTION)


def _without_block(text: str) -> str:
    """``text`` without vzpkg's venet0 block."""
    lines: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        if line.startswith(VENET_BEGIN):
            skipping = True
            if lines and lines[-1] == "\n":  # the blank line put before it
                lines.pop()
        elif skipping and line.startswith(VENET_END):
            skipping = False
        elif not skipping:
            lines.append(line)
    return "".join(lines)


def _is_dir(root: Path, rel: str) -> bool:
    found = resolve_in_root(root, "/" + rel)
    return found is not None and (root / str(found).lstrip("/")).is_dir()


def host_nameservers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    """For NAMESERVER inherit: the host's own nameservers."""
    return [words[1] for words in _resolv_lines(resolv_conf, "nameserver") if len(words) > 1]


def host_searchdomains(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    """For SEARCHDOMAIN inherit: the host's own search domains (its last search line)."""
    found = [words[1:] for words in _resolv_lines(resolv_conf, "search")]
    return found[-1] if found else []


def _resolv_lines(resolv_conf: Path, keyword: str) -> list[list[str]]:
    try:
        text = resolv_conf.read_text(errors="replace")
    except OSError:
        return []
    return [words for line in text.splitlines() if (words := line.split())[:1] == [keyword]]
