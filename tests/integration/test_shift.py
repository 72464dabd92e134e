"""vzctl set CTID --userns yes|no --save: a stopped VPS's files move to a block of host ids of
its own (or back), capabilities, setuid bits and ACLs included, resumable when cut short."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import VzHost

pytestmark = [pytest.mark.root, pytest.mark.network, pytest.mark.slow]

MINIMAL = "debian-12-x86_64-minimal"
_next = iter(range(int(time.time()) % 1000 * 7 + 40000, 10**6))
CAP_NET_RAW = 1 << 13
CAPS_V2 = struct.pack("<5I", 0x02000001, CAP_NET_RAW, 0, 0, 0)  # cap_net_raw=ep
ACL = struct.pack("<I", 2) + b"".join(
    struct.pack("<HHI", tag, perm, ident)
    for tag, perm, ident in (
        (0x01, 7, 0xFFFFFFFF),  # user::rwx
        (0x02, 5, 1000),  # user:1000:r-x
        (0x04, 5, 0xFFFFFFFF),  # group::r-x
        (0x08, 4, 100),  # group:100:r--
        (0x10, 7, 0xFFFFFFFF),  # mask::rwx
        (0x20, 0, 0xFFFFFFFF),  # other::---
    )
)


@pytest.fixture(scope="module")
def host(vzhost: VzHost) -> VzHost:
    return vzhost.with_cache(MINIMAL)


@pytest.fixture
def privileged(host: VzHost, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A stopped privileged plain VPS, with the files a shift must carry over."""
    ctid = str(next(_next))
    made = host.run(
        "vzctl", "create", ctid, "--ostemplate", MINIMAL, "--layout", "plain", "--userns", "no"
    )
    assert made.returncode == 0, made.stderr
    private = host.base / "private" / ctid
    tool = private / "usr/local/bin/tool"
    tool.write_bytes(b"#!/bin/sh\n")
    os.chmod(tool, 0o4755)
    os.setxattr(tool, "security.capability", CAPS_V2)
    os.link(tool, private / "srv/tool-link")  # one inode, two names
    os.chown(private / "srv", 33, 33)
    os.setxattr(private / "srv", "system.posix_acl_access", ACL)
    os.mkfifo(private / "srv/fifo")
    outside = tmp_path / "host-file"
    outside.write_text("the host's\n")
    os.symlink(outside, private / "srv/out")  # followed, this would change a host file
    yield ctid, private
    host.run("vzctl", "stop", "--fast", ctid)
    host.run("vzctl", "destroy", ctid)
    assert outside.stat().st_uid == 0 and outside.stat().st_gid == 0
    assert not (host.base / "conf" / f"{ctid}.shifting").exists()


def base_of(host: VzHost, ctid: str) -> int:
    listed = host.run("vzlist", "-a", "-H", "-o", "userns_base", ctid)
    return int(listed.stdout.split()[0])


def test_userns_yes_moves_everything_and_no_moves_it_back(
    host: VzHost, privileged: tuple[str, Path]
) -> None:
    ctid, private = privileged
    unsaved = host.run("vzctl", "set", ctid, "--userns", "yes")
    assert unsaved.returncode == 20 and "--save" in unsaved.stderr

    done = host.run("vzctl", "set", ctid, "--userns", "yes", "--save")
    assert done.returncode == 0, done.stderr
    base = base_of(host, ctid)
    assert base > 0 and f"host ids from {base}" in done.stderr
    assert (private.stat().st_uid, (private / "etc/shadow").stat().st_gid) == (
        base,
        base + 42,  # shadow's group
    )
    tool = private / "usr/local/bin/tool"
    assert tool.stat().st_mode & 0o7777 == 0o4755  # the chown cleared it; it is back
    caps = os.getxattr(tool, "security.capability")
    assert struct.unpack("<6I", caps)[1] == CAP_NET_RAW and struct.unpack("<6I", caps)[5] == base
    assert (private / "srv/tool-link").stat().st_ino == tool.stat().st_ino
    assert (private / "srv").stat().st_uid == base + 33
    acl = os.getxattr(private / "srv", "system.posix_acl_access")
    assert struct.unpack_from("<HHI", acl, 4 + 8)[2] == base + 1000
    assert struct.unpack_from("<HHI", acl, 4 + 24)[2] == base + 100
    assert os.lstat(private / "srv/out").st_uid == base
    assert os.lstat(private / "srv/fifo").st_uid == base

    started = host.run("vzctl", "start", ctid)
    assert started.returncode == 0, started.stderr
    seen = host.run(
        "vzctl", "exec2", ctid, "stat -c %u:%a /srv/tool-link /etc/passwd; cat /proc/1/uid_map"
    )
    assert seen.stdout.split()[:3] == ["0:4755", "0:644", "0"], seen.stdout
    assert seen.stdout.split()[3] == str(base)
    running = host.run("vzctl", "set", ctid, "--userns", "no", "--save")
    assert running.returncode == 32, running.stderr
    assert host.run("vzctl", "stop", ctid).returncode == 0

    back = host.run("vzctl", "set", ctid, "--userns", "no", "--save")
    assert back.returncode == 0, back.stderr
    assert "privileged" in back.stderr
    assert (private / "etc/shadow").stat().st_gid == 42 and tool.stat().st_uid == 0
    assert os.getxattr(tool, "security.capability") == CAPS_V2
    assert tool.stat().st_mode & 0o7777 == 0o4755
    acl = os.getxattr(private / "srv", "system.posix_acl_access")
    assert acl == ACL
    again = host.run("vzctl", "set", ctid, "--userns", "no", "--save")
    assert again.returncode == 0 and "privileged already" in again.stderr


