"""vzctl status, exec and enter: what a VPS is doing, and commands run inside it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vzpkg import run
from vzpkg.ct import conf, layout, net, places
from vzpkg.ct.common import ct_locked, ct_paths, runc_of, stray_pids
from vzpkg.ct.engine import run_attached
from vzpkg.ct.guest import resolve_in_root
from vzpkg.ct.runcargv import vps_exec_argv as exec_argv
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig
from vzpkg.mounts import MountTable


@dataclass(frozen=True)
class Status:
    ctid: int
    exists: bool
    mounted: bool
    running: bool
    nproc: int | None
    config: conf.CtConfig | None
    destroying: bool = False  # a destroy was interrupted: vzctl destroy finishes it

    @property
    def privileged(self) -> bool:
        """A VPS without a user namespace of its own (made with --userns no, or before)."""
        return self.config is not None and self.config.userns is None

    def openvz_line(self) -> str:
        """As vzctl status prints it: ``CTID 101 exist mounted running``; more words after
        these (as vzctl adds ``suspended``): ``destroying`` when a destroy was cut short,
        ``privileged`` for a VPS without a user namespace."""
        return (
            f"CTID {self.ctid} {'exist' if self.exists else 'deleted'} "
            f"{'mounted' if self.mounted else 'unmounted'} "
            f"{'running' if self.running else 'down'}"
            + (" destroying" if self.destroying else "")
            + (" privileged" if self.privileged else "")
        )


def status(host: HostConfig, ctid: int, mounts: MountTable | None = None) -> Status:
    """The CT's status. A CT without CTID.conf does not exist; an unreadable CTID.conf raises
    (its VzError says why). ``mounts``: one copy of the mount table for a command that asks
    for many CTs' status (vzlist), rather than a read per mounted CT."""
    try:
        cfg: conf.CtConfig | None = conf.read_ct_config(host, ctid)
    except VzError as e:
        if e.code != ExitCode.CT_CONFIG_MISSING:
            raise
        cfg = None
    if cfg is None:
        return Status(ctid, False, False, False, None, None)
    private_dir, root_dir = ct_paths(host, ctid, cfg)
    running, nproc = running_state(host, ctid)
    if not running and os.path.exists(net.state_path(host.run_dir, ctid)):
        _network_of_dead_init(host, ctid)
    condition = layout.condition(private_dir)
    entry = places.top_mount(root_dir, mounts)
    mounted = entry is not None and places.is_own_mount(root_dir, private_dir, entry)
    return Status(
        ctid, condition == "present", mounted, running, nproc, cfg, condition == "destroying"
    )


def _network_of_dead_init(host: HostConfig, ctid: int) -> None:
    """What the host still has for a VPS whose init died by itself (its veths went with its
    namespace; proxy entries stay): removed now, when no other command holds the CT."""
    try:
        with ct_locked(host, ctid):
            if not running_state(host, ctid)[0]:
                net.teardown(host.run_dir, ctid)
    except VzError as e:
        if e.code != ExitCode.LOCKED:
            raise


def running_state(host: HostConfig, ctid: int) -> tuple[bool, int | None]:
    """Whether the CT's init is there (running, paused or being created), and how many
    processes it has; from runc alone (no CTID.conf needed)."""
    runc = runc_of(host)
    state = runc.state(ctid)
    if state is None:
        strays = stray_pids(host, ctid)  # it runs, though runc lost its state
        return bool(strays), len(strays) or None
    running = state.is_active
    return running, len(runc.pids(ctid)) if running else None


def exec_command(host: HostConfig, ctid: int, argv: Sequence[str], *, tty: bool = False) -> int:
    """Run ``argv`` in the VPS with the user's stdio; its exit code."""
    env = (("TERM", os.environ.get("TERM", "xterm")),) if tty else ()
    return run_attached(
        exec_argv(host.conf_dir, host.run_dir, ctid, argv, tty=tty, env=env), tty=tty
    )


def exec_capture(
    host: HostConfig, ctid: int, argv: Sequence[str], input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a command inside the VPS for vzctl's own purposes (not the user's stdio)."""
    return run.run(
        exec_argv(host.conf_dir, host.run_dir, ctid, argv),
        stdout=subprocess.PIPE,
        input=input,
        check=False,
    )


def shell_of(root: Path) -> str:
    return "/bin/bash" if resolve_in_root(root, "/bin/bash") else "/bin/sh"
