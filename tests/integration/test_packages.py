"""Packages in VPSs (issue 12): vzpkgls CTID and vzpkg list CTID read what a VPS has installed
on the host, from its dpkg status, without running anything of the VPS (its root plants what it
likes there); vzpkg install|update|remove|info and vzapt change a running Debian VPS with real
packages from the host's Debian mirror, fetched on the host into the shared package cache and
installed by the VPS's own apt-get."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_resources
from tests.integration.conftest import VzHost
from tests.integration.test_network import conf_of, vzctl

pytestmark = [pytest.mark.root, pytest.mark.slow]
host, ctid = test_resources.host, test_resources.ctid  # the fixtures: a minimal VPS per test

QUERY = r"dpkg-query -W -f '${db:Status-Status} ${Package} ${Version} ${Architecture}\n'"


def listed(host: VzHost, *args: str, code: int = 0) -> str:
    proc = host.run(*args)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout if code == 0 else proc.stderr


def test_what_dpkg_says_inside_is_what_the_host_lists(host: VzHost, ctid: str) -> None:
    # Stopped: mounted for the reading, and unmounted again.
    stopped = listed(host, "vzpkgls", ctid)
    assert "mounted" not in vzctl(host, "status", ctid).stdout.replace("unmounted", "")
    vzctl(host, "start", ctid)
    inside = vzctl(host, "exec2", ctid, QUERY).stdout.splitlines()
    want = sorted(line.split(" ", 1)[1] for line in inside if line.startswith("installed "))
    assert sorted(listed(host, "vzpkgls", ctid).splitlines()) == want
    assert sorted(stopped.splitlines()) == want
    assert listed(host, "vzpkg", "list", ctid) == listed(host, "vzpkgls", ctid)
    data = json.loads(listed(host, "vzpkg", "list", "--json", ctid))
    assert data["family"] == "deb" and data["ctid"] == int(ctid)
    assert any(p["name"] == "tzdata" and p["arch"] == "all" for p in data["packages"])
    # A change inside shows at once.
    vzctl(host, "exec2", ctid, "dpkg --purge tzdata >/dev/null")
    assert "tzdata" not in listed(host, "vzpkg", "list", "-q", ctid).split()
    assert "7999999" in listed(host, "vzpkg", "list", "7999999", code=16)


def test_a_planted_database_is_refused_not_followed(host: VzHost, ctid: str) -> None:
    vzctl(host, "start", ctid)
    vzctl(host, "exec2", ctid, "mv /var/lib/dpkg/status /s; ln -s /etc/shadow /var/lib/dpkg/status")
    assert "no symlink" in listed(host, "vzpkgls", ctid, code=1)
    vzctl(host, "exec2", ctid, "rm /var/lib/dpkg/status; mkfifo /var/lib/dpkg/status")
    started = time.monotonic()
    assert "cannot read" in listed(host, "vzpkgls", ctid, code=1)  # no hang on a FIFO
    assert time.monotonic() - started < 10
    vzctl(host, "exec2", ctid, "rm /var/lib/dpkg/status; truncate -s 300G /var/lib/dpkg/status")
    assert "at most" in listed(host, "vzpkgls", ctid, code=1)  # not read into memory


# -- transactions ------------------------------------------------------------------------------


def pkg(host: VzHost, *args: str, code: int = 0, env: dict[str, str] | None = None) -> str:
    """vzpkg ARGS: its stdout (stderr when it is to fail with ``code``)."""
    proc = host.run("vzpkg", *args, timeout=600, env=env)
    assert proc.returncode == code, f"vzpkg {' '.join(args)}: {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout if code == 0 else proc.stderr


def transaction(host: VzHost, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(pkg(host, *args, "--json", env=env))
    return data


def inside(host: VzHost, ctid: str, command: str) -> str:
    return vzctl(host, "exec2", ctid, command).stdout


def vps_mounts(host: VzHost, ctid: str, below: str) -> list[str]:
    """The mount points below ``below`` inside the VPS."""
    points = inside(host, ctid, "cut -d' ' -f2 /proc/mounts").split()
    return [p for p in points if p == below or p.startswith(below + "/")]


def status_sum(host: VzHost, ctid: str) -> str:
    return inside(host, ctid, "sha256sum /var/lib/dpkg/status")


def names(entries: list[dict[str, str]]) -> set[str]:
    return {e["name"] for e in entries}


def pool(host: VzHost) -> Path:
    return host.pkgcache_dir / "debian-12-x86_64"


def snapshot(*directories: Path) -> dict[str, tuple[int, str]]:
    """Every file below ``directories``: mode and SHA256 (or link target)."""
    found = {}
    for directory in directories:
        for path in sorted(directory.rglob("*")):
            st = path.lstat()
            if path.is_symlink():
                what = os.readlink(path)
            elif path.is_file():
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = "dir"
            found[str(path)] = (st.st_mode, what)
    return found


def two_versions(host: VzHost) -> tuple[str, str, str]:
    """A small package the mirror has in two versions (bookworm and one of its updates) that
    needs nothing but libc6: (name, older, newer)."""
    lists = host.pkgcache_dir / "debian-12-x86_64.apt" / "lists"
    versions: dict[str, set[str]] = {}
    small: set[str] = set()
    for path in lists.glob("*_Packages"):
        stanza: dict[str, str] = {}
        for line in [*path.read_text(errors="replace").splitlines(), ""]:
            if line and not line.startswith(" ") and ": " in line:
                key, value = line.split(": ", 1)
                stanza[key] = value
            elif not line and stanza:
                name = stanza.get("Package", "")
                versions.setdefault(name, set()).add(stanza.get("Version", ""))
                deps = stanza.get("Depends", "") + stanza.get("Pre-Depends", "")
                if int(stanza.get("Size", "0")) < 100_000 and set(
                    d.split("(")[0].strip() for d in deps.split(",") if d.strip()
                ) <= {"libc6"}:
                    small.add(name)
                stanza = {}
    candidates = sorted(n for n in small if len(versions[n]) == 2)
    assert candidates, "no small package with two versions on the mirror"
    name = "libeot0" if "libeot0" in candidates else candidates[0]
    older, newer = sorted(versions[name], key=functools.cmp_to_key(_compare))
    return name, older, newer


def _compare(a: str, b: str) -> int:
    return subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode * 2 - 1


def test_install_update_remove_in_a_running_debian_vps(host: VzHost, ctid: str) -> None:
    assert "not running" in pkg(host, "install", ctid, "hello", code=15)
    vzctl(host, "start", ctid)
    # figlet's postinst registers an alternative: a maintainer script that runs inside only.
    done = transaction(host, "install", ctid, "hello", "figlet")
    assert {"hello", "figlet"} <= names(done["installed"]), done
    assert done["source"] == "host package cache" and not done["upgraded"]
    assert inside(host, ctid, "hello") == "Hello, world!\n"
    assert (
        inside(host, ctid, "readlink /etc/alternatives/figlet").strip() == "/usr/bin/figlet-figlet"
    )
    listed_now = listed(host, "vzpkgls", ctid).splitlines()
    assert any(line.startswith("hello 2.") for line in listed_now)
    # Nothing of the transaction stays inside: no view of the cache, no transaction directory.
    assert not vps_mounts(host, ctid, "/run/vzpkg")
    assert inside(host, ctid, "ls /run/vzpkg").split() == []
    # -n: what would change, and nothing changes.
    before = status_sum(host, ctid)
    assert "would install sl " in pkg(host, "install", "-n", ctid, "sl")
    check = transaction(host, "install", "-n", ctid, "sl")
    assert check["check_only"] and "sl" in names(check["installed"])
    assert status_sum(host, ctid) == before
    assert "sl" not in listed(host, "vzpkg", "list", "-q", ctid).split()
    # info: the repositories' word and the VPS's.
    info = json.loads(pkg(host, "info", "--json", ctid, "hello", "sl"))
    assert info[0]["installed"] == info[0]["candidate"] and info[1]["installed"] is None
    assert info[1]["summary"]
    # update: an older version installed on purpose, then brought up to date.
    name, older, newer = two_versions(host)
    done = transaction(host, "install", ctid, f"{name}={older}")
    assert [(e["name"], e["version"]) for e in done["installed"]] == [(name, older)]
    assert f"would upgrade {name} {older} -> {newer}" in pkg(host, "update", "-n", ctid, name)
    inside(host, ctid, f"apt-mark auto {name}")
    done = transaction(host, "update", ctid)  # everything: apt-get upgrade --with-new-pkgs
    assert {"name": name, "arch": "amd64", "from": older, "to": newer} in done["upgraded"]
    assert name in inside(host, ctid, "apt-mark showauto").split()  # its mark kept
    assert f"{name} {newer} amd64" in listed(host, "vzpkgls", ctid).splitlines()
    # remove: what depends on it goes too (cowsay is not there: only hello).
    done = transaction(host, "remove", ctid, "hello")
    assert names(done["removed"]) == {"hello"} and not done["installed"]
    assert "hello" not in listed(host, "vzpkgls", ctid).split()
    # vzapt: apt-get's own semantics.
    proc = host.run("vzapt", ctid, "install", "--no-install-recommends", "sl")
    assert proc.returncode == 0 and "Setting up sl" in proc.stderr, proc.stderr
    assert proc.stdout.startswith(f"CT {ctid}: ") and "installed" in proc.stdout
    proc = host.run("vzapt", ctid, "purge", "sl")
    assert proc.returncode == 0 and "Removing sl" in proc.stderr, proc.stderr
    assert "sl" not in listed(host, "vzpkgls", ctid).split()


def test_the_second_vps_of_a_template_fetches_nothing(host: VzHost, ctid: str) -> None:
    for stale in pool(host).glob("cowsay_*.deb"):
        stale.unlink()
    second = str(int(ctid) + 100000)
    vzctl(host, "create", second, "--ostemplate", test_resources.MINIMAL)
    try:
        vzctl(host, "start", ctid)
        vzctl(host, "start", second)
        first = transaction(host, "install", ctid, "cowsay")
        assert first["fetched"] >= 1 and "cowsay" in names(first["installed"])
        files = snapshot(pool(host))
        again = transaction(host, "install", second, "cowsay")
        assert again["fetched"] == 0 and names(again["installed"]) == names(first["installed"])
        assert snapshot(pool(host)) == files  # nothing downloaded, nothing rewritten
        # The shared files are the host root's, read-only to every VPS.
        for path in [*pool(host).glob("cowsay_*.deb"), pool(host)]:
            st = path.stat()
            assert st.st_uid == 0 and not st.st_mode & 0o022, path
    finally:
        host.run("vzctl", "stop", "--fast", second)
        host.run("vzctl", "destroy", second)


def test_refusals_say_what_went_wrong_and_change_nothing(host: VzHost, ctid: str) -> None:
    assert "7999999" in pkg(host, "install", "7999999", "hello", code=16)
    vzctl(host, "start", ctid)
    before = status_sum(host, ctid)
    error = pkg(host, "install", ctid, "no-such-package-here", code=70)
    assert "Unable to locate package no-such-package-here" in error
    assert "hint" in error and "vzpkg list --available" in error
    assert "bad package name" in pkg(host, "install", ctid, "--", "-oDir::Etc=/", code=21)
    # Conflicting requests: apt-get's own refusal, in one message.
    error = pkg(host, "install", ctid, "exim4-daemon-light", "exim4-daemon-heavy", code=70)
    assert "E:" not in error and ("conflict" in error.lower() or "broken" in error.lower())
    assert status_sum(host, ctid) == before
    # A pool file that is not what the signed lists say is fetched again, never installed.
    transaction(host, "install", "-n", ctid, "sl")  # the lists are there
    for stale in pool(host).glob("sl_*.deb"):
        stale.write_bytes(b"\0" * stale.stat().st_size)  # same size: apt alone would take it
    done = transaction(host, "install", ctid, "sl")
    assert done["fetched"] >= 1 and "sl" in names(done["installed"])
    assert inside(host, ctid, "dpkg --verify sl; echo rc=$?").strip() == "rc=0"
    # A VPS whose template the metadata does not know: its keys are unknown.
    config = conf_of(host, ctid)
    text = config.read_text()
    config.write_text(text.replace(test_resources.MINIMAL, "debian-99-x86_64-minimal"))
    try:
        assert "not in the metadata" in pkg(host, "install", ctid, "hello", code=24)
    finally:
        config.write_text(text)


def _second_config(host: VzHost, tmp_path: Path, extra: str) -> dict[str, str]:
    """An environment whose host configuration is ``host``'s with its own package cache and
    ``extra`` settings (later keys win)."""
    conf = tmp_path / "vzpkg.conf"
    conf.write_text(host.conf.read_text() + f'PKGCACHE_DIR="{tmp_path}/pkgcache"\n' + extra)
    return {**host.env, "VZPKG_CONF": str(conf)}


def test_a_repository_not_signed_by_the_templates_keys_is_refused(
    host: VzHost, ctid: str, tmp_path: Path
) -> None:
    metadata = tmp_path / "metadata"
    shutil.copytree(host.metadata_dir, metadata)
    dist = metadata / "debian" / "distribution.toml"
    dist.write_text(dist.read_text().replace("debian-archive-keyring.gpg",
                                             "debian-archive-removed-keys.gpg"))  # fmt: skip
    env = _second_config(host, tmp_path, f'METADATA_DIR="{metadata}"\n')
    vzctl(host, "start", ctid)
    before = status_sum(host, ctid)
    error = pkg(host, "install", ctid, "hello", code=202, env=env)
    assert "signature" in error
    assert status_sum(host, ctid) == before
    assert not list((tmp_path / "pkgcache").rglob("*.deb"))


class _CuttingMirror(http.server.BaseHTTPRequestHandler):
    """The host's Debian mirrors on loopback (/0/... and /1/...), every .deb cut in half."""

    upstream: tuple[str, str] = ("", "")

    def do_GET(self) -> None:
        base = self.upstream[int(self.path[1])]
        try:
            with urllib.request.urlopen(base + self.path[2:], timeout=60) as answer:
                body = answer.read()
        except urllib.error.HTTPError as e:
            self.send_error(e.code)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path.endswith(".deb") else body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_cut_download_leaves_the_vps_as_it_was(host: VzHost, ctid: str, tmp_path: Path) -> None:
    from vzpkg.pkgmgr.apt import find_host_mirror, host_apt_sources

    sources = host_apt_sources()
    _CuttingMirror.upstream = (
        find_host_mirror(sources, ["bookworm"]) or "",
        find_host_mirror(sources, ["bookworm-security"]) or "",
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CuttingMirror)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        mirrors = f'DEBIAN_MIRROR="{url}/0"\nDEBIAN_SECURITY_MIRROR="{url}/1"\n'
        env = _second_config(host, tmp_path, mirrors)
        vzctl(host, "start", ctid)
        before = status_sum(host, ctid)
        error = pkg(host, "install", ctid, "hello", code=206, env=env)
        assert "hello_" in error and "cut after" in error
        assert status_sum(host, ctid) == before
        assert not list((tmp_path / "pkgcache" / "debian-12-x86_64").glob("*.deb"))
        assert not vps_mounts(host, ctid, "/run/vzpkg")
    finally:
        server.shutdown()
        server.server_close()


