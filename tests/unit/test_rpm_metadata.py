"""The shipped rpm-family metadata: AlmaLinux 9, Rocky Linux 9 and Fedora 45.

It loads, its repositories say where packages come from, and every signing key it ships is the
distribution's official key: the fingerprint of each key file equals the one the distribution
publishes, which is also recorded in a ``# key-fingerprint: NAME FPR`` comment next to the
``keys = [...]`` that names the file. The fingerprint is computed twice, in pure Python from the
OpenPGP packet and by gpg (with a throw-away GNUPGHOME), and gpg checks the self-signatures.
No root, no network.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vzpkg.metadata.loader import Catalog, load_catalog
from vzpkg.metadata.model import Template

METADATA = Path(__file__).resolve().parents[2] / "metadata"
RPM_OSES = ("almalinux", "rocky", "fedora")
FEDORA = "45"

# As published by the distributions: https://almalinux.org/security/ (AlmaLinux OS 9),
# https://rockylinux.org/keys (Rocky Linux 9), https://fedoraproject.org/security (Fedora 45).
# Pinned here as well as in the metadata, so that a key file and its comment cannot be replaced
# together unnoticed.
OFFICIAL = {
    "RPM-GPG-KEY-AlmaLinux-9": "BF18AC2876178908D6E71267D36CB86CB86B3716",
    "RPM-GPG-KEY-Rocky-9": "21CB256AE16FC54C6E652949702D426D350D275D",
    f"RPM-GPG-KEY-fedora-{FEDORA}-primary": "4F50A6114CD5C6976A7F1179655A4B02F577861E",
}
EXPECTED_REPOS = {
    "almalinux": ("baseos", "appstream", "extras"),
    "rocky": ("baseos", "appstream", "extras"),
    "fedora": ("fedora", "updates"),
}
RECORDED_RE = re.compile(r"^#\s*key-fingerprint:\s*(\S+)\s+([0-9A-Fa-f ]+?)\s*$", re.MULTILINE)
DNF_VAR_RE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(METADATA)


def rpm_templates(catalog: Catalog) -> list[Template]:
    return [t for t in catalog.templates.values() if t.distribution.name in RPM_OSES]


def key_files(t: Template) -> list[Path]:
    return [*t.keys, *(k for r in t.release.repositories for k in r.gpgkeys)]


# --- templates and repositories -------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "almalinux-9-x86_64-minimal",
        "almalinux-9-aarch64-default",
        "rocky-9-x86_64-default",
        "rocky-9-aarch64-minimal",
        f"fedora-{FEDORA}-x86_64-minimal",
        f"fedora-{FEDORA}-aarch64-default",
    ],
)
def test_template_exists_and_is_rpm(catalog: Catalog, name: str) -> None:
    t = catalog.get(name)
    assert t.distribution.family == "rpm"
    assert t.distribution.package_manager == "dnf"
    assert t.distribution.bootstrap == ("dnf",)


@pytest.mark.parametrize("os_name", RPM_OSES)
def test_distribution_arches(catalog: Catalog, os_name: str) -> None:
    assert catalog.distributions[os_name].arches == ("x86_64", "aarch64")
    assert {t.arch for t in rpm_templates(catalog) if t.distribution.name == os_name} == {
        "x86_64",
        "aarch64",
    }


def test_every_rpm_repository_names_a_source(catalog: Catalog) -> None:
    templates = rpm_templates(catalog)
    assert templates
    for t in templates:
        ids = tuple(r.id for r in t.release.repositories)
        assert ids == EXPECTED_REPOS[t.distribution.name], t.name
        for repo in t.release.repositories:
            urls = [u for u in (repo.baseurl, repo.metalink, repo.mirrorlist) if u]
            assert urls, f"{t.name}: {repo.id} has no baseurl, metalink or mirrorlist"
            for url in urls:
                assert url.startswith("https://"), url
                # Only dnf's own variables: nothing defines anything else at bootstrap time.
                assert set(DNF_VAR_RE.findall(url)) <= {"releasever", "basearch"}, url
            assert repo.enabled


def test_upstream_mirror_urls(catalog: Catalog) -> None:
    alma = catalog.get("almalinux-9-x86_64-minimal").release.repositories
    assert alma[0].mirrorlist == "https://mirrors.almalinux.org/mirrorlist/$releasever/baseos"
    rocky = catalog.get("rocky-9-x86_64-minimal").release.repositories
    assert rocky[0].mirrorlist == (
        "https://mirrors.rockylinux.org/mirrorlist?arch=$basearch&repo=BaseOS-$releasever"
    )
    fedora = catalog.get(f"fedora-{FEDORA}-x86_64-minimal").release.repositories
    assert fedora[0].metalink == (
        "https://mirrors.fedoraproject.org/metalink?repo=fedora-$releasever&arch=$basearch"
    )
    assert fedora[1].metalink == (
        "https://mirrors.fedoraproject.org/metalink?repo=updates-released-f$releasever"
        "&arch=$basearch"
    )


@pytest.mark.parametrize("os_name", RPM_OSES)
def test_sets(catalog: Catalog, os_name: str) -> None:
    version = FEDORA if os_name == "fedora" else "9"
    minimal = catalog.get(f"{os_name}-{version}-x86_64-minimal")
    default = catalog.get(f"{os_name}-{version}-x86_64-default")
    assert default.package_set.base == "minimal"
    assert set(minimal.packages) <= set(default.packages)
    for package in ("bash", "rpm", "iproute", "procps-ng"):
        assert package in minimal.packages
    for package in ("systemd", "openssh-server", "rsyslog", "cronie", "logrotate"):
        assert package in default.packages
    for package in ("kernel", "kernel-core", "linux-firmware"):
        assert package in minimal.exclude
        assert package in default.exclude
        assert package not in default.packages


# --- signing keys ---------------------------------------------------------------------------


def referenced_keys(catalog: Catalog) -> dict[str, Path]:
    keys: dict[str, Path] = {}
    for t in rpm_templates(catalog):
        files = key_files(t)
        assert files, f"{t.name} ships no signing key"
        for path in files:
            keys[path.name] = path.resolve()
    return keys


def recorded_fingerprints(catalog: Catalog) -> dict[str, str]:
    """``# key-fingerprint: NAME FPR`` comments of the rpm distributions' TOML files."""
    recorded: dict[str, str] = {}
    for os_name in RPM_OSES:
        for toml in sorted((METADATA / os_name).rglob("*.toml")):
            for name, fpr in RECORDED_RE.findall(toml.read_text()):
                recorded[name] = fpr.replace(" ", "").upper()
    return recorded


