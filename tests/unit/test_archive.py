"""Cache archives: hostile tarballs are refused before anything is written; packing is
reproducible. Runs without root: benign archives use the caller's own uid/gid so that GNU tar's
--same-owner succeeds unprivileged."""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import zstandard

from vzpkg.cache import archive
from vzpkg.cache.archive import pack_tree, unpack_archive, validate_archive
from vzpkg.errors import ExitCode, VzError

Member = tuple[tarfile.TarInfo, bytes]


def entry(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "", mode: int = 0o644
) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode if kind != tarfile.DIRTYPE else 0o755
    info.uid, info.gid = os.getuid(), os.getgid()
    info.mtime = 1_600_000_000
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def tar_bytes(members: Sequence[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def zst(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw)


def write_archive(path: Path, members: Sequence[Member]) -> Path:
    path.write_bytes(zst(tar_bytes(members)))
    return path


def device(name: str, kind: bytes) -> Member:
    info, data = entry(name, kind)
    info.devmajor, info.devminor = 1, 3
    return info, data


def with_xattr(name: str, key: str) -> Member:
    info, data = entry(name, D)
    info.pax_headers = {f"SCHILY.xattr.{key}": "101"}
    return info, data


def nul_name() -> Member:
    info, data = entry("a\0b", data=b"x")
    info.pax_headers = {"path": "a\0b"}
    return info, data


S, L, D = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE

# case -> (what the error must say, the members)
HOSTILE: dict[str, tuple[str, Callable[[], list[Member]]]] = {
    "absolute": ("is absolute", lambda: [entry("/etc/evil", data=b"x")]),
    "dotdot": ("contains '..'", lambda: [entry("../x", data=b"x")]),
    "dotdot-inside": ("contains '..'", lambda: [entry("a/../../x", data=b"x")]),
    "nul-in-name": ("NUL byte", lambda: [nul_name()]),
    "symlink-absolute-then-file": ("through a symlink", lambda: [
        entry("evil", S, link="/etc"), entry("evil/passwd", data=b"root::0:0::/:/bin/sh\n")]),
    "symlink-relative-then-file": ("through a symlink", lambda: [
        entry("evil", S, link="../.."), entry("evil/x", data=b"x")]),
    # Where the symlink points does not matter: nothing may be written through one.
    "symlink-harmless-target-then-file": ("through a symlink", lambda: [
        entry("d", D), entry("d/here", S, link="."), entry("d/here/x", data=b"x")]),
    "symlink-chain": ("through a symlink", lambda: [
        entry("a", S, link="b"), entry("b", S, link="/tmp"), entry("a/sub/x", data=b"x")]),
    "symlink-then-directory": ("turn a symlink into a directory", lambda: [
        entry("evil", S, link="/etc"), entry("evil", D)]),
    "hardlink-absolute": ("is absolute", lambda: [entry("shadow", L, link="/etc/shadow")]),
    "hardlink-dotdot": ("contains '..'", lambda: [
        entry("f", data=b"x"), entry("link", L, link="../f")]),
    "hardlink-unseen": ("not an earlier regular file", lambda: [
        entry("link", L, link="later"), entry("later", data=b"x")]),
    "hardlink-to-symlink": ("not an earlier regular file", lambda: [
        entry("s", S, link="/etc/shadow"), entry("link", L, link="s")]),
    "hardlink-to-directory": ("not an earlier regular file", lambda: [
        entry("d", D), entry("link", L, link="d")]),
    "char-device": ("device node", lambda: [device("null", tarfile.CHRTYPE)]),
    "block-device": ("device node", lambda: [device("sda", tarfile.BLKTYPE)]),
    "unknown-type": ("unknown member type", lambda: [entry("volume", b"V")]),
    "file-replaces-directory": ("replace a directory", lambda: [
        entry("d", D), entry("d", data=b"x")]),
    "symlink-replaces-root": ("replace a directory", lambda: [entry(".", S, link="/")]),
    "file-below-file": ("parent that is not a directory", lambda: [
        entry("f", data=b"x"), entry("f/g", data=b"y")]),
    # trusted.* is the host's: vzpkg's ownership marks, overlayfs's own attributes.
    "trusted-xattr-on-root": ("trusted.vzpkg.ctid", lambda: [
        with_xattr(".", "trusted.vzpkg.ctid")]),
    "overlay-xattr": ("trusted.overlay.redirect", lambda: [
        with_xattr("d", "trusted.overlay.redirect")]),
}  # fmt: skip


def assert_refused(path: Path, target: Path, reason: str) -> None:
    """Both entry points refuse ``path`` for ``reason`` and ``target`` stays empty."""
    for attempt in (lambda: validate_archive(path), lambda: unpack_archive(path, target)):
        with pytest.raises(VzError, match=re.escape(reason)) as caught:
            attempt()
        assert caught.value.code == ExitCode.ARCHIVE
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_member_is_refused_and_nothing_written(tmp_path: Path, case: str) -> None:
    reason, members = HOSTILE[case]
    path = write_archive(tmp_path / "bad.tar.zst", members())
    target = tmp_path / "target"
    target.mkdir()
    assert_refused(path, target, reason)


def test_hostile_member_after_benign_ones_still_writes_nothing(tmp_path: Path) -> None:
    members = [entry("etc", tarfile.DIRTYPE), entry("etc/hosts", data=b"127.0.0.1 localhost\n")]
    path = write_archive(tmp_path / "bad.tar.zst", [*members, entry("../escape", data=b"x")])
    target = tmp_path / "target"
    target.mkdir()
    assert_refused(path, target, "'../escape' contains '..'")


def test_corrupt_zstd_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    garbage = tmp_path / "garbage.tar.zst"
    garbage.write_bytes(os.urandom(4096))
    assert_refused(garbage, target, "Unknown frame descriptor")
    good = bytearray(zst(tar_bytes([entry("f", data=os.urandom(50_000))])))
    good[len(good) // 2] ^= 0xFF
    flipped = tmp_path / "flipped.tar.zst"
    flipped.write_bytes(bytes(good))
    assert_refused(flipped, target, "checksum")


def test_empty_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    empty = tmp_path / "empty.tar.zst"
    empty.write_bytes(b"")
    assert_refused(empty, target, "empty header")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_zstd_is_refused(tmp_path: Path, fraction: float) -> None:
    whole = zst(tar_bytes([entry("f", data=os.urandom(100_000)), entry("g", data=b"y")]))
    path = tmp_path / "cut.tar.zst"
    path.write_bytes(whole[: int(len(whole) * fraction)])
    target = tmp_path / "target"
    target.mkdir()
    assert_refused(path, target, "truncated zstd stream")


def test_truncated_tar_in_complete_zstd_is_refused(tmp_path: Path) -> None:
    raw = tar_bytes([entry("f", data=b"x" * 5000), entry("g", data=b"y" * 700)])
    target = tmp_path / "target"
    target.mkdir()
    # Cut inside file data, exactly at a member boundary (no end marker), and after one
    # zero block of the end marker.
    end_of_g = 512 + 5120 + 512 + 1024
    cuts = {
        3000: "unexpected end of data",
        end_of_g: "empty header",
        end_of_g + 512: "end-of-archive marker incomplete",
    }
    for cut, reason in cuts.items():
        path = tmp_path / f"cut{cut}.tar.zst"
        path.write_bytes(zst(raw[:cut]))
        assert_refused(path, target, reason)


def test_garbled_header_is_refused(tmp_path: Path) -> None:
    raw = bytearray(tar_bytes([entry("f", data=b"x" * 600), entry("g", data=b"y")]))
    raw[512 + 1024 + 148] ^= 0x01  # checksum field of g's header
    path = tmp_path / "garbled.tar.zst"
    path.write_bytes(zst(bytes(raw)))
    target = tmp_path / "target"
    target.mkdir()
    assert_refused(path, target, "bad tar header at byte 1536")


def test_member_hidden_after_end_marker_is_refused(tmp_path: Path) -> None:
    first = tar_bytes([entry("f", data=b"x")])
    hidden = tar_bytes([entry("hidden", data=b"y")])
    path = tmp_path / "hidden.tar.zst"
    path.write_bytes(zst(first[: 512 + 512 + 512] + hidden))  # header, data, one zero block
    target = tmp_path / "target"
    target.mkdir()
    assert_refused(path, target, "data after the end-of-archive marker")


def test_trailing_garbage_after_zstd_frame_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "trailing.tar.zst"
    path.write_bytes(zst(tar_bytes([entry("f", data=b"x")])) + b"garbage")
    target = tmp_path / "target"
    target.mkdir()
    assert_refused(path, target, "Unknown frame descriptor")


def benign_members() -> list[Member]:
    return [
        entry(".", tarfile.DIRTYPE),
        entry("./usr", tarfile.DIRTYPE),
        entry("./usr/bin", tarfile.DIRTYPE),
        entry("./usr/bin/tool", data=b"#!/bin/sh\necho hi\n", mode=0o755),
        entry("./usr/bin/alias", tarfile.LNKTYPE, link="./usr/bin/tool"),
        entry("./bin", tarfile.SYMTYPE, link="/usr/bin"),
        entry("./etc/motd", data=b"hello\n"),  # parent directory implied
        entry("./run/initctl", tarfile.FIFOTYPE, mode=0o600),
        entry("./lib", tarfile.SYMTYPE, link="usr/lib"),
        entry("./lib", tarfile.SYMTYPE, link="usr/lib64"),  # a later duplicate wins
    ]


def test_benign_archive_validates_and_unpacks(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "good.tar.zst", benign_members())
    assert validate_archive(path) == 10
    target = tmp_path / "target"
    target.mkdir()
    result = unpack_archive(path, target)
    assert result.members == 10
    assert result.uncompressed_size == len(tar_bytes(benign_members()))
    tool = target / "usr/bin/tool"
    assert tool.read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o755
    assert (target / "usr/bin/alias").stat().st_ino == tool.stat().st_ino
    assert os.readlink(target / "bin") == "/usr/bin"
    assert os.readlink(target / "lib") == "usr/lib64"
    assert (target / "etc/motd").read_bytes() == b"hello\n"
    assert stat.S_ISFIFO((target / "run/initctl").lstat().st_mode)
    assert int(tool.stat().st_mtime) == 1_600_000_000


def test_multi_frame_archive_unpacks(tmp_path: Path) -> None:
    raw = tar_bytes([entry("f", data=os.urandom(30_000)), entry("g", data=b"y")])
    path = tmp_path / "frames.tar.zst"
    path.write_bytes(zst(raw[:10_000]) + zst(raw[10_000:20_000]) + zst(raw[20_000:]))
    assert validate_archive(path) == 2
    target = tmp_path / "target"
    target.mkdir()
    assert unpack_archive(path, target).uncompressed_size == len(raw)
    assert (target / "g").read_bytes() == b"y"


def test_sha256_is_checked_before_anything_is_written(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "good.tar.zst", benign_members())
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(VzError) as caught:
        unpack_archive(path, target, expected_sha256="0" * 64)
    assert caught.value.code == ExitCode.ARCHIVE
    assert list(target.iterdir()) == []
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert unpack_archive(path, target, expected_sha256=digest.upper()).members == 10


def test_unpack_needs_an_existing_empty_directory(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "good.tar.zst", benign_members())
    with pytest.raises(VzError, match="not a directory"):
        unpack_archive(path, tmp_path / "missing")
    target = tmp_path / "target"
    target.mkdir()
    (target / "old").write_text("keep me")
    with pytest.raises(VzError, match="not empty"):
        unpack_archive(path, target)
    assert [p.name for p in target.iterdir()] == ["old"]


def test_missing_archive_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(VzError, match="cannot open"):
        validate_archive(tmp_path / "nope.tar.zst")


def make_tree(root: Path) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "empty").mkdir()
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\n" + os.urandom(40_000))
    (root / "usr/bin/tool").chmod(0o755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-alias")
    (root / "bin").symlink_to("/usr/bin")
    (root / "etc/hostname").write_text("ct\n")
    (root / "etc/odd\nname").write_text("newline in name\n")
    os.mkfifo(root / "etc/fifo")


def test_pack_is_reproducible(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree)
    first = pack_tree(tree, tmp_path / "1.tar.zst", source_date_epoch=1_700_000_000)
    (tree / "etc/hostname").read_text()  # changes atime only
    second = pack_tree(tree, tmp_path / "2.tar.zst", source_date_epoch=1_700_000_000, threads=1)
    assert first == second
    assert (tmp_path / "1.tar.zst").read_bytes() == (tmp_path / "2.tar.zst").read_bytes()
    other = pack_tree(tree, tmp_path / "3.tar.zst", source_date_epoch=1_000_000_000)
    assert other.sha256 != first.sha256  # the epoch clamps mtimes, so it shows


def test_pack_result_describes_the_archive(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree)
    dest = tmp_path / "cache.tar.zst"
    seen: list[int] = []
    result = pack_tree(tree, dest, source_date_epoch=1_700_000_000, progress=seen.append)
    data = dest.read_bytes()
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.compressed_size == len(data)
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    assert result.uncompressed_size == len(raw)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        names = tar.getnames()
        assert all(name == "." or name.startswith("./") for name in names)
        assert tar.getmember("./usr/bin/tool-alias").islnk()
        assert tar.getmember("./usr/bin/tool").mtime <= 1_700_000_000
    assert result.members == len(names) == 11  # newline in a name counts once
    assert seen and seen[-1] == result.uncompressed_size
    assert validate_archive(dest) == result.members


def test_pack_then_unpack_round_trips(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree)
    dest = tmp_path / "cache.tar.zst"
    packed = pack_tree(tree, dest, source_date_epoch=1_700_000_000)
    target = tmp_path / "target"
    target.mkdir()
    result = unpack_archive(dest, target, expected_sha256=packed.sha256)
    assert result.members == packed.members
    assert result.uncompressed_size == packed.uncompressed_size
    assert (target / "usr/bin/tool").read_bytes() == (tree / "usr/bin/tool").read_bytes()
    assert (target / "usr/bin/tool").stat().st_ino == (target / "usr/bin/tool-alias").stat().st_ino
    assert os.readlink(target / "bin") == "/usr/bin"
    assert (target / "etc/odd\nname").read_text() == "newline in name\n"
    assert stat.S_ISFIFO((target / "etc/fifo").lstat().st_mode)


def test_pack_refuses_existing_dest_and_missing_root(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree)
    dest = tmp_path / "cache.tar.zst"
    dest.write_bytes(b"old")
    with pytest.raises(VzError, match="already exists"):
        pack_tree(tree, dest, source_date_epoch=0)
    assert dest.read_bytes() == b"old"
    with pytest.raises(VzError, match="not a directory"):
        pack_tree(tmp_path / "missing", tmp_path / "other.tar.zst", source_date_epoch=0)
    assert not (tmp_path / "other.tar.zst").exists()


def test_pack_removes_dest_when_tar_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "tree"
    make_tree(tree)
    real_argv = archive.pack_argv

    def broken_argv(tar: str, root: Path, *, source_date_epoch: int, index_file: Path) -> list[str]:
        argv = real_argv(tar, root, source_date_epoch=source_date_epoch, index_file=index_file)
        return [*argv, "--no-such-option"]

    monkeypatch.setattr(archive, "pack_argv", broken_argv)
    dest = tmp_path / "cache.tar.zst"
    with pytest.raises(VzError, match="tar failed"):
        pack_tree(tree, dest, source_date_epoch=0)
    assert not dest.exists()


def test_an_archive_checked_once_is_not_checked_again_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vzpkg.cache import archive as archive_module

    path = write_archive(tmp_path / "good.tar.zst", benign_members())
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    validated = tmp_path / "validated"
    checks: list[Path] = []
    real_check = archive_module._check_stream

    def counting(archive: Path, reader: object) -> int:
        checks.append(archive)
        return real_check(archive, reader)  # type: ignore[arg-type]

    monkeypatch.setattr(archive_module, "_check_stream", counting)
    for n in range(3):
        target = tmp_path / f"t{n}"
        target.mkdir()
        result = unpack_archive(path, target, expected_sha256=sha, validated=validated)
        assert result.members == 10 and (target / "etc/motd").read_bytes() == b"hello\n"
    assert len(checks) == 1  # the first time only
    os.utime(path)  # any change of the file (its ctime moves): checked in full again
    target = tmp_path / "t3"
    target.mkdir()
    unpack_archive(path, target, expected_sha256=sha, validated=validated)
    assert len(checks) == 2
    # A hostile archive is never remembered, and a record naming another sha256 is no pass.
    bad = write_archive(tmp_path / "bad.tar.zst", [entry("../x", data=b"x")])
    bad_sha = hashlib.sha256(bad.read_bytes()).hexdigest()
    target = tmp_path / "t4"
    target.mkdir()
    with pytest.raises(VzError):
        unpack_archive(bad, target, expected_sha256=bad_sha, validated=validated)
    assert not (validated / bad_sha).exists()
    (validated / bad_sha).write_bytes((validated / sha).read_bytes())  # forged: wrong file
    with pytest.raises(VzError):
        unpack_archive(bad, target, expected_sha256=bad_sha, validated=validated)
    assert list(target.iterdir()) == []
