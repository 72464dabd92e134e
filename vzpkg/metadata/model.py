"""Template metadata as frozen dataclasses. docs/metadata.md describes the file format."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Canonical arch names (OpenVZ's) and the aliases users type.
ARCH_ALIASES: Mapping[str, str] = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "x86-64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "i386": "i386",
    "i686": "i386",
    "x86": "i386",
    "ppc64le": "ppc64le",
    "ppc64el": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
DEB_ARCH: Mapping[str, str] = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "i386": "i386",
    "ppc64le": "ppc64el",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
FAMILIES = ("deb", "rpm")
PACKAGE_MANAGERS = {"deb": ("apt",), "rpm": ("dnf",)}
BOOTSTRAP_TOOLS = {"deb": ("mmdebstrap", "debootstrap"), "rpm": ("dnf",)}
HOOK_NAMES = ("pre-cache", "post-install", "post-cache")


@dataclass(frozen=True)
class Mirror:
    """A named place packages come from. ``host_suite`` finds it in the host's apt sources."""

    name: str
    url: str | None = None
    host_suite: str | None = None  # e.g. "{codename}-security"


@dataclass(frozen=True)
class Repository:
    id: str
    mirror: str | None = None  # deb: a Mirror's name
    suite: str | None = None  # deb
    components: tuple[str, ...] = ()  # deb
    baseurl: str | None = None  # rpm
    metalink: str | None = None  # rpm
    mirrorlist: str | None = None  # rpm
    gpgkeys: tuple[Path, ...] = ()  # rpm: keys for this repository (else the template's)
    repo_gpgcheck: bool = False  # rpm: repository metadata is signed too
    enabled: bool = True


@dataclass(frozen=True)
class Hooks:
    pre_cache: tuple[Path, ...] = ()
    post_install: tuple[Path, ...] = ()
    post_cache: tuple[Path, ...] = ()

    def __add__(self, other: Hooks) -> Hooks:
        return Hooks(
            self.pre_cache + other.pre_cache,
            self.post_install + other.post_install,
            self.post_cache + other.post_cache,
        )

    def files(self) -> tuple[Path, ...]:
        return self.pre_cache + self.post_install + self.post_cache


@dataclass(frozen=True)
class Distribution:
    name: str
    summary: str
    family: str
    package_manager: str
    bootstrap: tuple[str, ...]
    arches: tuple[str, ...]
    default_set: str
    keys: tuple[Path, ...]
    mirrors: Mapping[str, Mirror]
    environment: Mapping[str, str] = field(default_factory=dict)
    hooks: Hooks = Hooks()
    description: str = ""
    codenames: tuple[str, ...] = ()  # of all its releases: finds mirrors in host apt sources
    path: Path = Path()


@dataclass(frozen=True)
class Release:
    version: str
    summary: str
    codename: str | None
    repositories: tuple[Repository, ...]
    keys: tuple[Path, ...] = ()  # replaces the distribution's keys when given
    arches: tuple[str, ...] = ()  # restricts the distribution's arches when given
    releasever: str | None = None  # rpm: $releasever (default: version)
    set_packages: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    environment: Mapping[str, str] = field(default_factory=dict)
    hooks: Hooks = Hooks()
    path: Path = Path()


@dataclass(frozen=True)
class PackageSet:
    name: str
    summary: str
    packages: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    base: str | None = None
    variant: str | None = None  # deb: mmdebstrap/debootstrap variant (default minbase)
    releases: tuple[str, ...] = ()  # only these releases, when given
    environment: Mapping[str, str] = field(default_factory=dict)
    hooks: Hooks = Hooks()
    description: str = ""
    path: Path = Path()


@dataclass(frozen=True)
class Template:
    """One buildable template: distribution x release x package set x arch, fully resolved."""

    name: str
    distribution: Distribution
    release: Release
    package_set: PackageSet
    arch: str
    packages: tuple[str, ...]
    exclude: tuple[str, ...]
    keys: tuple[Path, ...]
    environment: Mapping[str, str]
    hooks: Hooks
    variant: str
    digest: str = ""

    @property
    def family(self) -> str:
        return self.distribution.family

    @property
    def os_name(self) -> str:
        return f"{self.distribution.name}-{self.release.version}"

    @property
    def summary(self) -> str:
        return f"{self.release.summary}, {self.package_set.summary}"

    @property
    def pkgcache_key(self) -> str:
        """The package cache's name: sets of one release share downloaded packages."""
        return f"{self.distribution.name}-{self.release.version}-{self.arch}"

    def portable(self, path: Path) -> str:
        """``path`` as the same metadata has it on any host: relative to the metadata
        directory when it is in it (a host keyring stays absolute)."""
        root = self.distribution.path.parent.parent
        try:
            return str(path.relative_to(root)) if root != Path() else str(path)
        except ValueError:
            return str(path)

    def resolved(self) -> dict[str, Any]:
        """Everything that decides the content of the cache, as plain data."""
        return {
            "name": self.name,
            "family": self.family,
            "package_manager": self.distribution.package_manager,
            "bootstrap": list(self.distribution.bootstrap),
            "arch": self.arch,
            "codename": self.release.codename,
            "releasever": self.release.releasever or self.release.version,
            "repositories": [_repo_data(r, self.portable) for r in self.release.repositories],
            "mirrors": {
                n: [m.url, m.host_suite] for n, m in sorted(self.distribution.mirrors.items())
            },
            "packages": list(self.packages),
            "exclude": list(self.exclude),
            "variant": self.variant,
            "environment": dict(sorted(self.environment.items())),
            "keys": [self.portable(k) for k in self.keys],
            "hooks": {
                name: [self.portable(p) for p in paths]
                for name, paths in (
                    ("pre-cache", self.hooks.pre_cache),
                    ("post-install", self.hooks.post_install),
                    ("post-cache", self.hooks.post_cache),
                )
            },
        }


def _repo_data(repo: Repository, portable: Callable[[Path], str]) -> dict[str, Any]:
    return {
        "id": repo.id,
        "mirror": repo.mirror,
        "suite": repo.suite,
        "components": list(repo.components),
        "baseurl": repo.baseurl,
        "metalink": repo.metalink,
        "mirrorlist": repo.mirrorlist,
        "gpgkeys": [portable(k) for k in repo.gpgkeys],
        "repo_gpgcheck": repo.repo_gpgcheck,
        "enabled": repo.enabled,
    }


# What an in-place update changes in a cache; everything else of a template is its base.
UPDATABLE = ("name", "packages", "exclude")


def template_digest(template: Template) -> str:
    """sha256 over the resolved template and the bytes of every key and hook file it uses.

    Paths of host keyrings are hashed by content too: a changed keyring is a changed input.
    """
    return _digest(template, template.resolved())


def base_digest(template: Template) -> str:
    """sha256 over what an in-place update cannot change (all but UPDATABLE): a cache made
    with the same base digest can be made this template's by installing and removing
    packages (its own previous cache, or its base set's)."""
    data = {k: v for k, v in template.resolved().items() if k not in UPDATABLE}
    return _digest(template, data)


def _digest(template: Template, data: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(data, sort_keys=True).encode())
    files = list(template.keys) + list(template.hooks.files())
    for repo in template.release.repositories:
        files.extend(repo.gpgkeys)
    for path in files:
        h.update(template.portable(path).encode() + b"\0")
        try:
            h.update(path.read_bytes())
        except OSError:
            h.update(b"<missing>")
    return h.hexdigest()
