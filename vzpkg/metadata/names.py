"""Canonical template names, as vzosname prints them: ``<os>-<version>-<arch>-<set>``."""

from __future__ import annotations

import difflib
import platform

from vzpkg.errors import ExitCode, VzError
from vzpkg.metadata.loader import Catalog
from vzpkg.metadata.model import ARCH_ALIASES, Template

NEAR_MATCHES = 5
NEAR_CUTOFF = 0.6


def host_arch() -> str:
    return ARCH_ALIASES.get(platform.machine(), platform.machine())


def _take_arch(rest: list[str]) -> str | None:
    """Remove a leading arch from ``rest`` (aliases such as ``x86-64`` span two words)."""
    if len(rest) >= 2 and f"{rest[0]}-{rest[1]}" in ARCH_ALIASES:
        arch = ARCH_ALIASES[f"{rest[0]}-{rest[1]}"]
        del rest[:2]
        return arch
    if rest and rest[0] in ARCH_ALIASES:
        return ARCH_ALIASES[rest.pop(0)]
    return None


def _short_forms(template: Template, arch: str) -> list[str]:
    """The names a user may type for ``template`` when ``arch`` is implied."""
    forms = [template.name]
    if template.arch != arch:
        return forms
    dist, release = template.distribution, template.release
    versions = [release.version] + ([release.codename] if release.codename else [])
    for version in versions:
        forms.append(f"{dist.name}-{version}-{template.package_set.name}")
        if template.package_set.name == dist.default_set:
            forms.append(f"{dist.name}-{version}")
    return forms


def near_matches(name: str, catalog: Catalog, arch: str) -> list[str]:
    """Template names close to ``name``: ``arch`` and the default set first, then the rest."""
    typed = name.strip().lower()
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(typed)
    scored = []
    for template in catalog.templates.values():
        score = 0.0
        for form in _short_forms(template, arch):
            matcher.set_seq1(form)
            score = max(score, matcher.ratio())
        if score >= NEAR_CUTOFF:
            is_default = template.package_set.name == template.distribution.default_set
            scored.append((-round(score, 2), template.arch != arch, not is_default, template.name))
    return [entry[-1] for entry in sorted(scored)[:NEAR_MATCHES]]


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
        t_arch = _take_arch(rest) or default_arch
        t_set = "_".join(rest) if rest else dist.default_set
        candidate = f"{dist.name}-{version}-{t_arch}-{t_set}"
        if candidate in catalog.templates:
            return candidate
    near = near_matches(name, catalog, default_arch)
    hint = ("did you mean: " + ", ".join(near)) if near else "vzpkgls lists the known templates"
    raise VzError(f"unknown template {name!r}", ExitCode.TEMPLATE_NOT_FOUND, hint=hint)
