"""A small rpm distribution of our own, built on the fly and served over loopback HTTP.

The official rpm mirrors are out of reach in CI, so rpm-family tests install from this fixture
distribution and treat it exactly like a real one: signed packages, signed repodata, a public key
file. ``build_fixture_repo`` builds it in a few seconds with rpmbuild, rpmsign, createrepo_c and a
throwaway gpg key; ``RepoServer`` serves it on 127.0.0.1 and records every request.

The packages give an empty root a working userland::

    filesystem      FHS directories; /bin, /sbin, /lib, /lib64 -> usr/...; /tmp 1777, /root 0550
    setup           /etc/passwd, group, shadow (0000), gshadow, hosts, shells
    busybox         the host's static busybox (busybox-static) as /usr/bin/busybox plus applet
                    symlinks (sh, ls, ps, hostname, ip, init, ...); provides /bin/sh
    vzfix-release   /etc/os-release (ID=vzfix, VERSION_ID=1), /etc/vzfix-release
    vzfix-minimal   metapackage requiring the four above
    vzfix-extra     unrelated, epoch 2, with a %post scriptlet

How dnf 4.14 (Debian 12) has to be invoked against it, as found by
tests/integration/test_rpmfixture.py::

    env -i PATH=... LC_ALL=C.UTF-8 HOME=<private dir with .rpmmacros> \\
    dnf -y --installroot=ROOT --releasever=1 --config=CONF \\
        --setopt=reposdir=REPOSDIR --setopt=varsdir=VARSDIR install vzfix-minimal

    CONF: [main] gpgcheck=1 repo_gpgcheck=1 skip_if_unavailable=0 plugins=0 reposdir=REPOSDIR
          cachedir=/var/cache/dnf logdir=/var/log persistdir=/var/lib/dnf ...
    REPOSDIR/vzfix.repo: baseurl=RepoServer.url gpgcheck=1 repo_gpgcheck=1
          gpgkey=file://<FixtureRepo.key_file> (a host path; it is not looked up in ROOT)

- ``-y`` is what imports the key non-interactively, and dnf imports it twice (two "Importing
  GPG key" blocks on stderr): into a keyring for repo_gpgcheck, ROOT/<cachedir>/<repo>-<hash>/
  pubring, and into ROOT's rpmdb for package signatures, where it shows up as the package
  ``gpg-pubkey-<short id>-<created>`` (``FixtureRepo.rpm_pubkey``). Without ``-y`` (stdin at
  /dev/null) the first prompt is answered "no" and dnf fails with the misleading "repomd.xml GPG
  signature verification error: Bad GPG signature".
- repo_gpgcheck really is checked: a missing repomd.xml.asc ("GPG verification is enabled, but
  GPG signature is not available", after several 404 retries) and a stale one ("Bad GPG
  signature") both fail with "Failed to download metadata for repo" and exit 1, before any
  package is downloaded. An unsigned package fails with "... is not signed".
- repo_gpgcheck leaves a gpg-agent running on that pubring (librepo/gpgme start it and never
  stop it). Stop it with ``gpgconf --homedir <pubring> --kill all`` after each dnf run.
- Without ``--releasever`` the first install only warns ("Unable to detect release version");
  it matters once a baseurl uses $releasever. Later runs on the same root find it through
  vzfix-release's ``Provides: system-release(releasever) = 1``, like on a real distribution.
- ``--config`` and ``--setopt=reposdir`` keep the host's /etc/dnf and /etc/yum.repos.d out
  (with an installroot dnf looks for both inside ROOT first, then on the host).
  ``cachedir``, ``logdir`` and ``persistdir`` from the config file are taken inside ROOT
  (ROOT/var/cache/dnf, ROOT/var/log/dnf*.log, ROOT/var/lib/dnf/history.sqlite), and dnf also
  creates ROOT/etc/dnf/modules.d: a cache builder has to clear these out of the tree. Beware
  ``--setopt=cachedir=X`` on the command line: the repo caches (metadata, packages, pubring)
  then go to the *host's* X and only expired_repos.json to ROOT/X.
- Debian's rpm sets ``%_dbpath`` to ``~/.rpmdb``, so with HOME=/root the rpmdb of the new root
  lands in ROOT/root/.rpmdb, where no rpm inside the container would look. A private HOME whose
  ``.rpmmacros`` says ``%_dbpath /var/lib/rpm`` puts it in ROOT/var/lib/rpm (rpmdb.sqlite plus
  -shm, -wal and .rpm.lock); ``rpm --root`` on the host needs the same HOME to read it.
- dnf mounts nothing in ROOT and runs %post scriptlets chrooted with ROOT's /bin/sh.

GnuPG puts its agent's sockets in the home directory, and a Unix socket path must be short (108
bytes): pytest's temp paths are too long. ``gnupg_session`` hands out a short symlink to the home
and stops the agent afterwards, so no gpg-agent outlives a signing step.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import re
import shlex
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from vzpkg import run
from vzpkg.errors import ExitCode, VzError

KEY_UID = "vzpkg test signing key <vzpkg-test@invalid>"
KEY_FILE_NAME = "RPM-GPG-KEY-vzpkgtest"
HOST_BUSYBOX = Path("/bin/busybox")
NOARCH = "noarch"

# Directories of the filesystem package with mode 0755; the others are set apart below.
PLAIN_DIRECTORIES = (
    *("/boot", "/dev", "/etc", "/etc/skel", "/home", "/media", "/mnt", "/opt", "/run", "/srv"),
    *("/usr", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib64", "/usr/libexec", "/usr/include"),
    *("/usr/local", "/usr/local/bin", "/usr/share"),
    *("/var", "/var/cache", "/var/lib", "/var/log", "/var/spool"),
)

# Host programs the build needs, with the Debian package to install for each.
BUILD_TOOLS = {
    "rpmbuild": "rpm",
    "rpmsign": "rpm",
    "createrepo_c": "createrepo-c",
    "gpg": "gpg",
    "gpgconf": "gpgconf",
}

# Applets left out of the busybox package: the binary itself is installed separately, linuxrc is
# an initramfs entry point, and an rpm applet would pose as the real rpm inside a container.
BUSYBOX_SKIPPED_APPLETS = frozenset({"busybox", "linuxrc", "rpm", "rpm2cpio"})

# Every rpmbuild runs with these: no brp scripts, no debuginfo, no build-id links, so the host's
# busybox goes into the package byte for byte and nothing looks for a compiler.
RPMBUILD_MACROS: Mapping[str, str] = {
    "__os_install_post": "%{nil}",
    "__arch_install_post": "%{nil}",
    "debug_package": "%{nil}",
    "_build_id_links": "none",
    "_buildhost": "vzfix.invalid",
    "_build_name_fmt": "%%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm",
}

# rpm 4.18's default %__gpg is /usr/bin/gpg2, which Debian does not ship; --batch with
# --pinentry-mode error makes a key that unexpectedly wants a passphrase fail instead of prompt.
RPMSIGN_MACROS: Mapping[str, str] = {
    "__gpg": "/usr/bin/gpg",
    "_gpg_sign_cmd_extra_args": "--batch --pinentry-mode error",
    "_gpg_digest_algo": "sha256",
}

_GLOB_CHARS = re.compile(r"([\[\]*?])")
_UNSAFE_PATH_CHARS = frozenset('{}\\"\n')
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9._+~^]+$")


@dataclass(frozen=True)
class FileSpec:
    """One entry of a package's %files: exactly one of content, source, symlink or directory."""

    content: bytes | None = None
    source: Path | None = None
    symlink: str | None = None
    directory: bool = False
    mode: int = 0o644
    config: bool = False  # %config(noreplace), as distributions mark /etc/passwd and friends

    def __post_init__(self) -> None:
        kinds = [
            self.content is not None,
            self.source is not None,
            self.symlink is not None,
            self.directory,
        ]
        if sum(kinds) != 1:
            raise ValueError("a FileSpec is exactly one of content, source, symlink, directory")
        if not 0 <= self.mode <= 0o7777:
            raise ValueError(f"file mode {self.mode:o} out of range")


