"""Build one template cache: bootstrap, hooks, cleanup, pack, verify, publish.

Everything happens in a work directory inside CACHE_DIR while the template's lock is held; the
work directory is removed on any exit (and swept by the next build after a kill -9), so an
interrupted build never leaves a partial cache behind.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vzpkg import fsutil, lock, run
from vzpkg.cache.archive import (
    pack_tree,
    remember_validated,
    unpack_archive,
    validate_archive,
)
from vzpkg.cache.freshness import staleness
from vzpkg.cache.index import keys_digest
from vzpkg.cache.manifest import ArchiveInfo, Manifest
from vzpkg.cache.store import CacheStore, remove_tree_safely
from vzpkg.cache.update import Plan, changes, inputs_of, origin_of_build, plan_build
from vzpkg.distro.base import BootstrapResult, Family, Fingerprint, family_for, in_root_argv
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig
from vzpkg.metadata.model import Template

VERSION = "0.1.0"
SHM_MIN_FREE = 4 * 2**30


@dataclass(frozen=True)
class BuildOptions:
    force: bool = False
    lock_timeout: float = 0
    mirror_overrides: Mapping[str, str] = field(default_factory=dict)
    verbose: bool = True
    # Upstream answers (InRelease, repomd.xml) by URL, shared by the templates of one run:
    # the sets of a release ask once, and all see the same upstream state.
    upstream_answers: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildResult:
    template: str
    status: str  # built | updated | rebuilt | up-to-date | failed
    message: str
    code: int = 0
    archive: str | None = None
    size: int | None = None
    seconds: float = 0.0
    reason: str | None = None  # why it was updated or rebuilt (or how a new one was made)
    path: str | None = None  # bootstrap | update | parent
    changes: list[dict[str, str | None]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    hint: str | None = None  # what to do about a failure


class Reporter:
    """Progress lines on stderr: ``name: phase`` plus the tools' own lines when verbose."""

    def __init__(self, name: str, verbose: bool, emit: Callable[[str], None]) -> None:
        self.name, self.verbose, self.emit = name, verbose, emit
        self.start = time.monotonic()

    def phase(self, text: str) -> None:
        self.emit(f"{self.name}: [{time.monotonic() - self.start:6.1f}s] {text}")

    def detail(self, text: str) -> None:
        if self.verbose:
            self.emit(f"{self.name}:   {text}")


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        timings[key] = round(time.monotonic() - start, 3)


def hook_env(template: Template, hook: str, root: Path | None) -> dict[str, str]:
    env = {
        **template.environment,
        "VZ_TEMPLATE": template.name,
        "VZ_OS": template.distribution.name,
        "VZ_VERSION": template.release.version,
        "VZ_ARCH": template.arch,
        "VZ_SET": template.package_set.name,
        "VZ_FAMILY": template.family,
        "VZ_HOOK": hook,
    }
    if root is not None:
        env["VZ_ROOT"] = str(root)
    return env


def run_host_hooks(
    template: Template, hook: str, scripts: tuple[Path, ...], root: Path, report: Reporter
) -> None:
    for script in scripts:
        report.phase(f"{hook} hook {script.name}")
        run.run_streaming(
            ["/bin/sh", "-e", script],
            on_line=report.detail,
            cwd=root,
            env=hook_env(template, hook, root),
            error_code=ExitCode.HOOK,
            error_hint=f"fix {script}; nothing was published",
        )


def run_root_hooks(
    template: Template, scripts: tuple[Path, ...], root: Path, report: Reporter
) -> None:
    """post-install hooks run inside the new root, in private mount and PID namespaces."""
    for i, script in enumerate(scripts):
        report.phase(f"post-install hook {script.name}")
        inside = f"tmp/vzpkg-hook-{i}.sh"
        fsutil.write_file_beneath(root, inside, script.read_bytes(), 0o700)
        try:
            argv = in_root_argv(root, ["/bin/sh", "-e", "/" + inside])
            run.run_streaming(
                argv,
                on_line=report.detail,
                env=hook_env(template, "post-install", None),
                error_code=ExitCode.HOOK,
                error_hint=f"fix {script}; nothing was published",
            )
        finally:
            fsutil.remove_beneath(root, inside)


