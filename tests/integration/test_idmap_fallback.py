"""Where TREES_DIR's filesystem cannot be idmapped, a new VPS still gets its user namespace:
a private copy of its template with its own ids (plain layout), and create says so."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import VzHost

pytestmark = [pytest.mark.root, pytest.mark.network, pytest.mark.slow]

MINIMAL = "debian-12-x86_64-minimal"
CTID = str(int(time.time()) % 1000 * 7 + 47000)


def test_a_trees_dir_that_cannot_idmap_gives_a_private_copy(vzhost: VzHost, tmp_path: Path) -> None:
    host = vzhost.with_cache(MINIMAL)
    trees = tmp_path / "trees"
    trees.mkdir()
    # ramfs: a real filesystem without idmapped mounts (nor xattrs) on this kernel.
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(trees)], check=True)
    env = dict(host.env, VZPKG_TREES_DIR=str(trees))
    try:
        made = host.run("vzctl", "create", CTID, "--ostemplate", MINIMAL, env=env)
        assert made.returncode == 0, made.stderr
        assert "private copy" in made.stderr and "(ramfs) cannot be idmapped" in made.stderr
        assert "plain layout, host ids from" in made.stderr
        assert list(trees.iterdir()) == []  # no shared tree was made
        conf = (host.base / "conf" / f"{CTID}.conf").read_text()
        assert 'VE_LAYOUT="plain"' in conf
        base = int(conf.split('LOCAL_UID="')[1].split('"')[0])
        assert (host.base / "private" / CTID / "etc/passwd").stat().st_uid == base
        assert (host.base / "run" / "idmap-probes").is_dir()

        started = host.run("vzctl", "start", CTID, env=env)
        assert started.returncode == 0, started.stderr
        seen = host.run(
            "vzctl", "exec2", CTID, "stat -c %u /etc/passwd; cat /proc/1/uid_map", env=env
        )
        assert seen.stdout.split()[:3] == ["0", "0", str(base)], seen.stdout + seen.stderr
        # An overlay VPS made privileged cannot be given a user namespace here: refused.
        overlay = str(int(CTID) + 1)
        made = host.run(
            "vzctl", "create", overlay, "--ostemplate", MINIMAL, "--userns", "no", env=env
        )
        assert made.returncode == 0, made.stderr
        refused = host.run("vzctl", "set", overlay, "--userns", "yes", "--save", env=env)
        assert refused.returncode == 21 and "cannot be seen with its own ids" in refused.stderr
        assert "USERNS" not in refused.stderr
        assert 'LOCAL_UID="0"' in (host.base / "conf" / f"{overlay}.conf").read_text()
    finally:
        host.run("vzctl", "destroy", str(int(CTID) + 1), env=env)
        host.run("vzctl", "stop", "--fast", CTID, env=env)
        host.run("vzctl", "destroy", CTID, env=env)
        subprocess.run(["umount", str(trees)], check=False)
