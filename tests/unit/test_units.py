"""The shipped systemd units: systemd itself accepts them, and the command they run is one
vzpkgcache takes."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from vzpkg.cli.vzpkgcache import main

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"


def exec_line(unit: Path, key: str) -> list[str]:
    for line in unit.read_text().splitlines():
        if line.startswith(f"{key}="):
            return shlex.split(line.partition("=")[2])
    raise AssertionError(f"no {key} in {unit}")


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/usr/local/bin/", f"{bin_dir}/")
        (tmp_path / unit.name).write_text(text)
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (package systemd) is needed"
    proc = subprocess.run([analyze, "verify", *sorted(map(str, tmp_path.iterdir()))],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr


def test_the_timers_are_daily_randomised_and_catch_up() -> None:
    for name in ("vzpkgcache-refresh.timer", "vzpkgcache-fetch.timer"):
        timer = (UNITS / name).read_text()
        assert "OnCalendar=*-*-* 0" in timer
        assert "RandomizedDelaySec=" in timer and "Persistent=true" in timer


def test_the_service_runs_a_nightly_run_vzpkgcache_understands() -> None:
    argv = exec_line(UNITS / "vzpkgcache-refresh.service", "ExecStart")
    assert Path(argv[0]).name == "vzpkgcache"
    ctx = main.make_context("vzpkgcache", argv[1:])
    assert ctx.params["every"] and ctx.params["as_json"] and ctx.params["timeout"] == "3600"


def test_the_fleet_service_fetches_what_the_host_has() -> None:
    argv = exec_line(UNITS / "vzpkgcache-fetch.service", "ExecStart")
    ctx = main.make_context("vzpkgcache", argv[1:])
    assert ctx.params["names"] == ("fetch",) and ctx.params["as_json"]
