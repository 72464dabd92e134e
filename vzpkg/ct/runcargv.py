"""runc's command lines, built in one place for the full CLI (engine.Runc) and vzctl's short
paths. Light to import (os only)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from vzpkg import procenv
from vzpkg.ct import runcstate
from vzpkg.ct.ids import container_id, parse_ctid
from vzpkg.errors import ExitCode, VzError

STATE_SUBDIR = "runc"  # runc's --root, below RUN_DIR


def state_root(run_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(run_dir), STATE_SUBDIR)


def runc_argv(runc: str, root: str | os.PathLike[str], *args: str | os.PathLike[str]) -> list[str]:
    return [runc, "--root", os.fspath(root), *(os.fspath(a) for a in args)]


def exec_argv(
    runc: str,
    root: str | os.PathLike[str],
    container: str,
    argv: Sequence[str],
    *,
    tty: bool = False,
    env: Sequence[tuple[str, str]] = (),
    cwd: str = "/",
) -> list[str]:
    """``runc exec`` of ``argv`` in ``container``.

    With ``tty`` runc makes a new pty inside the container (devpts of the VPS) and relays it to
    our stdio: the command never gets the host's terminal.
    """
    if not argv:
        raise VzError("no command to execute", ExitCode.INVALID_ARGUMENT)
    args: list[str] = ["exec", "--cwd", cwd]
    if tty:
        args.append("--tty")
    for key, value in env:
        if not key or "=" in key:
            raise VzError(f"bad environment variable name {key!r}", ExitCode.INVALID_ARGUMENT)
        args += ["--env", f"{key}={value}"]
    return runc_argv(runc, root, *args, container, *argv)


def shell_command(words: Sequence[str]) -> list[str]:
    """As vzctl: the words of ``vzctl exec CTID WORDS...`` form one command line for the VPS's
    /bin/sh."""
    if not words:
        raise VzError(
            "no command given", ExitCode.INVALID_ARGUMENT, hint="vzctl exec CTID COMMAND [ARG...]"
        )
    return ["/bin/sh", "-c", " ".join(words)]


def find_runc() -> str:
    runc = procenv.which("runc", procenv.BASE_PATH + ":" + os.environ.get("PATH", ""))
    if runc is None:
        raise VzError(
            "runc is needed to run VPSs but is not installed",
            ExitCode.TOOL_MISSING,
            hint="apt-get install runc",
        )
    return runc


def vps_exec_argv(
    conf_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    ctid: int,
    argv: Sequence[str],
    *,
    tty: bool = False,
    env: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """``runc exec`` of ``argv`` in running CT ``ctid``; refused when the CT does not exist or
    does not run. The one plan of ``vzctl exec`` for the full CLI and the short path (no
    CTID.conf parsing: a running VPS with a broken CTID.conf can still be entered to fix it)."""
    conf = os.path.join(os.fspath(conf_dir), f"{ctid}.conf")
    if not os.path.isfile(conf):
        raise VzError(
            f"container configuration file {conf} not found",
            ExitCode.CT_CONFIG_MISSING,
            hint=f"is CT {ctid} created? vzctl create {ctid} --ostemplate NAME",
        )
    runc, root = find_runc(), state_root(run_dir)
    state = runcstate.query(root, container_id(ctid), runc)
    if state is None or state.status != "running":
        raise VzError(f"CT {ctid} is not running", ExitCode.NOT_RUNNING, hint=f"vzctl start {ctid}")
    return exec_argv(runc, root, container_id(ctid), argv, tty=tty, env=env)


def vzctl_exec_argv(
    ctid: str,
    words: Sequence[str],
    conf_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
) -> list[str]:
    """The plan of ``vzctl exec|exec2 CTID WORDS...``: the CTID checked, the words as one
    shell command line, the CT running. The full CLI (vzctl_actions.exec_) and the short path
    (vzctl_entry) both call this, after reading the host configuration through the same checks
    (hostvalues)."""
    return vps_exec_argv(conf_dir, run_dir, parse_ctid(ctid), shell_command(words))
