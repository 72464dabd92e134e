"""Host configuration: vz.conf-style lines read as sh would, environment overrides, and every
mistake reported as a configuration error (exit 10) naming where it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from vzpkg import hostconf
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import load_host_config, parse_kv


def test_parse_kv_reads_shell_style_lines() -> None:
    text = """\
# a comment line
TEMPLATE=/srv/vz/template

CACHE_DIR="$TEMPLATE/cache"   # trailing comment
METADATA_DIR=${TEMPLATE}/metadata
LITERAL='$TEMPLATE/not-expanded'
ESCAPED="\\$TEMPLATE"
HASH="a#b"
SPACED="two words"
   INDENTED = bare
VE_ROOT="/vz/root/$VEID"
EMPTY=""
"""
    assert parse_kv(text, "vzpkg.conf") == {
        "TEMPLATE": "/srv/vz/template",
        "CACHE_DIR": "/srv/vz/template/cache",
        "METADATA_DIR": "/srv/vz/template/metadata",
        "LITERAL": "$TEMPLATE/not-expanded",
        "ESCAPED": "$TEMPLATE",
        "HASH": "a#b",
        "SPACED": "two words",
        "INDENTED": "bare",
        "VE_ROOT": "/vz/root/$VEID",  # not defined above: kept for the runtime
        "EMPTY": "",
    }


def test_parse_kv_only_expands_keys_defined_above() -> None:
    values = parse_kv('A="$B"\nB=late\n', "f")
    assert values == {"A": "$B", "B": "late"}


def test_parse_kv_reports_every_bad_line_with_file_and_line() -> None:
    text = 'GOOD=1\nthis is not an assignment\nOPEN="unterminated\n# fine\n9BAD=x\n'
    with pytest.raises(VzError) as raised:
        parse_kv(text, "/etc/vz/vzpkg.conf")
    error = raised.value
    assert error.code == ExitCode.CONFIG
    assert "/etc/vz/vzpkg.conf:2: expected KEY=" in error.message
    assert "/etc/vz/vzpkg.conf:3: OPEN: no closing quotation" in error.message
    assert "/etc/vz/vzpkg.conf:5: expected KEY=" in error.message
    assert ":1:" not in error.message and ":4:" not in error.message


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "vzpkg.conf"
    path.write_text(
        f'TEMPLATE="{tmp_path}/template"\n'
        'CACHE_DIR="$TEMPLATE/cache"\n'
        f'LOCKDIR="{tmp_path}/lock"\n'
        "ZSTD_LEVEL=9\n"
        "BOOTSTRAP_TOOL=debootstrap\n"
        'DEBIAN_SECURITY_MIRROR="http://security.invalid/debian-security"\n'
        'DEBIAN_MIRROR="http://deb.invalid/debian"\n'
        'UBUNTU_MIRROR=""\n'
        "VE0CPUUNITS=1000\n"  # an OpenVZ key: accepted and ignored
    )
    return path


def test_load_host_config_reads_vzpkg_conf(conf: Path, tmp_path: Path) -> None:
    host = load_host_config({"VZPKG_CONF": str(conf)})
    assert host.source == str(conf)
    assert host.template_dir == tmp_path / "template"
    assert host.cache_dir == tmp_path / "template/cache"
    assert host.pkgcache_dir == tmp_path / "template/cache/.pkgcache"
    assert host.lock_dir == tmp_path / "lock"
    assert host.zstd_level == 9
    assert host.bootstrap_tool == "debootstrap"
    assert host.build_dir is None


def test_mirror_keys_map_to_mirror_names(conf: Path) -> None:
    host = load_host_config({"VZPKG_CONF": str(conf)})
    assert host.mirror("debian-security") == "http://security.invalid/debian-security"
    assert host.mirror("debian") == "http://deb.invalid/debian"
    assert host.mirror("ubuntu") is None  # empty: not set
    assert dict(host.mirrors) == {
        "debian-security": "http://security.invalid/debian-security",
        "debian": "http://deb.invalid/debian",
    }


def test_environment_overrides_the_file(conf: Path, tmp_path: Path) -> None:
    host = load_host_config(
        {
            "VZPKG_CONF": str(conf),
            "VZPKG_CACHE_DIR": str(tmp_path / "elsewhere"),
            "VZPKG_BUILD_DIR": str(tmp_path / "build"),
            "VZPKG_DEBIAN_MIRROR": "http://override.invalid/debian",
            "UNRELATED": "ignored",
        }
    )
    assert host.cache_dir == tmp_path / "elsewhere"
    assert host.pkgcache_dir == tmp_path / "elsewhere/.pkgcache"
    assert host.build_dir == tmp_path / "build"
    assert host.mirror("debian") == "http://override.invalid/debian"
    assert host.lock_dir == tmp_path / "lock"  # not overridden: still the file's


def test_without_any_file_a_checkout_uses_its_own_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hostconf, "SYSTEM_CONF", tmp_path / "absent.conf")
    host = load_host_config({})
    assert host.source == "built-in defaults"
    assert host.metadata_dir == hostconf.CHECKOUT / "metadata"
    assert host.cache_dir == hostconf.CHECKOUT / "caches"
    assert host.ve_root == "/vz/root/$VEID"


def test_unknown_key_in_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "vzpkg.conf"
    path.write_text('CACHE_DIR=/x\nCACHEDIR="/typo"\n')
    with pytest.raises(VzError) as raised:
        load_host_config({"VZPKG_CONF": str(path)})
    assert raised.value.code == ExitCode.CONFIG
    assert f"invalid configuration {path}:\n  unknown key(s) CACHEDIR" in raised.value.message


def test_unknown_environment_override_names_the_variable(conf: Path) -> None:
    with pytest.raises(VzError) as raised:
        load_host_config({"VZPKG_CONF": str(conf), "VZPKG_CACHEDIR": "/typo"})
    assert raised.value.code == ExitCode.CONFIG
    assert "VZPKG_CACHEDIR" in raised.value.message
    assert str(conf) not in raised.value.message


def test_missing_vzpkg_conf_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(VzError) as raised:
        load_host_config({"VZPKG_CONF": str(tmp_path / "nonexistent.conf")})
    assert raised.value.code == ExitCode.CONFIG
    assert "nonexistent.conf" in raised.value.message


@pytest.mark.parametrize("line", ["ZSTD_LEVEL=fast", "BOOTSTRAP_TOOL=cdebootstrap"])
def test_bad_values_are_config_errors(tmp_path: Path, line: str) -> None:
    path = tmp_path / "vzpkg.conf"
    path.write_text(line + "\n")
    with pytest.raises(VzError) as raised:
        load_host_config({"VZPKG_CONF": str(path)})
    assert raised.value.code == ExitCode.CONFIG
    assert line.split("=")[0] in raised.value.message


@pytest.mark.parametrize(
    "line, key",
    [
        ('VE_ROOT="/vz/root/shared"', "VE_ROOT"),  # no $VEID: every VPS would share it
        ('VE_PRIVATE="/vz/private/$CTID"', "VE_PRIVATE"),
        ('VE_PRIVATE="private/$VEID"', "VE_PRIVATE"),
        ("RUN_DIR=run", "RUN_DIR"),
        ('CONF_DIR=""', "CONF_DIR"),
        ('LOCKDIR="$NOWHERE/lock"', "LOCKDIR"),
        ("BUILD_DIR=relative", "BUILD_DIR"),
        ("STOP_TIMEOUT=-5", "STOP_TIMEOUT"),
        ("STOP_TIMEOUT=soon", "STOP_TIMEOUT"),
        ("VE_LAYOUT=zfs", "VE_LAYOUT"),
        ("ZSTD_LEVEL=99", "ZSTD_LEVEL"),
        ("NAMESERVER=garbage", "NAMESERVER"),
        ('SEARCHDOMAIN="bad_domain"', "SEARCHDOMAIN"),
    ],
)
def test_places_and_values_are_checked(tmp_path: Path, line: str, key: str) -> None:
    path = tmp_path / "vzpkg.conf"
    path.write_text(line + "\n")
    with pytest.raises(VzError) as raised:
        load_host_config({"VZPKG_CONF": str(path)})
    assert raised.value.code == ExitCode.CONFIG
    assert f"  {key}: " in raised.value.message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "vzpkg.conf"
    path.write_text("RUN_DIR=run\nVE_ROOT=/x\nTYPO=1\nSTOP_TIMEOUT=x\n")
    with pytest.raises(VzError) as raised:
        load_host_config({"VZPKG_CONF": str(path)})
    for key in ("RUN_DIR", "VE_ROOT", "TYPO", "STOP_TIMEOUT"):
        assert key in raised.value.message


def test_a_file_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "vzpkg.conf"
    path.write_bytes(b"CACHE_DIR=/x\n# caf\xe9\n")
    with pytest.raises(VzError) as raised:
        load_host_config({"VZPKG_CONF": str(path)})
    assert raised.value.code == ExitCode.CONFIG
    assert f"{path}:2: not UTF-8" in raised.value.message


OPENVZ = Path(__file__).resolve().parents[1] / "data" / "openvz"


@pytest.mark.parametrize("name", ["vzctl4-vz.conf", "vz7-vz.conf"])
def test_openvz_vz_conf_files_are_accepted(name: str) -> None:
    """The vz.conf that vzctl 4 and Virtuozzo 7 ship: every key accepted; the ones vzpkg acts
    on used, the rest listed as unused (vzpkg.notes says so once)."""
    path = OPENVZ / name
    host = load_host_config({"VZPKG_CONF": str(path)})
    assert host.ve_root == "/vz/root/$VEID" and host.lock_dir == Path("/vz/lock")
    assert "DUMPDIR" in host.unused_keys and "LOCKDIR" not in host.unused_keys
    if name == "vzctl4-vz.conf":
        assert host.nameservers == ("inherit",)  # new VPSs inherit the host's nameservers
        assert host.configfile == "vswap-256m" and host.def_ostemplate == "centos-6-x86"
        assert host.ve_layout is None and "VE_LAYOUT" in host.unused_keys  # ploop: not here
        assert "LOCAL_UID" in host.unused_keys
    else:
        assert host.configfile == "basic"


def test_openvz_keys_of_every_version_are_known_and_typos_are_not() -> None:
    from vzpkg.hostvalues import is_known_key, is_used_key

    for key in ("NAMESERVER", "DUMPDIR", "LOCAL_UID", "IPTABLES_MODULES", "VEFSTYPE", "KMEMSIZE"):
        assert is_known_key(key), key
    for key in ("CACHEDIR", "NAMESERVERS", "VE_ROOTS", "LOCAL_IUD"):
        assert not is_known_key(key), key
    assert is_used_key("VE_ROOT") and not is_used_key("DUMPDIR")
