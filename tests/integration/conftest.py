"""Fixtures for integration tests: real tools, as root, against temp directories only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration import netharness
from tests.rpmfixture import FixtureRepo, RepoServer, build_fixture_repo

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="integration tests need root (CI runs them as root)")
        for item in items:
            if "integration" in str(item.fspath) or "security" in str(item.fspath):
                item.add_marker(skip)


@dataclass
class VzHost:
    """A host configuration of temp directories, and a way to run the commands against it."""

    base: Path
    conf: Path
    cache_dir: Path
    lock_dir: Path
    metadata_dir: Path
    pkgcache_dir: Path
    # The network namespace the commands run in (netharness): a VPS's veths, routes and proxy
    # entries are made there, never in the machine's own. None: the machine's.
    net: netharness.NetLab | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VZPKG_")}
        env["VZPKG_CONF"] = str(self.conf)
        return env

    def argv(self, tool: str, *args: str) -> list[str]:
        """A command line of ``tool``: the runtime's tools run in this host's network
        namespace (the cache builder needs the mirror, so it runs in the machine's)."""
        if self.net is None or tool not in ("vzctl", "vzlist"):
            return [str(BIN / tool), *args]
        return ["nsenter", f"--net={self.net.host_path}", "--", str(BIN / tool), *args]

    def run(
        self, tool: str, *args: str, timeout: float = 900, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(tool, *args),
            env=self.env if env is None else env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def popen(self, tool: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(tool, *args),
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )

    def build(self, *args: str) -> dict[str, Any]:
        proc = self.run("vzpkgcache", "--json", *args)
        assert proc.stdout, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)["results"][0]
        result["returncode"] = proc.returncode
        result["stderr"] = proc.stderr
        return result

    def with_cache(self, name: str) -> VzHost:
        """This host, once a cache of template ``name`` is built (or up to date)."""
        result = self.build(name)
        assert result["returncode"] == 0, result["stderr"]
        return self

    def archive(self, name: str) -> Path:
        return self.cache_dir / f"{name}.tar.zst"

    def manifest(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.cache_dir / f"{name}.json").read_text())
        return data

    def leftovers(self) -> list[Path]:
        """Work directories of builds: there must be none once a command has returned."""
        found = []
        for where in (self.cache_dir, Path("/dev/shm")):
            if where.is_dir():
                found += [p for p in where.iterdir() if p.name.startswith(".tmp-")]
        return found


# Engineers who share a machine run the suite side by side: each may move the test pool of
# user namespace ids (VZTEST_POOL_BASE, VZTEST_POOL_SIZE) and the CTIDs of the modules that ask
# ctid_base (VZTEST_CTID_BASE), so that no two runs share either.
TEST_POOL_BASE = int(os.environ.get("VZTEST_POOL_BASE", (1 << 30) + (1 << 29) + (1 << 28)))
TEST_POOL_SIZE = int(os.environ.get("VZTEST_POOL_SIZE", 1 << 24))  # 256 VPSs


