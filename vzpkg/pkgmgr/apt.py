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
