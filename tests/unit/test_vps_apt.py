"""The pure parts of packages in a running Debian VPS (vzpkg.pkgmgr.apt, vzpkg.ct.packages): the
sanitised dpkg status the host's apt-get reads, apt-get's simulation, the command run inside,
what a transaction changed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vzpkg.ct.packages import Outcome, as_files, command_of, diff
from vzpkg.errors import VzError
from vzpkg.pkgmgr.apt import (
    Change,
    Fetch,
    Marks,
    apt_errors,
    parse_print_uris,
    parse_simulation,
    sanitize_dpkg_status,
    vps_apt_argv,
)

STATUS = b"""\
Package: hello
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 2.10-3
Installed-Size: 277
Depends: libc6 (>= 2.34)
Description: example package based on GNU hello
 The GNU hello program.
Conffiles:
 /etc/x 0123

Package: evil
Status: install ok installed
Architecture: amd64
Version: 1.0
Depends: libc6,
 foo "$(touch /pwned)"

Package: Bad_Name
Status: install ok installed
Version: 1

Package: folded
Status: deinstall ok config-files
Architecture: all
Version: 1:2.0~rc1+dfsg-1
Depends: a | b,
 c (<< 3)
"""


def test_the_status_copy_keeps_what_apt_resolves_with_and_nothing_else() -> None:
    clean, dropped = sanitize_dpkg_status(STATUS)
    text = clean.decode()
    assert dropped == 2  # a relation with shell in it, a name dpkg would not take
    assert "evil" not in text and "Bad_Name" not in text and "pwned" not in text
    assert "Description" not in text and "Conffiles" not in text
    assert "Installed-Size: 277\n" in text  # part of apt's version hash
    assert "Depends: a | b, c (<< 3)\n" in text  # folded onto one line
    assert "Status: deinstall ok config-files\n" in text


def test_a_status_of_any_bytes_never_breaks_the_copy() -> None:
    clean, dropped = sanitize_dpkg_status(b"\xff\xfe\0Package: x\n\n\n:::\n" + b"A" * 10000)
    assert (clean, dropped) == (b"", 0)
    # Fields by the hundred thousand (python-debian kept each, some 50 bytes of memory per
    # byte of the file): only the fields apt resolves with are kept.
    many = b"".join(b"X%d: y\n" % i for i in range(100_000))
    clean, dropped = sanitize_dpkg_status(
        b"Package: a\nStatus: install ok installed\nVersion: 1\n" + many + b"Depends: b\n"
    )
    assert clean == b"Package: a\nStatus: install ok installed\nVersion: 1\nDepends: b\n"
    assert "\x1b" not in repr(sanitize_dpkg_status(b"Package: a\nVersion: 1\x1b]2;x\n")[0])


def test_apt_get_simulation_is_read_as_changes() -> None:
    text = (
        "NOTE: This is only a simulation!\n"
        "Remv old-thing [1.0-1]\n"
        "Inst libfoo1 (1.2-3 Debian:12.15/oldstable [amd64])\n"
        "Inst bar [1:2.0-1] (1:2.1-1 Debian-Security:12/oldstable-security [amd64]) []\n"
        "Inst baz:i386 (3 Debian:12 [i386])\n"
        "Conf libfoo1 (1.2-3 Debian:12.15/oldstable [amd64])\n"
    )
    assert parse_simulation(text) == [
        Change("libfoo1", "amd64", None, "1.2-3"),
        Change("bar", "amd64", "1:2.0-1", "1:2.1-1"),
        Change("baz", "i386", None, "3"),
        Change("old-thing", "", "1.0-1", None),
    ]
    assert apt_errors("W: x\nE: Unable to locate package nope\n") == [
        "Unable to locate package nope"
    ]


def test_the_command_inside_sees_no_repository_and_sets_the_marks() -> None:
    marks = Marks(manual=("hello",), auto=("libfoo1",), keep=("libc6",))
    argv = vps_apt_argv(["install", "/run/vzpkg/pool/hello_2.10-3_amd64.deb"], "abc", marks)
    assert argv[:2] == ["/bin/sh", "-c"]
    assert "-oDir::Etc::SourceList=/run/vzpkg/tx.abc/sources.list" in argv
    assert "-oDir::State::Lists=/run/vzpkg/tx.abc/lists" in argv
    assert "-oDpkg::Options::=--force-confold" in argv  # no question about a changed conffile
    assert argv[-3:] == ["-y", "install", "/run/vzpkg/pool/hello_2.10-3_amd64.deb"]
    with pytest.raises(ValueError):
        Marks(manual=("x; touch /pwned",))


def test_the_script_inside_runs_as_written(tmp_path: Path) -> None:
    """The script, run by a real sh with apt-get and apt-mark stubs that log their words."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("apt-get", "apt-mark"):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {tmp_path}/log\n'
                        '[ "$1" = showauto ] && echo libc6\nexit 0\n')  # fmt: skip
        stub.chmod(0o755)
    # dpkg knows every name but "gone" (a package a failed transaction did not leave)
    (bin_dir / "dpkg-query").write_text(
        '#!/bin/sh\nshift 3; for p; do [ "$p" = gone ] || echo "$p"; done\n'
    )
    (bin_dir / "dpkg-query").chmod(0o755)
    marks = Marks(manual=("a",), auto=("b", "gone"), keep=("libc6", "zlib1g"))
    argv = vps_apt_argv(["install", "/p/a_1_all.deb"], "t1", marks)
    script = argv[2].replace("/run/vzpkg", str(tmp_path))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    out = subprocess.run(["sh", "-c", script, *argv[3:]], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    log = (tmp_path / "log").read_text().splitlines()
    assert log[0] == "apt-mark showauto libc6 zlib1g"
    assert log[1].startswith("apt-get -oDir::Etc::SourceList=") and log[1].endswith(
        "-y install /p/a_1_all.deb"
    )
    assert log[2:] == ["apt-mark manual a", "apt-mark auto b libc6"]
    assert not (tmp_path / "tx.t1").exists()  # the transaction's directory goes at the end


def test_print_uris_is_read_as_files_to_fetch() -> None:
    text = (
        "Reading package lists...\n"
        "'http://deb.example/debian/pool/main/h/hello/hello_2.10-3_amd64.deb' "
        "hello_2.10-3_amd64.deb 53080 SHA256:" + "ab" * 32 + "\n"
        "'http://deb.example/debian/pool/main/b/bar/bar_1%3a2.1-1_all.deb' "
        "bar_1%3a2.1-1_all.deb 7 SHA256:" + "01" * 32 + "\n"
    )
    first, second = parse_print_uris(text)
    assert first == Fetch("http://deb.example/debian/pool/main/h/hello/hello_2.10-3_amd64.deb",
                          "hello_2.10-3_amd64.deb", 53080, "ab" * 32)  # fmt: skip
    assert second.name_version_arch == ("bar", "1:2.1-1", "all")
    with pytest.raises(ValueError):
        parse_print_uris("'http://x/../y.deb' ../../etc/passwd.deb 1 SHA256:" + "00" * 32)


def test_apt_get_command_word() -> None:
    assert command_of(["-y", "-o", "X=1", "install", "a"]) == "install"
    assert command_of(["--no-install-recommends", "purge", "a"]) == "purge"
    with pytest.raises(VzError):
        command_of(["-y"])


def test_what_a_transaction_changed_comes_from_the_status_before_and_after() -> None:
    before = b"Package: a\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n\n" + (
        b"Package: b\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n"
    )
    after = b"Package: a\nStatus: install ok installed\nVersion: 2\nArchitecture: all\n\n" + (
        b"Package: c\nStatus: install ok installed\nVersion: 5\nArchitecture: amd64\n\n"
        b"Package: b\nStatus: deinstall ok config-files\nVersion: 1\nArchitecture: amd64\n"
    )
    changes = diff(before, after)
    assert changes == [
        Change("a", "all", "1", "2"),
        Change("b", "amd64", "1", None),
        Change("c", "amd64", None, "5"),
    ]
    report = Outcome(101, "debian-12-x86_64-minimal", tuple(changes), False, 0).as_json()
    assert report["installed"] == [{"name": "c", "arch": "amd64", "version": "5"}]
    assert report["upgraded"] == [{"name": "a", "arch": "all", "from": "1", "to": "2"}]
    assert report["removed"] == [{"name": "b", "arch": "amd64", "version": "1"}]


def test_the_vps_installs_the_files_with_the_marks_apt_get_would_leave() -> None:
    status = b"Package: libc6\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n"
    fetches = [
        Fetch("http://m/l.deb", "libc6_2_amd64.deb", 1, "00" * 32),
        Fetch("http://m/h.deb", "hello_2.10-3_amd64.deb", 1, "00" * 32),
        Fetch("http://m/d.deb", "libdep1_1_amd64.deb", 1, "00" * 32),
    ]
    args, marks = as_files(["-o", "X=1", "install", "hello=2.10-3", "--no-install-recommends"],
                            fetches, status)  # fmt: skip
    assert args == [
        "install", "-o", "X=1", "--no-install-recommends", "/run/vzpkg/pool/libc6_2_amd64.deb",
        "/run/vzpkg/pool/hello_2.10-3_amd64.deb", "/run/vzpkg/pool/libdep1_1_amd64.deb",
    ]  # fmt: skip
    assert marks == Marks(manual=("hello",), auto=("libdep1",), keep=("libc6",))
    args, marks = as_files(["upgrade", "--with-new-pkgs"], fetches[:1], status)
    assert args == ["install", "/run/vzpkg/pool/libc6_2_amd64.deb"]  # install takes no such option
    assert marks == Marks(keep=("libc6",))
    # Nothing to fetch: apt-get install NAME of what is there only marks it manual.
    assert as_files(["install", "libc6"], [], status) == (["install"], Marks(manual=("libc6",)))
    assert as_files(["install", "-f"], [], status) == (["install", "-f"], Marks())
    assert as_files(["upgrade"], [], status) == ([], Marks())


def test_an_rpm_vps_database_never_puts_options_on_dnfs_command_line() -> None:
    from vzpkg.ct.rpmpackages import nevra, parse_table
    from vzpkg.distro.base import InstalledPackage

    assert nevra(InstalledPackage("bash", "5.2-1", "x86_64")) == "bash-5.2-1.x86_64"
    assert nevra(InstalledPackage("x", "2:0.5-3", "noarch")) == "x-2:0.5-3.noarch"
    for hostile in (("--setopt=gpgcheck=0", "1-1", "noarch"), ("a", "1 -y", "noarch"),
                    ("a", "1-1", "noarch --nogpgcheck")):  # fmt: skip
        assert nevra(InstalledPackage(*hostile)) is None
    table = (
        "Dependencies resolved.\n"
        " Package         Architecture   Version    Repository   Size\n"
        "Installing:\n vzfix-extra     noarch         2:0.5-3    vzfix        6.6 k\n"
        "Upgrading:\n setup           noarch         2.15-1     vzfix        3 k\n"
        "Removing:\n old             noarch         1-1        @System      6  \n"
    )
    assert parse_table(table, {"setup": "2.14-1", "old": "1-1"}) == [
        Change("vzfix-extra", "noarch", None, "2:0.5-3"),
        Change("setup", "noarch", "2.14-1", "2.15-1"),
        Change("old", "noarch", "1-1", None),
    ]
