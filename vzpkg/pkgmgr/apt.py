"""How apt-family tools are driven: host apt sources, mmdebstrap / debootstrap argv, dpkg status.

Pure functions: they build argv lists and parse files, so they are tested without root.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` line (or deb822 stanza, split per suite) of the host's apt configuration."""

    uri: str
    suite: str
    components: tuple[str, ...]
    origin: str  # file it came from


def parse_one_line_sources(text: str, origin: str) -> list[AptSource]:
    sources = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        # Options in brackets may contain spaces: "deb [arch=amd64 signed-by=...] URI suite c..".
        line = re.sub(r"\[[^\]]*\]", " ", line)
        words = line.split()
        if len(words) < 3 or words[0] != "deb":
            continue
        sources.append(AptSource(words[1].rstrip("/"), words[2], tuple(words[3:]), origin))
    return sources


# What apt's StringToBool reads as false ("Enabled: false" disables a stanza as "no" does).
_APT_FALSE = frozenset({"no", "false", "without", "off", "disable"})


def parse_deb822_sources(text: str, origin: str) -> list[AptSource]:
    from debian.deb822 import Deb822  # lazy: only cache builds read apt sources

    sources = []
    for stanza in Deb822.iter_paragraphs(text.splitlines()):
        if "deb" not in stanza.get("Types", "").split():
            continue
        if stanza.get("Enabled", "yes").strip().lower() in _APT_FALSE:
            continue
        components = tuple(stanza.get("Components", "").split())
        for uri in stanza.get("URIs", "").split():
            for suite in stanza.get("Suites", "").split():
                sources.append(AptSource(uri.rstrip("/"), suite, components, origin))
    return sources


def host_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every enabled ``deb`` source of the host, in apt's own reading order."""
    sources: list[AptSource] = []
    main = etc_apt / "sources.list"
    if main.is_file():
        sources += parse_one_line_sources(main.read_text(errors="replace"), str(main))
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                sources += parse_one_line_sources(path.read_text(errors="replace"), str(path))
            elif path.suffix == ".sources":
                sources += parse_deb822_sources(path.read_text(errors="replace"), str(path))
    return sources


def find_host_mirror(sources: Iterable[AptSource], suites: Iterable[str]) -> str | None:
    """The URI of the first host source serving one of ``suites``."""
    wanted = set(suites)
    for source in sources:
        if source.suite in wanted:
            return source.uri
    return None


def sources_line(uri: str, suite: str, components: Sequence[str]) -> str:
    return f"deb {uri} {suite} {' '.join(components)}"


def mmdebstrap_argv(
    *,
    suite: str,
    target: Path,
    source_lines: Sequence[str],
    arch: str,
    variant: str,
    keyrings: Sequence[Path],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    aptopts: Sequence[str] = (),
    pkgcache: Path | None = None,
) -> list[str]:
    """mmdebstrap into a directory, as root, verifying signatures against ``keyrings`` only.

    With ``pkgcache`` the host directory is bind-mounted over /var/cache/apt/archives for the
    whole run, so .debs downloaded once are reused by the next build; it is unmounted before
    mmdebstrap's own cleanup so the cache is never emptied.
    """
    argv = [
        "mmdebstrap",
        "--mode=root",
        "--format=directory",
        f"--variant={variant}",
        f"--architectures={arch}",
    ]
    argv += [f"--keyring={k}" for k in keyrings]
    # Apt's "pkg-" syntax removes (or keeps out) a package from the same transaction.
    wanted = list(include) + [f"{p}-" for p in exclude]
    if wanted:
        argv.append("--include=" + ",".join(wanted))
    argv += [f"--aptopt={opt}" for opt in aptopts]
    if pkgcache is not None:
        archives = '"$1"/var/cache/apt/archives'
        argv += [
            "--skip=download/empty",
            "--skip=essential/unlink",
            f"--setup-hook=mkdir -p {archives} && mount --bind {shlex.quote(str(pkgcache))} "
            f"{archives}",
            f"--customize-hook=umount {archives}",
        ]
    argv += [suite, str(target), *source_lines]
    return argv


def debootstrap_argv(
    *,
    suite: str,
    target: Path,
    mirror: str,
    components: Sequence[str],
    arch: str,
    variant: str,
    keyring: Path,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    pkgcache: Path | None = None,
) -> list[str]:
    argv = [
        "debootstrap",
        f"--variant={variant}",
        f"--arch={arch}",
        f"--keyring={keyring}",
        "--force-check-gpg",
        "--merged-usr",
    ]
    if components:
        argv.append("--components=" + ",".join(components))
    if include:
        argv.append("--include=" + ",".join(include))
    if exclude:
        argv.append("--exclude=" + ",".join(exclude))
    if pkgcache is not None:
        argv.append(f"--cache-dir={pkgcache}")
    argv += [suite, str(target), mirror]
    return argv