def test_kill_9_mid_transaction_leaves_nothing_locked(host: VzHost, ctid: str) -> None:
    vzctl(host, "start", ctid)
    pkg(host, "install", "-n", ctid, "figlet")  # the lists are there
    victim = host.popen("vzpkg", "install", ctid, "figlet", "cowsay")
    assert victim.stderr is not None
    for line in victim.stderr:
        if "inside" in line:
            break
    victim.kill()
    victim.wait()
    done = transaction(host, "install", ctid, "sl")  # waits for apt-get that outlived it
    assert "sl" in names(done["installed"])
    assert inside(host, ctid, "dpkg --audit; echo rc=$?").strip() == "rc=0"
    assert not vps_mounts(host, ctid, "/run/vzpkg")
    assert not list(host.lock_dir.glob("*.lck")) or all(
        subprocess.run(["flock", "-n", str(p), "true"]).returncode == 0
        for p in host.lock_dir.glob("*.lck")
    )


HOSTILE = r"""#!/bin/sh
for d in /run/vzpkg/apt /run/vzpkg/pool; do
  touch $d/MARK; echo evil >> $d/sources.list; chmod 777 $d
  for f in $d/*.deb $d/lists/*; do echo evil >> "$f"; done
  mount -o remount,bind,rw $d && touch $d/MARK2
  mount -t tmpfs x $d 2>/dev/null
done
touch /MARK-INSIDE
exit 3
"""


