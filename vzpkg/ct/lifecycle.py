"""vzctl mount, umount, start, stop: a VPS's root filesystem and its init.

Every action holds the CT's lock. A start either completes or is undone: a kill -9 before init
runs is undone by a Guardian; ^C or SIGTERM before ``runc run`` undoes the same way (exit 130);
once ``runc run`` is under way they are held back until it has finished, so the VPS is either
running (exit 0) or not there at all. runc runs in a process group of its own, so that a ^C on
the terminal never reaches it half way.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from vzpkg import cgroups, interrupts
from vzpkg.ct import (
    conf,
    devices,
    disk,
    idmap,
    layout,
    net,
    netconf,
    oci,
    places,
    resources,
    runcstate,
    shift,
)
from vzpkg.ct.common import (
    HOST_TINI,
    bundle_dir,
    cgroup_parent,
    family_of,
    guest_settings,
    opened_ct,
    render_cache_path,
    runc_of,
    stray_pids,
)
from vzpkg.ct.engine import KILL_GRACE, ContainerState, write_bundle
from vzpkg.ct.guest import InitKind, RenderCache, apply_guest_setup, detect_init, resolve_in_root
from vzpkg.ct.ids import container_id
from vzpkg.errors import ExitCode, VzError
from vzpkg.guard import Guardian
from vzpkg.hostconf import HostConfig

log = logging.getLogger("vzpkg")
T = TypeVar("T")


def mount(host: HostConfig, ctid: int) -> None:
    with opened_ct(host, ctid, ExitCode.MOUNT_FAILED) as (cfg, private_dir, root_dir):
        if layout.check_own_mount(ctid, root_dir, private_dir, ExitCode.MOUNT_FAILED):
            raise VzError(f"CT {ctid} is already mounted", ExitCode.MOUNTED)
        _mount_root(
            host, ctid, cfg, private_dir, root_dir, _check_mountable(host, ctid, private_dir, cfg)
        )


@contextlib.contextmanager
def root_for_reading(host: HostConfig, ctid: int, *, wait: bool = False) -> Iterator[Path]:
    """The CT's root for the host to read its files (vzpkgls CTID): as it is mounted, or
    mounted for the block and unmounted after; under the CT's lock (``wait``: see ct_locked)."""
    with opened_ct(host, ctid, ExitCode.MOUNT_FAILED, wait=wait) as (cfg, private_dir, root_dir):
        if layout.check_own_mount(ctid, root_dir, private_dir, ExitCode.MOUNT_FAILED):
            yield root_dir
            return
        _mount_root(
            host, ctid, cfg, private_dir, root_dir, _check_mountable(host, ctid, private_dir, cfg)
        )
        try:
            yield root_dir
        finally:
            layout.umount_ct(host, ctid, root_dir, private_dir)


def _mount_root(
    host: HostConfig, ctid: int, cfg: conf.CtConfig, private: Path, root: Path, space: int | None
) -> None:
    """Mount the CT's root as its config says (layout, user namespace, disk limit)."""
    layout.mount_root(
        host, ctid, private, root, layout=cfg.ve_layout, userns=cfg.userns, disk_space=space
    )


def _check_mountable(host: HostConfig, ctid: int, private: Path, cfg: conf.CtConfig) -> int | None:
    """Refuse a VPS that cannot be mounted (exit 43, 10); its disk limit (DISKSPACE)."""
    if layout.condition(private) != "present":
        raise layout.missing_private(ctid, private)
    shift.refuse_if_in_progress(host, ctid)
    values = {k: v for k, v in cfg.extra.items() if k in disk.KEYS}
    want = _saved(ctid, disk.parse, values, "--diskspace SIZE")
    if want.space is not None and not disk.has_disk(private):
        raise VzError(
            f"CT {ctid}: DISKSPACE={values['DISKSPACE']} cannot be applied: its files are not "
            "on a disk of their own, so nothing would limit them; nothing was started",
            ExitCode.CONFIG,
            hint=f"move them onto one: vzctl set {ctid} --diskspace {values['DISKSPACE']} "
            f"--save; or remove DISKSPACE from CT {ctid}'s config",
        )
    return want.space


def umount(host: HostConfig, ctid: int) -> None:
    with opened_ct(host, ctid, ExitCode.UMOUNT_FAILED) as (_, private_dir, root_dir):
        runc = runc_of(host)
        state = runc.state(ctid)
        if (state is not None and state.is_active) or stray_pids(host, ctid):
            raise VzError(f"CT {ctid} is running", ExitCode.RUNNING, hint=f"vzctl stop {ctid}")
        if state is not None:
            runc.delete(ctid, force=True)  # an init that died by itself left this
        if not layout.check_own_mount(ctid, root_dir, private_dir, ExitCode.UMOUNT_FAILED):
            raise VzError(f"CT {ctid} is not mounted", ExitCode.NOT_MOUNTED)
        layout.umount_ct(host, ctid, root_dir, private_dir)


