"""Private areas and mounts as root, with real tar, mount and overlayfs: plain and overlay
create, mount, isolation between VPSs sharing a tree, destroy and tree removal, interrupted
creates, and how fast an overlay create is when its tree exists."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vzpkg import run
from vzpkg.cache.archive import pack_tree, unpack_archive
from vzpkg.ct.conf import private_path, root_path
from vzpkg.ct.layout import (
    TREE_MARKER,
    create_private,
    destroy_private,
    is_mounted,
    layout_of,
    mount_root,
    umount_root,
)
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig, host_config_from
from vzpkg.mounts import mounts_under, read_mountinfo

pytestmark = pytest.mark.root

EPOCH = 1_700_000_000


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount and to unpack files owned by other users")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A small cache archive: files, an owned file, a setuid file, a symlink, a 1777 dir."""
    base = tmp_path_factory.mktemp("cache")
    tree = base / "tree"
    for d in ("etc", "usr/bin", "home/user", "tmp"):
        (tree / d).mkdir(parents=True)
    (tree / "etc/hostname").write_text("template\n")
    (tree / "etc/os-release").write_text('ID="test"\n')
    su = tree / "usr/bin/su"
    su.write_bytes(b"\x7fELF setuid stand-in")
    su.chmod(0o4755)
    notes = tree / "home/user/notes"
    notes.write_text("mine\n")
    os.chown(notes, 1234, 5678)
    (tree / "bin").symlink_to("usr/bin")
    (tree / "tmp").chmod(0o1777)
    tree.chmod(0o755)
    archive = base / "test.tar.zst"
    packed = pack_tree(tree, archive, source_date_epoch=EPOCH)
    return archive, packed.sha256


@pytest.fixture
def host(tmp_path: Path) -> Iterator[HostConfig]:
    config = host_config_from(
        {
            "VE_PRIVATE": str(tmp_path / "private/$VEID"),
            "VE_ROOT": str(tmp_path / "root/$VEID"),
            "CONF_DIR": str(tmp_path / "conf"),
            "TREES_DIR": str(tmp_path / "trees"),
            "LOCKDIR": str(tmp_path / "lock"),
            "CACHE_DIR": str(tmp_path / "cache"),
        },
        "test",
    )
    yield config
    # Whatever happened, leave no mount behind (deepest first).
    for point in mounts_under(tmp_path):
        run.run(["umount", "--lazy", point], check=False)
    assert mounts_under(tmp_path) == []


def assert_template_files(root: Path) -> None:
    assert (root / "etc/hostname").read_text() == "template\n"
    assert stat.S_IMODE((root / "usr/bin/su").stat().st_mode) == 0o4755
    notes = (root / "home/user/notes").stat()
    assert (notes.st_uid, notes.st_gid) == (1234, 5678)
    assert os.readlink(root / "bin") == "usr/bin"
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE(root.stat().st_mode) == 0o755


def count_mounts(root: Path) -> int:
    return sum(entry.mount_point == str(root) for entry in read_mountinfo())


def test_plain_create_mount_umount_destroy(host: HostConfig, cache: tuple[Path, str]) -> None:
    archive, sha = cache
    private, root = private_path(host, 101), root_path(host, 101)
    create_private(host, 101, "plain", archive, sha, private)
    assert_template_files(private)
    assert sorted(os.listdir(private.parent)) == ["101"]  # no .tmp left
    assert layout_of(host, 101, private) == "plain"

    mount_root(host, 101, private, root)
    mount_root(host, 101, private, root)  # idempotent: still one mount
    assert is_mounted(root) and count_mounts(root) == 1
    assert_template_files(root)
    (root / "etc/hostname").write_text("ct101\n")
    assert (private / "etc/hostname").read_text() == "ct101\n"  # the same files

    with pytest.raises(VzError) as e:
        destroy_private(host, 101, private)
    assert "mounted" in e.value.message
    # Told the wrong root, destroy still sees the bind mount of the private area.
    with pytest.raises(VzError) as e:
        destroy_private(host, 101, private, root=root.with_name("elsewhere"))
    assert str(root) in e.value.message
    assert (private / "etc/hostname").exists()

    umount_root(101, root, private)
    umount_root(101, root, private)  # idempotent
    assert not is_mounted(root)
    assert destroy_private(host, 101, private) == ()
    assert not os.path.lexists(private)
    destroy_private(host, 101, private)  # nothing left to do: no error


