"""The host side of package transactions, shared by running VPSs (vzpkg/ct/packages.py) and
cache updates (vzpkg/cache/update.py): a template's package pool, its apt lists and keys, and
the host's apt-get seeing one root's dpkg status.

Packages are fetched by vzpkg itself into the pool PKGCACHE_DIR/<os>-<version>-<arch>/, the one
cache builds use: a temp file, its size and SHA256 checked against the signed lists, renamed in
place. apt alone would trust any file of the right size that it finds there.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from vzpkg import fsutil, lock, run
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig
from vzpkg.metadata.model import DEB_ARCH, Template
from vzpkg.pkgmgr import apt
from vzpkg.pkgmgr.installed import parse_dpkg_status

_STALE = 6 * 3600  # seconds after which a transaction's directory is surely a leftover
LISTS_MAX_AGE = 3600  # seconds: lists younger than this are used as they are (dnf's expiry)
STAMP = "updated"  # in the shared apt directory: the sources its lists were fetched for

Say = Callable[[str], None]


_UPGRADE_ONLY = ("--with-new-pkgs", "--without-new-pkgs")
_WITH_VALUE = ("-o", "-c", "-t", "--option", "--config-file", "--target-release")


def split_args(args: Sequence[str]) -> tuple[str, list[str], list[str]]:
    """apt-get's ``args`` as (command, options, package words)."""
    command = None
    options: list[str] = []
    words: list[str] = []
    it = iter(args)
    for arg in it:
        if arg in _WITH_VALUE:
            options += [arg, next(it, "")]
        elif arg.startswith("-"):
            options.append(arg)
        elif command is None:
            command = arg
        else:
            words.append(arg)
    if command is None:
        raise VzError("no apt-get command given", ExitCode.INVALID_ARGUMENT,
                      hint="vzapt CTID install PACKAGE...")  # fmt: skip
    return command, options, words


def command_of(args: Sequence[str]) -> str:
    """apt-get's command word in ``args`` (the first that is not an option)."""
    return split_args(args)[0]


def requested_name(word: str) -> str:
    """The package a word of ``apt-get install`` names (``name=1.0``, ``name/suite``)."""
    return re.split(r"[=/]", word, maxsplit=1)[0]


def as_files(
    args: Sequence[str], fetches: Sequence[apt.Fetch], status: bytes
) -> tuple[list[str], apt.Marks]:
    """apt-get's ``args`` for the VPS: install the files the host fetched (whatever the
    command was), with its options; and the marks apt-get would have left."""
    command, options, words = split_args(args)
    installed = {p.name for p in parse_dpkg_status(status)}
    explicit = command in ("install", "reinstall") and "--only-upgrade" not in options
    requested = {requested_name(w) for w in words} if explicit else set()
    names = [f.name_version_arch[0] for f in fetches]
    marks = apt.Marks(
        manual=tuple(sorted(n.partition(":")[0] for n in requested)),
        auto=tuple(sorted(n for n in names if n not in installed and n not in requested)),
        keep=tuple(sorted(n for n in names if n in installed and n not in requested)),
    )
    options = [o for o in options if o not in _UPGRADE_ONLY]  # apt-get install refuses them
    extra = ["--reinstall"] if command == "reinstall" else []
    files = [f"{apt.VPS_POOL_DIR}/{f.file}" for f in fetches]
    if not files and not marks.manual and not {"-f", "--fix-broken"} & set(options):
        return [], marks  # nothing to do inside
    # With nothing to install, apt-get install still does what its options say (-f).
    return ["install", *options, *extra, *files], marks


_SIGNATURE_TROUBLE = (
    "NO_PUBKEY",
    "not signed",
    "signatures couldn't be verified",
    "is not signed",
    "EXPKEYSIG",
    "BADSIG",
    "The following signatures",
)


def diagnose_apt(lines: list[str]) -> tuple[ExitCode, str, str | None] | None:
    """What apt's output says went wrong with the template's signatures, if that was it."""
    if any(s in line for line in lines for s in _SIGNATURE_TROUBLE):
        return (
            ExitCode.SIGNATURE,
            "repository signature check failed with the template's keys",
            "the keys in metadata do not sign this mirror's Release files; fix the metadata's keys",
        )
    return None


def host_aptopts() -> list[str]:
    """Apt options the host's own apt needs to use its mirror (e.g. a snapshot mirror whose
    Release files are past Valid-Until). Only these well-known keys are carried over."""
    opts = []
    try:
        dump = run.run(["apt-config", "dump"], stdout=-1, check=False).stdout.decode()
    except VzError:
        return []
    for key in (
        "Acquire::Check-Valid-Until",
        "Acquire::Check-Date",
        "Acquire::http::Proxy",
        "Acquire::https::Proxy",
    ):
        if m := re.search(rf'^{re.escape(key)} "([^"]*)";$', dump, re.MULTILINE):
            opts.append(f'{key} "{m.group(1)}"')
    return opts


