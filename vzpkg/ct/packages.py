"""Packages in a running VPS: ``vzpkg install|update|remove|info``, ``vzapt``.

The VPS needs no route to a mirror, and nothing of it runs on the host:

1. On the host, apt-get resolves and downloads with the repositories and keys of the VPS's
   template only (signatures checked, fail-closed), into the package cache that every VPS of
   that template shares (PKGCACHE_DIR/<os>-<version>-<arch>, the one cache builds use), against
   a sanitised copy of the VPS's dpkg status (``apt.sanitize_dpkg_status``).
2. The lists and packages are shown to the VPS read-only at /run/vzpkg (files the host's root
   owns: a VPS in a user namespace cannot change them); a privileged VPS, whose root is the
   host's, gets copies instead.
3. The VPS's own apt-get, run inside it (runc exec: its namespaces, ids, cgroup and limits),
   installs them, told never to download; maintainer scripts run there and nowhere else.
4. What changed is read back on the host from its dpkg status.

Every transaction holds the CT's lock and the template's package-cache lock (builds of the
template take it too). A killed vzpkg leaves no lock: both are flocks, and the VPS's apt-get
waits for a dpkg lock a vzpkg it outlived still holds.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from vzpkg import fsutil, interrupts, run
from vzpkg.ct import inside
from vzpkg.ct.common import opened_ct, runc_of
from vzpkg.ct.ids import container_id
from vzpkg.ct.runcargv import exec_argv, find_runc, state_root
from vzpkg.distro.base import InstalledPackage
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig
from vzpkg.metadata.model import Template
from vzpkg.pkgmgr import apt
from vzpkg.pkgmgr.hostapt import (
    PackageCache,
    Say,
    SharedCache,
    requested_name,
    split_args,
)
from vzpkg.pkgmgr.hostapt import (
    as_files as as_files,
)
from vzpkg.pkgmgr.hostapt import (
    command_of as command_of,
)
from vzpkg.pkgmgr.installed import DPKG_STATUS, LIMIT, parse_dpkg_status, printable, stanzas

# apt-get's commands that need the template's lists, and those that download packages.
_NEED_LISTS = {"install", "upgrade", "dist-upgrade", "full-upgrade", "reinstall", "update"}
_DOWNLOAD = {"install", "upgrade", "dist-upgrade", "full-upgrade", "reinstall"}
_KNOWN = _NEED_LISTS | {"remove", "purge", "autoremove", "check", "clean", "autoclean"}


@dataclasses.dataclass(frozen=True)
class Request:
    """What to do: ``args`` are apt-get's (``install hello``), ``check_only`` resolves only."""

    args: tuple[str, ...]
    check_only: bool = False
    refresh: bool = False
    show_output: Callable[[str], None] | None = None  # apt's own lines; None keeps them


@dataclasses.dataclass(frozen=True)
class Outcome:
    ctid: int
    template: str
    changes: tuple[apt.Change, ...]
    check_only: bool
    fetched: int  # packages downloaded for this transaction (0: all in the shared cache)
    simulation: str = ""  # apt-get -s's own output (check_only)
    files: int = 0  # package files the VPS installed from (fetched or from the shared cache)

    def kinds(self) -> dict[str, list[apt.Change]]:
        """The changes by kind: installed, upgraded, downgraded, reinstalled, removed."""
        from debian.debian_support import version_compare

        found: dict[str, list[apt.Change]] = {
            k: [] for k in ("installed", "upgraded", "downgraded", "reinstalled", "removed")
        }
        for c in self.changes:
            if c.old is None:
                found["installed"].append(c)
            elif c.new is None:
                found["removed"].append(c)
            else:
                try:
                    order = version_compare(c.old, c.new)
                except ValueError:  # not Debian's syntax (an rpm VPS): upgraded unless equal
                    order = -1
                kind = "upgraded" if order < 0 else "downgraded" if order > 0 else "reinstalled"
                found[kind].append(c)
        return found

    def as_json(self) -> dict[str, object]:
        def entry(c: apt.Change) -> dict[str, object]:
            if c.old is None or c.new is None or c.old == c.new:
                return {"name": c.name, "arch": c.arch, "version": c.new or c.old}
            return {"name": c.name, "arch": c.arch, "from": c.old, "to": c.new}

        kinds = {k: [entry(c) for c in v] for k, v in self.kinds().items()}
        return {
            "ctid": self.ctid,
            "template": self.template,
            "check_only": self.check_only,
            "source": "host package cache",
            "fetched": self.fetched,
            **kinds,
        }


