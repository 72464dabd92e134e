"""The one set of value checks every entry point uses: CTIDs, host names, addresses, domains,
timeouts, layouts. Good values come back canonical; bad ones are VzErrors naming the option."""

from __future__ import annotations

import pytest

from vzpkg import checks
from vzpkg.ct.ids import CTID_MAX, parse_ctid
from vzpkg.errors import ExitCode, VzError


@pytest.mark.parametrize("text, number", [("1", 1), ("101", 101), (str(CTID_MAX), CTID_MAX)])
def test_ctids(text: str, number: int) -> None:
    assert parse_ctid(text) == number


@pytest.mark.parametrize(
    "text",
    ["0", "", "-1", "+5", " 5", "1.0", "0x10", str(CTID_MAX + 1), "9" * 5000, "\u0661\u0660\u0661",
     "\uff11\uff10\uff11", "101\n", "web"],
)  # fmt: skip
def test_bad_ctids_are_refused_before_int_sees_them(text: str) -> None:
    with pytest.raises(VzError) as e:
        parse_ctid(text)
    assert e.value.code == ExitCode.INVALID_ARGUMENT
    assert len(e.value.message) < 80  # a 5000-digit CTID is not echoed whole


def test_hostnames() -> None:
    assert checks.hostname("web1.example.com") == "web1.example.com"
    assert checks.hostname("web1.example.com.") == "web1.example.com"
    assert checks.hostname("a" * 31 + "." + "b" * 32) == "a" * 31 + "." + "b" * 32  # 64
    for bad in ("a" * 32 + "." + "b" * 32, "a" * 64, "bad_name", "-web", "web-", "", "a..b",
                "caf\u00e9", "two words", "web/1"):  # fmt: skip
        with pytest.raises(VzError) as e:
            checks.hostname(bad)
        assert e.value.code == ExitCode.INVALID_VALUE
        assert e.value.message.startswith("Bad parameter for --hostname")


def test_addresses_are_canonical() -> None:
    assert checks.ip_address("198.51.100.45") == "198.51.100.45"
    assert checks.ip_address("2001:DB8:51::0045") == "2001:db8:51::45"
    assert checks.ip_address("198.51.100.45/24") == "198.51.100.45/24"
    assert checks.ip_address("2001:db8:51::1/064") == "2001:db8:51::1/64"
    for bad in ("garbage", "10.0.0.300", "1.2.3.4/33", "010.0.0.1", "0.0.0.0", "::", "1.2.3.4/",
                "1.2.3.4/x", "", "2001:db8::/129"):  # fmt: skip
        with pytest.raises(VzError) as e:
            checks.ip_address(bad)
        assert e.value.message.startswith("Bad parameter for --ipadd")
    with pytest.raises(VzError):
        checks.ip_address("198.51.100.1/24", "--nameserver", prefix=False)
    assert checks.nameserver("inherit") == "inherit"
    assert checks.nameserver("2001:DB8::1") == "2001:db8::1"


def test_domains() -> None:
    assert checks.domain("example.com") == "example.com"
    for bad in ("not a domain", "ex_ample.com", "a" * 254, "-x.com"):
        with pytest.raises(VzError):
            checks.domain(bad)


def test_timeouts() -> None:
    assert checks.timeout("2.5") == 2.5
    assert checks.timeout(0) == 0
    assert checks.timeout("-1", forever=True) == -1
    for bad in ("nan", "inf", "-inf", "-1", "soon", ""):
        with pytest.raises(VzError) as e:
            checks.timeout(bad)
        assert e.value.code == ExitCode.INVALID_VALUE
    with pytest.raises(VzError):
        checks.timeout("-2", forever=True)
    assert checks.whole_seconds(" 60 ", "STOP_TIMEOUT") == 60
    for bad in ("6O", "-1", "1.5", "\u0661"):
        with pytest.raises(VzError):
            checks.whole_seconds(bad, "STOP_TIMEOUT")


def test_layouts() -> None:
    assert checks.layout("plain") == "plain"
    assert checks.layout("simfs") == "plain"  # OpenVZ's name for a plain tree
    assert checks.layout("overlay") == "overlay"
    with pytest.raises(VzError) as e:
        checks.layout("ploop")
    assert e.value.hint is not None and "ploop" in e.value.hint
    with pytest.raises(VzError):
        checks.layout("ploop-ish")
