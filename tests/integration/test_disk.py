"""Disk space (issue 11): --diskspace and --diskinodes, a VPS's files on a loop-mounted ext4
disk of their own, tried from inside the VPS: writes past the limit fail with ENOSPC, nothing
lands outside, the limit moves live, and no mount or loop device outlives the VPS."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import VzHost, ctid_base
from tests.integration.test_network import conf_of, vzctl

pytestmark = [pytest.mark.root, pytest.mark.slow]

MINIMAL = "debian-12-x86_64-minimal"
M = 1 << 20
_next = iter(range(ctid_base(7800), 10**8))


@pytest.fixture(scope="module")
def host(vzhost: VzHost) -> VzHost:
    return vzhost.with_cache(MINIMAL)


@pytest.fixture
def cts(host: VzHost) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for ctid in made:
        host.run("vzctl", "stop", "--fast", ctid)
        host.run("vzctl", "destroy", ctid)
        assert loops_of(host.base / "private" / ctid) == []


def new_ct(cts: list[str]) -> str:
    cts.append(str(next(_next)))
    return cts[-1]


def loops_of(private: Path) -> list[str]:
    """Loop devices whose backing file is in ``private`` (or what a destroy renamed it to)."""
    proc = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    return [line for line in proc.stdout.splitlines() if str(private) in line]


def mounts_in(path: Path) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    return [line for line in text.splitlines() if str(path) in line]


def sh(host: VzHost, ctid: str, script: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """``script`` run by the VPS's own shell (exec2: argv as given, no joining)."""
    return vzctl(host, "exec2", ctid, script, code=code)


def size_of(host: VzHost, ctid: str, path: str) -> int:
    return int(sh(host, ctid, f"stat -c %s {path}").stdout)


def running_on_a_disk(host: VzHost, cts: list[str], size: str) -> tuple[str, Path]:
    """A new VPS with a disk of ``size``, started; its CTID and private area."""
    ctid = new_ct(cts)
    vzctl(host, "create", ctid, "--ostemplate", MINIMAL, "--diskspace", size)
    vzctl(host, "start", ctid)
    return ctid, host.base / "private" / ctid


def saved_disk(host: VzHost, ctid: str) -> list[str]:
    """The DISKSPACE lines of CTID.conf (the sample's comment aside)."""
    return re.findall(r"^DISKSPACE=.*$", conf_of(host, ctid).read_text(), re.MULTILINE)


def row(host: VzHost, ctid: str) -> dict[str, dict[str, int]]:
    disk: dict[str, dict[str, int]] = json.loads(host.run("vzlist", "-j", ctid).stdout)[0]["disk"]
    return disk


