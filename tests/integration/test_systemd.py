"""systemd as a VPS's init (issue 9): debian-12-x86_64-systemd boots to multi-user in its user
namespace on this host's cgroup layout, manages its own cgroups, halts cleanly, and cannot
reach a limit of its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import VzHost, ctid_base

pytestmark = [pytest.mark.root, pytest.mark.network, pytest.mark.slow]

SYSTEMD = "debian-12-x86_64-systemd"
CTID = str(ctid_base(30000) + int(time.time()) % 400)
# What runc gives a VPS on this host's layout (vzpkg/cgroups.py): on a pure v2 host its one
# cgroup is the VPS's /sys/fs/cgroup; on a hybrid host each v1 controller has its directory.
PURE_V2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
LIMITS = (
    ("pids.max", "cgroup.max.descendants", "cgroup.max.depth", "cgroup.freeze")
    if PURE_V2
    else ("memory/memory.limit_in_bytes", "pids/pids.max", "devices/devices.allow")
)


@pytest.fixture(scope="module")
def host(vzhost: VzHost) -> VzHost:
    return vzhost.with_cache(SYSTEMD)


@pytest.fixture(scope="module")
def booted(host: VzHost) -> Iterator[str]:
    assert host.run("vzctl", "create", CTID, "--ostemplate", SYSTEMD).returncode == 0
    start = host.run("vzctl", "start", CTID)
    assert start.returncode == 0, start.stderr
    assert "systemd as init" in start.stderr
    yield CTID
    host.run("vzctl", "stop", "--fast", CTID)
    host.run("vzctl", "destroy", CTID)


def inside(host: VzHost, ctid: str, script: str) -> str:
    return host.run("vzctl", "exec2", ctid, script, timeout=60).stdout.strip()


def test_boots_to_running_with_its_services(host: VzHost, booted: str) -> None:
    deadline = time.monotonic() + 30
    state = ""
    while time.monotonic() < deadline:
        state = inside(host, booted, "systemctl is-system-running")
        if state in ("running", "degraded"):
            break
        time.sleep(0.3)
    failed = inside(host, booted, "systemctl --failed --no-legend --plain")
    assert state == "running", (state, failed)
    processes = inside(host, booted, "ps -eo comm")
    for name in ("systemd", "systemd-journal", "sshd", "cron"):
        assert name in processes.split(), processes
    assert "Startup finished" in inside(host, booted, "journalctl -b --no-pager")


def test_it_manages_its_own_cgroups_but_no_limit(host: VzHost, booted: str) -> None:
    units = inside(host, booted, "cat /proc/$(pidof cron)/cgroup")
    assert "system.slice/cron.service" in units, units
    for limit in LIMITS:
        path = f"/sys/fs/cgroup/{limit}"
        exists = host.run("vzctl", "exec2", booted, f"test -f {path}").returncode == 0
        if limit == "pids.max" and not exists:
            continue  # this host's v2 hierarchy has no pids controller
        assert exists, limit
        proc = host.run("vzctl", "exec2", booted, f"echo 1 > {path}")
        assert proc.returncode != 0, limit


def test_halts_cleanly_and_leaves_no_cgroup(host: VzHost, booted: str) -> None:
    started = time.monotonic()
    stop = host.run("vzctl", "stop", booted)
    assert stop.returncode == 0 and "killed" not in stop.stderr, stop.stderr
    assert time.monotonic() - started < 30
    pattern = f"vzpkg*/{booted}" if PURE_V2 else f"*/vzpkg*/{booted}"
    leftovers = [p for p in Path("/sys/fs/cgroup").glob(pattern) if p.is_dir()]
    assert leftovers == []
    again = host.run("vzctl", "start", booted)  # and boots again
    assert again.returncode == 0, again.stderr


def test_a_privileged_systemd_vps_is_refused_by_name(host: VzHost) -> None:
    ctid = str(int(CTID) + 1)
    assert (
        host.run("vzctl", "create", ctid, "--ostemplate", SYSTEMD, "--userns", "no").returncode == 0
    )
    try:
        start = host.run("vzctl", "start", ctid)
        assert start.returncode == 47 and "user namespace" in start.stderr, start.stderr
        assert "down" in host.run("vzctl", "status", ctid).stdout
    finally:
        host.run("vzctl", "destroy", ctid)
