"""The runtime end to end: vzctl and vzlist on real Debian caches, real runc, as root.

The session from the OpenVZ slides (create, start, exec ps ax, enter, stop, destroy), isolation,
and robustness: parallel creates, kill -9, an init that ignores signals, start/stop cycles.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import BIN, VzHost
from vzpkg import lock

pytestmark = [pytest.mark.root, pytest.mark.network, pytest.mark.slow]

MINIMAL = "debian-12-x86_64-minimal"
DEFAULT = "debian-12-x86_64-default"


@pytest.fixture(scope="module")
def host(vzhost: VzHost) -> VzHost:
    for name in (MINIMAL, DEFAULT):
        result = vzhost.build(name)
        assert result["returncode"] == 0, result["stderr"]
    return vzhost


@pytest.fixture
def ct(host: VzHost) -> Iterator[str]:
    """A CTID for one test, cleaned up whatever happens."""
    ctid = str(100 + int(time.monotonic_ns() % 800))
    yield ctid
    host.run("vzctl", "stop", "--fast", ctid)
    host.run("vzctl", "destroy", ctid)


def vzctl(host: VzHost, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = host.run("vzctl", *args, timeout=120)
    if ok:
        assert proc.returncode == 0, f"vzctl {' '.join(args)}: {proc.stderr}"
    return proc


def host_mounts(host: VzHost) -> list[str]:
    return [
        line
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if str(host.base) in line
    ]


def wait_for(predicate: object, timeout: float = 15) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def enter_through_pty(host: VzHost, ctid: str, commands: str) -> str:
    """Drive ``vzctl enter`` as a person would, through a terminal."""
    pid, fd = pty.fork()
    if pid == 0:  # child: vzctl with the pty as its controlling terminal
        os.execve(str(BIN / "vzctl"), ["vzctl", "enter", ctid], host.env)
    output = b""
    os.write(fd, commands.encode())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    return output.decode(errors="replace")


def test_the_slides_session(host: VzHost, ct: str) -> None:
    mounts_before = host_mounts(host)
    vzctl(host, "create", ct, "--ostemplate", MINIMAL, "--hostname", f"ct{ct}")
    vzctl(host, "set", ct, "--ipadd", "198.51.100.45", "--save")
    vzctl(host, "start", ct)
    ps = vzctl(host, "exec", ct, "ps", "ax").stdout.splitlines()
    assert ps[0].split()[0] == "PID"
    pid1 = ps[1].split()
    assert pid1[0] == "1" and "tini" in ps[1]  # minimal has no init of its own
    assert not [line for line in ps if "pytest" in line or "sshd" in line]  # no host processes
    assert vzctl(host, "exec", ct, "hostname").stdout.strip() == f"ct{ct}"
    assert vzctl(host, "status", ct).stdout.strip() == f"CTID {ct} exist mounted running"
    table = host.run("vzlist", "-a").stdout.splitlines()
    assert table[0].split() == ["CTID", "NPROC", "STATUS", "IP_ADDR", "HOSTNAME"]
    row = next(line.split() for line in table[1:] if line.split()[0] == ct)
    assert row[2:] == ["running", "198.51.100.45", f"ct{ct}"]
    assert int(row[1]) >= 1
    data = json.loads(host.run("vzlist", "-j", ct).stdout)
    assert data[0]["ostemplate"] == MINIMAL and data[0]["status"] == "running"
    out = enter_through_pty(host, ct, "hostname; tty; exit 0\n")
    assert f"ct{ct}" in out
    assert "/dev/pts/" in out  # a new pty inside the VPS
    vzctl(host, "stop", ct)
    assert vzctl(host, "status", ct).stdout.strip() == f"CTID {ct} exist unmounted down"
    assert host.run("vzlist", "-1").stdout.split().count(ct) == 0  # stopped: not listed
    vzctl(host, "destroy", ct)
    assert vzctl(host, "status", ct).stdout.strip() == f"CTID {ct} deleted unmounted down"
    assert host_mounts(host) == mounts_before


def test_default_template_runs_its_init_and_services(host: VzHost, ct: str) -> None:
    vzctl(host, "create", ct, "--ostemplate", "debian-12", "--hostname", "web")
    vzctl(host, "start", ct)

    def services_up() -> bool:
        out = host.run("vzctl", "exec", ct, "ps", "ax").stdout
        return all(name in out for name in ("syslogd", "sshd", "cron"))

    assert wait_for(services_up), host.run("vzctl", "exec", ct, "ps", "ax").stdout
    ps = vzctl(host, "exec", ct, "ps", "ax").stdout.splitlines()
    assert ps[1].split()[0] == "1" and "init" in ps[1]
    assert "getty" not in "\n".join(ps)  # no consoles to respawn on
    keys = vzctl(host, "exec", ct, "ls", "/etc/ssh").stdout
    assert "ssh_host_ed25519_key" in keys  # generated in this VPS, not shipped in the cache
    started = time.monotonic()
    stop = vzctl(host, "stop", ct)
    assert "killed" not in stop.stderr  # sysvinit halted on SIGPWR
    assert time.monotonic() - started < 30


def test_set_applies_to_the_running_vps_and_saves(host: VzHost, ct: str) -> None:
    vzctl(host, "create", ct, "--ostemplate", MINIMAL, "--hostname", "before")
    assert "--save was not given" in vzctl(host, "set", ct, "--hostname", "x").stderr
    vzctl(host, "start", ct)
    vzctl(
        host,
        "set",
        ct,
        "--hostname",
        "after",
        "--nameserver",
        "198.51.100.53",
        "--searchdomain",
        "example.net",
    )
    assert vzctl(host, "exec", ct, "hostname").stdout.strip() == "after"
    resolv = vzctl(host, "exec", ct, "cat /etc/resolv.conf").stdout
    assert "nameserver 198.51.100.53" in resolv and "search example.net" in resolv
    conf = (host.base / "conf" / f"{ct}.conf").read_text()
    assert 'HOSTNAME="before"' in conf  # not saved without --save
    vzctl(host, "set", ct, "--hostname", "after", "--onboot", "yes", "--save")
    conf = (host.base / "conf" / f"{ct}.conf").read_text()
    assert 'HOSTNAME="after"' in conf and 'ONBOOT="yes"' in conf
    vzctl(host, "set", ct, "--userpasswd", "root:s3cret")
    shadow = vzctl(host, "exec", ct, "grep ^root: /etc/shadow").stdout
    assert shadow.split(":")[1].startswith("$")  # a real hash now
    assert "s3cret" not in (host.base / "conf" / f"{ct}.conf").read_text()
    host_ns = [
        line.split()[1]
        for line in Path("/etc/resolv.conf").read_text().splitlines()
        if line.startswith("nameserver")
    ]
    vzctl(host, "set", ct, "--nameserver", "inherit", "--save")
    resolv = vzctl(host, "exec", ct, "cat /etc/resolv.conf").stdout
    assert all(f"nameserver {ns}" in resolv for ns in host_ns)


def test_plain_layout_and_mount_commands(host: VzHost, ct: str) -> None:
    vzctl(host, "create", ct, "--ostemplate", MINIMAL, "--layout", "plain")
    private = host.base / "private" / ct
    assert (private / "etc/debian_version").is_file()
    vzctl(host, "mount", ct)
    assert (host.base / "root" / ct / "etc/debian_version").is_file()
    assert vzctl(host, "mount", ct, ok=False).returncode == 41
    vzctl(host, "umount", ct)
    assert vzctl(host, "umount", ct, ok=False).returncode == 40
    vzctl(host, "start", ct)
    assert vzctl(host, "destroy", ct, ok=False).returncode == 32
    assert vzctl(host, "start", ct, ok=False).returncode == 32
    vzctl(host, "stop", ct)
    assert vzctl(host, "stop", ct, ok=False).returncode == 31
    assert vzctl(host, "exec", ct, "true", ok=False).returncode == 31


def test_exit_codes_of_exec_and_create(host: VzHost, ct: str) -> None:
    assert (
        vzctl(host, "create", ct, "--ostemplate", "debian-12-x86_64-nosuch", ok=False).returncode
        == 91
    )
    assert (
        vzctl(host, "create", ct, "--ostemplate", "debian-11-x86_64-minimal", ok=False).returncode
        == 91
    )  # known template, no cache
    vzctl(host, "create", ct, "--ostemplate", MINIMAL)
    assert vzctl(host, "create", ct, "--ostemplate", MINIMAL, ok=False).returncode == 44
    vzctl(host, "start", ct)
    assert vzctl(host, "exec", ct, "exit 3", ok=False).returncode == 8
    assert vzctl(host, "exec2", ct, "exit 3", ok=False).returncode == 3
    out = vzctl(host, "exec", ct, "echo", "a", "b").stdout
    assert out == "a b\n"
    # A command killed by a signal: 128+n, as a shell reports it (fast path and full CLI alike).
    assert vzctl(host, "exec2", ct, "kill -9 $$", ok=False).returncode == 137
    assert vzctl(host, "-v", "exec2", ct, "kill -9 $$", ok=False).returncode == 137


def test_exec_fast_path_leaves_problems_to_the_full_cli(host: VzHost, ct: str) -> None:
    """vzctl exec on a running CT skips the full CLI; a bad host configuration must still be
    reported (exit 10), never ignored because the shortcut does not look at it closely."""
    vzctl(host, "create", ct, "--ostemplate", MINIMAL)
    vzctl(host, "start", ct)
    good = host.conf.read_text()
    try:
        host.conf.write_text(good + "NO_SUCH_KEY=1\n")
        proc = vzctl(host, "exec", ct, "true", ok=False)
        assert proc.returncode == 10, proc.stderr
        assert "NO_SUCH_KEY" in proc.stderr
        host.conf.write_text(good + 'BROKEN="\n')
        assert vzctl(host, "exec2", ct, "true", ok=False).returncode == 10
    finally:
        host.conf.write_text(good)
    assert vzctl(host, "exec2", ct, "true").returncode == 0


def test_isolation(host: VzHost, ct: str) -> None:
    vzctl(host, "create", ct, "--ostemplate", MINIMAL, "--hostname", "iso")
    vzctl(host, "start", ct)
    links = vzctl(host, "exec", ct, "ls", "/sys/class/net").stdout.split()
    assert links == ["lo"]  # an empty network namespace
    assert vzctl(host, "exec", ct, "echo x > /proc/sys/kernel/hostname", ok=False).returncode == 8
    assert vzctl(host, "exec", ct, "touch /sys/kernel/x", ok=False).returncode == 8
    assert (
        vzctl(host, "exec", ct, "mknod /tmp/sda b 8 0 && head -c1 /tmp/sda", ok=False).returncode
        == 8
    )
    inside = vzctl(host, "exec", ct, "cat /proc/mounts").stdout
    points = [line.split()[1] for line in inside.splitlines()]
    assert not [p for p in points if p.startswith(("/work", "/tmp/pytest", str(host.base)))]
    assert "/" in points and "/proc" in points
    vzctl(host, "exec", ct, "mkdir -p /mnt/t && mount -t tmpfs vztest /mnt/t")
    # No host descriptor reaches the VPS (vzctl's guardian pipe, lock files, ...): its init
    # has only stdio, on /dev/null.
    fds = vzctl(host, "exec", ct, "ls -l /proc/1/fd").stdout
    targets = [line.split(" -> ")[1] for line in fds.splitlines() if " -> " in line]
    assert targets == ["/dev/null"] * 3, fds
    assert "vztest" not in Path("/proc/self/mounts").read_text()
    assert os.uname().nodename != "iso"


def test_parallel_creates_make_exactly_one(host: VzHost, ct: str) -> None:
    procs = [host.popen("vzctl", "create", ct, "--ostemplate", MINIMAL) for _ in range(16)]
    codes = [p.wait(timeout=120) for p in procs]
    for p in procs:
        p.communicate()
    assert codes.count(0) == 1, codes
    assert set(codes) <= {0, 9, 44}, codes
    vzctl(host, "start", ct)
    vzctl(host, "stop", ct)


@pytest.mark.parametrize("delay", [0.05, 0.15, 0.3])
def test_kill_9_during_create_leaves_nothing_half_done(host: VzHost, ct: str, delay: float) -> None:
    proc = host.popen("vzctl", "create", ct, "--ostemplate", MINIMAL, "--layout", "plain")
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    # Its guardian undoes what it made, holding the CT's lock until done.
    assert wait_for(lambda: not lock.is_locked(host.lock_dir, f"ct-{ct}"))
    conf = host.base / "conf" / f"{ct}.conf"
    private = host.base / "private" / ct
    if conf.exists():  # it finished before the kill: complete, and usable
        assert (private / "etc/debian_version").is_file()
    else:
        assert not private.exists() or not any(private.iterdir())
    assert not list((host.base / "private").glob(f"{ct}.tmp*"))
    # No stale lock: the next create (after a destroy if it had finished) just works.
    if conf.exists():
        vzctl(host, "destroy", ct)
    vzctl(host, "create", ct, "--ostemplate", MINIMAL, "--layout", "plain")
    vzctl(host, "start", ct)
    vzctl(host, "stop", ct)


def test_kill_9_during_start_is_recoverable(host: VzHost, ct: str) -> None:
    vzctl(host, "create", ct, "--ostemplate", MINIMAL)
    proc = host.popen("vzctl", "start", ct)
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert wait_for(lambda: not lock.is_locked(host.lock_dir, f"ct-{ct}"))
    status = vzctl(host, "status", ct).stdout
    assert status.strip() in (
        f"CTID {ct} exist mounted running",
        f"CTID {ct} exist unmounted down",
    )  # never mounted but down
    # Whatever point it reached, the next commands are not blocked and end clean.
    status = vzctl(host, "status", ct).stdout
    if "running" not in status:
        vzctl(host, "start", ct)
    vzctl(host, "stop", ct)
    assert vzctl(host, "status", ct).stdout.strip() == f"CTID {ct} exist unmounted down"
    assert not [m for m in host_mounts(host) if f"/root/{ct} " in m]


def test_init_that_ignores_signals_still_stops(host: VzHost, ct: str) -> None:
    vzctl(host, "create", ct, "--ostemplate", MINIMAL, "--layout", "plain")
    init = host.base / "private" / ct / "sbin" / "init"
    init.write_text("#!/bin/sh\ntrap '' TERM INT PWR HUP\nwhile :; do sleep 1; done\n")
    init.chmod(0o755)
    vzctl(host, "start", ct)
    started = time.monotonic()
    stop = vzctl(host, "stop", ct, "--timeout", "2")
    assert "killed" in stop.stderr
    assert time.monotonic() - started < 15
    assert vzctl(host, "status", ct).stdout.strip().endswith("down")


def test_status_is_truthful_after_init_dies(host: VzHost, ct: str) -> None:
    vzctl(host, "create", ct, "--ostemplate", MINIMAL)
    vzctl(host, "start", ct)
    host.run("vzctl", "exec", ct, "kill -TERM 1")  # init exits by itself: the VPS is down
    assert wait_for(lambda: "down" in host.run("vzctl", "status", ct).stdout)
    vzctl(host, "start", ct)  # a dead init's leftovers do not block a new start
    assert "running" in vzctl(host, "status", ct).stdout


def test_start_stop_cycles_leak_nothing(host: VzHost, ct: str) -> None:
    vzctl(host, "create", ct, "--ostemplate", MINIMAL)
    mounts = host_mounts(host)  # below this test host: other programs may mount meanwhile
    files_before = int(Path("/proc/sys/fs/file-nr").read_text().split()[0])
    for _ in range(50):
        vzctl(host, "start", ct)
        vzctl(host, "stop", ct, "--fast")
    assert host_mounts(host) == mounts
    files_after = int(Path("/proc/sys/fs/file-nr").read_text().split()[0])
    assert files_after - files_before < 200  # noise of the rest of the system only
    assert not processes_rooted_in(host.base)  # nothing of the VPS outlived its stop


def processes_rooted_in(base: Path) -> list[int]:
    """PIDs whose root directory is below ``base`` (processes of this test host's VPSs)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                root = os.readlink(p / "root")
            except OSError:
                continue
            if root.startswith(str(base)):
                pids.append(int(p.name))
    return pids