@pytest.mark.parametrize("userns", ["yes", "no"])
def test_a_hostile_apt_get_and_dpkg_change_nothing_on_the_host(
    host: VzHost, ctid: str, userns: str
) -> None:
    if userns == "no":  # a privileged VPS: its root is the host's, so it is given copies
        vzctl(host, "destroy", ctid)
        vzctl(host, "create", ctid, "--ostemplate", test_resources.MINIMAL, "--userns", "no")
    vzctl(host, "start", ctid)
    pkg(host, "install", ctid, "hello")  # the lists and the package are in the shared cache
    pkg(host, "remove", ctid, "hello")
    vzctl(host, "exec2", ctid, "for t in apt-get dpkg; do cat > /usr/bin/$t <<'EOF'\n"
          + HOSTILE + "EOF\nchmod 755 /usr/bin/$t; done")  # fmt: skip
    shared = (pool(host), host.pkgcache_dir / "debian-12-x86_64.apt")
    before = snapshot(*shared)
    error = pkg(host, "install", ctid, "hello", code=70)
    assert "apt-get in CT" in error and "(exit 3)" in error
    assert snapshot(*shared) == before
    assert not list(host.pkgcache_dir.rglob("MARK*"))
    assert inside(host, ctid, "ls /MARK-INSIDE").strip() == "/MARK-INSIDE"  # it did run
    assert not vps_mounts(host, ctid, "/run/vzpkg")


