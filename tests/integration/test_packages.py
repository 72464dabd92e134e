"""Packages in VPSs (issue 12, first part): vzpkgls CTID and vzpkg list CTID read what a VPS
has installed on the host, from its dpkg status, without running anything of the VPS; its root
plants what it likes there."""

from __future__ import annotations

import json
import time

import pytest

from tests.integration import test_resources
from tests.integration.conftest import VzHost
from tests.integration.test_network import vzctl

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
