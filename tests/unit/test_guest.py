"""Guest setup and init detection on hand-made roots (no root needed)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from vzpkg.ct.guest import (
    GuestSettings,
    InitKind,
    RenderCache,
    apply_guest_setup,
    detect_init,
    host_nameservers,
    resolve_in_root,
)


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("usr/sbin", "usr/bin", "etc", "lib/systemd"):
        (root / d).mkdir(parents=True)
    os.symlink("usr/sbin", root / "sbin")  # merged /usr
    os.symlink("usr/bin", root / "bin")
    return root


def test_sysvinit_is_detected_through_merged_usr(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "usr/sbin/init").write_bytes(b"\x7fELF")
    init = detect_init(root)
    assert init == InitKind("sysvinit", ("/sbin/init",), "SIGPWR")


def test_systemd_is_detected_by_its_link(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "lib/systemd/systemd").write_bytes(b"\x7fELF")
    os.symlink("/lib/systemd/systemd", root / "usr/sbin/init")
    assert detect_init(root).kind == "systemd"
    assert detect_init(root).stop_signal == "SIGRTMIN+3"


def test_no_init_or_busybox_init_gets_tini(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    assert detect_init(root).kind == "tini"
    (root / "usr/bin/busybox").write_bytes(b"\x7fELF")
    os.symlink("../bin/busybox", root / "usr/sbin/init")
    init = detect_init(root)
    assert init.kind == "tini"
    assert init.argv[0] == "/.vzpkg/tini"
    assert init.stop_signal == "SIGTERM"


def test_resolution_never_leaves_the_root(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "init").write_text("host file")
    os.symlink("../../../../outside", root / "etc/escape")
    resolved = resolve_in_root(root, "/etc/escape/init")
    assert resolved is None  # resolved inside the root, where there is no /outside
    os.symlink("/etc/loop", root / "etc/loop")
    assert resolve_in_root(root, "/etc/loop") is None
    assert resolve_in_root(root, "/sbin/init") is None
    assert resolve_in_root(root, "/sbin") == PurePosixPath("/usr/sbin")


def test_guest_files_are_written(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "etc/inittab").write_text(
        "id:2:initdefault:\npf::powerwait:/etc/init.d/powerfail start\n"
        "1:2345:respawn:/sbin/getty --noclear 38400 tty1\n"
        "T0:23:respawn:/sbin/getty -L ttyS0 9600 vt100\n"
    )
    settings = GuestSettings(
        "ct101.example.com", ("10.0.0.101",), ("198.51.100.53",), "example.com"
    )
    apply_guest_setup(root, "deb", settings, InitKind("sysvinit", ("/sbin/init",), "SIGPWR"))
    assert (root / "etc/hostname").read_text() == "ct101.example.com\n"
    hosts = (root / "etc/hosts").read_text()
    assert "127.0.1.1\tct101.example.com ct101" in hosts
    assert "10.0.0.101\tct101.example.com" in hosts
    resolv = (root / "etc/resolv.conf").read_text()
    assert "search example.com" in resolv and "nameserver 198.51.100.53" in resolv
    inittab = (root / "etc/inittab").read_text()
    assert "pf::powerwait:/sbin/init 0" in inittab
    assert "/etc/init.d/powerfail" not in inittab
    assert inittab.startswith("id:2:initdefault:")
    assert "#1:2345:respawn:/sbin/getty --noclear 38400 tty1" in inittab
    assert "\nT0:23:respawn:/sbin/getty -L ttyS0" in inittab  # only virtual consoles go
    # Idempotent.
    apply_guest_setup(root, "deb", settings, InitKind("sysvinit", ("/sbin/init",), "SIGPWR"))
    assert (root / "etc/inittab").read_text() == inittab


def test_symlinks_planted_by_the_vps_are_not_followed(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    victim = tmp_path / "host-hosts"
    victim.write_text("host content\n")
    os.symlink(str(victim), root / "etc/hosts")
    os.symlink(str(tmp_path / "host-inittab"), root / "etc/inittab")
    apply_guest_setup(
        root, "rpm", GuestSettings("ct"), InitKind("sysvinit", ("/sbin/init",), "SIGPWR")
    )
    assert victim.read_text() == "host content\n"
    assert not (tmp_path / "host-inittab").exists()
    assert not (root / "etc/hosts").is_symlink()


def test_host_nameservers(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nnameserver 203.0.113.1\nsearch lan\nnameserver 203.0.113.2\n")
    assert host_nameservers(conf) == ["203.0.113.1", "203.0.113.2"]
    assert host_nameservers(tmp_path / "missing") == []


def test_render_cache_skips_jinja_when_nothing_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "guest-render.json"
    first = RenderCache(path)
    text = first.render("deb", "hosts", hostname="a.example", short="a", ips=["10.0.0.1"])
    assert "a.example" in text
    first.save()
    assert path.stat().st_mode & 0o777 == 0o600

    def no_jinja(*args: object, **kwargs: object) -> str:
        raise AssertionError("rendered again although nothing changed")

    monkeypatch.setattr("vzpkg.ct.guest.render", no_jinja)
    again = RenderCache(path)
    assert again.render("deb", "hosts", hostname="a.example", short="a", ips=["10.0.0.1"]) == text
    with pytest.raises(AssertionError):  # other values: rendered afresh
        again.render("deb", "hosts", hostname="b.example", short="b", ips=[])


def test_render_cache_drops_what_a_start_did_not_use(tmp_path: Path) -> None:
    path = tmp_path / "guest-render.json"
    cache = RenderCache(path)
    cache.render("deb", "hosts", hostname="old", short="old", ips=[])
    cache.save()
    cache = RenderCache(path)
    cache.render("deb", "hosts", hostname="new", short="new", ips=[])
    cache.save()
    assert "old" not in path.read_text()
    assert "new" in path.read_text()


def test_unreadable_render_cache_is_an_empty_one(tmp_path: Path) -> None:
    path = tmp_path / "guest-render.json"
    for junk in (b"\xff not json", b"[1, 2]", b'{"k": 3}'):
        path.write_bytes(junk)
        cache = RenderCache(path)
        assert cache.entries == {}
        assert "h.example" in cache.render("deb", "hosts", hostname="h.example", short="h", ips=[])