def test_referenced_keys_are_the_official_ones(catalog: Catalog) -> None:
    keys = referenced_keys(catalog)
    assert set(keys) == set(OFFICIAL)
    for name, path in keys.items():
        assert path.parent.name == "keys", path
        assert path.is_relative_to(METADATA.resolve()), path
        assert path.is_file(), path
        assert name.startswith("RPM-GPG-KEY-")


def test_fingerprints_are_recorded_next_to_the_keys(catalog: Catalog) -> None:
    recorded = recorded_fingerprints(catalog)
    assert recorded == OFFICIAL
    # The comment sits in the file whose keys = [...] names the key.
    for t in rpm_templates(catalog):
        text = t.release.path.read_text() if t.release.keys else t.distribution.path.read_text()
        names = {name for name, _ in RECORDED_RE.findall(text)}
        assert {p.name for p in t.keys} <= names, t.name


def dearmor(text: str) -> bytes:
    """The binary packets of an ASCII-armored public key block (RFC 4880 section 6)."""
    lines = text.strip().splitlines()
    assert lines[0] == "-----BEGIN PGP PUBLIC KEY BLOCK-----"
    assert lines[-1] == "-----END PGP PUBLIC KEY BLOCK-----"
    body = lines[1:-1]
    blank = body.index("")  # armor headers (Version:, Comment:) end at the first empty line
    body = body[blank + 1 :]
    assert body[-1].startswith("="), "missing armor checksum"
    data = base64.b64decode("".join(body[:-1]), validate=True)
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    assert (crc & 0xFFFFFF).to_bytes(3, "big") == base64.b64decode(body[-1][1:]), "bad CRC24"
    return data