def test_a_shift_cut_short_is_refused_at_start_and_finished_by_running_it_again(
    host: VzHost, privileged: tuple[str, Path]
) -> None:
    ctid, private = privileged
    many = private / "var/many"
    many.mkdir()
    for i in range(30000):  # enough files that the kill lands while they are moved
        (many / str(i)).touch()
    journal = host.base / "conf" / f"{ctid}.shifting"
    conf = host.base / "conf" / f"{ctid}.conf"

    def moving() -> bool:  # the plan is written, and CTID.conf names the new block
        return journal.exists() and 'LOCAL_UID="0"' not in conf.read_text()

    proc = host.popen("vzctl", "set", ctid, "--userns", "yes", "--save")
    deadline = time.monotonic() + 60
    while not moving() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert journal.exists(), "the shift ended before it could be cut short"
    base = base_of(host, ctid)
    owners = {(many / str(i)).stat().st_uid for i in range(0, 30000, 500)}
    assert owners <= {0, base}

    refused = host.run("vzctl", "start", ctid)
    assert refused.returncode == 47, refused.stderr
    assert f"vzctl set {ctid} --userns yes --save" in refused.stderr
    assert not (host.base / "root" / ctid / "etc").exists()  # nothing was mounted

    finished = host.run("vzctl", "set", ctid, "--userns", "yes", "--save")
    assert finished.returncode == 0, finished.stderr
    assert not journal.exists() and base_of(host, ctid) == base
    assert {(many / str(i)).stat().st_uid for i in range(0, 30000, 500)} == {base}
    tool = private / "usr/local/bin/tool"
    assert tool.stat().st_mode & 0o7777 == 0o4755
    assert struct.unpack("<6I", os.getxattr(tool, "security.capability"))[5] == base
    assert host.run("vzctl", "start", ctid).returncode == 0


def test_a_file_outside_the_vps_ids_stops_the_shift_before_anything_changes(
    host: VzHost, privileged: tuple[str, Path]
) -> None:
    ctid, private = privileged
    stray = private / "srv/stray"
    stray.touch()
    os.chown(stray, 70000, 0)
    proc = host.run("vzctl", "set", ctid, "--userns", "yes", "--save")
    assert proc.returncode == 47, proc.stderr
    assert str(stray) in proc.stderr and "chown" in proc.stderr
    assert private.stat().st_uid == 0 and (private / "etc/passwd").stat().st_uid == 0
    listed = host.run("vzlist", "-a", "-H", "-o", "userns", ctid)
    assert listed.stdout.split() == ["no"]
    assert not (host.base / "conf" / f"{ctid}.shifting").exists()


