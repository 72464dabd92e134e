"""Driving runc: start, state, signal, exec, stop and delete a VPS's container.

The container of VPS ``CTID`` is named ``vz<CTID>`` (``container_id``) in runc's state directory
``--root`` (``RUN_DIR/runc``), so that a ``runc list`` on the host tells VPSs apart from
whatever else uses that runc; a CTID alone (``101``) would also be an unhelpful name there.

``start`` runs ``runc run --detach`` with stdio on /dev/null: runc exits once init runs, init is
reparented to the host's init (or the nearest subreaper), and no supervisor process of ours
stays behind. Every later operation asks afresh (runc's state files, see runcstate); nothing
is cached here.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal as signals
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vzpkg import fsutil, run
from vzpkg.ct import runcargv, runcstate
from vzpkg.ct.ids import CONTAINER_PREFIX as CONTAINER_PREFIX
from vzpkg.ct.ids import container_id as container_id
from vzpkg.errors import ExitCode, VzError

POLL_INTERVAL = 0.05  # seconds between state polls where the kernel has no pidfd_open
KILL_GRACE = 10.0  # seconds to wait for SIGKILL to take everything down
RESEND = 2.0  # seconds between SIGTERMs to an init that has not gone yet
_NOT_FOUND = ("does not exist", "not exist")
_NOT_RUNNING = ("not running", "is stopped")
_NOT_STOPPED = "that is not stopped"  # runc delete of a running container
_LOG_NAME = "runc.log"


def signal_number(name: str | int) -> int:
    """A signal as runc 1.1 takes it: a number (it cannot parse ``RTMIN+3``, systemd's halt).

    Accepts ``TERM``, ``SIGTERM``, ``PWR``, ``RTMIN+3`` (glibc's SIGRTMIN, as systemd counts)
    and plain numbers.
    """
    if isinstance(name, int):
        return name
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    for base, anchor in (("SIGRTMIN", signals.SIGRTMIN), ("SIGRTMAX", signals.SIGRTMAX)):
        if text.startswith(base):
            rest = text[len(base) :]
            try:
                offset = int(rest) if rest else 0
            except ValueError:
                break
            number = int(anchor) + offset
            if signals.SIGRTMIN <= number <= signals.SIGRTMAX:
                return number
            break
    try:
        return int(signals.Signals[text])
    except KeyError:
        raise VzError(f"unknown signal {name!r}", ExitCode.INVALID_ARGUMENT) from None


@dataclass(frozen=True)
class ContainerState:
    """What ``runc state`` says. ``status`` is created, running, paused or stopped."""

    id: str
    status: str
    pid: int
    bundle: Path | None

    @property
    def is_active(self) -> bool:
        """Init exists: running, paused (frozen) or created (not started yet)."""
        return self.status in ("running", "paused", "created")


def parse_state(text: str | bytes) -> ContainerState:
    data: Any = json.loads(text)
    if not isinstance(data, dict) or "status" not in data:
        raise ValueError("runc state: not a container state object")
    bundle = data.get("bundle")
    return ContainerState(
        id=str(data.get("id", "")),
        status=str(data["status"]),
        pid=int(data.get("pid") or 0),
        bundle=Path(bundle) if bundle else None,
    )


def write_bundle(bundle_dir: Path, config: dict[str, Any]) -> Path:
    """Write ``bundle_dir/config.json`` atomically (temp in the same directory, fsync, rename,
    fsync the directory); the directory is created (mode 0700) when missing."""
    bundle_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    target = bundle_dir / "config.json"
    fsutil.atomic_write(target, data, 0o600)
    return target


CtId = int | str  # a CTID as a number or as its text


def _stderr_text(stderr: bytes | None) -> str:
    return (stderr or b"").decode(errors="replace")


class Runc:
    """runc with its own state directory (``runc --root state_root``)."""

    def __init__(self, state_root: Path, runc: str | None = None) -> None:
        self.state_root = state_root
        self._runc = runc

    @property
    def runc(self) -> str:
        if self._runc is None:
            self._runc = runcargv.find_runc()
        return self._runc

    def _argv(self, *args: str | os.PathLike[str]) -> list[str]:
        return runcargv.runc_argv(self.runc, self.state_root, *args)

    def _run(
        self, ctid: CtId, what: str, *args: str | os.PathLike[str]
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a runc subcommand capturing its output; failures become VzError naming CTID."""
        proc = run.run(self._argv(*args), stdout=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            raise self._error(ctid, what, proc.returncode, proc.stderr)
        return proc

    def _error(
        self,
        ctid: CtId,
        what: str,
        returncode: int,
        stderr: bytes | None,
        code: ExitCode | None = None,
    ) -> VzError:
        """A VzError with runc's messages; the code is told from them unless given."""
        text = _stderr_text(stderr)
        if code is None:
            code = ExitCode.FAILURE
            if any(s in text for s in _NOT_FOUND + _NOT_RUNNING):
                code = ExitCode.NOT_RUNNING
            elif _NOT_STOPPED in text:
                code = ExitCode.RUNNING
        message = run.failure_message([self.runc], returncode, _log_messages(stderr or b""))
        return VzError(f"cannot {what} container {container_id(ctid)}: {message}", code)

    # --- lifecycle -------------------------------------------------------------------------

    def start(
        self,
        ctid: CtId,
        bundle: Path,
        before_init: Callable[[ContainerState], None] | None = None,
    ) -> ContainerState:
        """Start the container; returns once init runs; nothing of ours stays behind.

        Without ``before_init``, one ``runc run --detach``. With it, ``runc create`` (the
        container's namespaces and cgroups exist, init waits), ``before_init(state)`` (what
        must be ready before init: delegated cgroups, later the network), ``runc start``.
        runc's own messages go to ``bundle/runc.log``: its stdio is handed on to init, so a
        pipe there would never reach EOF while the VPS runs. runc runs in a process group of
        its own: a ^C on our terminal must not cut it off half way (vzctl defers its own).
        """
        current = self.state(ctid)
        if current is not None:
            if current.is_active:
                raise VzError(
                    f"container {container_id(ctid)} is already running", ExitCode.RUNNING
                )
            # A stopped leftover (init died by itself) blocks the name: clear it first.
            self.delete(ctid, force=True)
        self.state_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = bundle / _LOG_NAME
        with contextlib.suppress(FileNotFoundError):
            log_path.unlink()
        try:
            if before_init is None:
                self._detached(ctid, log_path, "run", "--detach", "--bundle", bundle)
            else:
                self._detached(ctid, log_path, "create", "--bundle", bundle)
                created = self.state(ctid)
                if created is None:
                    raise VzError(f"runc create made no container {container_id(ctid)}")
                before_init(created)
                self._detached(ctid, log_path, "start")
        except BaseException:
            # A half-created container (cgroup made, init failed) must not block the next try.
            with contextlib.suppress(VzError):
                self.delete(ctid, force=True)
            raise
        # Best effort (an init that dies a moment later is seen by the next state()), but it
        # catches the usual case of an init that cannot run in this root at all.
        state = self.state(ctid)
        if state is None or state.status != "running":
            with contextlib.suppress(VzError):
                self.delete(ctid, force=True)
            raise VzError(
                f"the init of container {container_id(ctid)} exited right after start",
                ExitCode.FAILURE,
            )
        return state

    def _detached(self, ctid: CtId, log_path: Path, *args: str | os.PathLike[str]) -> None:
        """A runc command whose stdio belongs to the container: /dev/null, messages in the log."""
        name = args[0]
        argv = self._argv("--log", log_path, "--log-format", "text", *args, container_id(ctid))
        proc = run.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            own_process_group=True,
        )
        if proc.returncode != 0:
            tail = log_path.read_bytes() if log_path.exists() else b""
            raise self._error(
                ctid,
                "start" if name == "run" else str(name),
                proc.returncode,
                tail,
                ExitCode.FAILURE,
            )

    def state(self, ctid: CtId) -> ContainerState | None:
        """runc's view of the container; None when runc does not know it.

        Read from runc's state directory (vzpkg.ct.runcstate); ``runc state`` is asked only
        when those files are not in the format known there.
        """
        raw = runcstate.query(self.state_root, container_id(ctid), self.runc)
        if raw is None:
            return None
        bundle = Path(raw.bundle) if raw.bundle else None
        return ContainerState(container_id(ctid), raw.status, raw.pid, bundle)

    def runc_state(self, ctid: CtId) -> ContainerState | None:
        """``runc state`` itself (what ``state`` reads from files); None when unknown."""
        proc = run.run(self._argv("state", container_id(ctid)), stdout=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            if any(s in _stderr_text(proc.stderr) for s in _NOT_FOUND):
                return None
            raise self._error(ctid, "query", proc.returncode, proc.stderr)
        try:
            return parse_state(proc.stdout)
        except ValueError as e:
            raise VzError(f"runc state {container_id(ctid)}: unreadable output: {e}") from None

    def list_containers(self) -> list[ContainerState]:
        """Every container in our state root (not only VPSs: the ids are runc's)."""
        proc = run.run(self._argv("list", "--format", "json"), stdout=subprocess.PIPE)
        data: Any = json.loads(proc.stdout or b"null") or []
        return [parse_state(json.dumps(item)) for item in data]

    def known_ids(self) -> list[str]:
        """Names of the containers in our state root, as ``runc list`` finds them (one
        directory each), without running runc."""
        try:
            return sorted(p.name for p in self.state_root.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []

    def update(self, ctid: CtId, args: Sequence[str]) -> None:
        """``runc update``: the running container's cgroup limits (vzpkg.ct.resources)."""
        self._run(ctid, "update the limits of", "update", *args, container_id(ctid))

    def kill(self, ctid: CtId, signal: str | int, all: bool = False) -> None:
        """Signal init, or with ``all`` every process of the container."""
        args: list[str] = ["kill"]
        if all:
            args.append("--all")
        args += [container_id(ctid), str(signal_number(signal))]
        self._run(ctid, "signal", *args)

    def delete(self, ctid: CtId, force: bool = False) -> None:
        """Remove the container's runc state and cgroups; ``force`` kills it first if running.

        With ``force`` an unknown container is not an error (runc treats it so too).
        """
        args = ["delete"]
        if force:
            args.append("--force")
        self._run(ctid, "delete", *args, container_id(ctid))

    def pids(self, ctid: CtId) -> list[int]:
        """Host pids of every process in the container (from its cgroup; ``runc ps`` only when
        runc's state files are not in the format runcstate knows)."""
        found = runcstate.cgroup_pids(self.state_root, container_id(ctid))
        if found is not None:
            return found
        proc = self._run(ctid, "list processes of", "ps", "--format", "json", container_id(ctid))
        data: Any = json.loads(proc.stdout or b"null") or []
        return [int(p) for p in data]

    def wait_stopped(self, ctid: CtId, timeout: float) -> bool:
        """Wait until init is gone (runc says stopped, or forgot the container): woken by the
        init's exit itself (a pidfd), not by polling."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(ctid)
            if state is None or state.status == "stopped":
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # At most a second per wait: a pid reused under us costs no more than that.
            _wait_for_exit(state.pid, min(remaining, 1.0))

    def stop(self, ctid: CtId, graceful_signal: str | int, timeout: float) -> str:
        """Stop the container: ``graceful_signal`` to init and up to ``timeout`` seconds, then
        SIGKILL to every process, then ``runc delete --force``.

        Returns "graceful" when init went by itself (also when it had already gone before we
        asked), "killed" when SIGKILL was needed. Raises NOT_RUNNING if runc does not know it.
        """
        graceful = signal_number(graceful_signal)  # a typo must fail now, not after timeout
        state = self.state(ctid)
        if state is None:
            raise VzError(f"container {container_id(ctid)} is not running", ExitCode.NOT_RUNNING)
        how = "graceful"
        if state.status != "stopped":
            if state.status == "paused":
                self._run(ctid, "resume", "resume", container_id(ctid))
            with contextlib.suppress(VzError):  # init may go between state and kill
                self.kill(ctid, graceful)
            if not self._wait_resending(ctid, graceful, timeout):
                how = "killed"
                with contextlib.suppress(VzError):
                    self.kill(ctid, "KILL", all=True)
                if not self.wait_stopped(ctid, KILL_GRACE):
                    raise VzError(
                        f"container {container_id(ctid)} did not stop even after SIGKILL "
                        f"(processes stuck in the kernel?)",
                        ExitCode.FAILURE,
                    )
        self.delete(ctid, force=True)
        return how

    def _wait_resending(self, ctid: CtId, graceful: int, timeout: float) -> bool:
        """``wait_stopped``, sending SIGTERM again every RESEND seconds: an init that had no
        handler yet when the first came (a PID 1 drops what it does not handle) gets another.
        Other stop signals are sent once (sysvinit would run its power-fail action again)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if self.wait_stopped(ctid, max(0.0, min(RESEND, remaining))):
                return True
            if remaining <= RESEND:
                return False
            if graceful == signals.SIGTERM:
                with contextlib.suppress(VzError):
                    self.kill(ctid, graceful)

    # --- exec ------------------------------------------------------------------------------

    def exec_argv(
        self,
        ctid: CtId,
        argv: Sequence[str],
        *,
        tty: bool = False,
        env: Sequence[tuple[str, str]] = (),
        cwd: str = "/",
    ) -> list[str]:
        """argv of ``runc exec`` running ``argv`` in the container (vzpkg.ct.runcargv)."""
        return runcargv.exec_argv(
            self.runc, self.state_root, container_id(ctid), argv, tty=tty, env=env, cwd=cwd
        )

    def exec(
        self,
        ctid: CtId,
        argv: Sequence[str],
        tty: bool = False,
        env: Sequence[tuple[str, str]] = (),
    ) -> int:
        """Run ``argv`` in the running container with our stdio; its exit code."""
        state = self.state(ctid)
        if state is None or state.status != "running":
            raise VzError(f"container {container_id(ctid)} is not running", ExitCode.NOT_RUNNING)
        return run_attached(self.exec_argv(ctid, argv, tty=tty, env=env), tty=tty)


def run_attached(argv: Sequence[str], *, tty: bool = False) -> int:
    """Run a ``runc exec`` command line with our stdin/stdout/stderr; its exit code (128+n
    when killed by signal n, as runc reports it)."""
    if tty and not has_controlling_terminal():
        # runc would fail with "open /dev/tty: no such device or address".
        raise VzError(
            "a terminal was asked for, but this process has no controlling terminal",
            ExitCode.INVALID_ARGUMENT,
        )
    proc = run.spawn(argv, stdin=None)
    # Like system(3): a ^C or ^\ from the terminal is the command's (runc forwards it), not a
    # reason for us to abandon runc and leave the command running unattended.
    with _ignoring_terminal_signals():
        return proc.wait()


def _wait_for_exit(pid: int, seconds: float) -> None:
    """Return when process ``pid`` has exited or ``seconds`` have passed (whichever first)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # gone already
    except OSError:  # no pidfd on this kernel: poll
        time.sleep(min(seconds, POLL_INTERVAL))
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll(max(1, int(seconds * 1000)))
    finally:
        os.close(fd)


@contextlib.contextmanager
def _ignoring_terminal_signals() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signals.signal(sig, signals.SIG_IGN) for sig in (signals.SIGINT, signals.SIGQUIT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signals.signal(sig, handler)


def has_controlling_terminal() -> bool:
    """runc exec --tty puts our terminal in raw mode through /dev/tty: it needs one."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _log_messages(log: bytes) -> bytes:
    """The ``msg=...`` parts of runc's text log (its lines are logrus key=value records)."""
    lines = []
    for raw in log.decode(errors="replace").splitlines():
        marker = raw.find(' msg="')
        if marker >= 0:
            msg = raw[marker + 6 :]
            end = msg.rfind('"')
            lines.append(msg[:end] if end >= 0 else msg)
        elif raw.strip():
            lines.append(raw)
    return "\n".join(lines).encode()
