"""vzpkg: packages in VPSs, as vztt's ``vzpkg list CT`` (install, update and remove come next:
issue 12). Exit codes are vztt's where it has them: 16 for a VPS that does not exist."""

from __future__ import annotations

import click

from vzpkg.cli.common import debug_option, edge, json_option, setup
from vzpkg.errors import ExitCode, VzError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Packages in VPSs: vzpkg list CTID. Exit codes: docs/exit-codes.md."""


@main.command("list")
@click.argument("ctid")
@json_option
@click.option("-q", "--quiet", is_flag=True, help="Names only.")
@debug_option
@edge("vzpkg")
def list_(ctid: str, as_json: bool, quiet: bool, debug: bool) -> None:
    """The packages installed in VPS CTID (NAME VERSION ARCH), read on the host from its
    package database; a stopped VPS is mounted for the reading."""
    setup(debug)
    from vzpkg.cli.vzpkgls import list_installed

    try:
        list_installed(ctid, as_json, names_only=quiet)
    except VzError as e:
        if e.code != ExitCode.CT_CONFIG_MISSING:
            raise
        raise VzError(e.message, ExitCode.CT_NOT_FOUND, e.hint) from None
