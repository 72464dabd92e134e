"""vzpkg: packages in VPSs, as vztt's ``vzpkg install|update|remove|list|info CT``; vzapt:
the VPS's apt-get, fed from the host. The transactions are vzpkg.ct.packages'. Exit codes are
vztt's where it has them: 15 not running, 16 no such VPS, 24 template unknown, 70 the package
manager failed."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from vzpkg.cli.common import debug_option, edge, json_option, print_json, say, setup
from vzpkg.errors import ExitCode, VzError

if TYPE_CHECKING:
    from vzpkg.ct.packages import Outcome
    from vzpkg.hostconf import HostConfig
    from vzpkg.metadata.loader import Catalog

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT)
def main() -> None:
    """Packages in VPSs: vzpkg install|update|remove|list|info CTID. Packages are fetched on
    the host with the VPS's template's repositories and keys, into a cache its VPSs share,
    and installed by the VPS's own apt-get inside it. Exit codes: docs/exit-codes.md."""


@contextmanager
def _vps_errors() -> Iterator[None]:
    """vztt's code for a VPS that does not exist (vzctl's is 14)."""
    try:
        yield
    except VzError as e:
        if e.code != ExitCode.CT_CONFIG_MISSING:
            raise
        raise VzError(e.message, ExitCode.CT_NOT_FOUND, e.hint) from None


@main.command("list")
@click.argument("ctid")
@json_option
@click.option("-q", "--quiet", is_flag=True, help="Names only.")
@click.option("--available", is_flag=True, help="What the template's repositories offer.")
@debug_option
@edge("vzpkg")
def list_(ctid: str, as_json: bool, quiet: bool, available: bool, debug: bool) -> None:
    """The packages installed in VPS CTID (NAME VERSION ARCH), read on the host from its
    package database; a stopped VPS is mounted for the reading. With --available, the
    packages its template's repositories offer (the VPS must run)."""
    setup(debug)
    if available:
        _list_available(ctid, as_json, quiet)
        return
    from vzpkg.cli.vzpkgls import list_installed

    with _vps_errors():
        list_installed(ctid, as_json, names_only=quiet)


common_options: list[Callable[[Callable[..., None]], Callable[..., None]]] = [
    click.option("-n", "--check-only", is_flag=True, help="What would change; nothing changes."),
    click.option("-q", "--quiet", is_flag=True, help="No apt-get output, no progress."),
    click.option("--refresh", is_flag=True, help="Fetch the package lists even if they are fresh."),
    json_option,
    debug_option,
]


