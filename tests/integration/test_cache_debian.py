"""Real Debian caches: mmdebstrap against the host's Debian mirror, as root.

Tests run in file order and share the session's cache directory: the first builds
debian-12-x86_64-minimal, the later ones rebuild or break it on purpose.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from tests.integration.conftest import BIN, VzHost
from vzpkg import lock
from vzpkg.cache.archive import unpack_archive
from vzpkg.pkgmgr.apt import read_dpkg_status

pytestmark = [pytest.mark.root, pytest.mark.network, pytest.mark.slow]

MINIMAL = "debian-12-x86_64-minimal"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with archive.open("rb") as raw:
        stream = zstandard.ZstdDecompressor().stream_reader(raw)
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            return {m.name: m for m in tar}


def read_member(archive: Path, name: str) -> bytes:
    with archive.open("rb") as raw:
        stream = zstandard.ZstdDecompressor().stream_reader(raw)
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for m in tar:
                if m.name == name:
                    f = tar.extractfile(m)
                    assert f is not None
                    return f.read()
    raise KeyError(name)


def mounts_mentioning(text: str) -> list[str]:
    return [line for line in Path("/proc/self/mounts").read_text().splitlines() if text in line]


def test_build_minimal_from_host_mirror(vzhost: VzHost) -> None:
    result = vzhost.build(MINIMAL)
    assert result["returncode"] == 0, result["stderr"]
    assert result["status"] == "built"
    archive = vzhost.archive(MINIMAL)
    manifest = vzhost.manifest(MINIMAL)
    # The manifest describes exactly this archive.
    assert manifest["template"] == MINIMAL
    assert manifest["archive"]["sha256"] == sha256(archive)
    assert manifest["archive"]["size"] == archive.stat().st_size
    assert manifest["build"]["tool"] == "mmdebstrap"
    assert {f["repository"] for f in manifest["upstream"]} == {"main", "updates", "security"}
    assert all(len(f["sha256"]) == 64 for f in manifest["upstream"])
    assert vzhost.leftovers() == []
    # Progress went to stderr, phase by phase.
    assert "bootstrapping" in result["stderr"] and "packing" in result["stderr"]


def test_manifest_packages_match_the_archive(vzhost: VzHost) -> None:
    archive = vzhost.archive(MINIMAL)
    status = vzhost.base / "status"
    status.write_bytes(read_member(archive, "./var/lib/dpkg/status"))
    in_archive = [{"name": n, "version": v, "arch": a} for n, v, a in read_dpkg_status(status)]
    manifest = vzhost.manifest(MINIMAL)
    assert manifest["packages"] == in_archive
    names = {p["name"] for p in in_archive}
    assert {"apt", "dpkg", "procps", "iproute2", "iputils-ping"} <= names
    assert manifest["archive"]["members"] == len(members(archive))


def test_archive_keeps_capabilities_setuid_and_has_no_devices(vzhost: VzHost) -> None:
    entries = members(vzhost.archive(MINIMAL))
    ping = entries["./usr/bin/ping"]
    assert "SCHILY.xattr.security.capability" in ping.pax_headers
    assert not ping.mode & 0o4000  # ping works by capability, not setuid
    assert entries["./usr/bin/passwd"].mode & 0o4000
    assert entries["./usr/bin/su"].mode & 0o4000
    assert entries["./usr/bin/passwd"].uid == 0
    assert not [n for n, m in entries.items() if m.ischr() or m.isblk()]
    assert [n for n in entries if n.startswith("./dev/")] == []
    assert not [n for n in entries if "/etc/ssh/ssh_host_" in n]
    assert read_member(vzhost.archive(MINIMAL), "./etc/hostname") == b"localhost\n"
    if "./etc/machine-id" in entries:  # only present when systemd is installed
        assert read_member(vzhost.archive(MINIMAL), "./etc/machine-id") == b""
    assert not [
        n for n in entries if n.startswith("./var/cache/apt/archives/") and n.endswith(".deb")
    ]
    assert not [
        n for n in entries if n.startswith("./var/lib/apt/lists/") and n.endswith("InRelease")
    ]


def test_safe_unpack_of_a_real_cache_is_faithful(vzhost: VzHost, tmp_path: Path) -> None:
    target = tmp_path / "root"
    target.mkdir()
    manifest = vzhost.manifest(MINIMAL)
    unpack_archive(vzhost.archive(MINIMAL), target, expected_sha256=manifest["archive"]["sha256"])
    assert os.getxattr(target / "usr/bin/ping", "security.capability")
    assert (target / "usr/bin/passwd").stat().st_mode & 0o4000
    assert (target / "etc/debian_version").read_text().startswith("12.")
    shutil.rmtree(target)


def test_unchanged_cache_is_up_to_date_and_untouched(vzhost: VzHost) -> None:
    archive = vzhost.archive(MINIMAL)
    before = archive.stat()
    started = time.monotonic()
    result = vzhost.build(MINIMAL)
    assert result["returncode"] == 0
    after = archive.stat()
    if upstream_moved(result):
        return  # the live mirror published between the builds: a rebuild is right
    assert result["status"] == "up-to-date"
    assert time.monotonic() - started < 15  # no bootstrap happened
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def upstream_moved(result: dict[str, object]) -> bool:
    """The host's Debian mirror is live: a suite may publish while the tests run. Then the
    freshness check must have rebuilt, and said why."""
    if result["status"] != "built":
        return False
    assert "rebuilding: upstream changed" in str(result["stderr"])
    return True


def test_forced_rebuild_keeps_old_and_is_reproducible(vzhost: VzHost) -> None:
    previous = sha256(vzhost.archive(MINIMAL))
    result = vzhost.build("-f", MINIMAL)
    assert result["returncode"] == 0, result["stderr"]
    old = vzhost.cache_dir / f"{MINIMAL}-old.tar.zst"
    assert sha256(old) == previous
    assert vzhost.manifest(f"{MINIMAL}-old")["archive"]["sha256"] == previous
    # Same upstream state, same bytes: the pack is reproducible. (The live mirror may have
    # published in between; then the manifests say so and the bytes may differ.)
    if vzhost.manifest(MINIMAL)["upstream"] == vzhost.manifest(f"{MINIMAL}-old")["upstream"]:
        assert sha256(vzhost.archive(MINIMAL)) == previous
    # The package cache was used: nothing new downloaded into it.
    debs = list((vzhost.pkgcache_dir / "debian-12-x86_64").glob("*.deb"))
    assert len(debs) >= 100


def test_hooks_run_where_documented(vzhost: VzHost) -> None:
    name = "debian-12-x86_64-hooked"
    result = vzhost.build(name)
    assert result["returncode"] == 0, result["stderr"]
    archive = vzhost.archive(name)
    assert read_member(archive, "./etc/vzpkg-post-install") == f"{name} post-install\n".encode()
    assert read_member(archive, "./etc/vzpkg-post-cache") == b"post-cache\n"
    assert vzhost.leftovers() == []


def test_failing_hook_publishes_nothing(vzhost: VzHost) -> None:
    name = "debian-12-x86_64-hookfail"
    result = vzhost.build(name)
    assert result["returncode"] == 204
    assert result["status"] == "failed"
    assert "this hook fails on purpose" in result["message"]
    assert not vzhost.archive(name).exists()
    assert not (vzhost.cache_dir / f"{name}.json").exists()
    assert vzhost.leftovers() == []
    assert mounts_mentioning(".tmp-") == []


def test_signature_check_fails_closed_with_a_foreign_key(vzhost: VzHost, tmp_path: Path) -> None:
    # A distribution exactly like Debian but trusting only a throwaway key.
    metadata = tmp_path / "metadata"
    shutil.copytree(vzhost.metadata_dir / "debian", metadata / "debian")
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(gnupg)}
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "vzpkg test <test@vzpkg.invalid>",
            "ed25519",
            "sign",
            "1d",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    key = metadata / "debian" / "keys" / "foreign.asc"
    key.parent.mkdir()
    key.write_bytes(
        subprocess.run(
            ["gpg", "--armor", "--export"], env=env, check=True, capture_output=True
        ).stdout
    )
    subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)  # no agent left behind
    dist = metadata / "debian" / "distribution.toml"
    dist.write_text(
        dist.read_text().replace(
            'keys = ["/usr/share/keyrings/debian-archive-keyring.gpg"]',
            'keys = ["keys/foreign.asc"]',
        )
    )
    conf = tmp_path / "vzpkg.conf"
    conf.write_text(vzhost.conf.read_text() + f'METADATA_DIR="{metadata}"\n')
    env2 = {**vzhost.env, "VZPKG_CONF": str(conf)}
    result = subprocess.run(
        [str(BIN / "vzpkgcache"), "-f", "debian-12-x86_64-minimal"],
        env=env2,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 202, result.stderr
    assert "signature" in result.stderr
    assert "NO_PUBKEY" in result.stderr
    # The good cache published earlier is untouched.
    assert vzhost.manifest(MINIMAL)["archive"]["sha256"] == sha256(vzhost.archive(MINIMAL))
    assert vzhost.leftovers() == []


def test_unknown_metadata_key_is_reported_with_file_and_key(vzhost: VzHost, tmp_path: Path) -> None:
    metadata = tmp_path / "metadata"
    shutil.copytree(vzhost.metadata_dir / "debian", metadata / "debian")
    minimal = metadata / "debian" / "sets" / "minimal.toml"
    minimal.write_text(minimal.read_text() + 'colour = "red"\n')
    conf = tmp_path / "vzpkg.conf"
    conf.write_text(vzhost.conf.read_text() + f'METADATA_DIR="{metadata}"\n')
    result = subprocess.run(
        [str(BIN / "vzpkgcache"), "debian-12-x86_64-minimal"],
        env={**vzhost.env, "VZPKG_CONF": str(conf)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 201
    assert f"{minimal}: colour: unknown key" in result.stderr


def test_locked_template_says_who_holds_it(vzhost: VzHost) -> None:
    with lock.locked(vzhost.lock_dir, f"cache-{MINIMAL}"):
        result = vzhost.run("vzpkgcache", MINIMAL)
        assert result.returncode == 9
        assert f"pid {os.getpid()}" in result.stderr
        started = time.monotonic()
        result = vzhost.run("vzpkgcache", "--timeout", "1.5", MINIMAL)
        assert result.returncode == 9
        assert time.monotonic() - started >= 1.5


def _wait_for_bootstrap(vzhost: VzHost, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        roots = [p / "root" / "usr" for p in vzhost.leftovers()]
        if any(r.exists() for r in roots):
            return
        assert proc.poll() is None, "the build ended before it could be interrupted"
        time.sleep(0.2)
    raise AssertionError("bootstrap did not start")


def _descendants_alive(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_interrupted_build_leaves_no_partial_cache(vzhost: VzHost, how: str) -> None:
    previous = sha256(vzhost.archive(MINIMAL))
    proc = vzhost.popen("vzpkgcache", "-f", MINIMAL)
    _wait_for_bootstrap(vzhost, proc)
    proc.send_signal(signal.Signals[how])
    proc.communicate(timeout=60)
    if how == "SIGINT":
        assert proc.returncode == 130
        assert vzhost.leftovers() == []  # cleaned up on the way out
    # Whatever was started dies with it (PR_SET_PDEATHSIG + PID namespace).
    deadline = time.monotonic() + 10
    while _descendants_alive(str(vzhost.cache_dir)) or _descendants_alive("/dev/shm/.tmp-"):
        assert time.monotonic() < deadline, "bootstrap processes outlived vzpkgcache"
        time.sleep(0.2)
    assert mounts_mentioning(".tmp-") == []  # the mounts died with the namespace
    assert sha256(vzhost.archive(MINIMAL)) == previous
    # The next build sweeps whatever a kill -9 left and finds the cache up to date.
    result = vzhost.build(MINIMAL)
    assert result["returncode"] == 0
    assert result["status"] == "up-to-date" or upstream_moved(result)
    assert vzhost.leftovers() == []


def test_default_set_is_a_classic_server(vzhost: VzHost) -> None:
    name = "debian-12-x86_64-default"
    result = vzhost.build(name)
    assert result["returncode"] == 0, result["stderr"]
    names = {p["name"] for p in vzhost.manifest(name)["packages"]}
    assert {"sysvinit-core", "openssh-server", "inetutils-syslogd", "cron"} <= names
    assert "systemd-sysv" not in names
    entries = members(vzhost.archive(name))
    assert "./sbin/init" in entries or "./usr/sbin/init" in entries
    assert not [n for n in entries if "/etc/ssh/ssh_host_" in n]


def test_remove_needs_names_and_removes_old_too(vzhost: VzHost) -> None:
    result = vzhost.run("vzpkgcache", "-r")
    assert result.returncode == 20
    result = vzhost.run("vzpkgcache", "-r", "debian-12-x86_64-hooked")
    assert result.returncode == 0
    assert not vzhost.archive("debian-12-x86_64-hooked").exists()
    listed = vzhost.run("vzpkgls", "-c")
    assert "debian-12-x86_64-hooked" not in listed.stdout.split()
    assert MINIMAL in listed.stdout.split()


def test_debootstrap_is_selectable(vzhost: VzHost, tmp_path: Path) -> None:
    env = {
        **vzhost.env,
        "VZPKG_BOOTSTRAP_TOOL": "debootstrap",
        "VZPKG_CACHE_DIR": str(tmp_path / "cache"),
    }
    result = subprocess.run(
        [str(BIN / "vzpkgcache"), "-q", MINIMAL],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    manifest = (tmp_path / "cache" / f"{MINIMAL}.json").read_text()
    assert '"tool": "debootstrap"' in manifest
    entries = members(tmp_path / "cache" / f"{MINIMAL}.tar.zst")
    assert "SCHILY.xattr.security.capability" in entries["./usr/bin/ping"].pax_headers
    # debootstrap knows one suite; the root's sources name every repository of the template.
    sources = read_member(tmp_path / "cache" / f"{MINIMAL}.tar.zst", "./etc/apt/sources.list")
    assert b"bookworm-security" in sources and b"bookworm-updates" in sources
