"""vzpkgcache: create, rebuild or remove template caches."""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from vzpkg import checks, lock
from vzpkg.cache import fetch as cache_fetch
from vzpkg.cache import index as cache_index
from vzpkg.cache.build import BuildOptions, BuildResult, build_cache
from vzpkg.cache.store import CacheStore
from vzpkg.cli.common import (
    debug_option,
    edge,
    host_and_catalog,
    json_option,
    print_json,
    require_root,
    setup,
)
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig
from vzpkg.metadata.loader import Catalog
from vzpkg.metadata.model import Template
from vzpkg.metadata.names import canonical_name, host_arch


def parse_mirrors(values: tuple[str, ...]) -> dict[str, str]:
    """``--mirror URL`` names the template's first mirror; ``--mirror NAME=URL`` any other."""
    result = {}
    for value in values:
        name, sep, url = value.partition("=")
        if sep and "://" not in name:
            result[name] = url
        else:
            result[""] = value
    return result


def exit_code_of(results: list[BuildResult]) -> int:
    codes = {r.code for r in results if r.status == "failed"}
    if not codes:
        return 0
    return codes.pop() if len(codes) == 1 else int(ExitCode.FAILURE)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-f", "--force", is_flag=True, help="Rebuild caches that already exist.")
@click.option("-r", "--remove", is_flag=True, help="Remove the named caches (and their -old).")
@click.option(
    "--timeout",
    default="0",
    show_default=True,
    help="Seconds to wait for a template locked by another build (-1: forever).",
)
@click.option(
    "--mirror",
    "mirrors",
    multiple=True,
    metavar="[NAME=]URL",
    help="Use this mirror instead of the host's apt sources (repeatable).",
)
@click.option(
    "--all", "every", is_flag=True, help="Every template of this host's arch (as no NAME does)."
)
@click.option("-q", "--quiet", is_flag=True, help="Only phase lines, not the tools' output.")
@json_option
@debug_option
@click.argument("names", nargs=-1, metavar="[publish DIR | fetch] [NAME]...")
@edge("vzpkgcache")
def main(
    force: bool,
    remove: bool,
    timeout: str,
    mirrors: tuple[str, ...],
    every: bool,
    quiet: bool,
    as_json: bool,
    debug: bool,
    names: tuple[str, ...],
) -> None:
    """Create or update caches of the named templates (all templates of this host's arch
    when none are named, or --all): nothing when current, an update in place when upstream
    or a package list changed, a bootstrap otherwise (-f: always). The previous cache stays
    as NAME-old.

    Without names, CACHE_TEMPLATES (patterns) can limit what the run makes.

    vzpkgcache publish DIR [NAME...] writes caches and a (signed) index of them into DIR;
    vzpkgcache fetch NAME... gets caches from the indexes of TEMPLATE_INDEX; vzpkgcache fetch
    alone refreshes the caches this host fetched before.
    Exit codes: docs/exit-codes.md."""
    setup(debug)
    seconds = checks.timeout(timeout, "--timeout", forever=True)
    if every and names:
        raise VzError("--all and template names exclude each other", ExitCode.INVALID_ARGUMENT,
                      hint="vzpkgcache --all, or vzpkgcache NAME...")  # fmt: skip
    if remove and not names:
        raise VzError(
            "-r needs the names of the caches to remove",
            ExitCode.INVALID_ARGUMENT,
            hint="vzpkgls -c lists the caches",
        )
    if force and not names:
        raise VzError(
            "-f needs the names of the caches to rebuild (it rebuilds even what is up to date)",
            ExitCode.INVALID_ARGUMENT,
            hint="vzpkgcache alone rebuilds only what changed; vzpkgcache -f NAME... forces",
        )
    host, catalog = host_and_catalog()
    require_root("vzpkgcache")
    if names and names[0] in ("publish", "fetch"):
        verb, rest = names[0], names[1:]
        if verb == "publish":
            sys.exit(publish_command(host, catalog, rest, as_json))
        sys.exit(fetch_command(host, catalog, rest, as_json, seconds, debug))
    if names:
        templates = [catalog.get(canonical_name(n, catalog)) for n in names]
    else:
        arch = host_arch()
        templates = [t for t in catalog.templates.values() if t.arch == arch]
        if host.cache_templates:  # the operator's choice of what the nightly run makes
            wanted = host.cache_templates
            templates = [
                t for t in templates if any(fnmatch.fnmatchcase(t.name, p) for p in wanted)
            ]
            if not templates:
                raise VzError(f"CACHE_TEMPLATES={' '.join(host.cache_templates)} matches no "
                              f"template of {arch}", ExitCode.TEMPLATE_NOT_FOUND,
                              hint="vzpkgls lists the templates")  # fmt: skip
    if remove:
        store = CacheStore(host.cache_dir)
        removed = []
        for t in templates:
            with lock.locked(
                host.lock_dir, f"cache-{t.name}", timeout=seconds, what=f"cache {t.name}"
            ):
                paths = store.remove(t.name)
            if not paths:
                click.echo(f"vzpkgcache: {t.name}: no cache to remove", err=True)
            elif not as_json:
                click.echo(f"{t.name}: removed {len(paths)} file(s)")
            removed.append({"template": t.name, "removed": [str(p) for p in paths]})
        if as_json:
            print_json({"removed": removed})
        return
    options = BuildOptions(
        force=force,
        lock_timeout=seconds,
        mirror_overrides=parse_mirrors(mirrors),
        verbose=not quiet,
    )

    def parent_of(t: Template) -> Template | None:
        base = t.package_set.base
        return catalog.templates.get(f"{t.os_name}-{t.arch}-{base}") if base else None

    def depth(t: Template) -> int:
        parent = parent_of(t)
        return 0 if parent is None else 1 + depth(parent)

    # A set's base set first: the set is then made from its fresh cache.
    templates = sorted(templates, key=depth)
    started = time.time()
    results = []
    with contextlib.ExitStack() as stack:
        if not names:  # the nightly run: one at a time (a second one fails at once, exit 9)
            stack.enter_context(
                lock.locked(host.lock_dir, "vzpkgcache-all", timeout=0, what="vzpkgcache --all")
            )
        for t in templates:
            emit = lambda line: click.echo(line, err=True)  # noqa: E731
            try:
                results.append(build_cache(t, host, options, emit, parent_of))
            except Exception as e:  # a bug in one template's build stops none of the others
                if debug:
                    raise
                results.append(BuildResult(t.name, "failed", f"internal error: {e!r}"[:300],
                                           int(ExitCode.FAILURE),
                                           hint="vzpkgcache --debug NAME shows where"))  # fmt: skip
    counts = summary(results)
    if as_json:
        report_json(run_report(started, counts, [asdict(r) for r in results]))
    else:
        for r in results:
            click.echo(f"{r.template}: {describe(r)}")
        if len(results) > 1:
            click.echo(", ".join(f"{n} {status}" for status, n in counts.items() if n))
    sys.exit(exit_code_of(results))


