"""vzctl set: change a VPS's parameters, applied to it while it runs and saved with --save.

Every value is checked (vzpkg.checks) before anything changes; a running VPS gets its new guest
files and hostname at once, CTID.conf only with ``save``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from vzpkg import checks, run
from vzpkg.ct import (
    conf,
    devices,
    disk,
    layout,
    net,
    netconf,
    resources,
    runcargv,
    runcstate,
    shift,
)
from vzpkg.ct.common import bundle_dir, opened_ct, runc_of
from vzpkg.ct.guest import detect_init
from vzpkg.ct.ids import container_id
from vzpkg.ct.lifecycle import is_running, write_guest_setup
from vzpkg.ct.status import exec_capture
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig


@dataclass(frozen=True)
class SetRequest:
    """What ``vzctl set`` was asked to change; values in canonical form (``checked``)."""

    hostname: str | None = None
    nameservers: Sequence[str] = ()
    searchdomain: str | None = None
    ipadd: Sequence[str] = ()
    ipdel: Sequence[str] = ()
    netif_add: Sequence[str] = ()  # ifname[,mac,host_ifname,host_mac,bridge]
    netif_del: Sequence[str] = ()  # ifname, or all
    limits: Mapping[str, str] = field(default_factory=dict)  # PHYSPAGES etc. from --ram etc.
    disk: Mapping[str, str] = field(default_factory=dict)  # DISKSPACE, DISKINODES
    userpasswd: Sequence[str] = ()  # "user:password"; applied inside the VPS, never saved
    onboot: bool | None = None
    userns: bool | None = None  # move a stopped VPS's files to a block of its own, or back

    def changes_config(self) -> bool:
        return any(
            (
                self.hostname,
                self.nameservers,
                self.searchdomain,
                self.ipadd,
                self.ipdel,
                self.netif_add,
                self.netif_del,
                self.limits,
                self.disk,
                self.onboot is not None,
            )
        )

    def checked(self) -> SetRequest:
        """This request with every value checked and canonical (VzError, exit 21, naming the
        option, for the first bad one)."""
        for entry in self.userpasswd:
            user, sep, password = entry.partition(":")
            if "\n" in entry or "\0" in entry:
                raise checks.bad("--userpasswd", user, "has a newline or NUL byte in it")
            if not sep or not user:
                raise checks.bad("--userpasswd", entry, "is not USER:PASSWORD")
            if not password:
                raise checks.bad("--userpasswd", user, "has an empty password")
        return replace(
            self,
            limits=resources.config_values(self.limits) if self.limits else {},
            disk=disk.config_values(self.disk) if self.disk else {},
            hostname=None if self.hostname is None else checks.hostname(self.hostname),
            nameservers=tuple(checks.nameserver(n) for n in self.nameservers),
            searchdomain=None
            if self.searchdomain is None
            else " ".join(checks.domain(d) for d in self.searchdomain.split()) or None,
            ipadd=tuple(checks.vps_address(ip, "--ipadd") for ip in self.ipadd),
            ipdel=tuple(
                ip if ip == "all" else checks.ip_address(ip, "--ipdel") for ip in self.ipdel
            ),
        )


def set_params(host: HostConfig, ctid: int, request: SetRequest, *, save: bool) -> list[str]:
    """Apply ``request`` to the running VPS and, with ``save``, to CTID.conf. Returns notes."""
    request = request.checked()
    if not request.changes_config() and not request.userpasswd and request.userns is None:
        raise VzError(
            "nothing to set",
            ExitCode.INVALID_ARGUMENT,
            hint="vzctl set CTID --hostname H | --ipadd A | --ipdel A | --netif_add I | "
            "--netif_del I | --nameserver N | --searchdomain D | --userpasswd U:P | "
            "--onboot yes|no | --userns yes|no | --ram S | --diskspace S ... [--save]",
        )
    if request.disk and not save:
        raise VzError(
            "--diskspace and --diskinodes change the VPS's disk: they need --save",
            ExitCode.INVALID_ARGUMENT,
            hint=f"vzctl set {ctid} --diskspace SIZE --save",
        )
    notes = []
    if request.userns is not None:
        if not save:
            raise VzError(
                "--userns changes the owners of the VPS's files: it needs --save",
                ExitCode.INVALID_ARGUMENT,
                hint=f"vzctl set {ctid} --userns {'yes' if request.userns else 'no'} --save",
            )
        notes.append(shift.set_userns(host, ctid, request.userns))
        if not request.changes_config() and not request.userpasswd:
            return notes
    with opened_ct(host, ctid) as (cfg, private_dir, root_dir):
        state = runc_of(host).state(ctid)
        running = state is not None and state.status == "running"
        if request.userpasswd and not running:
            raise VzError(
                f"CT {ctid} is not running: --userpasswd is applied inside it",
                ExitCode.NOT_RUNNING,
                hint=f"vzctl start {ctid} first",
            )
        if running and not layout.check_own_mount(ctid, root_dir, private_dir, ExitCode.CONFIG):
            raise VzError(
                f"CT {ctid} runs, but its root {root_dir} is not mounted: was VE_ROOT changed "
                "while it ran? nothing was done",
                ExitCode.CONFIG,
                hint=f"put VE_ROOT in CT {ctid}'s config back as it was when it started",
            )
        # Saved: CTID.conf and the request. Live: what the running VPS has (its network
        # state, which a set without --save may have made differ from CTID.conf) and the
        # request.
        new = _changed(cfg, cfg, ctid, request) if save or not running else cfg
        live = base = cfg
        if running:
            now = net.load_state(host.run_dir, ctid) or net.NetState()
            base = replace(cfg, ip_address=tuple(now.addresses), netif=";".join(now.netifs) or None)
            live = _changed(new, base, ctid, request)
        netifs = netconf.parse_netifs(live.netif or "", ctid)
        want = net.wanted(live.ip_address, netifs)
        network = running and (want != net.wanted(base.ip_address, netconf.parse_netifs(
            base.netif or "", ctid)))  # fmt: skip
        # Address checks and the changes they allow under the host's network lock: two VPSs
        # never both take an address.
        addresses = new.ip_address != cfg.ip_address or network
        with net.host_lock(host.lock_dir) if addresses else contextlib.nullcontext():
            proxies: dict[str, list[str]] = {}
            if network:  # checked before anything changes
                devs = netconf.neighbour_devs(host.neighbour_devs)
                proxies = net.prepare(host.run_dir, ctid, want, devs, is_running(host))
            else:
                saved = net.wanted(new.ip_address, ()).addresses
                before = net.wanted(cfg.ip_address, ()).addresses
                net.check_free(
                    host.run_dir, ctid, [a for a in saved if a not in before], is_running(host)
                )
            if running and request.changes_config():
                assert state is not None
                write_guest_setup(ctid, root_dir, live, detect_init(root_dir))
                if network:
                    try:
                        net.apply(host.run_dir, ctid, state.pid, want, proxies)
                    except BaseException:
                        with contextlib.suppress(
                            VzError, OSError
                        ):  # the guest's files as they were
                            write_guest_setup(ctid, root_dir, base, detect_init(root_dir))
                        raise
                if request.hostname:
                    set_kernel_hostname(ctid, state.pid, request.hostname)
                if request.limits:  # the VPS's limits as they now are, all of them
                    values = {k: v for k, v in live.extra.items() if k in resources.KEYS}
                    limits = resources.parse(values)
                    runc_of(host).update(ctid, resources.update_args(limits))
                    notes.append(f"CT {ctid}: limits applied to the running VPS")
                    if {"DEVICES", "DEVNODES"} & set(request.limits):
                        note = _change_devices(host, ctid, state.pid, cfg, limits.devices)
                        if note:
                            notes.append(note + ("" if save else " (give --save to keep them)"))
                        if cfg.userns is not None:
                            notes += _unopenable(limits.devices)
        if request.disk:  # before CTID.conf: a refused change saves nothing
            values = {k: v for k, v in new.extra.items() if k in disk.KEYS}
            notes.append(layout.change_disk(
                host, ctid, private_dir, root_dir, disk.parse(values),
                inodes_given="DISKINODES" in request.disk, layout=cfg.ve_layout,
            ))  # fmt: skip
        for entry in request.userpasswd:
            user = entry.partition(":")[0]
            proc = exec_capture(host, ctid, ["chpasswd"], input=(entry + "\n").encode())
            if proc.returncode != 0:
                raise VzError(
                    f"CT {ctid}: changing the password of {user} failed",
                    ExitCode.EXEC_FAILED,
                    hint=f"does user {user} exist in the VPS? vzctl exec {ctid} id {user}",
                )
            notes.append(f"password of {user} changed")
        if save and request.changes_config():
            conf.write_ct_config(host, ctid, new)
            notes.append("saved parameters for CT " + str(ctid))
        elif request.changes_config() and not running:
            notes.append(f"CT {ctid} is not running and --save was not given: nothing changed")
        elif request.onboot is not None:
            notes.append("--onboot is a saved setting only: give --save to change it")
    return notes


def _change_devices(
    host: HostConfig, ctid: int, pid: int, cfg: conf.CtConfig, after: tuple[resources.Device, ...]
) -> str | None:
    """Grant the running VPS ``after`` instead of what it has; a note when that waits for its
    next start (cgroup v2)."""
    bundle = bundle_dir(host, ctid)
    before = devices.recorded(bundle)
    if before is None:  # started by an older vzctl: what its config said
        saved = {k: v for k, v in cfg.extra.items() if k in ("DEVICES", "DEVNODES")}
        before = resources.parse(saved).devices
    paths = runcstate.cgroup_paths(runcargv.state_root(host.run_dir), container_id(ctid))
    note = devices.change(ctid, paths, pid, before, after)
    if note is None:
        devices.record(bundle, after)
    return note


def _unopenable(granted: tuple[resources.Device, ...]) -> list[str]:
    """Notes for host nodes a VPS's root cannot open: in a user namespace it is "others" to the
    host's node, which keeps the host's owner and mode."""
    found = []
    for device in granted:
        if device.path is None:
            continue
        with contextlib.suppress(OSError):
            mode = os.stat(device.path).st_mode & 0o777
            need = (0o004 if "r" in device.access else 0) | (0o002 if "w" in device.access else 0)
            if mode & need != need:
                found.append(
                    f"the host's {device.path} is mode {mode:04o}: the VPS's root cannot open "
                    f"it ({device.access}); chmod o+{device.access} {device.path} on the host "
                    "lets it"
                )
    return found


def _changed(
    settings: conf.CtConfig, network: conf.CtConfig, ctid: int, request: SetRequest
) -> conf.CtConfig:
    """``settings`` with the request's changes, its addresses and interfaces those of
    ``network`` changed by the request."""
    netifs = netconf.parse_netifs(network.netif or "", ctid)
    if request.netif_del:
        netifs = netconf.without(netifs, request.netif_del)
    for spec in request.netif_add:
        netifs += (netconf.netif_add(ctid, spec, netifs),)
    return replace(
        settings,
        hostname=request.hostname or settings.hostname,
        ip_address=tuple(merged_addresses(network.ip_address, request.ipadd, request.ipdel)),
        netif=netconf.netifs_text(netifs) or None,
        nameserver=tuple(request.nameservers) or settings.nameserver,
        searchdomain=tuple(request.searchdomain.split())
        if request.searchdomain
        else settings.searchdomain,
        onboot=request.onboot if request.onboot is not None else settings.onboot,
        extra={**settings.extra, **request.limits, **request.disk},
    )


def merged_addresses(
    current: Sequence[str], add: Sequence[str], delete: Sequence[str]
) -> list[str]:
    """IP_ADDRESS after ``--ipdel`` then ``--ipadd``. An address is one entry whatever its
    prefix: ``--ipadd 198.51.100.7/24`` replaces ``198.51.100.7``, ``--ipdel 198.51.100.7``
    removes ``198.51.100.7/24``."""
    gone = {address_of(ip) for ip in delete}
    ips = [] if "all" in delete else [ip for ip in current if address_of(ip) not in gone]
    for ip in add:
        same = [i for i, old in enumerate(ips) if address_of(old) == address_of(ip)]
        if same:
            ips[same[0]] = ip
        else:
            ips.append(ip)
    return ips


def address_of(ip: str) -> str:
    return ip.partition("/")[0]


def set_kernel_hostname(ctid: int, init_pid: int, name: str) -> None:
    """The running VPS's hostname: the host's hostname(1) in the VPS's UTS namespace only
    (nothing of the VPS runs on the host, and the VPS needs no hostname binary)."""
    run.check_tool("nsenter", "to set a running VPS's hostname", package="util-linux")
    run.run(
        ["nsenter", f"--target={init_pid}", "--uts", "--", "hostname", name],
        error_code=ExitCode.FAILURE,
        error_hint=f"CT {ctid}'s files say {name}; its running kernel hostname did not change",
    )
