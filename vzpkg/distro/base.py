"""What a distribution family provides to the cache builder. Families register by subclassing."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from vzpkg import run
from vzpkg.errors import ExitCode, VzError, network_reason
from vzpkg.hostconf import HostConfig
from vzpkg.metadata.model import Template
from vzpkg.pkgmgr import apt
from vzpkg.pkgmgr.installed import InstalledPackage as InstalledPackage

Progress = Callable[[str], None]
# What apt (mmdebstrap, debootstrap) and dnf say of a package no repository has.
_MISSING_PACKAGE = re.compile(
    r"E: Unable to locate package (\S+)"
    r"|E: Package '([^']+)' has no installation candidate"
    r"|E: Couldn't find any package by (?:glob|regex) '([^']+)'"
    r"|No match for argument: (\S+)"
)
# What a family makes of a failed bootstrap's output: (exit code, what went wrong, hint).
Diagnosis = tuple[ExitCode, str, str | None]
FETCH_TIMEOUT = 30


@dataclass(frozen=True)
class Fingerprint:
    """What identifies the current state of one upstream repository."""

    repository: str
    url: str
    sha256: str
    date: str | None = None  # the repository's own timestamp, when it has one
    epoch: int | None = None


@dataclass(frozen=True)
class BootstrapResult:
    tool: str
    tool_version: str


@dataclass(frozen=True)
class RootChange:
    """What the package manager does to a root unpacked from a cache (Family.update)."""

    upgrade: bool  # everything to the repositories' current versions
    install: tuple[str, ...] = ()  # added to the set
    drop: tuple[str, ...] = ()  # no longer in the set: removed unless something needs them
    purge: tuple[str, ...] = ()  # excluded by the set: removed

    def is_empty(self) -> bool:
        return not (self.upgrade or self.install or self.drop or self.purge)


def namespace_wrapper() -> list[str]:
    """Run a bootstrap in private mount and PID namespaces.

    Every mount the tool makes (proc, sys, dev binds, the package cache) lives in a namespace
    that dies with its last process, so even kill -9 of vzpkgcache leaves no mount behind, and
    --kill-child takes the whole tree down if the wrapper itself is killed.
    """
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
    ]


# Device nodes a package manager's scripts may open in a build root (its /dev is empty).
ROOT_DEVICES = ("null", "zero", "full", "random", "urandom")


def in_root_argv(root: Path, argv: list[str], *, network: bool = True) -> list[str]:
    """``argv`` chrooted into ``root``, a root this build made (never a VPS's: those run
    their own tools through runc), in private mount and PID namespaces (and network, unless
    ``network``) with a /proc of their own and the host's harmless devices bound over files
    in its /dev: all of which goes with the namespaces, whatever happens.

    The namespace's PID 1 stays outside the root (it runs chroot as a child), so that the
    package scripts' ``ischroot`` knows it is in a chroot, as in a bootstrap: sysvinit's would
    otherwise try to restart an init for 45 s."""
    binds = " ".join(ROOT_DEVICES)
    script = (
        # Links the root holds where the devices go are not followed (a bind mount would).
        f'r=$1; shift; [ ! -L "$r/dev" ] && mkdir -p "$r/dev" || exit 1; for d in {binds}; do '
        'rm -f "$r/dev/$d" && : > "$r/dev/$d" && mount --bind "/dev/$d" "$r/dev/$d" || exit 1; '
        'done; chroot "$r" "$@"'
    )
    wrapper = namespace_wrapper()[:-1]
    if not network:
        wrapper.insert(1, "--net")
    return [*wrapper, f"--mount-proc={root}/proc", "/bin/sh", "-c", script, "sh", str(root), *argv]


class Family(ABC):
    """A distribution family: what to fetch, how to bootstrap, how to read what got installed."""

    name: ClassVar[str]
    registry: ClassVar[dict[str, type[Family]]] = {}
    # Where a user points the template at another mirror.
    mirror_hint: ClassVar[str] = (
        "check the mirror (--mirror NAME=URL or <NAME>_MIRROR in the host configuration)"
    )

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "name", None):
            Family.registry[cls.name] = cls

    def __init__(
        self,
        template: Template,
        host: HostConfig,
        mirror_overrides: Mapping[str, str] | None = None,
    ) -> None:
        self.template = template
        self.host = host
        self.mirror_overrides = dict(mirror_overrides or {})
        self.answers: dict[str, bytes] = {}  # fetch's, by URL (a run shares one: BuildOptions)

    def codenames(self) -> tuple[str, ...]:
        return self.template.distribution.codenames or (self.template.release.codename or "",)

    def mirror_url(self, mirror: str) -> str:
        """Resolve a mirror name: command line, host config, host apt sources, metadata."""
        dist = self.template.distribution
        first = self.template.release.repositories[0].mirror
        for key in (mirror, "" if mirror == first else None):
            if key is not None and key in self.mirror_overrides:
                return self.mirror_overrides[key].rstrip("/")
        configured = self.host.mirror(mirror)
        if configured:
            return configured.rstrip("/")
        spec = dist.mirrors[mirror]
        if spec.host_suite:
            suites = [spec.host_suite.format(codename=c) for c in self.codenames()]
            found = apt.find_host_mirror(apt.host_apt_sources(), suites)
            if found:
                return found
        if spec.url:
            return spec.url.rstrip("/")
        key = mirror.upper().replace("-", "_") + "_MIRROR"
        codename = self.template.release.codename or ""
        wanted = spec.host_suite.format(codename=codename) if spec.host_suite else ""
        raise VzError(
            f"{self.template.name}: no URL for mirror {mirror!r}: the host's apt sources have "
            f"no suite {wanted!r} and {key} is not set",
            ExitCode.CONFIG,
            hint=f'set {key}="http://..." in the host configuration or pass --mirror {mirror}=URL',
        )

    def fetch(self, url: str) -> bytes:
        """One small upstream request (InRelease, repomd.xml, a metalink); once per URL."""
        if url not in self.answers:
            self.answers[url] = self._fetch(url)
        return self.answers[url]

    def _fetch(self, url: str) -> bytes:
        import requests  # imported here: vzctl and vzlist never fetch, and it costs 40 ms

        try:
            response = requests.get(url, timeout=FETCH_TIMEOUT)
        except requests.RequestException as e:
            raise VzError(
                f"{self.template.name}: cannot reach {url}: {network_reason(e)}",
                ExitCode.UPSTREAM,
                hint=self.mirror_hint,
            ) from None
        if response.status_code != 200:
            raise VzError(
                f"{self.template.name}: {url}: HTTP {response.status_code}",
                ExitCode.UPSTREAM,
                hint="is this repository on the mirror?",
            )
        return response.content

    def run_bootstrap(
        self,
        tool: str,
        argv: list[str],
        env: Mapping[str, str],
        progress: Progress,
        diagnose: Callable[[list[str]], Diagnosis | None],
    ) -> None:
        """Run the bootstrap tool in private namespaces, its output as progress; a failure is
        told apart by ``diagnose`` from the tool's own lines."""
        lines: list[str] = []

        def on_line(line: str) -> None:
            lines.append(line)
            progress(f"{tool}: {line}")

        try:
            run.run_streaming(
                [*namespace_wrapper(), *argv],
                on_line=on_line,
                env=env,
                error_code=ExitCode.BOOTSTRAP,
                name=tool,  # not the namespace wrapper's: the tool is what failed
            )
        except VzError as e:
            missing = missing_packages(lines)
            if missing:
                raise self._missing_packages(missing, e) from None
            found = diagnose(lines)
            if found is None:
                raise VzError(f"{self.template.name}: {e.message}", e.code, e.hint) from None
            code, what, hint = found
            raise VzError(
                f"{self.template.name}: {what}\n{e.message}",
                code,
                hint=hint or "nothing was published; the previous cache is unchanged",
            ) from None

    def _missing_packages(self, names: list[str], error: VzError) -> VzError:
        """The error for packages the metadata names and no repository of it has: the names,
        and the metadata files that name them."""
        t = self.template
        candidates = [t.package_set.path, t.release.path, t.distribution.path]
        if t.package_set.path.parent.is_dir():
            candidates += sorted(t.package_set.path.parent.glob("*.toml"))
        files = []
        for path in dict.fromkeys(candidates):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if any(f'"{name}"' in text for name in names):
                files.append(str(path))
        where = ", ".join(files) or f"the metadata of {t.name}"
        return VzError(
            f"{t.name}: package(s) {', '.join(names)} not found in the template's repositories"
            f"\n{error.message}",
            ExitCode.METADATA_INVALID,
            hint=f"fix or remove them in {where}; nothing was published",
        )

    @abstractmethod
    def check_host(self) -> None:
        """Fail early, with a hint, if a host tool or key this build needs is missing."""

    @abstractmethod
    def fingerprints(self) -> list[Fingerprint]:
        """One small request per repository: the upstream state this build starts from."""

    @abstractmethod
    def bootstrap(
        self, root: Path, pkgcache: Path, progress: Progress, source_date_epoch: int
    ) -> BootstrapResult:
        """Install the template's packages into the empty directory ``root``."""

    @abstractmethod
    def update(
        self,
        root: Path,
        pkgcache: Path,
        change: RootChange,
        progress: Progress,
        source_date_epoch: int,
    ) -> BootstrapResult:
        """Make ``root``, unpacked from a cache of the same base, what ``change`` says, with
        the template's repositories and keys (vzpkg.cache.update). The caller holds the
        template's package-cache lock."""

    @abstractmethod
    def installed_packages(self, root: Path) -> list[InstalledPackage]:
        """Read the package database of ``root`` without running anything inside it."""

    @abstractmethod
    def clean(self, root: Path) -> None:
        """Remove package-manager caches and state that must not be in a cache."""


def family_for(
    template: Template, host: HostConfig, mirror_overrides: Mapping[str, str] | None = None
) -> Family:
    # Import for registration side effects.
    from vzpkg.distro import debian, rpm  # noqa: F401

    cls = Family.registry.get(template.family)
    if cls is None:
        raise VzError(
            f"{template.name}: building {template.family} templates is not supported yet",
            ExitCode.FAILURE,
        )
    return cls(template, host, mirror_overrides)


def missing_packages(lines: list[str]) -> list[str]:
    """The packages a bootstrap tool said no repository has (apt's and dnf's wording)."""
    names: list[str] = []
    for line in lines:
        match = _MISSING_PACKAGE.search(line)
        if match:
            name = next(group for group in match.groups() if group)
            if name not in names:
                names.append(name)
    return names