def publish_command(host: HostConfig, catalog: Catalog, args: tuple[str, ...],
                    as_json: bool) -> int:  # fmt: skip
    """vzpkgcache publish DIR [NAME...]: the named caches (every usable one when none are
    named) and a signed index of them into DIR."""
    if not args:
        raise VzError("publish needs a directory", ExitCode.INVALID_ARGUMENT,
                      hint="vzpkgcache publish /srv/www/vz [NAME...]")  # fmt: skip
    directory = Path(args[0]).absolute()
    store = CacheStore(host.cache_dir)
    if args[1:]:
        names = [canonical_name(n, catalog) for n in args[1:]]
    else:
        names = [n for n in sorted(catalog.templates) if _usable(store, n)]
    if not names:
        raise VzError("there is no cache to publish", ExitCode.TEMPLATE_NOT_FOUND,
                      hint="vzpkgcache builds them")  # fmt: skip
    index = cache_index.publish(store, names, directory, host, lambda s: click.echo(s, err=True))
    if as_json:
        print_json({"directory": str(directory), "signed": bool(host.index_signing_key),
                    **index})  # fmt: skip
    else:
        signed = "signed" if host.index_signing_key else "not signed (no INDEX_SIGNING_KEY)"
        offered = len(index["templates"])
        click.echo(f"{directory / cache_index.INDEX}: {len(names)} cache(s) published, "
                   f"{offered} offered, {signed}")  # fmt: skip
    return 0


