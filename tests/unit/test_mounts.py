"""Whether a path is a mount point, and what is mounted there, asked of the kernel per path
(statx) and checked against mountinfo, on real mounts made in a user and mount namespace of
the test's own (no root needed; nothing is mounted on the host)."""

from __future__ import annotations

import os
import subprocess
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from vzpkg import mounts, syscalls
from vzpkg.mounts import MountTable, is_mounted, mount_on, read_mountinfo

UNSUPPORTED = 77  # the child's exit code when it cannot make its namespaces


def in_own_mount_namespace(test: Callable[[], None]) -> None:
    """Run ``test`` in a forked child that is root of a new user namespace with a new mount
    namespace (private propagation); its mounts go with it."""
    uid, gid = os.getuid(), os.getgid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            try:
                syscalls.unshare(syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWNS)
                Path("/proc/self/setgroups").write_text("deny")
                Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
                Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
                mount("--make-rprivate", "/")
            except (OSError, subprocess.CalledProcessError):
                traceback.print_exc()
                os._exit(UNSUPPORTED)
            test()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == UNSUPPORTED:
        pytest.skip("no user and mount namespace for the test (unprivileged user namespaces off?)")
    assert code == 0, "the assertions in the namespace failed (traceback above)"


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, stdin=subprocess.DEVNULL)


def points_in_mountinfo(path: Path) -> list[mounts.MountEntry]:
    return [e for e in read_mountinfo() if e.mount_point == str(path)]


def test_mount_points_bind_mounts_of_one_filesystem_stacks_and_spaces(tmp_path: Path) -> None:
    def test() -> None:
        fs = tmp_path / "fs"
        fs.mkdir()
        mount("-t", "tmpfs", "tmpfs", str(fs))
        for name in ("a", "b", "b0", "with space", "spaced target"):
            (fs / name).mkdir()
        (tmp_path / "link").symlink_to(fs / "b")
        assert is_mounted(fs) and not is_mounted(tmp_path) and not is_mounted(fs / "b")
        assert not is_mounted(tmp_path / "missing") and mount_on(tmp_path / "missing") is None
        assert mount_on(fs / "b") is None

        # A bind mount of a directory of the same filesystem: the same st_dev as its parent,
        # a mount of its own all the same.
        mount("--bind", str(fs / "a"), str(fs / "b"))
        assert os.stat(fs / "b").st_dev == os.stat(fs).st_dev
        assert is_mounted(fs / "b") and is_mounted(tmp_path / "link")
        assert not is_mounted(fs / "a") and not is_mounted(fs / "b0")  # not by prefix
        bind = mount_on(fs / "b")
        assert bind is not None and bind.fs_root == "/a" and bind.fstype == "tmpfs"
        assert bind == points_in_mountinfo(fs / "b")[-1]

        # Stacked on one point: the top one is what the path shows.
        mount("-t", "tmpfs", "-o", "size=1m", "top", str(fs / "b"))
        top = mount_on(fs / "b")
        assert len(points_in_mountinfo(fs / "b")) == 2
        assert top is not None and top.source == "top" and top.fs_root == "/"
        assert top.mount_id != bind.mount_id

        # White space in the path (escaped in mountinfo).
        mount("--bind", str(fs / "with space"), str(fs / "spaced target"))
        spaced = mount_on(fs / "spaced target")
        assert spaced is not None and spaced.mount_point == str(fs / "spaced target")
        assert spaced.fs_root == "/with space"

        # Unmounted again: the bind mount shows once more, then nothing.
        subprocess.run(["umount", str(fs / "b")], check=True)
        again = mount_on(fs / "b")
        assert again is not None and again.mount_id == bind.mount_id
        subprocess.run(["umount", str(fs / "b")], check=True)
        assert not is_mounted(fs / "b") and mount_on(fs / "b") is None

    in_own_mount_namespace(test)


def test_one_table_serves_many_paths_and_is_read_again_for_a_newer_mount(
    tmp_path: Path,
) -> None:
    def test() -> None:
        reads = 0
        read = mounts.read_mountinfo

        def counted() -> list[mounts.MountEntry]:
            nonlocal reads
            reads += 1
            return read()

        mounts.read_mountinfo = counted  # the child's own copy of the module
        points = [tmp_path / str(n) for n in range(5)]
        for point in points[:4]:
            point.mkdir()
            mount("-t", "tmpfs", f"t{point.name}", str(point))
        points[4].mkdir()
        table = MountTable()
        assert [getattr(mount_on(p, table), "source", None) for p in points] == [
            "t0", "t1", "t2", "t3", None,
        ]  # fmt: skip
        assert reads == 1
        mount("-t", "tmpfs", "t4", str(points[4]))  # after the table was read
        entry = mount_on(points[4], table)
        assert entry is not None and entry.source == "t4" and reads == 2
        assert mount_on(points[0], table) is not None and reads == 2

    in_own_mount_namespace(test)


def test_nothing_mounted_reads_no_mountinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> list[mounts.MountEntry]:
        raise AssertionError("mountinfo read")

    monkeypatch.setattr(mounts, "read_mountinfo", refuse)
    assert not is_mounted(Path("/proc/self"))
    assert is_mounted(Path("/proc"))
