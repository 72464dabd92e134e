"""The one place that runs external programs.

argv lists only, never shell strings; stdin from /dev/null unless given; a small rebuilt
environment; a pasteable ``+ argv`` line at debug level. A missing program becomes a user error
naming the Debian package that provides it. Children die with us (PR_SET_PDEATHSIG) so a killed
vzpkg never leaves a bootstrap tool writing into a directory that the next run sweeps away.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from vzpkg import interrupts, procenv
from vzpkg.errors import ExitCode, VzError
from vzpkg.procenv import BASE_PATH as BASE_PATH
from vzpkg.procenv import PASSTHROUGH_ENV as PASSTHROUGH_ENV
from vzpkg.procenv import base_env as base_env
from vzpkg.procenv import which
from vzpkg.syscalls import enter_userns, set_parent_death_signal

log = logging.getLogger("vzpkg")

# Program -> Debian package providing it, for "not found" hints.
PACKAGE_OF: dict[str, str] = {
    "mmdebstrap": "mmdebstrap",
    "debootstrap": "debootstrap",
    "tar": "tar",
    "unshare": "util-linux",
    "chroot": "coreutils",
    "dnf": "dnf",
    "rpm": "rpm",
    "runc": "runc",
    "gpg": "gpg",
    "gpgv": "gpgv",
    "zstd": "zstd",
}


def find_tool(name: str) -> str | None:
    return which(name, procenv.BASE_PATH + ":" + os.environ.get("PATH", ""))


def check_tool(name: str, reason: str, package: str | None = None) -> str:
    """Return the path of ``name`` or fail with a hint naming the package to install."""
    path = find_tool(name)
    if path is None:
        pkg = package or PACKAGE_OF.get(name, name)
        raise VzError(
            f"{name} is needed {reason} but is not installed",
            ExitCode.TOOL_MISSING,
            hint=f"apt-get install {pkg}",
        )
    return path


# Descriptors every program started by run() inherits: a Guardian's pipe (vzpkg.guard), so
# that its undo also waits for the programs of the operation it guards. Without that, a
# `runc run` or `mount` still running after vzctl was killed would act after the undo.
_INHERITED_FDS: list[int] = []


def inherit_in_children(fd: int) -> None:
    _INHERITED_FDS.append(fd)


def stop_inheriting(fd: int) -> None:
    with contextlib.suppress(ValueError):
        _INHERITED_FDS.remove(fd)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = subprocess.PIPE,
    check: bool = True,
    error_code: ExitCode = ExitCode.FAILURE,
    error_hint: str | None = None,
    input: bytes | None = None,
    own_process_group: bool = False,
    die_with_us: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """Run a program to completion. On failure raise VzError carrying its stderr's tail.

    Short commands only: long jobs go through spawn / run_streaming, whose children die with
    us (a preexec hook here would cost a real fork on every runc or mount call).
    ``own_process_group``: the terminal's ^C does not reach the program. ``die_with_us``: it
    is killed when we are (a removal that must not go on after vzctl was killed)."""
    args = [os.fspath(a) for a in argv]
    log.debug("+ %s", shlex.join(args))
    if input is not None:
        stdin = None
    # A preexec function makes Python run at-fork hooks: hold interrupts back around it.
    holding = interrupts.held_back() if die_with_us else contextlib.nullcontext()
    try:
        with holding:
            proc = subprocess.run(
                args,
                env=base_env(env),
                cwd=cwd,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                input=input,
                check=False,
                pass_fds=tuple(_INHERITED_FDS),
                process_group=0 if own_process_group else None,
                preexec_fn=_dying_child if die_with_us else None,
            )
    except FileNotFoundError:
        raise _not_found(args[0]) from None
    if check and proc.returncode != 0:
        raise VzError(
            failure_message(args, proc.returncode, proc.stderr), error_code, hint=error_hint
        )
    return proc


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
    userns_fd: int | None = None,
    own_process_group: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a program that runs alongside us (e.g. tar feeding a compressor). With
    ``userns_fd`` it runs as root of that user namespace (a VPS's ids, not the host's);
    ``own_process_group``: the terminal's ^C does not reach it."""
    args = [os.fspath(a) for a in argv]
    log.debug("+ %s%s", shlex.join(args), "" if userns_fd is None else " (in the VPS's ids)")

    def prepare() -> None:
        interrupts.unblock()
        set_parent_death_signal()
        if userns_fd is not None:
            enter_userns(userns_fd)

    try:
        with interrupts.held_back():  # a fork with a preexec function runs at-fork hooks
            return subprocess.Popen(
                args,
                env=base_env(env),
                cwd=cwd,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                preexec_fn=prepare,  # runs before subprocess closes the other fds
                process_group=0 if own_process_group else None,
            )
    except FileNotFoundError:
        raise _not_found(args[0]) from None


def _dying_child() -> None:
    interrupts.unblock()
    set_parent_death_signal()


def _not_found(program: str) -> VzError:
    name = os.path.basename(program)
    return VzError(
        f"{name}: command not found",
        ExitCode.TOOL_MISSING,
        hint=f"apt-get install {PACKAGE_OF.get(name, name)}",
    )


def failure_message(args: Sequence[str], returncode: int, stderr: bytes | None) -> str:
    name = os.path.basename(args[0])
    if returncode < 0:
        what = f"{name} was killed by signal {signal.Signals(-returncode).name}"
    else:
        what = f"{name} failed with exit code {returncode}"
    tail = ""
    if stderr:
        lines = stderr.decode(errors="replace").strip().splitlines()
        tail = "\n" + "\n".join("  " + line for line in lines[-15:])
    return what + tail


def run_streaming(
    argv: Sequence[str | os.PathLike[str]],
    *,
    on_line: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    error_code: ExitCode = ExitCode.FAILURE,
    error_hint: str | None = None,
    name: str | None = None,
) -> None:
    """Run a long job, handing each line of its output (stdout and stderr) to ``on_line``.

    The last lines are kept for the error message when it fails, which names the program as
    ``name`` (when argv[0] is only a wrapper around it).
    """
    proc = spawn(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail: collections.deque[str] = collections.deque(maxlen=25)
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                tail.append(line)
                on_line(line)
    except BaseException:
        proc.kill()  # interrupted: do not leave it running behind us
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    returncode = proc.wait()
    if returncode != 0:
        args = [name or os.fspath(argv[0]), *(os.fspath(a) for a in argv[1:])]
        raise VzError(
            failure_message(args, returncode, "\n".join(tail).encode()), error_code, hint=error_hint
        )
