"""rpm-family caches for real: host dnf --installroot against the signed fixture distribution
(tests/rpmfixture.py) served on loopback, exactly as against an official mirror."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from tests.integration.conftest import BIN, VzHost, rpm_fixture_host, stop_everything
from tests.rpmfixture import (
    FixtureRepo,
    PackageSpec,
    RepoServer,
    build_fixture_repo,
    build_rpm,
    refresh_repodata,
    release_spec,
    sign_packages,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

NAME = "vzfix-1-x86_64-minimal"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def member_names(archive: Path) -> set[str]:
    with archive.open("rb") as raw:
        stream = zstandard.ZstdDecompressor().stream_reader(raw)
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            return {m.name for m in tar}


@pytest.fixture(scope="module")
def rpmhost(
    tmp_path_factory: pytest.TempPathFactory, fixture_repo: FixtureRepo, server: RepoServer
) -> Iterator[VzHost]:
    base = tmp_path_factory.mktemp("rpmhost")
    host = rpm_fixture_host(base, fixture_repo.key_file, server.url)
    yield host
    stop_everything(host)
    shutil.rmtree(base, ignore_errors=True)


def variant_repo(fixture_repo: FixtureRepo, where: Path) -> Path:
    """A copy of the fixture repository to break in one way."""
    path = where / "repo"
    shutil.copytree(fixture_repo.path, path)
    return path


def newer_release(version: str = "1", release: str = "9") -> PackageSpec:
    return replace(release_spec(), version=version, release=release)


def build_with_mirror(host: VzHost, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "vzpkgcache"), "-f", "--mirror", f"vzfix={url}", NAME],
        env=host.env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def test_build_fixture_cache_with_dnf(
    rpmhost: VzHost, fixture_repo: FixtureRepo, server: RepoServer
) -> None:
    result = rpmhost.build(NAME)
    assert result["returncode"] == 0, result["stderr"]
    manifest = rpmhost.manifest(NAME)
    assert manifest["family"] == "rpm"
    assert manifest["build"]["tool"] == "dnf"
    listed = {p["name"]: p["version"] for p in manifest["packages"]}
    expected = {n: evr for n, evr in fixture_repo.packages.items() if n != "vzfix-extra"}
    assert listed == expected
    assert all(p["arch"] in ("x86_64", "noarch") for p in manifest["packages"])
    upstream = manifest["upstream"][0]
    assert upstream["url"] == f"{server.url}/repodata/repomd.xml"
    assert upstream["sha256"] == sha256(fixture_repo.path / "repodata" / "repomd.xml")
    names = member_names(rpmhost.archive(NAME))
    assert "./usr/bin/busybox" in names
    assert "./var/lib/rpm/rpmdb.sqlite" in names  # where the root's own rpm looks
    assert not [n for n in names if n.startswith("./root/.rpmdb")]
    assert not [n for n in names if n.startswith("./var/cache/dnf/") and n != "./var/cache/dnf"]
    assert not [n for n in names if "/dev/" in n and n != "./dev"]
    assert rpmhost.leftovers() == []


def test_default_set_adds_packages(rpmhost: VzHost, fixture_repo: FixtureRepo) -> None:
    result = rpmhost.build("vzfix-1-x86_64-default")
    assert result["returncode"] == 0, result["stderr"]
    listed = {
        p["name"]: p["version"] for p in rpmhost.manifest("vzfix-1-x86_64-default")["packages"]
    }
    assert listed["vzfix-extra"] == fixture_repo.packages["vzfix-extra"]


def test_rebuild_downloads_no_package_twice(rpmhost: VzHost, server: RepoServer) -> None:
    result = rpmhost.build("-f", NAME)
    assert result["returncode"] == 0, result["stderr"]
    rpms = [p for p in server.access_log if p.endswith(".rpm")]
    assert rpms, "no package was downloaded at all"
    assert len(rpms) == len(set(rpms)), f"downloaded twice: {sorted(rpms)}"
    assert (rpmhost.cache_dir / f"{NAME}-old.tar.zst").exists()


def test_unchanged_repository_is_up_to_date(rpmhost: VzHost) -> None:
    result = rpmhost.build(NAME)
    assert result["returncode"] == 0
    assert result["status"] == "up-to-date"


def _assert_untouched(host: VzHost, before: str) -> None:
    assert sha256(host.archive(NAME)) == before
    assert host.manifest(NAME)["archive"]["sha256"] == before
    assert host.leftovers() == []


def test_unsigned_package_fails(rpmhost: VzHost, fixture_repo: FixtureRepo, tmp_path: Path) -> None:
    before = sha256(rpmhost.archive(NAME))
    path = variant_repo(fixture_repo, tmp_path)
    build_rpm(newer_release(), path, "x86_64")  # newer, so dnf picks it; not signed
    refresh_repodata(path, fixture_repo.gnupg_home)
    with RepoServer(path) as srv:
        proc = build_with_mirror(rpmhost, srv.url)
    assert proc.returncode == 202, proc.stderr
    assert "a package is not signed" in proc.stderr
    _assert_untouched(rpmhost, before)


def test_package_signed_by_unknown_key_fails(
    rpmhost: VzHost, fixture_repo: FixtureRepo, tmp_path: Path
) -> None:
    before = sha256(rpmhost.archive(NAME))
    other = build_fixture_repo(tmp_path / "other", extra_specs=())  # its own throwaway key
    rpm = build_rpm(newer_release(), tmp_path, "x86_64")
    sign_packages(other, [rpm])
    path = variant_repo(fixture_repo, tmp_path / "variant")
    shutil.copy(rpm, path)
    refresh_repodata(path, fixture_repo.gnupg_home)
    with RepoServer(path) as srv:
        proc = build_with_mirror(rpmhost, srv.url)
    assert proc.returncode == 202, proc.stderr
    assert "signed by a key that is not among the template's keys" in proc.stderr
    _assert_untouched(rpmhost, before)


def test_tampered_repository_metadata_fails(
    rpmhost: VzHost, fixture_repo: FixtureRepo, tmp_path: Path
) -> None:
    before = sha256(rpmhost.archive(NAME))
    path = variant_repo(fixture_repo, tmp_path)
    repomd = path / "repodata" / "repomd.xml"
    # Change the metadata after it was signed: the detached signature no longer matches.
    repomd.write_text(repomd.read_text().replace("<revision>", "<revision>1"))
    with RepoServer(path) as srv:
        proc = build_with_mirror(rpmhost, srv.url)
    assert proc.returncode == 202, proc.stderr
    assert "repository metadata signature does not verify" in proc.stderr
    _assert_untouched(rpmhost, before)


def test_unreachable_repository_fails(rpmhost: VzHost) -> None:
    before = sha256(rpmhost.archive(NAME))
    proc = build_with_mirror(rpmhost, "http://127.0.0.1:9")
    assert proc.returncode == 206, proc.stderr
    assert "cannot reach http://127.0.0.1:9/repodata/repomd.xml" in proc.stderr
    _assert_untouched(rpmhost, before)


def test_vzpkgls_treats_rpm_templates_like_debian_ones(rpmhost: VzHost) -> None:
    proc = rpmhost.run("vzpkgls", "-c")
    assert proc.returncode == 0
    assert NAME in proc.stdout.split()
    proc = rpmhost.run("vzpkgls", "--json")
    assert '"family": "rpm"' in proc.stdout


def test_vps_from_the_rpm_fixture_cache(rpmhost: VzHost) -> None:
    """The slides' session on an rpm-family cache: busybox userland, tini as init."""
    assert rpmhost.build(NAME)["returncode"] == 0
    for args in (
        ("create", "201", "--ostemplate", "vzfix-1", "--hostname", "rpmct"),
        ("start", "201"),
    ):
        proc = rpmhost.run("vzctl", *args)
        assert proc.returncode == 0, proc.stderr
    try:
        ps = rpmhost.run("vzctl", "exec", "201", "ps")
        assert ps.returncode == 0, ps.stderr
        assert "tini" in ps.stdout.splitlines()[1]
        assert rpmhost.run("vzctl", "exec", "201", "hostname").stdout.strip() == "rpmct"
        release = rpmhost.run("vzctl", "exec", "201", "cat /etc/os-release").stdout
        assert "ID=vzfix" in release
        # Packages: listed from its rpm database; not installed, and the refusal says why.
        listed = rpmhost.run("vzpkgls", "201").stdout.split()
        assert "busybox" in listed and "vzfix-extra" not in listed
        proc = rpmhost.run("vzpkg", "install", "201", "vzfix-extra")
        assert proc.returncode == 70 and "there is no rpm in it" in proc.stderr, proc.stderr
        assert "vzfix-extra" not in rpmhost.run("vzpkgls", "201").stdout.split()
        proc = rpmhost.run("vzctl", "stop", "201")
        assert proc.returncode == 0, proc.stderr
    finally:
        rpmhost.run("vzctl", "stop", "--fast", "201")
        assert rpmhost.run("vzctl", "destroy", "201").returncode == 0
