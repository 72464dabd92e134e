"""The Guardian undoes an operation whose process died, and only then."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import sys, time
from pathlib import Path
from vzpkg.guard import Guardian

out = Path(sys.argv[1])
def undo(seen):
    out.write_text("".join(sorted(b.decode() for b in seen)))

with Guardian(undo) as guard:
    guard.mark(b"p")
    if sys.argv[2] == "hang":
        print("ready", flush=True)
        time.sleep(60)
    elif sys.argv[2] == "raise":
        raise SystemExit(3)
print("done", flush=True)
"""


def run_child(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    out = tmp_path / "undone"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(out), mode], stdout=subprocess.PIPE, text=True
    )
    return proc, out


def wait_for(path: Path, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return True
        time.sleep(0.05)
    return False


def test_kill_9_of_the_operation_runs_the_undo(tmp_path: Path) -> None:
    proc, out = run_child(tmp_path, "hang")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert wait_for(out)
    assert out.read_text() == "p"  # it knew how far the operation got


def test_an_exception_runs_the_undo_before_returning(tmp_path: Path) -> None:
    proc, out = run_child(tmp_path, "raise")
    proc.communicate(timeout=10)
    assert proc.returncode == 3
    assert out.read_text() == "p"  # done by the time the process exited


def test_completion_runs_no_undo(tmp_path: Path) -> None:
    proc, out = run_child(tmp_path, "ok")
    stdout, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and stdout.strip() == "done"
    assert not out.exists()
