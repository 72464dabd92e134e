"""Packages in a running rpm-family VPS: the host half with dnf, the VPS's own rpm inside.

As for Debian (vzpkg.ct.packages), nothing of the VPS runs on the host and the host's tools
never read the VPS's files: the host's librpm never opens the VPS's rpm database. dnf resolves
against a database of the host's own instead, made with ``tsflags=justdb`` from the repository's
own (signed) packages of what the VPS has installed, as vzpkg's parser reads it from the VPS
(name, [epoch:]version-release, arch). Packages are fetched by dnf with the template's
repositories and keys (gpgcheck, fail-closed) into the template's shared package cache (the
one cache builds use), shown to the VPS read-only, and installed by the VPS's own
``/usr/bin/rpm -U``; scriptlets run there only. A removal is the VPS's ``rpm -e``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from vzpkg import run
from vzpkg.distro.base import InstalledPackage, namespace_wrapper
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig
from vzpkg.metadata.model import Template
from vzpkg.pkgmgr.apt import Change

Say = Callable[[str], None]
VPS_RPM = "/usr/bin/rpm"  # called by its path: busybox's sh would run its own rpm applet
# What Debian's rpm says whenever it installs (a VPS's rpm may be one): not for the user.
NOISE = ("rpm: RPM should not be used directly", "rpm: However assuming you know")

# dnf's transaction table: a section title, then one line per package.
_SECTION = re.compile(r"^(Installing|Upgrading|Downgrading|Reinstalling|Removing)\b.*:$")
_ROW = re.compile(r"^ (\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+[\d.]+(?: [kMG])?\s*$")
_RPM_FILE = re.compile(r"([A-Za-z0-9._+-]+-[^-\s/]+-[^-\s/]+\.[a-z0-9_]+\.rpm)\b")


_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]*\Z")
_EVR = re.compile(r"(\d+:)?[A-Za-z0-9._+~^]+-[A-Za-z0-9._+~^]+\Z")
_ARCHES = frozenset({"noarch", "x86_64", "i686", "i586", "i386", "aarch64", "ppc64le", "s390x",
                     "armv7hl", "riscv64"})  # fmt: skip


def nevra(p: InstalledPackage) -> str | None:
    """dnf's spec of an installed package: name-[epoch:]version-release.arch; None for one
    whose fields are not what rpm's syntax allows (the VPS's database is hostile input: a
    name like ``--setopt=...`` must never reach dnf's command line)."""
    # A known arch: a spec ending in .rpm would be a local file to dnf.
    if _NAME.match(p.name) and _EVR.match(p.version) and p.arch in _ARCHES:
        return f"{p.name}-{p.version}.{p.arch}"
    return None


def parse_table(text: str, installed: dict[str, str]) -> list[Change]:
    """The changes dnf's transaction table lists (``installed``: name -> version now)."""
    changes = []
    section = None
    for line in text.splitlines():
        if m := _SECTION.match(line.strip() and line):
            section = m.group(1)
            continue
        row = _ROW.match(line)
        if section is None or row is None:
            continue
        name, arch, version = row.group(1), row.group(2), row.group(3)
        version = version.removeprefix("0:") if version.startswith("0:") else version
        if section == "Removing":
            changes.append(Change(name, arch, installed.get(name, version), None))
        else:
            changes.append(Change(name, arch, installed.get(name), version))
    return changes


