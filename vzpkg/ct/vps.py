"""What vzctl does to a VPS, one function per action. The CLI is a thin layer over this.

Every state-changing action holds the CT's lock (``LOCKDIR/ct-CTID.lck``, an flock: a crashed
holder never blocks the next command). runc isolates; this module owns everything else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from vzpkg import lock, run
from vzpkg.ct import conf, layout, oci
from vzpkg.ct.engine import Runc, write_bundle
from vzpkg.ct.guest import (
    GuestSettings,
    InitKind,
    RenderCache,
    apply_guest_setup,
    detect_init,
    host_nameservers,
    resolve_in_root,
)
from vzpkg.errors import ExitCode, VzError
from vzpkg.guard import Guardian
from vzpkg.hostconf import HostConfig

DEFAULT_LAYOUT = "overlay"
DEFAULT_SAMPLE = "basic"
HOST_TINI = Path("/usr/bin/tini-static")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Status:
    ctid: int
    exists: bool
    mounted: bool
    running: bool
    nproc: int | None
    config: conf.CtConfig | None

    def openvz_line(self) -> str:
        """As vzctl status prints it: ``CTID 101 exist mounted running``."""
        return (
            f"CTID {self.ctid} {'exist' if self.exists else 'deleted'} "
            f"{'mounted' if self.mounted else 'unmounted'} "
            f"{'running' if self.running else 'down'}"
        )


def runc_of(host: HostConfig) -> Runc:
    return Runc(host.run_dir / "runc")


def bundle_dir(host: HostConfig, ctid: int) -> Path:
    return host.run_dir / "ct" / str(ctid)


def render_cache_path(host: HostConfig, ctid: int) -> Path:
    """Guest files rendered at the last start (guest.RenderCache): kept across stops."""
    return host.run_dir / "ct" / f"{ctid}.render.json"


@contextlib.contextmanager
def ct_locked(host: HostConfig, ctid: int, timeout: float = 0) -> Iterator[None]:
    with lock.locked(host.lock_dir, f"ct-{ctid}", timeout=timeout, what=f"CT {ctid}"):
        yield


def _paths(host: HostConfig, ctid: int, cfg: conf.CtConfig) -> tuple[Path, Path]:
    return conf.private_path(host, ctid, cfg), conf.root_path(host, ctid, cfg)


# -- create / destroy ------------------------------------------------------------------------


def create(
    host: HostConfig,
    ctid: int,
    ostemplate: str | None,
    *,
    layout_name: str | None = None,
    hostname: str | None = None,
    ipadd: Sequence[str] = (),
    sample: str | None = None,
    private: str | None = None,
    root: str | None = None,
) -> conf.CtConfig:
    """Make CT ``ctid`` from a cache: private area first, CTID.conf last (so a CT whose config
    exists is always complete)."""
    # Only create reads metadata and caches: imported here, the other actions start faster.
    from vzpkg.cache.manifest import read_manifest
    from vzpkg.cache.store import CacheStore
    from vzpkg.metadata.loader import load_catalog
    from vzpkg.metadata.names import canonical_name

    with ct_locked(host, ctid):
        if conf.conf_path(host, ctid).exists():
            raise VzError(
                f"CT {ctid} already exists ({conf.conf_path(host, ctid)})",
                ExitCode.PRIVATE_EXISTS,
                hint=f"vzctl destroy {ctid} first",
            )
        base, text = conf.read_sample(host, sample or DEFAULT_SAMPLE)
        name = ostemplate or base.ostemplate
        if not name:
            raise VzError(
                "no OS template given",
                ExitCode.INVALID_ARGUMENT,
                hint="vzctl create CTID --ostemplate NAME (vzpkgls -c lists caches)",
            )
        catalog = load_catalog(host.metadata_dir)
        template = canonical_name(name, catalog)
        store = CacheStore(host.cache_dir)
        if not store.exists(template):
            raise VzError(
                f"no cache for OS template {template}",
                ExitCode.TEMPLATE_NOT_FOUND,
                hint=f"vzpkgcache {template}",
            )
        manifest = read_manifest(store.manifest_path(template))
        chosen = layout_name or base.ve_layout or host.ve_layout or DEFAULT_LAYOUT
        cfg = replace(
            base,
            ostemplate=template,
            ve_layout=chosen,
            ve_root=root or base.ve_root or host.ve_root,
            ve_private=private or base.ve_private or host.ve_private,
            hostname=hostname or base.hostname,
            ip_address=tuple(ipadd) or base.ip_address,
            origin_sample=sample or DEFAULT_SAMPLE,
        )
        private_dir, _ = _paths(host, ctid, cfg)
        # Even a kill -9 of this process leaves no half-made private area behind.
        with Guardian(lambda seen: _undo_create(host, ctid, private_dir, seen)) as guard:
            layout.create_private(
                host,
                ctid,
                chosen,
                store.archive_path(template),
                manifest.archive.sha256,
                private_dir,
            )
            guard.mark(PRIVATE_MADE)
            conf.write_ct_config(host, ctid, cfg, base_text=text)
        return cfg


PRIVATE_MADE = b"p"


def _undo_create(host: HostConfig, ctid: int, private: Path, seen: frozenset[bytes]) -> None:
    """Run by the Guardian when create did not finish: remove what it made."""
    from vzpkg.fsutil import remove_tree_safely

    if conf.conf_path(host, ctid).exists():
        return  # the config is written last: the CT is complete
    tmp = private.with_name(private.name + ".tmp")
    if os.path.lexists(tmp):
        remove_tree_safely(tmp)
    for stale in host.trees_dir.glob(f"*.tmp-{os.getppid()}"):
        remove_tree_safely(stale)
    if PRIVATE_MADE in seen:
        layout.destroy_private(host, ctid, private)


def destroy(host: HostConfig, ctid: int) -> None:
    with ct_locked(host, ctid):
        cfg = conf.read_ct_config(host, ctid)
        private_dir, root_dir = _paths(host, ctid, cfg)
        state = runc_of(host).state(str(ctid))
        if state is not None and state.is_active:
            raise VzError(
                f"CT {ctid} is running", ExitCode.RUNNING, hint=f"vzctl stop {ctid} first"
            )
        if state is not None:
            runc_of(host).delete(str(ctid), force=True)
        layout.umount_root(root_dir)
        layout.destroy_private(host, ctid, private_dir, root=root_dir)
        with contextlib.suppress(FileNotFoundError):
            root_dir.rmdir()
        shutil.rmtree(bundle_dir(host, ctid), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            render_cache_path(host, ctid).unlink()
        # As vzctl does: keep the old config beside, out of the way.
        path = conf.conf_path(host, ctid)
        os.replace(path, path.with_name(path.name + ".destroyed"))


# -- mount / start / stop ----------------------------------------------------------------------


def mount(host: HostConfig, ctid: int) -> None:
    with ct_locked(host, ctid):
        cfg = conf.read_ct_config(host, ctid)
        private_dir, root_dir = _paths(host, ctid, cfg)
        if layout.is_mounted(root_dir):
            raise VzError(f"CT {ctid} is already mounted", ExitCode.MOUNTED)
        layout.mount_root(host, ctid, private_dir, root_dir, layout=cfg.ve_layout)


def umount(host: HostConfig, ctid: int) -> None:
    with ct_locked(host, ctid):
        cfg = conf.read_ct_config(host, ctid)
        _, root_dir = _paths(host, ctid, cfg)
        state = runc_of(host).state(str(ctid))
        if state is not None and state.is_active:
            raise VzError(f"CT {ctid} is running", ExitCode.RUNNING, hint=f"vzctl stop {ctid}")
        if not layout.is_mounted(root_dir):
            raise VzError(f"CT {ctid} is not mounted", ExitCode.NOT_MOUNTED)
        layout.umount_root(root_dir)


def guest_settings(cfg: conf.CtConfig) -> GuestSettings:
    return GuestSettings(
        hostname=cfg.hostname,
        ips=cfg.ip_address,
        nameservers=cfg.nameserver,
        searchdomain=" ".join(cfg.searchdomain) or None,
    )


def family_of(root: Path) -> str:
    """The VPS's package family, from what it has (its template may be gone from metadata)."""
    return "deb" if resolve_in_root(root, "/var/lib/dpkg/status") is not None else "rpm"