def clean_root(root: Path, source_date_epoch: int | None = None) -> None:
    """What no cache may carry, whatever its family: host identity and per-VPS secrets.

    With ``source_date_epoch`` every directory gets it as its mtime: a directory's mtime says
    only when an entry was last added or removed, which differs between a bootstrap and an
    update of the same packages (docs/caches.md, reproducibility)."""
    for rel in ("etc/machine-id",):
        if (root / rel).exists() or (root / rel).is_symlink():
            fsutil.write_file_beneath(root, rel, b"", 0o444)  # empty: "first boot" for systemd
    fsutil.remove_beneath(root, "var/lib/dbus/machine-id")
    fsutil.glob_remove_beneath(root, "etc/ssh", "ssh_host_")  # generated per VPS
    fsutil.empty_dir_beneath(root, "dev")  # the runtime creates /dev
    fsutil.write_file_beneath(root, "etc/resolv.conf", b"")
    fsutil.write_file_beneath(root, "etc/hostname", b"localhost\n")
    for rel in ("tmp", "var/tmp", "run"):
        fsutil.empty_dir_beneath(root, rel)
    if source_date_epoch is not None:
        for directory, _, _ in os.walk(root):
            os.utime(directory, (source_date_epoch, source_date_epoch), follow_symlinks=False)


def choose_epoch(family_epochs: list[int | None]) -> int:
    """SOURCE_DATE_EPOCH: the caller's, else the newest upstream timestamp (reproducible for
    the same upstream state), else now."""
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return int(os.environ["SOURCE_DATE_EPOCH"])
    known = [e for e in family_epochs if e is not None]
    return max(known) if known else int(time.time())


def build_parent(host: HostConfig) -> Path:
    """Where new roots are bootstrapped: BUILD_DIR, else /dev/shm when it has room.

    dpkg unpacking thousands of small files is dominated by filesystem work; on tmpfs a
    minbase bootstrap takes less than half the time it takes on a disk (bench/ shows it).
    """
    if host.build_dir is not None:
        return host.build_dir
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
    except OSError:
        return host.cache_dir
    return shm if st.f_bavail * st.f_frsize >= SHM_MIN_FREE else host.cache_dir


def build_cache(
    template: Template,
    host: HostConfig,
    options: BuildOptions,
    emit: Callable[[str], None],
    parent_of: Callable[[Template], Template | None] = lambda t: None,
) -> BuildResult:
    """Make ``template``'s cache current: nothing when it is, an update in place when only
    upstream or its package lists changed, from its base set's cache (``parent_of``) when
    that is current and shares its base, a bootstrap otherwise."""
    started = time.monotonic()
    report = Reporter(template.name, options.verbose, emit)
    store = CacheStore(host.cache_dir)

    def seconds() -> float:
        return round(time.monotonic() - started, 1)

    try:
        family = family_for(template, host, options.mirror_overrides)
        family.answers = options.upstream_answers
        family.check_host()
        with lock.locked(
            host.lock_dir,
            f"cache-{template.name}",
            timeout=options.lock_timeout,
            what=f"cache {template.name}",
        ):
            for path in store.sweep(template.name, build_parent(host)):
                report.phase(f"removed {path.name} left by an interrupted build")
            report.phase("checking upstream repositories")
            fingerprints = family.fingerprints()
            existing = store.info(template.name)
            stale = None
            if existing is not None and not options.force:
                stale = staleness(template, existing.manifest, fingerprints)
                if stale is None:
                    report.phase("up to date")
                    return BuildResult(
                        template.name,
                        "up-to-date",
                        "metadata and upstream unchanged (-f rebuilds anyway)",
                        archive=str(existing.archive),
                        size=existing.size,
                        seconds=seconds(),
                    )
            keys = keys_digest(host.template_index_keys)
            plan, why = plan_build(template, store, fingerprints, parent_of, options.force, keys)
            how = "bootstrap" if plan is None else plan.path
            if existing is not None:
                report.phase(f"{'updating' if how == 'update' else 'rebuilding'}: {why}")
            elif plan is not None:
                report.phase(f"building from the cache of {plan.start.name}")
            manifest = _build_locked(template, host, family, store, report, fingerprints, plan)
    except VzError as e:
        report.phase(f"FAILED: {e}")
        message = e.message.removeprefix(f"{template.name}: ")  # the report names it
        return BuildResult(template.name, "failed", message, int(e.code), seconds=seconds(),
                           hint=e.hint)  # fmt: skip
    size = manifest.archive.size
    status = "built" if existing is None else "updated" if how == "update" else "rebuilt"
    changed = "" if how == "bootstrap" else f", {len(manifest.changes)} package change(s)"
    report.phase(
        f"{status} {store.archive_path(template.name)} ({size / 2**20:.1f} MiB{changed}) "
        f"in {seconds():.1f} s"
    )
    return BuildResult(
        template.name,
        status,
        "ok",
        0,
        str(store.archive_path(template.name)),
        size,
        seconds(),
        reason=why if how == "update" else "; ".join(r for r in (stale, why) if r),
        path=how,
        changes=list(manifest.changes),
        timings=dict(manifest.timings),
    )


