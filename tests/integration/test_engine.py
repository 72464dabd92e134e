"""The runc engine against a real Debian root: what a VPS sees, what the host keeps."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest_engine import (  # noqa: F401 (fixtures)
    CGROUP_ROOT,
    Engine,
    debian_root_fixture,
    engine_fixture,
)
from vzpkg.ct import oci
from vzpkg.ct.engine import ContainerState, Runc, container_id
from vzpkg.errors import ExitCode, VzError

pytestmark = [pytest.mark.root, pytest.mark.network, pytest.mark.slow]

IGNORES_TERM = ("/bin/sh", "-c", 'trap "" TERM; while :; do sleep 1; done')


def is_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped by the host's init) is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def host_processes() -> list[tuple[int, int, list[str]]]:
    """(pid, ppid, argv) of every process on the host."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        found.append((int(entry.name), ppid, [a.decode(errors="replace") for a in argv if a]))
    return found


def mount_points(mounts_text: str) -> list[str]:
    return [line.split()[1] for line in mounts_text.splitlines() if line.strip()]


def test_start_leaves_no_supervisor(engine: Engine) -> None:
    init = engine.start("101")
    state = engine.runc.state("101")
    assert state is not None
    assert state.status == "running"
    assert state.id == container_id("101") == "vz101"
    assert state.pid == init
    assert is_alive(init)
    processes = host_processes()
    ours = os.getpid()
    state_root = str(engine.runc.state_root)
    assert [p for p in processes if p[1] == ours] == []
    assert [p for p in processes if any(state_root in arg for arg in p[2])] == []
    assert [p for p in processes if p[2][:2] == ["runc", "init"]] == []
    by_pid = {pid: (ppid, argv) for pid, ppid, argv in processes}
    assert by_pid[init][0] != ours  # reparented, not a child of ours
    # runc returns once init was released; its exec of tini may still be a moment away.
    deadline = time.monotonic() + 5
    while by_pid[init][1][:1] != ["/.vzpkg/tini"] and time.monotonic() < deadline:
        time.sleep(0.01)
        by_pid = {pid: (ppid, argv) for pid, ppid, argv in host_processes()}
    assert by_pid[init][1][0] == "/.vzpkg/tini"
    pids = engine.runc.pids("101")
    while len(pids) < 2 and time.monotonic() < deadline:  # tini forks its child a moment later
        time.sleep(0.01)
        pids = engine.runc.pids("101")
    assert init in pids
    assert len(pids) == 2  # tini and sleep
    assert [state.id for state in engine.runc.list_containers()] == ["vz101"]


def test_pid_namespace_shows_only_the_container(engine: Engine) -> None:
    engine.start("102")
    lines = engine.output("102", "ps", "-eo", "pid=,args=").splitlines()
    procs = {int(pid): args for pid, args in (line.split(None, 1) for line in lines)}
    assert procs[1].startswith("/.vzpkg/tini")
    commands = sorted(args.split()[0] for args in procs.values())
    assert commands == ["/.vzpkg/tini", "ps", "sleep"], procs


def test_hostname_is_the_configured_one_and_proc_sys_is_read_only(engine: Engine) -> None:
    host_name = socket.gethostname()
    engine.start("103", hostname="vps103.example.org")
    assert engine.output("103", "hostname").strip() == "vps103.example.org"
    proc = engine.capture("103", "sh", "-c", "echo hacked > /proc/sys/kernel/hostname")
    assert proc.returncode != 0
    assert "Read-only" in proc.stderr
    assert engine.output("103", "hostname").strip() == "vps103.example.org"
    assert socket.gethostname() == host_name


def test_sys_is_read_only(engine: Engine) -> None:
    engine.start("104")
    proc = engine.capture("104", "touch", "/sys/x")
    assert proc.returncode != 0
    assert "Read-only" in proc.stderr
    assert not Path("/sys/x").exists()


def test_block_devices_cannot_be_opened(engine: Engine) -> None:
    engine.start("105")
    # runc always lets mknod through the device cgroup ("m" on b *:*): a privileged VPS's
    # seccomp list refuses block nodes itself, and opening one must fail anyway.
    made = engine.capture("105", "mknod", "/tmp/vzpkg-sda", "b", "8", "0")
    assert made.returncode != 0 and "not permitted" in made.stderr
    try:
        proc = engine.capture("105", "head", "-c1", "/dev/vda")
        assert proc.returncode != 0
    finally:
        engine.capture("105", "rm", "-f", "/tmp/vzpkg-sda")
    assert engine.output("105", "head", "-c4", "/dev/zero") == "\0\0\0\0"


