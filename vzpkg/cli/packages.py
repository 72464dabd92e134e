"""vzpkg: packages in VPSs, as vztt's ``vzpkg install|update|remove|list|info CT``; vzapt:
the VPS's apt-get, fed from the host. The transactions are vzpkg.ct.packages'. Exit codes are
vztt's where it has them: 15 not running, 16 no such VPS, 24 template unknown, 70 the package
manager failed."""

from __future__ import annotations

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
    packages its template's repositories offer."""
    setup(debug)
    if available:
        _list_available(ctid, as_json, quiet)
        return
    from vzpkg.cli.vzpkgls import list_installed

    with _vps_errors():
        list_installed(ctid, as_json, names_only=quiet, wait=True)


def _options(*, refresh: bool) -> Callable[[Callable[..., None]], Callable[..., None]]:
    check = "Print what would change; nothing changes."
    quiet = "No apt-get output and no progress: the result only."
    fresh = "Fetch the package lists even if they are fresh (under an hour)."
    options = [
        click.option("-n", "--check-only", is_flag=True, help=check),
        click.option("-q", "--quiet", is_flag=True, help=quiet),
        json_option,
        debug_option,
    ]
    if refresh:
        options.insert(2, click.option("--refresh", is_flag=True, help=fresh))

    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


@main.command()
@click.argument("ctid")
@click.argument("packages", nargs=-1, required=True)
@_options(refresh=True)
@edge("vzpkg")
def install(ctid: str, packages: tuple[str, ...], **opts: Any) -> None:
    """Install PACKAGES (and what they need) in running VPS CTID. A package may be given as
    NAME, NAME=VERSION or NAME/SUITE, as to apt-get."""
    _transaction(ctid, ["install", *_names(packages)], **opts)


@main.command()
@click.argument("ctid")
@click.argument("packages", nargs=-1)
@_options(refresh=False)
@edge("vzpkg")
def update(ctid: str, packages: tuple[str, ...], **opts: Any) -> None:
    """Upgrade PACKAGES in running VPS CTID, or every package when none is named (new
    dependencies are installed, nothing is removed). The package lists are fetched anew."""
    args = ["install", "--only-upgrade", *_names(packages)] if packages else [
        "upgrade", "--with-new-pkgs"]  # fmt: skip
    _transaction(ctid, args, refresh=True, **opts)


@main.command()
@click.argument("ctid")
@click.argument("packages", nargs=-1, required=True)
@_options(refresh=False)
@edge("vzpkg")
def remove(ctid: str, packages: tuple[str, ...], **opts: Any) -> None:
    """Remove PACKAGES (and what depends on them) from running VPS CTID; their
    configuration files stay, as with apt-get remove (vzapt CTID purge takes them too)."""
    _transaction(ctid, ["remove", *_names(packages)], refresh=False, **opts)


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
    from vzpkg.pkgmgr.installed import printable

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
            click.echo(printable(f"{key}: {value if value is not None else '-'}"))


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
    debug: bool, prog: str = "vzpkg", apt_words: bool = False,
) -> None:  # fmt: skip
    """Run apt-get ``args`` for VPS ``ctid``: apt-get's output and the progress on stderr, the
    result on stdout (``apt_words``: a simulation in apt-get's own words, as vzapt -s)."""
    setup(debug)
    from vzpkg.ct.packages import Request, transaction

    def show(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    note = (lambda text: None) if quiet else (lambda text: say(f"{prog}: {text}"))
    request = Request(tuple(args), check_only=check_only, refresh=refresh,
                      show_output=None if quiet else show)  # fmt: skip
    try:
        host, catalog, number = _context(ctid)
        with _vps_errors():
            outcome = transaction(host, number, catalog.get, request, note)
    except VzError as e:
        if as_json:  # a script gets an answer on stdout too
            print_json({"ctid": ctid, "error": e.message, "code": int(e.code)})
        raise
    if as_json:
        print_json(outcome.as_json())
    elif apt_words and outcome.check_only:
        click.echo(outcome.simulation, nl=False)
    else:
        _report(outcome)


_VERBS = {"installed": "install", "upgraded": "upgrade", "downgraded": "downgrade",
          "reinstalled": "reinstall", "removed": "remove"}  # fmt: skip


def _report(outcome: Outcome) -> None:
    kinds = outcome.kinds()
    if outcome.check_only:
        if not outcome.changes:
            click.echo(f"CT {outcome.ctid}: nothing would change")
        for kind, changes in kinds.items():
            for c in changes:
                if c.old and c.new and c.old != c.new:
                    click.echo(f"would {_VERBS[kind]} {c.name} {c.old} -> {c.new}")
                else:
                    click.echo(f"would {_VERBS[kind]} {c.name} {c.new or c.old} {c.arch}".rstrip())
        return
    done = ", ".join(f"{len(v)} {k}" for k, v in kinds.items() if v) or "nothing changed"
    files = ""
    if outcome.files:
        files = (f"; {outcome.fetched} of {outcome.files} package files downloaded, the rest "
                 "from the shared cache")  # fmt: skip
    click.echo(f"CT {outcome.ctid}: {done}{files}")


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
    installs them; nobody is asked (-y). Commands: install, reinstall, upgrade, dist-upgrade,
    full-upgrade, remove, purge, autoremove, check, clean, autoclean; update refreshes the
    template's lists on the host. -s prints apt-get's simulation and changes nothing."""
    debug = "--debug" in args
    args = tuple(a for a in args if a != "--debug")
    check = bool({"-s", "--simulate", "--dry-run", "--just-print", "--no-act"} & set(args))
    _transaction(ctid, list(args), check_only=check, quiet=False, refresh=False, as_json=False,
                 debug=debug, prog="vzapt", apt_words=True)  # fmt: skip


_YUM_COMMANDS = {"install": "install", "update": "update", "upgrade": "update",
                 "remove": "remove", "erase": "remove"}  # fmt: skip


@click.command(context_settings=CONTEXT)
@click.argument("ctid")
@click.argument("command", type=click.Choice(sorted(_YUM_COMMANDS)))
@click.argument("packages", nargs=-1)
@click.option("-n", "--assumeno", "check_only", is_flag=True, help="Print what would change.")
@click.option("-q", "--quiet", is_flag=True, help="No rpm output and no progress.")
@debug_option
@edge("vzyum")
def vzyum(
    ctid: str, command: str, packages: tuple[str, ...], check_only: bool, quiet: bool, debug: bool
) -> None:
    """dnf's commands for running VPS CTID, as OpenVZ's vzyum had yum's: install, update
    (upgrade), remove (erase). Packages are fetched on the host with the template's
    repositories and keys into the cache its VPSs share; the VPS's own rpm installs them."""
    verb = _YUM_COMMANDS[command]
    names = _names(packages)
    if verb != "update" and not names:
        raise click.UsageError(f"vzyum {command} needs packages")
    args = {
        "install": ["install", *names],
        "remove": ["remove", *names],
        "update": ["install", "--only-upgrade", *names] if names else ["upgrade"],
    }[verb]
    _transaction(ctid, args, check_only=check_only, quiet=quiet, refresh=verb == "update",
                 as_json=False, debug=debug, prog="vzyum")  # fmt: skip