def test_a_failing_maintainer_script_is_reported_and_can_be_finished(
    host: VzHost, ctid: str
) -> None:
    vzctl(host, "start", ctid)
    # figlet's postinst registers an alternative: a directory in its place makes it fail.
    inside(host, ctid, "mkdir -p /etc/alternatives/figlet/in-the-way")
    error = pkg(host, "install", ctid, "figlet", code=70)
    assert "dpkg returned an error code" in error and "dpkg --audit" in error
    assert inside(host, ctid, "dpkg-query -W -f '${db:Status-Abbrev}' figlet").strip() == "iF"
    assert "figlet" in inside(host, ctid, "apt-mark showmanual").split()  # marked all the same
    # Half done blocks the next install (as apt-get's own run would), with the same hint.
    assert "dpkg --audit" in pkg(host, "install", ctid, "sl", code=70)
    inside(host, ctid, "rm -r /etc/alternatives/figlet")
    proc = host.run("vzapt", ctid, "install", "-f")
    assert proc.returncode == 0, proc.stderr
    assert inside(host, ctid, "dpkg --audit; echo rc=$?").strip() == "rc=0"
    assert "figlet 2." in listed(host, "vzpkgls", ctid)


def test_an_interrupt_once_apt_get_runs_lets_it_finish(host: VzHost, ctid: str) -> None:
    vzctl(host, "start", ctid)
    pkg(host, "install", "-n", ctid, "cowsay")  # the lists are there
    victim = host.popen("vzpkg", "install", ctid, "cowsay")
    assert victim.stderr is not None
    for line in victim.stderr:
        if "Unpacking" in line:
            break
    victim.send_signal(signal.SIGINT)
    _, error = victim.communicate(timeout=300)
    assert victim.returncode == 130 and "was let finish" in error, error
    assert inside(host, ctid, "dpkg --audit; echo rc=$?").strip() == "rc=0"
    assert "cowsay" in listed(host, "vzpkg", "list", "-q", ctid).split()