def start(host: HostConfig, ctid: int) -> InitKind:
    # Once runc run begins, ^C and SIGTERM wait until everything (the Guardian's commit
    # included) is done: the start then completes, never reported as interrupted.
    with interrupts.deferrable() as point_of_no_return:
        return _start(host, ctid, point_of_no_return)


def _start(host: HostConfig, ctid: int, point_of_no_return: Callable[[], None]) -> InitKind:
    with opened_ct(host, ctid, ExitCode.MOUNT_FAILED) as (cfg, private_dir, root_dir):
        state = runc_of(host).state(ctid)
        if state is not None and state.is_active:
            raise VzError(f"CT {ctid} is already running", ExitCode.RUNNING)
        if state is None and stray_pids(host, ctid):
            raise runs_without_state(host, ctid)
        net.teardown(host.run_dir, ctid)  # what an init that died by itself left on the host
        space = _check_mountable(host, ctid, private_dir, cfg)
        if cfg.userns is not None:
            places.check_traversable(ctid, host.run_dir, ExitCode.MOUNT_FAILED)
        if layout.check_own_mount(ctid, root_dir, private_dir, ExitCode.MOUNT_FAILED):
            return _start_mounted(host, ctid, cfg, root_dir, point_of_no_return, private_dir, space)
        # A start that does not get to run init unmounts again, even after kill -9.
        with Guardian(lambda seen: _undo_start(host, ctid, root_dir, private_dir)):
            _mount_root(host, ctid, cfg, private_dir, root_dir, space)
            return _start_mounted(host, ctid, cfg, root_dir, point_of_no_return, private_dir, space)


def _undo_start(host: HostConfig, ctid: int, root: Path, private: Path) -> None:
    runc = runc_of(host)
    state = runc.state(ctid)
    if state is not None and state.status not in ("running", "paused"):
        runc.delete(ctid, force=True)  # created but init never ran, or died
        state = None
    if state is None:
        net.teardown(host.run_dir, ctid)
        layout.umount_ct(host, ctid, root, private)


def _start_mounted(
    host: HostConfig,
    ctid: int,
    cfg: conf.CtConfig,
    root_dir: Path,
    point_of_no_return: Callable[[], None],
    private_dir: Path,
    space: int | None,
) -> InitKind:
    if cfg.userns is None:
        log.warning(
            "CT %s is privileged (%s): root in it is root on the host's kernel; "
            "docs/security.md says what that allows",
            ctid,
            'LOCAL_UID="0"' if cfg.local_uid == 0 else "made before VPSs had user namespaces",
        )
    init = detect_init(root_dir)
    if init.kind == "tini" and resolve_in_root(root_dir, "/bin/sh") is None:
        raise VzError(f"CT {ctid} has neither /sbin/init nor /bin/sh", ExitCode.BAD_CT)
    if init.kind == "systemd" and cfg.userns is None:
        # systemd needs cgroups of its own, which only a VPS's own ids can be given safely.
        raise VzError(
            f"CT {ctid}'s init is systemd, which runs only in a VPS with a user namespace",
            ExitCode.BAD_CT,
            hint=f"give it one (its files keep their contents): vzctl set {ctid} --userns yes "
            "--save",
        )
    # runc gets the root through the VPS's gate, which only the VPS's own ids pass (first:
    # opening it checks that RUN_DIR/ct, where the bundle goes too, is root's alone).
    runc_root = layout.open_gate(layout.gate_path(host, ctid), root_dir, cfg.userns or (0, 0))
    bundle = bundle_dir(host, ctid)
    bundle.mkdir(parents=True, exist_ok=True, mode=0o700)
    rendered = RenderCache(render_cache_path(host, ctid))
    # Not running yet: its guest settings are written even when its disk is full (else a VPS
    # that fills its disk could never start again), its limit set again right after.
    with disk.lifted(private_dir, space):
        write_guest_setup(ctid, root_dir, cfg, init, rendered)
    rendered.save()
    ids = cfg.userns
    limits = limits_of(ctid, cfg)
    spec = oci.BundleSpec(
        ctid=str(ctid),
        root=runc_root,
        hostname=cfg.hostname or f"ct{ctid}",
        init_argv=first_start_wrapper(root_dir, init.argv),
        binds=(oci.tini_bind(HOST_TINI),) if init.kind == "tini" else (),
        cgroup_parent=cgroup_parent(host),
        uid_mappings=() if ids is None else (oci.IdMapping(0, ids[0], idmap.BLOCK),),
        gid_mappings=() if ids is None else (oci.IdMapping(0, ids[1], idmap.BLOCK),),
        host=oci.probe_host(),
        resources=resources.oci_resources(limits),
        nodes=resources.device_nodes(limits),
    )
    write_bundle(bundle, oci.build_config(spec))
    devices.record(bundle, limits.devices)
    want = net.wanted(cfg.ip_address, netconf.parse_netifs(cfg.netif or "", ctid))
    # One network change of this host's VPSs at a time: the address checks and what they
    # allow happen under one lock, so two VPSs never both take an address.
    with net.host_lock(host.lock_dir) if not want.empty else contextlib.nullcontext():
        proxies = {}
        if not want.empty:
            devs = netconf.neighbour_devs(host.neighbour_devs)
            proxies = net.prepare(host.run_dir, ctid, want, devs, is_running(host))
        before_init = None
        delegate = ids is not None and init.kind == "systemd"
        if delegate or not want.empty:
            state_root = runc_of(host).state_root

            def before_init(state: ContainerState) -> None:
                # Before init runs: it never sees an unconfigured network or foreign cgroups.
                if delegate and ids is not None:
                    delegate_cgroups(state_root, ctid, ids)
                if not want.empty:
                    net.apply(host.run_dir, ctid, state.pid, want, proxies)

        # From here on the start completes (or fails by itself): ^C and SIGTERM wait for it.
        point_of_no_return()
        try:
            runc_of(host).start(ctid, bundle, before_init)
        except BaseException:
            net.teardown(host.run_dir, ctid)
            raise
    # The VPS has its own mount of its root now (runc's, in its mount namespace, which the
    # host's unmount does not reach: the gate is a private mount): the gate has done its job.
    try:
        layout.close_gate(layout.gate_path(host, ctid))
    except OSError as e:
        log.warning("CT %s: its gate stays mounted until it stops: %s", ctid, e)
    return init