class PackageCache:
    """The template's package cache: ``pool`` (packages, shared with cache builds), the host
    root's and world-readable; a transaction's private directory beside it."""

    def __init__(self, host: HostConfig, template: Template) -> None:
        self.key = template.pkgcache_key
        self.base = host.pkgcache_dir
        self.pool = host.pkgcache_dir / self.key
        self.host = host
        self.template = template

    def scratch(self) -> tempfile.TemporaryDirectory[str]:
        """A private directory for one transaction's files, beside the shared ones (those a
        killed vzpkg left go once they are surely over)."""
        self.base.mkdir(mode=0o755, parents=True, exist_ok=True)
        for stale in [*self.base.glob("vzpkg-tx.*"), *self.base.glob("vzpkg-update.*")]:
            with contextlib.suppress(OSError):
                if time.time() - stale.lstat().st_mtime > _STALE:
                    shutil.rmtree(stale)
        return tempfile.TemporaryDirectory(prefix="vzpkg-tx.", dir=self.base)

    def locked(self) -> contextlib.AbstractContextManager[Path]:
        wait = f"{self.template.name}: waiting for its package cache"
        return lock.locked(self.host.lock_dir, f"pkgcache-{self.key}", timeout=-1, on_wait=wait)

    def view(self, into: Path, files: Sequence[str], *, copy: bool) -> Path:
        """A directory ``into`` of ``files`` (relative to the pool) by their own names: hard
        links of the pool's, or copies (``copy``, or the pool on another filesystem)."""
        into.mkdir(mode=0o755)
        for name in files:
            target = into / Path(name).name
            if not copy:
                try:
                    os.link(self.pool / name, target, follow_symlinks=False)
                    continue
                except OSError:
                    pass  # another filesystem: a copy
            shutil.copy2(self.pool / name, target)
        return into


class SharedCache(PackageCache):
    """The Debian side: ``apt`` beside the pool (sources.list, keys, lists)."""

    def __init__(
        self,
        host: HostConfig,
        template: Template,
        sources: Sequence[str],
        keyring: Callable[[Path], tuple[Path, Path]],
    ) -> None:
        """``sources``: the template's sources.list lines; ``keyring``: writes its keys into
        a directory apt trusts alone (vzpkg.distro.debian makes both)."""
        super().__init__(host, template)
        self.apt = host.pkgcache_dir / f"{self.key}.apt"
        self.keyring = keyring
        self.sources = ("\n".join(sources) + "\n").encode()
        self.options = host_aptopts()
        self.proxy = next((o.split('"')[1] for o in self.options
                           if o.startswith("Acquire::http::Proxy ")), None)  # fmt: skip
        self.arch = DEB_ARCH[template.arch]

    def prepare(self, say: Say) -> None:
        """The directories, world-readable (a VPS reads them as nobody), and the template's
        sources and keys as the metadata says now."""
        for directory in (self.base, self.pool, self.apt, self.apt / "lists"):
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chmod(directory, 0o755)
        (self.apt / "lists" / "partial").mkdir(exist_ok=True)
        if _read(self.apt / "sources.list") != self.sources:
            fsutil.atomic_write(self.apt / "sources.list", self.sources, 0o644)
        keys = self.apt / "trusted.gpg.d"
        with tempfile.TemporaryDirectory(prefix="keys.", dir=self.apt) as tmp:
            fresh, _ = self.keyring(Path(tmp))
            if not keys.is_dir() or _tree_digest(keys) != _tree_digest(fresh):
                old = self.apt / f".old-keys.{os.getpid()}"
                if keys.is_dir():
                    keys.rename(old)
                fresh.rename(keys)
                shutil.rmtree(old, ignore_errors=True)

    def _stamp(self) -> bytes:
        return hashlib.sha256(self.sources + _tree_digest(self.apt / "trusted.gpg.d")).digest()

    def refresh_lists(self, say: Say, *, force: bool) -> None:
        """``apt-get update`` of the shared lists, unless they are younger than
        LISTS_MAX_AGE and were fetched for these sources and keys."""
        stamp = self.apt / STAMP
        try:
            fresh = (
                not force
                and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE
                and stamp.read_bytes() == self._stamp()
            )
        except OSError:
            fresh = False
        if fresh:
            return
        say(f"{self.template.name}: refreshing the package lists")
        with tempfile.TemporaryDirectory(prefix="vzpkg-update.", dir=self.base) as tmp:
            empty = Path(tmp) / "status"
            empty.write_bytes(b"")
            conf = self._conf(Path(tmp), empty)
            proc = run.run(["apt-get", "-q", "update", "-o", "APT::Update::Error-Mode=any"],
                           env={"APT_CONFIG": str(conf)}, stdout=-1, check=False)  # fmt: skip
        if proc.returncode != 0:
            text = (proc.stdout + proc.stderr).decode(errors="replace")
            found = diagnose_apt(text.splitlines())
            if found is not None:
                code, message, hint = found
                raise VzError(f"{self.template.name}: {message}", code, hint=hint)
            raise VzError(
                f"{self.template.name}: the package lists could not be refreshed: "
                + ("; ".join(apt.apt_errors(text)) or f"apt-get update exit {proc.returncode}"),
                ExitCode.UPSTREAM,
                hint="is the mirror reachable? (the host's apt configuration names it)",
            )
        fsutil.atomic_write(stamp, self._stamp(), 0o644)

    def _conf(self, scratch: Path, status: Path) -> Path:
        (scratch / "none").mkdir(exist_ok=True)  # the parts directories: nothing of the host's
        conf = scratch / "apt.conf"
        conf.write_text(
            apt.host_apt_conf(
                sources=self.apt / "sources.list", keys=self.apt / "trusted.gpg.d",
                lists=self.apt / "lists", archives=self.pool, status=status, scratch=scratch,
                arch=self.arch, options=self.options,
            )
        )  # fmt: skip
        return conf

    def host_apt(
        self,
        scratch: Path,
        status: bytes,
        marks: bytes = b"",
        resolver: Sequence[str] = apt.RESOLVER_OPTIONS,
    ) -> HostApt:
        """The host's apt-get seeing the VPS whose dpkg status is ``status`` and apt marks
        ``marks`` (its extended_states), both sanitised first."""
        clean, dropped = apt.sanitize_dpkg_status(status)
        path = scratch / "status"
        path.write_bytes(clean)
        conf = self._conf(scratch, path)
        (scratch / "state").mkdir(exist_ok=True)
        (scratch / "state" / "extended_states").write_bytes(apt.sanitize_extended_states(marks))
        return HostApt(conf, self.pool, dropped, self.proxy, resolver)