def transaction(
    host: HostConfig, ctid: int, template_of: Callable[[str], Template], request: Request, say: Say
) -> Outcome:
    """Run ``request`` in running VPS ``ctid``; what changed in it."""
    command, options, words = split_args(request.args)
    if command not in _KNOWN:
        raise VzError(f"apt-get {command} is not run through vzapt", ExitCode.INVALID_ARGUMENT,
                      hint=f"commands: {', '.join(sorted(_KNOWN))}")  # fmt: skip
    with opened_ct(host, ctid, ExitCode.FAILURE, wait=True) as (cfg, _, root):
        pid = running_init(host, ctid)
        template = vps_template(ctid, cfg.ostemplate, template_of)
        refuse_other_families(ctid, template, root)
        if template.family == "rpm":
            return _rpm_transaction(host, ctid, pid, root, template, request, say)
        before = _status(root)
        shared = _shared_cache(host, template)
        outcome = functools.partial(Outcome, ctid, template.name)
        fetched, fetches = 0, []
        with shared.scratch() as tmp:
            scratch, views = Path(tmp), {}
            if request.check_only or command in _NEED_LISTS:
                # The template's cache is locked for what is done with it, not while the VPS
                # installs: nothing takes a file out of the pool once it is checked.
                with shared.locked():
                    shared.prepare(say)
                    if command in _NEED_LISTS:
                        shared.refresh_lists(say, force=request.refresh or command == "update")
                    if command == "update":
                        return outcome((), request.check_only, 0)
                    host_apt = shared.host_apt(scratch, before, _extended_states(root))
                    if request.check_only:
                        plan, text = host_apt.simulate(request.args)
                        return outcome(tuple(plan), True, 0, text)
                    fetches = host_apt.resolve(request.args)
                    fetched = host_apt.fetch(fetches, say)
                    views = (
                        _views(shared, pid, scratch, [f.file for f in fetches]) if fetches else {}
                    )
                args, marks = as_files(request.args, fetches, before)
            else:  # removals and apt-get's housekeeping: the VPS's own apt-get alone
                args, marks = _without_unknown(command, options, words, before, say), apt.Marks()
            pending = command in _DOWNLOAD and bool(_PENDING.search(before))
            if pending and not args:
                args = ["install"]  # what dpkg left half done is finished first (below)
            if args:
                token = scratch.name.rpartition(".")[2]
                argv = apt.vps_apt_argv(args, token, marks, configure_pending=pending)
                say(f"CT {ctid}: apt-get {' '.join(request.args)}, inside")
                _run_inside(host, ctid, pid, views, argv, request)
        after = _status(root)
    return outcome(tuple(diff(before, after)), False, fetched, files=len(views and fetches))


def _rpm_transaction(
    host: HostConfig,
    ctid: int,
    pid: int,
    root: Path,
    template: Template,
    request: Request,
    say: Say,
) -> Outcome:
    """``request`` (vzpkg's install, update or remove, as apt-get args) in an rpm-family VPS:
    vzpkg.ct.rpmpackages' host half, the VPS's own rpm inside."""
    from vzpkg.ct import rpmpackages as rp
    from vzpkg.pkgmgr.installed import installed

    command, options, words = split_args(request.args)
    if command == "upgrade" or "--only-upgrade" in options:
        dnf_args = ["upgrade", *words]
    elif command in ("install", "remove"):
        dnf_args = [command, *words]
    else:
        raise VzError(f"apt-get {command} has no meaning in an rpm-family VPS (CT {ctid})",
                      ExitCode.INVALID_ARGUMENT,
                      hint="vzpkg install|update|remove CTID PKG...")  # fmt: skip
    before = installed(root)[1]
    now = {p.name: p.version for p in before}
    cache = PackageCache(host, template)
    outcome = functools.partial(Outcome, ctid, template.name)
    with cache.scratch() as tmp:
        scratch, views, files, fetched = Path(tmp), {}, [], 0
        with cache.locked():
            cache.pool.mkdir(mode=0o755, parents=True, exist_ok=True)
            dnf = rp.HostDnf(host, template, cache.pool, scratch)
            dnf.mirror(before, say)
            plan = dnf.plan(dnf_args, now)
            if request.check_only:
                return outcome(tuple(plan), True, 0)
            if command != "remove" and plan:
                paths, fetched = dnf.fetch(dnf_args, say)
                files = [str(p.relative_to(cache.pool)) for p in paths]
                views = _views(cache, pid, scratch, files)
        if command == "remove":
            for word in words:
                if word not in now:
                    say(f"Package '{word}' is not installed, so not removed")
            words = [w for w in words if w in now]
        vps_files = [f"{apt.VPS_POOL_DIR}/{Path(f).name}" for f in files]
        if words if command == "remove" else vps_files:
            argv = rp.vps_rpm_argv(command, words, vps_files)
            say(f"CT {ctid}: rpm {argv[1]} {' '.join(words)}, inside")
            _run_inside(host, ctid, pid, views, argv, request, tool="rpm", noise=rp.NOISE)
    after = installed(root)[1]
    return outcome(tuple(rp.diff_packages(before, after)), False, fetched, files=len(files))