def _make_root(
    template: Template,
    host: HostConfig,
    family: Family,
    root: Path,
    report: Reporter,
    epoch: int,
    plan: Plan | None,
    timings: dict[str, float],
) -> BootstrapResult:
    """The new root: bootstrapped (pre-cache hooks first), or unpacked from ``plan``'s cache
    and changed as it says."""
    if plan is None:
        with _timed(timings, "hooks"):
            run_host_hooks(template, "pre-cache", template.hooks.pre_cache, root, report)
    else:
        report.phase(f"unpacking {plan.start.archive.name}")
        with _timed(timings, "unpack"):
            unpack_archive(
                plan.start.archive,
                root,
                expected_sha256=plan.start.sha256,
                validated=host.validated_dir,
            )
    pkgcache = host.pkgcache_dir / template.pkgcache_key
    pkgcache.mkdir(parents=True, exist_ok=True, mode=0o700)
    with lock.locked(
        host.lock_dir,
        f"pkgcache-{template.pkgcache_key}",
        timeout=-1,
        on_wait=f"{template.name}: waiting for package cache",
    ):
        if plan is None:
            report.phase(
                f"bootstrapping ({len(template.packages)} packages on top of the "
                f"{template.variant} base)"
            )
            with _timed(timings, "bootstrap"):
                return family.bootstrap(root, pkgcache, report.detail, epoch)
        report.phase(f"updating the packages: {plan.reason}")
        with _timed(timings, "update"):
            return family.update(root, pkgcache, plan.change, report.detail, epoch)


def _build_locked(
    template: Template,
    host: HostConfig,
    family: Family,
    store: CacheStore,
    report: Reporter,
    fingerprints: list[Fingerprint],
    plan: Plan | None,
) -> Manifest:
    timings: dict[str, float] = {}
    total_start = time.monotonic()
    epoch = choose_epoch([f.epoch for f in fingerprints])
    workdir = store.new_workdir(template.name)
    rootdir = store.new_workdir(template.name, build_parent(host))
    try:
        root = rootdir / "root"
        root.mkdir(mode=0o755)
        boot = _make_root(template, host, family, root, report, epoch, plan, timings)
        with _timed(timings, "hooks"):
            run_root_hooks(template, template.hooks.post_install, root, report)
        report.phase("cleaning the root")
        with _timed(timings, "cleanup"):
            family.clean(root)
            clean_root(root, epoch)
        with _timed(timings, "hooks"):
            run_host_hooks(template, "post-cache", template.hooks.post_cache, root, report)
        packages = family.installed_packages(root)
        report.phase(f"packing {len(packages)} packages")
        archive = workdir / "new.tar.zst"
        last = [time.monotonic()]  # a line every 2 s of a long pack, none for a short one

        def on_bytes(done: int) -> None:
            if time.monotonic() - last[0] > 2:
                last[0] = time.monotonic()
                report.detail(f"packed {done / 2**20:.0f} MiB")

        with _timed(timings, "pack"):
            packed = pack_tree(
                root, archive, source_date_epoch=epoch, level=host.zstd_level, progress=on_bytes
            )
        remove_tree_safely(root)
        report.phase("verifying the archive")
        with _timed(timings, "verify"):
            validate_archive(archive)
        info = ArchiveInfo(
            f"{template.name}.tar.zst",
            packed.sha256,
            packed.compressed_size,
            packed.uncompressed_size,
            packed.members,
        )
        timings["total"] = round(time.monotonic() - total_start, 3)
        build = {
            "tool": boot.tool,
            "tool_version": boot.tool_version,
            "vzpkg": VERSION,
            "zstd_level": str(host.zstd_level),
            "path": "bootstrap" if plan is None else plan.path,
        }
        if plan is not None:
            build["from"] = f"{plan.start.name} {plan.start.sha256}"
        manifest = Manifest(
            template=template.name,
            metadata_digest=template.digest,
            family=template.family,
            arch=template.arch,
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            source_date_epoch=epoch,
            archive=info,
            upstream=tuple(fingerprints),
            packages=tuple(packages),
            build=build,
            timings=timings,
            inputs=inputs_of(template),
            changes=changes(plan.start.manifest.packages, packages) if plan else (),
        )
        store.set_origin(template.name, origin_of_build(store, plan, packed.sha256))
        store.publish(template.name, archive, manifest)
        remember_validated(host.validated_dir, store.archive_path(template.name),
                           packed.sha256, packed.members, packed.uncompressed_size)  # fmt: skip
        for path in store.keep_dated(template.name, manifest, host.cache_keep_dated):
            report.detail(f"removed {path} (CACHE_KEEP_DATED={host.cache_keep_dated})")
        return manifest
    finally:
        remove_tree_safely(rootdir)
        remove_tree_safely(workdir)