def test_writes_past_diskspace_fail_inside_and_a_live_raise_lets_them_through(
    host: VzHost, cts: list[str]
) -> None:
    ctid = new_ct(cts)
    vzctl(host, "create", ctid, "--ostemplate", MINIMAL, "--diskspace", "200M")
    assert 'DISKSPACE="200M:200M"' in conf_of(host, ctid).read_text()
    private = host.base / "private" / ctid
    vzctl(host, "start", ctid)
    free_before = os.statvfs(host.base).f_bavail * os.statvfs(host.base).f_frsize
    # Filling the disk from inside: ENOSPC at the limit.
    fill = sh(host, ctid, "dd if=/dev/zero of=/fill bs=1M count=400 2>&1", code=1)
    assert "No space left on device" in fill.stdout
    written = size_of(host, ctid, "/fill")
    assert 150 * M <= written <= 200 * M, written
    # Nothing of it outside the VPS's disk: the host holds it only in the image, sparse.
    assert sorted(os.listdir(private)) == [".vzpkg-tree", "fs", "root.hdd"]
    image = os.stat(private / "root.hdd")
    assert image.st_blocks * 512 <= 260 * M, image.st_blocks
    free_after = os.statvfs(host.base).f_bavail * os.statvfs(host.base).f_frsize
    assert free_before - free_after <= 280 * M and free_after > 0
    assert not any((host.base / "trees").rglob("fill"))
    # Where admins look: in KiB, as OpenVZ's vzlist.
    disk = row(host, ctid)["diskspace"]
    assert disk["soft"] == disk["hard"] == 200 * 1024 and disk["held"] * 1024 >= written
    table = host.run("vzlist", "-H", "-o", "ctid,diskspace,diskspace.s,diskspace.h", ctid)
    assert table.stdout.split() == [ctid, str(disk["held"]), "204800", "204800"]
    use = json.loads(vzctl(host, "status", ctid, "--json").stdout)["disk"]
    assert use["limit"] == 200 * M and use["used"] >= written and use["inodes_used"] > 0
    # Raised on the running VPS: the next write goes through.
    vzctl(host, "set", ctid, "--diskspace", "300M", "--save")
    sh(host, ctid, "dd if=/dev/zero of=/more bs=1M count=80 2>&1")
    assert size_of(host, ctid, "/more") == 80 * M
    assert 'DISKSPACE="300M:300M"' in conf_of(host, ctid).read_text()
    # Below what the files take: refused, nothing changes.
    low = vzctl(host, "set", ctid, "--diskspace", "100M", "--save", code=55)
    assert "too small" in low.stderr and "remove files" in low.stderr
    assert 'DISKSPACE="300M:300M"' in conf_of(host, ctid).read_text()
    # Lowered live once the files are gone; it holds after a restart.
    sh(host, ctid, "rm /fill /more")
    vzctl(host, "set", ctid, "--diskspace", "100M", "--save")
    vzctl(host, "stop", ctid)
    assert loops_of(private) == [] and mounts_in(private) == []
    vzctl(host, "start", ctid)
    over = sh(host, ctid, "dd if=/dev/zero of=/fill bs=1M count=150 2>&1", code=1)
    assert "No space left on device" in over.stdout
    assert size_of(host, ctid, "/fill") <= 100 * M
    # Host root's own writes into the VPS count too (the limit is the filesystem's).
    with pytest.raises(OSError) as caught:
        (private / "fs" / "upper" / "by-host").write_bytes(b"x" * (8 * M))
    assert caught.value.errno == 28


def test_a_plain_vps_on_a_disk_and_one_moved_onto_a_disk(host: VzHost, cts: list[str]) -> None:
    made = new_ct(cts)
    vzctl(host, "create", made, "--ostemplate", MINIMAL, "--layout", "plain",
          "--diskspace", "600M", "--diskinodes", "50000")  # fmt: skip
    vzctl(host, "start", made)
    df = sh(host, made, "df -k / | tail -1").stdout.split()
    assert int(df[2]) + int(df[3]) <= 600 * 1024  # Used + Avail: the limit
    assert row(host, made)["diskinodes"]["hard"] == 50000
    assert sh(host, made, "stat -c %u:%g /etc/passwd").stdout.strip() == "0:0"
    # A VPS made without a disk moves onto one when stopped, its files as they were.
    moved = new_ct(cts)
    vzctl(host, "create", moved, "--ostemplate", MINIMAL, "--layout", "plain")
    vzctl(host, "start", moved)
    sh(host, moved, "echo kept > /root/marker; ln -s /etc/passwd /root/link; mkfifo /root/p")
    refused = vzctl(host, "set", moved, "--diskspace", "1G", "--save", code=41)
    assert "stopped" in refused.stderr and not saved_disk(host, moved)
    vzctl(host, "stop", moved)
    vzctl(host, "set", moved, "--diskspace", "1G", "--save")
    private = host.base / "private" / moved
    assert sorted(os.listdir(private)) == ["fs", "root.hdd"]
    assert not (host.base / "private" / f"{moved}.tmp").exists()
    vzctl(host, "start", moved)
    assert sh(host, moved, "cat /root/marker").stdout == "kept\n"
    assert sh(host, moved, "readlink /root/link; test -p /root/p && echo fifo").stdout == (
        "/etc/passwd\nfifo\n"
    )
    assert sh(host, moved, "stat -c %u /root/marker").stdout.strip() == "0"
    assert row(host, moved)["diskspace"]["soft"] == 1 << 20