def start(host: HostConfig, ctid: int) -> InitKind:
    with ct_locked(host, ctid):
        cfg = conf.read_ct_config(host, ctid)
        private_dir, root_dir = _paths(host, ctid, cfg)
        runc = runc_of(host)
        state = runc.state(str(ctid))
        if state is not None and state.is_active:
            raise VzError(f"CT {ctid} is already running", ExitCode.RUNNING)
        if not private_dir.is_dir():
            raise VzError(
                f"CT {ctid}: private area {private_dir} does not exist", ExitCode.PRIVATE_MISSING
            )
        if not layout.is_mounted(root_dir):
            # A start that does not get to run init unmounts again, even after kill -9.
            with Guardian(lambda seen: _undo_start(host, ctid, root_dir)):
                layout.mount_root(host, ctid, private_dir, root_dir, layout=cfg.ve_layout)
                return _start_mounted(host, ctid, cfg, root_dir)
        return _start_mounted(host, ctid, cfg, root_dir)


def _undo_start(host: HostConfig, ctid: int, root: Path) -> None:
    state = runc_of(host).state(str(ctid))
    if state is not None and state.status not in ("running", "paused"):
        runc_of(host).delete(str(ctid), force=True)  # created but init never ran, or died
        state = None
    if state is None:
        layout.umount_root(root)


