"""Fixtures for the runc engine tests: a real Debian root, a private runc state directory.

Imported by test_engine.py (not a conftest.py, so that it stays out of the other suites).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from vzpkg.cache.archive import unpack_archive
from vzpkg.ct import oci
from vzpkg.ct.engine import Runc, write_bundle
from vzpkg.errors import VzError

BIN = Path(sys.executable).parent
TEMPLATE = "debian-12-x86_64-minimal"
TINI = Path("/usr/bin/tini-static")
CGROUP_ROOT = Path("/sys/fs/cgroup")
_counter = itertools.count(1)


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is needed for the engine tests: apt-get install -y {package}")


@pytest.fixture(scope="module", name="debian_root")
def debian_root_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """debian-12-x86_64-minimal built by the real vzpkgcache and unpacked."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    _need("runc", "runc")
    if not TINI.exists():
        pytest.fail(f"{TINI} is needed for the engine tests: apt-get install -y tini")
    base = tmp_path_factory.mktemp("engine")
    try:
        conf = base / "conf"
        conf.write_text(
            f'CACHE_DIR="{base / "cache"}"\nLOCKDIR="{base / "lock"}"\n'
            f'PKGCACHE_DIR="{base / "pkgcache"}"\nRUN_DIR="{base / "run"}"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("VZPKG_")}
        env["VZPKG_CONF"] = str(conf)
        proc = subprocess.run(
            [str(BIN / "vzpkgcache"), "-q", TEMPLATE],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert proc.returncode == 0, f"vzpkgcache failed:\n{proc.stdout}\n{proc.stderr}"
        root = base / "root"
        root.mkdir()
        unpack_archive(base / "cache" / f"{TEMPLATE}.tar.zst", root)
        shutil.rmtree(base / "cache")
        shutil.rmtree(base / "pkgcache", ignore_errors=True)
        yield root
    finally:
        shutil.rmtree(base, ignore_errors=True)


class Engine:
    """A Runc with its own --root, bundles in a temp dir, and a cgroup parent of its own."""

    def __init__(self, base: Path, root: Path) -> None:
        self.base = base
        self.root = root
        self.runc = Runc(base / "runc")
        self.cgroup_parent = f"vzpkg-test-{os.getpid()}-{next(_counter)}"
        self.host = oci.probe_host()

    def bundle(
        self,
        ctid: str,
        init_argv: Sequence[str] = ("/.vzpkg/tini", "-s", "--", "sleep", "infinity"),
        *,
        hostname: str | None = None,
    ) -> Path:
        spec = oci.BundleSpec(
            ctid=ctid,
            root=self.root,
            hostname=hostname or f"ct{ctid}.test",
            init_argv=tuple(init_argv),
            binds=(oci.tini_bind(TINI),),
            cgroup_parent=self.cgroup_parent,
            host=self.host,
        )
        bundle = self.base / "bundles" / ctid
        write_bundle(bundle, oci.build_config(spec))
        return bundle

    def start(
        self, ctid: str, init_argv: Sequence[str] | None = None, *, hostname: str | None = None
    ) -> int:
        """Start a container; its init's host pid."""
        bundle = (
            self.bundle(ctid, hostname=hostname)
            if init_argv is None
            else self.bundle(ctid, init_argv, hostname=hostname)
        )
        return self.runc.start(ctid, bundle).pid

    def capture(self, ctid: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """``runc exec`` with output captured (Runc.exec hands the user's stdio on instead)."""
        return subprocess.run(
            self.runc.exec_argv(ctid, argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def output(self, ctid: str, *argv: str) -> str:
        proc = self.capture(ctid, *argv)
        assert proc.returncode == 0, f"{argv}: {proc.returncode}\n{proc.stderr}"
        return proc.stdout

    def cgroup_dirs(self) -> list[Path]:
        return [p for p in CGROUP_ROOT.glob(f"*/{self.cgroup_parent}") if p.is_dir()]

    def cleanup(self) -> None:
        if (self.base / "runc").is_dir():
            for state in self.runc.list_containers():
                ctid = state.id.removeprefix("vz")
                with contextlib.suppress(VzError):
                    self.runc.delete(ctid, force=True)
        for parent in self.cgroup_dirs():
            # runc delete removes each container's cgroup, not the parent we named.
            for child in sorted(parent.rglob("*"), reverse=True):
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        child.rmdir()
            with contextlib.suppress(OSError):
                parent.rmdir()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(name="engine")
def engine_fixture(debian_root: Path, tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(tmp_path / "engine", debian_root)
    eng.base.mkdir()
    try:
        yield eng
    finally:
        eng.cleanup()
