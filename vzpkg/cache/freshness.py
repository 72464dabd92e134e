"""Is a published cache still what its metadata and upstream would build today?"""

from __future__ import annotations

from collections.abc import Sequence

from vzpkg.cache.manifest import Manifest
from vzpkg.distro.base import Fingerprint
from vzpkg.metadata.model import Template


def staleness(
    template: Template, manifest: Manifest | None, upstream: Sequence[Fingerprint]
) -> str | None:
    """Why the cache must be rebuilt, or None when it is up to date.

    Costs nothing beyond the fingerprints the caller fetched (one small request per
    repository), which is what makes a nightly refresh of unchanged templates cheap.
    """
    if manifest is None:
        return "the cache has no readable manifest"
    if manifest.metadata_digest != template.digest:
        return "its metadata changed"
    before = {f.url: f.sha256 for f in manifest.upstream}
    now = {f.url: f.sha256 for f in upstream}
    changed = sorted(f.repository for f in upstream if before.get(f.url) != f.sha256)
    if changed:
        return "upstream changed: " + ", ".join(changed)
    if set(before) != set(now):
        return "its repositories changed"
    return None