def test_plain_create_into_a_non_empty_private_area_is_refused(
    host: HostConfig, cache: tuple[Path, str]
) -> None:
    archive, sha = cache
    private = private_path(host, 101)
    create_private(host, 101, "plain", archive, sha, private)
    (private / "etc/hostname").write_text("changed\n")
    before = sorted(p.name for p in private.rglob("*"))
    for kind in ("plain", "overlay"):
        with pytest.raises(VzError) as e:
            create_private(host, 101, kind, archive, sha, private)
        assert e.value.code == ExitCode.PRIVATE_EXISTS
    assert sorted(p.name for p in private.rglob("*")) == before
    assert (private / "etc/hostname").read_text() == "changed\n"
    assert sorted(os.listdir(private.parent)) == ["101"]
    assert not host.trees_dir.exists() or os.listdir(host.trees_dir) == []


def test_plain_create_checks_the_archive_sha256(host: HostConfig, cache: tuple[Path, str]) -> None:
    archive, _ = cache
    private = private_path(host, 101)
    with pytest.raises(VzError) as e:
        create_private(host, 101, "plain", archive, "0" * 64, private)
    assert e.value.code == ExitCode.ARCHIVE
    assert os.listdir(private.parent) == []


def test_overlay_vpss_share_one_read_only_tree(
    host: HostConfig, cache: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    archive, sha = cache
    p101, p102 = private_path(host, 101), private_path(host, 102)
    r101, r102 = root_path(host, 101), root_path(host, 102)

    started = time.perf_counter()
    create_private(host, 101, "overlay", archive, sha, p101)
    first = time.perf_counter() - started
    started = time.perf_counter()
    create_private(host, 102, "overlay", archive, sha, p102)
    second = time.perf_counter() - started
    with capsys.disabled():
        print(f"\noverlay create: {first * 1000:.1f} ms making the tree, "
              f"{second * 1000:.1f} ms with the tree there")  # fmt: skip
    assert second < 1.0

    tree = host.trees_dir / sha
    assert os.listdir(host.trees_dir) == [sha]  # one tree, no temps
    assert sorted(os.listdir(tree / "refs")) == ["101", "102"]
    top = tree.stat()
    assert (top.st_uid, top.st_gid, stat.S_IMODE(top.st_mode)) == (0, 0, 0o700)
    assert_template_files(tree / "root")
    for private in (p101, p102):
        assert sorted(os.listdir(private)) == [TREE_MARKER, "upper", "work"]
        assert (private / TREE_MARKER).read_text().strip() == sha
        assert layout_of(host, int(private.name), private) == "overlay"

    mount_root(host, 101, p101, r101)
    mount_root(host, 102, p102, r102, layout="overlay")
    mount_root(host, 101, p101, r101)  # idempotent
    assert count_mounts(r101) == count_mounts(r102) == 1
    assert_template_files(r101)
    assert_template_files(r102)

    # Writes in one VPS reach neither the other nor the tree.
    (r101 / "etc/new").write_text("only in 101\n")
    (r101 / "etc/hostname").write_text("ct101\n")
    (r101 / "etc/os-release").unlink()
    os.chmod(r101 / "usr/bin/su", 0o755)
    assert not (r102 / "etc/new").exists() and not (tree / "root/etc/new").exists()
    assert (r102 / "etc/hostname").read_text() == "template\n"
    assert (tree / "root/etc/hostname").read_text() == "template\n"
    assert (r102 / "etc/os-release").exists() and (tree / "root/etc/os-release").exists()
    assert stat.S_IMODE((tree / "root/usr/bin/su").stat().st_mode) == 0o4755
    assert (p101 / "upper/etc/new").read_text() == "only in 101\n"

    # Neither the tree nor a private area in use by a mount can be destroyed.
    with pytest.raises(VzError):
        destroy_private(host, 101, p101)
    umount_root(101, r101, p101)
    assert not is_mounted(r101)
    assert destroy_private(host, 101, p101) == ()
    assert not os.path.lexists(p101)
    assert os.listdir(tree / "refs") == ["102"]
    assert_template_files(r102)  # the other VPS keeps running on the tree

    # Mounted again, the VPS gets its own changes back.
    umount_root(102, r102, p102)
    mount_root(host, 102, p102, r102)
    assert (r102 / "etc/hostname").read_text() == "template\n"
    umount_root(102, r102, p102)
    assert destroy_private(host, 102, p102) == (sha,)
    assert os.listdir(host.trees_dir) == []
    assert not any(os.listdir(p.parent) for p in (p101,))


def test_concurrent_creates_make_the_tree_once(host: HostConfig, cache: tuple[Path, str]) -> None:
    archive, sha = cache
    errors: list[BaseException] = []

    def create(ctid: int) -> None:
        try:
            create_private(host, ctid, "overlay", archive, sha, private_path(host, ctid))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=create, args=(ctid,)) for ctid in (101, 102, 103)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert os.listdir(host.trees_dir) == [sha]
    assert sorted(os.listdir(host.trees_dir / sha / "refs")) == ["101", "102", "103"]
    for ctid in (101, 102, 103):
        destroy_private(host, ctid, private_path(host, ctid))
    assert os.listdir(host.trees_dir) == []