def test_a_template_that_does_not_fit_leaves_nothing(host: VzHost, cts: list[str]) -> None:
    ctid = new_ct(cts)
    small = vzctl(host, "create", ctid, "--ostemplate", MINIMAL, "--layout", "plain",
                  "--diskspace", "100M", code=46)  # fmt: skip
    assert "do not fit" in small.stderr and "--diskspace" in small.stderr
    assert not conf_of(host, ctid).exists()
    assert not [p for p in (host.base / "private").iterdir() if p.name.startswith(ctid)]
    assert loops_of(host.base / "private" / ctid) == []


def test_bad_disk_values_change_nothing(host: VzHost, cts: list[str]) -> None:
    ctid = new_ct(cts)
    vzctl(host, "create", ctid, "--ostemplate", MINIMAL, "--diskspace", "200M")
    before = conf_of(host, ctid).read_text()
    for args, code, word in (
        (("--diskspace", "12Q", "--save"), 21, "--diskspace"),
        (("--diskspace", "10G:9G", "--save"), 21, "hard limit"),
        (("--diskspace", "16M", "--save"), 21, "32M"),
        (("--diskinodes", "1.5", "--save"), 21, "--diskinodes"),
        (("--diskspace", "300M"), 20, "--save"),
        (("--diskinodes", "90000", "--save"), 21, "fixed when it was made"),
    ):
        proc = vzctl(host, "set", ctid, *args, code=code)
        assert word in proc.stderr, proc.stderr
        assert conf_of(host, ctid).read_text() == before
    bad = vzctl(host, "create", new_ct(cts), "--ostemplate", MINIMAL, "--diskspace", "x", code=21)
    assert "--diskspace" in bad.stderr
    # A saved value that cannot apply: the start refuses, naming it, and mounts nothing.
    plain = new_ct(cts)
    vzctl(host, "create", plain, "--ostemplate", MINIMAL)
    with conf_of(host, plain).open("a") as f:
        f.write('DISKSPACE="1G:1G"\n')
    refused = vzctl(host, "start", plain, code=10)
    assert "DISKSPACE" in refused.stderr and "--diskspace" in refused.stderr
    assert mounts_in(host.base / "root" / plain) == []
    text = conf_of(host, ctid).read_text().replace('DISKSPACE="200M:200M"', 'DISKSPACE="2Q"')
    conf_of(host, ctid).write_text(text)
    assert "DISKSPACE" in vzctl(host, "start", ctid, code=10).stderr
    assert loops_of(host.base / "private" / ctid) == []


def test_the_vps_cannot_lift_its_limit_and_no_loop_outlives_it(
    host: VzHost, cts: list[str]
) -> None:
    ctid, private = running_on_a_disk(host, cts, "100M")
    (device,) = [line.split(":")[0] for line in loops_of(private)]
    knob = f"/sys/fs/ext4/{os.path.basename(device)}/reserved_clusters"
    reserve = Path(knob).read_text()
    # From inside: the knob, the device, the image are out of reach.
    sh(host, ctid, f"echo 0 > {knob}; ls {device}; ls /root.hdd", code=2)
    assert Path(knob).read_text() == reserve
    sh(host, ctid, "fallocate -l 200M /big 2>&1", code=1)
    # kill -9 of init: status, start and stop clean up after it.
    state = host.base / "run" / "runc" / f"vz{ctid}" / "state.json"
    os.kill(json.loads(state.read_text())["init_process_pid"], signal.SIGKILL)
    time.sleep(0.3)
    vzctl(host, "stop", ctid, code=0)
    assert loops_of(private) == [] and mounts_in(private) == []
    # A mounted, never started VPS is destroyed whole.
    vzctl(host, "mount", ctid)
    assert len(loops_of(private)) == 1
    assert host.run("vzlist", "-H", "-o", "status", ctid).stdout.strip() == "mounted"
    vzctl(host, "destroy", ctid)
    assert loops_of(private) == [] and not private.exists() and mounts_in(private) == []


