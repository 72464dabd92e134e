"""What a distribution family provides to the cache builder. Families register by subclassing."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig
from vzpkg.metadata.model import Template

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Fingerprint:
    """What identifies the current state of one upstream repository."""

    repository: str
    url: str
    sha256: str
    date: str | None = None  # the repository's own timestamp, when it has one
    epoch: int | None = None


@dataclass(frozen=True)
class InstalledPackage:
    name: str
    version: str
    arch: str


@dataclass(frozen=True)
class BootstrapResult:
    tool: str
    tool_version: str


class Family(ABC):
    """A distribution family: what to fetch, how to bootstrap, how to read what got installed."""

    name: ClassVar[str]
    registry: ClassVar[dict[str, type[Family]]] = {}

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
    def installed_packages(self, root: Path) -> list[InstalledPackage]:
        """Read the package database of ``root`` without running anything inside it."""

    @abstractmethod
    def clean(self, root: Path) -> None:
        """Remove package-manager caches and state that must not be in a cache."""


def family_for(
    template: Template, host: HostConfig, mirror_overrides: Mapping[str, str] | None = None
) -> Family:
    # Import for registration side effects.
    from vzpkg.distro import debian  # noqa: F401

    cls = Family.registry.get(template.family)
    if cls is None:
        raise VzError(
            f"{template.name}: building {template.family} templates is not supported yet",
            ExitCode.FAILURE,
        )
    return cls(template, host, mirror_overrides)
