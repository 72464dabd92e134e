"""The rpm fixture distribution, checked with the real tools: rpmkeys, gpgv and host dnf.

dnf installs it into an empty root exactly as a cache build will, with gpgcheck and
repo_gpgcheck on; the resulting root runs busybox's shell and applets in a chroot.
"""

from __future__ import annotations

import collections
import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.rpmfixture import (
    HOST_BUSYBOX,
    FileSpec,
    FixtureRepo,
    PackageSpec,
    RepoServer,
    build_fixture_repo,
    build_rpm,
    files_path,
    refresh_repodata,
    text_file,
)

pytestmark = pytest.mark.root

MINIMAL = ("filesystem", "setup", "busybox", "vzfix-release", "vzfix-minimal")
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class BuiltFixture:
    repo: FixtureRepo
    seconds: float


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltFixture]:
    workdir = tmp_path_factory.mktemp("rpmfixture")
    started = time.monotonic()
    repo = build_fixture_repo(workdir)
    seconds = time.monotonic() - started
    yield BuiltFixture(repo, seconds)
    assert leftovers(workdir) == ([], [])
    shutil.rmtree(workdir)


@pytest.fixture()
def fixture_repo(built: BuiltFixture) -> FixtureRepo:
    return built.repo


@dataclass(frozen=True)
class HostDnf:
    """A dnf configuration on the host side, outside any installroot, for one repository."""

    base: Path

    @property
    def conf(self) -> Path:
        return self.base / "dnf.conf"

    @property
    def reposdir(self) -> Path:
        return self.base / "repos.d"

    @property
    def home(self) -> Path:
        return self.base / "home"

    def env(self) -> dict[str, str]:
        # HOME carries .rpmmacros: Debian's rpm keeps its database in ~/.rpmdb otherwise.
        return {"PATH": PATH, "LC_ALL": "C.UTF-8", "HOME": str(self.home)}

    def dnf(self, root: Path, *args: str, yes: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["dnf", *(["-y"] if yes else []), f"--installroot={root}", "--releasever=1"]
        argv += [f"--config={self.conf}", f"--setopt=reposdir={self.reposdir}"]
        argv += [f"--setopt=varsdir={self.base / 'vars'}", *args]
        try:
            return subprocess.run(
                argv,
                env=self.env(),
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=300,
                check=False,
            )
        finally:
            stop_dnf_gpg_agents(root, self.base)

    def rpm_query(self, root: Path) -> set[str]:
        query = "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE} %{ARCH}\n"
        proc = subprocess.run(
            ["rpm", "--root", str(root), "-qa", "--qf", query],
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return set(proc.stdout.splitlines())


def write_host_dnf(base: Path, url: str, key_file: Path) -> HostDnf:
    host = HostDnf(base)
    host.reposdir.mkdir(parents=True)
    host.home.mkdir()
    (base / "vars").mkdir()
    (host.home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
    # cachedir, logdir and persistdir end up inside the installroot whatever is set here.
    host.conf.write_text(
        "[main]\ngpgcheck=1\nrepo_gpgcheck=1\nskip_if_unavailable=0\nplugins=0\n"
        "install_weak_deps=0\nkeepcache=0\ncachedir=/var/cache/dnf\nlogdir=/var/log\n"
        f"persistdir=/var/lib/dnf\nreposdir={host.reposdir}\n"
    )
    (host.reposdir / "vzfix.repo").write_text(
        f"[vzfix]\nname=VzFix fixture\nbaseurl={url}\nenabled=1\ngpgcheck=1\n"
        f"repo_gpgcheck=1\ngpgkey=file://{key_file}\nskip_if_unavailable=0\n"
    )
    return host


def stop_dnf_gpg_agents(*where: Path) -> None:
    """repo_gpgcheck leaves a gpg-agent running on each repo's keyring in the cachedir."""
    for keyring in (k for base in where for k in base.rglob("pubring") if k.is_dir()):
        subprocess.run(
            ["gpgconf", "--homedir", str(keyring), "--kill", "all"],
            env={"PATH": PATH},
            capture_output=True,
            check=False,
        )


def gpg_agents_under(base: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if argv and argv[0].endswith(b"gpg-agent") and str(base).encode() in b" ".join(argv):
            found.append(b" ".join(argv).decode(errors="replace"))
    return found


def mounts_under(base: Path) -> list[str]:
    lines = Path("/proc/mounts").read_text().splitlines()
    return [line for line in lines if line.split()[1].startswith(str(base))]


@pytest.fixture()
def sandbox(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, checked afterwards for gpg-agents and mounts left behind, then removed."""
    yield tmp_path
    agents, mounts = leftovers(tmp_path)
    shutil.rmtree(tmp_path)
    assert agents == []
    assert mounts == []


def leftovers(base: Path) -> tuple[list[str], list[str]]:
    deadline = time.monotonic() + 5
    while gpg_agents_under(base) and time.monotonic() < deadline:
        time.sleep(0.1)  # a killed agent takes a moment to go
    return gpg_agents_under(base), mounts_under(base)


def expected_rpmdb(repo: FixtureRepo, names: tuple[str, ...]) -> set[str]:
    arch = {"busybox": "x86_64"}
    rows = {f"{n} {repo.packages[n]} {arch.get(n, 'noarch')}" for n in names}
    pubkey = repo.rpm_pubkey.removeprefix("gpg-pubkey-")
    return rows | {f"gpg-pubkey 0:{pubkey} (none)"}


# ---------------------------------------------------------------------------------------------


def test_build_takes_seconds(built: BuiltFixture) -> None:
    assert built.seconds < 10, f"building the fixture took {built.seconds:.1f}s"
    assert set(built.repo.packages) == {*MINIMAL, "vzfix-extra"}
    assert built.repo.packages["vzfix-extra"] == "2:0.5-3"
    assert built.repo.packages["filesystem"].startswith("0:")


def test_packages_and_repodata_are_signed_with_the_fixture_key(
    fixture_repo: FixtureRepo, sandbox: Path
) -> None:
    rpms = sorted(fixture_repo.path.glob("*.rpm"))
    assert len(rpms) == len(fixture_repo.packages)

    dbpath = sandbox / "rpmdb"
    dbpath.mkdir()
    rpmkeys = ["rpmkeys", "--dbpath", str(dbpath)]
    subprocess.run([*rpmkeys, "--import", str(fixture_repo.key_file)], check=True)
    checked = subprocess.run(
        [*rpmkeys, "--checksig", *map(str, rpms)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert [line.split(": ", 1)[1] for line in checked] == ["digests signatures OK"] * len(rpms)

    proc = subprocess.run(
        [
            "rpm",
            "--dbpath",
            str(dbpath),
            "-qp",
            "--qf",
            "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE} %{RSAHEADER:pgpsig}\n",
            *map(str, rpms),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [line.split(" ", 2) for line in proc.stdout.splitlines()]
    assert {name: evr for name, evr, _ in rows} == fixture_repo.packages
    assert all(sig.endswith(f"Key ID {fixture_repo.long_key_id.lower()}") for *_, sig in rows)

    keyring = sandbox / "key.gpg"
    dearmored = subprocess.run(
        ["gpg", "--dearmor"],
        input=fixture_repo.key_file.read_bytes(),
        capture_output=True,
        check=True,
    ).stdout
    keyring.write_bytes(dearmored)
    repomd = fixture_repo.path / "repodata" / "repomd.xml"
    subprocess.run(
        ["gpgv", "--keyring", str(keyring), str(repomd.with_name("repomd.xml.asc")), str(repomd)],
        capture_output=True,
        check=True,
    )


def test_busybox_goes_in_unstripped(fixture_repo: FixtureRepo) -> None:
    rpm = next(fixture_repo.path.glob("busybox-*.x86_64.rpm"))
    proc = subprocess.run(
        [
            "rpm",
            "-qp",
            "--nosignature",
            "--qf",
            "[%{FILEDIGESTS} %{FILENAMES} -> %{FILELINKTOS}\n]",
            str(rpm),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    entries = {line.split(" ")[1]: line for line in proc.stdout.splitlines()}
    host_digest = hashlib.sha256(HOST_BUSYBOX.read_bytes()).hexdigest()
    assert entries["/usr/bin/busybox"].startswith(host_digest)
    for applet in (
        "/usr/bin/sh",
        "/usr/bin/ls",
        "/usr/bin/ps",
        "/usr/bin/hostname",
        "/usr/bin/[",
        "/usr/sbin/init",
        "/usr/sbin/ip",
    ):
        assert entries[applet].endswith("busybox"), applet
    assert "/usr/bin/rpm" not in entries


def test_dnf_installs_a_working_minimal_root(fixture_repo: FixtureRepo, sandbox: Path) -> None:
    root = sandbox / "root"
    with RepoServer(fixture_repo.path) as server:
        host = write_host_dnf(sandbox / "dnf", server.url, fixture_repo.key_file)
        proc = host.dnf(root, "install", "vzfix-minimal")
        assert proc.returncode == 0, proc.stderr
        # Two imports of the same key: repo_gpgcheck's keyring, then the root's rpmdb.
        assert proc.stderr.count("Importing GPG key") == 2, proc.stderr
        first_log = server.access_log

        assert host.rpm_query(root) == expected_rpmdb(fixture_repo, MINIMAL)
        assert (root / "var/lib/rpm/rpmdb.sqlite").is_file()
        assert not (root / "root/.rpmdb").exists()

        # A second transaction on the same root: the key is in its rpmdb and keyring already.
        proc = host.dnf(root, "install", "vzfix-extra")
        assert proc.returncode == 0, proc.stderr
        assert "Importing GPG key" not in proc.stderr
        log = server.access_log

    downloads = collections.Counter(p for p in log if p.endswith(".rpm"))
    assert downloads == {f"/{p.name}": 1 for p in fixture_repo.path.glob("*.rpm")}
    assert {p for p in first_log if p.endswith(".rpm")} == {
        f"/{p.name}" for p in fixture_repo.path.glob("*.rpm") if "vzfix-extra" not in p.name
    }
    assert (root / "var/lib/vzfix-extra/post-ran").read_text() == "installed\n"

    assert (root / "usr/bin/busybox").is_file()
    assert os.readlink(root / "bin") == "usr/bin"
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (root / "root").stat().st_mode & 0o7777 == 0o550
    assert (root / "etc/shadow").stat().st_mode & 0o7777 == 0
    assert "root:x:0:0:" in (root / "etc/passwd").read_text()
    assert "ID=vzfix\n" in (root / "etc/os-release").read_text()
    assert "VERSION_ID=1\n" in (root / "etc/os-release").read_text()

    # Own PID, mount and UTS namespaces: ps sees only the chroot's processes, hostname is ours
    # to set, and /proc is mounted where nobody else can see it (gone with the namespace).
    proc2 = subprocess.run(
        [
            "unshare",
            "--fork",
            "--pid",
            "--mount",
            "--uts",
            f"--mount-proc={root}/proc",
            "chroot",
            str(root),
            "/bin/sh",
            "-c",
            "echo ok; hostname ct101; hostname; ps; id -u",
        ],
        env={"PATH": PATH},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc2.returncode == 0, proc2.stderr
    lines = proc2.stdout.splitlines()
    assert lines[:2] == ["ok", "ct101"]
    assert lines[2].split()[0] == "PID"
    assert any(line.split()[0] == "1" and "/bin/sh" in line for line in lines[3:-1])
    assert lines[-1] == "0"
    assert list((root / "proc").iterdir()) == []


def test_unsigned_package_is_refused(fixture_repo: FixtureRepo, sandbox: Path) -> None:
    repo_copy = sandbox / "repo"
    shutil.copytree(fixture_repo.path, repo_copy)
    unsigned = PackageSpec(
        "vzfix-unsigned",
        "1",
        "1",
        requires=("vzfix-minimal",),
        files={"/etc/vzfix-unsigned": text_file("no signature\n")},
    )
    rpm = build_rpm(unsigned, repo_copy, "x86_64")
    assert rpm.parent == repo_copy
    assert not list(repo_copy.glob(".rpmbuild-*"))
    refresh_repodata(repo_copy, fixture_repo.gnupg_home)

    root = sandbox / "root"
    with RepoServer(repo_copy) as server:
        host = write_host_dnf(sandbox / "dnf", server.url, fixture_repo.key_file)
        proc = host.dnf(root, "install", "vzfix-unsigned")
    assert proc.returncode != 0
    assert "vzfix-unsigned-1-1.noarch.rpm is not signed" in proc.stdout + proc.stderr
    installed = {row.split()[0] for row in host.rpm_query(root)}
    assert installed <= {"gpg-pubkey"}  # the transaction never ran


@pytest.mark.parametrize(
    ("damage", "message"),
    [("missing", "GPG signature is not available"), ("stale", "Bad GPG signature")],
)
def test_unsigned_repodata_is_refused(
    fixture_repo: FixtureRepo, sandbox: Path, damage: str, message: str
) -> None:
    repo_copy = sandbox / "repo"
    shutil.copytree(fixture_repo.path, repo_copy)
    signature = repo_copy / "repodata" / "repomd.xml.asc"
    if damage == "missing":
        refresh_repodata(repo_copy, None)
        assert not signature.exists()
    else:  # the signature of other repodata: a changed repomd.xml with the old .asc
        old = signature.read_bytes()
        build_rpm(PackageSpec("vzfix-more"), repo_copy, "x86_64")
        refresh_repodata(repo_copy, None)
        signature.write_bytes(old)

    root = sandbox / "root"
    with RepoServer(repo_copy) as server:
        host = write_host_dnf(sandbox / "dnf", server.url, fixture_repo.key_file)
        proc = host.dnf(root, "install", "vzfix-minimal")
        log = server.access_log
    assert proc.returncode == 1
    assert "Failed to download metadata for repo 'vzfix'" in proc.stderr
    assert message in proc.stderr
    assert not [p for p in log if p.endswith(".rpm")]


def test_without_assumeyes_the_key_is_not_imported(
    fixture_repo: FixtureRepo, sandbox: Path
) -> None:
    root = sandbox / "root"
    with RepoServer(fixture_repo.path) as server:
        host = write_host_dnf(sandbox / "dnf", server.url, fixture_repo.key_file)
        proc = host.dnf(root, "install", "vzfix-minimal", yes=False)
        log = server.access_log
    assert proc.returncode == 1
    assert "Is this ok [y/N]" in proc.stdout
    assert "repomd.xml GPG signature verification error: Bad GPG signature" in proc.stderr
    assert not [p for p in log if p.endswith(".rpm")]


def test_command_line_cachedir_is_a_host_path(fixture_repo: FixtureRepo, sandbox: Path) -> None:
    """From the config file cachedir is inside the root; from the command line mostly not."""
    root = sandbox / "root"
    host_cache = sandbox / "dnf" / "cache"
    with RepoServer(fixture_repo.path) as server:
        host = write_host_dnf(sandbox / "dnf", server.url, fixture_repo.key_file)
        proc = host.dnf(
            root,
            f"--setopt=cachedir={host_cache}",
            "--setopt=keepcache=1",
            "install",
            "vzfix-minimal",
        )
    assert proc.returncode == 0, proc.stderr
    [repo_cache] = [p for p in host_cache.glob("vzfix-*") if p.is_dir()]
    assert len(list(repo_cache.glob("packages/*.rpm"))) == len(MINIMAL)
    assert (repo_cache / "pubring").is_dir()
    in_root = root / str(host_cache).lstrip("/")
    assert sorted(p.name for p in in_root.iterdir()) == ["expired_repos.json"]
    assert not (root / "var/cache/dnf").exists()


def test_repo_server_logs_requests_and_stops_cleanly(sandbox: Path) -> None:
    (sandbox / "a file.txt").write_text("hello\n")
    threads_before = set(threading.enumerate())
    with RepoServer(sandbox) as server:
        url = server.url
        with urllib.request.urlopen(f"{url}/a%20file.txt", timeout=10) as response:
            assert response.read() == b"hello\n"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{url}/missing.rpm?x=1", timeout=10)
        assert server.access_log == ["/a file.txt", "/missing.rpm"]
    assert set(threading.enumerate()) == threads_before
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass


def test_specs_are_checked_before_anything_is_built() -> None:
    with pytest.raises(ValueError, match="version"):
        PackageSpec("x", version="1-2")
    with pytest.raises(ValueError, match="must be absolute"):
        PackageSpec("x", files={"etc/x": text_file("")})
    with pytest.raises(ValueError, match="exactly one"):
        FileSpec(content=b"x", directory=True)
    assert files_path("/usr/bin/[[") == "/usr/bin/[[][[]"
    assert files_path("/usr/share/a b%") == '"/usr/share/a b%%"'