class HostApt:
    """The host's apt-get, seeing one VPS (APT_CONFIG ``conf``)."""

    def __init__(
        self,
        conf: Path,
        pool: Path,
        dropped: int,
        proxy: str | None,
        resolver: Sequence[str] = apt.RESOLVER_OPTIONS,
    ) -> None:
        self.env = {"APT_CONFIG": str(conf)}
        self.resolver = tuple(resolver)
        self.scratch = conf.parent
        self.pool = pool
        self.dropped = dropped
        self.proxy = proxy

    def _run(self, args: Sequence[str]) -> tuple[int, str]:
        opts = [f"-o{o}" for o in self.resolver]
        proc = run.run(["apt-get", "-q", *opts, *args], env=self.env, stdout=-1, check=False)
        return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")

    def show(self, name: str) -> dict[str, str]:
        """apt-cache's record of ``name``'s candidate version."""
        from debian.deb822 import Deb822

        proc = run.run(["apt-cache", "show", "--no-all-versions", "--", name], env=self.env,
                       stdout=-1, check=False)  # fmt: skip
        text = (proc.stdout + proc.stderr).decode(errors="replace")
        if proc.returncode != 0 or not proc.stdout.strip():
            raise VzError(f"no package {name} in the template's repositories",
                          ExitCode.PKGMGR_FAILED,
                          hint="vzpkg list --available CTID shows what they offer") if (
                "No packages found" in text or proc.returncode == 0
            ) else self._failure(text, proc.returncode)  # fmt: skip
        return dict(Deb822(proc.stdout.decode(errors="replace").splitlines()))

    def available(self) -> list[dict[str, str]]:
        proc = run.run(["apt-cache", "dumpavail"], env=self.env, stdout=-1, check=False)
        if proc.returncode != 0:
            raise self._failure(proc.stderr.decode(errors="replace"), proc.returncode)
        found: dict[tuple[str, str], dict[str, str]] = {}
        entry: dict[str, str] = {}
        for line in [*proc.stdout.decode(errors="replace").splitlines(), ""]:
            if not line:
                if "name" in entry:
                    found.setdefault((entry["name"], entry.get("arch", "")), {
                        "name": entry["name"], "version": entry.get("version", ""),
                        "arch": entry.get("arch", "")})  # fmt: skip
                entry = {}
            elif line.startswith("Package: "):
                entry["name"] = line[9:].strip()
            elif line.startswith("Version: "):
                entry["version"] = line[9:].strip()
            elif line.startswith("Architecture: "):
                entry["arch"] = line[14:].strip()
        return sorted(found.values(), key=lambda p: (p["name"], p["arch"]))

    def simulate(self, args: Sequence[str]) -> tuple[list[apt.Change], str]:
        """What ``args`` would change, and apt-get -s's own words for it."""
        code, text = self._run(["-s", *args])
        if code != 0:
            raise self._failure(text, code)
        return apt.parse_simulation(text), text

    def resolve(self, args: Sequence[str]) -> list[apt.Fetch]:
        """The package files ``args`` install, with their size and SHA256 from the signed
        lists (``apt-get --print-uris`` against an empty archive directory: all of them)."""
        empty = self.scratch / "archives"
        (empty / "partial").mkdir(parents=True, exist_ok=True)
        code, text = self._run(["--print-uris", "-y", f"-oDir::Cache::Archives={empty}",
                                "-oAcquire::ForceHash=SHA256", *args])  # fmt: skip
        if code != 0:
            raise self._failure(text, code)
        try:
            return apt.parse_print_uris(text)
        except ValueError as e:
            raise VzError(str(e), ExitCode.PKGMGR_FAILED) from None

    def fetch(self, fetches: Sequence[apt.Fetch], say: Say) -> int:
        """Put every file of ``fetches`` in the shared pool, checked against its size and
        SHA256 (a file already there is used only if it matches); how many were fetched."""
        missing = [f for f in fetches if not _matches(self.pool / f.file, f)]
        if missing:
            total = sum(f.size for f in missing)
            say(f"downloading {len(missing)} package{'s' * (len(missing) != 1)} "
                f"({total / 2**20:.1f} MiB)")  # fmt: skip
            for f in missing:
                _download(f, self.pool, self.proxy)
        return len(missing)

    def _failure(self, text: str, code: int) -> VzError:
        found = diagnose_apt(text.splitlines())
        if found is not None:
            return VzError(found[1], found[0], hint=found[2])
        errors = apt.apt_errors(text) or [f"apt-get exit {code}"]
        hint = None
        if any("Unable to locate package" in e for e in errors):
            hint = "vzpkg list --available CTID shows what the template's repositories offer"
        if self.dropped:
            errors.append(f"{self.dropped} entries of the VPS's dpkg status were unreadable "
                          "and left out")  # fmt: skip
        return VzError("; ".join(errors), ExitCode.PKGMGR_FAILED, hint=hint)


