#!/usr/bin/env python3
"""Benchmark: an rpm-family cache build, cold vs warm package cache, on the fixture distribution.

    sudo .venv/bin/python bench/rpm_cache_build.py [--rounds 3]

Builds the signed fixture distribution of the tests (tests/rpmfixture.py), serves it on
loopback and times, as medians: `vzpkgcache -f vzfix-1-x86_64-default` with an empty package
cache (cold) and again with the cache filled (warm), counting the packages fetched from the
server each time, plus the up-to-date check. Prints warm/cold.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.rpmfixture import RepoServer, build_fixture_repo  # noqa: E402

BIN = Path(sys.executable).parent
NAME = "vzfix-1-x86_64-default"


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    proc = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"bench: {argv} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root")
    base = Path(tempfile.mkdtemp(prefix="vzpkg-rpm-bench-"))
    try:
        fixture = build_fixture_repo(base / "fixture")
        metadata = base / "metadata"
        shutil.copytree(REPO / "tests" / "integration" / "metadata-rpm", metadata)
        (metadata / "vzfix" / "keys").mkdir()
        shutil.copy(fixture.key_file, metadata / "vzfix" / "keys" / "RPM-GPG-KEY-vzpkgtest")
        pkgcache = base / "pkgcache"
        with RepoServer(fixture.path) as server:
            conf = base / "vzpkg.conf"
            conf.write_text(
                f'METADATA_DIR="{metadata}"\nCACHE_DIR="{base / "cache"}"\n'
                f'LOCKDIR="{base / "lock"}"\nRUN_DIR="{base / "run"}"\nPKGCACHE_DIR="{pkgcache}"\n'
                f'VZFIX_MIRROR="{server.url}"\n'
            )
            env = {**os.environ, "VZPKG_CONF": str(conf)}
            cmd = [str(BIN / "vzpkgcache"), "-q"]
            times: dict[str, list[float]] = {"cold": [], "warm": [], "up-to-date": []}
            fetched: dict[str, list[int]] = {"cold": [], "warm": []}
            for _ in range(args.rounds):
                shutil.rmtree(pkgcache, ignore_errors=True)
                for kind in ("cold", "warm"):
                    before = len([p for p in server.access_log if p.endswith(".rpm")])
                    times[kind].append(timed([*cmd, "-f", NAME], env))
                    after = len([p for p in server.access_log if p.endswith(".rpm")])
                    fetched[kind].append(after - before)
                times["up-to-date"].append(timed([*cmd, NAME], env))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\n{NAME} (fixture distribution on loopback), {args.rounds} rounds, medians")
        print(f"{'':<12} {'seconds':>8} {'packages fetched':>17}")
        for kind in ("cold", "warm"):
            print(f"{kind:<12} {med[kind]:>8.2f} {statistics.median(fetched[kind]):>17.0f}")
        print(f"{'up-to-date':<12} {med['up-to-date']:>8.2f}")
        print(f"\nwarm / cold time  {med['warm'] / med['cold']:.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
