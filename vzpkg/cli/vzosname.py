"""vzosname: print the canonical template name for what a user typed."""

from __future__ import annotations

import click

from vzpkg.cli.common import debug_option, edge, host_and_catalog, json_option, print_json, setup
from vzpkg.metadata.names import canonical_name


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--arch", help="Arch to assume when the name has none (default: the host's).")
@json_option
@debug_option
@click.argument("names", nargs=-1, required=True)
@edge("vzosname")
def main(arch: str | None, as_json: bool, debug: bool, names: tuple[str, ...]) -> None:
    """Print the canonical <os>-<version>-<arch>-<set> name of each NAME, e.g.
    debian-12 -> debian-12-x86_64-default."""
    setup(debug)
    _, catalog = host_and_catalog()
    resolved = {name: canonical_name(name, catalog, arch) for name in names}
    if as_json:
        print_json(resolved)
    else:
        for name in names:
            click.echo(resolved[name])
