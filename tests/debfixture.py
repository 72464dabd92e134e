"""A signed Debian repository the tests build and change themselves: tiny ``Architecture: all``
packages made with dpkg-deb, a Packages index and a Release file written here, InRelease
clear-signed with a throwaway key (tests/rpmfixture.py's key helpers). Served on loopback by
rpmfixture.RepoServer, it is a suite apt and mmdebstrap verify like any mirror's."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.rpmfixture import generate_key, gnupg_session

SUITE = "vzlocal"


@dataclass(frozen=True)
class DebSpec:
    name: str
    version: str
    files: dict[str, str] = field(default_factory=dict)  # absolute path -> text


@dataclass
class DebRepo:
    path: Path  # served: dists/ and pool/
    gnupg_home: Path
    key_id: str
    key_file: Path  # armored public key
    generation: int = 0
    packages: dict[str, str] = field(default_factory=dict)  # name -> newest version


def add_local_suite(debian: Path, repo: DebRepo, sets: dict[str, str]) -> None:
    """Make the Debian metadata in ``debian`` (a copy of metadata/debian) know the suite of
    ``repo``: its key beside Debian's for release 12, a repository of it, a mirror ``vzlocal``
    (VZLOCAL_MIRROR names its URL), and ``sets`` (name -> TOML)."""
    (debian / "keys").mkdir(exist_ok=True)
    shutil.copy(repo.key_file, debian / "keys" / "vzlocal.asc")
    release = debian / "releases" / "12.toml"
    release.write_text(
        'keys = ["/usr/share/keyrings/debian-archive-keyring.gpg", "../keys/vzlocal.asc"]\n'
        + release.read_text()
        + f'\n[[repositories]]\nid = "local"\nmirror = "vzlocal"\nsuite = "{SUITE}"\n'
        'components = ["main"]\n'
    )
    with (debian / "distribution.toml").open("a") as f:
        f.write('\n[mirrors.vzlocal]\nurl = "http://127.0.0.1:9/not-set"\n')
    for name, toml in sets.items():
        (debian / "sets" / f"{name}.toml").write_text(toml)


def build_deb(spec: DebSpec, where: Path) -> Path:
    stage = where / f"stage-{spec.name}-{spec.version}"
    (stage / "DEBIAN").mkdir(parents=True)
    (stage / "DEBIAN" / "control").write_text(
        f"Package: {spec.name}\nVersion: {spec.version}\nArchitecture: all\n"
        "Maintainer: vzpkg tests <tests@invalid>\nPriority: optional\nSection: misc\n"
        f"Description: vzpkg test package {spec.name}\n"
    )
    for path, text in spec.files.items():
        target = stage / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    out = where / f"{spec.name}_{spec.version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(stage),
                    str(out)], check=True, capture_output=True)  # fmt: skip
    shutil.rmtree(stage)
    return out


def make_repo(workdir: Path) -> DebRepo:
    gnupg = workdir / "gnupg"
    key_id, _ = generate_key(gnupg)
    path = workdir / "repo"
    (path / "pool").mkdir(parents=True)
    key_file = workdir / "vzlocal.asc"
    with gnupg_session(gnupg) as home:
        key_file.write_bytes(subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--armor", "--export", key_id],
            check=True, capture_output=True).stdout)  # fmt: skip
    return DebRepo(path, gnupg, key_id, key_file)


def publish(repo: DebRepo, *specs: DebSpec) -> None:
    """Add ``specs`` to the pool and publish a new signed state of the suite (its Date one
    hour after the previous one's, in the past, so that every state is distinct)."""
    for spec in specs:
        build_deb(spec, repo.path / "pool")
        repo.packages[spec.name] = spec.version
    repo.generation += 1
    stanzas = []
    for deb in sorted((repo.path / "pool").glob("*.deb")):
        control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True,
                                 capture_output=True, text=True).stdout.strip()  # fmt: skip
        data = deb.read_bytes()
        stanzas.append(f"{control}\nFilename: pool/{deb.name}\nSize: {len(data)}\n"
                       f"SHA256: {hashlib.sha256(data).hexdigest()}\n")  # fmt: skip
    binary = repo.path / "dists" / SUITE / "main" / "binary-amd64"
    binary.mkdir(parents=True, exist_ok=True)
    packages = "\n".join(stanzas).encode()
    (binary / "Packages").write_bytes(packages)
    release = (
        f"Origin: vzpkg-tests\nLabel: vzpkg-tests\nSuite: {SUITE}\nCodename: {SUITE}\n"
        f"Date: Thu, 01 Jan 2026 {repo.generation:02d}:00:00 UTC\n"
        "Architectures: amd64\nComponents: main\nAcquire-By-Hash: no\nSHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} main/binary-amd64/Packages\n"
    )
    dists = repo.path / "dists" / SUITE
    (dists / "Release").write_text(release)
    with gnupg_session(repo.gnupg_home) as home:
        (dists / "InRelease").unlink(missing_ok=True)
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--local-user", repo.key_id,
                        "--clearsign", "--output", str(dists / "InRelease"),
                        str(dists / "Release")], check=True, capture_output=True)  # fmt: skip