def limits_of(ctid: int, cfg: conf.CtConfig) -> resources.Limits:
    """The VPS's saved limits, refused by name (exit 10) when bad or when this host cannot
    apply them: nothing starts then."""
    values = {k: v for k, v in cfg.extra.items() if k in resources.KEYS}
    if not values:
        return resources.Limits()
    limits = _saved(ctid, resources.parse, values, "--ram/--numproc/... VALUE")
    resources.check_host(ctid, limits)
    return limits


def _saved(ctid: int, parse: Callable[[dict[str, str]], T], values: dict[str, str], how: str) -> T:
    """``parse`` of values saved in CTID.conf; a bad one refuses (exit 10) naming it."""
    try:
        return parse(values)
    except VzError as e:
        raise VzError(
            f"CT {ctid}: {e.message}",
            ExitCode.CONFIG,
            hint=f"set it again: vzctl set {ctid} {how} --save",
        ) from None


def is_running(host: HostConfig) -> Callable[[int], bool]:
    """Whether a VPS of ``host`` runs (for the address checks of other VPSs)."""
    runc = runc_of(host)

    def running(ctid: int) -> bool:
        state = runc.state(ctid)
        return state is not None and state.is_active

    return running


def delegate_cgroups(state_root: Path, ctid: int, ids: tuple[int, int]) -> None:
    """Give the VPS's root its own cgroups where systemd needs them (the cgroup2 one, and on a
    hybrid host the named v1 ``name=systemd`` one): without that it exits at once (and says
    nothing: it has no console)."""
    paths = runcstate.cgroup_paths(state_root, container_id(ctid))
    for path in cgroups.delegated_dirs(paths):
        if os.path.isdir(path):
            cgroups.delegate(path, *ids)


def write_guest_setup(
    ctid: int, root: Path, cfg: conf.CtConfig, init: InitKind, rendered: RenderCache | None = None
) -> None:
    """The guest's hostname, hosts, resolv.conf and init hooks, written into its root; a root
    where that cannot be done safely (a symlinked /etc, a full disk) is refused by name."""
    try:
        apply_guest_setup(
            root, family_of(root), guest_settings(cfg), init, rendered, owner=cfg.userns
        )
    except OSError as e:
        where = e.filename or str(root)
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise VzError(
                f"CT {ctid}: cannot write its guest settings: {where} is a symlink or not a "
                "directory (vzpkg never follows a symlink inside a VPS)",
                ExitCode.BAD_CT,
                hint="inside the VPS, /etc must be a real directory: fix it (vzctl mount, then "
                "the files below VE_ROOT), or recreate the VPS",
            ) from None
        hint = "free space on the filesystem of VE_PRIVATE" if e.errno == errno.ENOSPC else None
        raise VzError(
            f"CT {ctid}: cannot write its guest settings ({where}): {e.strerror}",
            ExitCode.SYSTEM,
            hint=hint,
        ) from None


