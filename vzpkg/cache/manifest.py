"""The JSON manifest written beside every cache: its inputs, its outputs, how it was made.

The format is documented in docs/caches.md; ``format`` is bumped on incompatible changes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vzpkg.distro.base import Fingerprint, InstalledPackage
from vzpkg.errors import ExitCode, VzError
from vzpkg.fsutil import write_all

FORMAT = 1


@dataclass(frozen=True)
class ArchiveInfo:
    file: str
    sha256: str
    size: int
    uncompressed_size: int
    members: int


@dataclass(frozen=True)
class Manifest:
    template: str
    metadata_digest: str
    family: str
    arch: str
    created: str  # ISO 8601, UTC
    source_date_epoch: int
    archive: ArchiveInfo
    upstream: Sequence[Fingerprint] = ()
    packages: Sequence[InstalledPackage] = ()
    build: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # What an in-place update starts from: base_digest, packages and exclude of the metadata.
    inputs: dict[str, Any] = field(default_factory=dict)
    # What the update (or the build from a base set's cache) changed: name, arch, from, to.
    changes: Sequence[dict[str, str | None]] = ()
    format: int = FORMAT

    def __post_init__(self) -> None:
        # Tuples whatever the builder passed, so a manifest equals itself read back from JSON.
        object.__setattr__(self, "upstream", tuple(self.upstream))
        object.__setattr__(self, "packages", tuple(self.packages))
        object.__setattr__(self, "changes", tuple(self.changes))

    def to_json(self) -> str:
        data = asdict(self)
        data["upstream"] = [asdict(f) for f in self.upstream]
        data["packages"] = [asdict(p) for p in self.packages]
        data["changes"] = list(self.changes)
        return json.dumps(data, indent=1, sort_keys=True) + "\n"


def manifest_from_dict(data: dict[str, Any], source: str) -> Manifest:
    try:
        if data.get("format") != FORMAT:
            raise ValueError(f"unsupported format {data.get('format')!r}")
        return Manifest(
            template=data["template"],
            metadata_digest=data["metadata_digest"],
            family=data["family"],
            arch=data["arch"],
            created=data["created"],
            source_date_epoch=int(data["source_date_epoch"]),
            archive=ArchiveInfo(**data["archive"]),
            upstream=tuple(Fingerprint(**f) for f in data.get("upstream", ())),
            packages=tuple(InstalledPackage(**p) for p in data.get("packages", ())),
            build=dict(data.get("build", {})),
            timings=dict(data.get("timings", {})),
            inputs=dict(data.get("inputs", {})),
            changes=tuple(dict(c) for c in data.get("changes", ())),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise VzError(
            f"{source}: not a valid cache manifest ({e})",
            ExitCode.ARCHIVE,
            hint="rebuild the cache with vzpkgcache -f",
        ) from None


def read_manifest(path: Path) -> Manifest:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise VzError(
            f"{path}: no manifest", ExitCode.ARCHIVE, hint="rebuild the cache with vzpkgcache -f"
        ) from None
    except (OSError, ValueError) as e:
        raise VzError(
            f"{path}: unreadable manifest ({e})",
            ExitCode.ARCHIVE,
            hint="rebuild the cache with vzpkgcache -f",
        ) from None
    if not isinstance(data, dict):
        raise VzError(f"{path}: not a valid cache manifest", ExitCode.ARCHIVE)
    return manifest_from_dict(data, str(path))


def write_file_durably(path: Path, data: bytes) -> None:
    """Write ``path`` (which must not exist yet) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