def test_host_mounts_are_not_visible(engine: Engine) -> None:
    engine.start("106")
    inside = mount_points(engine.output("106", "cat", "/proc/mounts"))
    config_points = {"/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"}
    config_points |= {oci.TINI_PATH, *oci.MASKED_PATHS, *oci.READONLY_PATHS}
    unexpected = [
        p for p in inside if p not in config_points and not p.startswith("/sys/fs/cgroup")
    ]
    assert unexpected == []
    host = mount_points(Path("/proc/self/mounts").read_text())
    host_only = {p for p in host if p not in config_points and not p.startswith("/sys/fs/cgroup")}
    assert host_only
    assert host_only.isdisjoint(inside)
    assert str(engine.root) not in "\n".join(inside)


def test_fresh_network_namespace_has_only_lo(engine: Engine) -> None:
    engine.start("107")
    dev = engine.output("107", "cat", "/proc/net/dev").splitlines()[2:]
    assert [line.split(":")[0].strip() for line in dev] == ["lo"]
    assert engine.output("107", "ls", "/sys/class/net").split() == ["lo"]


def test_mount_inside_does_not_reach_the_host(engine: Engine) -> None:
    engine.start("108")
    engine.output("108", "mount", "-t", "tmpfs", "vzpkg-test-tmpfs", "/mnt")
    assert "vzpkg-test-tmpfs /mnt tmpfs" in engine.output("108", "cat", "/proc/mounts")
    host = Path("/proc/self/mounts").read_text()
    assert "vzpkg-test-tmpfs" not in host
    assert str(engine.root / "mnt") not in host


