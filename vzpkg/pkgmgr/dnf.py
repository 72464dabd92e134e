"""How dnf and rpm are driven: host-side configuration, argv, rpm database queries.

Everything dnf reads is written by vzpkg on the host (``--config``, ``reposdir``, ``varsdir``),
so nothing inside the new root can change where packages come from or whether they are checked.
Pure functions: tested as data without root.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

# Debian's rpm keeps its database in ~/.rpmdb; an rpm-family root needs it where its own rpm
# and dnf look. rpm reads $HOME/.rpmmacros last, so a private HOME carries this override.
RPM_MACROS = "%_dbpath /var/lib/rpm\n"
RPM_QUERY_FORMAT = r"%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\t%{ARCH}\n"


@dataclass(frozen=True)
class DnfRepo:
    id: str
    name: str
    baseurl: str | None = None
    metalink: str | None = None
    mirrorlist: str | None = None
    gpgkeys: tuple[Path, ...] = ()
    repo_gpgcheck: bool = False
    enabled: bool = True


def render_dnf_conf(*, exclude: Sequence[str] = ()) -> str:
    lines = [
        "[main]",
        "gpgcheck=1",
        "localpkg_gpgcheck=1",
        "skip_if_unavailable=0",
        "keepcache=1",
        "install_weak_deps=0",
        "best=1",
        "plugins=0",
        "metadata_expire=0",
    ]
    if exclude:
        lines.append("excludepkgs=" + ",".join(exclude))
    return "\n".join(lines) + "\n"


def render_repo(repo: DnfRepo) -> str:
    lines = [f"[{repo.id}]", f"name={repo.name}"]
    if repo.baseurl:
        lines.append(f"baseurl={repo.baseurl}")
    if repo.metalink:
        lines.append(f"metalink={repo.metalink}")
    if repo.mirrorlist:
        lines.append(f"mirrorlist={repo.mirrorlist}")
    lines += [
        f"enabled={int(repo.enabled)}",
        "gpgcheck=1",
        f"repo_gpgcheck={int(repo.repo_gpgcheck)}",
        "skip_if_unavailable=0",
        "gpgkey=" + " ".join(f"file://{k}" for k in repo.gpgkeys),
    ]
    return "\n".join(lines) + "\n"


def dnf_install_argv(
    *,
    root: Path,
    config: Path,
    reposdir: Path,
    varsdir: Path,
    cachedir: Path,
    logdir: Path,
    persistdir: Path,
    releasever: str,
    arch: str,
    packages: Sequence[str],
    host_arch: str,
    command: Sequence[str] = ("install",),
) -> list[str]:
    """dnf install (or ``command``) into ``root``. The directories are given with --setopt,
    not in the config file: with --installroot dnf takes config-file paths as relative to
    the new root, while --setopt paths stay on the host (the package cache survives the
    build there)."""
    argv = [
        "dnf",
        "-y",
        f"--installroot={root}",
        f"--config={config}",
        f"--releasever={releasever}",
        "--setopt=tsflags=nodocs",
        # metadata_expire=0 counts whole seconds: a run in the same second as the previous
        # one would use its metadata, missing what the mirror published in between.
        "--refresh",
    ]
    argv += [
        f"--setopt={key}={path}"
        for key, path in (
            ("reposdir", reposdir),
            ("varsdir", varsdir),
            ("cachedir", cachedir),
            ("logdir", logdir),
            ("persistdir", persistdir),
        )
    ]
    if arch != host_arch:
        argv.append(f"--forcearch={arch}")
    argv += [*command, "--", *packages] if packages else command
    return argv


def rpm_query_argv(root: Path) -> list[str]:
    return ["rpm", f"--root={root}", "--dbpath=/var/lib/rpm", "-qa", "--qf", RPM_QUERY_FORMAT]


def parse_rpm_query(text: str) -> list[tuple[str, str, str]]:
    """(name, epoch:version-release, arch) per installed package, sorted; gpg-pubkey skipped
    (imported keys are stored as pseudo-packages)."""
    result = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] == "gpg-pubkey":
            continue
        result.append((parts[0], parts[1], parts[2]))
    return sorted(result)


def substitute(url: str, releasever: str, basearch: str) -> str:
    return url.replace("$releasever", releasever).replace("$basearch", basearch)


_NS = {
    "repo": "http://linux.duke.edu/metadata/repo",
    "mm0": "http://fedorahosted.org/mirror/",
    "ml": "http://www.metalinker.org/",
}


def repomd_revision(xml: bytes) -> tuple[str | None, int | None]:
    """repomd.xml's <revision> and its newest <timestamp>."""
    try:
        tree = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None, None
    revision = tree.findtext("repo:revision", namespaces=_NS)
    stamps = [
        int(t.text) for t in tree.iterfind(".//repo:timestamp", _NS) if t.text and t.text.isdigit()
    ]
    return revision, max(stamps) if stamps else None


def metalink_repomd(xml: bytes) -> tuple[str | None, int | None]:
    """The sha256 of repomd.xml and its timestamp as a metalink publishes them."""
    try:
        tree = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None, None
    for file in tree.iterfind(".//ml:file", _NS):
        if file.get("name") != "repomd.xml":
            continue
        digest = None
        for h in file.iterfind(".//ml:hash", _NS):
            if h.get("type") == "sha256":
                digest = (h.text or "").strip()
                break
        stamp = file.findtext("mm0:timestamp", namespaces=_NS)
        return digest, int(stamp) if stamp and stamp.isdigit() else None
    return None, None


def first_mirror(mirrorlist: bytes) -> str | None:
    for line in mirrorlist.decode(errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and re.match(r"^[a-z]+://", line):
            return line.rstrip("/")
    return None
