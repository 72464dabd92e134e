"""Where a VPS may live: never a host system directory or one of vzpkg's own, never inside or
above another VPS's places; and the mark that proves a private area is a VPS's own."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from vzpkg.ct import places
from vzpkg.ct.places import Place, check_apart, check_place
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig, host_config_from


@pytest.fixture
def host(tmp_path: Path) -> HostConfig:
    return host_config_from(
        {
            "TEMPLATE": str(tmp_path / "template"),
            "LOCKDIR": str(tmp_path / "lock"),
            "CONF_DIR": str(tmp_path / "conf"),
            "RUN_DIR": str(tmp_path / "run"),
            "VE_ROOT": str(tmp_path / "root/$VEID"),
            "VE_PRIVATE": str(tmp_path / "private/$VEID"),
        },
        "test",
    )


@pytest.mark.parametrize(
    "path",
    ["/", "/etc", "/etc/vz", "/usr", "/usr/lib/x", "/home", "/var/lib", "/proc/1", "/dev",
     "/dev/sda", "/boot/x", "/sys/kernel", "/tmp", "/dev/shm", "/vz", "/vz/private", "/root"],
)  # fmt: skip
def test_system_directories_are_refused(host: HostConfig, path: str) -> None:
    with pytest.raises(VzError) as e:
        check_place(host, 101, "root", Path(path), ExitCode.INVALID_VALUE)
    assert e.value.code == ExitCode.INVALID_VALUE
    assert path in e.value.message and "nothing was done" in e.value.message


@pytest.mark.parametrize(
    "path", ["/vz/private/101", "/srv/vz/101", "/dev/shm/vz/101", "/home/vz/1"]
)
def test_ordinary_places_are_fine(host: HostConfig, path: str) -> None:
    check_place(host, 101, "private area", Path(path), ExitCode.INVALID_VALUE)


@pytest.mark.parametrize("name", ["conf", "lock", "run/x", "template", "template/trees/y"])
def test_vzpkgs_own_directories_are_refused(host: HostConfig, tmp_path: Path, name: str) -> None:
    with pytest.raises(VzError):
        check_place(host, 101, "private area", tmp_path / name, ExitCode.INVALID_VALUE)
    with pytest.raises(VzError):  # nor above them
        check_place(host, 101, "private area", tmp_path, ExitCode.INVALID_VALUE)


def test_places_of_two_vpss_never_overlap(tmp_path: Path) -> None:
    other = Place(4001, tmp_path / "private/4001", tmp_path / "root/4001")
    fine = (tmp_path / "private/4014", tmp_path / "root/4014")
    check_apart(4014, *fine, [other], ExitCode.INVALID_VALUE)
    for private, root in (
        (tmp_path / "private/4014", tmp_path / "root/4001"),  # the same root
        (tmp_path / "private/4001/upper/x", tmp_path / "root/4014"),  # inside its private
        (tmp_path / "private", tmp_path / "root/4014"),  # above its private
        (tmp_path / "private/4014", tmp_path / "root/4001/mnt"),  # inside its root
        (tmp_path / "private/4014", tmp_path / "private/4014/root"),  # its own, nested
    ):
        with pytest.raises(VzError) as e:
            check_apart(4014, private, root, [other], ExitCode.INVALID_VALUE)
        assert e.value.code == ExitCode.INVALID_VALUE


def test_a_symlink_does_not_hide_an_overlap(tmp_path: Path) -> None:
    (tmp_path / "private/4001").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "private/4001")
    other = Place(4001, tmp_path / "private/4001", tmp_path / "root/4001")
    with pytest.raises(VzError):
        check_apart(4014, tmp_path / "alias", tmp_path / "root/4014", [other], ExitCode.CONFIG)


def test_symlinks_in_another_vpss_places_do_not_hide_an_overlap(tmp_path: Path) -> None:
    # Their places are resolved with their parent directory shared: a link as the last part,
    # a link as the parent, and a parent that does not exist (yet) must all still be seen.
    (tmp_path / "data/4001").mkdir(parents=True)
    (tmp_path / "private").mkdir()
    (tmp_path / "private/4001").symlink_to(tmp_path / "data/4001")
    (tmp_path / "linked").symlink_to(tmp_path / "data")
    cases = (
        (Place(4001, tmp_path / "private/4001", tmp_path / "root/4001"), "data/4001/x"),
        (Place(4002, tmp_path / "linked/4002", tmp_path / "root/4002"), "data/4002"),
        (Place(4003, tmp_path / "none/yet/4003", tmp_path / "root/4003"), "none/yet/4003"),
    )
    for other, mine in cases:
        with pytest.raises(VzError) as e:
            check_apart(4014, tmp_path / mine, tmp_path / "root/4014", [other], ExitCode.CONFIG)
        assert f"CT {other.ctid}" in e.value.message
    others = [other for other, _ in cases]
    check_apart(4014, tmp_path / "data/4014", tmp_path / "root/4014", others, ExitCode.CONFIG)


def test_other_places_reads_again_only_what_changed(
    host: HostConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vzpkg.ct import conf

    host.conf_dir.mkdir(parents=True)
    for ctid in (4001, 4002, 4003):
        conf.conf_path(host, ctid).write_text(f'VE_ROOT="/srv/r/{ctid}"\n')
    reads: list[int] = []
    read = conf.read_ct_config

    def counted(host: HostConfig, ctid: str | int) -> conf.CtConfig:
        reads.append(int(ctid))
        return read(host, ctid)

    monkeypatch.setattr(conf, "read_ct_config", counted)
    others = places.OtherPlaces(host, 4002)
    assert [p.ctid for p in others()] == [4001, 4003] and sorted(reads) == [4001, 4003]
    reads.clear()
    assert [p.root for p in others()] == [Path("/srv/r/4001"), Path("/srv/r/4003")]
    assert reads == []
    conf.write_ct_config(host, 4003, replace(read(host, 4003), ve_root="/srv/moved/4003"))
    conf.conf_path(host, 4004).write_text('VE_ROOT="/srv/r/4004"\n')  # made meanwhile
    conf.conf_path(host, 4001).unlink()  # destroyed meanwhile
    reads.clear()
    assert [p.root for p in others()] == [Path("/srv/moved/4003"), Path("/srv/r/4004")]
    assert sorted(reads) == [4003, 4004]
    assert [p.ctid for p in places.places_of_others(host, 4004)] == [4002, 4003]


def test_the_places_read_are_kept_for_the_next_command(
    host: HostConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vzpkg.ct import conf

    host.conf_dir.mkdir(parents=True)
    host.run_dir.mkdir(parents=True)
    for ctid in (4001, 4002):
        conf.conf_path(host, ctid).write_text(
            f'VE_ROOT="/srv/r/{ctid}"\nLOCAL_UID="{ctid}0000"\nLOCAL_GID="{ctid}0000"\n'
        )
    reads: list[int] = []
    read = conf.read_ct_config

    def counted(host: HostConfig, ctid: str | int) -> conf.CtConfig:
        reads.append(int(ctid))
        return read(host, ctid)

    monkeypatch.setattr(conf, "read_ct_config", counted)
    first = places.OtherPlaces(host, 4009)()
    assert sorted(reads) == [4001, 4002]
    reads.clear()
    assert places.OtherPlaces(host, 4009)() == first and reads == []  # another command
    assert places.blocks_of_others(host, 4001) == [40020000, 40020000] and reads == []
    cache = host.run_dir / places.PLACES_CACHE
    assert cache.stat().st_mode & 0o077 == 0
    for damage in (b"{", b'{"4001": [[1, 2], "/x", "/y", null, null]}', b'{"4001": 5}'):
        cache.write_bytes(damage)
        assert places.OtherPlaces(host, 4009)() == first and sorted(reads) == [4001, 4002]
        reads.clear()


def test_the_ownership_mark(tmp_path: Path) -> None:
    area = tmp_path / "area"
    area.mkdir()
    assert places.stamp_of(area) is None
    if os.geteuid() != 0:
        return  # trusted.* needs root (as only root can forge it)
    places.stamp(area, 101)
    assert places.stamp_of(area) == 101
    link = tmp_path / "link"
    link.symlink_to(area)
    assert places.stamp_of(link) is None  # never through a symlink
    error = places.not_owned(102, area, "nothing was removed", ExitCode.DESTROY_FAILED)
    assert "CT 101" in error.message and error.code == ExitCode.DESTROY_FAILED
