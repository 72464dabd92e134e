"""The bodies of vzctl's commands, without click: the click CLI (vzctl.py) parses options and
calls these, and so do vzctl's short paths (vzctl_entry) for the plain forms of start, stop and
exec. Values are checked here, through vzpkg.checks and vzpkg.ct.ids, whichever way in."""

from __future__ import annotations

from collections.abc import Sequence

from vzpkg import checks
from vzpkg.cli.edge import require_root, say
from vzpkg.ct.ids import parse_ctid
from vzpkg.hostconf import HostConfig, load_host_config, report_unused_keys


def host() -> HostConfig:
    require_root("vzctl")
    config = load_host_config()
    report_unused_keys(config)
    return config


def start(ctid: str, quiet: bool) -> None:
    from vzpkg.ct import lifecycle

    config, number = host(), parse_ctid(ctid)
    if not quiet:
        say(f"Starting container {number} ...")
    init = lifecycle.start(config, number)
    if not quiet:
        say(f"Container {number} started ({init.kind} as init)")


def stop(ctid: str, quiet: bool, *, fast: bool = False, timeout: float | str | None = None) -> None:
    from vzpkg.ct import lifecycle

    seconds = None if timeout is None else checks.timeout(timeout, "--timeout")
    config, number = host(), parse_ctid(ctid)
    if not quiet:
        say(f"Stopping container {number} ...")
    how = lifecycle.stop(config, number, timeout=seconds, fast=fast)
    if not quiet:
        say(f"Container {number} was stopped" + (" (killed)" if how == "killed" else ""))


def restart(
    ctid: str, quiet: bool, *, fast: bool = False, timeout: float | str | None = None
) -> None:
    """Stop (if running) and start: the same actions, the same checks and messages."""
    from vzpkg.ct import status

    seconds = None if timeout is None else checks.timeout(timeout, "--timeout")
    config, number = host(), parse_ctid(ctid)
    if status.running_state(config, number)[0]:
        stop(ctid, quiet, fast=fast, timeout=seconds)
    start(ctid, quiet)


def exec_(ctid: str, words: Sequence[str]) -> int:
    """Run ``vzctl exec|exec2``'s command with the user's stdio; its exit code. The plan is
    runcargv.vzctl_exec_argv, which vzctl's short path calls too."""
    from vzpkg.ct.engine import run_attached
    from vzpkg.ct.runcargv import vzctl_exec_argv

    config = host()
    return run_attached(vzctl_exec_argv(ctid, words, config.conf_dir, config.run_dir))
