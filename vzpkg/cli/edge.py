"""The edge of every command: VzError into a message and an exit code, SIGTERM into an
exception, root checks. No click here: vzctl's short paths (vzctl_entry) use it too."""

from __future__ import annotations

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


def setup(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(message)s", stream=sys.stderr
    )
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
    """Turn VzError into a message and exit code; tracebacks only with --debug."""

    def wrap(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return func(*args, **kwargs)
            except VzError as e:
                if logging.getLogger().isEnabledFor(logging.DEBUG):
                    logging.exception("debug traceback")
                fail(e, prog)
            except (KeyboardInterrupt, Terminated):
                say(f"{prog}: interrupted")
                sys.exit(int(ExitCode.INTERRUPTED))

        return inner

    return wrap


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise VzError(f"{what} needs root", ExitCode.PERMISSION, hint="run it as root (sudo)")
