"""The template index (issue 13): an operator's host publishes its caches with a signed index,
a loopback HTTP server serves them, a second host fetches them (vzpkgcache fetch, vzctl create
of a missing cache, vzpkgls --remote); each way the index or a download can be wrong is
refused with nothing left in the second host's cache directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.httpserve import FileServer
from tests.integration.conftest import VzHost, rpm_fixture_host, stop_everything
from tests.rpmfixture import (
    FixtureRepo,
    RepoServer,
    build_rpm,
    generate_key,
    gnupg_session,
    refresh_repodata,
    release_spec,
    sign_packages,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

NAME = "vzfix-1-x86_64-minimal"
DEFAULT = "vzfix-1-x86_64-default"


@pytest.fixture(scope="module")
def operator(
    tmp_path_factory: pytest.TempPathFactory, fixture_repo: FixtureRepo, server: RepoServer
) -> Iterator[VzHost]:
    """The mirror operator's host: builds the caches, signs the index with the fixture's key."""
    base = tmp_path_factory.mktemp("operator")
    host = rpm_fixture_host(base, fixture_repo.key_file, server.url)
    with gnupg_session(fixture_repo.gnupg_home) as home:
        with host.conf.open("a") as f:
            f.write(f'INDEX_SIGNING_KEY="{fixture_repo.key_id}"\nINDEX_GNUPGHOME="{home}"\n')
        for name in (NAME, DEFAULT):
            assert host.build(name)["returncode"] == 0
        yield host
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def published(operator: VzHost) -> Path:
    proc = operator.run("vzpkgcache", "publish", str(operator.base / "pub"), "--json")
    assert proc.returncode == 0, proc.stderr
    return operator.base / "pub"


@pytest.fixture(scope="module")
def index_server(published: Path) -> Iterator[FileServer]:
    with FileServer(published) as srv:
        yield srv


@pytest.fixture
def fleet(
    tmp_path: Path, fixture_repo: FixtureRepo, server: RepoServer, index_server: FileServer
) -> Iterator[VzHost]:
    """A host of the fleet: the same metadata, no cache, the operator's index and key."""
    (tmp_path / "fleet").mkdir()
    host = rpm_fixture_host(tmp_path / "fleet", fixture_repo.key_file, server.url)
    with host.conf.open("a") as f:
        f.write(f'TEMPLATE_INDEX="{index_server.url}"\n')
        f.write(f'TEMPLATE_INDEX_KEYS="{fixture_repo.key_file}"\n')
    yield host
    stop_everything(host)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(host: VzHost, *names: str, env: dict[str, str] | None = None) -> tuple[int, Any, str]:
    proc = host.run("vzpkgcache", "fetch", *names, "--json", env=env)
    assert "Traceback" not in proc.stderr
    return proc.returncode, json.loads(proc.stdout) if proc.stdout else None, proc.stderr


def nothing_left(host: VzHost, name: str) -> None:
    assert not host.archive(name).exists()
    assert not (host.cache_dir / f"{name}.json").exists()
    assert host.leftovers() == []


def variant(published: Path, where: Path) -> Path:
    path = where / "variant"
    shutil.copytree(published, path)
    return path


def sign_index(directory: Path, gnupg_home: Path, key: str) -> None:
    """A new detached signature of ``directory``'s index.json, by ``key``."""
    (directory / "index.json.asc").unlink(missing_ok=True)
    index, signature = directory / "index.json", directory / "index.json.asc"
    with gnupg_session(gnupg_home) as home:
        gpg = ["gpg", "--homedir", str(home), "--batch", "--armor", "--local-user", key]
        sign = [*gpg, "--detach-sign", "--output", str(signature), str(index)]
        subprocess.run(sign, check=True, capture_output=True)


def fetch_from(host: VzHost, directory: Path, **server: Any) -> tuple[int, Any, str]:
    """vzpkgcache fetch NAME on ``host``, the index being ``directory`` served on loopback."""
    with FileServer(directory, **server) as srv:
        return fetch(host, NAME, env=with_index(host, srv.url))


def with_index(host: VzHost, url: str) -> dict[str, str]:
    return {**host.env, "VZPKG_TEMPLATE_INDEX": url}


