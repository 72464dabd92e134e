"""Debian caches updated in place (issue 13): Debian 12 from the host's mirror plus a signed
suite of the test's own (tests/debfixture.py) on loopback, where an update is deterministic:
the test publishes a new version, vzpkgcache upgrades the cache instead of bootstrapping.
Also: a set made from its base set's cache has the packages a bootstrap of it has, and an
update of a set's packages is byte for byte the bootstrap of the new set."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from debian.debian_support import version_compare

from tests.debfixture import DebRepo, DebSpec, add_local_suite, make_repo, publish
from tests.integration.conftest import REPO, VzHost, passable
from tests.rpmfixture import RepoServer
from vzpkg.cache.archive import pack_tree, unpack_archive

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


def older_version(name: str) -> str:
    """A version of ``name`` the host's mirror has besides its candidate (an older one of
    the release, when a point release or a security update moved it on)."""
    out = subprocess.run(["apt-cache", "madison", name], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    versions = sorted({line.split("|")[1].strip() for line in out.splitlines()},
                      key=functools.cmp_to_key(version_compare))  # fmt: skip
    assert len(versions) > 1, f"the mirror has one version of {name} only: {versions}"
    return versions[0]


def test_an_update_against_the_real_mirror_upgrades_what_it_changed(
    host: VzHost, tmp_path: Path
) -> None:
    """The cache says it has an older tzdata than the mirror's and was built from an older
    state of bookworm-updates: the update fetches and installs the mirror's tzdata."""
    assert built(host, MINIMAL)["status"] in ("up-to-date", "updated")
    manifest = host.manifest(MINIMAL)
    now = versions(manifest)["tzdata"]
    old = older_version("tzdata")
    root = tmp_path / "root"
    root.mkdir()
    unpack_archive(host.archive(MINIMAL), root)
    status = root / "var/lib/dpkg/status"
    text = status.read_text()
    stanza = text.index("Package: tzdata\n")
    end = text.index("\n\n", stanza)
    status.write_text(text[:stanza] + text[stanza:end].replace(f"Version: {now}",
                      f"Version: {old}") + text[end:])  # fmt: skip
    archive = tmp_path / "stale.tar.zst"
    packed = pack_tree(root, archive, source_date_epoch=manifest["source_date_epoch"])
    for f in manifest["upstream"]:
        if f["repository"] == "updates":
            f["sha256"] = "0" * 64  # as it was when the stale cache was built
    manifest["packages"] = [p if p["name"] != "tzdata" else {**p, "version": old}
                            for p in manifest["packages"]]  # fmt: skip
    manifest["archive"] = {**manifest["archive"], "sha256": packed.sha256,
                           "size": packed.compressed_size}  # fmt: skip
    shutil.copy(archive, host.archive(MINIMAL))
    (host.cache_dir / f"{MINIMAL}.json").write_text(json.dumps(manifest))
    # This host built it (the test plays its builder): an update may start from it.
    origin = {"sha256": packed.sha256, "source": "built"}
    (host.cache_dir / f"{MINIMAL}.origin").write_text(json.dumps(origin))

    result = built(host, MINIMAL)
    assert (result["status"], result["path"]) == ("updated", "update")
    assert "upstream changed" in result["reason"]
    assert "bootstrapping" not in result["stderr"]
    assert {"name": "tzdata", "arch": "all", "from": old, "to": now} in result["changes"]
    assert versions(host.manifest(MINIMAL))["tzdata"] == now