def primary_key_packet(data: bytes) -> bytes:
    """The body of the first packet, which must be a version 4 public-key packet (tag 6)."""
    first = data[0]
    assert first & 0x80, "not an OpenPGP packet"
    if first & 0x40:  # new format
        tag, o1 = first & 0x3F, data[1]
        if o1 < 192:
            length, start = o1, 2
        elif o1 < 224:
            length, start = ((o1 - 192) << 8) + data[2] + 192, 3
        else:
            assert o1 == 255, "partial length in a key packet"
            length, start = int.from_bytes(data[2:6], "big"), 6
    else:  # old format
        tag, length_type = (first >> 2) & 0x0F, first & 0x03
        size = {0: 1, 1: 2, 2: 4}[length_type]
        length, start = int.from_bytes(data[1 : 1 + size], "big"), 1 + size
    assert tag == 6, f"first packet has tag {tag}, not a public key"
    body = data[start : start + length]
    assert len(body) == length
    assert body[0] == 4, "not a version 4 key"
    return body


def v4_fingerprint(key_body: bytes) -> str:
    material = b"\x99" + len(key_body).to_bytes(2, "big") + key_body
    return hashlib.sha1(material).hexdigest().upper()


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_key_fingerprint_pure_python(catalog: Catalog, name: str) -> None:
    text = referenced_keys(catalog)[name].read_text()
    assert "PRIVATE KEY" not in text
    assert v4_fingerprint(primary_key_packet(dearmor(text))) == OFFICIAL[name]


def gpg(home: Path, *args: str) -> str:
    result = subprocess.run(
        ["gpg", "--batch", "--no-tty", "--with-colons", *args],
        env={**os.environ, "GNUPGHOME": str(home), "LC_ALL": "C"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


@pytest.fixture
def gnupg_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    yield home
    # gpg may have started an agent for this home: never leave one behind.
    subprocess.run(
        ["gpgconf", "--kill", "all"],
        env={**os.environ, "GNUPGHOME": str(home)},
        check=False,
        capture_output=True,
    )


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_key_fingerprint_gpg(catalog: Catalog, name: str, gnupg_home: Path) -> None:
    home = gnupg_home
    path = referenced_keys(catalog)[name]
    records = [line.split(":") for line in gpg(home, "--show-keys", str(path)).splitlines()]
    assert [r[0] for r in records].count("pub") == 1, "exactly one primary key"
    assert not any(r[0] == "sec" for r in records)
    pub = next(i for i, r in enumerate(records) if r[0] == "pub")
    fpr = next(r[9] for r in records[pub:] if r[0] == "fpr")
    assert fpr == OFFICIAL[name]
    # The self-signatures verify: the user ID and subkeys are the distribution's too.
    gpg(home, "--import", str(path))
    sigs = [line.split(":") for line in gpg(home, "--check-sigs", fpr).splitlines()]
    sigs = [s for s in sigs if s[0] == "sig"]
    assert sigs
    assert all(s[1] == "!" for s in sigs), sigs
    assert any(s[4] == fpr[-16:] for s in sigs)


def test_missing_packages_are_found_in_apt_and_dnf_output() -> None:
    from vzpkg.distro.base import missing_packages

    lines = [
        "I: installing remaining packages inside the chroot...",
        "E: Unable to locate package no-such-pkg",
        "E: Package 'gone' has no installation candidate",
        "E: Couldn't find any package by glob 'x*'",
        "No match for argument: nopkg",
        "E: Unable to locate package no-such-pkg",
    ]
    assert missing_packages(lines) == ["no-such-pkg", "gone", "x*", "nopkg"]
    assert missing_packages(["E: Release file is expired"]) == []
