"""apt-family pure functions: the host's apt sources (both formats), the bootstrap argv lists,
and the dpkg status database."""

from __future__ import annotations

from pathlib import Path

from vzpkg.pkgmgr.apt import (
    AptSource,
    debootstrap_argv,
    find_host_mirror,
    host_apt_sources,
    mmdebstrap_argv,
    parse_deb822_sources,
    parse_one_line_sources,
    read_dpkg_status,
    sources_line,
)

ONE_LINE = """\
# the main archive
deb http://deb.example/debian/ bookworm main contrib
deb-src http://deb.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://sec.example/debian-security \
bookworm-security main   # trailing comment
#deb http://commented.example/debian bookworm main
deb http://short.example/
   deb  http://spaces.example/debian   bookworm-updates   main
"""

DEB822 = """\
# comment before the first stanza
Types: deb deb-src
URIs: http://a.example/debian/ http://b.example/debian
Suites: trixie trixie-updates
Components: main non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://disabled.example/debian
Suites: trixie
Components: main
Enabled: no

Types: deb-src
URIs: http://src.example/debian
Suites: trixie
Components: main

Types: deb
URIs: http://sec.example/debian-security
Suites: trixie-security
Components: main
Enabled: yes
"""


def test_one_line_sources_skip_deb_src_comments_and_options() -> None:
    assert parse_one_line_sources(ONE_LINE, "sources.list") == [
        AptSource("http://deb.example/debian", "bookworm", ("main", "contrib"), "sources.list"),
        AptSource(
            "http://sec.example/debian-security", "bookworm-security", ("main",), "sources.list"
        ),
        AptSource("http://spaces.example/debian", "bookworm-updates", ("main",), "sources.list"),
    ]


def test_deb822_sources_split_per_uri_and_suite_and_skip_disabled() -> None:
    sources = parse_deb822_sources(DEB822, "debian.sources")
    assert [(s.uri, s.suite) for s in sources] == [
        ("http://a.example/debian", "trixie"),
        ("http://a.example/debian", "trixie-updates"),
        ("http://b.example/debian", "trixie"),
        ("http://b.example/debian", "trixie-updates"),
        ("http://sec.example/debian-security", "trixie-security"),
    ]
    assert sources[0].components == ("main", "non-free-firmware")
    assert {s.origin for s in sources} == {"debian.sources"}


def test_deb822_enabled_false_is_disabled_like_no() -> None:
    text = "Types: deb\nURIs: http://x.example/\nSuites: s\nComponents: main\nEnabled: false\n"
    assert parse_deb822_sources(text, "x.sources") == []


def test_host_apt_sources_reads_sources_list_then_parts_in_order(tmp_path: Path) -> None:
    etc_apt = tmp_path / "apt"
    parts = etc_apt / "sources.list.d"
    parts.mkdir(parents=True)
    (etc_apt / "sources.list").write_text("deb http://main.example/debian bookworm main\n")
    (parts / "b.sources").write_text(
        "Types: deb\nURIs: http://b.example/debian\nSuites: bookworm-security\nComponents: main\n"
    )
    (parts / "a.list").write_text("deb http://a.example/debian bookworm-updates main\n")
    (parts / "c.list.disabled").write_text("deb http://c.example/debian bookworm main\n")
    (parts / "d.sources.save").write_text(
        "Types: deb\nURIs: http://d.example/\nSuites: bookworm\nComponents: main\n"
    )
    sources = host_apt_sources(etc_apt)
    assert [(s.uri, s.suite, Path(s.origin).name) for s in sources] == [
        ("http://main.example/debian", "bookworm", "sources.list"),
        ("http://a.example/debian", "bookworm-updates", "a.list"),
        ("http://b.example/debian", "bookworm-security", "b.sources"),
    ]


def test_host_apt_sources_of_an_empty_directory_is_empty(tmp_path: Path) -> None:
    assert host_apt_sources(tmp_path) == []


def test_find_host_mirror_takes_the_first_source_of_a_wanted_suite() -> None:
    sources = parse_one_line_sources(
        "deb http://one.example/debian bookworm main\n"
        "deb http://sec.example/debian-security bookworm-security main\n"
        "deb http://two.example/debian bookworm main\n",
        "sources.list",
    )
    assert find_host_mirror(sources, ["bookworm"]) == "http://one.example/debian"
    assert find_host_mirror(sources, ["trixie-security", "bookworm-security"]) == (
        "http://sec.example/debian-security"
    )
    assert find_host_mirror(sources, ["trixie"]) is None


