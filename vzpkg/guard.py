"""Undo a half-done operation even when vzctl is killed with SIGKILL.

A ``Guardian`` forks a small watcher before the operation starts. The operation tells it how
far it got (``mark``) and, at the end, that it completed. If the pipe between them closes
before that (the parent died, however), the watcher runs the undo and exits. It inherits the
parent's lock fds, so the lock stays held until the undo is done: nobody sees the half state.

Programs the operation runs (vzpkg.run.run) inherit the pipe's write end too: after a kill -9
the watcher waits until they have exited as well (a `runc run` carries on by itself, and its
result decides what there is to undo). Once the operation completed, the watcher exits at the
COMMIT byte without waiting for anyone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable
from types import TracebackType

from vzpkg import interrupts, run

log = logging.getLogger("vzpkg")

COMMIT = b"\n"


class Guardian:
    def __init__(self, undo: Callable[[frozenset[bytes]], None]) -> None:
        self._undo = undo
        self._pid = 0
        self._write = -1

    def __enter__(self) -> Guardian:
        read, write = os.pipe()
        with interrupts.held_back():
            pid = os.fork()
            if pid == 0:  # the watcher
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                    signal.signal(sig, signal.SIG_IGN)  # Ctrl-C must not stop the clean-up
                interrupts.unblock()
        if pid == 0:
            os.close(write)
            seen: set[bytes] = set()
            with contextlib.suppress(OSError):
                while COMMIT not in seen and (chunk := os.read(read, 64)):
                    seen.update(chunk[i : i + 1] for i in range(len(chunk)))
            code = 0
            if COMMIT not in seen:
                try:
                    self._undo(frozenset(seen))
                except BaseException:
                    log.exception("undo of an interrupted operation failed")
                    code = 1
            os._exit(code)
        os.close(read)
        self._pid, self._write = pid, write
        run.inherit_in_children(write)
        return self

    def mark(self, flag: bytes) -> None:
        """Record that the operation reached a point (one byte, not COMMIT)."""
        os.write(self._write, flag)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run.stop_inheriting(self._write)
        if exc_type is None:
            os.write(self._write, COMMIT)
        os.close(self._write)  # without COMMIT: the watcher undoes now, while we wait
        os.waitpid(self._pid, 0)
