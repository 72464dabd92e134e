"""OpenVZ's resource values (vzpkg.ct.resources): sizes, pairs, limits, and what runc gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from vzpkg.ct import conf, disk, resources, usage
from vzpkg.errors import ExitCode, VzError


def test_sizes_in_openvz_syntax() -> None:
    assert resources.size("512M", "--ram") == 512 << 20
    assert resources.size("2g", "--ram") == 2 << 30
    assert resources.size("262144", "PHYSPAGES", pages=True) == 1 << 30
    assert resources.size("1024", "--ram") == 1024
    assert resources.size("unlimited", "--ram") is None
    assert resources.size("9223372036854775807", "PHYSPAGES", pages=True) is None
    assert resources.show_size(512 << 20) == "512M" and resources.show_size(1 << 30) == "1G"
    assert resources.show_size(1536 << 20) == "1536M" and resources.show_size(None) == "unlimited"
    for bad in ("12Q", "-1G", "1.5G", "", "M"):
        with pytest.raises(VzError) as e:
            resources.size(bad, "--ram")
        assert e.value.code == ExitCode.INVALID_VALUE and "--ram" in e.value.message


def test_limits_from_config_values_as_openvz_writes_them() -> None:
    limits = resources.parse(
        {
            "PHYSPAGES": "0:65536",
            "SWAPPAGES": "0:128M",
            "NUMPROC": "240:240",
            "CPUUNITS": "500",
            "CPULIMIT": "150%",
            "CPUS": "1",
            "CPUMASK": "0",
        }
    )
    assert limits.ram == 256 << 20 and limits.memory_swap == 384 << 20
    assert limits.numproc == 240 and limits.cpu_shares == 512
    assert limits.cpu_quota == 100_000  # CPUS 1 is below CPULIMIT 150
    assert resources.parse({"CPUS": "0"}).cpus is None  # OpenVZ's "no limit"
    assert resources.parse({"PHYSPAGES": "0:64M"}).memory_swap == 64 << 20  # no swap
    assert resources.parse({"PHYSPAGES": "0:64M", "SWAPPAGES": "unlimited"}).memory_swap == -1


def test_options_become_canonical_config_values() -> None:
    values = resources.config_values(
        {"PHYSPAGES": "1024m", "SWAPPAGES": "0", "NUMPROC": "64", "CPUMASK": "all"}
    )
    assert values == {
        "PHYSPAGES": "0:1G",
        "SWAPPAGES": "0:0",
        "NUMPROC": "64:64",
        "CPUMASK": "all",
    }
    with pytest.raises(VzError) as e:
        resources.config_values({"CPUS": "0"})
    assert "--cpus" in e.value.message
    with pytest.raises(VzError):
        resources.config_values({"PHYSPAGES": "1M"})  # below 16M: nothing would run


def test_what_runc_gets() -> None:
    limits = resources.parse({"PHYSPAGES": "0:64M", "NUMPROC": "64", "CPULIMIT": "25"})
    assert resources.oci_resources(limits) == {
        "memory": {"limit": 64 << 20, "swap": 64 << 20},
        "cpu": {"quota": 25_000, "period": 100_000},
        "pids": {"limit": 64},
    }
    args = resources.update_args(resources.Limits())
    assert args[args.index("--pids-limit") + 1] == "-1"  # lifted
    assert args[args.index("--memory") + 1] == "-1"


def test_the_keys_acted_on_are_the_ones_conf_does_not_report() -> None:
    assert set(resources.KEYS) | set(disk.KEYS) == conf.ACTED_ON_EXTRA


def test_beancounters_from_recorded_cgroup_files(tmp_path: Path) -> None:
    pids, memory = tmp_path / "pids", tmp_path / "memory"
    pids.mkdir()
    memory.mkdir()
    for name, text in {
        "pids.current": "5",
        "pids.max": "64",
        "pids.events": "max 7",
    }.items():
        (pids / name).write_text(text + "\n")
    for name, text in {
        "memory.usage_in_bytes": str(8 << 20),
        "memory.max_usage_in_bytes": str(16 << 20),
        "memory.limit_in_bytes": str(64 << 20),
        "memory.memsw.usage_in_bytes": str(12 << 20),
        "memory.memsw.limit_in_bytes": "9223372036854771712",  # v1's "no limit"
        "memory.failcnt": "3",
        "memory.memsw.failcnt": "0",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2",
    }.items():
        (memory / name).write_text(text + "\n")
    found = usage.counters({"pids": str(pids), "memory": str(memory)})
    assert found["numproc"] == usage.Counter(5, None, 64, 64, 7)
    assert found["physpages"] == usage.Counter(2048, 4096, 0, 16384, 3)
    assert found["swappages"].held == 1024 and found["swappages"].limit == usage.LONG_MAX
    assert found["oomguarpages"].failcnt == 2
    assert "numproc" in usage.table(101, found) and usage.header().split()[0] == "uid"
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "pids.max").write_text("max\n")
    (tmp_path / "v2" / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    v2 = usage.counters({"": str(tmp_path / "v2")})
    assert v2["numproc"].limit == usage.LONG_MAX and v2["physpages"].failcnt == 4
    assert v2["oomguarpages"].failcnt == 1


def test_a_v2_host_without_a_controller_refuses_the_limits_that_need_it(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("hugetlb\n")  # as unified/ on a hybrid host
    for values, key in (
        ({"PHYSPAGES": "0:1G"}, "PHYSPAGES"),
        ({"NUMPROC": "64"}, "NUMPROC"),
        ({"CPULIMIT": "50"}, "CPULIMIT"),
        ({"CPUUNITS": "2000"}, "CPUUNITS"),
        ({"CPUMASK": "0"}, "CPUMASK"),
    ):
        with pytest.raises(VzError) as caught:
            resources.check_host(101, resources.parse(values), str(tmp_path))
        assert caught.value.code == ExitCode.CONFIG and key in caught.value.message
        assert "offers no" in caught.value.message
    # The default weight needs no controller; nothing at all needs none.
    resources.check_host(101, resources.parse({"CPUUNITS": "1000"}), str(tmp_path))
    resources.check_host(101, resources.Limits(), str(tmp_path))
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    everything = {"PHYSPAGES": "0:1G", "NUMPROC": "64", "CPULIMIT": "50", "CPUMASK": "0"}
    resources.check_host(101, resources.parse(everything), str(tmp_path))
