"""A host of the fleet fetches caches from template indexes (vzpkg.cache.index says what they
hold).

Hosts name index URLs (TEMPLATE_INDEX) and the keys an index must be signed with
(TEMPLATE_INDEX_KEYS). ``vzpkgcache fetch NAME`` checks the index's signature (fail-closed when
keys are configured), downloads the cache (resumable: the part is kept in PKGCACHE_DIR/fetch),
checks its size and sha256 and its manifest's, and publishes it as a local build would (an
archive from an unsigned index is validated in full first). ``vzctl create`` does the same for
a missing cache. The index is untrusted input until its signature verifies: every field is
checked (vzpkg.cache.index.parse_index), every request has a deadline.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from vzpkg import fsutil, lock, run
from vzpkg.cache.archive import validate_archive
from vzpkg.cache.index import (
    INDEX,
    Entry,
    Index,
    Say,
    date_of,
    digest_of_keys,
    keys_digest,
    parse_index,
)
from vzpkg.cache.manifest import Manifest, manifest_from_dict
from vzpkg.cache.store import CacheStore
from vzpkg.errors import ExitCode, VzError, network_reason
from vzpkg.hostconf import HostConfig

TIMEOUT = 30  # seconds without a byte from the server
MANIFEST_MAX = 16 << 20
INDEX_MAX = 16 << 20
REQUEST_DEADLINE = 120  # seconds for an index, a signature or a manifest, whole
MIN_RATE = 256 << 10  # bytes per second a cache download must average (it resumes later)
RATE_GRACE = 60  # seconds before the rate counts (a slow start is no stall)


@contextlib.contextmanager
def _deadline(seconds: float, what: str) -> Iterator[None]:
    """At most ``seconds`` for the block, whatever a server does (a byte every 29 s keeps
    each read within its timeout): SIGALRM interrupts the blocked read. Main thread only;
    elsewhere the block runs with the per-read timeouts alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise VzError(f"{what}: no answer within {seconds:.0f} s", ExitCode.UPSTREAM,
                      hint="the server is too slow or stalls; try again (a cache download "
                      "resumes where it stopped)")  # fmt: skip

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def index_url(url: str) -> str:
    return url if url.endswith(".json") else url.rstrip("/") + "/" + INDEX


def _get(url: str, limit: int) -> bytes:
    import requests  # only fetches need it

    try:
        with _deadline(REQUEST_DEADLINE, url), requests.get(url, timeout=TIMEOUT, stream=True) as r:
            if r.status_code != 200:
                raise VzError(f"{url}: HTTP {r.status_code}", ExitCode.UPSTREAM,
                              hint="is TEMPLATE_INDEX right?")  # fmt: skip
            data = b""
            for chunk in r.iter_content(65536):
                data += chunk
                if len(data) > limit:
                    raise VzError(f"{url}: larger than {limit} bytes", ExitCode.ARCHIVE)
            return data
    except (requests.RequestException, ValueError) as e:  # ValueError: a malformed redirect
        hint = "is the index server up and TEMPLATE_INDEX right?"
        raise VzError(f"cannot reach {url}: {network_reason(e)}", ExitCode.UPSTREAM,
                      hint=hint) from None  # fmt: skip


def _public_key(raw: bytes, name: str, work: Path) -> bytes:
    """The binary OpenPGP key of the file ``name`` (armored or not), or a configuration error
    naming it: a file that holds no key must not read as a bad signature."""
    if b"-----BEGIN PGP" in raw:
        proc = run.run(["gpg", "--batch", "--dearmor"], input=raw[raw.index(b"-----BEGIN PGP"):],
                       stdout=-1, env={"GNUPGHOME": str(work)}, check=False)  # fmt: skip
        raw = proc.stdout if proc.returncode == 0 else b""
    shown = run.run(["gpg", "--batch", "--with-colons", "--show-keys"], input=raw, stdout=-1,
                    env={"GNUPGHOME": str(work)}, check=False)  # fmt: skip
    if not raw or shown.returncode != 0 or b"\npub:" not in b"\n" + shown.stdout:
        raise VzError(f"TEMPLATE_INDEX_KEYS: {name} holds no OpenPGP public key",
                      ExitCode.CONFIG, hint="name the operator's public key files (gpg --export "
                      "[--armor] KEY)")  # fmt: skip
    return raw