def read_dpkg_status(status_file: Path) -> list[tuple[str, str, str]]:
    """(name, version, arch) of every installed package, sorted by name."""
    from vzpkg.pkgmgr.installed import parse_dpkg_status

    return sorted((p.name, p.version, p.arch) for p in parse_dpkg_status(status_file.read_bytes()))


# -- packages in a running VPS (vzpkg install/update/remove, vzapt) ---------------------------

# The fields of a dpkg status stanza that apt's resolver reads; everything else a VPS wrote
# there stays out of the copy the host's apt-get reads. (Installed-Size and the relations are
# part of apt's version hash: without them apt takes an installed version for another one.)
STATUS_FIELDS = (
    "Package", "Status", "Priority", "Essential", "Protected", "Architecture", "Multi-Arch",
    "Version", "Installed-Size", "Provides", "Depends", "Pre-Depends", "Recommends", "Suggests",
    "Conflicts", "Breaks", "Replaces", "Enhances",
)  # fmt: skip
_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]*\Z")
_VERSION = re.compile(r"[A-Za-z0-9.+~:-]+\Z")
_ARCH = re.compile(r"[a-z0-9-]+\Z")
_WORD = re.compile(r"[a-z-]+\Z")
_RELATIONS = re.compile(r"[A-Za-z0-9.+~:<>=|,()\[\]! _-]*\Z")


def sanitize_dpkg_status(data: bytes) -> tuple[bytes, int]:
    """A dpkg status file the host's apt-get can read without trusting the VPS that wrote it:
    only ``STATUS_FIELDS``, each value on one line of the characters its syntax allows; a
    stanza with anything else is left out. Returns (the file, how many stanzas were left out)."""
    from vzpkg.pkgmgr.installed import stanzas

    out: list[str] = []
    dropped = 0
    for para in stanzas(data, set(STATUS_FIELDS)):
        fields = {k: " ".join(v.split()) for k, v in para.items()}
        ok = (
            _NAME.match(fields.get("Package", ""))
            and _VERSION.match(fields.get("Version", "0"))
            and _ARCH.match(fields.get("Architecture", "all"))
            and all(_WORD.match(w) for w in fields.get("Status", "").split() or ["-"])
            and len(fields.get("Status", "").split()) == 3
            and all(_RELATIONS.match(v) for v in fields.values())
        )
        if not ok:
            dropped += 1
            continue
        out.append("".join(f"{k}: {fields[k]}\n" for k in STATUS_FIELDS if k in fields))
    return "\n".join(out).encode(), dropped


def sanitize_extended_states(data: bytes) -> bytes:
    """apt's marks of a VPS (extended_states) for the host's apt-get: Package, Architecture
    and Auto-Installed of each stanza whose values are what their syntax allows."""
    out = []
    for stanza in data.decode("utf-8", errors="replace").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line)
        name, arch = fields.get("Package", ""), fields.get("Architecture", "")
        auto = fields.get("Auto-Installed", "")
        if _NAME.match(name) and _ARCH.match(arch) and auto in ("0", "1"):
            out.append(f"Package: {name}\nArchitecture: {arch}\nAuto-Installed: {auto}\n")
    return "\n".join(out).encode()


