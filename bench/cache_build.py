#!/usr/bin/env python3
"""Benchmark: vzpkgcache against plain mmdebstrap, in the same run, on the same mirror.

    sudo .venv/bin/python bench/cache_build.py [--rounds 3] [--template debian-12-x86_64-minimal]

Measures, as medians over the rounds:
  mmdebstrap   mmdebstrap --variant=minbase of the same suite, packages and mirrors to .tar.zst
               (what a user would run by hand instead of vzpkgcache)
  cold         vzpkgcache -f with an empty package cache
  warm         vzpkgcache -f again, package cache filled
  up-to-date   vzpkgcache without -f on an unchanged upstream (the nightly no-op)
and prints time and size ratios. Goals (issue 2): cold/mmdebstrap <= 1.1, warm/cold <= 0.5.
"""

from __future__ import annotations

import argparse
import json
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

from vzpkg.distro.base import family_for  # noqa: E402
from vzpkg.distro.debian import Debian  # noqa: E402
from vzpkg.hostconf import load_host_config  # noqa: E402
from vzpkg.metadata.loader import load_catalog  # noqa: E402
from vzpkg.metadata.model import DEB_ARCH  # noqa: E402

BIN = Path(sys.executable).parent


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    proc = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"bench: {argv[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--template", default="debian-12-x86_64-minimal")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (mmdebstrap --mode=root and vzpkgcache need it)")

    host = load_host_config()
    template = load_catalog(host.metadata_dir).get(args.template)
    family = family_for(template, host)
    assert isinstance(family, Debian)
    sources = family.source_lines()
    suite = template.release.repositories[0].suite or ""

    base = Path(tempfile.mkdtemp(prefix="vzpkg-bench-"))
    try:
        conf = base / "vzpkg.conf"
        cache, pkgcache = base / "cache", base / "pkgcache"
        conf.write_text(
            f'CACHE_DIR="{cache}"\nPKGCACHE_DIR="{pkgcache}"\n'
            f'LOCKDIR="{base / "lock"}"\nRUN_DIR="{base / "run"}"\n'
            f'METADATA_DIR="{host.metadata_dir}"\n'
        )
        env = {**os.environ, "VZPKG_CONF": str(conf)}
        vzpkgcache = [str(BIN / "vzpkgcache"), "-q"]
        mm_out = base / "mmdebstrap.tar.zst"
        mm_argv = [
            "mmdebstrap",
            "--quiet",
            "--mode=root",
            "--variant=minbase",
            f"--architectures={DEB_ARCH[template.arch]}",
            "--include=" + ",".join(template.packages),
            suite,
            str(mm_out),
            *sources,
        ]
        # mmdebstrap's own temp root goes to $TMPDIR; run it both ways so the comparison with
        # vzpkgcache (which builds in /dev/shm when it has room) is shown on equal footing too.
        shm_env = {**env, "TMPDIR": "/dev/shm"}
        times: dict[str, list[float]] = {
            "mmdebstrap": [],
            "mmdebstrap-shm": [],
            "cold": [],
            "warm": [],
            "up-to-date": [],
        }
        downloaded: dict[str, list[int]] = {"cold": [], "warm": []}
        for round_ in range(args.rounds):
            mm_out.unlink(missing_ok=True)
            times["mmdebstrap"].append(timed(mm_argv, env))
            mm_out.unlink(missing_ok=True)
            times["mmdebstrap-shm"].append(timed(mm_argv, shm_env))
            shutil.rmtree(pkgcache, ignore_errors=True)
            times["cold"].append(timed([*vzpkgcache, "-f", args.template], env))
            downloaded["cold"].append(tree_size(pkgcache))
            times["warm"].append(timed([*vzpkgcache, "-f", args.template], env))
            downloaded["warm"].append(tree_size(pkgcache) - downloaded["cold"][-1])
            times["up-to-date"].append(timed([*vzpkgcache, args.template], env))
            print(
                f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
                file=sys.stderr,
            )
        med = {k: statistics.median(v) for k, v in times.items()}
        ours = cache / f"{args.template}.tar.zst"
        manifest = json.loads((cache / f"{args.template}.json").read_text())
        size_ours, size_mm = ours.stat().st_size, mm_out.stat().st_size
        print(
            f"\n{args.template}, {args.rounds} rounds, medians "
            f"({len(manifest['packages'])} packages)"
        )
        mib = 2**20
        print(f"{'':<16} {'seconds':>8} {'MiB':>8} {'downloaded MiB':>15}")
        print(f"{'mmdebstrap':<16} {med['mmdebstrap']:>8.2f} {size_mm / mib:>8.1f}")
        print(f"{'mmdebstrap-shm':<16} {med['mmdebstrap-shm']:>8.2f} {size_mm / mib:>8.1f}")
        print(
            f"{'cold':<16} {med['cold']:>8.2f} {size_ours / mib:>8.1f} "
            f"{statistics.median(downloaded['cold']) / mib:>15.1f}"
        )
        print(
            f"{'warm':<16} {med['warm']:>8.2f} {size_ours / mib:>8.1f} "
            f"{statistics.median(downloaded['warm']) / mib:>15.1f}"
        )
        print(f"{'up-to-date':<16} {med['up-to-date']:>8.2f}")
        print()
        print(f"cold / mmdebstrap time  {med['cold'] / med['mmdebstrap']:.2f}  (goal <= 1.10)")
        print(f"cold / mmdebstrap-shm   {med['cold'] / med['mmdebstrap-shm']:.2f}")
        print(f"cold / mmdebstrap size  {size_ours / size_mm:.2f}")
        print(f"warm / cold time        {med['warm'] / med['cold']:.2f}  (goal <= 0.50)")
        print(f"up-to-date / cold time  {med['up-to-date'] / med['cold']:.3f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
