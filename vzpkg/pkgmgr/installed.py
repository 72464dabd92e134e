"""What is installed in a VPS, read on the host from its package database: dpkg's status file
or rpm's sqlite database. Nothing of the VPS runs, and no host tool reads its files either:
both are parsed here, as hostile input (a VPS's root writes them), read without following a
symlink and within a size limit, the rpm database from a copy in memory.
"""

from __future__ import annotations

import io
import sqlite3
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vzpkg.errors import ExitCode, VzError
from vzpkg.fsutil import read_file_beneath

DPKG_STATUS = "var/lib/dpkg/status"
RPMDBS = ("var/lib/rpm/rpmdb.sqlite", "usr/lib/sysimage/rpm/rpmdb.sqlite")
LIMIT = 256 << 20  # a package database larger than this is not read
_RPMDB_SECONDS = 20  # reading a VPS's rpm database takes no longer than this
# rpm header tags and types (rpmtag.h)
_NAME, _VERSION, _RELEASE, _EPOCH, _ARCH = 1000, 1001, 1002, 1003, 1022
_INT32, _STRING = 4, 6
_MAX_ENTRIES = 65536


@dataclass(frozen=True)
class InstalledPackage:
    """One installed package: name, version ([epoch:]version[-release]) and arch."""

    name: str
    version: str
    arch: str


Package = InstalledPackage


def installed(root: Path) -> tuple[str, list[Package]]:
    """(``deb`` or ``rpm``, the packages installed in the VPS whose root is ``root``), sorted
    by name. VzError when it has no package database, or one that cannot be read."""
    try:
        data = _read(root, DPKG_STATUS)
        return "deb", sorted(parse_dpkg_status(data), key=lambda p: (p.name, p.arch))
    except FileNotFoundError:
        pass
    for rel in RPMDBS:
        try:
            data = _read(root, rel)
        except FileNotFoundError:
            continue
        try:  # what rpm has not yet moved from its write-ahead log into the database
            wal = _read(root, rel + "-wal")
        except FileNotFoundError:
            wal = b""
        return "rpm", sorted(parse_rpmdb(data, wal), key=lambda p: (p.name, p.arch))
    raise VzError(
        "the VPS has no package database (neither /var/lib/dpkg/status nor an rpm sqlite database)",
        ExitCode.FAILURE,
    )


def _read(root: Path, rel: str) -> bytes:
    try:
        return read_file_beneath(root, rel, LIMIT)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise VzError(
            f"cannot read the VPS's package database /{rel}: {e.strerror or e}",
            ExitCode.FAILURE,
            hint=f"it must be a regular file (no symlink is followed) of at most {LIMIT >> 20} MiB",
        ) from None


def printable(text: str) -> str:
    """``text`` with every control character (a terminal escape a VPS wrote) as ``?``."""
    return "".join(c if c.isprintable() else " " if c == "\t" else "?" for c in text)


_LINE_MAX = 64 << 10  # a line of a status file longer than this is cut
_VALUE_MAX = 1 << 20  # a field's value longer than this is cut


def stanzas(data: bytes, wanted: frozenset[str] | set[str]) -> Iterator[dict[str, str]]:
    """The stanzas of a deb822 file (dpkg's status) with only the ``wanted`` fields, each
    value's lines joined by newlines. Read line by line, lines and values capped: a hostile
    file costs memory near its own size, whatever its shape."""
    fields: dict[str, str] = {}
    last: str | None = None
    for raw in io.BytesIO(data):
        line = raw[:_LINE_MAX].decode("utf-8", errors="replace").rstrip("\r\n")
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, None
        elif line[0] in " \t":
            if last is not None and len(fields[last]) < _VALUE_MAX:
                fields[last] += "\n" + line.strip()
        else:
            name, colon, value = line.partition(":")
            last = name if colon and name in wanted else None
            if last is not None:
                fields[last] = value.strip()
    if fields:
        yield fields


