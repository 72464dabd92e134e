"""What every click command shares: the edge (vzpkg.cli.edge), options, JSON output, the
catalog."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from vzpkg.cli.edge import edge as edge
from vzpkg.cli.edge import fail as fail
from vzpkg.cli.edge import require_root as require_root
from vzpkg.cli.edge import say as say
from vzpkg.cli.edge import setup as setup
from vzpkg.hostconf import HostConfig, load_host_config, report_unused_keys
from vzpkg.interrupts import Terminated as Terminated

if TYPE_CHECKING:
    from vzpkg.metadata.loader import Catalog


def host_and_catalog() -> tuple[HostConfig, Catalog]:
    from vzpkg.metadata.loader import load_catalog  # lazy: vzctl's runtime commands need none

    host = load_host_config()
    report_unused_keys(host)
    return host, load_catalog(host.metadata_dir)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=1, sort_keys=True))


debug_option = click.option("--debug", is_flag=True, help="Log every command run; tracebacks.")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
