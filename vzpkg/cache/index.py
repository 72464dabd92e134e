"""The template index: caches built once, published for a fleet of hosts to fetch.

``vzpkgcache publish DIR`` writes into DIR, which any web server, CDN or object store serves:

    index.json                         what is offered (format below, docs/caches.md)
    index.json.asc                     its detached OpenPGP signature (INDEX_SIGNING_KEY)
    <template>-<sha256[:16]>.tar.zst   the caches, by content: a file never changes once
    <template>-<sha256[:16]>.json      published, so a host fetching the previous index's
                                       files while a new index goes up still gets them

Hosts fetch from it: vzpkg.cache.fetch.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vzpkg import fsutil, run
from vzpkg.cache.manifest import MAX_EPOCH
from vzpkg.cache.store import CacheStore
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig
from vzpkg.pkgmgr.installed import printable

INDEX = "index.json"
SIGNATURE = "index.json.asc"
FORMAT = 1

Say = Callable[[str], None]


@dataclass(frozen=True)
class Entry:
    """One cache an index offers."""

    template: str
    file: str  # relative to the index
    size: int
    sha256: str
    manifest: str
    manifest_sha256: str
    created: str
    source_date_epoch: int
    family: str
    arch: str
    upstream: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Index:
    url: str
    created: str
    entries: dict[str, Entry]
    signed: bool

    def base(self) -> str:
        return self.url.rpartition("/")[0]


# -- publishing -------------------------------------------------------------------------------


def publish(
    store: CacheStore, names: Sequence[str], directory: Path, host: HostConfig, say: Say
) -> dict[str, Any]:
    """Write the caches ``names`` and an index of them into ``directory``; the index dict."""
    directory.mkdir(parents=True, exist_ok=True)
    previous = _previous_entries(directory / INDEX)
    was_signed = (directory / SIGNATURE).exists()
    entries, lines, files = [], [], []
    for name in names:
        cache = store.usable(name)
        stem = f"{name}-{cache.sha256[:16]}"
        manifest_bytes = store.manifest_path(name).read_bytes()
        files.append((cache.archive, manifest_bytes, stem))
        m = cache.manifest
        entries.append(
            Entry(
                template=name,
                file=f"{stem}.tar.zst",
                size=m.archive.size,
                sha256=cache.sha256,
                manifest=f"{stem}.json",
                manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
                created=m.created,
                source_date_epoch=m.source_date_epoch,
                family=m.family,
                arch=m.arch,
                upstream=tuple(
                    {"repository": f.repository, "url": f.url, "sha256": f.sha256, "date": f.date}
                    for f in m.upstream
                ),
            )
        )
        lines.append(f"{name}: {stem}.tar.zst ({m.archive.size / 2**20:.1f} MiB)")
    # Templates not named this time stay offered as they were (their files are still there).
    named = {e.template for e in entries}
    kept = [
        e
        for e in previous
        if e.template not in named
        and (directory / e.file).is_file()
        and (directory / e.manifest).is_file()
    ]
    everything = sorted([*entries, *kept], key=lambda e: e.template)
    index = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "templates": [asdict(e) for e in everything],
    }
    data = (json.dumps(index, indent=1, sort_keys=True) + "\n").encode()
    signature = _sign(data, host) if host.index_signing_key else None  # may fail: nothing yet
    for archive, manifest_bytes, stem in files:  # the files before the index that names them
        _put(archive, directory / f"{stem}.tar.zst")
        fsutil.atomic_write(directory / f"{stem}.json", manifest_bytes, 0o644)
    if signature is not None:
        # The signature first: a host that reads the new index with the old signature
        # fails closed and tries again (fetch_index), never the other way round unnoticed.
        fsutil.atomic_write(directory / SIGNATURE, signature, 0o644)
    else:
        if was_signed:
            say(f"warning: {directory / INDEX} was signed and is not any more (no "
                "INDEX_SIGNING_KEY): hosts with TEMPLATE_INDEX_KEYS will refuse it")  # fmt: skip
        with contextlib.suppress(FileNotFoundError):
            (directory / SIGNATURE).unlink()
    fsutil.atomic_write(directory / INDEX, data, 0o644)
    for line in lines:
        say(line)
    keep = {n for e in [*previous, *everything] for n in (e.file, e.manifest)}
    for path in directory.iterdir():
        if path.suffix in (".zst", ".json") and path.name != INDEX and path.name not in keep:
            path.unlink()  # neither this index's nor the previous one's
    fsutil.fsync_dir(directory)
    return index


def digest_of_keys(raws: Sequence[bytes]) -> str:
    """What names a set of trusted keys: the digest of the key files' bytes."""
    return hashlib.sha256(b"\0".join(hashlib.sha256(r).digest() for r in raws)).hexdigest()


