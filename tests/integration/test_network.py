"""VPS networking (issue 10), tried from a LAN: routed addresses (OpenVZ's venet, on veth) and
bridged veth interfaces. vzctl runs in the test host's own network namespace (netharness): every
veth, route and proxy entry lives there, and the lan is a namespace joined to it; traffic never
leaves the two.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import netharness
from tests.integration.conftest import VzHost, ctid_base, static_tool
from tests.integration.netharness import LAN_V4, LAN_V6, NetLab

pytestmark = [pytest.mark.root, pytest.mark.network, pytest.mark.slow]

MINIMAL = "debian-12-x86_64-minimal"
PORT = "8080"
_next = iter(range(ctid_base(7300), 10**8))


@pytest.fixture(scope="module")
def host(vzhost: VzHost) -> VzHost:
    return vzhost.with_cache(MINIMAL)


@pytest.fixture(scope="module")
def net(host: VzHost) -> NetLab:
    assert host.net is not None
    return host.net


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """netprobe.c, built statically: a server for the VPSs, a client for the lan."""
    return static_tool(tmp_path_factory, Path(__file__).with_name("netprobe.c"))


@pytest.fixture
def cts(host: VzHost, net: NetLab) -> Iterator[list[str]]:
    """CTIDs for one test, stopped and destroyed afterwards; the test host's network must
    then be as it was before the test."""
    before = net.host_objects()
    taken: list[str] = []
    yield taken
    for ctid in taken:
        host.run("vzctl", "stop", "--fast", ctid)
        host.run("vzctl", "destroy", ctid)
    assert net.host_objects() == before


def new_ct(cts: list[str]) -> str:
    ctid = str(next(_next))
    cts.append(ctid)
    return ctid


def vzctl(
    host: VzHost, *args: str, code: int = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = host.run("vzctl", *args, timeout=120, env=env)
    assert proc.returncode == code, f"vzctl {' '.join(args)}: {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def conf_of(host: VzHost, ctid: str) -> Path:
    return host.base / "conf" / f"{ctid}.conf"


def serving(host: VzHost, ctid: str, probe: Path) -> None:
    """netprobe serving on PORT inside the VPS, as a process of the VPS."""
    proc = subprocess.run(
        host.argv("vzctl", "exec2", ctid, "cat > /netprobe && chmod 755 /netprobe"),
        input=probe.read_bytes(),
        env=host.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    vzctl(host, "exec", ctid, f"/netprobe serve {PORT} 1000 </dev/null >/serve.log 2>&1 &")
    deadline = time.monotonic() + 10
    while "listening" not in vzctl(host, "exec2", ctid, "cat /serve.log || true").stdout:
        assert time.monotonic() < deadline, "netprobe did not start in the VPS"
        time.sleep(0.05)


def reach(run: object, probe: Path, address: str, ms: int = 3000) -> str | None:
    """The answer of the server at ``address`` (None: none within ``ms``), from where ``run``
    (NetLab.in_lan or in_host) runs."""
    proc = run(str(probe), "connect", address, PORT, str(ms))  # type: ignore[operator]
    return proc.stdout.strip() if proc.returncode == 0 else None


def from_vps(host: VzHost, ctid: str, address: str, source: str | None = None) -> str | None:
    cmd = f"/netprobe connect {address} {PORT} 1500" + (f" {source}" if source else "")
    proc = host.run("vzctl", "exec2", ctid, cmd, timeout=60)
    return proc.stdout.strip() if proc.returncode == 0 else None


# --- routed mode ----------------------------------------------------------------------------


def test_a_routed_vps_answers_the_lan_over_ipv4_and_ipv6(
    host: VzHost, net: NetLab, probe: Path, cts: list[str]
) -> None:
    ctid = new_ct(cts)
    vzctl(host, "create", ctid, "--ostemplate", MINIMAL, "--ipadd", "198.51.100.45")
    vzctl(host, "set", ctid, "--ipadd", "2001:DB8:51::0045", "--save")
    assert 'IP_ADDRESS="198.51.100.45 2001:db8:51::45"' in conf_of(host, ctid).read_text()
    vzctl(host, "start", ctid)
    serving(host, ctid, probe)
    assert reach(net.in_lan, probe, "198.51.100.45") == "pong from 198.51.100.45"
    assert reach(net.in_lan, probe, "2001:db8:51::45") == "pong from 2001:db8:51::45"
    assert reach(net.in_host, probe, "198.51.100.45") == "pong from 198.51.100.45"
    # The VPS's side: venet0 with OpenVZ's labels, lo up, default routes via the gateway.
    inside = vzctl(host, "exec", ctid, "ip -o addr; ip route; ip -6 route").stdout
    assert "198.51.100.45/32 scope global venet0:0" in inside
    assert "2001:db8:51::45/128" in inside and "127.0.0.1/8" in inside
    assert "default via 169.254.0.1 dev venet0 onlink" in inside
    assert "default via fe80::1 dev venet0" in inside
    # The host's side: what each object is, and the record of it.
    objects = net.host_objects()
    assert f"venet0.{ctid}" in objects["links"]
    assert f"198.51.100.45 dev venet0.{ctid} scope link " in objects["routes4"]
    assert "198.51.100.45 dev lan0 proxy " in objects["proxies"]
    assert "2001:db8:51::45 dev lan0 proxy " in objects["proxies"]
    state = json.loads((host.base / "run" / "net" / f"{ctid}.json").read_text())
    assert state["addresses"] == ["198.51.100.45", "2001:db8:51::45"]
    rp = net.in_host("cat", f"/proc/sys/net/ipv4/conf/venet0.{ctid}/rp_filter").stdout
    assert rp.strip() == "1"
    listed = json.loads(vzctl(host, "-q", "status", ctid, "--json").stdout)
    assert listed["running"]
    row = json.loads(host.run("vzlist", "-j", ctid).stdout)[0]
    assert row["ip"] == ["198.51.100.45", "2001:db8:51::45"]
    text = host.run("vzlist", "-H", "-o", "ctid,ip", ctid).stdout.split()
    assert text == [ctid, "198.51.100.45", "2001:db8:51::45"]
    vzctl(host, "stop", ctid)
    assert reach(net.in_lan, probe, "198.51.100.45", 500) is None


def test_without_neighbour_devices_the_lan_cannot_reach_it(
    host: VzHost, net: NetLab, probe: Path, cts: list[str]
) -> None:
    ctid = new_ct(cts)
    vzctl(host, "create", ctid, "--ostemplate", MINIMAL, "--ipadd", "198.51.100.46")
    vzctl(host, "set", ctid, "--ipadd", "2001:db8:51::46", "--save")
    env = {**host.env, "VZPKG_NEIGHBOUR_DEVS": "list:"}
    vzctl(host, "start", ctid, env=env)
    serving(host, ctid, probe)
    assert not any(ctid in p for p in net.host_objects()["proxies"])
    assert net.host_objects()["proxies"] == []
    assert reach(net.in_lan, probe, "198.51.100.46", 1500) is None
    assert reach(net.in_lan, probe, "2001:db8:51::46", 1500) is None
    assert reach(net.in_host, probe, "198.51.100.46") == "pong from 198.51.100.46"
    # detect: announced where the host has the address's network (lan0 here).
    vzctl(host, "stop", ctid)
    vzctl(host, "start", ctid, env={**host.env, "VZPKG_NEIGHBOUR_DEVS": "detect"})
    assert "198.51.100.46 dev lan0 proxy " in net.host_objects()["proxies"]


def test_two_vpss_reach_each_other_and_a_vps_cannot_send_from_a_foreign_address(
    host: VzHost, net: NetLab, probe: Path, cts: list[str]
) -> None:
    one, two = new_ct(cts), new_ct(cts)
    for ctid, address in ((one, "198.51.100.51"), (two, "198.51.100.52")):
        vzctl(host, "create", ctid, "--ostemplate", MINIMAL, "--ipadd", address)
        vzctl(host, "set", ctid, "--ipadd", address.replace("198.51.100.", "2001:db8:51::"),
              "--save")  # fmt: skip
        vzctl(host, "start", ctid)
        serving(host, ctid, probe)
    assert f"iif venet0.{one} blackhole" in " ".join(net.host_objects()["rules"])
    assert from_vps(host, one, "198.51.100.52") == "pong from 198.51.100.52"
    assert from_vps(host, two, "198.51.100.51") == "pong from 198.51.100.51"
    server = subprocess.Popen(
        ["nsenter", f"--net={netharness.NETNS_DIR / net.lan_ns}", "--", str(probe), "serve",
         PORT, "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline() == b"listening\n"
        assert from_vps(host, one, LAN_V4) == f"pong from {LAN_V4}"
        # An address it was not given (another VPS's, or a free one of the lan): dropped by
        # the host (rp_filter on its host end), so no answer comes.
        assert from_vps(host, one, LAN_V4, source="198.51.100.52") is None
        assert from_vps(host, one, LAN_V4, source="198.51.100.99") is None
        assert from_vps(host, one, LAN_V4, source="198.51.100.51") == f"pong from {LAN_V4}"
        # IPv6 has no rp_filter: the host's policy rules drop the same.
        assert from_vps(host, one, LAN_V6) == f"pong from {LAN_V6}"
        assert from_vps(host, one, LAN_V6, source="2001:db8:51::52") is None
        assert from_vps(host, one, LAN_V6, source="2001:db8:51::99") is None
        assert from_vps(host, one, LAN_V6, source="2001:db8:51::51") == f"pong from {LAN_V6}"
        assert from_vps(host, two, "2001:db8:51::51") == "pong from 2001:db8:51::51"
    finally:
        server.kill()
        server.wait()


def test_live_ipadd_and_ipdel_change_reachability_files_routes_and_config(
    host: VzHost, net: NetLab, probe: Path, cts: list[str]
) -> None:
    ctid = new_ct(cts)
    vzctl(host, "create", ctid, "--ostemplate", MINIMAL, "--hostname", "web")
    vzctl(host, "start", ctid)  # no address: no veth at all
    assert not any(ctid in link for link in net.host_objects()["links"])
    vzctl(host, "exec", ctid, "mkdir /etc/network && echo 'auto lo' > /etc/network/interfaces")
    serving(host, ctid, probe)
    vzctl(host, "set", ctid, "--ipadd", "198.51.100.61", "--ipadd", "2001:db8:51::61", "--save")
    assert reach(net.in_lan, probe, "198.51.100.61") == "pong from 198.51.100.61"
    assert reach(net.in_lan, probe, "2001:db8:51::61") == "pong from 2001:db8:51::61"
    interfaces = vzctl(host, "exec", ctid, "cat /etc/network/interfaces").stdout
    assert interfaces.startswith("auto lo\n")
    assert "up ip addr replace 198.51.100.61/32 dev venet0 label venet0:0" in interfaces
    assert "up ip -6 addr replace 2001:db8:51::61/128 dev venet0 nodad" in interfaces
    assert "198.51.100.61\tweb" in vzctl(host, "exec", ctid, "cat /etc/hosts").stdout
    # Without --save: live only.
    vzctl(host, "set", ctid, "--ipadd", "198.51.100.62", "--ipdel", "198.51.100.61")
    assert reach(net.in_lan, probe, "198.51.100.62") == "pong from 198.51.100.62"
    assert reach(net.in_lan, probe, "198.51.100.61", 800) is None
    objects = net.host_objects()
    assert not any("198.51.100.61" in r for r in objects["routes4"] + objects["proxies"])
    assert 'IP_ADDRESS="198.51.100.61 2001:db8:51::61"' in conf_of(host, ctid).read_text()
    # all: every address, the veth with them; the guest file loses its block.
    vzctl(host, "set", ctid, "--ipdel", "all", "--save")
    assert reach(net.in_lan, probe, "198.51.100.62", 800) is None
    assert reach(net.in_lan, probe, "2001:db8:51::61", 800) is None
    assert not any(ctid in link for link in net.host_objects()["links"])
    assert vzctl(host, "exec", ctid, "cat /etc/network/interfaces").stdout == "auto lo\n"
    assert "IP_ADDRESS" not in conf_of(host, ctid).read_text()
    # A restart of the guest's networking keeps the addresses: the file brings them back.
    vzctl(host, "set", ctid, "--ipadd", "198.51.100.63", "--save")
    vzctl(host, "exec", ctid, "ip addr flush dev venet0 && ip route flush dev venet0")
    assert reach(net.in_lan, probe, "198.51.100.63", 800) is None
    up = [line.strip()[3:] for line in vzctl(host, "exec", ctid, "cat /etc/network/interfaces")
          .stdout.splitlines() if line.strip().startswith("up ")]  # fmt: skip
    vzctl(host, "exec", ctid, " && ".join(up))  # what ifup would run
    assert reach(net.in_lan, probe, "198.51.100.63") == "pong from 198.51.100.63"


def test_bad_and_conflicting_addresses_change_nothing(
    host: VzHost, net: NetLab, probe: Path, cts: list[str]
) -> None:
    one, two = new_ct(cts), new_ct(cts)
    vzctl(host, "create", one, "--ostemplate", MINIMAL, "--ipadd", "198.51.100.71")
    vzctl(host, "start", one)
    vzctl(host, "create", two, "--ostemplate", MINIMAL)
    vzctl(host, "start", two)
    conf = conf_of(host, two).read_text()
    objects = net.host_objects()
    for args in (("--ipadd", "abc"), ("--ipadd", "300.1.1.1"), ("--ipadd", "1.2.3.4/33")):
        proc = vzctl(host, "set", two, *args, "--save", code=21)
        assert "Bad parameter for --ipadd" in proc.stderr
    proc = vzctl(host, "set", two, "--ipadd", "198.51.100.71", "--save", code=78)
    assert "Address already in use" in proc.stderr and f"CT {one}" in proc.stderr
    proc = vzctl(host, "set", two, "--ipadd", "198.51.100.72", "--ipadd", "198.51.100.71",
                 code=78)  # fmt: skip
    assert conf_of(host, two).read_text() == conf and net.host_objects() == objects
    assert "198.51.100.72" not in vzctl(host, "exec", two, "ip -o addr").stdout
    # Saved while the holder was stopped: the start is refused, nothing is left.
    vzctl(host, "stop", two)
    vzctl(host, "set", two, "--ipadd", "198.51.100.71", "--save", code=78)
    vzctl(host, "stop", one)
    vzctl(host, "set", two, "--ipadd", "198.51.100.71", "--save")
    vzctl(host, "start", one)
    proc = vzctl(host, "start", two, code=78)
    assert "198.51.100.71" in proc.stderr
    assert net.host_objects() == objects
    assert "down" in vzctl(host, "status", two).stdout
    # A host end name that is taken: a failed start that leaves nothing behind.
    vzctl(host, "set", two, "--ipdel", "all", "--ipadd", "198.51.100.73", "--save")
    taken = net.in_host("ip", "link", "add", f"venet0.{two}", "type", "bridge")
    assert taken.returncode == 0, taken.stderr
    try:
        proc = vzctl(host, "start", two, code=34)
        assert f"venet0.{two}" in proc.stderr
        assert "down" in vzctl(host, "status", two).stdout
    finally:
        net.in_host("ip", "link", "del", f"venet0.{two}")
    assert net.host_objects() == objects
    assert not (host.base / "run" / "net" / f"{two}.json").exists()
    vzctl(host, "start", two)


def test_a_missing_host_sysctl_is_named_and_nothing_starts(
    host: VzHost, net: NetLab, cts: list[str]
) -> None:
    ctid = new_ct(cts)
    vzctl(host, "create", ctid, "--ostemplate", MINIMAL, "--ipadd", "198.51.100.81")
    before = net.host_objects()
    for name in ("net.ipv4.ip_forward",):
        net.sysctl(name, "0")
        try:
            proc = vzctl(host, "start", ctid, code=34)
            assert name in proc.stderr and "sysctl -w" in proc.stderr
        finally:
            net.sysctl(name, "1")
    vzctl(host, "set", ctid, "--ipdel", "all", "--ipadd", "2001:db8:51::81", "--save")
    for name in ("net.ipv6.conf.all.forwarding", "net.ipv6.conf.all.proxy_ndp"):
        net.sysctl(name, "0")
        try:
            proc = vzctl(host, "start", ctid, code=34)
            assert name in proc.stderr
        finally:
            net.sysctl(name, "1")
    assert net.host_objects() == before
    assert "down" in vzctl(host, "status", ctid).stdout


def test_nothing_is_left_after_stop_kill_failed_start_and_destroy(
    host: VzHost, net: NetLab, cts: list[str]
) -> None:
    before = net.host_objects()
    ctid = new_ct(cts)
    vzctl(host, "create", ctid, "--ostemplate", MINIMAL, "--ipadd", "198.51.100.91")
    vzctl(host, "set", ctid, "--ipadd", "2001:db8:51::91", "--save")
    for _ in range(50):
        vzctl(host, "start", ctid)
        vzctl(host, "stop", ctid, "--fast")
        assert net.host_objects() == before
    # kill -9 of init: status and start find it dead and clean up.
    vzctl(host, "start", ctid)
    state = host.base / "run" / "runc" / f"vz{ctid}" / "state.json"
    os.kill(json.loads(state.read_text())["init_process_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while "running" in vzctl(host, "status", ctid).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    vzctl(host, "start", ctid)
    assert sum(f"venet0.{ctid}" == link for link in net.host_objects()["links"]) == 1
    os.kill(json.loads(state.read_text())["init_process_pid"], signal.SIGKILL)
    time.sleep(0.3)
    vzctl(host, "stop", ctid)
    assert net.host_objects() == before
    # destroy of a VPS whose init died.
    vzctl(host, "start", ctid)
    os.kill(json.loads(state.read_text())["init_process_pid"], signal.SIGKILL)
    time.sleep(0.3)
    vzctl(host, "destroy", ctid)
    assert net.host_objects() == before
    assert not (host.base / "run" / "net" / f"{ctid}.json").exists()


# --- bridged mode ---------------------------------------------------------------------------


def test_a_bridged_vps_answers_on_its_address(
    host: VzHost, net: NetLab, probe: Path, cts: list[str]
) -> None:
    bridge = "vztbr0"
    for cmd in (
        ("ip", "link", "add", bridge, "type", "bridge"),
        ("ip", "addr", "add", "203.0.113.1/24", "dev", bridge),
        ("ip", "link", "set", bridge, "up"),
    ):
        assert net.in_host(*cmd).returncode == 0
    try:
        ctid = new_ct(cts)
        vzctl(host, "create", ctid, "--ostemplate", MINIMAL)
        vzctl(host, "set", ctid, "--netif_add", f"eth0,,,,{bridge}", "--save")
        text = conf_of(host, ctid).read_text()
        assert f'NETIF="ifname=eth0,bridge={bridge},mac=00:18:51:' in text
        assert f"host_ifname=veth{ctid}.0,host_mac=00:18:51:" in text
        vzctl(host, "start", ctid)
        links = net.in_host("ip", "-o", "link", "show", "master", bridge).stdout
        assert f"veth{ctid}.0" in links
        # The VPS configures its own interface (here as its root, with the VPS's ip).
        vzctl(host, "exec", ctid, "ip addr add 203.0.113.10/24 dev eth0")
        serving(host, ctid, probe)
        assert reach(net.in_host, probe, "203.0.113.10") == "pong from 203.0.113.10"
        row = json.loads(host.run("vzlist", "-j", ctid).stdout)[0]
        assert row["netif"][0]["host_ifname"] == f"veth{ctid}.0"
        # Live removal and addition.
        vzctl(host, "set", ctid, "--netif_del", "eth0")
        assert reach(net.in_host, probe, "203.0.113.10", 800) is None
        assert f"veth{ctid}.0" not in net.in_host("ip", "-o", "link").stdout
        vzctl(host, "set", ctid, "--netif_add", f"eth1,,,,{bridge}")
        assert f"veth{ctid}.0" in net.in_host("ip", "-o", "link", "show", "master", bridge).stdout
        vzctl(host, "set", ctid, "--netif_add", "eth0", "--save", code=21)  # saved: it has eth0
        vzctl(host, "set", ctid, "--netif_add", "bad/name", code=21)
        vzctl(host, "stop", ctid)
    finally:
        net.in_host("ip", "link", "del", bridge)


# --- found by trying it as an attacker and as a careless admin --------------------------------


def test_racing_starts_for_one_address_leave_the_winner_whole(
    host: VzHost, net: NetLab, probe: Path, cts: list[str]
) -> None:
    one, two = new_ct(cts), new_ct(cts)
    for ctid in (one, two):
        vzctl(host, "create", ctid, "--ostemplate", MINIMAL, "--ipadd", "198.51.100.110")
    procs = [host.popen("vzctl", "start", ctid) for ctid in (one, two)]
    codes = sorted(p.wait(timeout=120) for p in procs)
    assert codes == [0, 78], [p.communicate() for p in procs]
    winner = one if "running" in vzctl(host, "status", one).stdout else two
    assert net.host_objects()["proxies"] == ["198.51.100.110 dev lan0 proxy "]
    serving(host, winner, probe)
    assert reach(net.in_lan, probe, "198.51.100.110") == "pong from 198.51.100.110"


def test_an_address_taken_over_from_a_dead_vps_keeps_its_announcement(
    host: VzHost, net: NetLab, probe: Path, cts: list[str]
) -> None:
    dead, heir = new_ct(cts), new_ct(cts)
    vzctl(host, "create", dead, "--ostemplate", MINIMAL, "--ipadd", "198.51.100.111")
    vzctl(host, "create", heir, "--ostemplate", MINIMAL)
    vzctl(host, "start", dead)
    state = host.base / "run" / "runc" / f"vz{dead}" / "state.json"
    os.kill(json.loads(state.read_text())["init_process_pid"], signal.SIGKILL)  # its own end
    time.sleep(0.3)
    vzctl(host, "set", heir, "--ipadd", "198.51.100.111", "--save")
    vzctl(host, "start", heir)
    vzctl(host, "status", dead)  # cleans up after the dead one
    assert "198.51.100.111 dev lan0 proxy " in net.host_objects()["proxies"]
    serving(host, heir, probe)
    assert reach(net.in_lan, probe, "198.51.100.111") == "pong from 198.51.100.111"


def test_a_failed_live_change_is_undone_on_the_host(
    host: VzHost, net: NetLab, probe: Path, cts: list[str]
) -> None:
    ctid = new_ct(cts)
    vzctl(host, "create", ctid, "--ostemplate", MINIMAL, "--ipadd", "198.51.100.112")
    vzctl(host, "set", ctid, "--ipadd", "2001:db8:51::112", "--save")
    vzctl(host, "start", ctid)
    objects = net.host_objects()
    vzctl(host, "exec", ctid, "ip link set venet0 name tmp0")  # its root breaks its side
    vzctl(host, "set", ctid, "--ipadd", "198.51.100.113", code=34)
    vzctl(host, "set", ctid, "--ipdel", "198.51.100.112", code=34)
    assert net.host_objects() == objects
    vzctl(host, "exec", ctid, "ip link set tmp0 name venet0")
    vzctl(host, "set", ctid, "--ipdel", "198.51.100.112")
    assert not any("198.51.100.112" in r for r in net.host_objects()["routes4"])
    vzctl(host, "stop", ctid)  # the IPv6 entry, after the failures: gone too


def test_unusable_addresses_and_names_are_refused(host: VzHost, cts: list[str]) -> None:
    ctid = new_ct(cts)
    vzctl(host, "create", ctid, "--ostemplate", MINIMAL)
    conf = conf_of(host, ctid).read_text()
    for address in (
        "127.0.0.1", "224.0.0.1", "255.255.255.255", "0.0.0.1", "169.254.0.1", "fe80::1",
        "::1", "ff02::1", "::ffff:198.51.100.5", "2001:db8:51::99%eth0",
    ):  # fmt: skip
        proc = vzctl(host, "set", ctid, "--ipadd", address, "--save", code=21)
        assert "Bad parameter for --ipadd" in proc.stderr
    for spec in ('eth0,,"zz"', "eth0#", "e'th0", "eth0,,,,br#0"):
        vzctl(host, "set", ctid, "--netif_add", spec, "--save", code=21)
    assert conf_of(host, ctid).read_text() == conf


def test_host_ends_take_no_router_advertisements_and_filter_sources(
    host: VzHost, net: NetLab, cts: list[str]
) -> None:
    ctid = new_ct(cts)
    vzctl(host, "create", ctid, "--ostemplate", MINIMAL, "--ipadd", "198.51.100.114")
    vzctl(host, "set", ctid, "--netif_add", "eth0", "--save")
    vzctl(host, "start", ctid)
    for dev in (f"venet0.{ctid}", f"veth{ctid}.0"):
        for rel, value in (
            (f"ipv4/conf/{dev}/rp_filter", "1"),
            (f"ipv6/conf/{dev}/accept_ra", "0"),
            (f"ipv6/conf/{dev}/autoconf", "0"),
            (f"ipv6/conf/{dev}/accept_redirects", "0"),
        ):
            assert net.in_host("cat", f"/proc/sys/net/{rel}").stdout.strip() == value, rel


def test_a_huge_guest_file_is_refused_not_read(host: VzHost, cts: list[str]) -> None:
    ctid = new_ct(cts)
    vzctl(host, "create", ctid, "--ostemplate", MINIMAL)
    vzctl(host, "start", ctid)
    vzctl(host, "exec", ctid, "mkdir /etc/network && truncate -s 300M /etc/network/interfaces")
    proc = vzctl(host, "set", ctid, "--ipadd", "198.51.100.115", code=3)
    assert "/etc/network/interfaces" in proc.stderr and "larger than" in proc.stderr