def test_destroy_finishes_what_an_interrupted_destroy_left(
    host: HostConfig, cache: tuple[Path, str]
) -> None:
    archive, sha = cache
    private = private_path(host, 101)
    create_private(host, 101, "overlay", archive, sha, private)
    run.run(["rm", "-rf", private])  # as if destroy died after removing the private area
    assert (host.trees_dir / sha / "refs/101").exists()
    assert destroy_private(host, 101, private) == (sha,)
    assert os.listdir(host.trees_dir) == []


@pytest.mark.parametrize("kind", ["plain", "overlay"])
def test_an_interrupted_create_leaves_nothing(
    host: HostConfig, cache: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    archive, sha = cache
    private = private_path(host, 101)
    unpacked: list[Path] = []

    def interrupted_unpack(archive: Path, target: Path, **options: Any) -> None:
        unpack_archive(archive, target, **options)
        unpacked.append(target)  # the files are there: midway through the create
        raise KeyboardInterrupt

    monkeypatch.setattr("vzpkg.cache.archive.unpack_archive", interrupted_unpack)
    with pytest.raises(KeyboardInterrupt):
        create_private(host, 101, kind, archive, sha, private)
    assert unpacked and not unpacked[0].exists()
    assert os.listdir(private.parent) == []  # no private area, no .tmp
    assert not host.trees_dir.exists() or os.listdir(host.trees_dir) == []

    monkeypatch.undo()
    create_private(host, 101, kind, archive, sha, private)
    assert layout_of(host, 101, private) == kind
    destroy_private(host, 101, private)


def test_an_interrupted_overlay_create_with_an_existing_tree_keeps_the_tree(
    host: HostConfig, cache: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, sha = cache
    create_private(host, 101, "overlay", archive, sha, private_path(host, 101))
    private = private_path(host, 102)

    real_rename = os.rename
    renamed: list[str] = []

    def rename(src: str | Path, dst: str | Path, **kwargs: int) -> None:
        renamed.append(os.path.basename(src))
        if os.fspath(src) == str(private.with_name("102.tmp")):
            raise KeyboardInterrupt  # all made, about to become visible
        real_rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        create_private(host, 102, "overlay", archive, sha, private)
    monkeypatch.undo()
    assert renamed == [".102.tmp", f".{TREE_MARKER}.tmp", "102.tmp"]  # ref, marker, private
    assert sorted(os.listdir(private.parent)) == ["101"]
    assert os.listdir(host.trees_dir / sha / "refs") == ["101"]
    destroy_private(host, 101, private_path(host, 101))
    assert os.listdir(host.trees_dir) == []


def test_a_stale_tmp_of_an_earlier_crash_is_replaced(
    host: HostConfig, cache: tuple[Path, str]
) -> None:
    archive, sha = cache
    private = private_path(host, 101)
    stale = private.with_name("101.tmp")
    (stale / "etc").mkdir(parents=True)
    (stale / "etc/junk").write_text("half\n")
    crashed_tree = host.trees_dir / f"{sha}.tmp-99999"
    (crashed_tree / "root").mkdir(parents=True)
    create_private(host, 101, "overlay", archive, sha, private)
    assert sorted(os.listdir(private.parent)) == ["101"]
    assert os.listdir(host.trees_dir) == [sha]
    destroy_private(host, 101, private)


def test_overlay_create_is_fast_when_the_tree_exists(
    host: HostConfig, cache: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    archive, sha = cache
    create_private(host, 100, "overlay", archive, sha, private_path(host, 100))
    times = []
    for ctid in range(101, 111):
        started = time.perf_counter()
        create_private(host, ctid, "overlay", archive, sha, private_path(host, ctid))
        times.append(time.perf_counter() - started)
    with capsys.disabled():
        print(
            f"\noverlay create with the tree there, 10 CTs: min {min(times) * 1000:.1f} ms, "
            f"median {sorted(times)[5] * 1000:.1f} ms, max {max(times) * 1000:.1f} ms"
        )
    assert max(times) < 1.0
    for ctid in range(100, 111):
        destroy_private(host, ctid, private_path(host, ctid))
    assert os.listdir(host.trees_dir) == []
