"""vzctl: create, run and manage VPSs, with OpenVZ's commands, options and exit codes."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from vzpkg import checks
from vzpkg.cli import vzctl_actions as actions
from vzpkg.cli.common import debug_option, edge, json_option, print_json, setup
from vzpkg.ct.ids import parse_ctid
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig

if TYPE_CHECKING:
    from vzpkg.ct.status import Status

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _host() -> HostConfig:
    return actions.host()


def _ctid(value: str) -> int:
    return parse_ctid(value)


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
    setup(debug, quiet)
    ctx.obj = {"quiet": quiet}


def _quiet() -> bool:
    return bool(click.get_current_context().find_root().obj.get("quiet"))


DISKSPACE_HELP = (
    "A disk of its own, writes stopping at SIZE (10G; a plain number is KiB; unlimited); "
    "docs/resources.md."
)


@main.command(context_settings=CONTEXT)
@click.argument("ctid")
@click.option("--ostemplate", help="Template name (vzosname forms accepted).")
@click.option(
    "--layout", help=f"Private area layout: plain or overlay (default {checks.DEFAULT_LAYOUT})."
)
@click.option("--hostname")
@click.option("--ipadd", multiple=True, help="IP address (repeatable).")
@click.option("--config", "sample", help="Sample config ve-NAME.conf-sample to start from.")
@click.option("--private", help="Private area path (default VE_PRIVATE).")
@click.option("--root", help="Mount point (default VE_ROOT).")
@click.option(
    "--userns",
    type=click.Choice(["yes", "no"]),
    help="A user namespace of its own (default yes); no: a privileged VPS.",
)
@click.option("--diskspace", metavar="SIZE[:SIZE]", help=DISKSPACE_HELP)
@click.option("--diskinodes", metavar="N[:N]", help="Inodes of its disk (fixed when made).")
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
    userns: str | None,
    diskspace: str | None,
    diskinodes: str | None,
) -> None:
    """Create a VPS from a template cache."""
    from vzpkg.ct.create import create as create_ct

    host = _host()
    number = _ctid(ctid)
    cfg = create_ct(
        host,
        number,
        ostemplate,
        layout_name=None if layout is None else checks.layout(layout, "--layout"),
        hostname=None if hostname is None else checks.hostname(hostname),
        ipadd=tuple(checks.vps_address(ip) for ip in ipadd),
        sample=sample,
        private=private,
        root=root,
        userns=None if userns is None else userns == "yes",
        disk_options=_disk_options(diskspace, diskinodes),
    )
    ids = "privileged" if cfg.userns is None else f"host ids from {cfg.userns[0]}"
    space = cfg.extra.get("DISKSPACE", "").partition(":")[0]
    on_disk = f", a disk of {space}" if space and space != "unlimited" else ""
    _say(
        f"Container {number} created from {cfg.ostemplate} ({cfg.ve_layout} layout, {ids}"
        f"{on_disk})",
        _quiet(),
    )


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
@click.option("--timeout", help="Seconds to wait for a graceful stop (default STOP_TIMEOUT).")
@edge("vzctl")
def stop(ctid: str, fast: bool, timeout: str | None) -> None:
    """Stop a VPS: its init's shutdown signal, then SIGKILL after the timeout."""
    actions.stop(ctid, _quiet(), fast=fast, timeout=timeout)


@main.command(context_settings=CONTEXT)
@click.argument("ctid")
@click.option("--fast", is_flag=True, help="Kill at once, no graceful shutdown.")
@click.option("--timeout", help="Seconds to wait for a graceful stop (default STOP_TIMEOUT).")
@edge("vzctl")
def restart(ctid: str, fast: bool, timeout: str | None) -> None:
    """Stop (if running) and start a VPS."""
    actions.restart(ctid, _quiet(), fast=fast, timeout=timeout)


@main.command(context_settings=CONTEXT)
@click.argument("ctid")
@json_option
@edge("vzctl")
def status(ctid: str, as_json: bool) -> None:
    """Print whether the VPS exists, is mounted and is running."""
    from vzpkg.ct.status import status as ct_status

    host = _host()
    st = ct_status(host, _ctid(ctid))
    if as_json:
        print_json(
            {
                "ctid": st.ctid,
                "exist": st.exists,
                "mounted": st.mounted,
                "running": st.running,
                "nproc": st.nproc,
                "destroying": st.destroying,
                "userns": st.config is not None and not st.privileged,
                **_use_of(host, st.ctid, st.running),
                "disk": _disk_of(host, st),
            }
        )
    else:
        click.echo(st.openvz_line())


