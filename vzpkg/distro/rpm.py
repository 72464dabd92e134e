"""The rpm family (AlmaLinux, Rocky, Fedora, ...): host ``dnf --installroot`` from host-side
configuration, packages and repository metadata checked against the template's keys only."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from vzpkg import fsutil, run
from vzpkg.distro.base import (
    BootstrapResult,
    Diagnosis,
    Family,
    Fingerprint,
    InstalledPackage,
    Progress,
    RootChange,
)
from vzpkg.errors import ExitCode, VzError
from vzpkg.metadata.model import Repository
from vzpkg.metadata.names import host_arch
from vzpkg.pkgmgr import dnf

# What dnf prints for each way a build can go wrong, most specific first: (pattern, code, what).
_DIAGNOSES: tuple[tuple[re.Pattern[str], ExitCode, str], ...] = (
    (
        re.compile(r"is not signed|Package .* is not signed"),
        ExitCode.SIGNATURE,
        "a package is not signed; gpgcheck refuses it",
    ),
    (
        re.compile(
            r"Public key for .* is not installed|not correct for this package|"
            r"GPG check FAILED|NOKEY"
        ),
        ExitCode.SIGNATURE,
        "a package is signed by a key that is not among the template's keys",
    ),
    (
        re.compile(
            r"repomd\.xml GPG signature verification error|Bad GPG signature|"
            r"GPG signature is not available|signature verification"
        ),
        ExitCode.SIGNATURE,
        "the repository metadata signature does not verify with the template's keys",
    ),
    (
        re.compile(
            r"[Cc]hecksum (doesn't|does not) match|does not match checksum|"
            r"Downloading successful, but checksum doesn't match|Interrupted by header "
            r"callback: Inconsistent"
        ),
        ExitCode.SIGNATURE,
        "repository metadata does not match its checksums (tampered or half-synced mirror)",
    ),
    (
        re.compile(
            r"Curl error|Cannot download|Failed to download metadata|"
            r"Couldn't connect|Connection refused|Could not resolve host|"
            r"Cannot find a valid baseurl"
        ),
        ExitCode.UPSTREAM,
        "a repository could not be reached",
    ),
    (
        re.compile(r"No match for argument|Unable to find a match|nothing provides"),
        ExitCode.BOOTSTRAP,
        "a package of the template is not in its repositories",
    ),
)


def diagnose(lines: list[str]) -> Diagnosis | None:
    text = "\n".join(lines)
    for pattern, code, what in _DIAGNOSES:
        if pattern.search(text):
            return code, what, None
    return None


class Rpm(Family):
    name = "rpm"

    @property
    def releasever(self) -> str:
        return self.template.release.releasever or self.template.release.version

    @property
    def basearch(self) -> str:
        return "i686" if self.template.arch == "i386" else self.template.arch

    def _url(self, url: str) -> str:
        return dnf.substitute(url, self.releasever, self.basearch)

    def baseurl(self, repo: Repository) -> str | None:
        if repo.mirror is not None:
            base = self.mirror_url(repo.mirror)
            return self._url(f"{base}/{repo.baseurl.lstrip('/')}" if repo.baseurl else base)
        return self._url(repo.baseurl) if repo.baseurl else None

    def repo_keys(self, repo: Repository) -> tuple[Path, ...]:
        return repo.gpgkeys or self.template.keys

    def dnf_repos(self) -> list[dnf.DnfRepo]:
        return [
            dnf.DnfRepo(
                id=r.id,
                name=f"{self.template.release.summary} {r.id}",
                baseurl=self.baseurl(r),
                metalink=self._url(r.metalink) if r.metalink else None,
                mirrorlist=self._url(r.mirrorlist) if r.mirrorlist else None,
                gpgkeys=self.repo_keys(r),
                repo_gpgcheck=r.repo_gpgcheck,
                enabled=r.enabled,
            )
            for r in self.template.release.repositories
        ]

    # -- host checks -----------------------------------------------------------------------

    def check_host(self) -> None:
        for tool in ("dnf", "rpm", "unshare"):
            run.check_tool(tool, f"to build {self.template.name}")
        for repo in self.template.release.repositories:
            keys = self.repo_keys(repo)
            if not keys:
                raise VzError(
                    f"{self.template.name}: repository {repo.id} has no signing key; "
                    "packages are always checked",
                    ExitCode.SIGNATURE,
                    hint="add keys = [...] to the release or gpgkeys to the repository",
                )
            for key in keys:
                if not key.is_file():
                    raise VzError(
                        f"{self.template.name}: signing key {key} does not exist",
                        ExitCode.SIGNATURE,
                        hint="restore the key file in metadata/",
                    )

    # -- upstream state --------------------------------------------------------------------

    def fingerprints(self) -> list[Fingerprint]:
        result = []
        for repo in self.dnf_repos():
            if not repo.enabled:
                continue
            if repo.metalink:
                digest, stamp = dnf.metalink_repomd(self.fetch(repo.metalink))
                if digest is None:
                    raise VzError(
                        f"{self.template.name}: {repo.metalink} lists no repomd.xml",
                        ExitCode.UPSTREAM,
                    )
                result.append(Fingerprint(repo.id, repo.metalink, digest, None, stamp))
                continue
            base = repo.baseurl
            if base is None and repo.mirrorlist:
                base = dnf.first_mirror(self.fetch(repo.mirrorlist))
                if base is None:
                    raise VzError(
                        f"{self.template.name}: {repo.mirrorlist} lists no mirror",
                        ExitCode.UPSTREAM,
                    )
            url = f"{base}/repodata/repomd.xml"
            body = self.fetch(url)
            revision, stamp = dnf.repomd_revision(body)
            result.append(
                Fingerprint(repo.id, url, hashlib.sha256(body).hexdigest(), revision, stamp)
            )
        return result

    # -- building --------------------------------------------------------------------------

    def write_config(self, work: Path) -> tuple[Path, Path, Path, Path]:
        """dnf.conf, repos, an empty vars dir and a HOME with .rpmmacros, on the host side."""
        reposdir, varsdir, home = work / "repos.d", work / "vars", work / "home"
        for d in (reposdir, varsdir, home, work / "log", work / "persist"):
            d.mkdir(parents=True, exist_ok=True)
        (home / ".rpmmacros").write_text(dnf.RPM_MACROS)
        for repo in self.dnf_repos():
            (reposdir / f"{repo.id}.repo").write_text(dnf.render_repo(repo))
        conf = work / "dnf.conf"
        conf.write_text(dnf.render_dnf_conf(exclude=self.template.exclude))
        return conf, reposdir, varsdir, home

    def bootstrap(
        self, root: Path, pkgcache: Path, progress: Progress, source_date_epoch: int
    ) -> BootstrapResult:
        self._dnf(root, pkgcache, progress, source_date_epoch, ("install",), self.template.packages)
        return self._tool()

    def update(
        self,
        root: Path,
        pkgcache: Path,
        change: RootChange,
        progress: Progress,
        source_date_epoch: int,
    ) -> BootstrapResult:
        """The host's dnf changes the root as it bootstrapped it (host-side configuration,
        packages checked against the template's keys, scriptlets chrooted by rpm)."""
        epoch = source_date_epoch
        if change.purge:
            self._dnf(root, pkgcache, progress, epoch, ("remove",), change.purge)
        if change.drop:
            # No longer asked for: a dependency now, removed unless something needs it.
            self._dnf(root, pkgcache, progress, epoch, ("mark", "remove"), change.drop)
            self._dnf(root, pkgcache, progress, epoch, ("autoremove",), ())
        if change.upgrade:
            self._dnf(root, pkgcache, progress, epoch, ("upgrade",), ())
        if change.install:
            self._dnf(root, pkgcache, progress, epoch, ("install",), change.install)
        return self._tool()

    def _tool(self) -> BootstrapResult:
        version = run.run(["dnf", "--version"], stdout=-1, check=False).stdout
        text = version.decode(errors="replace").strip().splitlines()
        return BootstrapResult("dnf", f"dnf {text[0]}" if text else "dnf")

    def _dnf(
        self,
        root: Path,
        pkgcache: Path,
        progress: Progress,
        source_date_epoch: int,
        command: tuple[str, ...],
        packages: tuple[str, ...],
    ) -> None:
        work = root.parent / "dnf"
        conf, reposdir, varsdir, home = self.write_config(work)
        argv = dnf.dnf_install_argv(
            root=root,
            config=conf,
            reposdir=reposdir,
            varsdir=varsdir,
            cachedir=pkgcache,
            logdir=work / "log",
            persistdir=work / "persist",
            releasever=self.releasever,
            arch=self.basearch,
            packages=packages,
            host_arch=host_arch(),
            command=command,
        )
        # HOME carries .rpmmacros (the rpmdb location). dnf starts a gpg-agent for signed
        # repository metadata: it dies with the PID namespace the wrapper gives dnf.
        env = {
            "HOME": str(home),
            "SOURCE_DATE_EPOCH": str(source_date_epoch),
            **self.template.environment,
        }
        self.run_bootstrap("dnf", argv, env, progress, diagnose)

    def installed_packages(self, root: Path) -> list[InstalledPackage]:
        # The host's rpm reads the root's database; nothing inside the root runs.
        proc = run.run(
            dnf.rpm_query_argv(root),
            stdout=-1,
            error_code=ExitCode.BOOTSTRAP,
            env={"HOME": str(root.parent / "dnf" / "home")},
        )
        packages = dnf.parse_rpm_query(proc.stdout.decode(errors="replace"))
        if not packages:
            raise VzError(
                f"{self.template.name}: the new root's rpm database is empty", ExitCode.BOOTSTRAP
            )
        return [InstalledPackage(*p) for p in packages]

    def clean(self, root: Path) -> None:
        fsutil.empty_dir_beneath(root, "var/cache/dnf")  # keyrings dnf imported, expiry state
        fsutil.empty_dir_beneath(root, "var/cache/yum")
        fsutil.glob_remove_beneath(root, "var/lib/rpm", "__db.")
        fsutil.glob_remove_beneath(root, "var/lib/rpm", ".rpm.lock")
        fsutil.glob_remove_beneath(root, "var/lib/rpm", ".dbenv.lock")
        for prefix in ("dnf", "hawkey.log", "yum.log"):
            fsutil.glob_remove_beneath(root, "var/log", prefix)
