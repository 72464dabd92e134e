"""What every command shares: error reporting at the edge, logging, signals, host config."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import click

from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig, load_host_config

if TYPE_CHECKING:
    from vzpkg.metadata.loader import Catalog

P = ParamSpec("P")
R = TypeVar("R")


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that cleanup stacks unwind as for Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise Terminated()


def setup(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(message)s", stream=sys.stderr
    )
    signal.signal(signal.SIGTERM, _on_sigterm)


def fail(error: VzError, prog: str) -> NoReturn:
    click.echo(f"{prog}: {error.message}", err=True)
    if error.hint:
        click.echo(f"{prog}: hint: {error.hint}", err=True)
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
                click.echo(f"{prog}: interrupted", err=True)
                sys.exit(int(ExitCode.INTERRUPTED))

        return inner

    return wrap


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise VzError(f"{what} needs root", ExitCode.PERMISSION, hint="run it as root (sudo)")


def host_and_catalog() -> tuple[HostConfig, Catalog]:
    from vzpkg.metadata.loader import load_catalog  # lazy: vzctl's runtime commands need none

    host = load_host_config()
    return host, load_catalog(host.metadata_dir)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=1, sort_keys=True))


debug_option = click.option("--debug", is_flag=True, help="Log every command run; tracebacks.")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
