"""Layouts without root: mountinfo read exactly, mount arguments, layout detection that a VPS
cannot forge, and the refusals create_private makes before it touches anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vzpkg import mounts
from vzpkg.ct import layout
from vzpkg.ct.layout import (
    TREE_MARKER,
    create_private,
    layout_of,
    mount_argv,
    overlay_options,
)
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig, host_config_from
from vzpkg.mounts import is_mounted, mounts_using, parse_mountinfo

SHA = "ab" * 32

MOUNTINFO = b"""\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
40 27 254:0 /vz/private/101 /vz/root/101 rw,relatime - ext4 /dev/vda rw,discard
41 27 0:39 / /vz/root/102 rw,relatime master:3 - overlay overlay rw,\
lowerdir=/vz/template/trees/%(sha)s/root,upperdir=/vz/private/102/upper,\
workdir=/vz/private/102/work,uuid=on
42 27 0:40 / /mnt/with\\040space rw - tmpfs tmp\\134fs rw
43 27 0:41 / /vz/root/1010 rw - tmpfs tmpfs rw
""".replace(b"%(sha)s", SHA.encode())


@pytest.fixture
def fake_mountinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mountinfo"
    path.write_bytes(MOUNTINFO)
    monkeypatch.setattr(mounts, "MOUNTINFO", path)


@pytest.fixture
def host(tmp_path: Path) -> HostConfig:
    return host_config_from(
        {
            "TREES_DIR": str(tmp_path / "trees"),
            "LOCKDIR": str(tmp_path / "lock"),
            "VE_PRIVATE": str(tmp_path / "private/$VEID"),
            "VE_ROOT": str(tmp_path / "root/$VEID"),
        },
        "test",
    )


def test_parse_mountinfo_unescapes_and_skips_optional_fields() -> None:
    entries = parse_mountinfo(MOUNTINFO + b"garbage line\n")
    assert [e.mount_point for e in entries] == [
        "/proc", "/", "/vz/root/101", "/vz/root/102", "/mnt/with space", "/vz/root/1010",
    ]  # fmt: skip
    bind = entries[2]
    assert (bind.device, bind.fs_root, bind.fstype) == ("254:0", "/vz/private/101", "ext4")
    overlay = entries[3]
    assert overlay.fstype == "overlay"
    assert overlay.option("upperdir") == "/vz/private/102/upper"
    assert overlay.option("uuid") == "on"
    assert overlay.option("nosuch") is None
    assert entries[4].source == "tmp\\fs"


@pytest.mark.usefixtures("fake_mountinfo")
def test_is_mounted_matches_exactly_not_by_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a kernel without statx's mount attributes (before 5.8) leaves: mountinfo decides.
    monkeypatch.setattr(mounts, "_mount_at", lambda path: None)
    assert is_mounted(Path("/vz/root/101"))
    assert is_mounted(Path("/vz/root/101/"))
    assert is_mounted(Path("/mnt/with space"))
    assert not is_mounted(Path("/vz/root/10"))  # a prefix of 101 and 1010
    assert not is_mounted(Path("/vz/root"))
    assert not is_mounted(Path("/vz/root/101/etc"))


def test_is_mounted_on_the_real_mount_table() -> None:
    assert is_mounted(Path("/"))
    assert is_mounted(Path("/proc"))
    assert not is_mounted(Path("/pro"))


@pytest.mark.usefixtures("fake_mountinfo")
def test_mounts_using_finds_bind_mounts_overlay_layers_and_submounts() -> None:
    # A plain private area bound elsewhere: found through the bind mount's source.
    assert mounts_using(Path("/vz/private/101")) == ["/vz/root/101"]
    assert mounts_using(Path("/vz/private/102")) == ["/vz/root/102"]  # upper and work
    assert mounts_using(Path(f"/vz/template/trees/{SHA}")) == ["/vz/root/102"]  # lower
    assert mounts_using(Path("/vz/root/1010")) == ["/vz/root/1010"]
    assert mounts_using(Path("/vz/private/10")) == []
    assert mounts_using(Path("/vz/template/trees/other")) == []


def test_overlay_options_refuse_paths_that_would_split() -> None:
    assert overlay_options(Path("/t/root"), Path("/p/upper"), Path("/p/work")) == (
        "lowerdir=/t/root,upperdir=/p/upper,workdir=/p/work"
    )
    for bad in ("/p,x/upper", "/p:x/upper", "/p x/upper", "/p\\x/upper", "/p=x/upper"):
        with pytest.raises(VzError) as e:
            overlay_options(Path("/t/root"), Path(bad), Path("/p/work"))
        assert e.value.code == ExitCode.INVALID_VALUE


def test_mount_argv() -> None:
    assert mount_argv("plain", Path("/vz/private/101"), Path("/vz/root/101")) == [
        "mount", "--bind", "--make-private", "/vz/private/101", "/vz/root/101",
    ]  # fmt: skip
    assert mount_argv("overlay", "overlay", Path("/vz/root/102"), "lowerdir=/a") == [
        "mount", "--make-private", "-t", "overlay", "-o", "lowerdir=/a", "overlay",
        "/vz/root/102",
    ]  # fmt: skip


def make_overlay_private(host: HostConfig, ctid: int, private: Path, *, ref: bool) -> None:
    """What create_private makes for overlay, by hand (no unpacking needed)."""
    for sub in ("upper", "work"):
        (private / sub).mkdir(parents=True)
    (private / TREE_MARKER).write_text(SHA + "\n")
    refs = host.trees_dir / SHA / "refs"
    refs.mkdir(parents=True)
    (host.trees_dir / SHA / "root").mkdir()
    if ref:
        (refs / str(ctid)).write_text(f"{private}\n")


def test_layout_detection(host: HostConfig, tmp_path: Path) -> None:
    plain = tmp_path / "private/101"
    (plain / "etc").mkdir(parents=True)
    assert layout_of(host, 101, plain) == "plain"
    overlay = tmp_path / "private/102"
    make_overlay_private(host, 102, overlay, ref=True)
    assert layout_of(host, 102, overlay) == "overlay"
    # The reference names the CT and its private path: another CT cannot borrow it.
    assert layout_of(host, 103, plain) == "plain"
    with pytest.raises(VzError) as e:
        layout_of(host, 102, tmp_path / "private/nosuch")
    assert e.value.code == ExitCode.PRIVATE_MISSING


def test_a_marker_forged_inside_a_plain_vps_is_not_believed(
    host: HostConfig, tmp_path: Path
) -> None:
    make_overlay_private(host, 102, tmp_path / "private/102", ref=True)
    plain = tmp_path / "private/101"
    plain.mkdir()
    # The VPS's root user writes what an overlay private area holds, naming a real tree.
    (plain / TREE_MARKER).write_text(SHA + "\n")
    (plain / "upper").symlink_to("/etc")
    (plain / "work").mkdir()
    with pytest.raises(VzError) as e:
        layout_of(host, 101, plain)
    assert e.value.hint is not None and 'VE_LAYOUT="plain"' in e.value.hint
    # With VE_LAYOUT="plain" in its config the VPS is mounted as what it is.
    assert layout._resolve_layout(host, 101, plain, "plain") == ("plain", None)
    with pytest.raises(VzError):
        layout._resolve_layout(host, 101, plain, "overlay")
    # A FIFO as marker does not hang detection.
    (plain / TREE_MARKER).unlink()
    os.mkfifo(plain / TREE_MARKER)
    with pytest.raises(VzError):
        layout_of(host, 101, plain)


def test_configured_layout_must_match_the_private_area(host: HostConfig, tmp_path: Path) -> None:
    overlay = tmp_path / "private/102"
    make_overlay_private(host, 102, overlay, ref=True)
    with pytest.raises(VzError) as e:
        layout._resolve_layout(host, 102, overlay, "plain")
    assert "overlay private area" in e.value.message
    assert layout._resolve_layout(host, 102, overlay, "overlay") == ("overlay", SHA)
    plain = tmp_path / "private/101"
    plain.mkdir()
    with pytest.raises(VzError) as e:
        layout._resolve_layout(host, 101, plain, "overlay")
    assert "plain private area" in e.value.message


def test_overlay_whose_reference_is_gone_is_an_error(host: HostConfig, tmp_path: Path) -> None:
    overlay = tmp_path / "private/102"
    make_overlay_private(host, 102, overlay, ref=False)
    with pytest.raises(VzError) as e:
        layout._resolve_layout(host, 102, overlay, "overlay")
    assert "no template tree" in e.value.message


@pytest.mark.parametrize("kind", ["plain", "overlay"])
def test_create_into_a_non_empty_private_area_is_refused_untouched(
    host: HostConfig, tmp_path: Path, kind: str
) -> None:
    private = tmp_path / "private/101"
    private.mkdir(parents=True)
    (private / "precious").write_text("keep me\n")
    with pytest.raises(VzError) as e:
        create_private(host, 101, kind, tmp_path / "nosuch.tar.zst", SHA, private)
    assert e.value.code == ExitCode.PRIVATE_EXISTS
    assert int(e.value.code) == 44
    assert os.listdir(private) == ["precious"]
    assert (private / "precious").read_text() == "keep me\n"
    assert sorted(os.listdir(private.parent)) == ["101"]  # no .tmp
    assert not host.trees_dir.exists()


def test_create_refuses_a_symlink_as_private_area(host: HostConfig, tmp_path: Path) -> None:
    private = tmp_path / "private/101"
    private.parent.mkdir()
    private.symlink_to(tmp_path)
    with pytest.raises(VzError) as e:
        create_private(host, 101, "plain", tmp_path / "x.tar.zst", SHA, private)
    assert e.value.code == ExitCode.PRIVATE_EXISTS


@pytest.mark.parametrize(
    ("kind", "sha", "ctid"),
    [("ploop", SHA, 101), ("plain", "../../etc", 101), ("overlay", "ab" * 31, 101),
     ("plain", SHA, 0)],
)  # fmt: skip
def test_create_refuses_bad_arguments_before_touching_anything(
    host: HostConfig, tmp_path: Path, kind: str, sha: str, ctid: int
) -> None:
    with pytest.raises(VzError) as e:
        create_private(host, ctid, kind, tmp_path / "x.tar.zst", sha, tmp_path / "private/101")
    assert e.value.code in (ExitCode.INVALID_VALUE, ExitCode.INVALID_ARGUMENT)
    assert not (tmp_path / "private").exists()


def test_an_unmount_found_busy_is_tried_again_for_a_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    from vzpkg import syscalls

    outcomes: list[int] = []
    slept: list[float] = []

    def umount(target: Path) -> None:
        code = outcomes.pop(0)
        if code:
            raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr(syscalls, "umount", umount)
    # Busy right after the VPS's processes went, then free: unmounted, after two waits.
    outcomes[:] = [errno.EBUSY, errno.EBUSY, 0]
    layout.umount_busy_retried(Path("/vz/root/101"), sleep=slept.append)
    assert outcomes == [] and slept == list(layout.UMOUNT_BUSY_WAITS[:2])
    # Busy for good: refused once the waits (2 s in all) are over.
    waits = layout.UMOUNT_BUSY_WAITS
    assert 1.0 <= sum(waits) <= 3.0
    outcomes[:] = [errno.EBUSY] * (len(waits) + 1) + [0]
    slept.clear()
    with pytest.raises(VzError) as e:
        layout.umount_busy_retried(Path("/vz/root/101"), sleep=slept.append)
    assert e.value.code == ExitCode.UMOUNT_FAILED and "busy" in e.value.message
    assert slept == list(waits) and outcomes == [0]
    # Any other error: refused at once.
    outcomes[:] = [errno.EINVAL, 0]
    slept.clear()
    with pytest.raises(VzError) as e:
        layout.umount_busy_retried(Path("/vz/root/101"), sleep=slept.append)
    assert e.value.code == ExitCode.UMOUNT_FAILED and slept == [] and outcomes == [0]