def _options(func: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(common_options):
        func = option(func)
    return func


@main.command()
@click.argument("ctid")
@click.argument("packages", nargs=-1, required=True)
@_options
@edge("vzpkg")
def install(ctid: str, packages: tuple[str, ...], **opts: Any) -> None:
    """Install PACKAGES (and what they need) in running VPS CTID."""
    _transaction(ctid, ["install", *_names(packages)], **opts)


@main.command()
@click.argument("ctid")
@click.argument("packages", nargs=-1)
@_options
@edge("vzpkg")
def update(ctid: str, packages: tuple[str, ...], **opts: Any) -> None:
    """Upgrade PACKAGES in running VPS CTID, or every package when none is named (new
    dependencies are installed, nothing is removed). The lists are always fetched anew."""
    args = ["install", "--only-upgrade", *_names(packages)] if packages else [
        "upgrade", "--with-new-pkgs"]  # fmt: skip
    opts["refresh"] = True
    _transaction(ctid, args, **opts)


@main.command()
@click.argument("ctid")
@click.argument("packages", nargs=-1, required=True)
@_options
@edge("vzpkg")
def remove(ctid: str, packages: tuple[str, ...], **opts: Any) -> None:
    """Remove PACKAGES (and what depends on them) from running VPS CTID."""
    _transaction(ctid, ["remove", *_names(packages)], **opts)


@main.command()
@click.argument("ctid")
@click.argument("packages", nargs=-1, required=True)
@json_option
@debug_option
@edge("vzpkg")
def info(ctid: str, packages: tuple[str, ...], as_json: bool, debug: bool) -> None:
    """What the template's repositories say of PACKAGES, and whether VPS CTID has them."""
    setup(debug)
    from vzpkg.ct.packages import package_info

    host, catalog, number = _context(ctid)
    with _vps_errors():
        found = package_info(host, number, catalog.get, _names(packages), say)
    if as_json:
        print_json(found)
        return
    for i, entry in enumerate(found):
        if i:
            click.echo()
        for key, value in entry.items():
            click.echo(f"{key}: {value if value is not None else '-'}")


def _names(packages: Sequence[str]) -> list[str]:
    """Package names as apt-get takes them (name, name=version, name/suite, name:arch); an
    option is refused, so that nothing reaches apt-get as one."""
    for name in packages:
        if not name or name.startswith("-") or any(c.isspace() for c in name):
            raise VzError(f"bad package name {name!r}", ExitCode.INVALID_VALUE)
    return list(packages)


def _context(ctid: str) -> tuple[HostConfig, Catalog, int]:
    from vzpkg.cli.common import host_and_catalog, require_root
    from vzpkg.ct.ids import parse_ctid

    require_root("vzpkg")
    number = parse_ctid(ctid)
    host, catalog = host_and_catalog()
    return host, catalog, number


def _transaction(
    ctid: str, args: list[str], *, check_only: bool, quiet: bool, refresh: bool, as_json: bool,
    debug: bool, prog: str = "vzpkg",
) -> None:  # fmt: skip
    setup(debug)
    from vzpkg.ct.packages import Request, transaction

    host, catalog, number = _context(ctid)
    out = sys.stderr if as_json else sys.stdout
    show = None if quiet else (lambda line: print(line, file=out, flush=True))
    note = (lambda text: None) if quiet else (lambda text: say(f"{prog}: {text}"))
    request = Request(tuple(args), check_only=check_only, refresh=refresh, show_output=show)
    with _vps_errors():
        outcome = transaction(host, number, catalog.get, request, note)
    _report(outcome, as_json, quiet)


def _report(outcome: Outcome, as_json: bool, quiet: bool) -> None:
    if as_json:
        print_json(outcome.as_json())
        return
    if quiet:
        return
    changes = outcome.changes
    if outcome.check_only:
        if not changes:
            click.echo(f"CT {outcome.ctid}: nothing would change")
        for c in changes:
            if c.old is None:
                click.echo(f"would install {c.name} {c.new} {c.arch}")
            elif c.new is None:
                click.echo(f"would remove {c.name} {c.old}")
            else:
                click.echo(f"would upgrade {c.name} {c.old} -> {c.new}")
        return
    counts = json.loads(json.dumps(outcome.as_json()))
    say(f"CT {outcome.ctid}: {len(counts['installed'])} installed, {len(counts['upgraded'])} "
        f"upgraded, {len(counts['removed'])} removed; {outcome.fetched} downloaded, the rest "
        "from the shared cache")  # fmt: skip


def _list_available(ctid: str, as_json: bool, quiet: bool) -> None:
    from vzpkg.ct.packages import available

    host, catalog, number = _context(ctid)
    with _vps_errors():
        packages = available(host, number, catalog.get, say)
    if as_json:
        print_json({"ctid": number, "packages": packages})
        return
    for p in packages:
        click.echo(p["name"] if quiet else f"{p['name']} {p['version']} {p['arch']}")


@click.command(context_settings={**CONTEXT, "ignore_unknown_options": True})
@click.argument("ctid")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, required=True)
@edge("vzapt")
def vzapt(ctid: str, args: tuple[str, ...]) -> None:
    """apt-get ARGS in running VPS CTID, with apt-get's semantics: packages are fetched on
    the host (the template's repositories and keys, the shared cache), the VPS's own apt-get
    installs them. vzapt CTID update refreshes the template's lists on the host."""
    debug = "--debug" in args
    args = tuple(a for a in args if a != "--debug")
    check = "-s" in args or "--simulate" in args or "--dry-run" in args
    _transaction(ctid, list(args), check_only=check, quiet=False, refresh=False, as_json=False,
                 debug=debug, prog="vzapt")  # fmt: skip
