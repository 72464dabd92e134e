"""Per-container configuration: CTID validation, $VEID expansion, CTID.conf read and written
atomically with comments and unknown keys kept, samples looked up CONF_DIR first."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from vzpkg.ct import conf
from vzpkg.ct.conf import (
    CtConfig,
    conf_path,
    ctid_valid,
    expand,
    list_ctids,
    list_samples,
    read_ct_config,
    read_sample,
    render_ct_config,
    sample_path,
    update_ct_config,
    write_ct_config,
)
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig, host_config_from


@pytest.fixture
def host(tmp_path: Path) -> HostConfig:
    return host_config_from({"CONF_DIR": str(tmp_path / "conf")}, "test")


FULL = CtConfig(
    ostemplate="debian-12-x86_64-minimal",
    ve_root="/vz/root/$VEID",
    ve_private="/vz/private/${VEID}",
    ve_layout="overlay",
    hostname="web.example.org",
    ip_address=("10.0.0.2", "fd00::2"),
    nameserver=("10.0.0.1", "9.9.9.9"),
    searchdomain=("example.org",),
    onboot=True,
    stop_timeout=30,
    origin_sample="basic",
    extra={"DISKSPACE": "2G:2.2G", "DESCRIPTION": 'say "hi" for $5 \\ `now`'},
)


# --- CTIDs and $VEID -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"), [("101", 101), (101, 101), ("1", 1), ("2147483647", 2147483647)]
)
def test_ctid_valid_accepts_openvz_ctids(given: str | int, expected: int) -> None:
    assert ctid_valid(given) == expected


@pytest.mark.parametrize(
    "given",
    ["0", 0, "-1", -1, "2147483648", 2147483648, "abc", "", " 101", "101 ", "1.0", "+1",
     "\u0661\u0660\u0661", "101\n", True],
)  # fmt: skip
def test_ctid_valid_rejects_the_rest(given: str | int) -> None:
    with pytest.raises(VzError) as e:
        ctid_valid(given)
    assert e.value.code == ExitCode.INVALID_ARGUMENT


def test_expand_replaces_both_spellings_of_veid_only() -> None:
    assert expand("/vz/root/$VEID", 101) == "/vz/root/101"
    assert expand("/vz/${VEID}/private/$VEID", "7") == "/vz/7/private/7"
    # $VEIDX and $VEID_A are other variables; $OTHER is left for nobody to expand.
    assert expand("/a/$VEIDX/$VEID_A/$OTHER", 5) == "/a/$VEIDX/$VEID_A/$OTHER"
    with pytest.raises(VzError):
        expand("/vz/$VEID", 0)


def test_private_and_root_paths_come_from_the_ct_or_else_the_host(host: HostConfig) -> None:
    assert conf.private_path(host, 101) == Path("/vz/private/101")
    assert conf.root_path(host, 101) == Path("/vz/root/101")
    own = CtConfig(ve_private="/srv/vz/$VEID/private", ve_root="/srv/vz/${VEID}/root")
    assert conf.private_path(host, 101, own) == Path("/srv/vz/101/private")
    assert conf.root_path(host, 101, own) == Path("/srv/vz/101/root")
    with pytest.raises(VzError) as e:
        conf.private_path(host, 101, CtConfig(ve_private="/srv/$SOMETHING/x"))
    assert e.value.code == ExitCode.INVALID_VALUE


# --- read and write ----------------------------------------------------------------------------


def test_write_and_read_round_trip_every_field(host: HostConfig) -> None:
    path = write_ct_config(host, 101, FULL)
    assert path == conf_path(host, 101) == host.conf_dir / "101.conf"
    assert read_ct_config(host, "101") == FULL
    text = path.read_text()
    # Faithful to OpenVZ's files: KEY="value" lines, $VEID written as it is.
    assert 'VE_ROOT="/vz/root/$VEID"\n' in text
    assert 'IP_ADDRESS="10.0.0.2 fd00::2"\n' in text
    assert 'ONBOOT="yes"\n' in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(os.listdir(host.conf_dir)) == ["101.conf"]  # no temp file left


def test_parse_reads_openvz_values() -> None:
    cfg = conf.parse_ct_config(
        'ONBOOT="no"\nIP_ADDRESS="  10.0.0.2   10.0.0.3 "\nHOSTNAME=""\nSTOP_TIMEOUT=""\n'
        "VE_LAYOUT=plain\nKMEMSIZE=14372700:14790164\n",
        "101.conf",
    )
    assert cfg.onboot is False
    assert cfg.ip_address == ("10.0.0.2", "10.0.0.3")
    assert cfg.hostname is None and cfg.stop_timeout is None  # empty means not set
    assert cfg.ve_layout == "plain"
    assert cfg.extra == {"KMEMSIZE": "14372700:14790164"}


def test_every_invalid_value_is_reported_at_once_with_its_file(host: HostConfig) -> None:
    host.conf_dir.mkdir()
    path = conf_path(host, 101)
    path.write_text(
        'ONBOOT="maybe"\nSTOP_TIMEOUT="soon"\nVE_LAYOUT="ploop"\nVE_ROOT="relative/$VEID"\n'
        'HOSTNAME="two words"\n'
    )
    with pytest.raises(VzError) as e:
        read_ct_config(host, 101)
    assert e.value.code == ExitCode.CONFIG
    for key in ("ONBOOT", "STOP_TIMEOUT", "VE_LAYOUT", "VE_ROOT", "HOSTNAME"):
        assert f"{path}: {key}" in e.value.message


def test_config_values_are_checked_when_made() -> None:
    with pytest.raises(VzError) as e:
        CtConfig(ve_layout="ploop", hostname="a\nb", extra={"HOSTNAME": "x", "bad key": "y"})
    assert e.value.code == ExitCode.INVALID_VALUE
    for what in ("VE_LAYOUT", "HOSTNAME", "'bad key'"):
        assert what in e.value.message
    with pytest.raises(VzError):
        CtConfig(extra={"NOTE": "two\nlines"})


def test_missing_config_is_exit_code_14_with_a_hint(host: HostConfig) -> None:
    with pytest.raises(VzError) as e:
        read_ct_config(host, 101)
    assert e.value.code == ExitCode.CT_CONFIG_MISSING
    assert int(e.value.code) == 14
    assert str(conf_path(host, 101)) in e.value.message
    assert e.value.hint is not None and "vzctl create 101" in e.value.hint


BASE = """\
# Configuration of CT 101, hand-written.
ONBOOT=yes   # keep it unquoted
KMEMSIZE="14372700:14790164"