# dpkg states of a package whose installation was cut short (dpkg --audit's).
_PENDING = re.compile(
    rb"^Status: \S+ \S+ (half-installed|unpacked|half-configured|triggers-awaited|"
    rb"triggers-pending)$", re.MULTILINE)  # fmt: skip


def _without_unknown(
    command: str, options: Sequence[str], words: Sequence[str], status: bytes, say: Say
) -> list[str]:
    """apt-get's args for a removal without the names the VPS has never heard of (its apt-get
    sees no repository, so it would not know them): apt-get's own "not installed" for those."""
    if command not in ("remove", "purge"):
        return [command, *options, *words]
    known = {p["Package"] for p in stanzas(status, {"Package"}) if "Package" in p}
    kept = [w for w in words if requested_name(w).partition(":")[0] in known]
    for word in words:
        if word not in kept:
            say(f"Package '{word}' is not installed, so not removed")
    return [command, *options, *kept] if kept or not words else []


def package_info(
    host: HostConfig,
    ctid: int,
    template_of: Callable[[str], Template],
    names: Sequence[str],
    say: Say,
) -> list[dict[str, str | int | None]]:
    """What the template's repositories say of each of ``names`` (its candidate version) and
    the version VPS ``ctid`` has, if any; the VPS need not run."""
    status, shared = _reading(host, ctid, template_of, say)
    installed = {p.name: p.version for p in parse_dpkg_status(status)}
    found = []
    with shared.locked(), shared.scratch() as tmp:
        host_apt = shared.host_apt(Path(tmp), status)
        for name in names:
            fields = host_apt.show(name)
            summary = fields.get("Description", "").partition("\n")[0]
            found.append({
                "name": name,
                "installed": installed.get(name),
                "candidate": fields.get("Version"),
                "arch": fields.get("Architecture"),
                "section": fields.get("Section"),
                "size": _integer(fields.get("Size")),
                "installed_size_kib": _integer(fields.get("Installed-Size")),
                "depends": fields.get("Depends"),
                "homepage": fields.get("Homepage"),
                "summary": summary or None,
            })  # fmt: skip
    return found


