"""Attacks tried for real from inside a VPS, as its root (issue 9): each must be refused, and
where an escape would leave a trace, a marker on the host (or in another VPS) must not appear.

The VPSs here are made the default way: with a user namespace of their own. The privileged
mode (--userns no) is tried for what it still closes (docs/security.md says what it does not).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import BIN, VzHost, passable, static_tool

pytestmark = [pytest.mark.root, pytest.mark.network, pytest.mark.slow]

MINIMAL = "debian-12-x86_64-minimal"
_next = iter(range(int(time.time()) % 1000 * 7 + 20000, 10**6))


@pytest.fixture(scope="module")
def host(vzhost: VzHost) -> VzHost:
    return vzhost.with_cache(MINIMAL)


@pytest.fixture(scope="module")
def vps(host: VzHost) -> Iterator[str]:
    """One running VPS with a user namespace, shared by the attacks of this module."""
    ctid = str(next(_next))
    assert host.run("vzctl", "create", ctid, "--ostemplate", MINIMAL).returncode == 0
    assert host.run("vzctl", "start", ctid).returncode == 0
    yield ctid
    host.run("vzctl", "stop", "--fast", ctid)
    host.run("vzctl", "destroy", ctid)


def inside(host: VzHost, ctid: str, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` as the VPS's root, through its own /bin/sh."""
    return host.run("vzctl", "exec2", ctid, script, timeout=60)


def refused(host: VzHost, ctid: str, script: str) -> str:
    proc = inside(host, ctid, script)
    assert proc.returncode != 0, f"{script!r} succeeded:\n{proc.stdout}{proc.stderr}"
    return proc.stderr


