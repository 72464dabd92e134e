"""vzctl start and stop without click: the bodies of those commands, shared by the click CLI
(vzctl.py) and the short path of vzctl_entry for the plain ``vzctl [-q] start|stop CTID``
(loading click costs ~17 ms of a start that runc alone makes 30 ms)."""

from __future__ import annotations

from vzpkg.cli.edge import require_root, say
from vzpkg.ct import conf, vps
from vzpkg.hostconf import HostConfig, load_host_config


def host() -> HostConfig:
    require_root("vzctl")
    return load_host_config()


def start(ctid: str, quiet: bool) -> None:
    config, number = host(), conf.ctid_valid(ctid)
    if not quiet:
        say(f"Starting container {number} ...")
    init = vps.start(config, number)
    if not quiet:
        say(f"Container {number} started ({init.kind} as init)")


def stop(ctid: str, quiet: bool, *, fast: bool = False, timeout: float | None = None) -> None:
    config, number = host(), conf.ctid_valid(ctid)
    if not quiet:
        say(f"Stopping container {number} ...")
    how = vps.stop(config, number, timeout=timeout, fast=fast)
    if not quiet:
        say(f"Container {number} was stopped" + (" (killed)" if how == "killed" else ""))
