"""Canonical template names, as vzosname prints them: ``<os>-<version>-<arch>-<set>``."""

from __future__ import annotations

import difflib
import platform

from vzpkg.errors import ExitCode, VzError
from vzpkg.metadata.loader import Catalog
from vzpkg.metadata.model import ARCH_ALIASES


def host_arch() -> str:
    return ARCH_ALIASES.get(platform.machine(), platform.machine())


def canonical_name(name: str, catalog: Catalog, arch: str | None = None) -> str:
    """Resolve what a user typed to a template name of the catalog.

    ``debian-12`` -> ``debian-12-x86_64-default`` (host arch, the distribution's default set);
    ``debian-12-minimal``, ``debian-bookworm-amd64-minimal`` and the like are accepted too.
    """
    if name in catalog.templates:
        return name
    default_arch = ARCH_ALIASES.get(arch or host_arch(), arch or host_arch())
    parts = name.strip().lower().split("-")
    if len(parts) >= 2 and parts[0] in catalog.distributions:
        dist = catalog.distributions[parts[0]]
        version = parts[1]
        for release in catalog.releases.get(dist.name, ()):
            if version in (release.version, release.codename):
                version = release.version
                break
        rest = parts[2:]
        t_arch, t_set = default_arch, dist.default_set
        if rest and rest[0] in ARCH_ALIASES:
            t_arch = ARCH_ALIASES[rest.pop(0)]
        if rest:
            t_set = "_".join(rest) if len(rest) > 1 else rest[0]
        candidate = f"{dist.name}-{version}-{t_arch}-{t_set}"
        if candidate in catalog.templates:
            return candidate
    near = difflib.get_close_matches(name, list(catalog.templates), n=5, cutoff=0.5)
    hint = ("did you mean: " + ", ".join(near)) if near else "vzpkgls lists the known templates"
    raise VzError(f"unknown template {name!r}", ExitCode.TEMPLATE_NOT_FOUND, hint=hint)