def static_tool(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Path:
    """``source`` (C) built statically, so that it runs in any VPS and on the host alike."""
    out = tmp_path_factory.mktemp(source.stem) / source.stem
    subprocess.run(["gcc", "-static", "-O1", "-o", str(out), str(source)], check=True)
    return out


def ctid_base(default: int) -> int:
    """Where a test module's CTIDs begin: ``default``, or VZTEST_CTID_BASE when set."""
    return int(os.environ.get("VZTEST_CTID_BASE", default))


def runtime_conf(base: Path) -> str:
    """Runtime paths of a test host: everything below ``base``."""
    return (
        f'VE_ROOT="{base}/root/$VEID"\nVE_PRIVATE="{base}/private/$VEID"\n'
        f'CONF_DIR="{base}/conf"\nTREES_DIR="{base}/trees"\nRUN_DIR="{base}/run"\n'
        # A pool of its own, inside the default one, far from the blocks the host's own VPSs
        # take first: user namespace blocks are allocated per configuration.
        f"USERNS_POOL_BASE={TEST_POOL_BASE}\nUSERNS_POOL_SIZE={TEST_POOL_SIZE}\n"
    )


def stop_everything(host: VzHost) -> None:
    """Stop and destroy every CT of a test host, whatever state a failed test left."""
    conf_dir = host.base / "conf"
    if not conf_dir.is_dir():
        return
    for path in conf_dir.glob("*.conf"):
        ctid = path.stem
        host.run("vzctl", "stop", "--fast", ctid, timeout=60)
        host.run("vzctl", "umount", ctid, timeout=60)
        host.run("vzctl", "destroy", ctid, timeout=60)


def passable(path: Path) -> None:
    """Let others pass through ``path``'s directories (pytest makes its temp dirs 0700): runc
    mounts a VPS's root from inside the VPS's user namespace, as the VPS's own ids."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & 0o001:
            directory.chmod((mode & 0o7777) | 0o001)


@pytest.fixture(scope="session")
def vzhost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VzHost]:
    base = tmp_path_factory.mktemp("vzhost")
    passable(base)
    metadata = base / "metadata"
    shutil.copytree(REPO / "metadata" / "debian", metadata / "debian")
    shutil.copytree(REPO / "tests" / "integration" / "metadata", metadata, dirs_exist_ok=True)
    host = VzHost(
        base, base / "vzpkg.conf", base / "cache", base / "lock", metadata, base / "pkgcache"
    )
    host.conf.write_text(
        f'METADATA_DIR="{metadata}"\nCACHE_DIR="{host.cache_dir}"\nLOCKDIR="{host.lock_dir}"\n'
        f'PKGCACHE_DIR="{host.pkgcache_dir}"\n' + runtime_conf(base)
    )
    host.net = netharness.make(str(os.getpid()))
    try:
        yield host
        stop_everything(host)
    finally:
        netharness.remove(host.net)
        shutil.rmtree(base, ignore_errors=True)


# The host's own runtime places: tests keep every CT below their temp dirs, never here.
HOST_RUNTIME_PLACES = (
    Path("/etc/vz/conf"),
    Path("/vz/private"),
    Path("/vz/root"),
    Path("/run/vzpkg/runc"),
    Path("/run/vzpkg/ct"),
    Path("/run/vzpkg/net"),
)


def _host_runtime_listing() -> dict[str, list[str]]:
    return {
        str(place): sorted(os.listdir(place)) if place.is_dir() else []
        for place in HOST_RUNTIME_PLACES
    }


@pytest.fixture(scope="session", autouse=True)
def host_runtime_untouched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fails the run if any test left a CT, config or runc state in the host's own places, a
    loop device (VPS disks), or changed the machine's own network (its links, routes,
    addresses, proxy entries)."""
    before = _host_runtime_listing()
    network = netharness.snapshot()
    base = str(tmp_path_factory.getbasetemp())
    loops = _loop_devices(base)
    yield
    after = _host_runtime_listing()
    assert after == before, f"tests changed the host's runtime places: {before} -> {after}"
    assert netharness.snapshot() == network, "tests changed the machine's own network"
    left = _loop_devices(base) - loops
    assert not left, f"tests left loop devices: {left}"


def _loop_devices(base: str) -> set[str]:
    """Loop devices backed by the tests' files (VPS disks)."""
    proc = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    return {line for line in proc.stdout.splitlines() if base in line}


@pytest.fixture(scope="module")
def fixture_repo(tmp_path_factory: pytest.TempPathFactory) -> FixtureRepo:
    """The signed rpm fixture distribution (tests/rpmfixture.py), one per test module (a
    module may define its own, with packages of its own)."""
    return build_fixture_repo(tmp_path_factory.mktemp("rpmfixture"))


@pytest.fixture(scope="module")
def server(fixture_repo: FixtureRepo) -> Iterator[RepoServer]:
    """``fixture_repo`` served on loopback for the module's tests."""
    with RepoServer(fixture_repo.path) as srv:
        yield srv


def rpm_fixture_host(
    base: Path, key_file: Path, mirror_url: str, sets: dict[str, str] | None = None
) -> VzHost:
    """A host configuration in ``base`` whose metadata is the rpm fixture distribution's
    (tests/integration/metadata-rpm, with the fixture's key ``key_file`` and ``sets``: name
    -> TOML of extra package sets), its mirror ``mirror_url``."""
    passable(base)
    metadata = base / "metadata"
    shutil.copytree(REPO / "tests" / "integration" / "metadata-rpm", metadata)
    (metadata / "vzfix" / "keys").mkdir()
    shutil.copy(key_file, metadata / "vzfix" / "keys" / "RPM-GPG-KEY-vzpkgtest")
    for name, toml in (sets or {}).items():
        (metadata / "vzfix" / "sets" / f"{name}.toml").write_text(toml)
    host = VzHost(
        base, base / "vzpkg.conf", base / "cache", base / "lock", metadata, base / "pkgcache"
    )
    host.conf.write_text(
        f'METADATA_DIR="{metadata}"\nCACHE_DIR="{host.cache_dir}"\nLOCKDIR="{host.lock_dir}"\n'
        f'PKGCACHE_DIR="{host.pkgcache_dir}"\nVZFIX_MIRROR="{mirror_url}"\n'
        + runtime_conf(base)  # VPSs of this host live below base, never in /etc/vz or /vz
    )
    return host