def _use_of(host: HostConfig, ctid: int, running: bool) -> dict[str, int | None]:
    """What a running VPS uses now: tasks, and memory in bytes (vzubc has the rest)."""
    if not running:
        return {"tasks": None, "memory": None}
    from vzpkg.cli.vzlist import beancounters

    counters = beancounters(host, ctid)
    pages = counters["physpages"]["held"]
    return {
        "tasks": counters["numproc"]["held"],
        "memory": None if pages is None else pages * 4096,
    }


def _disk_of(host: HostConfig, st: Status) -> dict[str, int] | None:
    """A mounted disk's use and limit, in bytes and inodes; None without one."""
    from vzpkg.ct import disk
    from vzpkg.ct.common import ct_paths

    if st.config is None or not st.mounted:
        return None
    use = disk.usage(ct_paths(host, st.ctid, st.config)[0])
    if use is None:
        return None
    return {"used": use.used, "limit": use.size, "inodes_used": use.inodes_used,
            "inodes": use.inodes}  # fmt: skip


@main.command(context_settings=CONTEXT)
@click.argument("ctid")
@edge("vzctl")
def mount(ctid: str) -> None:
    """Mount the VPS's root at VE_ROOT."""
    from vzpkg.ct import lifecycle

    host = _host()
    number = _ctid(ctid)
    lifecycle.mount(host, number)
    _say(f"Container {number} is mounted", _quiet())


@main.command(context_settings=CONTEXT)
@click.argument("ctid")
@edge("vzctl")
def umount(ctid: str) -> None:
    """Unmount the VPS's root."""
    from vzpkg.ct import lifecycle

    host = _host()
    number = _ctid(ctid)
    lifecycle.umount(host, number)
    _say(f"Container {number} is unmounted", _quiet())


@main.command(context_settings=CONTEXT)
@click.argument("ctid")
@edge("vzctl")
def destroy(ctid: str) -> None:
    """Remove a stopped VPS: private area, mount point, config (kept as .destroyed)."""
    from vzpkg.ct.create import destroy as destroy_ct

    host = _host()
    number = _ctid(ctid)
    destroy_ct(host, number)
    _say(f"Container {number} was destroyed", _quiet())


@main.command("exec", context_settings={**CONTEXT, "ignore_unknown_options": True})
@click.argument("ctid")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@edge("vzctl")
def exec_(ctid: str, command: tuple[str, ...]) -> None:
    """Run COMMAND in the VPS; exit 8 if it fails (use exec2 for its own exit code)."""
    code = actions.exec_(ctid, command)
    sys.exit(0 if code == 0 else int(ExitCode.EXEC_FAILED))


@main.command("exec2", context_settings={**CONTEXT, "ignore_unknown_options": True})
@click.argument("ctid")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@edge("vzctl")
def exec2(ctid: str, command: tuple[str, ...]) -> None:
    """Run COMMAND in the VPS and exit with its exit code."""
    sys.exit(actions.exec_(ctid, command))