def test_exec_returns_the_exit_code(engine: Engine) -> None:
    engine.start("109")
    assert engine.runc.exec("109", ["sh", "-c", "exit 3"]) == 3
    assert engine.runc.exec("109", ["true"]) == 0
    assert engine.runc.exec("109", ["sh", "-c", "kill -9 $$"]) == 128 + 9
    env = engine.output("109", "env")
    assert "container=vzpkg" in env.splitlines()
    proc = subprocess.run(
        engine.runc.exec_argv("109", ["sh", "-c", 'test "$VZ_X" = "a b"'], env=[("VZ_X", "a b")]),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0


def test_exec_waits_for_the_command_through_ctrl_c(engine: Engine) -> None:
    """^C at the terminal reaches runc (which hands it on) and us: we must not walk away."""
    engine.start("119")
    code = (
        "from pathlib import Path\n"
        "from vzpkg.ct.engine import Runc\n"
        f"runc = Runc(Path({str(engine.runc.state_root)!r}))\n"
        "print('started', flush=True)\n"
        "print(runc.exec('119', ['sh', '-c', 'sleep 2; exit 5']), flush=True)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "started\n"
        time.sleep(0.7)
        child.send_signal(signal.SIGINT)  # only to us, not to runc: the command goes on
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert out.strip() == "5"


def test_exec_tty_gets_a_new_pty_inside(engine: Engine) -> None:
    engine.start("110")
    argv = engine.runc.exec_argv("110", ["sh", "-c", "tty; ls /dev/pts"], tty=True)
    # script(1) gives runc the controlling terminal it wants for --tty.
    proc = subprocess.run(
        ["script", "-q", "-e", "-c", shlex.join(argv), "/dev/null"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # script echoes its stdin's EOF as "^@" before the output: look for the lines themselves.
    found = re.search(r"^\S*?(/dev/pts/(\d+))\r?\n(.*)", proc.stdout, re.MULTILINE | re.DOTALL)
    assert found, proc.stdout
    listing = found.group(3).split()
    # The pty is one of the container's own devpts instance, listed beside its ptmx; the
    # host's terminal (script's pty) is on the host's devpts, invisible in there.
    assert found.group(2) in listing
    assert "ptmx" in listing


def test_exec_tty_without_a_terminal_is_a_clear_error(engine: Engine) -> None:
    engine.start("111")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from vzpkg.ct.engine import Runc\n"
        "from vzpkg.errors import VzError\n"
        "try:\n"
        f"    Runc(Path({str(engine.runc.state_root)!r})).exec('111', ['true'], tty=True)\n"
        "except VzError as e:\n"
        "    print(int(e.code), e.message)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        start_new_session=True,  # no controlling terminal, whatever ours is
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.stdout.startswith(f"{int(ExitCode.INVALID_ARGUMENT)} "), proc.stderr
    assert "terminal" in proc.stdout


def test_graceful_stop_of_tini(engine: Engine) -> None:
    init = engine.start("112")
    assert engine.runc.stop("112", "TERM", timeout=10) == "graceful"
    assert engine.runc.state("112") is None
    assert engine.runc.list_containers() == []
    assert not is_alive(init)
    assert [p.name for p in CGROUP_ROOT.glob(f"*/{engine.cgroup_parent}/112")] == []


def test_stop_of_an_init_ignoring_term_kills_it(engine: Engine) -> None:
    init = engine.start("113", IGNORES_TERM)
    pids = engine.runc.pids("113")
    assert init in pids
    started = time.monotonic()
    assert engine.runc.stop("113", "TERM", timeout=2) == "killed"
    elapsed = time.monotonic() - started
    assert 2 <= elapsed < 2 + 5
    assert engine.runc.state("113") is None
    assert container_id("113") not in [s.id for s in engine.runc.list_containers()]
    assert not any(is_alive(pid) for pid in pids)


def test_init_that_dies_is_reported_stopped_and_can_be_restarted(engine: Engine) -> None:
    init = engine.start("114")
    engine.runc.kill("114", "KILL")
    assert engine.runc.wait_stopped("114", timeout=10)
    state = engine.runc.state("114")
    assert state is not None
    assert state.status == "stopped"
    assert not is_alive(init)
    with pytest.raises(VzError) as excinfo:
        engine.runc.exec("114", ["true"])
    assert excinfo.value.code == ExitCode.NOT_RUNNING
    with pytest.raises(VzError) as excinfo:
        engine.runc.kill("114", "TERM")
    assert excinfo.value.code == ExitCode.NOT_RUNNING
    # start clears the stopped leftover and starts afresh under the same name.
    again = engine.start("114")
    assert again != init
    assert is_alive(again)
    assert engine.runc.stop("114", "TERM", timeout=10) == "graceful"


def test_state_from_files_agrees_with_runc_state(engine: Engine) -> None:
    """runcstate reads what `runc state` would say: running, paused, stopped, unknown."""
    runc = engine.runc

    def both(ctid: str) -> tuple[ContainerState | None, ContainerState | None]:
        return runc.state(ctid), runc.runc_state(ctid)

    init = engine.start("118")
    fast, slow = both("118")
    assert fast == slow
    assert fast is not None and (fast.status, fast.pid) == ("running", init)
    # The processes, from the cgroup files, as `runc ps` lists them.
    listed = runc._run("118", "ps", "ps", "--format", "json", container_id("118")).stdout
    assert sorted(runc.pids("118")) == sorted(json.loads(listed)) and init in runc.pids("118")
    runc._run("118", "pause", "pause", container_id("118"))
    fast, slow = both("118")
    assert fast == slow
    assert fast is not None and fast.status == "paused"
    runc._run("118", "resume", "resume", container_id("118"))
    runc.kill("118", "KILL")
    assert runc.wait_stopped("118", timeout=10)
    fast, slow = both("118")
    assert fast is not None and slow is not None
    assert (fast.status, fast.pid, fast.bundle) == (slow.status, slow.pid, slow.bundle)
    assert fast.status == "stopped"
    runc.delete("118")
    assert both("118") == (None, None)


def test_wait_stopped_times_out_on_a_running_container(engine: Engine) -> None:
    engine.start("115")
    started = time.monotonic()
    assert not engine.runc.wait_stopped("115", timeout=0.5)
    assert time.monotonic() - started >= 0.5


def test_errors_name_the_problem(engine: Engine) -> None:
    runc = engine.runc
    assert runc.state("999") is None
    with pytest.raises(VzError) as excinfo:
        runc.kill("999", "TERM")
    assert excinfo.value.code == ExitCode.NOT_RUNNING
    with pytest.raises(VzError) as excinfo:
        runc.stop("999", "TERM", timeout=1)
    assert excinfo.value.code == ExitCode.NOT_RUNNING
    runc.delete("999", force=True)  # unknown + force: nothing to do, no error

    engine.start("116")
    with pytest.raises(VzError) as excinfo:
        engine.start("116")
    assert excinfo.value.code == ExitCode.RUNNING
    with pytest.raises(VzError) as excinfo:
        runc.delete("116")
    assert excinfo.value.code == ExitCode.RUNNING
    state = runc.state("116")
    assert state is not None
    assert state.status == "running"

    bundle = engine.bundle("117", ["/no/such/init"])
    with pytest.raises(VzError) as excinfo:
        runc.start("117", bundle)
    assert "/no/such/init" in excinfo.value.message
    assert "level=error" not in excinfo.value.message  # runc's log noise is stripped
    assert runc.state("117") is None  # the half-made container was removed


def test_missing_runc_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("vzpkg.procenv.BASE_PATH", str(tmp_path))
    with pytest.raises(VzError) as excinfo:
        Runc(tmp_path / "state").list_containers()
    assert excinfo.value.code == ExitCode.TOOL_MISSING
    assert excinfo.value.hint == "apt-get install runc"
