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
    Diagnosis,
    Family,
    Fingerprint,
    InstalledPackage,
    Progress,
)
from vzpkg.errors import ExitCode, VzError
from vzpkg.metadata.model import DEB_ARCH, Repository
from vzpkg.pkgmgr import apt

_DATE = re.compile(rb"^Date:\s*(.+)$", re.MULTILINE)
_SIGNATURE_TROUBLE = (
    "NO_PUBKEY",
    "not signed",
    "signatures couldn't be verified",
    "is not signed",
    "EXPKEYSIG",
    "BADSIG",
    "The following signatures",
)


def diagnose_apt(lines: list[str]) -> Diagnosis | None:
    if any(s in line for line in lines for s in _SIGNATURE_TROUBLE):
        return (
            ExitCode.SIGNATURE,
            "repository signature check failed with the template's keys",
            "the keys in metadata do not sign this mirror's Release files; fix the metadata's keys",
        )
    return None


class Debian(Family):
    name = "deb"

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
        for log in (
            "var/log/dpkg.log",
            "var/log/alternatives.log",
            "var/log/bootstrap.log",
            "var/log/apt",
        ):
            fsutil.remove_beneath(root, log)


def host_aptopts() -> list[str]:
    """Apt options the host's own apt needs to use its mirror (e.g. a snapshot mirror whose
    Release files are past Valid-Until). Only these well-known keys are carried over."""
    opts = []
    try:
        dump = run.run(["apt-config", "dump"], stdout=-1, check=False).stdout.decode()
    except VzError:
        return []
    for key in (
        "Acquire::Check-Valid-Until",
        "Acquire::Check-Date",
        "Acquire::http::Proxy",
        "Acquire::https::Proxy",
    ):
        if m := re.search(rf'^{re.escape(key)} "([^"]*)";$', dump, re.MULTILINE):
            opts.append(f'{key} "{m.group(1)}"')
    return opts
