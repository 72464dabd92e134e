"""Debian caches updated in place (issue 13): Debian 12 from the host's mirror plus a signed
suite of the test's own (tests/debfixture.py) on loopback, where an update is deterministic:
the test publishes a new version, vzpkgcache upgrades the cache instead of bootstrapping.
Also: a set made from its base set's cache has the packages a bootstrap of it has, and an
update of a set's packages is byte for byte the bootstrap of the new set."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.debfixture import DebRepo, DebSpec, add_local_suite, make_repo, publish
from tests.integration.conftest import REPO, VzHost, passable
from tests.rpmfixture import RepoServer

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.network]

MINIMAL = "debian-12-x86_64-minimal"
DEFAULT = "debian-12-x86_64-default"
LOCAL = "debian-12-x86_64-localset"
LOCALSET = 'summary = "local"\nbase = "minimal"\npackages = ["vzdeb-hello"]\n'


@pytest.fixture(scope="module")
def deb_repo(tmp_path_factory: pytest.TempPathFactory) -> DebRepo:
    repo = make_repo(tmp_path_factory.mktemp("debfixture"))
    publish(repo, DebSpec("vzdeb-hello", "1.0", {"/usr/share/vzdeb/hello": "1.0\n"}))
    return repo


@pytest.fixture(scope="module")
def host(
    tmp_path_factory: pytest.TempPathFactory, deb_repo: DebRepo, vzhost: VzHost
) -> Iterator[VzHost]:
    base = tmp_path_factory.mktemp("debupdate")
    passable(base)
    metadata = base / "metadata"
    debian = metadata / "debian"
    shutil.copytree(REPO / "metadata" / "debian", debian)
    add_local_suite(debian, deb_repo, {"localset": LOCALSET})
    # The session host's package pool: packages the other tests downloaded are not fetched again.
    host = VzHost(base, base / "vzpkg.conf", base / "cache", base / "lock", metadata,
                  vzhost.pkgcache_dir)  # fmt: skip
    with RepoServer(deb_repo.path) as server:
        host.conf.write_text(
            f'METADATA_DIR="{metadata}"\nCACHE_DIR="{host.cache_dir}"\n'
            f'LOCKDIR="{vzhost.lock_dir}"\nPKGCACHE_DIR="{host.pkgcache_dir}"\n'
            f'VZLOCAL_MIRROR="{server.url}"\nRUN_DIR="{base / "run"}"\n'
        )
        yield host
    shutil.rmtree(base, ignore_errors=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def versions(manifest: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["version"] for p in manifest["packages"]}


def built(host: VzHost, *args: str) -> dict[str, Any]:
    result = host.build(*args)
    assert result["returncode"] == 0, result["stderr"]
    assert "Traceback" not in result["stderr"]
    return result


def test_a_set_is_made_from_its_base_sets_cache(host: VzHost) -> None:
    assert built(host, MINIMAL)["path"] == "bootstrap"
    made = built(host, LOCAL)
    assert (made["status"], made["path"]) == ("built", "parent")
    assert "bootstrapping" not in made["stderr"]
    assert [c["name"] for c in made["changes"]] == ["vzdeb-hello"]
    assert versions(host.manifest(LOCAL))["vzdeb-hello"] == "1.0"


def test_an_upstream_update_is_applied_in_place(host: VzHost, deb_repo: DebRepo) -> None:
    old = sha256(host.archive(LOCAL))
    publish(deb_repo, DebSpec("vzdeb-hello", "1.1", {"/usr/share/vzdeb/hello": "1.1\n"}))
    result = built(host, LOCAL)
    assert (result["status"], result["path"]) == ("updated", "update")
    assert "upstream changed" in result["reason"]
    manifest = host.manifest(LOCAL)
    changes = [c for c in manifest["changes"] if c["name"] == "vzdeb-hello"]
    assert changes == [{"name": "vzdeb-hello", "arch": "all", "from": "1.0", "to": "1.1"}]
    assert manifest["build"]["path"] == "update"
    assert sha256(host.cache_dir / f"{LOCAL}-old.tar.zst") == old
    assert host.leftovers() == []
    assert built(host, LOCAL)["status"] == "up-to-date"


def test_an_update_of_the_sets_packages_is_the_bootstrap_of_the_new_set(host: VzHost) -> None:
    """Reproducible whichever path: a bootstrapped cache updated to a changed set is the
    bootstrap of that set, byte for byte, when upstream is the same."""
    assert built(host, "-f", LOCAL)["path"] == "bootstrap"
    path = host.metadata_dir / "debian" / "sets" / "localset.toml"
    path.write_text(path.read_text().replace('["vzdeb-hello"]', '["vzdeb-hello", "sl"]'))
    updated = built(host, LOCAL)
    assert (updated["status"], updated["path"]) == ("updated", "update")
    assert {c["name"] for c in updated["changes"]} >= {"sl"}
    by_update = host.manifest(LOCAL)
    clean = built(host, "-f", LOCAL)
    assert clean["path"] == "bootstrap"
    by_bootstrap = host.manifest(LOCAL)
    assert by_bootstrap["upstream"] == by_update["upstream"], "the mirror moved meanwhile"
    assert by_bootstrap["archive"]["sha256"] == by_update["archive"]["sha256"]


def test_default_from_minimal_has_the_packages_of_a_clean_default(host: VzHost) -> None:
    # The local suite moved on since minimal was built: it is brought up to date first
    # (vzpkgcache --all orders sets after their base set for this).
    assert built(host, MINIMAL)["path"] == "update"
    made = built(host, DEFAULT)
    assert made["path"] == "parent", made["reason"]
    from_parent = versions(host.manifest(DEFAULT))
    assert {"sysvinit-core", "openssh-server", "cron"} <= set(from_parent)
    assert built(host, "-f", DEFAULT)["path"] == "bootstrap"
    assert versions(host.manifest(DEFAULT)) == from_parent
