"""What is installed in a VPS, parsed on the host from its package database (hostile input)."""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
from pathlib import Path

import pytest

from vzpkg.errors import VzError
from vzpkg.pkgmgr import installed
from vzpkg.pkgmgr.installed import Package

STATUS = b"""Package: adduser
Status: install ok installed
Architecture: all
Version: 3.134
Description: add and remove users
 a continuation line: Status: nothing

Package: gone
Status: deinstall ok config-files
Version: 1.0
Architecture: amd64

Package: libc6
Status: install ok installed
Multi-Arch: same
Architecture: amd64
Version: 2.36-9+deb12u4

Package: half
Status: install reinstreq half-installed
Version: 2
Architecture: amd64
"""


def test_dpkg_status_lists_installed_packages_only() -> None:
    assert installed.parse_dpkg_status(
        STATUS.replace(b"\nPackage: gone", b"\n\nPackage: gone")
    ) == [
        Package("adduser", "3.134", "all"),
        Package("libc6", "2.36-9+deb12u4", "amd64"),
    ]


def _header(tags: dict[int, tuple[int, bytes]]) -> bytes:
    """An rpm header blob: entry count, data length, entries (tag, type, offset, count), data."""
    entries, data = b"", b""
    for tag, (kind, value) in tags.items():
        entries += struct.pack(">iIiI", tag, kind, len(data), 1)
        data += value
    return struct.pack(">II", len(tags), len(data)) + entries + data


def _rpmdb(path: Path, blobs: list[bytes]) -> bytes:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)")
    db.executemany("INSERT INTO Packages (blob) VALUES (?)", [(b,) for b in blobs])
    db.commit()
    db.close()
    return path.read_bytes()


def test_rpm_headers_and_hostile_ones(tmp_path: Path) -> None:
    good = _header({1000: (6, b"bash\0"), 1001: (6, b"5.1.8\0"), 1002: (6, b"6.el9\0"),
                    1003: (4, struct.pack(">I", 1)), 1022: (6, b"x86_64\0")})  # fmt: skip
    hostile = [
        b"",  # too short
        struct.pack(">II", 10**6, 0),  # an entry count past the blob
        struct.pack(">II", 1, 10**9) + b"\0" * 16,  # a data length past the blob
        _header({1000: (6, b"no-nul")}),  # a string that never ends
        struct.pack(">II", 1, 4) + struct.pack(">iIiI", 1000, 6, 2**30, 1) + b"abc\0",
        _header({1001: (6, b"1.0\0")}),  # no name
        b"\xff" * 64,
    ]
    data = _rpmdb(tmp_path / "rpmdb.sqlite", [good, *hostile])
    assert installed.parse_rpmdb(data) == [Package("bash", "1:5.1.8-6.el9", "x86_64")]
    with pytest.raises(VzError, match="cannot be read"):
        installed.parse_rpmdb(b"SQLite format 3\0" + b"\xff" * 200)
    with pytest.raises(VzError, match="cannot be read"):
        installed.parse_rpmdb(b"not a database at all")


def test_a_database_rpm_itself_wrote_with_its_log(tmp_path: Path) -> None:
    spec = tmp_path / "t.spec"
    spec.write_text(
        "Name: vzt-hello\nVersion: 1.2\nRelease: 3\nEpoch: 2\nSummary: t\nLicense: MIT\n"
        "BuildArch: noarch\n%description\nt\n%files\n"
    )
    top = tmp_path / "top"
    subprocess.run(["rpmbuild", "-bb", "--define", f"_topdir {top}", str(spec)], check=True,
                   capture_output=True)  # fmt: skip
    root = tmp_path / "root"
    (root / "var/lib/rpm").mkdir(parents=True)
    rpm = ["rpm", f"--root={root}", "--dbpath=/var/lib/rpm"]
    subprocess.run([*rpm, "--initdb"], check=True, capture_output=True)
    (package,) = (top / "RPMS" / "noarch").iterdir()
    subprocess.run([*rpm, "-i", "--justdb", "--nodeps", "--nosignature", str(package)],
                   check=True, capture_output=True)  # fmt: skip
    assert installed.installed(root) == ("rpm", [Package("vzt-hello", "2:1.2-3", "noarch")])


def test_a_root_without_a_database_or_with_a_planted_one(tmp_path: Path) -> None:
    with pytest.raises(VzError, match="no package database"):
        installed.installed(tmp_path)
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    os.symlink("/etc/shadow", status)  # never followed
    with pytest.raises(VzError, match="no symlink"):
        installed.installed(tmp_path)
    status.unlink()
    os.mkfifo(status)  # no hang
    with pytest.raises(VzError, match="cannot read"):
        installed.installed(tmp_path)
    status.unlink()
    with status.open("wb") as f:  # sparse, past the limit: refused, not read into memory
        f.truncate(installed.LIMIT + 1)
    with pytest.raises(VzError, match="cannot read"):
        installed.installed(tmp_path)


def test_a_hostile_rpm_database_costs_neither_time_nor_memory() -> None:
    """A view in place of the Packages table that never ends, and rows that multiply a small
    file into gigabytes: refused, not run or read to the end."""
    import sqlite3
    import tempfile
    from pathlib import Path

    import pytest

    from vzpkg.errors import VzError
    from vzpkg.pkgmgr.installed import parse_rpmdb

    with tempfile.TemporaryDirectory() as tmp:
        for schema in (
            "CREATE VIEW Packages AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
            "SELECT x+1 FROM c) SELECT x AS blob FROM c WHERE x < 0",
            "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY, blob BLOB);"
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 300) "
            "INSERT INTO Packages (blob) SELECT zeroblob(1 << 20) FROM c",
        ):
            path = Path(tmp) / "db.sqlite"
            path.unlink(missing_ok=True)
            connection = sqlite3.connect(path)
            connection.executescript(schema)
            connection.close()
            with pytest.raises(VzError, match="cannot be read"):
                parse_rpmdb(path.read_bytes())