def keys_digest(keys: Sequence[str]) -> str | None:
    """The digest of the key files ``keys`` (TEMPLATE_INDEX_KEYS) as they are now; None when
    there are none or one cannot be read (nothing is vouched for then)."""
    try:
        raws = [Path(key).read_bytes() for key in keys]
    except OSError:
        return None
    return digest_of_keys(raws) if raws else None


def _previous_entries(path: Path) -> list[Entry]:
    """The entries of the index a previous publish wrote in the directory (none if it is
    missing or unreadable)."""
    try:
        return list(parse_index(path.read_bytes(), str(path), signed=False).entries.values())
    except (OSError, VzError):
        return []


def _put(source: Path, target: Path) -> None:
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return  # published before: the name is its content
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _gpg_env(host: HostConfig) -> dict[str, str]:
    return {"GNUPGHOME": host.index_gnupghome} if host.index_gnupghome else {}


def _sign(data: bytes, host: HostConfig) -> bytes:
    run.check_tool("gpg", "to sign the template index", package="gnupg")
    assert host.index_signing_key is not None
    with tempfile.TemporaryDirectory(prefix="vzpkg-index.") as tmp:
        path = Path(tmp) / INDEX
        path.write_bytes(data)
        argv = ["gpg", "--batch", "--yes", "--pinentry-mode", "error", "--armor",
                "--local-user", host.index_signing_key, "--detach-sign", "--output", "-",
                str(path)]  # fmt: skip
        proc = run.run(argv, env=_gpg_env(host), stdout=-1, check=False)
    if proc.returncode != 0:
        raise VzError(
            f"the index could not be signed with INDEX_SIGNING_KEY={host.index_signing_key}: "
            + proc.stderr.decode(errors="replace").strip(),
            ExitCode.SIGNATURE,
            hint="the key must be in gpg's keyring (INDEX_GNUPGHOME) with no passphrase "
            "prompt; nothing was published",
        )
    return proc.stdout


# -- fetching ---------------------------------------------------------------------------------


_HEX64 = re.compile(r"[0-9a-f]{64}")
_TEMPLATE = re.compile(r"[a-z][a-z0-9]*-[A-Za-z0-9._]+-[a-z0-9_]+-[a-z][a-z0-9_]*")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\.(tar\.zst|json)")
MAX_CACHE = 64 << 30  # bytes: no cache comes near; a bigger "size" is refused unread


def _entry(raw: object) -> Entry:
    """One index entry, every field of the type and shape it must have: the index is read
    from the network, maybe unsigned, and names local paths (the part file is its sha256)."""
    if not isinstance(raw, dict):
        raise ValueError("an entry is not an object")
    want: dict[str, type] = {"template": str, "file": str, "size": int, "sha256": str,
                             "manifest": str, "manifest_sha256": str, "created": str,
                             "source_date_epoch": int, "family": str, "arch": str}  # fmt: skip
    for key, kind in want.items():
        if type(raw.get(key)) is not kind:
            raise ValueError(f"{key} is not a {kind.__name__}")
    checks = (
        (_TEMPLATE, "template"),
        (_FILE, "file"),
        (_FILE, "manifest"),
        (_HEX64, "sha256"),
        (_HEX64, "manifest_sha256"),
    )
    for pattern, key in checks:
        if not pattern.fullmatch(raw[key]) or len(raw[key]) > 200:
            raise ValueError(f"{key} {printable(raw[key][:80])!r}")
    if not 0 < raw["size"] <= MAX_CACHE or not 0 <= raw["source_date_epoch"] < MAX_EPOCH:
        raise ValueError(f"size {raw['size']} or source_date_epoch {raw['source_date_epoch']}")
    date_of(raw["created"])
    upstream = raw.get("upstream", [])
    if not isinstance(upstream, list) or not all(isinstance(u, dict) for u in upstream):
        raise ValueError("upstream is not a list of objects")
    return Entry(**{k: raw[k] for k in want}, upstream=tuple(upstream))


def date_of(text: str) -> datetime.datetime:
    """An ISO 8601 date with a time zone, as publish writes them (nothing else is shown to a
    user or compared)."""
    if len(text) > 40:
        raise ValueError("a date too long")
    date = datetime.datetime.fromisoformat(text)
    if date.tzinfo is None:
        raise ValueError(f"date {printable(text)!r} has no time zone")
    return date


def parse_index(data: bytes, url: str, signed: bool) -> Index:
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(
                f"unsupported format {raw.get('format') if isinstance(raw, dict) else raw!r}"
            )
        if not isinstance(raw["created"], str) or not isinstance(raw["templates"], list):
            raise ValueError("no created date or no templates")
        date_of(raw["created"])
        entries = {}
        for t in raw["templates"]:
            entry = _entry(t)
            entries[entry.template] = entry
        return Index(url, raw["created"], entries, signed)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise VzError(f"{url}: not a template index ({str(e)[:200]})", ExitCode.ARCHIVE) from None