def text_file(content: str, mode: int = 0o644, *, config: bool = False) -> FileSpec:
    return FileSpec(content=content.encode(), mode=mode, config=config)


def copied_file(source: Path, mode: int = 0o755) -> FileSpec:
    return FileSpec(source=source, mode=mode)


def symlink(target: str) -> FileSpec:
    return FileSpec(symlink=target, mode=0o777)


def directory(mode: int = 0o755) -> FileSpec:
    return FileSpec(directory=True, mode=mode)


@dataclass(frozen=True)
class PackageSpec:
    """What one binary rpm holds. ``arch=None`` builds it for the arch given to the build."""

    name: str
    version: str = "1.0"
    release: str = "1"
    epoch: int = 0
    summary: str = ""
    arch: str | None = NOARCH
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    files: Mapping[str, FileSpec] = field(default_factory=dict)
    post: str = ""  # %post scriptlet, run by /bin/sh inside the root

    def __post_init__(self) -> None:
        problems = []
        if not _NAME_RE.match(self.name):
            problems.append(f"name {self.name!r}")
        for what, value in (("version", self.version), ("release", self.release)):
            if not _VERSION_RE.match(value):
                problems.append(f"{what} {value!r}")
        if self.epoch < 0:
            problems.append(f"epoch {self.epoch}")
        problems += [f"path {p!r} (must be absolute)" for p in self.files if not p.startswith("/")]
        problems += [
            f"path {p!r} (braces, backslashes, quotes and newlines are not supported)"
            for p in self.files
            if _UNSAFE_PATH_CHARS.intersection(p)
        ]
        problems += [
            f"dependency {d!r}"
            for d in (*self.requires, *self.provides, *self.conflicts)
            if "\n" in d or not d
        ]
        if problems:
            raise ValueError(f"package spec {self.name!r}: bad " + ", ".join(problems))

    @property
    def evr(self) -> str:
        return f"{self.epoch}:{self.version}-{self.release}"

    def rpm_arch(self, build_arch: str) -> str:
        return self.arch or build_arch

    def file_name(self, build_arch: str) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.rpm_arch(build_arch)}.rpm"