def _matches(path: Path, fetch: apt.Fetch) -> bool:
    """Whether ``path`` is a regular file of ``fetch``'s size and SHA256."""
    try:
        with open(path, "rb", opener=_no_follow) as f:
            if os.fstat(f.fileno()).st_size != fetch.size:
                return False
            return hashlib.file_digest(f, "sha256").hexdigest() == fetch.sha256
    except OSError:
        return False


def _download(fetch: apt.Fetch, pool: Path, proxy: str | None) -> None:
    """``fetch`` into ``pool``: a temp file there, its size and SHA256 checked, then renamed
    in place; nothing is left of it when it fails."""
    import http.client
    import urllib.error
    import urllib.request

    if not fetch.uri.startswith(("http://", "https://")):
        raise VzError(f"{fetch.file}: vzpkg fetches over http(s) only, not {fetch.uri}",
                      ExitCode.UPSTREAM)  # fmt: skip
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": proxy, "https": proxy} if proxy else {})
    )
    fd, tmp = tempfile.mkstemp(prefix=".fetch.", dir=pool)
    try:
        h = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out, opener.open(fetch.uri, timeout=60) as answer:
            while chunk := answer.read(1 << 20):
                size += len(chunk)
                if size > fetch.size:
                    break
                h.update(chunk)
                out.write(chunk)
        if size < fetch.size:
            raise VzError(f"{fetch.file} from {fetch.uri}: the download was cut after {size} of "
                          f"{fetch.size} bytes; nothing was installed", ExitCode.UPSTREAM,
                          hint="try again; is the mirror reachable?")  # fmt: skip
        if size != fetch.size or h.hexdigest() != fetch.sha256:
            raise VzError(
                f"{fetch.file} from {fetch.uri} is not the file the template's signed lists "
                "describe (size or SHA256 differ); nothing was installed",
                ExitCode.SIGNATURE,
                hint="if it persists, the mirror serves something else than it signed",
            )
        os.chmod(tmp, 0o644)
        os.rename(tmp, pool / fetch.file)
    except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
        raise VzError(f"{fetch.file} could not be downloaded from {fetch.uri}: "
                      f"{getattr(e, 'reason', None) or e}", ExitCode.UPSTREAM,
                      hint="is the mirror reachable? nothing was installed") from None  # fmt: skip
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _tree_digest(directory: Path) -> bytes:
    h = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.digest()
