"""vzubc: what running VPSs use of what their limits count, as OpenVZ's vzubc showed
/proc/user_beancounters (held, maxheld, barrier, limit, failcnt; memory in 4 KiB pages)."""

from __future__ import annotations

import click

from vzpkg.cli.common import debug_option, edge, json_option, print_json, require_root, setup
from vzpkg.ct.ids import parse_ctid
from vzpkg.errors import ExitCode, VzError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@debug_option
@json_option
@click.argument("ctids", nargs=-1)
@edge("vzubc")
def main(debug: bool, as_json: bool, ctids: tuple[str, ...]) -> None:
    """Beancounters of the running VPSs CTIDS (default: every running VPS)."""
    setup(debug)
    require_root("vzubc")
    from vzpkg.cli.vzlist import beancounters
    from vzpkg.ct import conf, usage
    from vzpkg.ct.status import running_state
    from vzpkg.hostconf import load_host_config

    host = load_host_config()
    numbers = [parse_ctid(c) for c in ctids] or conf.list_ctids(host)
    running = [n for n in numbers if running_state(host, n)[0]]
    if ctids and len(running) != len(numbers):
        stopped = sorted(set(numbers) - set(running))
        raise VzError(f"CT {stopped[0]} is not running", ExitCode.NOT_RUNNING)
    found = {n: beancounters(host, n) for n in running}
    if as_json:
        print_json({str(n): counters for n, counters in found.items()})
        return
    click.echo(usage.header())
    for n, counters in found.items():
        click.echo(usage.table(n, {name: usage.Counter(**c) for name, c in counters.items()}))
