"""What the runtime's actions (create, lifecycle, settings, status) share: where a VPS's runtime
state lives, its lock, and its places as its configuration names them."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from vzpkg import cgroups, checks, hostvalues, lock
from vzpkg.ct import conf, layout, places
from vzpkg.ct.engine import Runc
from vzpkg.ct.guest import GuestSettings, host_nameservers, host_searchdomains, resolve_in_root
from vzpkg.ct.runcargv import state_root
from vzpkg.errors import ExitCode
from vzpkg.hostconf import HostConfig

DEFAULT_LAYOUT = checks.DEFAULT_LAYOUT
DEFAULT_SAMPLE = "basic"
HOST_TINI = Path("/usr/bin/tini-static")
CGROUP_PARENT = "vzpkg"
CT_LOCK_HINT = "wait for that command to finish, then try again"


def runc_of(host: HostConfig) -> Runc:
    return Runc(Path(state_root(host.run_dir)))


def cgroup_parent(host: HostConfig) -> str:
    """The cgroup that holds this host configuration's VPSs (``/vzpkg/<CTID>``).

    CTIDs are unique per CONF_DIR only: a second configuration (a test host, say) gets a
    parent of its own, so that its VPS 101 never shares a cgroup with the host's VPS 101.
    """
    where = os.path.realpath(host.conf_dir)  # one directory, however it is named
    if where == os.path.realpath(hostvalues.DEFAULT_CONF_DIR):
        return CGROUP_PARENT
    digest = hashlib.sha256(os.fsencode(where)).hexdigest()
    return f"{CGROUP_PARENT}-{digest[:10]}"


def stray_pids(host: HostConfig, ctid: int) -> list[int]:
    """Processes left in the CT's cgroups: a VPS that runs although runc has no state for it
    (RUN_DIR changed or cleaned while it ran)."""
    return cgroups.procs_of_group(cgroup_parent(host), str(ctid))


def bundle_dir(host: HostConfig, ctid: int) -> Path:
    return host.run_dir / "ct" / str(ctid)


def render_cache_path(host: HostConfig, ctid: int) -> Path:
    """Guest files rendered at the last start (guest.RenderCache): kept across stops."""
    return host.run_dir / "ct" / f"{ctid}.render.json"


@contextlib.contextmanager
def ct_locked(host: HostConfig, ctid: int, *, wait: bool = False) -> Iterator[None]:
    """The CT's lock: every state-changing action holds it; a second one is refused (exit 9),
    or with ``wait`` waits for it (vzpkg's transactions, as yum waits for its lock)."""
    waiting = f"CT {ctid}: waiting for the command that holds it" if wait else None
    with lock.locked(host.lock_dir, f"ct-{ctid}", what=f"CT {ctid}", hint=CT_LOCK_HINT,
                     timeout=-1 if wait else 0, on_wait=waiting):  # fmt: skip
        yield


def ct_paths(host: HostConfig, ctid: int, cfg: conf.CtConfig | None) -> tuple[Path, Path]:
    """The CT's private area and root mount point, as configured (no checks of the places)."""
    return conf.private_path(host, ctid, cfg), conf.root_path(host, ctid, cfg)


def checked_paths(
    host: HostConfig, ctid: int, cfg: conf.CtConfig, code: ExitCode = ExitCode.CONFIG
) -> tuple[Path, Path]:
    """``ct_paths``, refused (``code``) when one is a host system directory or one of
    vzpkg's own: checked before anything is mounted, unmounted or removed there."""
    private, root = ct_paths(host, ctid, cfg)
    places.check_place(host, ctid, "private area", private, code)
    places.check_place(host, ctid, "root", root, code)
    return private, root


@contextlib.contextmanager
def opened_ct(
    host: HostConfig, ctid: int, code: ExitCode = ExitCode.CONFIG, *, wait: bool = False
) -> Iterator[tuple[conf.CtConfig, Path, Path]]:
    """The CT locked, with its configuration and its checked places (private area, root):
    how every state-changing action begins. Refused (``code``) when a place is a host system
    directory or vzpkg's, or when the private area is not provably this CT's (a config
    pointing at another VPS's area, whatever is mounted where)."""
    with ct_locked(host, ctid, wait=wait):
        cfg = conf.read_ct_config(host, ctid)
        private, root = checked_paths(host, ctid, cfg, code)
        if layout.condition(private) == "present" and not layout.is_own_private(
            host, ctid, private
        ):
            raise places.not_owned(ctid, private, "nothing was done", code)
        yield cfg, private, root


def guest_settings(cfg: conf.CtConfig) -> GuestSettings:
    """What the guest's files say; ``inherit`` (OpenVZ's NAMESERVER and SEARCHDOMAIN value)
    becomes the host's own, read now."""
    nameservers: list[str] = []
    for server in cfg.nameserver:
        nameservers += host_nameservers() if server == "inherit" else [server]
    domains: list[str] = []
    for domain in cfg.searchdomain:
        domains += host_searchdomains() if domain == "inherit" else [domain]
    return GuestSettings(
        hostname=cfg.hostname,
        ips=tuple(dict.fromkeys(ip.partition("/")[0] for ip in cfg.ip_address)),
        nameservers=tuple(dict.fromkeys(nameservers)),
        searchdomain=" ".join(dict.fromkeys(domains)) or None,
    )


def family_of(root: Path) -> str:
    """The VPS's package family, from what it has (its template may be gone from metadata)."""
    return "deb" if resolve_in_root(root, "/var/lib/dpkg/status") is not None else "rpm"
