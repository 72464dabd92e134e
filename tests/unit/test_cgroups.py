"""vzpkg's cgroup paths on each host layout (vzpkg/cgroups.py): a /sys/fs/cgroup is built from a
recorded mount table (tests/unit/cgroup_layouts, whose README says where each comes from), the
VPS's cgroups are made where runc recorded them on that layout, and vzpkg must find the VPS
there, its processes and nothing else, and hand its root only systemd's own hierarchies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from vzpkg import cgroups
from vzpkg.ct.runcstate import cgroup_pids

LAYOUTS = Path(__file__).with_name("cgroup_layouts")
HOST_ROOT = "/sys/fs/cgroup"
VPS_PIDS = [1001, 1002]  # its init (moved to init.scope by systemd) and a service
SHELL_PID = 4242  # the host's shell that ran vzctl, in a cgroup of its own


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str
    options: tuple[str, ...]


def read_mounts(layout: str) -> list[Mount]:
    """The mounts of a recorded /proc/self/mountinfo (fields after " - ": type, source, super
    options)."""
    mounts = []
    for line in (LAYOUTS / layout / "mountinfo").read_text().splitlines():
        before, after = line.split(" - ", 1)
        fstype, _, options = after.split(" ")
        mounts.append(Mount(before.split(" ")[4], fstype, tuple(options.split(","))))
    return mounts


def hierarchy_keys(mount: Mount) -> list[str]:
    """runc's names for a cgroup mount's hierarchy: "" for cgroup2, else its controllers and
    name=... from the super options."""
    if mount.fstype == "cgroup2":
        return [""]
    return [o for o in mount.options if o not in ("rw", "ro", "xattr", "noprefix")]


@dataclass(frozen=True)
class Host:
    root: Path
    hierarchies: dict[str, str]  # runc's key -> mount point (as the host names it)
    runc_paths: dict[str, str]  # where runc put the VPS (as the host names it)

    def here(self, path: str) -> Path:
        """A host path below /sys/fs/cgroup, in this test's tree."""
        assert path == HOST_ROOT or path.startswith(HOST_ROOT + "/"), path
        return self.root / path[len(HOST_ROOT) :].lstrip("/")

    @property
    def parent_and_name(self) -> tuple[str, str]:
        parent, name = self.runc_paths[""].split("/")[-2:]
        return parent, name


def add_procs(directory: Path, pids: list[int]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / cgroups.PROCS, "a") as f:
        f.writelines(f"{pid}\n" for pid in pids)


@pytest.fixture(params=sorted(p.name for p in LAYOUTS.iterdir() if p.is_dir()))
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Host:
    """A /sys/fs/cgroup of the layout with a running VPS in it and the shell that started it."""
    layout = str(request.param)
    mounts = [m for m in read_mounts(layout) if m.point.startswith(HOST_ROOT)]
    hierarchies = {
        key: m.point
        for m in mounts
        if m.fstype in ("cgroup", "cgroup2")
        for key in hierarchy_keys(m)
    }
    paths = json.loads((LAYOUTS / layout / "runc-cgroup-paths.json").read_text())
    found = Host(tmp_path / "cgroup", hierarchies, paths)
    found.root.mkdir()
    for point in set(hierarchies.values()):
        add_procs(found.here(point), [])
    for line in (LAYOUTS / layout / "cgroup").read_text().splitlines():
        _, key, path = line.split(":", 2)
        if key not in hierarchies:
            continue  # the kernel has it, but it is not mounted in this view (v2-namespace)
        add_procs(found.here(hierarchies[key] + path.rstrip("/")), [SHELL_PID])
    for key, path in paths.items():
        if key == "":  # the VPS's systemd moves every process below its own cgroup
            add_procs(found.here(path), [])
            add_procs(found.here(path) / "init.scope", VPS_PIDS[:1])
            add_procs(found.here(path) / "system.slice" / "cron.service", VPS_PIDS[1:])
        else:
            add_procs(found.here(path), VPS_PIDS)
    return found


def test_the_hierarchies_are_the_mounted_cgroup_filesystems(host: Host) -> None:
    expected = sorted(str(host.here(point)) for point in set(host.hierarchies.values()))
    assert cgroups.hierarchies(str(host.root)) == expected
    if host.hierarchies == {"": HOST_ROOT}:  # pure v2: the root is the one hierarchy
        assert expected == [str(host.root)]


def test_vzpkg_finds_the_vps_in_every_cgroup_runc_made_for_it(host: Host) -> None:
    parent, name = host.parent_and_name
    found = cgroups.group_dirs(parent, name, str(host.root))
    assert sorted(found) == sorted({str(host.here(p)) for p in host.runc_paths.values()})


def test_its_processes_are_found_once_and_the_hosts_never(host: Host) -> None:
    parent, name = host.parent_and_name
    assert cgroups.procs_of_group(parent, name, str(host.root)) == VPS_PIDS


def test_runc_state_leads_to_the_same_processes(host: Host, tmp_path: Path) -> None:
    state = tmp_path / "runc" / "vz101"
    state.mkdir(parents=True)
    here = {key: str(host.here(path)) for key, path in host.runc_paths.items()}
    (state / "state.json").write_text(json.dumps({"cgroup_paths": here}))
    found = cgroup_pids(tmp_path / "runc", "vz101")
    assert found is not None and sorted(found) == VPS_PIDS


def test_only_the_hierarchies_systemd_manages_are_delegated(host: Host) -> None:
    delegated = cgroups.delegated_dirs(host.runc_paths)
    expected = [host.runc_paths[""]]
    if "name=systemd" in host.hierarchies:
        expected.append(host.runc_paths["name=systemd"])
    assert delegated == expected
    controllers = {k: p for k, p in host.runc_paths.items() if k not in ("", "name=systemd")}
    assert not set(delegated) & set(controllers.values())


def test_a_comounted_hierarchy_and_its_symlinks_count_once(tmp_path: Path) -> None:
    """As systemd mounts v1 on a hybrid host: cpu,cpuacct with cpu and cpuacct linked to it."""
    for hierarchy in ("cpu,cpuacct", "unified"):
        add_procs(tmp_path / hierarchy, [SHELL_PID])
        add_procs(tmp_path / hierarchy / "vzpkg" / "101", VPS_PIDS)
    for link in ("cpu", "cpuacct"):
        (tmp_path / link).symlink_to("cpu,cpuacct")
    assert cgroups.hierarchies(str(tmp_path)) == [
        str(tmp_path / "cpu,cpuacct"),
        str(tmp_path / "unified"),
    ]
    assert cgroups.procs_of_group("vzpkg", "101", str(tmp_path)) == VPS_PIDS


def test_no_cgroup_filesystem_means_no_hierarchy(tmp_path: Path) -> None:
    (tmp_path / "not-a-hierarchy").mkdir()
    assert cgroups.hierarchies(str(tmp_path)) == []
    assert cgroups.hierarchies(str(tmp_path / "absent")) == []
    assert cgroups.group_dirs("vzpkg", "101", str(tmp_path)) == []
