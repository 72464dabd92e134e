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
    elif sys.argv[2] == "program":
        from vzpkg import run
        # A program that outlives us, like a runc run when vzctl is killed.
        script = 'echo ready; sleep 1; echo finished > "$0"'
        proc = run.run(["sh", "-c", script, str(out) + ".program"], stdout=None, stderr=None)
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


def test_the_undo_waits_for_programs_the_operation_started(tmp_path: Path) -> None:
    """vzctl killed while `runc run` runs: the undo must see what runc did, not race it."""
    proc, out = run_child(tmp_path, "program")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"  # the program runs
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    program_done = tmp_path / "undone.program"
    assert not program_done.exists()
    assert wait_for(out)
    assert program_done.read_text() == "finished\n"  # the undo ran after the program ended
    assert out.read_text() == "p"


def test_completion_does_not_wait_for_leftover_holders(tmp_path: Path) -> None:
    """A completed operation returns at once, even if a program it started left a process
    behind that still holds the pipe (as a daemonizing tool would)."""
    pid_file = tmp_path / "leftover.pid"
    code = CHILD.replace(
        '    guard.mark(b"p")\n',
        '    guard.mark(b"p")\n'
        "    from vzpkg import run\n"
        f"    run.run(['sh', '-c', 'sleep 30 >/dev/null 2>&1 & echo $! > {pid_file}'])\n",
    )
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "undone"), "ok"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "done"
        assert time.monotonic() - started < 10
        assert not (tmp_path / "undone").exists()
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
