"""Interrupts (^C, SIGTERM, SIGHUP) around steps that must not be cut in half.

SIGTERM is turned into an exception (``Terminated``) at every command's edge, so that cleanup
stacks unwind as for ^C. Inside ``deferred()`` all three are only recorded: a step that cannot
be undone half way (``runc run`` creating a VPS) completes, and the caller then sees what
arrived meanwhile.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, NoReturn

DEFERRED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that cleanup stacks unwind as for Ctrl-C."""


def raise_terminated(signum: int, frame: FrameType | None) -> NoReturn:
    raise Terminated()


@contextlib.contextmanager
def deferrable() -> Iterator[Callable[[], None]]:
    """Like ``deferred``, but from a point inside the block on: yields ``begin``; signals are
    acted on as usual until it is called, recorded from then on to the end of the block.

    For a step whose point of no return lies inside nested blocks that must finish too (a
    start's ``runc run`` inside the Guardian that commits after it)."""
    saved: dict[int, Any] = {}
    pending: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    def begin() -> None:
        if not saved and threading.current_thread() is threading.main_thread():
            saved.update({sig: signal.signal(sig, record) for sig in DEFERRED})

    try:
        yield begin
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def deferred() -> Iterator[list[int]]:
    """Record SIGINT, SIGTERM and SIGHUP instead of acting on them for the duration of the
    block; yields the list of the signals that arrived."""
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending  # signal handlers belong to the main thread
        return

    def record(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    saved = {sig: signal.signal(sig, record) for sig in DEFERRED}
    try:
        yield pending
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def held_back() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP blocked for the duration of the block (a fork): Python runs
    code of its own around a fork (at-fork hooks), where an exception from our handlers would
    be printed and dropped. Blocked, they arrive when the block ends, in our code. A child
    forked meanwhile starts with them blocked: it unblocks them (``unblock``) once it has set
    its own handlers."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def unblock() -> None:
    """In a child forked under ``held_back``: let the signals through again."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, DEFERRED)


def caused_by_interrupt(error: BaseException) -> bool:
    """Whether ``error`` is a ^C or SIGTERM, or was caused by one: Python wraps a
    KeyboardInterrupt raised in some places (a class body's ``__set_name__`` while a module is
    imported) in a RuntimeError."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt | Terminated):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