@dataclass(frozen=True)
class FixtureRepo:
    path: Path  # served over HTTP: repodata/, *.rpm and the public key file
    key_file: Path  # ASCII-armored public key
    gnupg_home: Path  # holds the private key; use it through gnupg_session()
    key_id: str  # fingerprint, 40 upper-case hex digits
    key_created: int  # creation time of the key, seconds since the epoch
    packages: dict[str, str]  # name -> "epoch:version-release"

    @property
    def long_key_id(self) -> str:
        return self.key_id[-16:]

    @property
    def rpm_pubkey(self) -> str:
        """The name-version-release under which rpm records the imported key."""
        return f"gpg-pubkey-{self.key_id[-8:].lower()}-{self.key_created:08x}"


# ---------------------------------------------------------------------------------------------
# Building


def build_fixture_repo(
    workdir: Path,
    *,
    arch: str = "x86_64",
    extra_specs: Sequence[PackageSpec] = (),
    sign: bool = True,
    sign_repodata: bool = True,
) -> FixtureRepo:
    """Build the fixture distribution in ``workdir``/repo, with its key in ``workdir``/gnupg.

    ``workdir``/repo must not exist yet. ``arch`` labels the busybox package; its binary is
    always the host's, so a root built for another arch installs but does not run.
    """
    specs = (*default_specs(), *extra_specs)
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"package specs given twice: {', '.join(duplicates)}")
    for tool, package in BUILD_TOOLS.items():
        run.check_tool(tool, "to build the rpm fixture distribution", package=package)

    repo_path = workdir / "repo"
    repo_path.mkdir(parents=True)
    gnupg_home = workdir / "gnupg"
    key_id, key_created = generate_key(gnupg_home)
    key_file = repo_path / KEY_FILE_NAME
    with gnupg_session(gnupg_home) as home:
        armored = run.run(
            ["gpg", "--homedir", home, "--batch", "--armor", "--export", key_id], stdout=-1
        ).stdout
    key_file.write_bytes(armored)

    with ThreadPoolExecutor(max_workers=min(8, len(specs))) as pool:
        rpms = list(pool.map(lambda spec: build_rpm(spec, repo_path, arch), specs))
    repo = FixtureRepo(
        repo_path, key_file, gnupg_home, key_id, key_created, {s.name: s.evr for s in specs}
    )
    if sign:
        sign_packages(repo, rpms)
    refresh_repodata(repo_path, gnupg_home if sign_repodata else None)
    return repo


