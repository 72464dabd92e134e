"""vzctl: create, run and manage VPSs, with OpenVZ's commands, options and exit codes."""

from __future__ import annotations

import sys

import click

from vzpkg.cli import vzctl_actions as actions
from vzpkg.cli.common import debug_option, edge, json_option, print_json, setup
from vzpkg.ct import conf, vps
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _host() -> HostConfig:
    return actions.host()


def _ctid(value: str) -> int:
    return conf.ctid_valid(value)


def _say(text: str, quiet: bool = False) -> None:
    if not quiet:
        click.echo(text, err=True)


@click.group(context_settings=CONTEXT)
@debug_option
@click.option("-q", "--quiet", is_flag=True, help="Say nothing but errors.")
@click.option("-v", "--verbose", is_flag=True, help="Accepted for compatibility.")
@click.pass_context
def main(ctx: click.Context, debug: bool, quiet: bool, verbose: bool) -> None:
    """Control VPSs: vzctl COMMAND CTID [OPTIONS]. Exit codes: docs/exit-codes.md."""
    setup(debug)
    ctx.obj = {"quiet": quiet}


def _quiet() -> bool:
    return bool(click.get_current_context().find_root().obj.get("quiet"))


@main.command(context_settings=CONTEXT)
@click.argument("ctid")
@click.option("--ostemplate", help="Template name (vzosname forms accepted).")
@click.option(
    "--layout",
    type=click.Choice(["plain", "overlay"]),
    help=f"Private area layout (default {vps.DEFAULT_LAYOUT}).",
)
@click.option("--hostname")
@click.option("--ipadd", multiple=True, help="IP address (repeatable).")
@click.option("--config", "sample", help="Sample config ve-NAME.conf-sample to start from.")
@click.option("--private", help="Private area path (default VE_PRIVATE).")
@click.option("--root", help="Mount point (default VE_ROOT).")
@edge("vzctl")
def create(
    ctid: str,
    ostemplate: str | None,
    layout: str | None,
    hostname: str | None,
    ipadd: tuple[str, ...],
    sample: str | None,
    private: str | None,
    root: str | None,
) -> None:
    """Create a VPS from a template cache."""
    host = _host()
    number = _ctid(ctid)
    cfg = vps.create(
        host,
        number,
        ostemplate,
        layout_name=layout,
        hostname=hostname,
        ipadd=ipadd,
        sample=sample,
        private=private,
        root=root,
    )
    _say(f"Container {number} created from {cfg.ostemplate} ({cfg.ve_layout} layout)", _quiet())


@main.command(context_settings=CONTEXT)
@click.argument("ctid")
@click.option(
    "--wait", is_flag=True, help="Accepted for compatibility (start always waits for init to run)."
)
@edge("vzctl")
def start(ctid: str, wait: bool) -> None:
    """Start a VPS: its own init becomes PID 1."""
    actions.start(ctid, _quiet())


@main.command(context_settings=CONTEXT)
@click.argument("ctid")
@click.option("--fast", is_flag=True, help="Kill at once, no graceful shutdown.")
@click.option(
    "--timeout", type=float, help="Seconds to wait for a graceful stop (default STOP_TIMEOUT)."
)
@edge("vzctl")
def stop(ctid: str, fast: bool, timeout: float | None) -> None:
    """Stop a VPS: its init's shutdown signal, then SIGKILL after the timeout."""
    actions.stop(ctid, _quiet(), fast=fast, timeout=timeout)


@main.command(context_settings=CONTEXT)
@click.argument("ctid")
@click.option("--fast", is_flag=True)
@click.option("--timeout", type=float)
@edge("vzctl")
def restart(ctid: str, fast: bool, timeout: float | None) -> None:
    """Stop (if running) and start a VPS."""
    host = _host()
    number = _ctid(ctid)
    if vps.status(host, number).running:
        vps.stop(host, number, timeout=timeout, fast=fast)
        _say(f"Container {number} was stopped", _quiet())
    init = vps.start(host, number)
    _say(f"Container {number} started ({init.kind} as init)", _quiet())


@main.command(context_settings=CONTEXT)
@click.argument("ctid")
@json_option
@edge("vzctl")
def status(ctid: str, as_json: bool) -> None:
    """Print whether the VPS exists, is mounted and is running."""
    host = _host()
    st = vps.status(host, _ctid(ctid))
    if as_json:
        print_json(
            {
                "ctid": st.ctid,
                "exist": st.exists,
                "mounted": st.mounted,
                "running": st.running,
                "nproc": st.nproc,
            }
        )
    else:
        click.echo(st.openvz_line())


