"""The cache directory: atomic publish with a kept ``-old``, removal, sweeping of stale temps.

Layout of CACHE_DIR::

    <name>.tar.zst, <name>.json          the published cache and its manifest
    <name>-old.tar.zst, <name>-old.json  the previous one, kept when a new one is published
    <name>.origin                        the template index the cache was fetched from
    dated/<name>/<stamp>.tar.zst, .json  dated copies (CACHE_KEEP_DATED: how many are kept)
    .tmp-<name>-<pid>-<rand>/            a build in progress (swept by the next build)

A cache is published by renames inside CACHE_DIR only after the new archive was verified, so a
reader sees either the previous cache or the new one, never a partial file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vzpkg.cache.manifest import Manifest, read_manifest, write_file_durably
from vzpkg.errors import ExitCode, VzError
from vzpkg.fsutil import atomic_write
from vzpkg.fsutil import fsync_dir as fsync_dir  # also used from here
from vzpkg.fsutil import remove_tree_safely as remove_tree_safely

TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class CachedInfo:
    name: str
    archive: Path
    manifest: Manifest | None  # None when the manifest is missing or unreadable
    size: int
    mtime: float
    problem: str | None = None  # why the cache cannot be used (vzctl create refuses it)

    @property
    def usable(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class UsableCache:
    """A cache ``vzctl create`` can use: its archive matches its manifest."""

    name: str
    archive: Path
    sha256: str
    manifest: Manifest


class CacheStore:
    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir

    def archive_path(self, name: str) -> Path:
        return self.dir / f"{name}.tar.zst"

    def manifest_path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def old_archive_path(self, name: str) -> Path:
        return self.dir / f"{name}-old.tar.zst"

    def old_manifest_path(self, name: str) -> Path:
        return self.dir / f"{name}-old.json"

    def exists(self, name: str) -> bool:
        return self.archive_path(name).is_file()

    def info(self, name: str) -> CachedInfo | None:
        archive = self.archive_path(name)
        try:
            st = archive.stat()
        except FileNotFoundError:
            return None
        problem = None
        try:
            manifest: Manifest | None = read_manifest(self.manifest_path(name))
        except VzError as e:
            manifest, problem = None, e.message
        if manifest is not None and manifest.archive.size != st.st_size:
            problem = f"{archive} is {st.st_size} bytes, its manifest says {manifest.archive.size}"
        return CachedInfo(name, archive, manifest, st.st_size, st.st_mtime, problem)

    def usable(self, name: str) -> UsableCache:
        """The cache ``name`` if it can be used (the same test ``vzpkgls -c`` lists by);
        VzError saying why not, and what to do, otherwise."""
        info = self.info(name)
        if info is None:
            raise VzError(
                f"no cache for OS template {name}",
                ExitCode.TEMPLATE_NOT_FOUND,
                hint=f"vzpkgcache {name}",
            )
        if info.manifest is None or info.problem is not None:
            raise VzError(
                f"the cache of {name} cannot be used: {info.problem}",
                ExitCode.ARCHIVE,
                hint=f"rebuild it: vzpkgcache -f {name}",
            )
        return UsableCache(name, info.archive, info.manifest.archive.sha256, info.manifest)

    def new_workdir(self, name: str, parent: Path | None = None) -> Path:
        """A private directory for one build, in the cache directory or in ``parent``."""
        where = parent or self.dir
        where.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-{os.getpid()}-", dir=where))
        path.chmod(0o755)  # apt's sandbox user must be able to reach the new root inside
        return path

    def sweep(self, name: str, *elsewhere: Path) -> list[Path]:
        """Remove what interrupted builds of ``name`` left. The caller holds its lock, which
        is its host configuration's: a directory shared by several configurations (/dev/shm)
        may hold another one's build in progress, whose process (the pid in the name) lives."""
        # Exactly what new_workdir makes: a plain prefix match could take another name's dirs.
        pattern = re.compile(rf"{re.escape(TMP_PREFIX + name)}-([0-9]+)-[a-z0-9_]+")
        swept = []
        for where in (self.dir, *elsewhere):
            if not where.is_dir():
                continue
            for path in sorted(where.iterdir()):
                found = pattern.fullmatch(path.name)
                if found is None or not path.is_dir() or path.is_symlink():
                    continue
                if int(found[1]) != os.getpid() and _alive(int(found[1])):
                    continue
                remove_tree_safely(path)
                swept.append(path)
        return swept

    def origin_path(self, name: str) -> Path:
        return self.dir / f"{name}.origin"

    def origin(self, name: str) -> dict[str, object] | None:
        """Where the cache came from when it was fetched from a template index (None: built
        here)."""
        try:
            data = json.loads(self.origin_path(name).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"index": "?", "signed": False}  # unreadable: the least trusted
        return data if isinstance(data, dict) else {"index": "?", "signed": False}

    def set_origin(self, name: str, origin: dict[str, object] | None) -> None:
        if origin is None:
            with contextlib.suppress(FileNotFoundError):
                self.origin_path(name).unlink()
        else:
            atomic_write(self.origin_path(name), json.dumps(origin).encode(), 0o644)

    def dated_dir(self, name: str) -> Path:
        return self.dir / "dated" / name

    def dated(self, name: str) -> list[Path]:
        """The dated copies of ``name``'s cache, oldest first."""
        where = self.dated_dir(name)
        return sorted(where.glob("*.tar.zst")) if where.is_dir() else []

    def keep_dated(self, name: str, manifest: Manifest, keep: int) -> list[Path]:
        """A dated copy of the cache just published (hard links: no space until it is
        replaced) when ``keep`` > 0, and no more than ``keep`` of them; what was pruned."""
        if keep > 0:
            where = self.dated_dir(name)
            where.mkdir(parents=True, exist_ok=True)
            stamp = re.sub(r"[^0-9T]", "", manifest.created.partition("+")[0]) + "Z"
            for source, dest in (
                (self.archive_path(name), where / f"{stamp}.tar.zst"),
                (self.manifest_path(name), where / f"{stamp}.json"),
            ):
                with contextlib.suppress(FileExistsError):
                    os.link(source, dest)
        return self.prune_dated(name, keep)

    def prune_dated(self, name: str, keep: int) -> list[Path]:
        """Remove all but the newest ``keep`` dated copies of ``name``; what was removed."""
        copies = self.dated(name)
        pruned = []
        for old in copies[: max(0, len(copies) - keep)]:
            for path in (old, old.with_name(old.name.removesuffix(".tar.zst") + ".json")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    pruned.append(path)
        if pruned:
            fsync_dir(self.dated_dir(name))
        if keep == 0:
            with contextlib.suppress(OSError):  # gone, or not empty
                self.dated_dir(name).rmdir()
        return pruned

    def publish(self, name: str, new_archive: Path, manifest: Manifest) -> None:
        """Make ``new_archive`` (inside a workdir of this store) the cache ``name``.

        The current cache, if any, becomes ``-old`` first through hard links, so at every
        moment a complete cache exists under the current name.
        """
        workdir = new_archive.parent
        new_manifest = workdir / "manifest.json"
        write_file_durably(new_manifest, manifest.to_json().encode())
        current, current_manifest = self.archive_path(name), self.manifest_path(name)
        if current.exists():
            old_link, old_manifest = workdir / "old.tar.zst", workdir / "old.json"
            os.link(current, old_link)
            if current_manifest.is_file() and not current_manifest.is_symlink():
                shutil.copyfile(current_manifest, old_manifest)
                os.replace(old_manifest, self.old_manifest_path(name))
            else:
                with contextlib.suppress(FileNotFoundError):
                    self.old_manifest_path(name).unlink()
            os.replace(old_link, self.old_archive_path(name))
        os.replace(new_archive, current)
        os.replace(new_manifest, current_manifest)
        fsync_dir(self.dir)

    def remove(self, name: str) -> list[Path]:
        removed = self.prune_dated(name, 0)
        for path in (
            self.archive_path(name),
            self.manifest_path(name),
            self.origin_path(name),
            self.old_archive_path(name),
            self.old_manifest_path(name),
        ):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
        if removed:
            fsync_dir(self.dir)
        return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
