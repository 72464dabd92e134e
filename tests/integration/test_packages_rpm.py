"""Packages in running rpm-family VPSs (issue 12): vzpkg install|update|remove in a VPS of the
signed fixture distribution whose set has an rpm of its own (tests/rpmfixture.py's vzfix-rpm:
the host's rpm, its libraries and loader). The host's dnf resolves against a database of its
own and fetches, with the template's key, into the shared cache; the VPS's rpm installs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import VzHost, rpm_fixture_host, stop_everything
from tests.rpmfixture import (
    FixtureRepo,
    PackageSpec,
    RepoServer,
    build_fixture_repo,
    build_rpm,
    refresh_repodata,
    rpm_spec,
    sign_packages,
    text_file,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

NAME = "vzfix-1-x86_64-withrpm"
EXTRA_POST = "mkdir -p /var/lib/vzfix-extra\necho installed > /var/lib/vzfix-extra/post-ran\n"


@pytest.fixture(scope="module")
def fixture_repo(tmp_path_factory: pytest.TempPathFactory) -> FixtureRepo:
    return build_fixture_repo(tmp_path_factory.mktemp("rpmfixture-pkg"), extra_specs=(rpm_spec(),))


@pytest.fixture(scope="module")
def rpmhost(
    tmp_path_factory: pytest.TempPathFactory, fixture_repo: FixtureRepo
) -> Iterator[VzHost]:
    base = tmp_path_factory.mktemp("rpmpkghost")
    withrpm = 'summary = "with an rpm of its own"\nbase = "minimal"\npackages = ["vzfix-rpm"]\n'
    with RepoServer(fixture_repo.path) as server:
        host = rpm_fixture_host(base, fixture_repo.key_file, server.url, {"withrpm": withrpm})
        assert host.build(NAME)["returncode"] == 0
        yield host
        stop_everything(host)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def ct(rpmhost: VzHost) -> Iterator[str]:
    ctid = "401"
    for args in (("create", ctid, "--ostemplate", NAME), ("start", ctid)):
        proc = rpmhost.run("vzctl", *args)
        assert proc.returncode == 0, proc.stderr
    yield ctid
    rpmhost.run("vzctl", "stop", "--fast", ctid)
    rpmhost.run("vzctl", "destroy", ctid)


def pkg(host: VzHost, *args: str, code: int = 0) -> dict[str, Any]:
    proc = host.run("vzpkg", *args, "--json")
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def inside(host: VzHost, ctid: str, command: str) -> str:
    proc = host.run("vzctl", "exec2", ctid, command)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def publish(repo: FixtureRepo, spec: PackageSpec, *, sign: bool = True) -> None:
    """Add a package to the fixture distribution, as a mirror publishes an update."""
    built = build_rpm(spec, repo.path, "x86_64")
    if sign:
        sign_packages(repo, [built])
    refresh_repodata(repo.path, repo.gnupg_home)


def test_install_update_remove_in_an_rpm_vps(
    rpmhost: VzHost, ct: str, fixture_repo: FixtureRepo
) -> None:
    rpmdb = "sha256sum /var/lib/rpm/rpmdb.sqlite"
    before = inside(rpmhost, ct, rpmdb)
    check = pkg(rpmhost, "install", "-n", ct, "vzfix-extra")
    assert check["check_only"] and [e["name"] for e in check["installed"]] == ["vzfix-extra"]
    assert inside(rpmhost, ct, rpmdb) == before
    done = pkg(rpmhost, "install", ct, "vzfix-extra")
    assert done["installed"] == [{"name": "vzfix-extra", "arch": "noarch", "version": "2:0.5-3"}]
    assert done["fetched"] == 1
    assert inside(rpmhost, ct, "cat /var/lib/vzfix-extra/post-ran") == "installed\n"  # %post ran
    assert "vzfix-extra 2:0.5-3 noarch" in rpmhost.run("vzpkgls", ct).stdout.splitlines()
    # The mirror publishes an update; vzpkg update brings it.
    publish(fixture_repo, PackageSpec("vzfix-extra", "0.6", "1", epoch=2, requires=("setup",),
            files={"/usr/share/vzfix-extra/README": text_file("extra 0.6\n")},
            post=EXTRA_POST))  # fmt: skip
    done = pkg(rpmhost, "update", ct)
    assert done["upgraded"] == [
        {"name": "vzfix-extra", "arch": "noarch", "from": "2:0.5-3", "to": "2:0.6-1"}
    ]
    assert inside(rpmhost, ct, "cat /usr/share/vzfix-extra/README") == "extra 0.6\n"
    done = pkg(rpmhost, "remove", ct, "vzfix-extra")
    assert [e["name"] for e in done["removed"]] == ["vzfix-extra"]
    assert "vzfix-extra" not in rpmhost.run("vzpkgls", ct).stdout
    # OpenVZ's vzyum: yum's (dnf's) command words.
    proc = rpmhost.run("vzyum", ct, "install", "vzfix-extra")
    assert proc.returncode == 0 and "1 installed" in proc.stdout, proc.stderr
    proc = rpmhost.run("vzyum", ct, "erase", "vzfix-extra")
    assert proc.returncode == 0 and "1 removed" in proc.stdout, proc.stderr
    # What is not there: dnf's own word, exit 70.
    error = pkg(rpmhost, "install", ct, "no-such-package", code=70)
    assert "no-such-package" in error["error"]


def test_an_unsigned_package_is_refused(
    rpmhost: VzHost, ct: str, fixture_repo: FixtureRepo
) -> None:
    publish(fixture_repo, PackageSpec("vzfix-unsigned", "1", "1",
            files={"/usr/share/vzfix-unsigned": text_file("x\n")}), sign=False)  # fmt: skip
    error = pkg(rpmhost, "install", ct, "vzfix-unsigned", code=202)
    assert "not signed" in error["error"] or "signature" in error["error"]
    assert "vzfix-unsigned" not in rpmhost.run("vzpkgls", ct).stdout
    assert not list(rpmhost.pkgcache_dir.rglob("vzfix-unsigned*.rpm.*"))


def test_the_second_vps_fetches_nothing(rpmhost: VzHost, ct: str) -> None:
    second = "402"
    for args in (("create", second, "--ostemplate", NAME), ("start", second)):
        assert rpmhost.run("vzctl", *args).returncode == 0
    try:
        first = pkg(rpmhost, "install", ct, "vzfix-extra")
        assert [e["name"] for e in first["installed"]] == ["vzfix-extra"]
        again = pkg(rpmhost, "install", second, "vzfix-extra")
        assert again["fetched"] == 0 and again["installed"] == first["installed"]
    finally:
        rpmhost.run("vzctl", "stop", "--fast", second)
        rpmhost.run("vzctl", "destroy", second)


def test_a_hostile_rpm_inside_changes_nothing_on_the_host(rpmhost: VzHost, ct: str) -> None:
    hostile = (
        "#!/bin/sh\nfor f in /run/vzpkg/pool/*; do echo evil >> $f; done\n"
        "touch /run/vzpkg/pool/MARK; touch /MARK-INSIDE; exit 3\n"
    )
    inside(rpmhost, ct, f"cat > /usr/bin/rpm <<'EOF'\n{hostile}EOF\nchmod 755 /usr/bin/rpm")
    pool = rpmhost.pkgcache_dir / "vzfix-1-x86_64"
    files = {p: p.read_bytes() for p in pool.rglob("*.rpm")}
    error = pkg(rpmhost, "install", ct, "vzfix-extra", code=70)
    assert "rpm in CT" in error["error"] and "(exit 3)" in error["error"]
    assert {p: p.read_bytes() for p in pool.rglob("*.rpm")} == files
    assert not list(rpmhost.pkgcache_dir.rglob("MARK"))
    assert inside(rpmhost, ct, "ls /MARK-INSIDE").strip() == "/MARK-INSIDE"
