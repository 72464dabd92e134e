"""vzctl create and destroy: a VPS's private area and CTID.conf come and go together.

create checks every place the new VPS would use before it makes anything, makes the private
area, and writes CTID.conf last (so a CT whose config exists is always complete); a kill -9
is undone by a Guardian. destroy removes only what it can prove is this VPS's, and a destroy
cut short is seen as such (status, start) and finished by the next one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from vzpkg import lock
from vzpkg.ct import conf, disk, idmap, layout, net, places, shift, trees
from vzpkg.ct.common import (
    DEFAULT_LAYOUT,
    DEFAULT_SAMPLE,
    bundle_dir,
    checked_paths,
    ct_locked,
    opened_ct,
    render_cache_path,
    runc_of,
    stray_pids,
)
from vzpkg.errors import ExitCode, VzError
from vzpkg.guard import Guardian
from vzpkg.hostconf import HostConfig

if TYPE_CHECKING:
    from vzpkg.cache.store import UsableCache

log = logging.getLogger("vzpkg")

PRIVATE_MADE = b"p"


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
    userns: bool | None = None,
    disk_options: Mapping[str, str] | None = None,
) -> conf.CtConfig:
    """Make CT ``ctid`` from a cache: private area first, CTID.conf last. The values were
    checked at the edge (vzpkg.checks); the places are checked here, against every other VPS.

    ``userns``: whether the VPS gets a user namespace of its own (a block of host ids); None:
    yes, unless the sample says ``LOCAL_UID="0"``. ``False`` makes a privileged VPS.
    ``disk_options``: DISKSPACE and DISKINODES from --diskspace and --diskinodes, over the
    sample's: a size gives the VPS a disk of its own (vzpkg.ct.disk).
    """
    given = disk.config_values(disk_options or {})  # checked before anything else
    # Only create reads metadata and caches: imported here, the other actions start faster.
    from vzpkg.metadata.loader import load_catalog
    from vzpkg.metadata.names import canonical_name

    with ct_locked(host, ctid):
        if conf.conf_path(host, ctid).exists():
            raise VzError(
                f"CT {ctid} already exists ({conf.conf_path(host, ctid)})",
                ExitCode.PRIVATE_EXISTS,
                hint=f"vzctl destroy {ctid} first",
            )
        sample_name = sample or host.configfile or DEFAULT_SAMPLE
        base, text = conf.read_sample(host, sample_name)
        # Virtuozzo names its EZ templates with a leading dot (".almalinux-8").
        name = ostemplate or base.ostemplate or (host.def_ostemplate or "").removeprefix(".")
        if not name:
            raise VzError(
                "no OS template given",
                ExitCode.INVALID_ARGUMENT,
                hint="vzctl create CTID --ostemplate NAME (vzpkgls -c lists caches)",
            )
        catalog = load_catalog(host.metadata_dir)
        template = canonical_name(name, catalog)
        cache = usable_or_fetched(host, template)
        chosen = layout_name or base.ve_layout or host.ve_layout or DEFAULT_LAYOUT
        cfg = replace(
            base,
            ostemplate=template,
            ve_layout=chosen,
            ve_root=root or base.ve_root or host.ve_root,
            ve_private=private or base.ve_private or host.ve_private,
            hostname=hostname or base.hostname,
            ip_address=tuple(ipadd) or base.ip_address,
            nameserver=base.nameserver or host.nameservers,
            searchdomain=base.searchdomain or host.searchdomains,
            origin_sample=sample_name,
            extra={**base.extra, **given},
        )
        disk_of = disk.parse(
            {k: v for k, v in cfg.extra.items() if k in disk.KEYS}
        )  # a bad value in the sample: named (exit 21) before anything is made
        others = places.OtherPlaces(host, ctid)  # each ask re-reads only what changed
        private_dir, root_dir = check_new_places(host, ctid, cfg, others)
        # Two creates naming the same place (each holding only its own CT's lock) must not
        # both take it: the places themselves are locked (in a fixed order) until the end.
        with contextlib.ExitStack() as held:
            taken = {
                hashlib.sha256(places.real(path).encode()).hexdigest()[:16]: (what, path)
                for what, path in (("private area", private_dir), ("root", root_dir))
            }
            for key, (what, path) in sorted(taken.items()):
                held.enter_context(
                    lock.locked(
                        host.lock_dir,
                        f"place-{key}",
                        what=f"{what} {path}",
                        hint="another vzctl create is taking it; choose another place",
                    )
                )
            # Again, now that nobody else can take them.
            check_new_places(host, ctid, cfg, others)
            if userns is False or (userns is None and base.local_uid == 0):
                cfg = replace(cfg, local_uid=0, local_gid=0)
                log.warning(
                    "CT %s is privileged (--userns no): root in it is root on the host's "
                    "kernel; docs/security.md says what that allows",
                    ctid,
                )
            else:
                block = idmap.allocate(
                    host, ctid, lambda: places.blocks_of_others(host, ctid, others)
                )
                cfg = replace(cfg, local_uid=block, local_gid=block)
                held.callback(idmap.release, host, ctid)
                if chosen == "overlay":
                    chosen = _overlay_or_private_copy(host, ctid)
                    cfg = replace(cfg, ve_layout=chosen)
            # Even a kill -9 of this process leaves no half-made private area behind.
            me = os.getpid()  # the watcher's parent, which is gone by the time it undoes
            undo = lambda seen: _undo_create(host, ctid, private_dir, root_dir, me, seen)  # noqa: E731
            with Guardian(undo) as guard:
                layout.create_private(
                    host,
                    ctid,
                    chosen,
                    cache.archive,
                    cache.sha256,
                    private_dir,
                    cfg.userns,
                    disk_of,
                )
                guard.mark(PRIVATE_MADE)
                conf.write_ct_config(host, ctid, cfg, base_text=text)
        return cfg


def _overlay_or_private_copy(host: HostConfig, ctid: int) -> str:
    """``overlay`` when the VPS can see the shared tree through an idmapped mount; else
    ``plain`` (a private copy, unpacked with the VPS's own ids), and the user is told."""
    ok, fstype = idmap.can_idmap(host.run_dir, host.trees_dir)
    if ok:
        return "overlay"
    why = (
        f"kernel {os.uname().release} cannot use an idmapped mount as an overlay's lower layer"
        if idmap.kernel_release() < idmap.IDMAPPED_OVERLAY_LOWER
        else f"the filesystem of TREES_DIR {host.trees_dir} ({fstype}) cannot be idmapped"
    )
    log.warning(
        "CT %s gets a private copy of its template with its own ids (plain layout), not the "
        "shared tree: %s",
        ctid,
        why,
    )
    return "plain"


def check_new_places(
    host: HostConfig, ctid: int, cfg: conf.CtConfig, others: places.OtherPlaces
) -> tuple[Path, Path]:
    """The new CT's private area and root, refused (exit 21, nothing made) when either is a
    host system directory or vzpkg's, overlaps another VPS's (``others``, asked afresh), or is
    in use already."""
    private, root = checked_paths(host, ctid, cfg, ExitCode.INVALID_VALUE)
    places.check_apart(ctid, private, root, others(), ExitCode.INVALID_VALUE)
    if layout.is_mounted(root):
        raise VzError(
            f"CT {ctid}: the root {root} is in use: something is mounted there; nothing was done",
            ExitCode.INVALID_VALUE,
            hint="give the new VPS a mount point of its own (--root, VE_ROOT)",
        )
    try:
        st = root.lstat()
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise VzError(
            f"CT {ctid}: the root {root} is a symlink; nothing was done",
            ExitCode.INVALID_VALUE,
            hint="a VPS is mounted on a directory, never through a symlink (--root, VE_ROOT)",
        )
    if st is not None and (not stat.S_ISDIR(st.st_mode) or any(root.iterdir())):
        raise VzError(
            f"CT {ctid}: the root {root} is in use: it is not an empty directory; nothing was done",
            ExitCode.INVALID_VALUE,
            hint="a VPS is mounted on an empty directory of its own (--root, VE_ROOT)",
        )
    return private, root


def _undo_create(
    host: HostConfig, ctid: int, private: Path, root: Path, creator: int, seen: frozenset[bytes]
) -> None:
    """Run by the Guardian when create did not finish: remove what it made."""
    from vzpkg.fsutil import remove_tree_safely

    if conf.conf_path(host, ctid).exists():
        return  # the config is written last: the CT is complete
    tmp = places.tmp_path(private)
    if os.path.lexists(tmp):
        remove_tree_safely(tmp)
    trees.sweep_temps_of(host, creator)  # a tree it was making
    if PRIVATE_MADE in seen:
        layout.destroy_private(host, ctid, private, root=root)


def destroy(host: HostConfig, ctid: int) -> None:
    """Remove a stopped CT: its private area (only if provably its own), mount point, runtime
    state; CTID.conf is kept as CTID.conf.destroyed, as vzctl does."""
    with opened_ct(host, ctid, ExitCode.DESTROY_FAILED) as (_, private_dir, root_dir):
        places.check_apart(
            ctid,
            private_dir,
            root_dir,
            places.places_of_others(host, ctid),
            ExitCode.DESTROY_FAILED,
        )
        runc = runc_of(host)
        state = runc.state(ctid)
        if state is not None and state.is_active:
            raise VzError(
                f"CT {ctid} is running", ExitCode.RUNNING, hint=f"vzctl stop {ctid} first"
            )
        if state is None and stray_pids(host, ctid):
            from vzpkg.ct.lifecycle import runs_without_state

            raise runs_without_state(host, ctid)
        if state is not None:
            runc.delete(ctid, force=True)
        net.teardown(host.run_dir, ctid)
        layout.umount_ct(host, ctid, root_dir, private_dir)
        layout.destroy_private(host, ctid, private_dir, root=root_dir)
        _remove_mount_point(root_dir)
        shutil.rmtree(bundle_dir(host, ctid), ignore_errors=True)
        for leftover in (render_cache_path(host, ctid), shift.journal_path(host, ctid)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        path = conf.conf_path(host, ctid)
        os.replace(path, path.with_name(path.name + ".destroyed"))


def _remove_mount_point(root: Path) -> None:
    """rmdir the CT's (unmounted, empty) mount point; anything else there is left alone."""
    try:
        root.rmdir()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("kept %s: %s", root, e.strerror)


def usable_or_fetched(host: HostConfig, template: str) -> UsableCache:
    """The cache of ``template``; a missing one is fetched from the configured template
    indexes first (as OpenVZ's vztmpl-dl did), with progress on stderr."""
    import sys

    from vzpkg.cache.store import CacheStore

    store = CacheStore(host.cache_dir)
    try:
        return store.usable(template)
    except VzError as e:
        if e.code != ExitCode.TEMPLATE_NOT_FOUND or not host.template_indexes:
            raise
    from vzpkg.cache.fetch import fetch_cache

    def say(line: str) -> None:
        sys.stderr.write(f"vzctl: {line}\n")

    say(f"no cache of {template} here: fetching it from the template index")
    fetch_cache(host, template, say, lock_timeout=-1)
    return store.usable(template)
