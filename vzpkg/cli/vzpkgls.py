"""vzpkgls: list templates (from metadata) and their caches."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import click

from vzpkg.cache.store import CachedInfo, CacheStore
from vzpkg.cli.common import debug_option, edge, host_and_catalog, json_option, print_json, setup
from vzpkg.metadata.model import Template


def describe(t: Template, info: CachedInfo | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": t.name,
        "os": t.distribution.name,
        "version": t.release.version,
        "arch": t.arch,
        "set": t.package_set.name,
        "family": t.family,
        "summary": t.summary,
        "metadata_digest": t.digest,
        "cached": info is not None and info.usable,
        "cache": None,
    }
    if info is not None:
        m = info.manifest
        entry["cache"] = {
            "file": str(info.archive),
            "size": info.size,
            "mtime": datetime.datetime.fromtimestamp(info.mtime, datetime.UTC).isoformat(
                timespec="seconds"
            ),
            "created": m.created if m else None,
            "sha256": m.archive.sha256 if m else None,
            "packages": len(m.packages) if m else None,
            # The metadata changed since the cache was built: vzpkgcache -f brings it up to date.
            "stale": m is None or m.metadata_digest != t.digest,
            "usable": info.usable,
            "problem": info.problem,
        }
    return entry


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("ctid", required=False)
@click.option("-c", "--cached", is_flag=True, help="Only templates that have a cache.")
@click.option("-l", "--long", "long_", is_flag=True, help="Columns: cache date and size.")
@click.option("--arch", help="Only templates of this arch.")
@click.option("--remote", is_flag=True, help="What the template indexes (TEMPLATE_INDEX) offer.")
@json_option
@debug_option
@edge("vzpkgls")
def main(
    ctid: str | None,
    cached: bool,
    long_: bool,
    arch: str | None,
    remote: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """List the templates that the metadata describes, one per line; with CTID, the packages
    installed in that VPS (NAME VERSION ARCH); with --remote, the caches the configured
    template indexes offer."""
    setup(debug)
    if ctid is not None:
        if cached or long_ or arch or remote:
            raise click.UsageError("-c, -l, --arch and --remote list templates: not with a CTID")
        list_installed(ctid, as_json)
        return
    if remote:
        list_remote(long_, arch, as_json)
        return
    host, catalog = host_and_catalog()
    store = CacheStore(host.cache_dir)
    rows = []
    for name in sorted(catalog.templates):
        t = catalog.templates[name]
        if arch and t.arch != arch:
            continue
        info = store.info(name)
        if cached and (info is None or not info.usable):
            continue
        rows.append(describe(t, info))
    if as_json:
        print_json(rows)
        return
    if not long_:
        for row in rows:
            click.echo(row["name"])
        return
    width = max((len(r["name"]) for r in rows), default=8)
    click.echo(f"{'TEMPLATE':<{width}}  {'CACHED':<16}  {'SIZE':>9}  SUMMARY")
    for row in rows:
        cache = row["cache"]
        if cache and not cache["usable"]:
            when, size = "broken", "-"
        elif cache:
            when = datetime.datetime.fromisoformat(cache["mtime"]).strftime("%Y-%m-%d %H:%M")
            size = f"{cache['size'] / 2**20:.1f}M" + ("*" if cache["stale"] else "")
        else:
            when, size = "-", "-"
        click.echo(f"{row['name']:<{width}}  {when:<16}  {size:>9}  {row['summary']}")


def list_remote(long_: bool, arch: str | None, as_json: bool) -> None:
    """The caches of every configured index (the first one offering a template wins, as
    vzpkgcache fetch picks), and how each compares with this host's."""
    from vzpkg.cache import fetch
    from vzpkg.hostconf import load_host_config

    host = load_host_config()
    store = CacheStore(host.cache_dir)
    rows: dict[str, dict[str, Any]] = {}
    for index in fetch.indexes(host):
        if not index.signed:
            click.echo(f"vzpkgls: warning: {index.url} is not verified (TEMPLATE_INDEX_KEYS "
                       "is empty)", err=True)  # fmt: skip
        for name, e in sorted(index.entries.items()):
            if name in rows or (arch and e.arch != arch):
                continue
            info = store.info(name)
            local = info.manifest if info is not None and info.usable else None
            state = (  # this host's cache, against the index's
                "missing" if local is None
                else "same" if local.archive.sha256 == e.sha256
                else "newer" if fetch.is_older(e, local)
                else "older"
            )  # fmt: skip
            rows[name] = {"name": name, "index": index.url, "signed": index.signed,
                          "size": e.size, "sha256": e.sha256, "created": e.created,
                          "source_date_epoch": e.source_date_epoch, "here": state}  # fmt: skip
    if as_json:
        print_json(list(rows.values()))
        return
    if not long_:
        for name in rows:
            click.echo(name)
        return
    width = max((len(n) for n in rows), default=8)
    click.echo(f"{'TEMPLATE':<{width}}  {'CREATED':<16}  {'SIZE':>9}  {'HERE':<7}  INDEX")
    for row in rows.values():
        created = row["created"][:16].replace("T", " ")
        size = f"{row['size'] / 2**20:.1f}M"
        click.echo(f"{row['name']:<{width}}  {created:<16}  {size:>9}  {row['here']:<7}  "
                   f"{row['index']}")  # fmt: skip


def list_installed(
    ctid: str, as_json: bool, *, names_only: bool = False, wait: bool = False
) -> None:
    """The packages installed in VPS ``ctid``, read on the host from its package database."""
    from vzpkg.cli.common import require_root
    from vzpkg.ct.ids import parse_ctid
    from vzpkg.ct.lifecycle import root_for_reading
    from vzpkg.hostconf import load_host_config
    from vzpkg.pkgmgr.installed import installed, printable

    require_root("vzpkgls")
    number = parse_ctid(ctid)
    with root_for_reading(load_host_config(), number, wait=wait) as root:
        family, packages = installed(root)
    if as_json:
        print_json({"ctid": number, "family": family,
                    "packages": [dataclasses.asdict(p) for p in packages]})  # fmt: skip
        return
    for p in packages:
        click.echo(printable(p.name if names_only else f"{p.name} {p.version} {p.arch}"))
