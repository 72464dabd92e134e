"""runc's view of a container, read from runc's state directory instead of running ``runc state``.

``runc state`` costs a Go process start (5-10 ms) and vzctl asks it several times per command.
The answer is in files: ``<root>/<id>/state.json`` (written by runc; libcontainer's format) names
the init's pid and its start time; the container is

- stopped when that process is gone, a zombie, or a different process with the same pid
  (its start time, field 22 of /proc/PID/stat, differs);
- created while runc's ``exec.fifo`` is still in the state directory (init waits on it);
- paused while its freezer cgroup says FROZEN (v2: cgroup.freeze is 1);
- running otherwise,

as runc itself decides. Whatever does not look like that format raises UnknownFormat, and the
caller asks runc (so a runc that changes its files degrades to slower, never to wrong). Light to
import (os and json): vzctl's exec fast path uses it.
"""

from __future__ import annotations

import json
import os

STATE_FILE = "state.json"
EXEC_FIFO = "exec.fifo"


class UnknownFormat(Exception):
    """The state directory does not look like runc 1.x's: ask runc instead."""


class RawState:
    """status: created, running, paused or stopped; pid: init's (0 when stopped); bundle: the
    OCI bundle directory runc recorded. (A plain class: typing costs 2 ms to import.)"""

    __slots__ = ("bundle", "pid", "status")

    def __init__(self, status: str, pid: int, bundle: str | None) -> None:
        self.status, self.pid, self.bundle = status, pid, bundle

    def __repr__(self) -> str:
        return f"RawState({self.status!r}, {self.pid}, {self.bundle!r})"


def read_state(state_root: str | os.PathLike[str], container: str) -> RawState | None:
    """The container's state, or None when runc does not know it (no state directory)."""
    directory = os.path.join(os.fspath(state_root), container)
    try:
        with open(os.path.join(directory, STATE_FILE), "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        if not os.path.isdir(directory):
            return None
        raise UnknownFormat(f"{directory} has no {STATE_FILE} (being created?)") from None
    except (OSError, ValueError) as e:
        raise UnknownFormat(f"{directory}/{STATE_FILE}: {e}") from None
    try:
        pid = int(data["init_process_pid"])
        start = int(data["init_process_start"])
        cgroups = data.get("cgroup_paths") or {}
        freezer = cgroups.get("freezer"), cgroups.get("")
        labels = (data.get("config") or {}).get("labels") or []
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UnknownFormat(f"{directory}/{STATE_FILE}: unexpected content ({e})") from None
    bundle = next((x[len("bundle=") :] for x in labels if str(x).startswith("bundle=")), None)
    if _process_start(pid) != start:
        return RawState("stopped", 0, bundle)
    if _frozen(freezer):
        return RawState("paused", pid, bundle)
    if os.path.exists(os.path.join(directory, EXEC_FIFO)):
        return RawState("created", pid, bundle)
    return RawState("running", pid, bundle)


def cgroup_pids(state_root: str | os.PathLike[str], container: str) -> list[int] | None:
    """Host pids of every process in the container's cgroup and the cgroups below it, as
    ``runc ps`` lists them (v1: the devices hierarchy; v2: the unified one); None when the
    state files do not say where that cgroup is (the caller asks runc)."""
    path = os.path.join(os.fspath(state_root), container, STATE_FILE)
    try:
        with open(path, "rb") as f:
            cgroups = json.loads(f.read())["cgroup_paths"]
        top = cgroups.get("devices") or cgroups.get("")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(top, str) or not os.path.isdir(top):
        return None
    from vzpkg.cgroups import procs_below

    return procs_below(top)


def _process_start(pid: int) -> int | None:
    """Start time of a live (not zombie, not dead) process ``pid``; None when there is none."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields follow the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X", b"x"):
        return None
    return int(fields[19])


def _frozen(paths: tuple[object, object]) -> bool:
    """From the v1 freezer cgroup when there is one, else from the v2 cgroup's cgroup.freeze."""
    v1, v2 = paths
    if isinstance(v1, str) and v1:
        where, frozen = os.path.join(v1, "freezer.state"), b"FROZEN"
    elif isinstance(v2, str) and v2:
        where, frozen = os.path.join(v2, "cgroup.freeze"), b"1"
    else:
        return False
    try:
        with open(where, "rb") as f:
            return f.read().strip() == frozen
    except OSError:
        return False


def query(state_root: str | os.PathLike[str], container: str, runc: str) -> RawState | None:
    """The container's state from runc's files; from ``runc state`` when they are not in the
    format known here (slower, never wrong). None when runc does not know the container."""
    try:
        return read_state(state_root, container)
    except UnknownFormat:
        pass
    import subprocess  # lazy: the fallback is rare

    from vzpkg import run
    from vzpkg.errors import VzError

    argv = [runc, "--root", os.fspath(state_root), "state", container]
    proc = run.run(argv, stdout=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        if b"not exist" in (proc.stderr or b""):
            return None
        raise VzError(
            f"cannot query container {container}: "
            + run.failure_message(argv, proc.returncode, proc.stderr)
        )
    try:
        data = json.loads(proc.stdout)
        return RawState(str(data["status"]), int(data.get("pid") or 0), data.get("bundle"))
    except (ValueError, KeyError, TypeError) as e:
        raise VzError(f"runc state {container}: unreadable output: {e}") from None


def cgroup_paths(state_root: str | os.PathLike[str], container: str) -> dict[str, str]:
    """The container's cgroup directories by hierarchy, as runc recorded them (``""``: the
    unified v2 hierarchy, ``name=systemd``: systemd's named v1 one); empty when unknown."""
    path = os.path.join(os.fspath(state_root), container, STATE_FILE)
    try:
        with open(path, "rb") as f:
            paths = json.loads(f.read())["cgroup_paths"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(paths, dict):
        return {}
    return {str(k): v for k, v in paths.items() if isinstance(v, str)}
