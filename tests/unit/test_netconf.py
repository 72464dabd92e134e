"""NETIF, --netif_add and NEIGHBOUR_DEVS values (vzpkg.ct.netconf), and the guest's network
files (vzpkg.ct.guest): parsed, checked, canonical, written back as OpenVZ writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from vzpkg.ct import guest, netconf
from vzpkg.ct.guest import GuestSettings, InitKind
from vzpkg.errors import ExitCode, VzError

TINI = InitKind("tini", ("/x",), "SIGTERM")


def test_netif_add_fills_openvz_defaults_and_is_stable() -> None:
    first = netconf.netif_add(101, "eth0", ())
    assert first.host_ifname == "veth101.0" and first.bridge is None
    assert first.mac.startswith("00:18:51:") and first.host_mac.startswith("00:18:51:")
    assert first.mac != first.host_mac
    assert netconf.netif_add(101, "eth0", ()) == first  # the same at every start
    assert netconf.netif_add(102, "eth0", ()).mac != first.mac
    second = netconf.netif_add(101, "eth1,,,,br0", (first,))
    assert second.host_ifname == "veth101.1" and second.bridge == "br0"
    text = netconf.netifs_text((first, second))
    assert text.startswith("ifname=eth0,mac=00:18:51:")
    assert ";ifname=eth1,bridge=br0,mac=" in text
    assert netconf.parse_netifs(text, 101) == (first, second)


def test_netif_add_takes_given_fields_canonical() -> None:
    netif = netconf.netif_add(7, "eth0,00-18-51-AA-BB-CC,vz7a,00:18:51:aa:bb:cd,br9", ())
    assert (netif.mac, netif.host_ifname, netif.host_mac, netif.bridge) == (
        "00:18:51:aa:bb:cc",
        "vz7a",
        "00:18:51:aa:bb:cd",
        "br9",
    )


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "bad/name",
        "a" * 16,
        "lo",
        "venet0",
        "eth0,01:00:5e:00:00:01",  # multicast
        "eth0,00:00:00:00:00:00",
        "eth0,zz:18:51:00:00:01",
        "eth0,,,,,extra",
        "eth0,,venet0.7",  # the routed host end
    ],
)
def test_bad_netif_add_is_refused_naming_the_option(spec: str) -> None:
    with pytest.raises(VzError) as e:
        netconf.netif_add(7, spec, ())
    assert e.value.code == ExitCode.INVALID_VALUE
    assert "--netif_add" in e.value.message


def test_a_default_host_name_too_long_asks_for_one() -> None:
    with pytest.raises(VzError) as e:
        netconf.netif_add(2147483647, "eth0", ())
    assert "needs a host_ifname" in e.value.message
    assert netconf.routed_host_ifname(12345678) == "venet0.12345678"
    assert netconf.routed_host_ifname(123456789) == "vzn123456789"


def test_duplicates_and_unknown_keys_in_netif() -> None:
    eth0 = netconf.netif_add(5, "eth0", ())
    with pytest.raises(VzError):
        netconf.netif_add(5, "eth0", (eth0,))
    with pytest.raises(VzError):
        netconf.parse_netifs("ifname=eth0,colour=blue", 5)
    with pytest.raises(VzError):
        netconf.parse_netifs("bridge=br0", 5)
    assert netconf.without((eth0,), ["all"]) == ()
    with pytest.raises(VzError):
        netconf.without((eth0,), ["eth9"])
    # OpenVZ's own NETIF, without host_mac: the default is filled in.
    parsed = netconf.parse_netifs("ifname=eth0,mac=00:18:51:01:02:03,host_ifname=veth5.0", 5)
    assert parsed[0].host_mac.startswith("00:18:51:")


def test_neighbour_devs() -> None:
    assert netconf.neighbour_devs("") == netconf.NeighbourDevs("all")
    assert netconf.neighbour_devs("detect").mode == "detect"
    listed = netconf.neighbour_devs("list:eth0 eth1")
    assert listed.devices == ("eth0", "eth1") and listed.to_text() == "list:eth0 eth1"
    assert netconf.neighbour_devs("list:").devices == ()
    with pytest.raises(VzError):
        netconf.neighbour_devs("some")


def _root(tmp_path: Path, *dirs: str) -> Path:
    root = tmp_path / "root"
    for d in ("etc", *dirs):
        (root / d).mkdir(parents=True, exist_ok=True)
    return root


def test_interfaces_block_is_added_replaced_and_removed_keeping_the_admins_lines(
    tmp_path: Path,
) -> None:
    root = _root(tmp_path, "etc/network")
    mine = "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n"
    (root / "etc/network/interfaces").write_text(mine)
    settings = GuestSettings(ips=("198.51.100.4", "2001:db8:51::4", "198.51.100.5"))
    guest.apply_guest_setup(root, "deb", settings, TINI)
    text = (root / "etc/network/interfaces").read_text()
    assert text.startswith(mine + "\n# --- vzpkg venet0:")
    assert "up ip addr replace 198.51.100.5/32 dev venet0 label venet0:1" in text
    assert "up ip -6 addr replace 2001:db8:51::4/128 dev venet0 nodad" in text
    assert "up ip route replace default via 169.254.0.1 dev venet0 onlink" in text
    guest.apply_guest_setup(root, "deb", GuestSettings(ips=("198.51.100.6",)), TINI)
    text = (root / "etc/network/interfaces").read_text()
    assert text.count("# --- vzpkg venet0:") == 1 and "198.51.100.4" not in text
    assert "fe80::1" not in text
    guest.apply_guest_setup(root, "deb", GuestSettings(), TINI)
    assert (root / "etc/network/interfaces").read_text() == mine


def test_no_ifupdown_no_interfaces_file(tmp_path: Path) -> None:
    root = _root(tmp_path)
    guest.apply_guest_setup(root, "deb", GuestSettings(ips=("198.51.100.4",)), TINI)
    assert not (root / "etc/network").exists()


def test_networkmanager_keyfile_for_the_rpm_family(tmp_path: Path) -> None:
    root = _root(tmp_path, "etc/NetworkManager/system-connections")
    keyfile = root / guest.NM_CONNECTION
    guest.apply_guest_setup(root, "rpm", GuestSettings(ips=("2001:db8:51::9",)), TINI)
    text = keyfile.read_text()
    assert "[ipv4]\nmethod=disabled" in text
    assert "address1=2001:db8:51::9/128" in text and "route1=::/0,fe80::1" in text
    assert keyfile.stat().st_mode & 0o777 == 0o600
    guest.apply_guest_setup(root, "rpm", GuestSettings(), TINI)
    assert not keyfile.exists()