def host_apt_conf(
    *,
    sources: Path,
    keys: Path,
    lists: Path,
    archives: Path,
    status: Path,
    scratch: Path,
    arch: str,
    options: Sequence[str] = (),
) -> str:
    """An APT_CONFIG for the host's apt-get that sees a VPS: the template's sources and keys
    only (nothing of the host's /etc/apt), the shared lists and packages of its template, a
    copy of its dpkg status; ``scratch`` (empty, private) takes what else apt writes."""
    values = {
        "Dir::Etc::main": "/dev/null",
        "Dir::Etc::parts": f"{scratch}/none",
        "Dir::Etc::sourcelist": str(sources),
        "Dir::Etc::sourceparts": f"{scratch}/none",
        "Dir::Etc::trusted": f"{scratch}/none.gpg",
        "Dir::Etc::trustedparts": str(keys),
        "Dir::Etc::preferences": "/dev/null",
        "Dir::Etc::preferencesparts": f"{scratch}/none",
        "Dir::State": f"{scratch}/state",
        "Dir::State::extended_states": f"{scratch}/state/extended_states",
        "Dir::State::lists": str(lists),
        "Dir::State::status": str(status),
        "Dir::Cache": f"{scratch}/cache",
        # The lists' part of apt's binary cache, kept beside them (apt checks it against
        # them): each run then merges only the VPS's status instead of parsing every list.
        "Dir::Cache::srcpkgcache": str(lists.parent / "srcpkgcache.bin"),
        "Dir::Cache::pkgcache": "",
        "Dir::Cache::archives": str(archives),
        "Dir::Log": f"{scratch}/log",
        "APT::Architecture": arch,
        "Acquire::Languages": "none",
        "Acquire::AllowInsecureRepositories": "false",
        "Acquire::AllowDowngradeToInsecureRepositories": "false",
        "APT::Get::AllowUnauthenticated": "false",
    }
    lines = [f'{k} "{v}";' for k, v in values.items()]
    lines.append(f'APT::Architectures {{ "{arch}"; }};')
    lines += [f"{opt};" for opt in options]  # host_aptopts: 'Key "value"'
    return "\n".join(lines) + "\n"


# Where a VPS sees the shared packages (read-only), and its own transaction directories.
VPS_POOL_DIR = "/run/vzpkg/pool"
VPS_TX_PREFIX = "/run/vzpkg/tx."

# How the host resolves for a VPS (the VPS's apt-get then installs exactly those files).
RESOLVER_OPTIONS = ("APT::Install-Recommends=true", "APT::Install-Suggests=false")
# A cache's packages are resolved as mmdebstrap resolves them when it bootstraps: no
# recommends, so that an updated cache has what a fresh bootstrap of the same set would have.
BUILD_RESOLVER_OPTIONS = ("APT::Install-Recommends=false", "APT::Install-Suggests=false")
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?\Z")


@dataclass(frozen=True)
class Marks:
    """apt's marks to set once the VPS's apt-get has installed the files: what the user asked
    for is manual (as ``apt-get install NAME`` makes it), what came along is automatic, and an
    upgraded package keeps the mark it had (installing a file would make it manual)."""

    manual: tuple[str, ...] = ()
    auto: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (*self.manual, *self.auto, *self.keep):
            if not PACKAGE_NAME.match(name):
                raise ValueError(f"not a package name: {name!r}")


def vps_apt_argv(
    args: Sequence[str], token: str, marks: Marks = Marks(), *, configure_pending: bool = False
) -> list[str]:
    """The command run inside the VPS: its own apt-get with ``args`` (package files in
    VPS_POOL_DIR, or a removal), seeing no repository at all (an empty sources list and lists
    directory of its own, in a transaction directory ``token`` names: an apt-get a killed vzpkg
    left running keeps its own), so that it resolves against its dpkg status and the files
    only, and can download nothing; then ``marks``, on what is there even when apt-get failed
    (apt marks before dpkg runs). ``configure_pending``: first finish what dpkg left half
    done, as apt-get's own run would."""
    tx = VPS_TX_PREFIX + token
    options = [
        f"Dir::Etc::SourceList={tx}/sources.list",
        f"Dir::Etc::SourceParts={tx}/lists",
        f"Dir::State::Lists={tx}/lists",
        f"Dir::Cache::Archives={tx}/archives",
        "Dir::Cache::pkgcache=",
        "Dir::Cache::srcpkgcache=",
        "APT::Sandbox::User=root",  # it copies the files in as root: it is the VPS's root
        "DPkg::Lock::Timeout=300",
        "Dpkg::Options::=--force-confdef",
        "Dpkg::Options::=--force-confold",
    ]
    words = " ".join  # the names are checked (Marks): nothing to quote
    present = "dpkg-query -W -f '${Package}\\n' %s 2>/dev/null"  # those dpkg knows
    keep = f"was=$(apt-mark showauto {words(marks.keep)}); " if marks.keep else "was=; "
    after = []
    if marks.manual:
        after.append(f"set -- $({present % words(marks.manual)}); "
                     '[ $# = 0 ] || apt-mark manual "$@" >/dev/null')  # fmt: skip
    if marks.auto or marks.keep:
        after.append(f"set -- $({present % words(marks.auto)}) $was; "
                     '[ $# = 0 ] || apt-mark auto "$@" >/dev/null')  # fmt: skip
    configure = (
        "DEBIAN_FRONTEND=noninteractive dpkg --force-confdef --force-confold --configure "
        '--pending || { rm -rf "$tx"; exit 100; }; '
        if configure_pending
        else ""
    )
    script = (
        # A vzpkg killed with its output pipe must not take apt-get and dpkg down half way.
        "trap '' PIPE; "
        # Directories of transactions whose vzpkg was killed, once they are surely over.
        f"find {VPS_TX_PREFIX.rpartition('/')[0]} -maxdepth 1 -name 'tx.*' -mmin +360 "
        "-exec rm -rf {} + 2>/dev/null; "
        f'tx={tx}; rm -rf "$tx" && mkdir -p "$tx/lists/partial" "$tx/archives/partial" && '
        ': > "$tx/sources.list" || exit 100; cd / && ' + configure + keep
        + 'DEBIAN_FRONTEND=noninteractive apt-get "$@"; rc=$?; '
        + "".join(f"{step}; " for step in after)
        + 'rm -rf "$tx"; exit $rc'
    )  # fmt: skip
    argv = ["/bin/sh", "-c", script, "vzpkg"]
    return [*argv, *(f"-o{opt}" for opt in options), "-y", *args]  # nobody is there to answer


