"""vzlist: list VPSs with OpenVZ's columns and options."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from vzpkg.cli.common import debug_option, edge, print_json, require_root, say, setup
from vzpkg.ct import conf, listing
from vzpkg.ct.common import ct_paths
from vzpkg.ct.ids import parse_ctid
from vzpkg.ct.status import Status, running_state, status
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig, load_host_config, report_unused_keys
from vzpkg.mounts import MountTable


def record(st: Status, host_root: str, private: str) -> dict[str, Any]:
    cfg = st.config
    state = "running" if st.running else "mounted" if st.mounted else "stopped"
    return {
        "ctid": st.ctid,
        "nproc": st.nproc,
        "status": "destroying" if st.destroying else state,
        "ip": list(cfg.ip_address) if cfg else [],
        "netif": _netifs(st.ctid, cfg.netif) if cfg else [],
        "hostname": cfg.hostname if cfg else None,
        "ostemplate": cfg.ostemplate if cfg else None,
        "layout": cfg.ve_layout if cfg else None,
        "onboot": bool(cfg.onboot) if cfg else False,
        "private": private,
        "root": host_root,
        "mounted": st.mounted,
        "userns": bool(cfg and cfg.userns),
        "userns_base": cfg.userns[0] if cfg and cfg.userns else None,
    }


def _netifs(ctid: int, text: str | None) -> list[dict[str, str | None]]:
    from vzpkg.ct import netconf

    return [
        {
            "ifname": n.ifname,
            "mac": n.mac,
            "host_ifname": n.host_ifname,
            "host_mac": n.host_mac,
            "bridge": n.bridge,
        }
        for n in netconf.parse_netifs(text or "", ctid)
    ]


def _record_of(
    host: HostConfig, ctid: int, mounts: MountTable
) -> tuple[Status, dict[str, Any]] | None:
    """The row of one CT. A CT whose CTID.conf cannot be read is still listed (from runc's
    view: running or not, its processes) with a warning naming the problem; the others are
    unaffected."""
    try:
        st = status(host, ctid, mounts)
    except VzError as e:
        say(f"vzlist: CT {ctid}: its settings are unknown: {e.message}")
        try:
            running, nproc = running_state(host, ctid)
        except VzError:
            return None
        st = Status(ctid, True, False, running, nproc, None)
        row = record(st, "", "")
        row["error"] = e.message
        return st, row
    cfg = st.config
    if cfg is None:
        return st, record(st, "", "")
    try:
        private, root = ct_paths(host, ctid, cfg)
    except VzError:
        return st, record(st, "", "")
    row = record(st, str(root), str(private))
    if st.running:
        row["beancounters"] = beancounters(host, ctid)
    row["disk"] = disk_counters(cfg.extra, private)
    return st, row


LONG_MAX = 9223372036854775807


def _kib(amount: int | None) -> int | None:
    return None if amount is None else amount // 1024


def disk_counters(values: Mapping[str, str], private: Path) -> dict[str, dict[str, int | None]]:
    """OpenVZ's diskspace (KiB) and diskinodes: in use (while mounted), soft and hard limit
    (from CTID.conf; a disk's inodes when it has no DISKINODES)."""
    from vzpkg.ct import disk

    try:
        limits = disk.parse({k: v for k, v in values.items() if k in disk.KEYS})
    except VzError:
        limits = disk.Disk()
    use = disk.usage(private)
    # Set to unlimited: OpenVZ's LONG_MAX, as the beancounters show it; not set: nothing.
    unlimited = {k: LONG_MAX for k in disk.KEYS if k in values}
    inodes = None if use is None else use.inodes  # the disk's own count, while mounted
    return {
        "diskspace": {
            "held": None if use is None else _kib(use.used),
            "soft": _kib(limits.space) if limits.space else unlimited.get("DISKSPACE"),
            "hard": _kib(limits.space_hard) if limits.space_hard else unlimited.get("DISKSPACE"),
        },
        "diskinodes": {
            "held": None if use is None else use.inodes_used,
            "soft": limits.inodes or unlimited.get("DISKINODES") or inodes,
            "hard": limits.inodes_hard or unlimited.get("DISKINODES") or inodes,
        },
    }


def beancounters(host: HostConfig, ctid: int) -> dict[str, dict[str, int | None]]:
    """The running VPS's use of what its limits count (vzpkg.ct.usage)."""
    from vzpkg.ct import runcargv, runcstate, usage
    from vzpkg.ct.ids import container_id

    paths = runcstate.cgroup_paths(runcargv.state_root(host.run_dir), container_id(ctid))
    return {name: c.as_dict() for name, c in usage.counters(paths).items()}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-a", "--all", "all_", is_flag=True, help="Running and stopped VPSs.")
@click.option("-S", "--stopped", is_flag=True, help="Only stopped VPSs.")
@click.option("-H", "--no-header", is_flag=True, help="No header line.")
@click.option("-o", "--output", "fields", help="Comma-separated fields (-L lists them).")
@click.option("-s", "--sort", "sort_key", help="Sort by field (-field: reverse).")
@click.option("-1", "--ctid-only", is_flag=True, help="Only CTIDs, one per line.")
@click.option("-j", "--json", "as_json", is_flag=True, help="JSON (all fields).")
@click.option("-L", "--list-fields", is_flag=True, help="List the field names.")
@debug_option
@click.argument("ctids", nargs=-1)
@edge("vzlist")
def main(
    all_: bool,
    stopped: bool,
    no_header: bool,
    fields: str | None,
    sort_key: str | None,
    ctid_only: bool,
    as_json: bool,
    list_fields: bool,
    debug: bool,
    ctids: tuple[str, ...],
) -> None:
    """List VPSs: by default the running ones, with CTID NPROC STATUS IP_ADDR HOSTNAME."""
    setup(debug)
    if list_fields:
        for field in listing.FIELDS.values():
            click.echo(f"{field.name:<12} {field.header}")
        return
    require_root("vzlist")
    host = load_host_config()
    report_unused_keys(host)
    numbers = [parse_ctid(c) for c in ctids] or conf.list_ctids(host)
    records = []
    mounts = MountTable()  # one read of the host's mount table for all rows, not one per row
    for number in numbers:
        entry = _record_of(host, number, mounts)
        if entry is None:
            continue
        st, row = entry
        if st.config is None and not st.exists and not st.running:
            continue  # no such CT (named, or a CTID.conf that went away meanwhile)
        if not st.exists and not st.destroying and not st.running and not ctids:
            continue
        if ctids or all_ or (stopped and not st.running) or (not stopped and st.running):
            records.append(row)
    ordered = listing.sort_records(records, sort_key)
    if not ordered:  # as OpenVZ's vzlist: nothing to list is an error scripts can test
        if as_json:
            print_json([])
        else:
            say("Container(s) not found")
        sys.exit(int(ExitCode.FAILURE))
    if as_json:
        print_json(ordered)
    elif ctid_only:
        for r in ordered:
            click.echo(r["ctid"])
    else:
        click.echo(
            listing.format_table(ordered, listing.parse_fields(fields), header=not no_header),
            nl=False,
        )