# The network
IP_ADDRESS="10.0.0.2  10.0.0.3"
HOSTNAME="old"
HOSTNAME="web"
IPTABLES="iptable_filter"  # OpenVZ's, not used by vzpkg
"""


def test_rewrite_keeps_comments_unknown_keys_and_unchanged_lines(host: HostConfig) -> None:
    host.conf_dir.mkdir()
    conf_path(host, 101).write_text(BASE)
    cfg = read_ct_config(host, 101)
    assert cfg.hostname == "web"  # the last line counts, as in sh
    extra = {k: v for k, v in cfg.extra.items() if k != "IPTABLES"}
    new = dataclasses.replace(cfg, hostname="db", ve_layout="plain", extra=extra)
    write_ct_config(host, 101, new)
    assert conf_path(host, 101).read_text() == (
        "# Configuration of CT 101, hand-written.\n"
        "ONBOOT=yes   # keep it unquoted\n"
        'KMEMSIZE="14372700:14790164"\n'
        "\n"
        "# The network\n"
        'IP_ADDRESS="10.0.0.2  10.0.0.3"\n'  # same addresses: the line stays as it was
        'HOSTNAME="db"\n'
        'VE_LAYOUT="plain"\n'
    )
    assert read_ct_config(host, 101) == new


def test_update_changes_only_the_given_fields(host: HostConfig) -> None:
    host.conf_dir.mkdir()
    conf_path(host, 101).write_text(BASE)
    new = update_ct_config(host, 101, onboot=False, nameserver=("10.0.0.1",))
    assert new.onboot is False and new.nameserver == ("10.0.0.1",)
    assert new.extra["IPTABLES"] == "iptable_filter"
    text = conf_path(host, 101).read_text()
    assert 'ONBOOT="no"\n' in text and 'NAMESERVER="10.0.0.1"\n' in text
    assert "# The network\n" in text
    assert read_ct_config(host, 101) == new
    with pytest.raises(TypeError):
        update_ct_config(host, 101, no_such_field=1)
    with pytest.raises(VzError) as e:
        update_ct_config(host, 101, ve_layout="ploop")
    assert e.value.code == ExitCode.INVALID_VALUE
    assert read_ct_config(host, 101) == new  # a refused change writes nothing


def test_rewrite_falls_back_to_fresh_text_when_a_reference_would_change_meaning() -> None:
    base = 'TEMPLATE="/srv"\nVE_PRIVATE="$TEMPLATE/private/$VEID"\n'
    cfg = conf.parse_ct_config(base, "base")
    assert cfg.ve_private == "/srv/private/$VEID"
    moved = dataclasses.replace(cfg, extra={"TEMPLATE": "/data"})
    text = render_ct_config(moved, base)
    assert conf.parse_ct_config(text, "rendered") == moved
    assert 'VE_PRIVATE="/srv/private/$VEID"\n' in text


def test_veid_is_escaped_when_the_file_defines_a_veid_key() -> None:
    cfg = CtConfig(ve_root="/vz/root/$VEID", extra={"VEID": "9"})
    text = render_ct_config(cfg)
    assert conf.parse_ct_config(text, "rendered") == cfg


def test_failed_write_leaves_the_old_file_and_no_temp(
    host: HostConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_ct_config(host, 101, CtConfig(hostname="old"))
    before = conf_path(host, 101).read_text()

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", fail)
    with pytest.raises(VzError) as e:
        write_ct_config(host, 101, CtConfig(hostname="new"))
    assert e.value.code == ExitCode.SYSTEM
    assert conf_path(host, 101).read_text() == before
    assert os.listdir(host.conf_dir) == ["101.conf"]


def test_list_ctids_takes_only_canonical_numeric_conf_files(host: HostConfig) -> None:
    assert list_ctids(host) == []  # no CONF_DIR yet
    host.conf_dir.mkdir()
    for name in ("101.conf", "5.conf", "2147483647.conf", "0.conf", "0101.conf",
                 "101.conf.bak", "2147483648.conf", "abc.conf", ".102.conf.x.tmp",
                 "ve-basic.conf-sample"):  # fmt: skip
        (host.conf_dir / name).write_text("")
    (host.conf_dir / "7.conf").mkdir()
    assert list_ctids(host) == [5, 101, 2147483647]


# --- samples -----------------------------------------------------------------------------------


def test_shipped_basic_sample_is_found_and_parses(host: HostConfig) -> None:
    path = sample_path(host, "basic")
    assert path == conf.SHIPPED_SAMPLES / "ve-basic.conf-sample"
    cfg, text = read_sample(host, "basic")
    assert cfg.onboot is False
    assert text.startswith("#")
    assert "basic" in list_samples(host)


def test_conf_dir_sample_overrides_the_shipped_one(host: HostConfig) -> None:
    host.conf_dir.mkdir()
    (host.conf_dir / "ve-basic.conf-sample").write_text('ONBOOT="yes"\nCPUUNITS="1000"\n')
    (host.conf_dir / "ve-vswap-256m.conf-sample").write_text('PHYSPAGES="0:256M"\n')
    assert sample_path(host, "basic") == host.conf_dir / "ve-basic.conf-sample"
    cfg, _ = read_sample(host, "basic")
    assert cfg.onboot is True and cfg.extra == {"CPUUNITS": "1000"}
    assert list_samples(host) == ["basic", "vswap-256m"]


def test_unknown_or_unsafe_sample_names_are_refused(host: HostConfig) -> None:
    with pytest.raises(VzError) as e:
        sample_path(host, "nosuch")
    assert e.value.code == ExitCode.INVALID_VALUE
    assert e.value.hint is not None and "basic" in e.value.hint
    for name in ("../basic", "", ".hidden", "a/b"):
        with pytest.raises(VzError) as e:
            sample_path(host, name)
        assert e.value.code == ExitCode.INVALID_ARGUMENT


def test_a_ct_config_made_from_a_sample_keeps_its_comments(host: HostConfig) -> None:
    sample, text = read_sample(host, "basic")
    cfg = dataclasses.replace(
        sample, ostemplate="debian-12-x86_64-minimal", ve_layout="overlay", origin_sample="basic"
    )
    write_ct_config(host, 101, cfg, base_text=text)
    written = conf_path(host, 101).read_text()
    assert written.startswith(text.splitlines()[0])
    assert 'ORIGIN_SAMPLE="basic"\n' in written
    assert read_ct_config(host, 101) == cfg


# --- OpenVZ's files, strict keys ----------------------------------------------------------------

OPENVZ = Path(__file__).resolve().parents[1] / "data" / "openvz"


@pytest.mark.parametrize("name", sorted(p.name for p in OPENVZ.glob("*.conf-sample")))
def test_openvz_samples_are_accepted_and_their_keys_kept(name: str) -> None:
    text = (OPENVZ / name).read_text()
    cfg = conf.parse_ct_config(text, name)
    assert "DISKSPACE" in cfg.extra  # carried along, reported as unused
    assert cfg.ip_address == ()  # OpenVZ's 0.0.0.0 means "none"
    assert conf.parse_ct_config(render_ct_config(cfg, text), "again") == cfg


def test_unknown_keys_are_errors_naming_the_file() -> None:
    with pytest.raises(VzError) as e:
        conf.parse_ct_config('HOSTNAME="web"\nMEMROY="1G"\n', "/etc/vz/conf/101.conf")
    assert e.value.code == ExitCode.CONFIG
    assert "/etc/vz/conf/101.conf: unknown key MEMROY" in e.value.message


def test_openvz_values_are_read_as_openvz_means_them() -> None:
    cfg = conf.parse_ct_config(
        'VE_LAYOUT="simfs"\nIP_ADDRESS="0.0.0.0 2001:DB8:51::0045 198.51.100.2"\nONBOOT=auto\n',
        "f",
    )
    assert cfg.ve_layout == "plain"
    assert cfg.ip_address == ("2001:db8:51::45", "198.51.100.2")
    with pytest.raises(VzError) as e:
        conf.parse_ct_config('VE_LAYOUT="ploop"\n', "f")
    assert "ploop" in e.value.message


@pytest.mark.parametrize(
    "line, key",
    [
        ('HOSTNAME="' + "a" * 32 + "." + "b" * 32 + '"', "HOSTNAME"),
        ('IP_ADDRESS="10.0.0.300"', "IP_ADDRESS"),
        ('NAMESERVER="garbage"', "NAMESERVER"),
        ('STOP_TIMEOUT="nan"', "STOP_TIMEOUT"),
    ],
)
def test_bad_values_in_ct_config_name_the_key(line: str, key: str) -> None:
    with pytest.raises(VzError) as e:
        conf.parse_ct_config(line + "\n", "101.conf")
    assert e.value.code == ExitCode.CONFIG
    assert f"101.conf: {key}" in e.value.message


def test_a_ct_config_that_is_not_utf8_names_its_line(host: HostConfig) -> None:
    host.conf_dir.mkdir()
    conf_path(host, 101).write_bytes(b'HOSTNAME="web"\nDESCRIPTION="caf\xe9"\n')
    with pytest.raises(VzError) as e:
        read_ct_config(host, 101)
    assert e.value.code == ExitCode.CONFIG
    assert f"{conf_path(host, 101)}:2: not UTF-8" in e.value.message