def test_an_overlay_vps_moves_only_its_own_files(host: VzHost) -> None:
    ctid = str(next(_next))
    made = host.run("vzctl", "create", ctid, "--ostemplate", MINIMAL, "--userns", "no")
    assert made.returncode == 0, made.stderr
    try:
        private = host.base / "private" / ctid
        (private / "upper/etc").mkdir()
        (private / "upper/etc/motd").write_text("mine\n")
        trees = [p for p in (host.base / "trees").iterdir() if p.is_dir()]
        tree_owner = {(t / "root/etc/passwd").stat().st_uid for t in trees}
        # A host directory mounted on upper/ itself is not the VPS's: refused.
        outside = host.base / f"outside-{ctid}"
        (outside / "x").mkdir(parents=True)
        subprocess.run(["mount", "--bind", str(outside), str(private / "upper")], check=True)
        try:
            refused = host.run("vzctl", "set", ctid, "--userns", "yes", "--save")
            assert refused.returncode == 47 and "mount point" in refused.stderr, refused.stderr
        finally:
            subprocess.run(["umount", str(private / "upper")], check=True)
        assert (outside / "x").stat().st_uid == 0
        done = host.run("vzctl", "set", ctid, "--userns", "yes", "--save")
        assert done.returncode == 0, done.stderr
        base = base_of(host, ctid)
        assert (private / "upper/etc/motd").stat().st_uid == base
        assert {(t / "root/etc/passwd").stat().st_uid for t in trees} == tree_owner == {0}
        assert host.run("vzctl", "start", ctid).returncode == 0
        seen = host.run("vzctl", "exec2", ctid, "stat -c %u /etc/motd /etc/passwd")
        assert seen.stdout.split() == ["0", "0"], seen.stdout + seen.stderr
    finally:
        host.run("vzctl", "stop", "--fast", ctid)
        host.run("vzctl", "destroy", ctid)


def test_a_running_vps_is_refused(host: VzHost, privileged: tuple[str, Path]) -> None:
    ctid, _ = privileged
    assert host.run("vzctl", "start", ctid).returncode == 0
    proc = host.run("vzctl", "set", ctid, "--userns", "yes", "--save")
    assert proc.returncode == 32 and "stopped" in proc.stderr


def test_a_plan_whose_config_was_never_written_is_dropped(
    host: VzHost, privileged: tuple[str, Path]
) -> None:
    """Killed between writing the plan and CTID.conf: nothing was moved; start refuses until
    the command runs again, which starts over."""
    ctid, private = privileged
    journal = host.base / "conf" / f"{ctid}.shifting"
    journal.write_text('{"from": [0, 0], "to": [65536, 65536], "modes": {}, "caps": {}}')
    assert host.run("vzctl", "start", ctid).returncode == 47
    done = host.run("vzctl", "set", ctid, "--userns", "yes", "--save")
    assert done.returncode == 0, done.stderr
    assert not journal.exists()
    assert (private / "etc/passwd").stat().st_uid == base_of(host, ctid) != 65536


def test_what_is_not_the_vpss_own_is_never_moved(
    host: VzHost, privileged: tuple[str, Path], tmp_path: Path
) -> None:
    """A bind mount of a host directory (same filesystem: the device number does not tell),
    a hard link to a host file, a tree deeper than the walk goes: refused, nothing changed."""
    ctid, private = privileged
    outside = tmp_path / "host-dir"
    outside.mkdir()
    (outside / "file").write_text("the host's\n")
    (private / "mnt/bound").mkdir()
    subprocess.run(["mount", "--bind", str(outside), str(private / "mnt/bound")], check=True)
    try:
        proc = host.run("vzctl", "set", ctid, "--userns", "yes", "--save")
        assert proc.returncode == 47, proc.stderr
        assert "mount point" in proc.stderr
    finally:
        subprocess.run(["umount", str(private / "mnt/bound")], check=True)
    assert (outside / "file").stat().st_uid == 0

    os.link(outside / "file", private / "srv/linked")
    proc = host.run("vzctl", "set", ctid, "--userns", "yes", "--save")
    assert proc.returncode == 47 and "hard links outside" in proc.stderr, proc.stderr
    assert (outside / "file").stat().st_uid == 0
    (private / "srv/linked").unlink()

    fd = os.open(private / "root", os.O_RDONLY)
    try:
        for _ in range(600):
            os.mkdir("d", dir_fd=fd)
            fd, parent = os.open("d", os.O_RDONLY, dir_fd=fd), fd
            os.close(parent)
    finally:
        os.close(fd)
    proc = host.run("vzctl", "set", ctid, "--userns", "yes", "--save")
    assert proc.returncode == 47 and "directories deep" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (private / "etc/passwd").stat().st_uid == 0
    assert not (host.base / "conf" / f"{ctid}.shifting").exists()
