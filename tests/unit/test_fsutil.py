"""File operations inside an untrusted tree never follow a symlink planted in it and never leave
it through ``..``: whatever the tree holds, nothing outside it is written or removed."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from vzpkg.fsutil import (
    empty_dir_beneath,
    glob_remove_beneath,
    open_dir_beneath,
    remove_beneath,
    write_file_beneath,
)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory the tree's symlinks point at; it must come out untouched."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "passwd").write_text("root:x:0:0\n")
    (path / "sub").mkdir()
    (path / "sub/keep").write_text("keep\n")
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    path = tmp_path / "tree"
    path.mkdir()
    return path


def snapshot(path: Path) -> dict[str, bytes | None]:
    """Every entry below ``path`` with its content (None for directories)."""
    return {
        str(p.relative_to(path)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(path.rglob("*"))
    }


def test_write_creates_parents_and_sets_the_mode(tree: Path) -> None:
    write_file_beneath(tree, "etc/ssh/sshd_config.d/x.conf", b"data", 0o600)
    path = tree / "etc/ssh/sshd_config.d/x.conf"
    assert path.read_bytes() == b"data"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(path.parent)) == ["x.conf"]  # no temporary file left
    write_file_beneath(tree, "/etc/ssh/sshd_config.d/x.conf", b"new")  # leading / is the tree's
    assert path.read_bytes() == b"new"


def test_write_through_a_symlinked_directory_is_refused(tree: Path, outside: Path) -> None:
    before = snapshot(outside)
    (tree / "etc").symlink_to(outside)
    with pytest.raises(OSError) as raised:
        write_file_beneath(tree, "etc/hostname", b"pwned\n")
    assert raised.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert "symlink is never followed" in str(raised.value)
    with pytest.raises(OSError):
        write_file_beneath(tree, "etc/sub/new", b"pwned\n")
    assert snapshot(outside) == before


def test_write_through_an_absolute_symlink_deeper_down_is_refused(
    tree: Path, outside: Path
) -> None:
    before = snapshot(outside)
    (tree / "var/lib").mkdir(parents=True)
    (tree / "var/lib/dbus").symlink_to(outside / "sub")
    with pytest.raises(OSError):
        write_file_beneath(tree, "var/lib/dbus/machine-id", b"pwned\n")
    assert snapshot(outside) == before


def test_write_replaces_a_symlink_at_the_final_component(tree: Path, outside: Path) -> None:
    before = snapshot(outside)
    (tree / "etc").mkdir()
    (tree / "etc/passwd").symlink_to(outside / "passwd")
    write_file_beneath(tree, "etc/passwd", b"tree's own\n")
    assert not (tree / "etc/passwd").is_symlink()
    assert (tree / "etc/passwd").read_bytes() == b"tree's own\n"
    assert snapshot(outside) == before


def test_a_symlinked_root_is_refused(tmp_path: Path, outside: Path) -> None:
    before = snapshot(outside)
    root = tmp_path / "root-link"
    root.symlink_to(outside)
    with pytest.raises(OSError):
        write_file_beneath(root, "hostname", b"pwned\n")
    assert snapshot(outside) == before


def test_remove_does_not_follow_symlinks(tree: Path, outside: Path) -> None:
    before = snapshot(outside)
    (tree / "etc").symlink_to(outside)
    remove_beneath(tree, "etc/passwd")  # through the link: nothing of the tree's to remove
    remove_beneath(tree, "etc/sub")
    assert snapshot(outside) == before
    (tree / "data").symlink_to(outside / "sub")
    remove_beneath(tree, "data")  # the link itself goes, not what it points at
    assert not (tree / "data").is_symlink()
    assert snapshot(outside) == before


def test_remove_takes_whole_directories_without_following_links_inside(
    tree: Path, outside: Path
) -> None:
    before = snapshot(outside)
    (tree / "var/log/apt").mkdir(parents=True)
    (tree / "var/log/apt/history.log").write_text("log")
    (tree / "var/log/apt/escape").symlink_to(outside)
    remove_beneath(tree, "var/log/apt")
    assert os.listdir(tree / "var/log") == []
    assert snapshot(outside) == before
    remove_beneath(tree, "var/log/absent")  # missing: not an error


def test_empty_dir_keeps_listed_names_and_never_follows_links(tree: Path, outside: Path) -> None:
    before = snapshot(outside)
    lists = tree / "var/lib/apt/lists"
    (lists / "partial").mkdir(parents=True)
    (lists / "lock").write_text("")
    (lists / "deb.debian.org_InRelease").write_text("x")
    (lists / "sub").mkdir()
    (lists / "sub/file").write_text("x")
    (lists / "to-outside").symlink_to(outside)
    empty_dir_beneath(tree, "var/lib/apt/lists", keep=("partial", "lock"))
    assert sorted(os.listdir(lists)) == ["lock", "partial"]
    assert snapshot(outside) == before


def test_empty_dir_through_a_symlink_is_a_no_op(tree: Path, outside: Path) -> None:
    before = snapshot(outside)
    (tree / "tmp").symlink_to(outside)
    empty_dir_beneath(tree, "tmp")
    (tree / "var").symlink_to(outside)
    empty_dir_beneath(tree, "var/sub")
    glob_remove_beneath(tree, "var", "pass")
    assert snapshot(outside) == before
    assert (tree / "tmp").is_symlink()


def test_glob_remove_takes_matching_names_only(tree: Path) -> None:
    ssh = tree / "etc/ssh"
    ssh.mkdir(parents=True)
    for name in ("ssh_host_rsa_key", "ssh_host_rsa_key.pub", "sshd_config"):
        (ssh / name).write_text(name)
    glob_remove_beneath(tree, "etc/ssh", "ssh_host_")
    assert os.listdir(ssh) == ["sshd_config"]


@pytest.mark.parametrize("rel", ["..", "../escape", "etc/..", "etc/../../escape", "a/../b"])
def test_dotdot_is_rejected_everywhere(tree: Path, tmp_path: Path, rel: str) -> None:
    (tree / "etc").mkdir()
    (tree / "a").mkdir()
    sibling = tmp_path / "sibling"
    sibling.write_text("must survive\n")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError):
        write_file_beneath(tree, rel, b"x")
    with pytest.raises(ValueError):
        remove_beneath(tree, rel)
    with pytest.raises(ValueError):
        empty_dir_beneath(tree, rel)
    with pytest.raises(ValueError), open_dir_beneath(tree, rel):
        pass
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("rel", ["", ".", "/"])
def test_the_root_itself_is_not_a_file_to_write_or_remove(tree: Path, rel: str) -> None:
    (tree / "etc").mkdir()
    with pytest.raises(ValueError):
        write_file_beneath(tree, rel, b"x")
    with pytest.raises(ValueError):
        remove_beneath(tree, rel)
    assert (tree / "etc").is_dir()