def _start_mounted(host: HostConfig, ctid: int, cfg: conf.CtConfig, root_dir: Path) -> InitKind:
    init = detect_init(root_dir)
    if init.kind == "tini" and resolve_in_root(root_dir, "/bin/sh") is None:
        raise VzError(f"CT {ctid} has neither /sbin/init nor /bin/sh", ExitCode.BAD_CT)
    bundle = bundle_dir(host, ctid)
    bundle.mkdir(parents=True, exist_ok=True, mode=0o700)
    rendered = RenderCache(render_cache_path(host, ctid))
    apply_guest_setup(root_dir, family_of(root_dir), guest_settings(cfg), init, rendered)
    rendered.save()
    spec = oci.BundleSpec(
        ctid=str(ctid),
        root=root_dir,
        hostname=cfg.hostname or f"ct{ctid}",
        init_argv=first_start_wrapper(root_dir, init.argv),
        binds=(oci.tini_bind(HOST_TINI),) if init.kind == "tini" else (),
        host=oci.probe_host(),
    )
    write_bundle(bundle, oci.build_config(spec))
    runc_of(host).start(str(ctid), bundle)
    return init


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
    with ct_locked(host, ctid):
        cfg = conf.read_ct_config(host, ctid)
        _, root_dir = _paths(host, ctid, cfg)
        runc = runc_of(host)
        state = runc.state(str(ctid))
        if state is None:
            if layout.is_mounted(root_dir):
                layout.umount_root(root_dir)
            raise VzError(f"CT {ctid} is not running", ExitCode.NOT_RUNNING)
        init = detect_init(root_dir) if layout.is_mounted(root_dir) else None
        signal = init.stop_signal if init else "SIGTERM"
        wait = (
            0.0
            if fast
            else float(timeout if timeout is not None else cfg.stop_timeout or host.stop_timeout)
        )
        how = runc.stop(str(ctid), signal, wait)
        layout.umount_root(root_dir)
        shutil.rmtree(bundle_dir(host, ctid), ignore_errors=True)
        if not runc.known_ids():
            remove_empty_cgroup_parents()
        return how


def remove_empty_cgroup_parents(parent: str = "vzpkg") -> None:
    """runc delete removes a VPS's cgroups but not their common parent: drop it once empty
    (rmdir of a cgroup fails with EBUSY while another VPS still runs in it)."""
    for hierarchy in CGROUP_ROOT.iterdir():
        with contextlib.suppress(OSError):
            (hierarchy / parent).rmdir()


# -- status / exec -----------------------------------------------------------------------------


def status(host: HostConfig, ctid: int) -> Status:
    try:
        cfg: conf.CtConfig | None = conf.read_ct_config(host, ctid)
    except VzError as e:
        if e.code != ExitCode.CT_CONFIG_MISSING:
            raise
        cfg = None
    if cfg is None:
        return Status(ctid, False, False, False, None, None)
    private_dir, root_dir = _paths(host, ctid, cfg)
    runc = runc_of(host)
    state = runc.state(str(ctid))
    running = state is not None and state.is_active
    nproc = len(runc.pids(str(ctid))) if running else None
    return Status(ctid, private_dir.is_dir(), layout.is_mounted(root_dir), running, nproc, cfg)


