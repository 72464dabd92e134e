"""vzctl's entry point, with short paths for what is run most.

``vzctl exec`` / ``exec2`` on a running VPS (what scripts run in loops) go straight to runc with
only light modules imported (os, json, re; the host configuration's raw values, runc's state
files): a few ms of Python instead of the ~60 ms that loading the whole click CLI costs.
Anything unusual (not root, a configuration problem, no such CT, not running, options) falls
through to the full CLI, which checks and reports it properly.

``vzctl start|stop CTID`` with no options run the click commands' own bodies
(vzctl_actions) without loading click.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    code = fast_exec(sys.argv[1:])
    if code is None:
        code = fast_lifecycle(sys.argv[1:])
    if code is not None:
        # Nothing of ours to clean up: skip the interpreter's teardown (a few ms).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    from vzpkg.cli.vzctl import main as full_cli

    full_cli()


QUIET_FLAGS = ("-q", "--quiet", "-v", "--verbose")  # vzctl's global flags; exec ignores them


def fast_exec(args: list[str]) -> int | None:
    """Run ``exec``/``exec2`` ``CTID CMD...`` and return vzctl's exit code; None: not handled
    here (nothing has been run then)."""
    while args and args[0] in QUIET_FLAGS:
        args = args[1:]
    if (
        len(args) < 3
        or args[0] not in ("exec", "exec2")
        or not args[1].isdigit()
        or args[2].startswith("-")
        or os.geteuid() != 0
    ):
        return None
    argv = exec_argv(args[1], args[2:])
    if argv is None:
        return None
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
    if len(args) != 2 or args[0] not in ("start", "stop") or not args[1].isdigit():
        return None
    from vzpkg.cli import edge, vzctl_actions

    edge.setup(debug=False)
    action = vzctl_actions.start if args[0] == "start" else vzctl_actions.stop
    edge.edge("vzctl")(action)(args[1], quiet)  # exits with the error's code on failure
    return 0


def exec_argv(ctid_text: str, words: list[str]) -> list[str] | None:
    """``runc exec`` of ``words`` in running CT ``ctid_text``; None when anything is off."""
    from vzpkg import hostvalues
    from vzpkg.ct import runcstate
    from vzpkg.ct.ids import container_id
    from vzpkg.procenv import BASE_PATH, which

    try:
        path = hostvalues.conf_file(os.environ, hostvalues.SYSTEM_CONF)
        values: dict[str, str] = {}
        if path is not None:
            with open(path) as f:
                values, problems = hostvalues.parse_values(f.read(), path)
            if problems:
                return None
    except OSError:
        return None
    values.update(hostvalues.env_overrides(os.environ))
    if not all(hostvalues.is_known_key(key) for key in values):
        return None
    ctid = str(int(ctid_text))
    conf_dir = values.get("CONF_DIR", hostvalues.DEFAULT_CONF_DIR)
    state_root = os.path.join(values.get("RUN_DIR", hostvalues.DEFAULT_RUN_DIR), "runc")
    runc = which("runc", BASE_PATH + ":" + os.environ.get("PATH", ""))
    if runc is None or not os.path.isfile(os.path.join(conf_dir, f"{ctid}.conf")):
        return None
    try:
        state = runcstate.read_state(state_root, container_id(ctid))
    except runcstate.UnknownFormat:
        return None
    if state is None or state.status != "running":
        return None
    # As vzctl: the words form one command line for the VPS's /bin/sh.
    shell = ["/bin/sh", "-c", " ".join(words)]
    return [runc, "--root", state_root, "exec", "--cwd", "/", container_id(ctid), *shell]
