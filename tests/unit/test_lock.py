"""flock-based locks between processes: refusal names the holder, a timeout waits, and a killed
holder never leaves a stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vzpkg.errors import ExitCode, VzError
from vzpkg.lock import is_locked, locked

REPO = Path(__file__).resolve().parents[2]
LOCK_NAME = "cache-debian-12-x86_64-minimal"

# Holds the lock until its stdin is closed, after saying so on stdout.
HOLDER = """\
import sys
from pathlib import Path
from vzpkg.lock import locked
with locked(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()
"""

Holder = Callable[[], subprocess.Popen[str]]


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    return tmp_path / "lock"


@pytest.fixture
def start_holder(lock_dir: Path) -> Iterator[Holder]:
    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(lock_dir), LOCK_NAME],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        started.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "held\n"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()


def test_lock_is_exclusive_and_released(lock_dir: Path) -> None:
    with locked(lock_dir, LOCK_NAME) as path:
        assert is_locked(lock_dir, LOCK_NAME)
        assert path.read_text().startswith(f"pid {os.getpid()} ")
    assert not is_locked(lock_dir, LOCK_NAME)
    assert (lock_dir.stat().st_mode & 0o777) == 0o700


def test_second_acquisition_fails_at_once_naming_the_holder(
    lock_dir: Path, start_holder: Holder
) -> None:
    holder = start_holder()
    begin = time.monotonic()
    with pytest.raises(VzError) as raised, locked(lock_dir, LOCK_NAME, what="the cache"):
        pytest.fail("acquired a lock another process holds")
    assert time.monotonic() - begin < 1
    assert raised.value.code == ExitCode.LOCKED
    assert raised.value.message.startswith("the cache is locked by ")
    assert f"pid {holder.pid} " in raised.value.message


def test_timeout_expires_while_the_holder_keeps_the_lock(
    lock_dir: Path, start_holder: Holder
) -> None:
    start_holder()
    begin = time.monotonic()
    with pytest.raises(VzError) as raised, locked(lock_dir, LOCK_NAME, timeout=0.5):
        pytest.fail("acquired a lock another process holds")
    assert time.monotonic() - begin >= 0.5
    assert raised.value.code == ExitCode.LOCKED


def test_timeout_waits_until_the_holder_exits(
    lock_dir: Path, start_holder: Holder, caplog: pytest.LogCaptureFixture
) -> None:
    holder = start_holder()
    timer = threading.Timer(0.5, release, (holder,))
    begin = time.monotonic()
    timer.start()
    try:
        with locked(lock_dir, LOCK_NAME, timeout=30, on_wait="waiting for the cache") as path:
            waited = time.monotonic() - begin
            assert holder.wait(timeout=5) == 0
            assert path.read_text().startswith(f"pid {os.getpid()} ")
    finally:
        timer.cancel()
    assert waited >= 0.4
    # A warning (vzctl -q, which shows only errors, leaves it out).
    assert f"waiting for the cache (held by pid {holder.pid} " in caplog.text


def test_a_killed_holder_does_not_block(lock_dir: Path, start_holder: Holder) -> None:
    holder = start_holder()
    assert is_locked(lock_dir, LOCK_NAME)
    os.kill(holder.pid, signal.SIGKILL)
    assert holder.wait(timeout=5) == -signal.SIGKILL
    assert not is_locked(lock_dir, LOCK_NAME)
    with locked(lock_dir, LOCK_NAME) as path:
        assert path.read_text().startswith(f"pid {os.getpid()} ")


def test_names_are_kept_inside_the_lock_directory(lock_dir: Path) -> None:
    with locked(lock_dir, "../../escape/name") as path:
        assert path.parent == lock_dir
        assert path.name == ".._.._escape_name.lck"