@main.command(context_settings=CONTEXT)
@click.argument("ctid")
@click.option("--exec", "command", help="Run this command line instead of a login shell.")
@edge("vzctl")
def enter(ctid: str, command: str | None) -> None:
    """An interactive shell on a new pty inside the VPS (never the host's terminal)."""
    from vzpkg.ct import status

    host = _host()
    number = _ctid(ctid)
    st = status.status(host, number)
    if not st.running:
        raise VzError(f"CT {number} is not running", ExitCode.NOT_RUNNING)
    from vzpkg.ct.common import ct_paths

    _, root = ct_paths(host, number, st.config)
    argv = ["/bin/sh", "-c", command] if command else [status.shell_of(root), "-l"]
    from vzpkg.ct.engine import has_controlling_terminal

    if not has_controlling_terminal():
        raise VzError(
            "vzctl enter needs a terminal, and this process has none",
            ExitCode.INVALID_ARGUMENT,
            hint=f"use vzctl exec {number} COMMAND to run a command without one",
        )
    _say(f"entered into CT {number}", _quiet())
    code = status.exec_command(host, number, argv, tty=True)
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
    "--netif_add",
    multiple=True,
    metavar="IFNAME[,MAC,HOST_IFNAME,HOST_MAC,BRIDGE]",
    help="Add a bridged veth interface (docs/networking.md).",
)
@click.option("--netif_del", multiple=True, metavar="IFNAME", help="Remove one, or 'all'.")
@click.option(
    "--userpasswd",
    multiple=True,
    metavar="USER:PASSWORD",
    help="Set a password inside the running VPS (never saved).",
)
@click.option("--onboot", type=click.Choice(["yes", "no"]))
@click.option("--ram", metavar="SIZE", help="Memory limit (512M, 2G, unlimited).")
@click.option("--swap", metavar="SIZE", help="Swap beyond --ram (none unless set; basic: 1G).")
@click.option("--cpuunits", metavar="N", help="Relative CPU weight (1000: an ordinary VPS).")
@click.option("--cpulimit", metavar="PERCENT", help="CPU time in percent of one CPU.")
@click.option("--cpus", metavar="N", help="At most N CPUs' worth of time.")
@click.option("--cpumask", metavar="LIST", help="CPUs it may run on (0-1,3 or all).")
@click.option("--numproc", metavar="N", help="Tasks (processes and threads); unlimited.")
@click.option(
    "--devices", multiple=True, metavar="c|b:MAJOR:MINOR|all:r|w|rw|none", help="Grant a device."
)
@click.option("--devnodes", multiple=True, metavar="NAME:r|w|rw|none", help="e.g. net/tun:rw.")
@click.option("--diskspace", metavar="SIZE[:SIZE]", help=DISKSPACE_HELP + " Needs --save.")
@click.option("--diskinodes", metavar="N[:N]", help="Inodes of a disk still to be made.")
@click.option(
    "--userns",
    type=click.Choice(["yes", "no"]),
    help="Stopped VPS: move its files to a user namespace of its own (yes) or make it "
    "privileged (no). Needs --save.",
)
@click.option("--save", is_flag=True, help="Also write the changes to CTID.conf.")
@edge("vzctl")
def set_(
    ctid: str,
    hostname: str | None,
    nameserver: tuple[str, ...],
    searchdomain: str | None,
    ipadd: tuple[str, ...],
    ipdel: tuple[str, ...],
    netif_add: tuple[str, ...],
    netif_del: tuple[str, ...],
    userpasswd: tuple[str, ...],
    onboot: str | None,
    ram: str | None,
    swap: str | None,
    cpuunits: str | None,
    cpulimit: str | None,
    cpus: str | None,
    cpumask: str | None,
    numproc: str | None,
    devices: tuple[str, ...],
    devnodes: tuple[str, ...],
    diskspace: str | None,
    diskinodes: str | None,
    userns: str | None,
    save: bool,
) -> None:
    """Change VPS parameters: applied to a running VPS, written with --save."""
    from vzpkg.ct.settings import SetRequest, set_params

    host = _host()
    number = _ctid(ctid)
    request = SetRequest(
        hostname=hostname,
        nameservers=nameserver,
        searchdomain=searchdomain,
        ipadd=ipadd,
        ipdel=ipdel,
        netif_add=netif_add,
        netif_del=netif_del,
        userpasswd=userpasswd,
        onboot=None if onboot is None else onboot == "yes",
        userns=None if userns is None else userns == "yes",
        limits={
            key: value
            for key, value in (
                ("PHYSPAGES", ram),
                ("SWAPPAGES", swap),
                ("CPUUNITS", cpuunits),
                ("CPULIMIT", cpulimit),
                ("CPUS", cpus),
                ("CPUMASK", cpumask),
                ("NUMPROC", numproc),
                ("DEVICES", " ".join(devices) if devices else None),
                ("DEVNODES", " ".join(devnodes) if devnodes else None),
            )
            if value is not None
        },
        disk=_disk_options(diskspace, diskinodes),
    )
    for note in set_params(host, number, request, save=save):
        _say(note, _quiet())


def _disk_options(diskspace: str | None, diskinodes: str | None) -> dict[str, str]:
    return {
        key: value
        for key, value in (("DISKSPACE", diskspace), ("DISKINODES", diskinodes))
        if value is not None
    }


if __name__ == "__main__":  # the full CLI without the short paths (tests compare the two)
    from vzpkg.cli.entry import run_click

    run_click(main, "vzctl")
