"""dnf configuration and queries as data; the shipped rpm metadata renders correct repositories."""

from __future__ import annotations

from pathlib import Path

import pytest

from vzpkg.distro.rpm import Rpm, diagnose
from vzpkg.errors import ExitCode
from vzpkg.hostconf import host_config_from
from vzpkg.metadata.loader import load_catalog
from vzpkg.pkgmgr import dnf

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def families() -> dict[str, Rpm]:
    catalog = load_catalog(REPO / "metadata")
    host = host_config_from({}, "test")
    return {name: Rpm(t, host) for name, t in catalog.templates.items() if t.family == "rpm"}


def test_shipped_rpm_templates_render_their_official_repositories(
    families: dict[str, Rpm],
) -> None:
    alma = families["almalinux-9-x86_64-minimal"].dnf_repos()
    assert [r.id for r in alma] == ["baseos", "appstream", "extras"]
    assert alma[0].mirrorlist == "https://mirrors.almalinux.org/mirrorlist/9/baseos"
    rocky = families["rocky-9-aarch64-default"].dnf_repos()
    assert rocky[0].mirrorlist is not None and "arch=aarch64" in rocky[0].mirrorlist
    assert "repo=BaseOS-9" in rocky[0].mirrorlist
    fedora = families["fedora-45-x86_64-minimal"].dnf_repos()
    assert [r.id for r in fedora] == ["fedora", "updates"]
    assert fedora[0].metalink is not None
    assert "repo=fedora-45&arch=x86_64" in fedora[0].metalink
    for family in families.values():
        for repo in family.dnf_repos():
            assert repo.gpgkeys, f"{family.template.name}: {repo.id} has no key"
            text = dnf.render_repo(repo)
            assert "gpgcheck=1" in text and "skip_if_unavailable=0" in text
            assert "$releasever" not in text and "$basearch" not in text
            for key in repo.gpgkeys:
                assert key.is_absolute() and key.is_file()
                assert f"file://{key}" in text
                assert str(key).startswith(str(REPO / "metadata"))


def test_dnf_conf_and_argv_keep_everything_on_the_host(tmp_path: Path) -> None:
    conf = dnf.render_dnf_conf(exclude=("kernel", "grub2*"))
    assert "gpgcheck=1" in conf and "plugins=0" in conf
    assert "excludepkgs=kernel,grub2*" in conf
    argv = dnf.dnf_install_argv(
        root=tmp_path / "root",
        config=tmp_path / "dnf.conf",
        reposdir=tmp_path / "r",
        varsdir=tmp_path / "v",
        cachedir=tmp_path / "c",
        logdir=tmp_path / "l",
        persistdir=tmp_path / "p",
        releasever="9",
        arch="x86_64",
        packages=["bash", "rpm"],
        host_arch="x86_64",
    )
    assert argv[:2] == ["dnf", "-y"]
    assert f"--installroot={tmp_path / 'root'}" in argv
    for key, sub in (("reposdir", "r"), ("varsdir", "v"), ("cachedir", "c")):
        assert f"--setopt={key}={tmp_path / sub}" in argv
    assert "--forcearch=x86_64" not in argv
    assert argv[-4:] == ["install", "--", "bash", "rpm"]  # a package named -x is no option
    other = dnf.dnf_install_argv(
        root=tmp_path,
        config=tmp_path,
        reposdir=tmp_path,
        varsdir=tmp_path,
        cachedir=tmp_path,
        logdir=tmp_path,
        persistdir=tmp_path,
        releasever="9",
        arch="aarch64",
        packages=["x"],
        host_arch="x86_64",
    )
    assert "--forcearch=aarch64" in other


def test_rpm_query_parsing_skips_key_pseudo_packages() -> None:
    text = (
        "bash\t0:5.1.8-9.el9\tx86_64\n"
        "gpg-pubkey\t0:b86b3716-61e69f29\t(none)\n"
        "vzfix-extra\t2:1.0-1\tnoarch\n"
    )
    assert dnf.parse_rpm_query(text) == [
        ("bash", "0:5.1.8-9.el9", "x86_64"),
        ("vzfix-extra", "2:1.0-1", "noarch"),
    ]


def test_repomd_and_metalink_fingerprints() -> None:
    repomd = b"""<?xml version="1.0"?>
<repomd xmlns="http://linux.duke.edu/metadata/repo">
  <revision>1764000000</revision>
  <data type="primary"><timestamp>1764000100</timestamp></data>
  <data type="filelists"><timestamp>1764000200</timestamp></data>
</repomd>"""
    assert dnf.repomd_revision(repomd) == ("1764000000", 1764000200)
    assert dnf.repomd_revision(b"not xml") == (None, None)
    metalink = b"""<?xml version="1.0"?>
<metalink xmlns="http://www.metalinker.org/" xmlns:mm0="http://fedorahosted.org/mirror/">
 <files><file name="repomd.xml"><mm0:timestamp>1764000300</mm0:timestamp>
  <verification><hash type="md5">x</hash><hash type="sha256">abc123</hash></verification>
 </file></files></metalink>"""
    assert dnf.metalink_repomd(metalink) == ("abc123", 1764000300)
    assert (
        dnf.first_mirror(b"# comment\n\nhttps://m1.example/9/baseos/x86_64/os/\nhttps://m2\n")
        == "https://m1.example/9/baseos/x86_64/os"
    )


@pytest.mark.parametrize(
    ("output", "code", "what"),
    [
        ("Package foo-1.0-1.noarch.rpm is not signed", ExitCode.SIGNATURE, "not signed"),
        (
            "Public key for foo-1.0-1.noarch.rpm is not installed",
            ExitCode.SIGNATURE,
            "not among the template's keys",
        ),
        (
            "repomd.xml GPG signature verification error: Bad GPG signature",
            ExitCode.SIGNATURE,
            "metadata signature",
        ),
        ("Curl error (7): Couldn't connect to server", ExitCode.UPSTREAM, "could not be reached"),
        ("No match for argument: nosuchpkg", ExitCode.BOOTSTRAP, "not in its repositories"),
    ],
)
def test_dnf_failures_are_told_apart(output: str, code: ExitCode, what: str) -> None:
    found = diagnose(["Last metadata expiration check: 0:00:01 ago", output])
    assert found is not None
    assert found[0] == code
    assert what in found[1]
    assert diagnose(["Complete!"]) is None