def first_start_wrapper(root: Path, argv: Sequence[str]) -> tuple[str, ...]:
    """ssh host keys are made per VPS, inside it, before its init starts sshd: the first init
    is a shell that runs ssh-keygen -A and then execs the real init (which stays PID 1)."""
    if resolve_in_root(root, "/usr/bin/ssh-keygen") is None:
        return tuple(argv)
    ssh_dir = resolve_in_root(root, "/etc/ssh")
    if ssh_dir is not None and any((root / str(ssh_dir).lstrip("/")).glob("ssh_host_*_key")):
        return tuple(argv)
    script = '/usr/bin/ssh-keygen -A >/dev/null 2>&1; exec "$@"'
    return ("/bin/sh", "-c", script, "vzpkg-first-start", *argv)


def stop(host: HostConfig, ctid: int, *, timeout: float | None = None, fast: bool = False) -> str:
    """Stop the CT: its init's own shutdown signal, SIGKILL after ``timeout`` (default: its
    STOP_TIMEOUT, else the host's); ``fast`` kills at once. Returns "graceful" or "killed"."""
    with opened_ct(host, ctid, ExitCode.UMOUNT_FAILED) as (cfg, private_dir, root_dir):
        runc = runc_of(host)
        state = runc.state(ctid)
        if state is None:
            killed = kill_strays(host, ctid)
            net.teardown(host.run_dir, ctid)
            # Not running: tidy up a mount of its own; whatever else is mounted there is left.
            entry = places.top_mount(root_dir)
            if entry is None or places.is_own_mount(root_dir, private_dir, entry):
                layout.umount_ct(host, ctid, root_dir, private_dir)  # and a disk left mounted
            if killed:
                return "killed"
            raise VzError(f"CT {ctid} is not running", ExitCode.NOT_RUNNING)
        own_mount = layout.check_own_mount(ctid, root_dir, private_dir, ExitCode.UMOUNT_FAILED)
        init = detect_init(root_dir) if own_mount else None
        stop_signal = init.stop_signal if init else "SIGTERM"
        if fast:
            wait = 0.0
        elif timeout is not None:
            wait = timeout
        else:
            wait = float(cfg.stop_timeout if cfg.stop_timeout is not None else host.stop_timeout)
        how = runc.stop(ctid, stop_signal, wait)
        # The VPS is gone: what is left is ours to tidy, whatever arrives meanwhile.
        with interrupts.deferred():
            net.teardown(host.run_dir, ctid)
            layout.umount_ct(host, ctid, root_dir, private_dir)
            shutil.rmtree(bundle_dir(host, ctid), ignore_errors=True)
            remove_cgroups(host, ctid)
        return how


def remove_cgroups(host: HostConfig, ctid: int) -> None:
    """What is left of a stopped VPS's cgroups: runc delete leaves what a VPS's systemd made
    below its own, and a VPS that runc lost has had no runc delete at all. Their common parent
    goes too once no VPS of this host is left in runc's state."""
    cgroups.remove_group(cgroup_parent(host), str(ctid))
    if not runc_of(host).known_ids():
        cgroups.remove_empty_parent(cgroup_parent(host))


def runs_without_state(host: HostConfig, ctid: int) -> VzError:
    """The refusal for a VPS whose processes run although runc has no state for it."""
    return VzError(
        f"CT {ctid} is running ({len(stray_pids(host, ctid))} processes in its cgroup), but "
        f"runc has no state for it in {host.run_dir}/runc: was RUN_DIR changed or cleaned "
        "while it ran?",
        ExitCode.RUNNING,
        hint=f"put RUN_DIR back, or stop it: vzctl stop {ctid} (kills its processes)",
    )


def kill_strays(host: HostConfig, ctid: int) -> bool:
    """Kill the processes of a VPS that runc lost (see ``runs_without_state``): SIGKILL to the
    init of its PID namespace takes every process of the namespace down. Returns whether there
    were any."""
    pids = stray_pids(host, ctid)
    if not pids:
        return False
    inits = [pid for pid in pids if _namespace_pid(pid) == 1] or pids
    deadline = time.monotonic() + KILL_GRACE
    while pids and time.monotonic() < deadline:
        for pid in inits:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
        pids = inits = stray_pids(host, ctid)
    if pids:
        raise VzError(f"CT {ctid}: {len(pids)} processes survived SIGKILL", ExitCode.STOP_FAILED)
    net.teardown(host.run_dir, ctid)
    remove_cgroups(host, ctid)
    return True


def _namespace_pid(pid: int) -> int | None:
    """Process ``pid``'s pid in its own (innermost) PID namespace."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None