def require_running(host: HostConfig, ctid: int) -> None:
    conf.read_ct_config(host, ctid)  # CT 14 (no config) before 31 (not running)


def exec_command(host: HostConfig, ctid: int, argv: Sequence[str], *, tty: bool = False) -> int:
    require_running(host, ctid)
    return runc_of(host).exec(
        str(ctid), argv, tty=tty, env=(("TERM", os.environ.get("TERM", "xterm")),) if tty else ()
    )


def exec_capture(
    host: HostConfig, ctid: int, argv: Sequence[str], input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a command inside the VPS for vzctl's own purposes (not the user's stdio)."""
    require_running(host, ctid)
    return run.run(
        runc_of(host).exec_argv(str(ctid), argv), stdout=subprocess.PIPE, input=input, check=False
    )


def shell_of(root: Path) -> str:
    return "/bin/bash" if resolve_in_root(root, "/bin/bash") else "/bin/sh"


# -- set -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetRequest:
    hostname: str | None = None
    nameservers: Sequence[str] = ()
    searchdomain: str | None = None
    ipadd: Sequence[str] = ()
    ipdel: Sequence[str] = ()
    userpasswd: Sequence[str] = ()  # "user:password"; applied inside the VPS, never saved
    onboot: bool | None = None

    def changes_config(self) -> bool:
        return any(
            (
                self.hostname,
                self.nameservers,
                self.searchdomain,
                self.ipadd,
                self.ipdel,
                self.onboot is not None,
            )
        )


def set_params(host: HostConfig, ctid: int, request: SetRequest, *, save: bool) -> list[str]:
    """Apply ``request`` to the running VPS and, with ``save``, to CTID.conf. Returns notes."""
    notes = []
    with ct_locked(host, ctid):
        cfg = conf.read_ct_config(host, ctid)
        ips = [
            ip for ip in cfg.ip_address if ip not in request.ipdel and "all" not in request.ipdel
        ]
        ips += [ip for ip in request.ipadd if ip not in ips]
        nameservers = tuple(request.nameservers) or cfg.nameserver
        if "inherit" in nameservers:
            nameservers = tuple(host_nameservers())
        new = replace(
            cfg,
            hostname=request.hostname or cfg.hostname,
            ip_address=tuple(ips),
            nameserver=nameservers,
            searchdomain=tuple(request.searchdomain.split())
            if request.searchdomain
            else cfg.searchdomain,
            onboot=request.onboot if request.onboot is not None else cfg.onboot,
        )
        _, root_dir = _paths(host, ctid, cfg)
        state = runc_of(host).state(str(ctid))
        running = state is not None and state.is_active
        if request.userpasswd and not running:
            raise VzError(
                f"CT {ctid} is not running: --userpasswd is applied inside it",
                ExitCode.NOT_RUNNING,
                hint=f"vzctl start {ctid} first",
            )
        if running and request.changes_config():
            apply_guest_setup(
                root_dir, family_of(root_dir), guest_settings(new), detect_init(root_dir)
            )
            if request.hostname:
                exec_capture(host, ctid, ["hostname", request.hostname])
        for entry in request.userpasswd:
            user, sep, _ = entry.partition(":")
            if not sep or not user:
                raise VzError("--userpasswd takes USER:PASSWORD", ExitCode.INVALID_VALUE)
            proc = exec_capture(host, ctid, ["chpasswd"], input=(entry + "\n").encode())
            if proc.returncode != 0:
                raise VzError(
                    f"CT {ctid}: changing the password of {user} failed", ExitCode.EXEC_FAILED
                )
            notes.append(f"password of {user} changed")
        if save and request.changes_config():
            conf.write_ct_config(host, ctid, new)
            notes.append("saved parameters for CT " + str(ctid))
        elif request.changes_config() and not running:
            notes.append(f"CT {ctid} is not running and --save was not given: nothing changed")
    return notes
