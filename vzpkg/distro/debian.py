"""The Debian family (Debian, Ubuntu, derivatives): what to fetch and from where."""

from __future__ import annotations

import email.utils
import hashlib
import os
import re
import tempfile
from pathlib import Path

from vzpkg import fsutil, run
from vzpkg.distro.base import (
    BootstrapResult,
    Family,
    Fingerprint,
    InstalledPackage,
    Progress,
    RootChange,
    in_root_argv,
    missing_packages,
)
from vzpkg.errors import ExitCode, VzError
from vzpkg.metadata.model import DEB_ARCH, Repository
from vzpkg.pkgmgr import apt
from vzpkg.pkgmgr.hostapt import SharedCache, diagnose_apt, host_aptopts

_DATE = re.compile(rb"^Date:\s*(.+)$", re.MULTILINE)


class Debian(Family):
    name = "deb"
    mirror_hint = (
        "check the mirror (the host's apt sources, --mirror NAME=URL or <NAME>_MIRROR in the "
        "host configuration)"
    )

    # -- where things come from -------------------------------------------------------------

    def repository_url(self, repo: Repository) -> str:
        assert repo.mirror is not None
        return self.mirror_url(repo.mirror)

    def source_lines(self) -> list[str]:
        return [
            apt.sources_line(self.repository_url(r), r.suite or "", r.components)
            for r in self.template.release.repositories
            if r.enabled
        ]

    # -- host checks -----------------------------------------------------------------------

    def bootstrap_tool(self) -> str:
        wanted = self.host.bootstrap_tool
        candidates = [wanted] if wanted else list(self.template.distribution.bootstrap)
        for tool in candidates:
            if run.find_tool(tool):
                return tool
        raise VzError(
            f"{candidates[0]} is needed to build {self.template.name} but is not installed",
            ExitCode.TOOL_MISSING,
            hint=f"apt-get install {' '.join(candidates)}",
        )

    def check_host(self) -> None:
        self.bootstrap_tool()
        run.check_tool("unshare", f"to build {self.template.name}")
        for key in self.template.keys:
            if not key.is_file():
                pkg = {"debian": "debian-archive-keyring", "ubuntu": "ubuntu-keyring"}.get(
                    self.template.distribution.name
                )
                raise VzError(
                    f"{self.template.name}: signing key {key} does not exist; "
                    "signatures are always checked",
                    ExitCode.SIGNATURE,
                    hint=f"apt-get install {pkg}"
                    if pkg and str(key).startswith("/usr/share/keyrings")
                    else "restore the key file",
                )

    # -- upstream state --------------------------------------------------------------------

    def fingerprints(self) -> list[Fingerprint]:
        result = []
        for repo in self.template.release.repositories:
            if not repo.enabled:
                continue
            url = f"{self.repository_url(repo)}/dists/{repo.suite}/InRelease"
            body = self.fetch(url)
            date = None
            epoch = None
            if m := _DATE.search(body):
                date = m.group(1).decode(errors="replace").strip()
                parsed = email.utils.parsedate_to_datetime(date)
                epoch = int(parsed.timestamp())
            result.append(Fingerprint(repo.id, url, hashlib.sha256(body).hexdigest(), date, epoch))
        return result

    # -- building --------------------------------------------------------------------------

    def keyring_dir(self, workdir: Path) -> tuple[Path, Path]:
        """A directory holding exactly the template's keys, so apt trusts nothing else."""
        keydir = workdir / "trusted.gpg.d"
        keydir.mkdir(mode=0o755)
        for i, key in enumerate(self.template.keys):
            data = key.read_bytes()
            suffix = ".asc" if data.lstrip().startswith(b"-----BEGIN PGP") else ".gpg"
            path = keydir / f"{i:02d}-{key.stem}{suffix}"
            path.write_bytes(data)
            path.chmod(0o644)
        first = sorted(keydir.iterdir())[0]
        return keydir, first

    def bootstrap(
        self, root: Path, pkgcache: Path, progress: Progress, source_date_epoch: int
    ) -> BootstrapResult:
        tool = self.bootstrap_tool()
        arch = DEB_ARCH[self.template.arch]
        release = self.template.release
        suite = release.repositories[0].suite or release.codename or ""
        env = {"SOURCE_DATE_EPOCH": str(source_date_epoch), **self.template.environment}
        with tempfile.TemporaryDirectory(prefix="keys-", dir=root.parent) as tmp:
            # apt reads the keys as its unprivileged sandbox user: they must be world-readable.
            os.chmod(tmp, 0o755)
            keydir, first_key = self.keyring_dir(Path(tmp))
            if tool == "mmdebstrap":
                argv = apt.mmdebstrap_argv(
                    suite=suite,
                    target=root,
                    source_lines=self.source_lines(),
                    arch=arch,
                    variant=self.template.variant,
                    keyrings=[keydir, first_key],
                    include=self.template.packages,
                    exclude=self.template.exclude,
                    aptopts=host_aptopts(),
                    pkgcache=pkgcache,
                )
            else:
                first = release.repositories[0]
                argv = apt.debootstrap_argv(
                    suite=suite,
                    target=root,
                    mirror=self.repository_url(first),
                    components=first.components,
                    arch=arch,
                    variant=self.template.variant,
                    keyring=first_key,
                    include=self.template.packages,
                    exclude=self.template.exclude,
                    pkgcache=pkgcache,
                )
            self.run_bootstrap(tool, argv, env, progress, diagnose_apt)
        if tool == "debootstrap":
            # debootstrap knows one suite; the root's apt must know all of them.
            fsutil.write_file_beneath(
                root, "etc/apt/sources.list", ("\n".join(self.source_lines()) + "\n").encode()
            )
        version = run.run([tool, "--version"], stdout=-1, check=False).stdout
        text = version.decode(errors="replace").strip().splitlines()
        return BootstrapResult(tool, text[0] if text else "unknown")

    def update(
        self,
        root: Path,
        pkgcache: Path,
        change: RootChange,
        progress: Progress,
        source_date_epoch: int,
    ) -> BootstrapResult:
        """The host's apt-get resolves and fetches (the template's lists and keys, the shared
        pool, as for a running VPS: vzpkg.pkgmgr.hostapt); the root's own apt-get and dpkg
        install the files, chrooted, with no repository in sight."""
        shared = self.shared_cache()
        shared.prepare(progress)
        # Its lines name the template, which the build's own lines do already.
        shared.refresh_lists(lambda line: progress(line.removeprefix(f"{self.template.name}: ")),
                             force=change.upgrade)  # fmt: skip
        # As the bootstrap's: users' password dates and other stamps are the upstream's.
        env = {"SOURCE_DATE_EPOCH": str(source_date_epoch), **self.template.environment}
        if change.drop or change.purge:
            self._in_root(root, apt.removal_argv(change.drop, change.purge), env, progress)
        if change.upgrade:
            self._transaction(root, shared, ["full-upgrade"], env, progress)
        if change.install:
            self._transaction(root, shared, ["install", *change.install], env, progress)
        version = run.run(["apt-get", "--version"], stdout=-1, check=False).stdout
        text = version.decode(errors="replace").strip().splitlines()
        return BootstrapResult("apt-get", text[0] if text else "unknown")

    def shared_cache(self) -> SharedCache:
        """The template's package pool and apt lists on the host, as VPS transactions and
        updates use them."""
        return SharedCache(self.host, self.template, self.source_lines(), self.keyring_dir)

    def _transaction(
        self,
        root: Path,
        shared: SharedCache,
        args: list[str],
        env: dict[str, str],
        progress: Progress,
    ) -> None:
        from vzpkg.pkgmgr.hostapt import as_files
        from vzpkg.pkgmgr.installed import DPKG_STATUS, LIMIT

        status = fsutil.read_file_beneath(root, DPKG_STATUS, LIMIT)
        try:
            marks = fsutil.read_file_beneath(root, "var/lib/apt/extended_states", LIMIT)
        except FileNotFoundError:
            marks = b""
        with shared.scratch() as tmp:
            scratch = Path(tmp)
            host_apt = shared.host_apt(scratch, status, marks, apt.BUILD_RESOLVER_OPTIONS)
            try:
                fetches = host_apt.resolve(args)
            except VzError as e:  # packages the metadata names and no repository has
                missing = missing_packages([f"E: {m}" for m in e.message.split("; ")])
                if missing:
                    raise self._missing_packages(missing, e) from None
                raise VzError(f"{self.template.name}: {e.message}", e.code, e.hint) from None
            host_apt.fetch(fetches, progress)
            inside, new_marks = as_files(args, fetches, status)
            if not inside:
                return
            progress(f"apt-get {' '.join(args)}: {len(fetches)} package(s)")
            pool = root / apt.VPS_POOL_DIR.lstrip("/")
            if any(p.is_symlink() for p in (root / "run", pool.parent, pool)):
                raise VzError(f"{self.template.name}: the cache's /run holds links where the "
                              "packages go", ExitCode.ARCHIVE, hint="vzpkgcache -f")  # fmt: skip
            pool.parent.mkdir(parents=True, exist_ok=True)
            shared.view(pool, [f.file for f in fetches], copy=False)
            try:
                token = scratch.name.rpartition(".")[2]
                argv = apt.vps_apt_argv([*apt.ROOT_APT_OPTIONS, *inside], token, new_marks)
                self._in_root(root, argv, env, progress)
            finally:
                fsutil.remove_tree_safely(pool)

    def _in_root(
        self, root: Path, argv: list[str], env: dict[str, str], progress: Progress
    ) -> None:
        """The root's own tools, with no network, starting no service (policy-rc.d)."""
        policy = "usr/sbin/policy-rc.d"
        try:
            own: bytes | None = fsutil.read_file_beneath(root, policy)
        except FileNotFoundError:
            own = None
        fsutil.write_file_beneath(root, policy, b"#!/bin/sh\nexit 101\n", 0o755)
        try:
            self._in_root_run(root, argv, env, progress)
        finally:
            if own is None:
                fsutil.remove_beneath(root, policy)
            else:
                fsutil.write_file_beneath(root, policy, own, 0o755)

    def _in_root_run(
        self, root: Path, argv: list[str], env: dict[str, str], progress: Progress
    ) -> None:
        run.run_streaming(
            in_root_argv(root, argv, network=False),
            on_line=lambda line: progress(f"apt-get: {line}"),
            env={**env, "DEBIAN_FRONTEND": "noninteractive"},
            error_code=ExitCode.BOOTSTRAP,
            name="apt-get",
        )

    def installed_packages(self, root: Path) -> list[InstalledPackage]:
        status = root / "var/lib/dpkg/status"
        if status.is_symlink() or not status.is_file():
            raise VzError(
                f"{self.template.name}: the new root has no dpkg status file", ExitCode.BOOTSTRAP
            )
        return [InstalledPackage(*p) for p in apt.read_dpkg_status(status)]

    def clean(self, root: Path) -> None:
        fsutil.empty_dir_beneath(root, "var/lib/apt/lists", keep=("partial", "lock"))
        fsutil.empty_dir_beneath(root, "var/cache/apt/archives", keep=("partial", "lock"))
        fsutil.glob_remove_beneath(root, "var/cache/apt", "pkgcache.bin")
        fsutil.glob_remove_beneath(root, "var/cache/apt", "srcpkgcache.bin")
        # Caches of the last runs: they differ between a bootstrap and an update of the
        # same packages, and ldconfig and dpkg make them again when they need them.
        fsutil.remove_beneath(root, "var/cache/ldconfig/aux-cache")
        fsutil.remove_beneath(root, "var/lib/dpkg/status-old")
        for log in (
            "var/log/dpkg.log",
            "var/log/alternatives.log",
            "var/log/bootstrap.log",
            "var/log/apt",
        ):
            fsutil.remove_beneath(root, log)