@pytest.fixture(scope="module")
def attack_tool(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """attack.c, built statically: the system calls no tool of a minimal VPS makes."""
    return static_tool(tmp_path_factory, Path(__file__).with_name("attack.c")).read_bytes()


def put_tool(host: VzHost, ctid: str, tool: bytes) -> None:
    """Copy the attack tool into the VPS through its own shell (as its root would)."""
    proc = subprocess.run(
        [str(BIN / "vzctl"), "exec2", ctid, "cat > /attack && chmod 755 /attack"],
        input=tool,
        env=host.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


_SYS_ADD_KEY, _SYS_KEYCTL = 248, 250  # x86_64
_KEY_SPEC_USER_KEYRING, _KEYCTL_INVALIDATE = -4, 21


@pytest.fixture
def host_key() -> Iterator[int]:
    """A secret in host root's user keyring, for the length of a test: its serial."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    secret = b"host-root-secret"
    serial = libc.syscall(
        _SYS_ADD_KEY, b"user", b"vzpkg-attack-host", secret, len(secret), _KEY_SPEC_USER_KEYRING
    )
    assert serial > 0, os.strerror(ctypes.get_errno())
    yield int(serial)
    libc.syscall(_SYS_KEYCTL, _KEYCTL_INVALIDATE, ctypes.c_long(serial))


def host_disk() -> tuple[int, int]:
    """major:minor of the block device the host's / is on."""
    dev = os.stat("/").st_dev
    return os.major(dev), os.minor(dev)


def test_root_in_the_vps_is_not_root_on_the_host(host: VzHost, vps: str) -> None:
    assert inside(host, vps, "id -u").stdout.strip() == "0"
    uid_map = inside(host, vps, "cat /proc/self/uid_map").stdout.split()
    assert uid_map[0] == "0" and int(uid_map[1]) >= 65536 and uid_map[2] == "65536"
    conf = (host.base / "conf" / f"{vps}.conf").read_text()
    assert f'LOCAL_UID="{uid_map[1]}"' in conf


def test_block_devices(host: VzHost, vps: str) -> None:
    major, minor = host_disk()
    refused(host, vps, f"mknod /tmp/disk b {major} {minor}")
    refused(host, vps, "mkdir -p /mnt/h && mount /dev/vda /mnt/h")
    for node in ("/dev/mem", "/dev/kmsg"):
        refused(host, vps, f"mknod /tmp/x c 1 {1 if node == '/dev/mem' else 11} && head -c1 /tmp/x")


def test_cgroups_cannot_be_taken(host: VzHost, vps: str) -> None:
    """The VPS may mount its own view of a cgroup hierarchy (its cgroup namespace), but not
    write a file of it: no devices granted, no limit raised, no freezing."""
    for controller, write in (
        ("devices", "echo a > devices.allow"),
        ("pids", "echo max > pids.max"),
        ("freezer", "echo FROZEN > freezer.state"),
        ("memory", "echo -1 > memory.limit_in_bytes"),
    ):
        refused(
            host,
            vps,
            f"mkdir -p /tmp/cg-{controller} && mount -t cgroup -o {controller} cgroup "
            f"/tmp/cg-{controller}; cd /tmp/cg-{controller} && {write}",
        )
    refused(host, vps, "mkdir -p /tmp/ra && mount -t cgroup -o pids,release_agent=/x c /tmp/ra")
    refused(host, vps, "echo a > /sys/fs/cgroup/devices/devices.allow")
    refused(host, vps, "mount -o remount,rw /sys/fs/cgroup")


def test_host_settings_stay_the_hosts(host: VzHost, vps: str) -> None:
    before = Path("/proc/sys/kernel/core_pattern").read_text()
    evil = "'|/tmp/evil'"
    for script in (
        f"echo {evil} > /proc/sys/kernel/core_pattern",
        f"mount -o remount,rw /proc/sys && echo {evil} > /proc/sys/kernel/core_pattern",
        f"mkdir -p /tmp/p && mount -t proc proc /tmp/p && echo {evil} > "
        "/tmp/p/sys/kernel/core_pattern",
        "mount -o remount,rw /sys && echo 1 > /sys/kernel/mm/ksm/run",
        "mkdir -p /tmp/s && mount -t sysfs sysfs /tmp/s && echo 1 > /tmp/s/kernel/mm/ksm/run",
    ):
        refused(host, vps, script)
    assert Path("/proc/sys/kernel/core_pattern").read_text() == before


def test_masked_paths_stay_masked(host: VzHost, vps: str) -> None:
    inside(host, vps, "umount /proc/kcore; umount /proc/keys")
    refused(host, vps, "head -c1 /proc/kcore")


def test_no_binfmt_misc_handler_for_the_host_no_modules(
    host: VzHost, vps: str, tmp_path: Path
) -> None:
    """A handler the VPS registers (in a binfmt_misc of its own, where the kernel has
    sandboxed ones) never runs when the host runs a matching file."""
    marker = Path(f"/tmp/vzpkg-attack-binfmt-{vps}")
    inside(
        host,
        vps,
        f"printf '#!/bin/sh\\ntouch {marker}\\n' > /tmp/evil.sh && chmod 755 /tmp/evil.sh && "
        "mkdir -p /tmp/b && mount -t binfmt_misc binfmt_misc /tmp/b && "
        "echo ':vzx:E::vzx::/tmp/evil.sh:F' > /tmp/b/register",
    )
    probe = tmp_path / "probe.vzx"
    probe.write_text("")
    probe.chmod(0o755)
    with contextlib.suppress(OSError):  # ENOEXEC: the host knows no handler for it
        subprocess.run([str(probe)], check=False, capture_output=True)
    try:
        assert not marker.exists()
    finally:
        marker.unlink(missing_ok=True)
    refused(host, vps, "echo > /tmp/m.ko && insmod /tmp/m.ko")


def test_keyrings_of_the_host_and_of_other_vpss_stay_theirs(
    host: VzHost, vps: str, attack_tool: bytes, host_key: int
) -> None:
    put_tool(host, vps, attack_tool)
    for attack in (f"keyread {host_key}", f"keylink {host_key}", "keysearch vzpkg-attack-host"):
        assert "host-root-secret" not in refused(host, vps, f"/attack {attack}")
    other = str(next(_next))
    assert host.run("vzctl", "create", other, "--ostemplate", MINIMAL).returncode == 0
    try:
        assert host.run("vzctl", "start", other).returncode == 0
        put_tool(host, other, attack_tool)
        added = inside(host, other, "/attack keyadd vzpkg-attack-other other-secret")
        assert added.returncode == 0, added.stdout + added.stderr
        serial = added.stdout.strip()
        # Its own user keyring it searches (the way the attacks below would find a key).
        assert inside(host, other, "/attack keysearch vzpkg-attack-other").stdout.split() == [
            "found:",
            serial,
        ]
        for attack in (f"keyread {serial}", f"keylink {serial}", "keysearch vzpkg-attack-other"):
            refused(host, vps, f"/attack {attack}")
    finally:
        host.run("vzctl", "stop", "--fast", other)
        host.run("vzctl", "destroy", other)


def test_no_kexec_no_open_by_handle(host: VzHost, vps: str, attack_tool: bytes) -> None:
    put_tool(host, vps, attack_tool)
    refused(host, vps, "/attack kexec")
    refused(host, vps, "/attack handle /etc/passwd")


def test_host_side_writes_never_follow_what_the_vps_planted(host: VzHost, vps: str) -> None:
    """vzctl set rewrites guest files from the host: a symlink out of the VPS, a FIFO and a
    hard link to another file of the VPS in their places are replaced, never written through."""
    marker = Path(f"/tmp/vzpkg-attack-resolv-{vps}")
    planted = inside(
        host,
        vps,
        f"ln -sf {marker} /etc/resolv.conf && rm -f /etc/hosts && mkfifo /etc/hosts && "
        "ln -f /etc/shadow /etc/hostname && md5sum /etc/shadow",
    )
    assert planted.returncode == 0, planted.stderr
    try:
        done = host.run(
            "vzctl",
            "set",
            vps,
            "--hostname",
            "planted",
            "--nameserver",
            "198.51.100.53",
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert not marker.exists()
        after = inside(host, vps, "md5sum /etc/shadow; test -f /etc/hosts && cat /etc/hostname")
        assert after.stdout.splitlines() == [planted.stdout.strip(), "planted"], after.stdout
    finally:
        marker.unlink(missing_ok=True)


def test_the_shared_tree_cannot_be_changed(host: VzHost, vps: str) -> None:
    """A write to a template file lands in the VPS's own upper directory: the host's tree and
    another VPS of the same cache still see the original."""
    other = str(next(_next))
    assert host.run("vzctl", "create", other, "--ostemplate", MINIMAL).returncode == 0
    try:
        assert host.run("vzctl", "start", other).returncode == 0
        original = inside(host, other, "cat /etc/debian_version").stdout
        assert inside(host, vps, "echo tampered > /etc/debian_version").returncode == 0
        assert inside(host, other, "cat /etc/debian_version").stdout == original
        trees = list((host.base / "trees").glob("*/root/etc/debian_version"))
        assert trees and all(t.read_text() == original for t in trees)
        refused(host, vps, "mount -o remount,rw / 2>&1 && touch /remount-worked")
        # Files of one VPS are another's only through the host: their owners differ there.
        inside(host, vps, "echo secret > /root/secret && chmod 600 /root/secret")
        secret = host.base / "private" / vps / "upper" / "root" / "secret"
        other_root = host.base / "private" / other / "upper"
        assert secret.stat().st_uid != other_root.stat().st_uid
        assert secret.stat().st_uid >= 65536
    finally:
        host.run("vzctl", "stop", "--fast", other)
        host.run("vzctl", "destroy", other)


def test_setuid_files_made_inside_are_owned_by_the_vps_range(host: VzHost, vps: str) -> None:
    assert inside(host, vps, "cp /bin/true /root/suid && chmod 4755 /root/suid").returncode == 0
    made = host.base / "private" / vps / "upper" / "root" / "suid"
    st = made.stat()
    assert st.st_mode & 0o4000 and st.st_uid >= 65536  # setuid, but to the VPS's root only


def test_privileged_mode_closes_what_it_can(
    host: VzHost, attack_tool: bytes, host_key: int
) -> None:
    ctid = str(next(_next))
    made = host.run(
        "vzctl", "create", ctid, "--ostemplate", MINIMAL, "--layout", "plain", "--userns", "no"
    )
    assert made.returncode == 0 and "privileged" in made.stderr
    try:
        assert host.run("vzctl", "start", ctid).returncode == 0
        major, minor = host_disk()
        refused(host, ctid, f"mknod /tmp/disk b {major} {minor}")
        refused(host, ctid, "mount -o remount,ro /")
        assert inside(host, ctid, "touch /still-writable").returncode == 0
        put_tool(host, ctid, attack_tool)
        for attack in (f"keyread {host_key}", "keysearch vzpkg-attack-host", "kexec", "handle /"):
            refused(host, ctid, f"/attack {attack}")
        assert "no" in host.run("vzlist", "-o", "userns", "-H", ctid).stdout
    finally:
        host.run("vzctl", "stop", "--fast", ctid)
        host.run("vzctl", "destroy", ctid)


def test_parallel_creates_never_share_a_block(host: VzHost) -> None:
    """Blocks are chosen under a lock, from the configs as they are then: VPSs made at the
    same time get blocks of their own (shared ones shared key quotas and keyrings)."""
    ctids = [str(next(_next)) for _ in range(8)]
    procs = [host.popen("vzctl", "-q", "create", c, "--ostemplate", MINIMAL) for c in ctids]
    try:
        assert [p.wait(timeout=120) for p in procs] == [0] * len(ctids)
        for p in procs:
            p.communicate()
        bases = []
        for ctid in ctids:
            text = (host.base / "conf" / f"{ctid}.conf").read_text()
            bases.append(next(line for line in text.splitlines() if line.startswith("LOCAL_UID")))
        assert len(set(bases)) == len(ctids), bases
    finally:
        for ctid in ctids:
            host.run("vzctl", "destroy", ctid)


def test_the_template_trees_are_roots_only(host: VzHost, vps: str) -> None:
    """A tree holds the template's setuid-root programs owned by host uid 0: no host user may
    reach them by its path."""
    trees = [p for p in (host.base / "trees").iterdir() if p.is_dir() and len(p.name) == 64]
    assert trees
    for tree in trees:
        assert tree.stat().st_mode & 0o077 == 0, oct(tree.stat().st_mode)


def test_a_vps_cannot_make_its_own_destroy_fail(host: VzHost) -> None:
    """A tree thousands of levels deep (Python's rmtree would recurse itself to death) is
    removed like any other."""
    ctid = str(next(_next))
    assert host.run("vzctl", "create", ctid, "--ostemplate", MINIMAL).returncode == 0
    assert host.run("vzctl", "start", ctid).returncode == 0
    deep = "cd /root; i=0; while [ $i -lt 3000 ]; do mkdir d && cd d || break; i=$((i+1)); done"
    inside(host, ctid, deep)
    assert host.run("vzctl", "stop", ctid).returncode == 0
    destroy = host.run("vzctl", "destroy", ctid)
    assert destroy.returncode == 0, destroy.stderr
    assert not (host.base / "private" / ctid).exists()
    assert not (host.base / "private" / f"{ctid}.destroying").exists()


def test_host_users_reach_no_vps_files(host: VzHost, vps: str) -> None:
    """A host user (nobody) gets into neither a running VPS's root nor the gate runc used,
    even where every directory above them lets others pass (the test host's do); once the
    VPS runs, the gate shows nothing at all (vzctl start unmounts it)."""
    inside(host, vps, "cp /bin/true /root/suid && chmod 4755 /root/suid")
    path = host.base / "root" / vps / "root/suid"
    with pytest.raises(PermissionError):
        subprocess.run([str(path)], user=65534, group=65534, extra_groups=[], check=False)
    assert os.stat(path).st_mode & 0o4000  # root sees it: the path is right
    gate = host.base / "run" / "ct" / f"{vps}.rootfs" / "root"
    assert not os.path.ismount(gate) and os.listdir(gate) == []


def test_a_run_dir_a_host_user_can_write_is_refused(host: VzHost, tmp_path: Path) -> None:
    """The gate and the bundle go to RUN_DIR/ct: a host user who owns it could move them (or
    plant a symlink there). vzctl start refuses it before writing anything there."""
    passable(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "ct").mkdir(parents=True)
    os.chown(run_dir / "ct", 65534, 65534)
    env = dict(host.env, VZPKG_RUN_DIR=str(run_dir))
    ctid = str(next(_next))
    assert host.run("vzctl", "create", ctid, "--ostemplate", MINIMAL, env=env).returncode == 0
    try:
        proc = host.run("vzctl", "start", ctid, env=env)
        assert proc.returncode == 10, proc.stderr
        assert "only root can write" in proc.stderr and "Traceback" not in proc.stderr
        assert os.listdir(run_dir / "ct") == []
        assert not (host.base / "root" / ctid / "etc").exists()  # unmounted again
    finally:
        host.run("vzctl", "stop", "--fast", ctid, env=env)
        host.run("vzctl", "destroy", ctid, env=env)
