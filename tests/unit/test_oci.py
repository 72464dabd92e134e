"""The OCI config of a VPS, as data: isolation settings are present and nothing else leaks in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vzpkg.ct import oci
from vzpkg.ct.engine import parse_state, signal_number
from vzpkg.ct.oci import BindMount, BundleSpec, HostLimits, IdMapping, build_config
from vzpkg.errors import VzError

ALL_CAPS = HostLimits()


def make_spec(**overrides: Any) -> BundleSpec:
    values: dict[str, Any] = {
        "ctid": "101",
        "root": Path("/vz/root/101"),
        "hostname": "ct101.example.org",
        "init_argv": ("/sbin/init",),
        "host": ALL_CAPS,
    }
    values.update(overrides)
    return BundleSpec(**values)


def mount_at(config: dict[str, Any], destination: str) -> dict[str, Any]:
    found = [m for m in config["mounts"] if m["destination"] == destination]
    assert len(found) == 1, destination
    mount: dict[str, Any] = found[0]
    return mount


def test_config_is_json_and_names_root_hostname_init() -> None:
    config = build_config(make_spec())
    assert json.loads(json.dumps(config)) == config
    assert config["root"] == {"path": "/vz/root/101", "readonly": False}
    assert config["hostname"] == "ct101.example.org"
    assert config["process"]["args"] == ["/sbin/init"]
    assert config["process"]["cwd"] == "/"
    assert config["process"]["user"] == {"uid": 0, "gid": 0}
    assert config["process"]["terminal"] is False
    assert config["process"]["noNewPrivileges"] is False


def test_namespaces_without_user_namespace_by_default() -> None:
    linux = build_config(make_spec())["linux"]
    kinds = [ns["type"] for ns in linux["namespaces"]]
    assert sorted(kinds) == sorted(["pid", "mount", "uts", "ipc", "network", "cgroup"])
    # A "path" would join an existing namespace (e.g. the host's network): all must be fresh.
    assert all("path" not in ns for ns in linux["namespaces"])
    assert "uidMappings" not in linux
    assert "gidMappings" not in linux


def test_id_mappings_add_a_user_namespace() -> None:
    spec = make_spec(
        uid_mappings=(IdMapping(0, 100000, 65536),),
        gid_mappings=(IdMapping(0, 100000, 65536), IdMapping(65536, 300000, 1)),
    )
    linux = build_config(spec)["linux"]
    assert {"type": "user"} in linux["namespaces"]
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": 100000, "size": 65536}]
    assert linux["gidMappings"] == [
        {"containerID": 0, "hostID": 100000, "size": 65536},
        {"containerID": 65536, "hostID": 300000, "size": 1},
    ]


def test_uid_mappings_alone_are_rejected() -> None:
    with pytest.raises(ValueError, match="together"):
        make_spec(uid_mappings=(IdMapping(0, 100000, 65536),))


def test_masked_and_readonly_paths() -> None:
    linux = build_config(make_spec())["linux"]
    for path in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"):
        assert path in linux["maskedPaths"]
    for path in ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"):
        assert path in linux["readonlyPaths"]


def test_dropped_capabilities_absent_the_rest_present() -> None:
    caps = build_config(make_spec())["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        have = set(caps[kind])
        assert not have & oci.DROPPED_CAPS, kind
        for name in ("CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_MKNOD", "CAP_SETUID", "CAP_BPF"):
            assert name in have, (kind, name)
        assert len(have) == len(oci.CAP_NAMES) - len(oci.DROPPED_CAPS)
    assert caps["inheritable"] == []
    assert caps["ambient"] == []


def test_capabilities_stop_at_the_kernels_last() -> None:
    # A 5.4 kernel: cap_last_cap 37 (CAP_AUDIT_READ); PERFMON, BPF, CHECKPOINT_RESTORE unknown.
    caps = oci.capabilities(HostLimits(cap_last=37, cap_bound=(1 << 38) - 1))
    assert caps[-1] == "CAP_AUDIT_READ"
    assert "CAP_BPF" not in caps
    # A newer kernel than the table: unnamed capabilities are left out, not invented.
    assert oci.capabilities(HostLimits(cap_last=45, cap_bound=(1 << 46) - 1))[-1] == (
        "CAP_CHECKPOINT_RESTORE"
    )


def test_capabilities_the_host_lacks_are_not_asked_for() -> None:
    """runc cannot grant what its own bounding set lacks (capset fails with EPERM)."""
    without_sys_resource = ((1 << 41) - 1) & ~(1 << oci.CAP_SYS_RESOURCE)
    host = HostLimits(cap_last=40, cap_bound=without_sys_resource, nofile_hard=20000)
    config = build_config(make_spec(host=host))
    assert "CAP_SYS_RESOURCE" not in config["process"]["capabilities"]["bounding"]
    # ...and without CAP_SYS_RESOURCE RLIMIT_NOFILE cannot be raised above our hard limit.
    assert config["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 20000, "soft": 20000}]


def test_rlimit_nofile_with_sys_resource() -> None:
    host = HostLimits(nofile_hard=1024)
    assert build_config(make_spec(host=host))["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}
    ]


def test_cap_bound_parsed_from_proc_status(tmp_path: Path) -> None:
    (tmp_path / "sys/kernel").mkdir(parents=True)
    (tmp_path / "sys/kernel/cap_last_cap").write_text("40\n")
    (tmp_path / "self").mkdir()
    (tmp_path / "self/status").write_text("Name:\tx\nCapBnd:\t000001fffeffffff\nCapAmb:\t0\n")
    host = oci.probe_host(tmp_path)
    assert host.cap_last == 40
    assert host.cap_bound == 0x1FFFEFFFFFF
    assert "CAP_SYS_RESOURCE" not in oci.capabilities(host)


def test_device_cgroup_denies_everything_first() -> None:
    rules = build_config(make_spec())["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert all(rule["allow"] for rule in rules[1:])
    allowed = {(r.get("type"), r.get("major"), r.get("minor")) for r in rules[1:]}
    for char in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2)):
        assert ("c", *char) in allowed
    assert ("c", 136, None) in allowed  # every pts
    assert all(r["type"] == "c" for r in rules[1:])  # no block device at all


def test_devices_created_in_dev() -> None:
    devices = build_config(make_spec())["linux"]["devices"]
    by_path = {d["path"]: (d["type"], d["major"], d["minor"]) for d in devices}
    assert by_path == {
        "/dev/null": ("c", 1, 3),
        "/dev/zero": ("c", 1, 5),
        "/dev/full": ("c", 1, 7),
        "/dev/random": ("c", 1, 8),
        "/dev/urandom": ("c", 1, 9),
        "/dev/tty": ("c", 5, 0),
    }


def test_mounts() -> None:
    config = build_config(make_spec())
    assert mount_at(config, "/proc")["type"] == "proc"
    dev = mount_at(config, "/dev")
    assert dev["type"] == "tmpfs"
    assert {"nosuid", "mode=755"} <= set(dev["options"])
    pts = mount_at(config, "/dev/pts")
    assert {"newinstance", "ptmxmode=0666", "mode=0620", "gid=5"} <= set(pts["options"])
    shm = mount_at(config, "/dev/shm")
    assert {"mode=1777", "nosuid", "nodev"} <= set(shm["options"])
    assert mount_at(config, "/dev/mqueue")["type"] == "mqueue"
    sys = mount_at(config, "/sys")
    assert sys["type"] == "sysfs"
    assert {"ro", "nosuid", "noexec", "nodev"} <= set(sys["options"])
    cgroup = mount_at(config, "/sys/fs/cgroup")
    assert cgroup["type"] == "cgroup"
    assert "ro" in cgroup["options"]
    # No bind of anything from the host unless asked for.
    assert [m for m in config["mounts"] if m["type"] == "bind"] == []


def test_tini_is_bound_read_only() -> None:
    spec = make_spec(binds=(oci.tini_bind(Path("/usr/bin/tini-static")),))
    tini = mount_at(build_config(spec), "/.vzpkg/tini")
    assert tini["type"] == "bind"
    assert tini["source"] == "/usr/bin/tini-static"
    assert {"ro", "nosuid", "nodev"} <= set(tini["options"])
    rw = make_spec(binds=(BindMount(Path("/srv/data"), "/data", readonly=False),))
    assert "ro" not in mount_at(build_config(rw), "/data")["options"]


def test_environment_defaults_and_extras() -> None:
    env = build_config(make_spec(env=(("LANG", "C.UTF-8"), ("TERM", "vt100"))))["process"]["env"]
    assert env[0].startswith("PATH=/usr/local/sbin:")
    assert "container=vzpkg" in env
    assert "LANG=C.UTF-8" in env
    assert "TERM=vt100" in env
    assert "TERM=xterm" not in env


def test_cgroups_path() -> None:
    assert build_config(make_spec())["linux"]["cgroupsPath"] == "/vzpkg/101"
    spec = make_spec(cgroup_parent="vzpkg-test/run1")
    assert build_config(spec)["linux"]["cgroupsPath"] == "/vzpkg-test/run1/101"


def test_seccomp_denies_open_by_handle_at() -> None:
    seccomp = build_config(make_spec())["linux"]["seccomp"]
    assert seccomp["defaultAction"] == "SCMP_ACT_ALLOW"
    denied = {name for rule in seccomp["syscalls"] for name in rule["names"] if "args" not in rule}
    assert {"open_by_handle_at", "kexec_load", "init_module", "finit_module"} <= denied


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"ctid": "../etc"}, "CTID"),
        ({"root": Path("relative/root")}, "absolute"),
        ({"init_argv": ()}, "init_argv"),
        ({"hostname": ""}, "hostname"),
        ({"binds": (BindMount(Path("/x"), "/a/../../etc"),)}, "bind destination"),
        ({"cgroup_parent": "/abs"}, "cgroup parent"),
        ({"cgroup_parent": "../up"}, "cgroup parent"),
    ],
)
def test_bad_specs_are_rejected(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        make_spec(**overrides)


@pytest.mark.parametrize(
    ("name", "number"),
    [("TERM", 15), ("SIGKILL", 9), ("pwr", 30), ("RTMIN+3", 37), ("SIGRTMIN+3", 37), ("9", 9)],
)
def test_signal_number(name: str, number: int) -> None:
    assert signal_number(name) == number


@pytest.mark.parametrize("name", ["NOPE", "RTMIN+99", "RTMIN+x"])
def test_unknown_signal(name: str) -> None:
    with pytest.raises(VzError):
        signal_number(name)


def test_parse_state() -> None:
    text = (
        '{"ociVersion":"1.0.2-dev","id":"vz101","pid":4242,"status":"running",'
        '"bundle":"/run/vzpkg/ct/101","rootfs":"/vz/root/101","created":"2024-01-01T00:00:00Z",'
        '"owner":""}'
    )
    state = parse_state(text)
    assert (state.id, state.status, state.pid) == ("vz101", "running", 4242)
    assert state.bundle == Path("/run/vzpkg/ct/101")
    assert state.is_active
    assert not parse_state('{"id":"vz1","pid":0,"status":"stopped"}').is_active
    with pytest.raises(ValueError):
        parse_state("[]")