def test_a_vps_whose_disk_is_full_still_stops_and_starts(host: VzHost, cts: list[str]) -> None:
    ctid = new_ct(cts)
    vzctl(host, "create", ctid, "--ostemplate", MINIMAL, "--layout", "plain",
          "--diskspace", "400M")  # fmt: skip
    vzctl(host, "start", ctid)
    sh(host, ctid, "dd if=/dev/zero of=/full bs=1M count=1000 2>/dev/null", code=1)
    sh(host, ctid, "dd if=/dev/zero of=/rest bs=4k 2>/dev/null", code=1)  # to the last block
    assert int(sh(host, ctid, "df -k / | tail -1").stdout.split()[3]) < 4
    vzctl(host, "stop", ctid)
    # vzctl's own writes at start (its guest settings) go through; the limit holds again after.
    vzctl(host, "start", ctid)
    sh(host, ctid, "dd if=/dev/zero of=/more bs=4k count=1 2>/dev/null", code=1)
    assert int(sh(host, ctid, "df -k / | tail -1").stdout.split()[3]) < 4
    vzctl(host, "stop", ctid)
    vzctl(host, "mount", ctid)  # mounted first, then started: the same
    vzctl(host, "start", ctid)
    sh(host, ctid, "dd if=/dev/zero of=/more bs=4k count=1 2>/dev/null", code=1)


def test_a_move_onto_a_disk_cut_short_is_destroyed_whole(host: VzHost, cts: list[str]) -> None:
    ctid = new_ct(cts)
    vzctl(host, "create", ctid, "--ostemplate", MINIMAL, "--layout", "plain")
    private = host.base / "private" / ctid
    tmp = host.base / "private" / f"{ctid}.tmp"
    with (private / "big").open("wb") as f:  # time for cp -a to be caught
        for _ in range(1024):
            f.write(b"\1" * M)
    proc = host.popen("vzctl", "set", ctid, "--diskspace", "3G", "--save")
    deadline = time.monotonic() + 60
    while not mounts_in(tmp / "fs") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.kill()  # vzctl dies mid-copy; its new disk stays mounted in <private>.tmp
    proc.wait()
    assert mounts_in(tmp / "fs") and loops_of(tmp)
    vzctl(host, "destroy", ctid)
    assert mounts_in(tmp) == [] and loops_of(tmp) == []
    assert not tmp.exists() and not private.exists()


def test_a_disk_another_mount_namespace_still_holds_is_not_resized_under_it(
    host: VzHost, cts: list[str]
) -> None:
    ctid, private = running_on_a_disk(host, cts, "100M")
    # A process that copied the host's mounts (as a build's unshare --mount does).
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "120"])
    try:
        time.sleep(0.5)
        stopped = vzctl(host, "stop", ctid)
        assert "another mount namespace" in stopped.stderr
        assert len(loops_of(private)) == 1 and mounts_in(private) == []
        refused = vzctl(host, "set", ctid, "--diskspace", "5G", "--save", code=62)
        assert "another mount namespace" in refused.stderr and "/proc/*/mountinfo" in refused.stderr
        assert 'DISKSPACE="100M:100M"' in conf_of(host, ctid).read_text()
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while loops_of(private):  # the holder's namespace goes with it
        assert time.monotonic() < deadline
        time.sleep(0.1)
    change = vzctl(host, "set", ctid, "--diskspace", "5G", "--save")
    assert "recovering" not in change.stdout and change.stdout == ""  # e2fsck's talk is kept
    check = subprocess.run(["e2fsck", "-fn", str(private / "root.hdd")], capture_output=True)
    assert check.returncode == 0, check.stdout
    vzctl(host, "start", ctid)
    use = json.loads(vzctl(host, "status", ctid, "--json").stdout)["disk"]
    assert use["limit"] == 5 << 30
