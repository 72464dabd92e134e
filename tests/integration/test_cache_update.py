"""Caches updated in place (issue 13), against the signed rpm fixture distribution served on
loopback: the fixture publishes an update, vzpkgcache upgrades the previous cache instead of
bootstrapping; sets added to and dropped from; a set made from its base set's cache."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import VzHost, rpm_fixture_host, stop_everything
from tests.rpmfixture import (
    FixtureRepo,
    PackageSpec,
    RepoServer,
    build_rpm,
    refresh_repodata,
    release_spec,
    sign_packages,
    text_file,
)
from vzpkg import lock

pytestmark = [pytest.mark.root, pytest.mark.slow]

NAME = "vzfix-1-x86_64-minimal"
HOOKED = "vzfix-1-x86_64-hooked"
# A post-install hook that fails once the root has /etc/vzfix-break (a package the test
# publishes brings it): the update of an otherwise good cache fails in its hooks.
HOOK = '[ ! -e /etc/vzfix-break ] || { echo "vzfix-break is installed" >&2; exit 1; }\n'


@pytest.fixture(scope="module")
def host(
    tmp_path_factory: pytest.TempPathFactory, fixture_repo: FixtureRepo, server: RepoServer
) -> Iterator[VzHost]:
    base = tmp_path_factory.mktemp("updatehost")
    hooked = 'summary = "hooked"\nbase = "minimal"\npackages = []\n'
    host = rpm_fixture_host(base, fixture_repo.key_file, server.url, {"hooked": hooked})
    hook = host.metadata_dir / "vzfix" / "sets" / "hooks" / "post-install"
    hook.parent.mkdir(parents=True)
    hook.write_text(HOOK)
    with (host.metadata_dir / "vzfix" / "sets" / "hooked.toml").open("a") as f:
        f.write('[hooks]\npost-install = ["hooks/post-install"]\n')
    yield host
    stop_everything(host)
    shutil.rmtree(base, ignore_errors=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish(fixture_repo: FixtureRepo, *specs: PackageSpec) -> None:
    """The fixture's mirror publishes ``specs`` (signed), as a distribution's update does."""
    rpms = [build_rpm(spec, fixture_repo.path, "x86_64") for spec in specs]
    sign_packages(fixture_repo, rpms)
    refresh_repodata(fixture_repo.path, fixture_repo.gnupg_home)


def versions(manifest: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["version"] for p in manifest["packages"]}


def set_packages(host: VzHost, name: str, packages: list[str]) -> None:
    path = host.metadata_dir / "vzfix" / "sets" / f"{name}.toml"
    lines = [
        line if not line.startswith("packages") else f"packages = {packages!r}".replace("'", '"')
        for line in path.read_text().splitlines()
    ]
    path.write_text("\n".join(lines) + "\n")


def test_an_upstream_update_is_applied_in_place(
    host: VzHost, fixture_repo: FixtureRepo, server: RepoServer
) -> None:
    first = host.build(NAME)
    assert first["returncode"] == 0, first["stderr"]
    assert (first["status"], first["path"]) == ("built", "bootstrap")
    before = host.manifest(NAME)
    old_sha = sha256(host.archive(NAME))
    downloads = len(server.access_log)

    publish(fixture_repo, replace(release_spec(), version="1", release="7"))
    result = host.build(NAME)

    assert result["returncode"] == 0, result["stderr"]
    assert (result["status"], result["path"]) == ("updated", "update")
    assert "upstream changed" in result["reason"]
    assert "bootstrapping" not in result["stderr"]
    manifest = host.manifest(NAME)
    assert manifest["build"]["path"] == "update"
    assert manifest["build"]["from"] == f"{NAME} {old_sha}"
    assert manifest["changes"] == [
        {"name": "vzfix-release", "arch": "noarch", "from": "0:1-1", "to": "0:1-7"}
    ]
    assert result["changes"] == manifest["changes"]
    assert versions(manifest) == {**versions(before), "vzfix-release": "0:1-7"}
    assert manifest["upstream"] != before["upstream"]
    # The previous cache is kept; only the new package was downloaded.
    assert sha256(host.cache_dir / f"{NAME}-old.tar.zst") == old_sha
    fetched = [p for p in server.access_log[downloads:] if p.endswith(".rpm")]
    assert fetched == ["/vzfix-release-1-7.noarch.rpm"]
    assert host.leftovers() == []
    # And once current, it is up to date.
    assert host.build(NAME)["status"] == "up-to-date"


def test_packages_added_and_dropped_update_the_set(host: VzHost) -> None:
    set_packages(host, "minimal", ["vzfix-minimal", "vzfix-extra"])
    added = host.build(NAME)
    assert added["returncode"] == 0, added["stderr"]
    assert (added["status"], added["path"]) == ("updated", "update")
    assert "1 package(s) added to the set" in added["reason"]
    assert "vzfix-extra" in versions(host.manifest(NAME))

    set_packages(host, "minimal", ["vzfix-minimal"])
    dropped = host.build(NAME)
    assert dropped["returncode"] == 0, dropped["stderr"]
    assert dropped["path"] == "update"
    assert "vzfix-extra" not in versions(host.manifest(NAME))
    assert [c["name"] for c in dropped["changes"]] == ["vzfix-extra"]


def test_a_set_is_made_from_its_base_sets_cache_with_the_same_packages(host: VzHost) -> None:
    assert host.build(NAME)["status"] == "up-to-date"
    made = host.build("vzfix-1-x86_64-default")
    assert made["returncode"] == 0, made["stderr"]
    assert (made["status"], made["path"]) == ("built", "parent")
    assert "made from the cache of vzfix-1-x86_64-minimal" in made["reason"]
    from_parent = versions(host.manifest("vzfix-1-x86_64-default"))

    clean = host.build("-f", "vzfix-1-x86_64-default")
    assert clean["returncode"] == 0, clean["stderr"]
    assert clean["path"] == "bootstrap"
    assert versions(host.manifest("vzfix-1-x86_64-default")) == from_parent


def test_a_failing_hook_keeps_the_previous_cache(host: VzHost, fixture_repo: FixtureRepo) -> None:
    good = host.build(HOOKED)
    assert good["returncode"] == 0, good["stderr"]
    before = sha256(host.archive(HOOKED))

    breaker = PackageSpec("vzfix-break", files={"/etc/vzfix-break": text_file("x\n")})
    publish(fixture_repo, breaker)
    set_packages(host, "hooked", ["vzfix-break"])
    failed = host.build(HOOKED)

    assert failed["returncode"] != 0
    assert failed["status"] == "failed"
    assert "vzfix-break is installed" in failed["stderr"], failed["stderr"]
    assert sha256(host.archive(HOOKED)) == before
    assert host.manifest(HOOKED)["archive"]["sha256"] == before
    assert host.leftovers() == []


def test_a_changed_base_is_rebuilt_and_says_why(host: VzHost) -> None:
    release = host.metadata_dir / "vzfix" / "releases" / "1.toml"
    text = release.read_text()
    release.write_text(text + '\n[environment]\nVZFIX_TEST = "1"\n')
    try:
        result = host.build(NAME)
    finally:
        release.write_text(text)
    assert result["returncode"] == 0, result["stderr"]
    assert (result["status"], result["path"]) == ("rebuilt", "bootstrap")
    assert "an update cannot express" in result["reason"]


def test_the_nightly_run_reports_each_template_and_survives_a_failure(
    host: VzHost, server: RepoServer
) -> None:
    """hooked fails (test_a_failing_hook_keeps_the_previous_cache left it so): the others are
    still made current, its published cache is untouched, the exit code is its failure's."""
    before = sha256(host.archive(HOOKED))
    proc = host.run("vzpkgcache", "--all", "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 204, proc.stderr  # the hook's code: the one failure
    results = {r["template"]: r for r in report["results"]}
    assert set(results) == {NAME, HOOKED, "vzfix-1-x86_64-default"}
    assert report["results"][0]["template"] == NAME  # base sets first
    assert results[HOOKED]["status"] == "failed"
    assert "vzfix-break is installed" in results[HOOKED]["message"]
    assert results[NAME]["status"] in ("up-to-date", "updated", "rebuilt")
    assert report["summary"]["failed"] == 1
    assert sum(report["summary"].values()) == 3
    assert all(isinstance(r["seconds"], float) for r in report["results"])
    assert sha256(host.archive(HOOKED)) == before
    # Two sets of one repository, both current: its state is asked for once in the run.
    asked = len(server.access_log)
    both = host.run("vzpkgcache", NAME, "vzfix-1-x86_64-default")
    assert both.returncode == 0, both.stderr
    assert both.stdout.splitlines()[-1] == "2 up-to-date"
    assert server.access_log[asked:] == ["/repodata/repomd.xml"]
    # Run again: what succeeded is now up to date.
    again = json.loads(host.run("vzpkgcache", "--all", "--json").stdout)
    assert {r["template"]: r["status"] for r in again["results"]}[NAME] == "up-to-date"


def test_a_second_nightly_run_is_refused_while_one_runs(host: VzHost) -> None:
    with lock.locked(host.lock_dir, "vzpkgcache-all"):
        proc = host.run("vzpkgcache", "--all")
    assert proc.returncode == 9, proc.stderr
    assert "vzpkgcache --all" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dated_copies_are_kept_as_configured(host: VzHost) -> None:
    env = {**host.env, "VZPKG_CACHE_KEEP_DATED": "2"}
    for _ in range(3):
        proc = host.run("vzpkgcache", "-f", NAME, env=env)
        assert proc.returncode == 0, proc.stderr
        time.sleep(1.1)  # dated by the second
    dated = sorted((host.cache_dir / "dated" / NAME).glob("*.tar.zst"))
    assert len(dated) == 2
    assert dated[-1].stat().st_ino == host.archive(NAME).stat().st_ino  # a link, not a copy
    assert (host.cache_dir / "dated" / NAME / dated[0].name.replace(".tar.zst", ".json")).is_file()
    proc = host.run("vzpkgcache", "-r", NAME)
    assert proc.returncode == 0, proc.stderr
    assert not (host.cache_dir / "dated" / NAME).exists()
