"""vzctl's entry point, with short paths for what is run most.

``vzctl exec`` / ``exec2`` on a running VPS (what scripts run in loops) go straight to runc with
only light modules imported (the host configuration read and checked by hostvalues, runc's
state files): a few ms of Python instead of the ~45 ms that loading the whole click CLI costs.
``vzctl [-q] start|stop CTID`` run the click commands' own bodies (vzctl_actions) without
loading click.

The short paths call the same functions as the full CLI (vzctl_actions, hostvalues, ids,
runcargv), so they accept and refuse the same inputs; whenever anything is off (not root, a
bad configuration, no such CT, options) nothing has been done yet and the full CLI runs
instead, which reports it the same way. tests/integration/test_edge.py holds the two paths to
that, argv by argv.
"""

from __future__ import annotations

import os
import signal
import sys

PROG = "vzctl"
QUIET_FLAGS = ("-q", "--quiet", "-v", "--verbose")  # vzctl's global flags; exec ignores them


def main() -> None:
    try:
        code = fast_exec(sys.argv[1:])
        if code is None:
            code = fast_lifecycle(sys.argv[1:])
        if code is not None:
            # Nothing of ours to clean up: skip the interpreter's teardown (a few ms).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        from vzpkg.cli.entry import run_click
        from vzpkg.cli.vzctl import main as full_cli

        run_click(full_cli, PROG)
    except (KeyboardInterrupt, RuntimeError) as e:  # ^C before a command's own edge
        from vzpkg.interrupts import caused_by_interrupt

        if not caused_by_interrupt(e):
            raise
        sys.stderr.write(f"{PROG}: interrupted\n")
        sys.exit(130)


def fast_exec(args: list[str]) -> int | None:
    """Run ``exec``/``exec2`` ``CTID CMD...`` and return vzctl's exit code; None: not handled
    here (nothing has been run then)."""
    while args and args[0] in QUIET_FLAGS:
        args = args[1:]
    if len(args) < 3 or args[0] not in ("exec", "exec2") or args[2].startswith("-"):
        return None
    if os.geteuid() != 0:
        return None
    from vzpkg import hostvalues
    from vzpkg.ct.runcargv import vzctl_exec_argv
    from vzpkg.errors import VzError

    try:
        values = hostvalues.load(os.environ)
        argv = vzctl_exec_argv(args[1], args[2:], str(values["conf_dir"]), str(values["run_dir"]))
    except VzError:
        return None  # the full CLI says what is wrong, the same way
    from vzpkg.procenv import base_env

    env = base_env()
    # As subprocess's restore_signals: Python ignores SIGPIPE and SIGXFSZ, which an exec'd
    # program would inherit.
    restored = [signal.SIGPIPE, signal.SIGXFSZ]
    if args[0] == "exec2":
        for sig in restored:
            signal.signal(sig, signal.SIG_DFL)
        os.execve(argv[0], argv, env)  # runc's exit code is the command's: nothing left to do
    # Like system(3): ^C and ^\\ are the command's (runc forwards them), not ours to act on.
    terminal = [signal.SIGINT, signal.SIGQUIT]
    for sig in terminal:
        signal.signal(sig, signal.SIG_IGN)
    pid = os.posix_spawn(argv[0], argv, env, setsigdef=terminal + restored)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code  # killed by a signal: as a shell reports it
    if args[0] == "exec":
        from vzpkg.errors import ExitCode

        return 0 if code == 0 else int(ExitCode.EXEC_FAILED)
    return code


def fast_lifecycle(args: list[str]) -> int | None:
    """The plain ``vzctl [-q] start CTID`` / ``stop CTID`` (what boot scripts and loops run)
    without loading click: the same code as the click commands (vzctl_actions), the same
    messages and exit codes. None: not handled here (nothing has been done then)."""
    quiet = False
    while args and args[0] in QUIET_FLAGS:
        quiet = quiet or args[0] in ("-q", "--quiet")
        args = args[1:]
    if len(args) != 2 or args[0] not in ("start", "stop") or args[1].startswith("-"):
        return None
    from vzpkg.cli import edge, vzctl_actions

    edge.setup(debug=False, quiet=quiet)
    action = vzctl_actions.start if args[0] == "start" else vzctl_actions.stop
    edge.edge(PROG)(action)(args[1], quiet)  # exits with the error's code on failure
    return 0