# apt-get in a build root: no pty to log dpkg's output through (its /dev has no pts).
ROOT_APT_OPTIONS = ("-oDpkg::Use-Pty=0",)


def removal_argv(drop: Sequence[str], purge: Sequence[str]) -> list[str]:
    """Run in a cache's root: ``drop`` (no longer asked for) becomes automatically installed
    and goes unless something needs it, ``purge`` goes whatever needs it, as a bootstrap
    that never had them would leave the root."""
    steps = []
    if drop:
        steps.append(f"apt-mark auto {shlex.join(drop)} >/dev/null")
    # What a bootstrap without recommends would not have installed goes too.
    options = ["-oAPT::AutoRemove::RecommendsImportant=false",
               "-oAPT::AutoRemove::SuggestsImportant=false", *ROOT_APT_OPTIONS]  # fmt: skip
    removal = ["purge", "--auto-remove", *purge] if purge else ["autoremove", "--purge"]
    steps.append(shlex.join(["apt-get", "-y", *options, *removal]))
    return ["/bin/sh", "-ec", "; ".join(steps)]


@dataclass(frozen=True)
class Fetch:
    """One package file a transaction needs, as ``apt-get --print-uris`` gives it: where it
    is, its name in the pool, and its size and SHA256 from the signed lists."""

    uri: str
    file: str
    size: int
    sha256: str

    @property
    def name_version_arch(self) -> tuple[str, str, str]:
        name, version, arch = self.file.removesuffix(".deb").split("_")
        return name, version.replace("%3a", ":"), arch


_URI = re.compile(r"^'([^']+)' (\S+\.deb) (\d+) SHA256:([0-9a-f]{64})$", re.MULTILINE)
_DEB_FILE = re.compile(r"[a-z0-9][a-z0-9+.-]*_[A-Za-z0-9.+~%-]+_[a-z0-9-]+\.deb\Z")


def parse_print_uris(text: str) -> list[Fetch]:
    """The package files ``apt-get --print-uris -o Acquire::ForceHash=SHA256`` lists."""
    found = []
    for m in _URI.finditer(text):
        if not _DEB_FILE.match(m.group(2)):
            raise ValueError(f"apt-get named a package file vzpkg does not take: {m.group(2)!r}")
        found.append(Fetch(m.group(1), m.group(2), int(m.group(3)), m.group(4)))
    return found


@dataclass(frozen=True)
class Change:
    """One package of a transaction: ``old`` None when it is installed new, ``new`` None when
    it is removed."""

    name: str
    arch: str
    old: str | None
    new: str | None


_INST = re.compile(r"^Inst (\S+) (?:\[(\S+)\] )?\((\S+) .*\[(\S+)\]\)", re.MULTILINE)
_REMV = re.compile(r"^Remv (\S+)(?: \[(\S+)\])?", re.MULTILINE)


def parse_simulation(text: str) -> list[Change]:
    """The changes ``apt-get -s`` prints (Inst and Remv lines), in its order."""
    changes = []
    for m in _INST.finditer(text):
        name, _, arch = m.group(1).partition(":")
        changes.append(Change(name, arch or m.group(4), m.group(2), m.group(3)))
    for m in _REMV.finditer(text):
        name, _, arch = m.group(1).partition(":")
        changes.append(Change(name, arch, m.group(2), None))
    return changes


def apt_errors(text: str) -> list[str]:
    """apt's own error lines (``E: ...``), without the prefix."""
    return [line[3:].strip() for line in text.splitlines() if line.startswith("E: ")]