def _integer(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def available(
    host: HostConfig, ctid: int, template_of: Callable[[str], Template], say: Say
) -> list[dict[str, str]]:
    """Every package the template's repositories offer (name, candidate version, arch)."""
    status, shared = _reading(host, ctid, template_of, say)
    with shared.locked(), shared.scratch() as tmp:
        return shared.host_apt(Path(tmp), status).available()


def _reading(
    host: HostConfig, ctid: int, template_of: Callable[[str], Template], say: Say
) -> tuple[bytes, SharedCache]:
    """The VPS's dpkg status (read as vzpkgls reads it) and its template's cache, with lists."""
    from vzpkg.ct.conf import read_ct_config
    from vzpkg.ct.lifecycle import root_for_reading

    template = vps_template(ctid, read_ct_config(host, ctid).ostemplate, template_of)
    with root_for_reading(host, ctid, wait=True) as root:
        refuse_other_families(ctid, template, root)
        if template.family != "deb":
            raise VzError(f"CT {ctid}: vzpkg info and list --available read Debian repositories "
                          "only so far", ExitCode.PKGMGR_FAILED)  # fmt: skip
        status = _status(root)
    shared = _shared_cache(host, template)
    with shared.locked():
        shared.prepare(say)
        shared.refresh_lists(say, force=False)
    return status, shared


def _shared_cache(host: HostConfig, template: Template) -> SharedCache:
    from vzpkg.distro.base import family_for
    from vzpkg.distro.debian import Debian

    family = family_for(template, host)
    assert isinstance(family, Debian)
    return family.shared_cache()


def _views(cache: PackageCache, pid: int, scratch: Path, files: Sequence[str]) -> dict[str, Path]:
    """What the VPS is shown: this transaction's files only (no other VPS's), hard links of
    the shared ones; copies for a privileged VPS, whose root is the host's."""
    view = cache.view(scratch / "pool", files, copy=inside.shares_host_ids(pid))
    return {apt.VPS_POOL_DIR: view}


def running_init(host: HostConfig, ctid: int) -> int:
    state = runc_of(host).state(ctid)
    if state is None or state.status != "running" or state.pid <= 0:
        raise VzError(f"CT {ctid} is not running", ExitCode.PKG_NOT_RUNNING,
                      hint=f"vzctl start {ctid}")  # fmt: skip
    return state.pid


def vps_template(ctid: int, name: str | None, template_of: Callable[[str], Template]) -> Template:
    """The template the VPS was created from: its repositories and keys are the VPS's."""
    if not name:
        raise VzError(f"CT {ctid} has no OSTEMPLATE in its config: its repositories and keys "
                      "are unknown", ExitCode.PKG_TEMPLATE_NOT_FOUND,
                      hint=f'add OSTEMPLATE="NAME" to {ctid}.conf in CONF_DIR')  # fmt: skip
    try:
        template = template_of(name)
    except VzError as e:
        if e.code != ExitCode.TEMPLATE_NOT_FOUND:
            raise
        raise VzError(f"CT {ctid}'s template {name} is not in the metadata: its repositories "
                      "and keys are unknown", ExitCode.PKG_TEMPLATE_NOT_FOUND,
                      hint="vzpkgls lists the templates of the metadata") from None  # fmt: skip
    return template


def refuse_other_families(ctid: int, template: Template, root: Path) -> None:
    """Debian- and rpm-family VPSs take transactions; an rpm-family one needs its own rpm."""
    if template.family == "deb":
        return
    from vzpkg.ct.guest import resolve_in_root  # symlinks resolved within the VPS's root

    if template.family == "rpm" and resolve_in_root(root, "/usr/bin/rpm"):
        return
    why = (
        "there is no rpm in it, so nothing inside could install a package (and vzpkg never "
        "installs into a VPS with the host's rpm: its scriptlets would run as host root)"
        if template.family == "rpm"
        else f"transactions in {template.family}-family VPSs are not supported"
    )
    raise VzError(f"CT {ctid} ({template.name}): {why}", ExitCode.PKGMGR_FAILED,
                  hint="see docs/packages.md, rpm-family VPSs")  # fmt: skip


def _extended_states(root: Path) -> bytes:
    """The VPS's apt marks (/var/lib/apt/extended_states), or nothing when it has none."""
    try:
        return fsutil.read_file_beneath(root, "var/lib/apt/extended_states", LIMIT)
    except OSError:
        return b""


def _status(root: Path) -> bytes:
    try:
        return fsutil.read_file_beneath(root, DPKG_STATUS, LIMIT)
    except OSError as e:
        raise VzError(f"cannot read the VPS's /{DPKG_STATUS}: {e.strerror or e}",
                      ExitCode.PKGMGR_FAILED) from None  # fmt: skip


def diff(before: bytes, after: bytes) -> list[apt.Change]:
    """What a transaction changed, from the VPS's dpkg status before and after it."""

    def table(data: bytes) -> dict[tuple[str, str], InstalledPackage]:
        return {(p.name, p.arch): p for p in parse_dpkg_status(data)}

    old, new = table(before), table(after)
    changes = []
    for key in sorted(old.keys() | new.keys()):
        was, now = old.get(key), new.get(key)
        if was is None or now is None or was.version != now.version:
            changes.append(apt.Change(key[0], key[1], was.version if was else None,
                                      now.version if now else None))  # fmt: skip
    return changes


def _run_inside(
    host: HostConfig,
    ctid: int,
    pid: int,
    views: dict[str, Path],
    argv: Sequence[str],
    request: Request,
    tool: str = "apt-get",
    noise: tuple[str, ...] = (),
) -> None:
    # On top of what a killed vzpkg left (its apt-get may still run); all go at the end.
    if views:
        inside.bind_read_only(pid, views)
    try:
        runc = exec_argv(find_runc(), state_root(host.run_dir), container_id(ctid), argv)
        lines: collections.deque[str] = collections.deque(maxlen=200)

        def line_out(raw: bytes) -> None:
            line = printable(raw[:_OUTPUT_LINE_MAX].decode(errors="replace").rstrip())
            if line.startswith(noise or ("\0",)):
                return
            lines.append(line)
            if request.show_output is not None and line:
                request.show_output(line)

        with _interrupts_wait(ctid) as arrived:
            proc = run.spawn(runc, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             own_process_group=True)  # fmt: skip
            assert proc.stdout is not None
            try:
                _read_lines(proc.stdout.fileno(), line_out)
            except BaseException:
                proc.kill()  # the second interrupt: runc exec goes, what runs inside goes on
                proc.wait()
                raise
            finally:
                proc.stdout.close()
            code = proc.wait()
    finally:
        if views:
            inside.unbind(pid, views)
    if arrived:
        raise VzError(f"interrupted; the transaction in CT {ctid} was under way and was let "
                      f"finish (apt-get exit {code})", ExitCode.INTERRUPTED,
                      hint=f"vzpkg list {ctid} shows what it has now")  # fmt: skip
    if code == 0:
        return
    if code in (130, -signal.SIGINT):
        raise VzError(f"{tool} in CT {ctid} was interrupted", ExitCode.INTERRUPTED,
                      hint=f"what it left half done: vzctl exec2 {ctid} 'dpkg --audit'; "
                      f"vzapt {ctid} install -f finishes it")  # fmt: skip
    text = "\n".join(lines)
    errors = apt.apt_errors(text)
    tail = "" if errors else ": " + "; ".join(line for line in list(lines)[-5:] if line)
    hint = None
    if "dpkg" in text:
        hint = (
            f"what dpkg left half done: vzctl exec2 {ctid} 'dpkg --audit'; once its cause is "
            f"fixed, vzapt {ctid} install -f finishes it (or vzpkg remove {ctid} PKG)"
        )
    raise VzError(
        f"{tool} in CT {ctid} failed (exit {code}){': ' if errors else ''}{'; '.join(errors)}"
        + tail,
        ExitCode.PKGMGR_FAILED,
        hint=hint,
    )


_OUTPUT_LINE_MAX = 4096  # of a line the VPS's apt-get prints (it may print anything)


def _read_lines(fd: int, handle: Callable[[bytes], None]) -> None:
    """Hand each line read from ``fd`` to ``handle``: in chunks, a line that never ends cut
    into pieces, so that what the VPS prints costs bounded memory."""
    pending = b""
    while chunk := os.read(fd, 65536):
        *complete, pending = (pending + chunk).split(b"\n")
        for raw in complete:
            handle(raw)
        if len(pending) > _OUTPUT_LINE_MAX:
            handle(pending)
            pending = b""
    if pending:
        handle(pending)


@contextlib.contextmanager
def _interrupts_wait(ctid: int) -> Iterator[list[int]]:
    """While the VPS's apt-get runs: the first ^C or SIGTERM is noted and waited out (cut
    short, dpkg would leave packages half done); a second one stops the waiting (raises
    KeyboardInterrupt), and the transaction goes on inside without us."""
    arrived: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield arrived
        return

    def on_signal(signum: int, frame: object) -> None:
        arrived.append(signum)
        if len(arrived) > 1:
            raise KeyboardInterrupt
        sys.stderr.write(
            f"vzpkg: CT {ctid}: the transaction inside is under way and is let finish; "
            "interrupt again to stop waiting for it (it goes on)\n"
        )

    saved = {sig: signal.signal(sig, on_signal) for sig in interrupts.DEFERRED}
    try:
        yield arrived
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
