"""runc's state read from its files: each status from what runc itself looks at, and anything
unfamiliar reported as such (the caller then asks runc) rather than guessed."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vzpkg.ct.runcstate import UnknownFormat, cgroup_pids, read_state


def start_time(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return int(stat[stat.rfind(b")") + 2 :].split()[19])


def write_state(root: Path, pid: int, start: int, **extra: object) -> Path:
    directory = root / "vz101"
    directory.mkdir(parents=True, exist_ok=True)
    data = {
        "id": "vz101",
        "init_process_pid": pid,
        "init_process_start": start,
        "config": {"labels": ["bundle=/run/vzpkg/ct/101"]},
        "cgroup_paths": {},
        **extra,
    }
    (directory / "state.json").write_text(json.dumps(data))
    return directory


@pytest.fixture
def sleeper() -> Iterator[int]:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_unknown_container_is_none(tmp_path: Path) -> None:
    assert read_state(tmp_path, "vz101") is None


def test_live_init_with_the_recorded_start_time_is_running(tmp_path: Path, sleeper: int) -> None:
    write_state(tmp_path, sleeper, start_time(sleeper))
    state = read_state(tmp_path, "vz101")
    assert state is not None
    assert (state.status, state.pid, state.bundle) == ("running", sleeper, "/run/vzpkg/ct/101")


def test_exec_fifo_means_created(tmp_path: Path, sleeper: int) -> None:
    directory = write_state(tmp_path, sleeper, start_time(sleeper))
    os.mkfifo(directory / "exec.fifo")
    state = read_state(tmp_path, "vz101")
    assert state is not None and state.status == "created"


def test_a_reused_pid_is_not_the_init(tmp_path: Path, sleeper: int) -> None:
    write_state(tmp_path, sleeper, start_time(sleeper) - 1)
    state = read_state(tmp_path, "vz101")
    assert state is not None and (state.status, state.pid) == ("stopped", 0)


def test_gone_or_zombie_init_is_stopped(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    pid = proc.pid
    while Path(f"/proc/{pid}/stat").read_bytes().split(b") ")[1][:1] != b"Z":
        pass  # exited but not reaped: a zombie
    write_state(tmp_path, pid, start_time(pid))
    state = read_state(tmp_path, "vz101")
    assert state is not None and state.status == "stopped"
    proc.wait()
    state = read_state(tmp_path, "vz101")
    assert state is not None and state.status == "stopped"


@pytest.mark.parametrize(("v1", "content", "paused"), [(True, "FROZEN", True),
    (True, "THAWED", False), (False, "1", True), (False, "0", False)])  # fmt: skip
def test_freezer_says_paused(
    tmp_path: Path, sleeper: int, v1: bool, content: str, paused: bool
) -> None:
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / ("freezer.state" if v1 else "cgroup.freeze")).write_text(content + "\n")
    paths = {"freezer": str(cgroup)} if v1 else {"": str(cgroup)}
    write_state(tmp_path, sleeper, start_time(sleeper), cgroup_paths=paths)
    state = read_state(tmp_path, "vz101")
    assert state is not None and state.status == ("paused" if paused else "running")


@pytest.mark.parametrize("content", ["not json", "[]", '{"id": "vz101"}',
    '{"init_process_pid": "x", "init_process_start": 1}'])  # fmt: skip
def test_unfamiliar_files_are_unknown_format(tmp_path: Path, content: str) -> None:
    (tmp_path / "vz101").mkdir()
    (tmp_path / "vz101" / "state.json").write_text(content)
    with pytest.raises(UnknownFormat):
        read_state(tmp_path, "vz101")


def test_directory_without_state_file_is_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "vz101").mkdir()  # runc is creating it right now
    with pytest.raises(UnknownFormat):
        read_state(tmp_path, "vz101")


def test_cgroup_pids_walks_the_cgroup_and_those_below(tmp_path: Path) -> None:
    top = tmp_path / "devices" / "vzpkg" / "101"
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "cgroup.procs").write_text("10\n11\n")
    (top / "sub" / "cgroup.procs").write_text("")
    (top / "sub" / "deeper" / "cgroup.procs").write_text("12\n")
    write_state(tmp_path, 1, 1, cgroup_paths={"devices": str(top), "pids": "/elsewhere"})
    assert sorted(cgroup_pids(tmp_path, "vz101") or []) == [10, 11, 12]
    write_state(tmp_path, 1, 1, cgroup_paths={"": str(top)})  # cgroup v2
    assert sorted(cgroup_pids(tmp_path, "vz101") or []) == [10, 11, 12]


def test_cgroup_pids_unknown_is_none(tmp_path: Path) -> None:
    assert cgroup_pids(tmp_path, "vz101") is None  # no such container
    write_state(tmp_path, 1, 1, cgroup_paths={"memory": "/x"})  # no devices, no v2 path
    assert cgroup_pids(tmp_path, "vz101") is None
    write_state(tmp_path, 1, 1, cgroup_paths={"devices": str(tmp_path / "gone")})
    assert cgroup_pids(tmp_path, "vz101") is None