_STATUS_KEYS = frozenset({"Package", "Status", "Version", "Architecture"})


def parse_dpkg_status(data: bytes) -> list[Package]:
    """The installed packages of a dpkg status file (``Status: ... installed``)."""
    return [
        Package(para["Package"], para.get("Version", ""), para.get("Architecture", ""))
        for para in stanzas(data, _STATUS_KEYS)
        if para.get("Package") and para.get("Status", "").split()[-1:] == ["installed"]
    ]


def parse_rpmdb(data: bytes, wal: bytes = b"") -> list[Package]:
    """The packages of an rpm sqlite database (rpm 4.16 and later) and its write-ahead log,
    from their bytes: copied into a directory of vzpkg's own and opened there (sqlite treats
    a damaged file as an error, and runs nothing from it: no trusted schema)."""
    with tempfile.TemporaryDirectory(prefix="vzpkg-rpmdb.") as tmp:
        path = Path(tmp) / "rpmdb.sqlite"
        path.write_bytes(data)
        if wal:
            path.with_name("rpmdb.sqlite-wal").write_bytes(wal)
        try:
            connection = sqlite3.connect(path)
        except sqlite3.Error as e:
            raise VzError(f"the VPS's rpm database cannot be read: {e}", ExitCode.FAILURE) from None
        # The VPS wrote the file: a view that never ends or rows that multiply a small file
        # into gigabytes must cost neither time nor memory (sqlite checks signals only
        # between steps, so a step budget and a deadline stop it, not ^C).
        deadline = time.monotonic() + _RPMDB_SECONDS
        connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 10000)
        found = []
        try:
            connection.execute("PRAGMA trusted_schema=OFF")
            kind = connection.execute(
                "SELECT type FROM sqlite_master WHERE name = 'Packages'"
            ).fetchone()
            if kind is None or kind[0] != "table":
                raise sqlite3.DatabaseError("Packages is not a table")
            total = 0
            for (blob,) in connection.execute("SELECT blob FROM Packages"):
                if isinstance(blob, bytes):
                    total += len(blob)
                    if total > LIMIT:
                        raise sqlite3.DatabaseError(f"more than {LIMIT >> 20} MiB of headers")
                    package = _header(blob)
                    if package is not None:
                        found.append(package)
        except sqlite3.Error as e:
            raise VzError(f"the VPS's rpm database cannot be read: {e}", ExitCode.FAILURE) from None
        finally:
            connection.close()
    return found


def _header(blob: bytes) -> Package | None:
    """Name, version and arch of one rpm header blob (as rpm stores it: entry count, data
    length, the entries, the data); None for one that does not parse."""
    if len(blob) < 8:
        return None
    count, length = struct.unpack_from(">II", blob, 0)
    start = 8 + 16 * count
    if count > _MAX_ENTRIES or start + length > len(blob):
        return None
    data = blob[start : start + length]
    tags: dict[int, str | int] = {}
    for i in range(count):
        tag, kind, offset, _ = struct.unpack_from(">iIiI", blob, 8 + 16 * i)
        if tag not in (_NAME, _VERSION, _RELEASE, _EPOCH, _ARCH) or not 0 <= offset < length:
            continue
        if kind == _STRING:
            end = data.find(b"\0", offset)
            if end >= 0:
                tags[tag] = data[offset:end].decode("utf-8", errors="replace")
        elif kind == _INT32 and offset + 4 <= length:
            tags[tag] = struct.unpack_from(">I", data, offset)[0]
    name = tags.get(_NAME)
    if not isinstance(name, str):
        return None
    version = str(tags.get(_VERSION, ""))
    if _RELEASE in tags:
        version += f"-{tags[_RELEASE]}"
    if _EPOCH in tags:
        version = f"{tags[_EPOCH]}:{version}"
    return Package(name, version, str(tags.get(_ARCH, "(none)")))
