#!/usr/bin/env python3
"""Benchmark: the mirror operator's nightly refresh and a fleet's fetch (issue 13), in one run.

    sudo .venv/bin/python bench/refresh.py [--rounds 3] [--no-nightly]

Debian 12 from the mirror of the host's apt configuration, plus a signed suite of the bench's
own on loopback (tests/debfixture.py) where one package changes each round. Medians of:

  update        vzpkgcache after one package of the set changed upstream (in place)
  rebuild       vzpkgcache -f of the same set, same upstream (a bootstrap; warm package cache)
  from parent   debian-12-x86_64-default made from a current minimal's cache
  bootstrap     vzpkgcache -f debian-12-x86_64-default
  nightly       vzpkgcache --all when nothing changed, over every shipped Debian template
                (11, 12, 13 x minimal, default, systemd; the host's mirror serves all suites)
  fetch         vzpkgcache fetch of default from a signed index on loopback, into an empty host
  curl          curl -o of the same file from the same server
  ... 1G        the same, the server sending at most 110 MiB/s (what a 1 Gbit/s link carries)

Goals: update/rebuild <= 0.3, from parent/bootstrap <= 0.3, nightly < 1 s per template,
fetch/curl <= 1.2.
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

from tests.debfixture import DebSpec, add_local_suite, make_repo, publish  # noqa: E402
from tests.httpserve import FileServer  # noqa: E402
from tests.rpmfixture import RepoServer, gnupg_session  # noqa: E402
from vzpkg.pkgmgr import apt  # noqa: E402

BIN = Path(sys.executable).parent
LINK_RATE = 110 * 2**20  # bytes per second: what a 1 Gbit/s link carries
LOCAL = "debian-12-x86_64-localset"
MINIMAL = "debian-12-x86_64-minimal"
DEFAULT = "debian-12-x86_64-default"


def run(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, check=False)  # fmt: skip
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout


def build(env: dict[str, str], *args: str) -> tuple[float, dict[str, object]]:
    seconds, out = run([str(BIN / "vzpkgcache"), "-q", "--json", *args], env)
    result: dict[str, object] = json.loads(out)["results"][0]
    return seconds, result


def host_conf(base: Path, metadata: Path, pkgcache: Path, extra: str = "") -> dict[str, str]:
    base.mkdir(parents=True, exist_ok=True)
    conf = base / "vzpkg.conf"
    conf.write_text(
        f'METADATA_DIR="{metadata}"\nCACHE_DIR="{base / "cache"}"\nLOCKDIR="{base / "lock"}"\n'
        f'PKGCACHE_DIR="{pkgcache}"\nRUN_DIR="{base / "run"}"\n' + extra
    )
    return {**os.environ, "VZPKG_CONF": str(conf)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-nightly", action="store_true", help="skip the nightly no-op (it builds 9 caches)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root")

    base = Path(tempfile.mkdtemp(prefix="vzpkg-bench-refresh-"))
    times: dict[str, list[float]] = {k: [] for k in (
        "update", "rebuild", "from parent", "bootstrap", "fetch", "curl", "fetch 1G",
        "curl 1G")}  # fmt: skip
    try:
        repo = make_repo(base / "debrepo")
        publish(repo, DebSpec("vzdeb-hello", "1.0", {"/usr/share/vzdeb/hello": "1.0\n"}))
        metadata = base / "metadata"
        shutil.copytree(REPO / "metadata" / "debian", metadata / "debian")
        localset = 'summary = "local"\nbase = "minimal"\npackages = ["vzdeb-hello", "hello"]\n'
        add_local_suite(metadata / "debian", repo, {"localset": localset})
        pkgcache = base / "pkgcache"
        with RepoServer(repo.path) as suite, gnupg_session(repo.gnupg_home) as gpg_home:
            env = host_conf(base / "op", metadata, pkgcache,
                            f'VZLOCAL_MIRROR="{suite.url}"\nINDEX_SIGNING_KEY="{repo.key_id}"\n'
                            f'INDEX_GNUPGHOME="{gpg_home}"\n')  # fmt: skip
            print("bench: first builds (package cache)", file=sys.stderr)
            for name in (MINIMAL, LOCAL, DEFAULT):
                build(env, name)
            for n in range(args.rounds):
                version = f"1.{n + 1}"
                publish(repo, DebSpec("vzdeb-hello", version, {"/usr/share/vzdeb/hello": version}))
                seconds, result = build(env, LOCAL)
                assert result["path"] == "update", result
                times["update"].append(seconds)
                times["rebuild"].append(build(env, "-f", LOCAL)[0])
                build(env, MINIMAL)  # current again (the suite moved): default starts from it
                run([str(BIN / "vzpkgcache"), "-r", DEFAULT], env)
                seconds, result = build(env, DEFAULT)
                assert result["path"] == "parent", result
                times["from parent"].append(seconds)
                times["bootstrap"].append(build(env, "-f", DEFAULT)[0])
                done = ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if v)
                print(f"round {n + 1}: {done}", file=sys.stderr)

            pub = base / "pub"
            run([str(BIN / "vzpkgcache"), "publish", str(pub), DEFAULT], env)
            entry = json.loads((pub / "index.json").read_text())["templates"][0]
            for rate, label in ((None, ""), (LINK_RATE, " 1G")):
                with FileServer(pub, rate=rate) as index:
                    for n in range(args.rounds):
                        fleet = host_conf(base / f"fleet{n}", metadata, base / f"fleet{n}" / "p",
                                          f'TEMPLATE_INDEX="{index.url}"\n'
                                          f'TEMPLATE_INDEX_KEYS="{repo.key_file}"\n')  # fmt: skip
                        fetch = [str(BIN / "vzpkgcache"), "fetch", DEFAULT]
                        times[f"fetch{label}"].append(run(fetch, fleet)[0])
                        out = base / f"curl{n}.tar.zst"
                        url = f"{index.base}/{entry['file']}"
                        curl = ["curl", "-sSf", "-o", str(out), url]
                        times[f"curl{label}"].append(run(curl, fleet)[0])
                        out.unlink()
                        shutil.rmtree(base / f"fleet{n}")
            size = entry["size"]

        nightly = None
        if not args.no_nightly:
            sources = apt.host_apt_sources()
            debian = apt.find_host_mirror(sources, ["bookworm"])
            security = apt.find_host_mirror(sources, ["bookworm-security"])
            mirrors = f'DEBIAN_MIRROR="{debian}"\nDEBIAN_SECURITY_MIRROR="{security}"\n'
            env = host_conf(base / "nightly", REPO / "metadata", pkgcache, mirrors)
            names = [n.stem for n in (REPO / "metadata" / "debian" / "sets").iterdir()]
            templates = [f"debian-{v}-x86_64-{s}" for v in ("11", "12", "13") for s in names]
            print(f"bench: building {len(templates)} Debian templates", file=sys.stderr)
            run([str(BIN / "vzpkgcache"), "-q", *templates], env)
            runs = []
            for _ in range(args.rounds):
                seconds, text = run([str(BIN / "vzpkgcache"), "-q", "--json", *templates], env)
                report = json.loads(text)
                assert all(r["status"] == "up-to-date" for r in report["results"]), report
                runs.append(seconds)
            nightly = (statistics.median(runs), len(templates))

        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\n{args.rounds} rounds, medians (seconds)")
        for key, value in med.items():
            print(f"  {key:<12} {value:7.2f}")
        print()
        print(f"update / rebuild          {med['update'] / med['rebuild']:.2f}  (goal <= 0.30)")
        print(f"from parent / bootstrap   {med['from parent'] / med['bootstrap']:.2f}"
              "  (goal <= 0.30)")  # fmt: skip
        if nightly is not None:
            seconds, count = nightly
            print(f"nightly no-op             {seconds:.2f} s for {count} templates: "
                  f"{seconds / count:.2f} s each  (goal < 1 s each)")  # fmt: skip
        print(f"fetch / curl              {med['fetch'] / med['curl']:.2f}  (goal <= 1.20; "
              f"{size / 2**20:.0f} MiB, curl {size / 2**20 / med['curl']:.0f} MiB/s)")  # fmt: skip
        print(f"fetch / curl at 1 Gbit/s  {med['fetch 1G'] / med['curl 1G']:.2f}  (the server "
              f"sends {LINK_RATE / 2**20:.0f} MiB/s)")  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