def default_specs(busybox: Path = HOST_BUSYBOX) -> tuple[PackageSpec, ...]:
    return (
        filesystem_spec(),
        setup_spec(),
        busybox_spec(busybox),
        release_spec(),
        PackageSpec(
            "vzfix-minimal",
            "1",
            "1",
            summary="Minimal vzfix installation",
            requires=("filesystem", "setup", "busybox", "vzfix-release"),
        ),
        PackageSpec(
            "vzfix-extra",
            "0.5",
            "3",
            epoch=2,
            summary="An optional extra",
            requires=("setup",),
            files={"/usr/share/vzfix-extra/README": text_file("extra\n")},
            post="mkdir -p /var/lib/vzfix-extra\necho installed > /var/lib/vzfix-extra/post-ran\n",
        ),
    )


def filesystem_spec() -> PackageSpec:
    files: dict[str, FileSpec] = {}
    for path in ("/bin", "/sbin", "/lib", "/lib64"):
        files[path] = symlink("usr" + path)
    for path in PLAIN_DIRECTORIES:
        files[path] = directory()
    files |= {
        "/proc": directory(0o555),
        "/sys": directory(0o555),
        "/tmp": directory(0o1777),
        "/var/tmp": directory(0o1777),
        "/root": directory(0o550),
        "/var/run": symlink("../run"),
    }
    return PackageSpec("filesystem", "3.18", "1", summary="The basic directory layout", files=files)


def setup_spec() -> PackageSpec:
    etc = {
        "/etc/passwd": (
            "root:x:0:0:root:/root:/bin/sh\n"
            "nobody:x:65534:65534:Kernel Overflow User:/:/sbin/nologin\n",
            0o644,
        ),
        "/etc/group": "root:x:0:\nnobody:x:65534:\n",
        "/etc/shadow": ("root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n", 0o000),
        "/etc/gshadow": ("root:::\nnobody:::\n", 0o000),
        "/etc/hosts": "127.0.0.1   localhost localhost.localdomain\n::1         localhost\n",
        "/etc/shells": "/bin/sh\n/usr/bin/sh\n/bin/ash\n/usr/bin/ash\n",
    }
    files = {}
    for path, value in etc.items():
        content, mode = value if isinstance(value, tuple) else (value, 0o644)
        files[path] = text_file(content, mode, config=True)
    return PackageSpec(
        "setup",
        "2.14",
        "1",
        summary="System configuration files",
        requires=("filesystem",),
        files=files,
    )


def busybox_spec(binary: Path = HOST_BUSYBOX) -> PackageSpec:
    """The host's busybox as a package, with a symlink for each applet in /usr/bin or /usr/sbin."""
    if not binary.is_file():
        raise VzError(
            f"{binary} is needed for the busybox fixture package",
            ExitCode.TOOL_MISSING,
            hint="apt-get install busybox-static",
        )
    if not is_static_elf(binary):
        raise VzError(
            f"{binary} is not a static 64-bit executable and would not run in a bare root",
            ExitCode.TOOL_MISSING,
            hint="apt-get install busybox-static",
        )
    banner = run.run([binary], stdout=-1, check=False).stdout.decode(errors="replace")
    found = re.search(r"BusyBox v(\d+(?:\.\d+)+)", banner)
    version = found.group(1) if found else "1.0"
    applets = run.run([binary, "--list-full"], stdout=-1).stdout.decode().split()
    files: dict[str, FileSpec] = {"/usr/bin/busybox": copied_file(binary)}
    for entry in applets:
        where, _, name = entry.rpartition("/")
        if not name or name in BUSYBOX_SKIPPED_APPLETS:
            continue
        sbin = where.endswith("sbin")
        files.setdefault(
            f"/usr/{'sbin' if sbin else 'bin'}/{name}",
            symlink("../bin/busybox" if sbin else "busybox"),
        )
    return PackageSpec(
        "busybox",
        version,
        "1.vzfix",
        arch=None,
        summary="Statically linked busybox",
        requires=("filesystem",),
        provides=("/bin/sh", "/usr/bin/sh", "/sbin/init", "coreutils", "shell"),
        files=files,
    )


