"""A cache round trip as root keeps everything an OS tree needs: owners, setuid/setgid/sticky
bits, file capabilities, other xattrs, hard links, absolute symlinks and mtimes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vzpkg import run
from vzpkg.cache.archive import PackResult, pack_tree, unpack_archive
from vzpkg.errors import ExitCode, VzError

pytestmark = pytest.mark.root

EPOCH = 1_700_000_000
OLD = 1_600_000_000


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create files owned by other users and set capabilities")


def make_os_tree(root: Path) -> None:
    for d in ("usr/bin", "etc", "home/user", "tmp"):
        (root / d).mkdir(parents=True)
    su = root / "usr/bin/su"
    su.write_bytes(b"\x7fELF setuid stand-in")
    su.chmod(0o4755)
    wall = root / "usr/bin/wall"
    wall.write_bytes(b"\x7fELF setgid stand-in")
    os.chown(wall, 0, 5)
    wall.chmod(0o2755)
    ping = root / "usr/bin/ping"
    ping.write_bytes(b"\x7fELF capability stand-in")
    ping.chmod(0o755)
    setcap = run.check_tool("setcap", "to give a test file a capability", package="libcap2-bin")
    run.run([setcap, "cap_net_raw+ep", ping])
    owned = root / "home/user/notes"
    owned.write_text("mine\n")
    os.chown(owned, 1234, 5678)
    os.chown(root / "home/user", 1234, 5678)
    tagged = root / "etc/tagged"
    tagged.write_text("x\n")
    os.setxattr(tagged, "user.vzpkg.test", b"some value")
    (root / "etc/one").write_text("linked\n")
    os.link(root / "etc/one", root / "usr/two")
    (root / "bin").symlink_to("/usr/bin")
    (root / "tmp").chmod(0o1777)
    os.utime(root / "etc/one", (OLD, OLD))


def pack(tmp_path: Path) -> tuple[Path, PackResult]:
    tree = tmp_path / "tree"
    make_os_tree(tree)
    dest = tmp_path / "cache.tar.zst"
    return dest, pack_tree(tree, dest, source_date_epoch=EPOCH)


def test_round_trip_keeps_ownership_modes_xattrs_and_links(tmp_path: Path) -> None:
    archive, packed = pack(tmp_path)
    tree = tmp_path / "tree"
    target = tmp_path / "target"
    target.mkdir()
    result = unpack_archive(archive, target, expected_sha256=packed.sha256)
    assert result.members == packed.members == 15

    def mode(path: str) -> int:
        return stat.S_IMODE((target / path).lstat().st_mode)

    assert mode("usr/bin/su") == 0o4755
    assert mode("usr/bin/wall") == 0o2755
    assert (target / "usr/bin/wall").lstat().st_gid == 5
    assert mode("tmp") == 0o1777
    assert list((target / "tmp").iterdir()) == []
    capability = os.getxattr(tree / "usr/bin/ping", "security.capability")
    assert os.getxattr(target / "usr/bin/ping", "security.capability") == capability
    assert os.getxattr(target / "etc/tagged", "user.vzpkg.test") == b"some value"
    for path in ("home/user", "home/user/notes"):
        st = (target / path).lstat()
        assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert (target / "usr/bin/su").lstat().st_uid == 0
    one, two = (target / "etc/one").lstat(), (target / "usr/two").lstat()
    assert one.st_ino == two.st_ino and one.st_nlink == 2
    assert os.readlink(target / "bin") == "/usr/bin"
    assert (target / "bin").is_symlink()
    assert one.st_mtime == OLD  # older than the epoch: kept
    assert (target / "etc/tagged").lstat().st_mtime == EPOCH  # newer: clamped


def test_unpack_into_non_empty_directory_fails(tmp_path: Path) -> None:
    archive, _ = pack(tmp_path)
    target = tmp_path / "target"
    target.mkdir()
    (target / "lost+found").mkdir()
    with pytest.raises(VzError, match="not empty"):
        unpack_archive(archive, target)
    assert [p.name for p in target.iterdir()] == ["lost+found"]


def test_checksum_mismatch_writes_nothing(tmp_path: Path) -> None:
    archive, packed = pack(tmp_path)
    target = tmp_path / "target"
    target.mkdir()
    wrong = packed.sha256[::-1]
    with pytest.raises(VzError) as caught:
        unpack_archive(archive, target, expected_sha256=wrong)
    assert caught.value.code == ExitCode.ARCHIVE
    assert list(target.iterdir()) == []
