"""The cache directory: publishing keeps the previous cache as -old, manifests round-trip, stale
build directories are swept per template, and removal takes both generations."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from vzpkg.cache.manifest import ArchiveInfo, Manifest, manifest_from_dict, read_manifest
from vzpkg.cache.store import CacheStore
from vzpkg.distro.base import Fingerprint, InstalledPackage
from vzpkg.errors import ExitCode, VzError
from vzpkg.mounts import _unescape

NAME = "debian-12-x86_64-minimal"


def make_manifest(
    name: str = NAME, digest: str = "d" * 64, created: str = "2024-05-01"
) -> Manifest:
    return Manifest(
        template=name,
        metadata_digest=digest,
        family="deb",
        arch="x86_64",
        created=f"{created}T12:00:00Z",
        source_date_epoch=1_714_564_800,
        archive=ArchiveInfo(
            file=f"{name}.tar.zst",
            sha256="a" * 64,
            size=1234,
            uncompressed_size=5678,
            members=42,
        ),
        upstream=(
            Fingerprint(
                "main",
                "http://deb.example/debian/dists/bookworm/InRelease",
                "b" * 64,
                "Sat, 10 Feb 2024 09:00:00 UTC",
                1_707_555_600,
            ),
            Fingerprint("security", "http://sec.example/InRelease", "c" * 64),
        ),
        packages=(
            InstalledPackage("base-files", "12.4+deb12u5", "amd64"),
            InstalledPackage("procps", "2:4.0.2-3", "amd64"),
        ),
        build={"tool": "mmdebstrap", "tool_version": "1.3.5"},
        timings={"bootstrap": 41.5, "pack": 3.25},
    )


def build(store: CacheStore, content: bytes) -> Path:
    """What a build leaves before publishing: an archive inside a workdir of the store."""
    workdir = store.new_workdir(NAME)
    archive = workdir / "cache.tar.zst"
    archive.write_bytes(content)
    return archive


@pytest.fixture
def store(tmp_path: Path) -> CacheStore:
    return CacheStore(tmp_path / "cache")


def test_manifest_round_trips_through_json(tmp_path: Path) -> None:
    manifest = make_manifest()
    path = tmp_path / "m.json"
    path.write_text(manifest.to_json())
    assert read_manifest(path) == manifest
    data = json.loads(path.read_text())
    assert data["format"] == 1
    assert data["packages"][1] == {"name": "procps", "version": "2:4.0.2-3", "arch": "amd64"}


def test_manifest_built_from_lists_equals_its_round_trip() -> None:
    manifest = make_manifest()
    from_lists = replace(
        manifest, upstream=list(manifest.upstream), packages=list(manifest.packages)
    )
    assert from_lists == manifest
    assert manifest_from_dict(json.loads(from_lists.to_json()), "m.json") == from_lists


def test_publish_first_cache(store: CacheStore) -> None:
    store.publish(NAME, build(store, b"first archive"), make_manifest(created="2024-01-01"))
    assert store.archive_path(NAME).read_bytes() == b"first archive"
    assert read_manifest(store.manifest_path(NAME)) == make_manifest(created="2024-01-01")
    assert not store.old_archive_path(NAME).exists()
    assert not store.old_manifest_path(NAME).exists()
    info = store.info(NAME)
    assert info is not None and info.manifest == make_manifest(created="2024-01-01")
    assert info.size == len(b"first archive")


def test_publish_keeps_the_previous_cache_as_old(store: CacheStore) -> None:
    first, second = make_manifest(created="2024-01-01"), make_manifest(created="2024-02-01")
    store.publish(NAME, build(store, b"first archive"), first)
    store.publish(NAME, build(store, b"second archive"), second)
    assert store.archive_path(NAME).read_bytes() == b"second archive"
    assert store.old_archive_path(NAME).read_bytes() == b"first archive"
    assert read_manifest(store.manifest_path(NAME)) == second
    assert read_manifest(store.old_manifest_path(NAME)) == first

    third = make_manifest(created="2024-03-01")
    store.publish(NAME, build(store, b"third archive"), third)
    assert store.old_archive_path(NAME).read_bytes() == b"second archive"
    assert read_manifest(store.old_manifest_path(NAME)) == second


def test_publish_without_a_previous_manifest_leaves_no_stale_old_manifest(
    store: CacheStore,
) -> None:
    store.publish(NAME, build(store, b"one"), make_manifest(created="2024-01-01"))
    store.publish(NAME, build(store, b"two"), make_manifest(created="2024-02-01"))
    store.manifest_path(NAME).unlink()  # e.g. deleted by hand
    store.publish(NAME, build(store, b"three"), make_manifest(created="2024-03-01"))
    assert store.old_archive_path(NAME).read_bytes() == b"two"
    assert not store.old_manifest_path(NAME).exists()  # not the manifest of "one"


def test_info_without_manifest_still_lists_the_cache(store: CacheStore) -> None:
    store.publish(NAME, build(store, b"archive"), make_manifest())
    store.manifest_path(NAME).write_text("{not json")
    info = store.info(NAME)
    assert info is not None and info.manifest is None
    assert store.info("debian-13-x86_64-minimal") is None


def test_sweep_removes_only_this_templates_stale_workdirs(
    store: CacheStore, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "shm"
    ours = [store.new_workdir(NAME), store.new_workdir(NAME, elsewhere)]
    (ours[0] / "root/etc").mkdir(parents=True)
    (ours[0] / "root/etc/hostname").write_text("x")
    other = store.new_workdir("debian-12-x86_64-default")
    longer = store.dir / f".tmp-{NAME}_extra-123-abcdefgh"
    longer.mkdir()
    not_a_workdir = store.dir / f".tmp-{NAME}-notes"
    not_a_workdir.mkdir()
    plain_file = store.dir / f".tmp-{NAME}-123-abcdefgh.partial"
    plain_file.write_text("x")
    store.publish(NAME, build(store, b"archive"), make_manifest())  # makes another workdir

    swept = store.sweep(NAME, elsewhere)

    assert set(ours) <= set(swept)
    assert not any(p.exists() for p in swept)
    assert other.is_dir() and longer.is_dir() and not_a_workdir.is_dir()
    assert plain_file.is_file()
    assert store.archive_path(NAME).read_bytes() == b"archive"
    assert store.sweep(NAME, elsewhere) == []


def test_remove_takes_current_and_old(store: CacheStore) -> None:
    store.publish(NAME, build(store, b"one"), make_manifest(created="2024-01-01"))
    store.publish(NAME, build(store, b"two"), make_manifest(created="2024-02-01"))
    other = "debian-12-x86_64-default"
    store.archive_path(other).write_bytes(b"other")
    removed = store.remove(NAME)
    assert set(removed) == {
        store.archive_path(NAME),
        store.manifest_path(NAME),
        store.old_archive_path(NAME),
        store.old_manifest_path(NAME),
    }
    assert not any(p.exists() for p in removed)
    assert not store.exists(NAME)
    assert store.exists(other)
    assert store.remove(NAME) == []


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff garbage",
        b"{not json",
        b"[1, 2, 3]",
        b'{"format": 1, "template": "x"}',
        b'{"format": 99}',
    ],
)
def test_read_manifest_refuses_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(VzError) as raised:
        read_manifest(path)
    assert raised.value.code == ExitCode.ARCHIVE
    assert str(path) in raised.value.message


def test_read_manifest_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VzError) as raised:
        read_manifest(tmp_path / "absent.json")
    assert raised.value.code == ExitCode.ARCHIVE


def test_mount_points_are_unescaped_like_the_kernel_escapes_them() -> None:
    # A UTF-8 name with a space: a mount below a build dir must still be recognised, or
    # remove_tree_safely would delete through it into the host directory mounted there.
    field = "/srv/caché\\040dir/.tmp-x-1-ab/root/proc".encode()
    assert _unescape(field) == "/srv/caché dir/.tmp-x-1-ab/root/proc"
    assert _unescape(b"/a\\011b\\134c\\012") == "/a\tb\\c\n"


def test_sweep_keeps_a_build_in_progress_of_another_configuration(
    store: CacheStore, tmp_path: Path
) -> None:
    """/dev/shm is shared by every host configuration, whose locks are their own: a workdir
    whose process lives is another's build in progress, not a leftover."""
    import subprocess

    elsewhere = tmp_path / "shm"
    elsewhere.mkdir()
    live = elsewhere / f".tmp-{NAME}-1-abcdefgh"  # pid 1 always lives
    live.mkdir()
    child = subprocess.Popen(["true"])  # kept: a dropped Popen may reap it in its __del__
    child.wait()
    dead_pid = child.pid
    dead = elsewhere / f".tmp-{NAME}-{dead_pid}-abcdefgh"
    dead.mkdir()
    assert store.sweep(NAME, elsewhere) == [dead]
    assert live.is_dir() and not dead.exists()