def release_spec() -> PackageSpec:
    os_release = (
        'NAME="VzFix"\nID=vzfix\nVERSION="1 (Fixture)"\nVERSION_ID=1\n'
        'PRETTY_NAME="VzFix 1 (Fixture)"\nHOME_URL="https://vzfix.invalid/"\n'
    )
    return PackageSpec(
        "vzfix-release",
        "1",
        "1",
        summary="VzFix release files",
        requires=("filesystem",),
        provides=("system-release", "system-release(releasever) = 1"),
        files={
            "/etc/os-release": text_file(os_release, config=True),
            "/etc/vzfix-release": text_file("VzFix release 1 (Fixture)\n", config=True),
        },
    )


def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP)."""
    with path.open("rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # only 64-bit ELF is looked into
            return False
        order: Literal["little", "big"] = "little" if header[5] == 1 else "big"
        phoff = int.from_bytes(header[32:40], order)
        phentsize = int.from_bytes(header[54:56], order)
        phnum = int.from_bytes(header[56:58], order)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    types = [int.from_bytes(table[i : i + 4], order) for i in range(0, len(table), phentsize)]
    return 3 not in types  # PT_INTERP


def build_rpm(spec: PackageSpec, workdir: Path, arch: str) -> Path:
    """Build one unsigned rpm into ``workdir`` and return its path."""
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".rpmbuild-") as tmp:
        topdir = Path(tmp)
        stage = topdir / "stage"
        stage_files(spec, stage)
        spec_file = topdir / f"{spec.name}.spec"
        spec_file.write_text(render_spec(spec, stage))
        macros = {
            **RPMBUILD_MACROS,
            "_topdir": str(topdir),
            "_rpmdir": str(workdir),
            "_tmppath": str(topdir),
        }
        # HOME in the topdir: no ~/.rpmmacros of the user running the tests gets in.
        rpmbuild = ["rpmbuild", "-bb", "--quiet", "--nodeps", "--target", arch]
        run.run(
            [*rpmbuild, *define_args(macros), str(spec_file)], env={"HOME": str(topdir)}, stdout=-1
        )
    built = workdir / spec.file_name(arch)
    if not built.is_file():
        raise RuntimeError(f"rpmbuild did not write {built}")
    return built


def stage_files(spec: PackageSpec, stage: Path) -> None:
    stage.mkdir()
    for path, entry in sorted(spec.files.items()):
        target = stage / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.directory:
            target.mkdir(exist_ok=True)
        elif entry.symlink is not None:
            target.symlink_to(entry.symlink)
        elif entry.source is not None:
            shutil.copyfile(entry.source, target)
        elif entry.content is not None:
            target.write_bytes(entry.content)
        if entry.symlink is None:
            target.chmod(entry.mode)


def render_spec(spec: PackageSpec, stage: Path) -> str:
    summary = spec.summary or spec.name
    lines = [f"Name: {spec.name}", f"Version: {spec.version}", f"Release: {spec.release}"]
    lines += [f"Summary: {summary}", "License: MIT", "AutoReqProv: no"]
    if spec.epoch:
        lines.append(f"Epoch: {spec.epoch}")
    if spec.arch == NOARCH:
        lines.append("BuildArch: noarch")
    lines += [f"Requires: {d}" for d in spec.requires]
    lines += [f"Provides: {d}" for d in spec.provides]
    lines += [f"Conflicts: {d}" for d in spec.conflicts]
    if spec.post:
        lines.append("Requires(post): /bin/sh")
    copy = f"cp -a {escape_macros(shlex.quote(str(stage)))}/. %{{buildroot}}/"
    lines += ["", "%description", escape_macros(summary), ""]
    lines += ["%install", "mkdir -p %{buildroot}", copy, "", "%files"]
    for path, entry in sorted(spec.files.items()):
        quoted = files_path(path)
        if entry.symlink is not None:
            lines.append(quoted)
        elif entry.directory:
            lines.append(f"%dir %attr({entry.mode:04o},root,root) {quoted}")
        else:
            config = "%config(noreplace) " if entry.config else ""
            lines.append(f"{config}%attr({entry.mode:04o},root,root) {quoted}")
    if spec.post:
        lines += ["", "%post", escape_macros(spec.post)]
    return "\n".join(lines) + "\n"


def files_path(path: str) -> str:
    """A path for %files: macros and glob characters escaped (busybox has applets [ and [[)."""
    escaped = escape_macros(_GLOB_CHARS.sub(r"[\1]", path))
    return f'"{escaped}"' if any(c.isspace() for c in path) else escaped


def escape_macros(text: str) -> str:
    return text.replace("%", "%%")


def define_args(macros: Mapping[str, str]) -> list[str]:
    return [arg for name, value in macros.items() for arg in ("--define", f"{name} {value}")]


# ---------------------------------------------------------------------------------------------
# Signing and repodata


@contextlib.contextmanager
def gnupg_session(gnupg_home: Path) -> Iterator[Path]:
    """Yield a short path to ``gnupg_home`` for gpg to use, and stop gpg-agent afterwards.

    gpg-agent's sockets live in the home directory and sun_path holds 108 bytes, which pytest's
    temp paths overrun ("can't connect to the agent"). /tmp keeps the link short whatever TMPDIR
    says.
    """
    short = Path(tempfile.mkdtemp(prefix="vzfx-gpg.", dir="/tmp"))
    link = short / "h"
    link.symlink_to(gnupg_home.resolve())
    try:
        yield link
    finally:
        run.run(["gpgconf", "--homedir", link, "--kill", "all"], check=False)
        shutil.rmtree(short)


def generate_key(gnupg_home: Path) -> tuple[str, int]:
    """Create a passphrase-less RSA signing key; return its fingerprint and creation time."""
    gnupg_home.mkdir(mode=0o700, parents=True)
    with gnupg_session(gnupg_home) as home:
        gpg = ["gpg", "--homedir", str(home), "--batch"]
        unprotected = ["--pinentry-mode", "loopback", "--passphrase", ""]
        run.run([*gpg, *unprotected, "--quick-gen-key", KEY_UID, "rsa3072", "sign", "never"])
        listing = run.run(
            [*gpg, "--with-colons", "--list-secret-keys", KEY_UID], stdout=-1
        ).stdout.decode()
    fingerprint, created = "", 0
    for line in listing.splitlines():
        fields = line.split(":")
        if fields[0] == "sec":
            created = int(fields[5])
        elif fields[0] == "fpr" and not fingerprint:
            fingerprint = fields[9]
    if not fingerprint or not created:
        raise RuntimeError(f"no key in gpg's listing:\n{listing}")
    return fingerprint, created


def sign_packages(repo: FixtureRepo, rpms: Sequence[Path]) -> None:
    """Sign ``rpms`` in place with the fixture key (rpmsign --addsign)."""
    if not rpms:
        return
    with gnupg_session(repo.gnupg_home) as home:
        macros = {**RPMSIGN_MACROS, "_gpg_name": repo.key_id, "_gpg_path": str(home)}
        run.run(
            ["rpmsign", "--addsign", *define_args(macros), *rpms],
            env={"GNUPGHOME": str(home), "HOME": str(home)},
            stdout=-1,
        )


def refresh_repodata(repo_path: Path, gnupg_home: Path | None) -> None:
    """Regenerate repodata/; with ``gnupg_home`` sign repomd.xml into repomd.xml.asc."""
    run.run(["createrepo_c", "--update", "--quiet", "--no-database", repo_path], stdout=-1)
    repomd = repo_path / "repodata" / "repomd.xml"
    signature = repomd.with_name("repomd.xml.asc")
    signature.unlink(missing_ok=True)  # a stale signature would no longer match
    if gnupg_home is not None:
        with gnupg_session(gnupg_home) as home:
            gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "error"]
            run.run([*gpg, "--armor", "--detach-sign", "--output", str(signature), str(repomd)])


# ---------------------------------------------------------------------------------------------
# Serving


class _LoggingHandler(http.server.SimpleHTTPRequestHandler):
    timeout = 30  # a client that connects and goes quiet must not keep __exit__ waiting

    def __init__(self, *args: Any, server_log: RepoServer, **kwargs: Any) -> None:
        self._server_log = server_log
        super().__init__(*args, **kwargs)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self._server_log._record(urllib.parse.unquote(urllib.parse.urlsplit(self.path).path))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; requests go to access_log


class RepoServer:
    """Serve a directory on 127.0.0.1 at a free port for the duration of a ``with`` block."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._log: list[str] = []
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. http://127.0.0.1:40123."""
        if self._server is None:
            raise RuntimeError("RepoServer is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def access_log(self) -> list[str]:
        """Request paths, in the order the requests were answered (a copy)."""
        with self._lock:
            return list(self._log)

    def _record(self, path: str) -> None:
        with self._lock:
            self._log.append(path)

    def __enter__(self) -> RepoServer:
        handler = functools.partial(_LoggingHandler, directory=str(self.root), server_log=self)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        # Request threads are joined on close (block_on_close) instead of left as daemons.
        server.daemon_threads = False
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="RepoServer", kwargs={"poll_interval": 0.05}
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()
        self._server = None
        self._thread = None


RPM_LIB_DIR = "/usr/lib/vzfix-rpm"


def rpm_spec(binary: Path = Path("/usr/bin/rpm")) -> PackageSpec:
    """The host's rpm as a package for the fixture's VPSs: the binary, every shared library it
    loads (ldd's list) and the dynamic loader in RPM_LIB_DIR, the config it reads in
    /usr/lib/rpm, and /usr/bin/rpm, a busybox sh script that runs it with that loader and the
    database where the fixture keeps it. So an rpm-family VPS has a package manager of its
    own: the fixture distribution has no rpm of its own to build."""
    listing = run.run(["ldd", binary], stdout=-1).stdout.decode()
    files: dict[str, FileSpec] = {f"{RPM_LIB_DIR}/rpm": copied_file(binary)}
    loader = None
    for line in listing.splitlines():
        found = re.search(r"(\S+) => (/\S+)", line) or re.search(r"^\s*(/\S+ld-linux\S*)", line)
        if found is None:
            continue
        path = Path(found.group(found.lastindex or 1)).resolve()
        name = Path(found.group(1)).name
        files[f"{RPM_LIB_DIR}/{name}"] = copied_file(path)
        if "ld-linux" in name:
            loader = name
    if loader is None:
        raise RuntimeError(f"ldd {binary} names no dynamic loader:\n{listing}")
    for config in ("rpmrc", "macros"):
        files[f"/usr/lib/rpm/{config}"] = FileSpec(source=Path("/usr/lib/rpm") / config)
    files["/usr/bin/rpm"] = text_file(
        f"#!/bin/sh\nexec {RPM_LIB_DIR}/{loader} --library-path {RPM_LIB_DIR} "
        f'{RPM_LIB_DIR}/rpm --dbpath /var/lib/rpm "$@"\n',
        0o755,
    )
    version = run.run([binary, "--version"], stdout=-1).stdout.decode().split()[-1]
    return PackageSpec(
        "vzfix-rpm",
        re.sub(r"[^A-Za-z0-9._+~^]", ".", version),
        "1.vzfix",
        arch=None,
        summary="The host's rpm, for the fixture's VPSs",
        requires=("filesystem", "busybox"),
        files=files,
    )