def verify(
    data: bytes, signature: bytes, keys: Sequence[str], url: str, keep: Path | None = None
) -> None:
    """``signature`` of ``data`` is good and made by one of ``keys`` (gpgv with a keyring of
    those only), or VzError (exit 202). ``keep``: a root-only directory where the keyring
    made of these keys' bytes is kept, so that the next fetch runs gpgv alone."""
    run.check_tool("gpgv", "to verify template indexes", package="gpgv")
    with tempfile.TemporaryDirectory(prefix="vzpkg-verify.") as tmp:
        work = Path(tmp)
        keyring = _keyring(keys, work, keep)
        (work / "data").write_bytes(data)
        (work / "data.asc").write_bytes(signature)
        proc = run.run(["gpgv", "--keyring", str(keyring), str(work / "data.asc"),
                        str(work / "data")], stdout=-1, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise VzError(
            f"{url}: the signature does not verify with TEMPLATE_INDEX_KEYS",
            ExitCode.SIGNATURE,
            hint="the index was changed or signed by another key; nothing was fetched",
        )


def _keyring(keys: Sequence[str], work: Path, keep: Path | None) -> Path:
    """A binary keyring of ``keys`` (checked to hold keys), kept in ``keep`` by the digest of
    the key files' bytes."""
    raws = []
    for key in keys:
        try:
            raws.append(Path(key).read_bytes())
        except OSError as e:
            raise VzError(f"TEMPLATE_INDEX_KEYS: cannot read {key}: {e.strerror}",
                          ExitCode.CONFIG) from None  # fmt: skip
    digest = digest_of_keys(raws)
    if keep is not None:
        lock.ensure_private_dir(keep, "download directory", "PKGCACHE_DIR")
        kept = keep / f"keyring-{digest}.gpg"
        if kept.is_file() and not kept.is_symlink():
            return kept
    data = b"".join(_public_key(raw, key, work) for raw, key in zip(raws, keys, strict=True))
    if keep is None:
        (work / "trusted.gpg").write_bytes(data)
        return work / "trusted.gpg"
    for old in keep.glob("keyring-*.gpg"):
        old.unlink()  # of keys no longer configured
    fsutil.atomic_write(kept, data, 0o600)
    return kept


def fetch_index(url: str, host: HostConfig) -> Index:
    """The index at ``url``, its signature verified when TEMPLATE_INDEX_KEYS names keys."""
    url = index_url(url)
    keys = host.template_index_keys
    for attempt in (1, 2):
        data = _get(url, INDEX_MAX)
        if not keys:
            return parse_index(data, url, signed=False)
        try:
            verify(data, _signature(url), keys, url, host.pkgcache_dir / "fetch")
        except VzError:
            if attempt == 2:
                raise
            time.sleep(1)  # a new index may be going up between its two files
            continue
        return parse_index(data, url, signed=True)
    raise AssertionError("unreachable")


def _signature(url: str) -> bytes:
    try:
        return _get(url + ".asc", 1 << 20)
    except VzError as e:
        if "HTTP 404" not in e.message:
            raise
    raise VzError(f"{url} is not signed (no {url}.asc) and TEMPLATE_INDEX_KEYS requires a "
                  "signature", ExitCode.SIGNATURE,
                  hint="the operator sets INDEX_SIGNING_KEY and publishes again; nothing was "
                  "fetched")  # fmt: skip


def indexes(host: HostConfig) -> list[Index]:
    """Every configured index, in order; one that cannot be read stops the listing."""
    _require_indexes(host)
    return [fetch_index(url, host) for url in host.template_indexes]


def _require_indexes(host: HostConfig) -> None:
    if not host.template_indexes:
        raise VzError("no template index is configured", ExitCode.CONFIG,
                      hint='set TEMPLATE_INDEX="https://..." in the host configuration '
                      "(and TEMPLATE_INDEX_KEYS)")  # fmt: skip


def find(host: HostConfig, name: str, say: Say) -> tuple[Index, Entry]:
    """The first index that offers ``name``; an index that cannot be read is passed over
    (with a warning) when a later one offers it."""
    _require_indexes(host)
    failures: list[VzError] = []
    for url in host.template_indexes:
        try:
            index = fetch_index(url, host)
        except VzError as e:
            failures.append(e)
            continue
        if name in index.entries:
            for failure in failures:
                say(f"warning: {failure.message}")
            return index, index.entries[name]
    if failures:
        raise failures[0]
    raise VzError(f"no cache of {name} in the configured template indexes",
                  ExitCode.TEMPLATE_NOT_FOUND,
                  hint=f"vzpkgls --remote lists what they offer; vzpkgcache {name} builds it "
                  "here")  # fmt: skip


def is_older(entry: Entry, manifest: Manifest) -> bool:
    """Whether the index's cache is older than the local one: the upstream state it was
    built from, then when it was built."""
    return (entry.source_date_epoch, entry.created) < (manifest.source_date_epoch,
                                                       manifest.created)  # fmt: skip


def _remember_index(host: HostConfig, index: Index) -> None:
    """Refuse an index older than one seen before from the same URL (a replayed one would
    otherwise hold a host at old caches for ever); remember this one's date."""
    where = host.pkgcache_dir / "fetch"
    lock.ensure_private_dir(where, "download directory", "PKGCACHE_DIR")
    path = where / "seen.json"
    try:
        seen = json.loads(path.read_text())
        seen = seen if isinstance(seen, dict) else {}
    except (OSError, ValueError):
        seen = {}
    if not index.signed:
        return  # anyone could have written an unsigned one's date: it vouches for nothing
    newest = seen.get(index.url)
    if isinstance(newest, str) and date_of(index.created) < date_of(newest):
        raise VzError(f"{index.url} is older ({index.created}) than the index this host read "
                      f"there before ({newest}): replayed or rolled back", ExitCode.SIGNATURE,
                      hint=f"if the operator rolled it back on purpose, remove {path}")  # fmt: skip
    if newest != index.created:
        seen[index.url] = index.created
        fsutil.atomic_write(path, json.dumps(seen, sort_keys=True).encode(), 0o600)


def fetch_cache(
    host: HostConfig, name: str, say: Say, *, lock_timeout: float = 0
) -> dict[str, str | int]:
    """Fetch ``name``'s cache from the first index that has it and publish it; what was
    done (status "fetched" or "up-to-date", the file, its size and sha256, the index).
    Nothing is published unless everything checks out."""
    index, entry = find(host, name, say)
    done: dict[str, str | int] = {
        "template": name,
        "status": "up-to-date",
        "index": index.url,
        "file": entry.file,
        "size": entry.size,
        "sha256": entry.sha256,
    }
    if not index.signed:
        say(f"{name}: warning: {index.url} is not verified (TEMPLATE_INDEX_KEYS is empty)")
    store = CacheStore(host.cache_dir)
    with lock.locked(host.lock_dir, f"cache-{name}", timeout=lock_timeout, what=f"cache {name}"):
        _remember_index(host, index)
        _sweep_parts(host.pkgcache_dir / "fetch", index)
        local = store.info(name)
        if local is not None and local.manifest is not None and local.usable:
            if local.manifest.archive.sha256 == entry.sha256:
                return done
            if is_older(entry, local.manifest):
                raise VzError(
                    f"{index.url} offers an older cache of {name} than this host has "
                    f"(upstream state of {_date(entry.source_date_epoch)}, built "
                    f"{entry.created}; here: {_date(local.manifest.source_date_epoch)}, "
                    f"built {local.manifest.created})",
                    ExitCode.ARCHIVE,
                    hint="nothing was changed; vzpkgcache -r NAME first to take the index's",
                )
        manifest_bytes = _get(f"{index.base()}/{entry.manifest}", MANIFEST_MAX)
        if hashlib.sha256(manifest_bytes).hexdigest() != entry.manifest_sha256:
            raise VzError(f"{entry.manifest}: not the manifest the index names (sha256 differs)",
                          ExitCode.SIGNATURE, hint="nothing was fetched")  # fmt: skip
        manifest = _manifest(manifest_bytes, entry)
        part = _download(f"{index.base()}/{entry.file}", entry, host.pkgcache_dir / "fetch", say)
        workdir = store.new_workdir(name)
        try:
            archive = workdir / "new.tar.zst"
            try:
                os.replace(part, archive)
            except OSError:
                shutil.move(part, archive)
            os.chmod(archive, 0o644)  # as a built cache
            if not index.signed:
                # Signed: these are the bytes the operator's build validated before it
                # published them; every unpack checks every member again in any case.
                say(f"{name}: verifying the archive")
                validate_archive(archive, manifest.archive.uncompressed_size)
            # Where these bytes came from, before they are the cache: a crash in between
            # leaves a record that names other bytes, which vouches for nothing.
            keys = keys_digest(host.template_index_keys) if index.signed else None
            store.set_origin(name, {"sha256": entry.sha256, "source": "index",
                                    "index": index.url, "keys": keys})  # fmt: skip
            store.publish(name, archive, manifest)
        finally:
            fsutil.remove_tree_safely(workdir)
    say(f"{name}: fetched {entry.file} ({entry.size / 2**20:.1f} MiB) from {index.base()}")
    return {**done, "status": "fetched"}


def _sweep_parts(where: Path, index: Index) -> None:
    """Parts of downloads this index no longer offers: they would never be resumed."""
    wanted = {f"{e.sha256}.part" for e in index.entries.values()}
    for part in where.glob("*.part"):
        if part.name not in wanted:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()


def _date(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _manifest(data: bytes, entry: Entry) -> Manifest:
    try:
        raw = json.loads(data)
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        raise VzError(f"{entry.manifest}: not a cache manifest", ExitCode.ARCHIVE)
    manifest = manifest_from_dict(raw, entry.manifest)
    said = (entry.template, entry.sha256, entry.size, entry.source_date_epoch, entry.created)
    if (
        manifest.template,
        manifest.archive.sha256,
        manifest.archive.size,
        manifest.source_date_epoch,
        manifest.created,
    ) != said:
        raise VzError(f"{entry.manifest} describes another cache than the index names",
                      ExitCode.SIGNATURE, hint="nothing was fetched")  # fmt: skip
    return manifest


def _download(url: str, entry: Entry, where: Path, say: Say) -> Path:
    """``url`` into ``where``/<sha256>.part, resuming what an earlier attempt left; the file,
    checked against the entry's size and sha256 as it arrives (a wrong one is removed)."""
    import requests

    # Root's alone: nobody else plants a file or a link there.
    lock.ensure_private_dir(where, "download directory", "PKGCACHE_DIR")
    part = where / f"{entry.sha256}.part"
    assert part.parent == where and len(entry.sha256) == 64  # checked by _entry
    free = shutil.disk_usage(where).free
    if free < entry.size + (256 << 20):
        raise VzError(f"{entry.template}: {entry.size / 2**20:.0f} MiB to download and "
                      f"{free / 2**20:.0f} MiB free in {where}", ExitCode.FAILURE,
                      hint="make room in PKGCACHE_DIR; nothing was fetched")  # fmt: skip
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "r+b") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise VzError(f"{part} is not a regular file", ExitCode.FAILURE)
        digest = hashlib.sha256()
        have = os.fstat(fd).st_size if os.fstat(fd).st_size <= entry.size else 0
        f.truncate(have)
        while chunk := f.read(min(1 << 20, have - f.tell())):
            digest.update(chunk)
        headers = {"Range": f"bytes={have}-"} if 0 < have < entry.size else {}
        allowed = REQUEST_DEADLINE + (entry.size - have) / MIN_RATE
        try:
            if have < entry.size:
                with (
                    _deadline(allowed, url),
                    requests.get(url, timeout=TIMEOUT, stream=True, headers=headers) as answer,
                ):
                    if answer.status_code == 200:
                        have, digest = 0, hashlib.sha256()
                        f.seek(0)
                        f.truncate(0)
                    elif answer.status_code != 206 or not headers:
                        raise VzError(f"{url}: HTTP {answer.status_code}", ExitCode.UPSTREAM,
                                      hint="is the index server up?")  # fmt: skip
                    if have:
                        say(f"{entry.template}: resuming at {have / 2**20:.1f} MiB")
                    _receive(answer, f, digest, have, entry)
        except (requests.RequestException, ValueError, VzError) as e:
            f.flush()
            got = os.fstat(fd).st_size
            if isinstance(e, VzError):
                raise VzError(f"{e.message} (the {got} bytes received are kept)", e.code,
                              hint=e.hint) from None  # fmt: skip
            hint = "try again: the part already fetched is kept and resumed"
            why = network_reason(e)
            raise VzError(f"{url}: the download was cut after {got} of {entry.size} bytes "
                          f"({why})", ExitCode.UPSTREAM, hint=hint) from None  # fmt: skip
        f.flush()
        size = os.fstat(fd).st_size
    if size < entry.size:
        raise VzError(f"{url}: the download was cut after {size} of {entry.size} bytes",
                      ExitCode.UPSTREAM, hint="try again: it resumes where it stopped")  # fmt: skip
    if size != entry.size or digest.hexdigest() != entry.sha256:
        part.unlink()
        raise VzError(f"{url} is not the cache the index names (size or sha256 differ)",
                      ExitCode.SIGNATURE, hint="nothing was published")  # fmt: skip
    return part


def _receive(answer: Any, out: IO[bytes], digest: Any, have: int, entry: Entry) -> None:
    """The body of ``answer`` appended to ``out`` and ``digest``, never past the entry's
    size; progress on a terminal."""
    show = sys.stderr.isatty()
    done, last, began = have, 0.0, time.monotonic()
    for chunk in answer.iter_content(65536):
        chunk = chunk[: entry.size - done]
        done += len(chunk)
        digest.update(chunk)
        out.write(chunk)
        if done >= entry.size:
            break
        elapsed = time.monotonic() - began
        if elapsed > RATE_GRACE and (done - have) / elapsed < MIN_RATE:
            raise VzError(f"{entry.template}: the server sends less than "
                          f"{MIN_RATE >> 10} KiB/s", ExitCode.UPSTREAM,
                          hint="try again later: the download resumes")  # fmt: skip
        if show and time.monotonic() - last > 0.5:
            last = time.monotonic()
            sys.stderr.write(f"\r{entry.template}: {done * 100 // entry.size}% of "
                             f"{entry.size / 2**20:.1f} MiB")  # fmt: skip
    if show:
        sys.stderr.write("\n")