def test_sources_line() -> None:
    assert sources_line("http://x/debian", "bookworm", ["main", "contrib"]) == (
        "deb http://x/debian bookworm main contrib"
    )


def test_mmdebstrap_argv_excludes_as_pkg_minus_and_pins_keyrings() -> None:
    target = Path("/srv/build/root")
    lines = ["deb http://x/debian bookworm main", "deb http://y/sec bookworm-security main"]
    argv = mmdebstrap_argv(
        suite="bookworm",
        target=target,
        source_lines=lines,
        arch="amd64",
        variant="minbase",
        keyrings=[Path("/usr/share/keyrings/debian-archive-keyring.gpg")],
        include=["openssh-server", "cron"],
        exclude=["systemd-sysv"],
        aptopts=['Acquire::Retries "3"'],
    )
    assert argv[0] == "mmdebstrap"
    assert {"--mode=root", "--format=directory", "--variant=minbase", "--architectures=amd64"} <= (
        set(argv)
    )
    assert "--keyring=/usr/share/keyrings/debian-archive-keyring.gpg" in argv
    assert "--include=openssh-server,cron,systemd-sysv-" in argv
    assert '--aptopt=Acquire::Retries "3"' in argv
    assert argv[-4:] == ["bookworm", str(target), *lines]
    assert not [a for a in argv if a.startswith(("--setup-hook", "--customize-hook", "--skip"))]


def test_mmdebstrap_argv_without_packages_has_no_include() -> None:
    argv = mmdebstrap_argv(
        suite="s", target=Path("/t"), source_lines=[], arch="arm64", variant="apt", keyrings=[]
    )
    assert not [a for a in argv if a.startswith(("--include", "--keyring"))]
    assert argv[-2:] == ["s", "/t"]


def test_mmdebstrap_argv_binds_the_package_cache_for_the_whole_run() -> None:
    pkgcache = Path("/var/cache/vz pkg/debian-12-x86_64")
    argv = mmdebstrap_argv(
        suite="bookworm",
        target=Path("/t"),
        source_lines=[],
        arch="amd64",
        variant="minbase",
        keyrings=[],
        pkgcache=pkgcache,
    )
    setup = [a for a in argv if a.startswith("--setup-hook=")]
    customize = [a for a in argv if a.startswith("--customize-hook=")]
    assert len(setup) == 1 and len(customize) == 1
    assert "mount --bind '/var/cache/vz pkg/debian-12-x86_64'" in setup[0]
    assert setup[0].endswith('"$1"/var/cache/apt/archives')
    assert customize[0] == '--customize-hook=umount "$1"/var/cache/apt/archives'
    assert "--skip=download/empty" in argv
    # Hooks are options: they come before the positional suite and target.
    assert argv.index(customize[0]) < argv.index("bookworm")


def test_debootstrap_argv() -> None:
    argv = debootstrap_argv(
        suite="bookworm",
        target=Path("/t"),
        mirror="http://x/debian",
        components=["main", "contrib"],
        arch="amd64",
        variant="minbase",
        keyring=Path("/k.gpg"),
        include=["cron", "less"],
        exclude=["systemd-sysv"],
        pkgcache=Path("/pc"),
    )
    assert argv[0] == "debootstrap"
    assert {
        "--variant=minbase",
        "--arch=amd64",
        "--keyring=/k.gpg",
        "--force-check-gpg",
        "--components=main,contrib",
        "--include=cron,less",
        "--exclude=systemd-sysv",
        "--cache-dir=/pc",
    } <= set(argv)
    assert argv[-3:] == ["bookworm", "/t", "http://x/debian"]


STATUS = """\
Package: zlib1g
Status: install ok installed
Architecture: amd64
Version: 1:1.2.13.dfsg-1

Package: base-files
Status: install ok installed
Priority: required
Architecture: amd64
Version: 12.4+deb12u5
Description: Debian base system miscellaneous files
 This package contains the basic filesystem hierarchy.
 .
 More text.

Package: old-removed
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: broken
Status: install reinstreq half-installed
Architecture: amd64
Version: 2.0

Package: held
Status: hold ok installed
Architecture: all
Version: 3.0

Package: libc6
Status: install ok installed
Architecture: i386
Version: 2.36-9

Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9
"""


def test_read_dpkg_status_lists_installed_packages_sorted(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(STATUS)
    assert read_dpkg_status(status) == [
        ("base-files", "12.4+deb12u5", "amd64"),
        ("held", "3.0", "all"),
        ("libc6", "2.36-9", "amd64"),
        ("libc6", "2.36-9", "i386"),
        ("zlib1g", "1:1.2.13.dfsg-1", "amd64"),
    ]
