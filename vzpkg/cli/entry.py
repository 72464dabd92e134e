"""Console-script entry points of the click commands (vzctl has its own: vzctl_entry).

A ^C while Python is still importing click and the command's modules would otherwise end in a
traceback: the import happens here, under the same "interrupted" (exit 130) as the commands'
own edge gives.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, NoReturn


def _run(module: str, prog: str) -> None:
    _run_command(module, "main", prog)


def _run_command(module: str, name: str, prog: str) -> None:
    try:
        run_click(getattr(importlib.import_module(module), name), prog)
    except (KeyboardInterrupt, RuntimeError) as e:
        from vzpkg.interrupts import caused_by_interrupt

        if not caused_by_interrupt(e):
            raise
        sys.stderr.write(f"{prog}: interrupted\n")
        sys.exit(130)


def run_click(command: Any, prog: str) -> NoReturn:
    """Run a click command as click's standalone mode does, except that a ^C while click
    itself parses is reported as every other interrupt is ("interrupted", exit 130), not as
    click's "Aborted!" (exit 1)."""
    import click

    try:
        result = command(standalone_mode=False)
    except click.exceptions.Abort:
        sys.stderr.write(f"{prog}: interrupted\n")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    sys.exit(result if isinstance(result, int) else 0)


def vzlist() -> None:
    _run("vzpkg.cli.vzlist", "vzlist")


def vzpkgcache() -> None:
    _run("vzpkg.cli.vzpkgcache", "vzpkgcache")


def vzpkgls() -> None:
    _run("vzpkg.cli.vzpkgls", "vzpkgls")


def vzosname() -> None:
    _run("vzpkg.cli.vzosname", "vzosname")


def vzubc() -> None:
    _run("vzpkg.cli.vzubc", "vzubc")


def vzpkg() -> None:
    _run("vzpkg.cli.packages", "vzpkg")


def vzapt() -> None:
    _run_command("vzpkg.cli.packages", "vzapt", "vzapt")


def vzyum() -> None:
    _run_command("vzpkg.cli.packages", "vzyum", "vzyum")