def test_publish_writes_a_signed_index_of_the_caches(operator: VzHost, published: Path) -> None:
    index = json.loads((published / "index.json").read_text())
    entries = {t["template"]: t for t in index["templates"]}
    assert set(entries) == {NAME, DEFAULT}
    entry = entries[NAME]
    manifest = operator.manifest(NAME)
    assert entry["sha256"] == manifest["archive"]["sha256"] == sha256(operator.archive(NAME))
    assert entry["size"] == manifest["archive"]["size"]
    assert entry["file"] == f"{NAME}-{entry['sha256'][:16]}.tar.zst"
    assert sha256(published / entry["file"]) == entry["sha256"]
    assert sha256(published / entry["manifest"]) == entry["manifest_sha256"]
    assert entry["upstream"][0]["sha256"] == manifest["upstream"][0]["sha256"]
    assert entry["created"] == manifest["created"]
    # A detached signature any gpgv checks with the operator's public key.
    keyring = published.parent / "keyring.gpg"
    key = (operator.metadata_dir / "vzfix" / "keys" / "RPM-GPG-KEY-vzpkgtest").read_bytes()
    keyring.write_bytes(subprocess.run(["gpg", "--dearmor"], input=key, capture_output=True,
                                       check=True).stdout)  # fmt: skip
    proc = subprocess.run(["gpgv", "--keyring", str(keyring), str(published / "index.json.asc"),
                           str(published / "index.json")], capture_output=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_fetch_publishes_the_operators_cache(operator: VzHost, fleet: VzHost) -> None:
    code, data, err = fetch(fleet, NAME)
    assert code == 0, err
    entry = data["results"][0]
    assert (entry["template"], entry["status"]) == (NAME, "fetched")
    assert entry["sha256"] == sha256(operator.archive(NAME))
    assert sha256(fleet.archive(NAME)) == sha256(operator.archive(NAME))
    assert fleet.manifest(NAME) == operator.manifest(NAME)
    assert fleet.leftovers() == []
    assert not list((fleet.pkgcache_dir / "fetch").glob("*.part"))
    # Fetched again: nothing to do. And a build finds it current.
    assert fetch(fleet, NAME)[1]["results"][0]["status"] == "up-to-date"
    assert fleet.build(NAME)["status"] == "up-to-date"


def test_vzpkgls_remote_lists_what_the_index_offers(fleet: VzHost) -> None:
    assert fetch(fleet, NAME)[0] == 0
    proc = fleet.run("vzpkgls", "--remote", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {NAME, DEFAULT}
    assert (rows[NAME]["here"], rows[DEFAULT]["here"]) == ("same", "missing")
    assert rows[NAME]["signed"] is True
    assert fleet.run("vzpkgls", "--remote").stdout.split() == [DEFAULT, NAME]


def test_vzctl_create_fetches_a_missing_cache(fleet: VzHost) -> None:
    proc = fleet.run("vzctl", "create", "231", "--ostemplate", DEFAULT)
    try:
        assert proc.returncode == 0, proc.stderr
        assert "fetching it from the template index" in proc.stderr
        assert fleet.archive(DEFAULT).is_file()
        assert (fleet.base / "conf" / "231.conf").exists() or fleet.run(
            "vzlist", "-a", "-H", "-o", "ctid", "231"
        ).stdout.strip() == "231"
    finally:
        fleet.run("vzctl", "destroy", "231")


def test_an_index_changed_after_signing_is_refused(
    fleet: VzHost, published: Path, tmp_path: Path
) -> None:
    path = variant(published, tmp_path)
    index = path / "index.json"
    index.write_text(index.read_text().replace('"format": 1', '"format": 1, "x": 1'))
    code, _, err = fetch_from(fleet, path)
    assert code == 202, err
    assert "signature does not verify" in err
    nothing_left(fleet, NAME)


def test_an_index_signed_by_another_key_or_unsigned_is_refused(
    fleet: VzHost, published: Path, tmp_path: Path
) -> None:
    path = variant(published, tmp_path)
    fingerprint, _ = generate_key(tmp_path / "other-gnupg")
    sign_index(path, tmp_path / "other-gnupg", fingerprint)
    code, _, err = fetch_from(fleet, path)
    assert code == 202, err
    (path / "index.json.asc").unlink()
    code, _, err = fetch_from(fleet, path)
    assert code == 202, err  # no signature where keys are configured: fail closed
    assert "is not signed" in err
    nothing_left(fleet, NAME)


def test_a_cache_that_is_not_the_indexed_one_is_refused(
    fleet: VzHost, published: Path, tmp_path: Path
) -> None:
    path = variant(published, tmp_path)
    entry = next(t for t in json.loads((path / "index.json").read_text())["templates"]
                 if t["template"] == NAME)  # fmt: skip
    archive = path / entry["file"]
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    archive.write_bytes(bytes(data))
    code, _, err = fetch_from(fleet, path)
    assert code == 202, err
    assert "not the cache the index names" in err
    nothing_left(fleet, NAME)
    assert not list((fleet.pkgcache_dir / "fetch").glob("*.part"))  # a wrong file is not resumed


def test_a_cut_download_is_refused_then_resumed(fleet: VzHost, published: Path) -> None:
    code, _, err = fetch_from(fleet, published, cut=100_000)
    assert code == 206, err
    assert "cut after" in err
    nothing_left(fleet, NAME)
    with FileServer(published) as srv:
        code, _, err = fetch(fleet, NAME, env=with_index(fleet, srv.url))
        # What came before the cut is kept: asked from there on (chunks of 64 KiB).
        assert srv.ranges == ["bytes=65536-"]
    assert code == 0, err
    assert "resuming at" in err
    assert fleet.manifest(NAME)["archive"]["sha256"] == sha256(fleet.archive(NAME))


def test_an_unreachable_index_is_a_clear_error(fleet: VzHost) -> None:
    code, _, err = fetch(fleet, NAME, env=with_index(fleet, "http://127.0.0.1:9/index.json"))
    assert code == 206, err
    assert "cannot reach http://127.0.0.1:9/index.json" in err
    nothing_left(fleet, NAME)
    proc = fleet.run("vzctl", "create", "232", "--ostemplate", NAME,
                     env=with_index(fleet, "http://127.0.0.1:9/index.json"))  # fmt: skip
    assert proc.returncode == 206, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (fleet.base / "conf" / "232.conf").exists()


def test_an_index_older_than_the_local_cache_is_refused(
    fleet: VzHost, fixture_repo: FixtureRepo
) -> None:
    # The fleet host builds its own cache after upstream moved on: newer than the index's.
    rpm = build_rpm(replace(release_spec(), version="1", release="5"), fixture_repo.path,
                    "x86_64")  # fmt: skip
    sign_packages(fixture_repo, [rpm])
    os.utime(fixture_repo.path / "repodata", None)
    refresh_repodata(fixture_repo.path, fixture_repo.gnupg_home)
    assert fleet.build(NAME)["returncode"] == 0
    before = sha256(fleet.archive(NAME))
    rows = {r["name"]: r for r in json.loads(fleet.run("vzpkgls", "--remote", "--json").stdout)}
    assert rows[NAME]["here"] == "newer"  # this host's, against the index's
    code, _, err = fetch(fleet, NAME)
    assert code == 205, err
    assert "offers an older cache" in err
    assert sha256(fleet.archive(NAME)) == before
    assert fleet.leftovers() == []


def test_a_named_publish_keeps_the_others_and_fetch_refreshes_the_hosts_caches(
    operator: VzHost, published: Path, fleet: VzHost
) -> None:
    assert fetch(fleet, NAME)[0] == 0
    proc = operator.run("vzpkgcache", "publish", str(published), DEFAULT)
    assert proc.returncode == 0, proc.stderr
    offered = {t["template"] for t in json.loads((published / "index.json").read_text())[
        "templates"]}  # fmt: skip
    assert offered == {NAME, DEFAULT}
    # No name: what this host has (NAME), not what it lacks (DEFAULT).
    code, data, err = fetch(fleet)
    assert code == 0, err
    assert [(r["template"], r["status"]) for r in data["results"]] == [(NAME, "up-to-date")]


def test_a_replayed_older_index_is_refused(
    fleet: VzHost, published: Path, tmp_path: Path, fixture_repo: FixtureRepo
) -> None:
    assert fetch(fleet, NAME)[0] == 0  # the host has read the current index
    path = variant(published, tmp_path)
    index = json.loads((path / "index.json").read_text())
    index["created"] = "2000-01-01T00:00:00+00:00"
    (path / "index.json").write_text(json.dumps(index))
    sign_index(path, fixture_repo.gnupg_home, fixture_repo.key_id)  # the operator's key
    with FileServer(path) as srv:
        url = srv.url
        seen = fleet.pkgcache_dir / "fetch" / "seen.json"
        # The same URL as the one read before: the host's record says what it saw there.
        record = json.loads(seen.read_text())
        seen.write_text(json.dumps({url: next(iter(record.values()))}))
        code, _, err = fetch(fleet, NAME, env=with_index(fleet, url))
    assert code == 202, err
    assert "replayed or rolled back" in err
