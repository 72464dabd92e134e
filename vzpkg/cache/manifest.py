"""The JSON manifest written beside every cache: its inputs, its outputs, how it was made.

The format is documented in docs/caches.md; ``format`` is bumped on incompatible changes.
"""

from __future__ import annotations

import datetime
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


MAX_EPOCH = 1 << 33  # seconds: the year 2242; a bigger source_date_epoch is not a date


def _checked(data: dict[str, Any]) -> None:
    """Every field vzpkg reads, of the type it must have: a manifest may come from a template
    index, and its values reach comparisons, dates and package managers' command lines."""
    for key in ("template", "metadata_digest", "family", "arch", "created"):
        if not isinstance(data[key], str):
            raise ValueError(f"{key} is not a string")
    datetime.datetime.fromisoformat(data["created"])
    epoch = data["source_date_epoch"]
    if type(epoch) is not int or not 0 <= epoch < MAX_EPOCH:
        raise ValueError(f"source_date_epoch {str(epoch)[:30]} is not a date")
    archive = data["archive"]
    if not isinstance(archive, dict) or not all(
        type(archive.get(k)) is int for k in ("size", "uncompressed_size", "members")
    ) or not isinstance(archive.get("sha256"), str):  # fmt: skip
        raise ValueError("archive is not what it must be")
    for group, fields in (("upstream", ("repository", "url", "sha256")),
                          ("packages", ("name", "version", "arch"))):  # fmt: skip
        items = data.get(group, [])
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and all(isinstance(i.get(f), str) for f in fields) for i in items
        ):
            raise ValueError(f"{group} is not a list of records of strings")
    for f in data.get("upstream", []):
        if f.get("epoch") is not None and (type(f["epoch"]) is not int or f["epoch"] >= MAX_EPOCH):
            raise ValueError("an upstream epoch is not a date")
    for key in ("inputs", "build", "timings"):
        if not isinstance(data.get(key, {}), dict):
            raise ValueError(f"{key} is not an object")
    if not isinstance(data.get("changes", []), list):
        raise ValueError("changes is not a list")


def manifest_from_dict(data: dict[str, Any], source: str) -> Manifest:
    try:
        if data.get("format") != FORMAT:
            raise ValueError(f"unsupported format {data.get('format')!r}")
        _checked(data)
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
    except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as e:
        raise VzError(
            f"{source}: not a valid cache manifest ({str(e)[:200]})",
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
    except (OSError, ValueError, RecursionError) as e:
        raise VzError(
            f"{path}: unreadable manifest ({str(e)[:200]})",
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
