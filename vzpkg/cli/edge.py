"""The edge of every command: VzError into a message and an exit code, SIGTERM into an
exception, root checks. No click here: vzctl's short paths (vzctl_entry) use it too."""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn, ParamSpec, TypeVar

from vzpkg.errors import ExitCode, VzError
from vzpkg.interrupts import Terminated, raise_terminated

P = ParamSpec("P")
R = TypeVar("R")


def setup(debug: bool, quiet: bool = False) -> None:
    """Log to stderr: everything with ``debug``, only errors when ``quiet`` (vzctl -q)."""
    level = logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, raise_terminated)


def say(text: str) -> None:
    """A line for the user on stderr (stdout is for results)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def fail(error: VzError, prog: str) -> NoReturn:
    say(f"{prog}: {error.message}")
    if error.hint:
        say(f"{prog}: hint: {error.hint}")
    sys.exit(int(error.code))


def edge(prog: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn VzError into a message and exit code; tracebacks only with --debug.

    What slips past the specific messages still reaches the user as one: an OSError names the
    file and the system's reason (exit 3), anything else is an internal error (exit 1) whose
    traceback --debug shows.
    """

    def wrap(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return func(*args, **kwargs)
            except VzError as e:
                _debug_traceback()
                fail(e, prog)
            except (KeyboardInterrupt, Terminated):
                say(f"{prog}: interrupted")
                sys.exit(int(ExitCode.INTERRUPTED))
            except BrokenPipeError:  # the reader went (vzpkgls CTID | head): nothing to say
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(int(ExitCode.FAILURE))
            except OSError as e:
                _debug_traceback()
                fail(os_error(e), prog)
            except Exception as e:
                _debug_traceback()
                fail(
                    VzError(
                        f"internal error: {type(e).__name__}: {e}",
                        ExitCode.FAILURE,
                        hint="run it again with --debug for the traceback, and report it",
                    ),
                    prog,
                )

        return inner

    return wrap


def _debug_traceback() -> None:
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.exception("debug traceback")


_OS_HINTS = {
    errno.ENOSPC: "the filesystem is full: free some space on it, then try again",
    errno.EDQUOT: "a disk quota is exceeded: free some space, then try again",
    errno.EROFS: "the filesystem is mounted read-only",
    errno.EACCES: "permission denied: check the file's owner and mode",
    errno.EPERM: "the operation is not permitted here",
}


def os_error(error: OSError) -> VzError:
    """An OSError as the user sees it: the file, the system's reason, what to do."""
    where = f" ({error.filename})" if error.filename else ""
    return VzError(
        f"{error.strerror or error}{where}",
        ExitCode.SYSTEM,
        hint=_OS_HINTS.get(error.errno or 0, "run it again with --debug for details"),
    )


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise VzError(f"{what} needs root", ExitCode.PERMISSION, hint="run it as root (sudo)")