class HostDnf:
    """The host's dnf seeing one VPS: its own installroot in ``scratch`` whose database holds
    what the VPS has, the template's repositories, the shared package cache."""

    def __init__(self, host: HostConfig, template: Template, pool: Path, scratch: Path) -> None:
        from vzpkg.distro.base import family_for
        from vzpkg.distro.rpm import Rpm

        family = family_for(template, host)
        assert isinstance(family, Rpm)
        self.family = family
        self.pool = pool
        self.root = scratch / "root"
        self.root.mkdir()
        self.conf, self.reposdir, self.varsdir, self.home = family.write_config(scratch / "dnf")
        self.logs = scratch / "dnf"

    def _run(self, args: Sequence[str]) -> tuple[int, str]:
        argv = [
            *namespace_wrapper(),
            "dnf",
            f"--installroot={self.root}",
            f"--config={self.conf}",
            f"--releasever={self.family.releasever}",
            f"--setopt=reposdir={self.reposdir}",
            f"--setopt=varsdir={self.varsdir}",
            f"--setopt=cachedir={self.pool}",
            f"--setopt=logdir={self.logs / 'log'}",
            f"--setopt=persistdir={self.logs / 'persist'}",
            "--setopt=metadata_expire=3600",
            *args,
        ]
        # cwd: the scratch directory (a relative name never reaches the VPS's tree).
        proc = run.run(argv, env={"HOME": str(self.home)}, stdout=-1, check=False,
                       cwd=self.logs)  # fmt: skip
        return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")

    def _failure(self, text: str, code: int) -> VzError:
        from vzpkg.distro.rpm import diagnose

        missing = re.findall(r"^No match for argument: (\S+)", text, re.MULTILINE)
        if missing:
            return VzError(f"Unable to find package {', '.join(missing)} in the template's "
                           "repositories", ExitCode.PKGMGR_FAILED)  # fmt: skip
        found = diagnose(text.splitlines())
        if found is not None:
            return VzError(found[1], found[0], hint=found[2])
        errors = [line.strip() for line in text.splitlines()
                  if line.startswith(("Error", "No match", " Problem", "  - "))]  # fmt: skip
        return VzError("; ".join(errors[:8]) or f"dnf exit {code}", ExitCode.PKGMGR_FAILED)

    def mirror(self, installed: Sequence[InstalledPackage], say: Say) -> None:
        """The VPS's packages into the installroot's database only (justdb, no scriptlets),
        from the repositories' own packages; one the repositories no longer have is left out."""
        specs = [s for p in installed if p.name != "gpg-pubkey" and (s := nevra(p))]
        if not specs:
            return
        say(f"{self.family.template.name}: reading what the VPS has ({len(specs)} packages)")
        code, text = self._run(["-y", "--setopt=tsflags=justdb,noscripts,notriggers",
                                "--setopt=strict=0", "install", "--", *specs])  # fmt: skip
        if code != 0:
            raise self._failure(text, code)

    def plan(self, args: Sequence[str], installed: dict[str, str]) -> list[Change]:
        """What ``args`` (install NAME..., upgrade [NAME...], remove NAME...) would change."""
        code, text = self._run(["--assumeno", *args])
        if code != 0 and "Operation aborted" not in text:
            raise self._failure(text, code)
        return parse_table(text, installed)

    def fetch(self, args: Sequence[str], say: Say) -> tuple[list[Path], int]:
        """Download (signatures checked) what ``args`` install into the shared cache; the
        files, and how many were not there yet."""
        code, text = self._run(["-y", "--downloadonly", *args])
        if code != 0:
            raise self._failure(text, code)
        names = _RPM_FILE.findall(text.split("Downloading Packages:", 1)[-1])
        fetched = len([n for n in names if f"[SKIPPED] {n}" not in text])
        files = []
        for name in dict.fromkeys(names):
            found = sorted(self.pool.glob(f"*/packages/{name}"))
            if not found:
                raise VzError(f"dnf did not leave {name} in {self.pool}", ExitCode.PKGMGR_FAILED)
            files.append(found[0])
        if fetched:
            say(f"downloaded {fetched} package{'s' * (fetched != 1)}")
        return files, fetched


def vps_rpm_argv(command: str, words: Sequence[str], files: Sequence[str]) -> list[str]:
    """The VPS's own rpm: -U of the files (install and update), -e of the names (remove)."""
    if command in ("remove", "erase"):
        return [VPS_RPM, "-e", "--", *words]
    return [VPS_RPM, "-U", "-v", "--", *files]


def diff_packages(
    before: Sequence[InstalledPackage], after: Sequence[InstalledPackage]
) -> list[Change]:
    """What changed between two lists of installed packages."""
    old = {(p.name, p.arch): p.version for p in before}
    new = {(p.name, p.arch): p.version for p in after}
    return [
        Change(name, arch, old.get((name, arch)), new.get((name, arch)))
        for name, arch in sorted(old.keys() | new.keys())
        if old.get((name, arch)) != new.get((name, arch))
    ]
