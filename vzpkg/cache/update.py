"""Caches made current without a bootstrap (OpenVZ's cache update path).

A template's previous cache, or the fresh cache of the set it extends (``base = "minimal"``),
is unpacked into a build root and changed by the distribution's package manager, verified
against the template's keys as a bootstrap is: packages dropped from the set are removed
(unless something still needs them), excluded ones purged, everything upgraded when upstream
changed, packages added to the set installed. The rest of the build (hooks, cleaning, packing,
verifying, publishing) is a bootstrap's.

Only what the package lists express can be updated. Everything else of the metadata (release,
repositories, keys, hooks, environment, bootstrap options) is the template's *base*
(``base_digest``): when it changed, the cache is bootstrapped from nothing, and the report says
why.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vzpkg.cache.manifest import Manifest
from vzpkg.cache.store import CacheStore, UsableCache
from vzpkg.distro.base import Fingerprint, InstalledPackage, RootChange
from vzpkg.errors import VzError
from vzpkg.metadata.model import Template, base_digest
from vzpkg.pkgmgr.installed import printable


@dataclass(frozen=True)
class Plan:
    """Make the cache from ``start`` (``path``: "update" of its own cache, or "parent")."""

    path: str
    start: UsableCache
    change: RootChange
    reason: str


def inputs_of(template: Template) -> dict[str, Any]:
    """What the manifest records for the next update to start from."""
    return {
        "base_digest": base_digest(template),
        "packages": list(template.packages),
        "exclude": list(template.exclude),
    }


def _name(spec: str) -> str:
    return spec.partition(":")[0].partition("=")[0]


def same_upstream(manifest: Manifest, upstream: Sequence[Fingerprint]) -> bool:
    return {f.url: f.sha256 for f in manifest.upstream} == {f.url: f.sha256 for f in upstream}


# What a package name may be (Debian's and rpm's): the names an update passes to apt-get and
# dnf come from a manifest, which a fetched cache brings from elsewhere.
_PACKAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._~-]*(:[a-z0-9_-]+)?")


def _change(
    template: Template, manifest: Manifest, wanted_before: Sequence[str], upgrade: bool
) -> RootChange:
    installed = {p.name for p in manifest.packages if _PACKAGE.fullmatch(p.name)}
    listed = wanted_before if isinstance(wanted_before, list | tuple) else ()
    before = {_name(p) for p in listed if isinstance(p, str) and _PACKAGE.fullmatch(p)}
    now = {_name(p) for p in template.packages}
    return RootChange(
        upgrade=upgrade,
        install=tuple(p for p in template.packages if _name(p) not in before),
        drop=tuple(sorted(n for n in before - now if n in installed)),
        purge=tuple(sorted({_name(p) for p in template.exclude} & installed)),
    )


def plan_build(
    template: Template,
    store: CacheStore,
    upstream: Sequence[Fingerprint],
    parent_of: Callable[[Template], Template | None],
    force: bool,
    trusted_keys: str | None = None,
) -> tuple[Plan | None, str]:
    """How to make ``template``'s cache: a Plan, or None for a bootstrap; and why.
    ``trusted_keys``: the digest of TEMPLATE_INDEX_KEYS (index.keys_digest), which a cache
    fetched from an index must have been verified with to be updated."""
    if force:
        return None, "-f forces a bootstrap"
    own = _usable(store, template.name, trusted_keys)
    if isinstance(own, UsableCache):
        inputs = own.manifest.inputs
        if inputs.get("base_digest") == base_digest(template):
            upgrade = not same_upstream(own.manifest, upstream)
            change = _change(template, own.manifest, inputs.get("packages", ()), upgrade)
            what = [
                "upstream changed" if upgrade else "",
                f"{len(change.install)} package(s) added to the set" if change.install else "",
                f"{len(change.drop)} package(s) dropped from it" if change.drop else "",
                f"{len(change.purge)} package(s) it excludes" if change.purge else "",
            ]
            reason = "; ".join(w for w in what if w) or "nothing to change"
            return Plan("update", own, change, reason), reason
        why = (
            "its cache predates in-place updates"
            if not inputs
            else "its release, repositories, keys, hooks, environment or bootstrap options "
            "changed, which an update cannot express"
        )
    else:
        why = own
    parent = parent_of(template)
    if parent is None:
        return None, why
    found = _usable(store, parent.name, trusted_keys)
    if not isinstance(found, UsableCache):
        return None, f"{why}; no cache of its base set {parent.name} to start from"
    if found.manifest.inputs.get("base_digest") != base_digest(template):
        return None, (
            f"{why}; its base set {parent.name} has other repositories, keys, hooks, "
            "environment or bootstrap options"
        )
    if not same_upstream(found.manifest, upstream):
        return None, f"{why}; the cache of its base set {parent.name} is not current"
    change = _change(template, found.manifest, found.manifest.inputs.get("packages", ()), False)
    reason = f"{why}; made from the cache of {parent.name}"
    return Plan("parent", found, change, reason), reason


def _usable(store: CacheStore, name: str, trusted_keys: str | None) -> UsableCache | str:
    """A cache an update may start from, or why not. An update runs the cache's own apt-get
    and dpkg as root (chrooted): only those of a cache this host built, or fetched from an
    index signed by a key it still trusts, recorded for these very bytes (CACHE_DIR/NAME.origin,
    written before the cache is published: a crash leaves a record of other bytes)."""
    try:
        cache = store.usable(name)
    except VzError as e:
        return e.message
    origin = store.origin(name)
    if origin is None or origin.get("sha256") != cache.sha256:
        return f"nothing says where the cache of {name} came from (built here, or verified)"
    if origin.get("source") == "built":
        return cache
    if origin.get("source") == "index" and trusted_keys and origin.get("keys") == trusted_keys:
        return cache
    where = printable(str(origin.get("index"))[:200])
    return f"the cache of {name} came from {where}, not verified with the keys trusted now"


def origin_of_build(store: CacheStore, plan: Plan | None, sha256: str) -> dict[str, object]:
    """The record of a cache made here: built, or, when it was made from a cache fetched from
    an index, that cache's record (its trust is the index's, not this host's)."""
    start = store.origin(plan.start.name) if plan is not None else None
    if start is not None and start.get("source") == "index":
        return {**start, "sha256": sha256}
    return {"sha256": sha256, "source": "built"}


def changes(
    before: Sequence[InstalledPackage], after: Sequence[InstalledPackage]
) -> list[dict[str, str | None]]:
    """What changed between two package lists: name, arch, from (None: new), to (None: gone)."""
    old = {(p.name, p.arch): p.version for p in before}
    new = {(p.name, p.arch): p.version for p in after}
    return [
        {"name": name, "arch": arch, "from": old.get((name, arch)), "to": new.get((name, arch))}
        for name, arch in sorted(old.keys() | new.keys())
        if old.get((name, arch)) != new.get((name, arch))
    ]