@main.command(context_settings=CONTEXT)
@click.argument("ctid")
@edge("vzctl")
def mount(ctid: str) -> None:
    """Mount the VPS's root at VE_ROOT."""
    vps.mount(_host(), _ctid(ctid))
    _say(f"Container {ctid} is mounted", _quiet())


@main.command(context_settings=CONTEXT)
@click.argument("ctid")
@edge("vzctl")
def umount(ctid: str) -> None:
    """Unmount the VPS's root."""
    vps.umount(_host(), _ctid(ctid))
    _say(f"Container {ctid} is unmounted", _quiet())


@main.command(context_settings=CONTEXT)
@click.argument("ctid")
@edge("vzctl")
def destroy(ctid: str) -> None:
    """Remove a stopped VPS: private area, mount point, config (kept as .destroyed)."""
    vps.destroy(_host(), _ctid(ctid))
    _say(f"Container {ctid} was destroyed", _quiet())


def _command_argv(command: tuple[str, ...]) -> list[str]:
    if not command:
        raise VzError(
            "no command given", ExitCode.INVALID_ARGUMENT, hint="vzctl exec CTID COMMAND [ARG...]"
        )
    # As vzctl: the words form one shell command line run by the VPS's /bin/sh.
    return ["/bin/sh", "-c", " ".join(command)]


@main.command("exec", context_settings={**CONTEXT, "ignore_unknown_options": True})
@click.argument("ctid")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@edge("vzctl")
def exec_(ctid: str, command: tuple[str, ...]) -> None:
    """Run COMMAND in the VPS; exit 8 if it fails (use exec2 for its own exit code)."""
    code = vps.exec_command(_host(), _ctid(ctid), _command_argv(command))
    sys.exit(0 if code == 0 else int(ExitCode.EXEC_FAILED))


@main.command("exec2", context_settings={**CONTEXT, "ignore_unknown_options": True})
@click.argument("ctid")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@edge("vzctl")
def exec2(ctid: str, command: tuple[str, ...]) -> None:
    """Run COMMAND in the VPS and exit with its exit code."""
    sys.exit(vps.exec_command(_host(), _ctid(ctid), _command_argv(command)))


@main.command(context_settings=CONTEXT)
@click.argument("ctid")
@click.option("--exec", "command", help="Run this command line instead of a login shell.")
@edge("vzctl")
def enter(ctid: str, command: str | None) -> None:
    """An interactive shell on a new pty inside the VPS (never the host's terminal)."""
    host = _host()
    number = _ctid(ctid)
    st = vps.status(host, number)
    if not st.running:
        raise VzError(f"CT {number} is not running", ExitCode.NOT_RUNNING)
    root = conf.root_path(host, number, st.config)
    argv = ["/bin/sh", "-c", command] if command else [vps.shell_of(root), "-l"]
    _say(f"entered into CT {number}", _quiet())
    code = vps.exec_command(host, number, argv, tty=True)
    _say(f"exited from CT {number}", _quiet())
    sys.exit(code)


@main.command("set", context_settings=CONTEXT)
@click.argument("ctid")
@click.option("--hostname")
@click.option("--nameserver", multiple=True, help="IP, or 'inherit' for the host's.")
@click.option("--searchdomain")
@click.option("--ipadd", multiple=True)
@click.option("--ipdel", multiple=True, help="IP to remove, or 'all'.")
@click.option(
    "--userpasswd",
    multiple=True,
    metavar="USER:PASSWORD",
    help="Set a password inside the running VPS (never saved).",
)
@click.option("--onboot", type=click.Choice(["yes", "no"]))
@click.option("--save", is_flag=True, help="Also write the changes to CTID.conf.")
@edge("vzctl")
def set_(
    ctid: str,
    hostname: str | None,
    nameserver: tuple[str, ...],
    searchdomain: str | None,
    ipadd: tuple[str, ...],
    ipdel: tuple[str, ...],
    userpasswd: tuple[str, ...],
    onboot: str | None,
    save: bool,
) -> None:
    """Change VPS parameters: applied to a running VPS, written with --save."""
    request = vps.SetRequest(
        hostname=hostname,
        nameservers=nameserver,
        searchdomain=searchdomain,
        ipadd=ipadd,
        ipdel=ipdel,
        userpasswd=userpasswd,
        onboot=None if onboot is None else onboot == "yes",
    )
    for note in vps.set_params(_host(), _ctid(ctid), request, save=save):
        _say(note, _quiet())