def fetch_command(host: HostConfig, catalog: Catalog, args: tuple[str, ...], as_json: bool,
                  seconds: float, debug: bool = False) -> int:  # fmt: skip
    """vzpkgcache fetch [NAME...]: caches from the configured template indexes; without
    names, every cache this host has that an index offers (a fleet host's nightly run)."""
    if args:
        names = [canonical_name(n, catalog) for n in args]
    else:  # the caches this host fetched before; those it builds itself are its own
        store = CacheStore(host.cache_dir)
        offered = {n for index in cache_fetch.indexes(host) for n in index.entries}
        names = [
            n
            for n in sorted(catalog.templates)
            if n in offered and _usable(store, n) and store.origin(n) is not None
        ]
    started = time.time()
    results: list[dict[str, str | int]] = []
    for name in names:
        try:
            results.append(cache_fetch.fetch_cache(
                host, name, lambda s: click.echo(s, err=True), lock_timeout=seconds))  # fmt: skip
        except Exception as e:  # one name's failure stops none of the others
            if isinstance(e, OSError):  # a file in the way (a FIFO, a link): say which
                e = VzError(f"{e.filename}: {e.strerror}", ExitCode.SYSTEM)
            elif not isinstance(e, VzError):
                if debug:
                    raise
                e = VzError(f"internal error: {e!r}"[:300], ExitCode.FAILURE)
            click.echo(f"vzpkgcache: {name}: {e.message}", err=True)
            if e.hint:
                click.echo(f"  hint: {e.hint}", err=True)
            results.append({"template": name, "status": "failed", "message": e.message,
                            "code": int(e.code)})  # fmt: skip
    counts: dict[str, int] = {}
    for r in results:
        counts[str(r["status"])] = counts.get(str(r["status"]), 0) + 1
    if as_json:
        report_json(run_report(started, counts, results))
    else:
        for r in results:
            click.echo(f"{r['template']}: {r['status']}")
        click.echo(", ".join(f"{n} {status}" for status, n in counts.items()) or
                   "nothing to fetch: this host has no cache from a template index")  # fmt: skip
    codes = {int(str(r["code"])) for r in results if r["status"] == "failed"}
    return 0 if not codes else codes.pop() if len(codes) == 1 else int(ExitCode.FAILURE)


def _usable(store: CacheStore, name: str) -> bool:
    info = store.info(name)
    return info is not None and info.usable


def run_report(started: float, counts: dict[str, int], results: list[Any]) -> dict[str, Any]:
    """A run's report: when it started, how long it took, how many ended how, and each."""
    return {
        "started": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(
            timespec="seconds"
        ),
        "seconds": round(time.time() - started, 1),
        "summary": counts,
        "results": results,
    }


def report_json(data: object) -> None:
    """A report: indented on a terminal, one line elsewhere (a journal or a log file gets one
    line per run, which tools read line by line)."""
    if sys.stdout.isatty():
        print_json(data)
    else:
        click.echo(json.dumps(data, sort_keys=True))


def summary(results: list[BuildResult]) -> dict[str, int]:
    counts = {s: 0 for s in ("up-to-date", "updated", "built", "rebuilt", "failed")}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def describe(r: BuildResult) -> str:
    """One line per template: what happened and why."""
    if r.status == "failed":
        return f"failed (exit {r.code}): {r.message.splitlines()[0]}"
    if r.status == "up-to-date":
        return "up-to-date"
    changed = f", {len(r.changes)} package change(s)" if r.path != "bootstrap" else ""
    why = f" ({r.reason})" if r.reason else ""
    return f"{r.status}{why}{changed} in {r.seconds:.1f} s"
