"""Which vzctl invocations take the exec fast path (the rest load the full CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vzpkg.cli.vzctl_entry import fast_exec


@pytest.mark.parametrize(
    "args",
    [
        ["start", "101"],
        ["exec", "101"],  # no command: the full CLI explains
        ["exec", "web", "true"],  # not a CTID
        ["exec", "101", "--help"],  # options are the full CLI's
        ["enter", "101", "true"],
        ["--debug", "exec", "101", "true"],  # debugging wants the full CLI's logging
    ],
)
def test_only_plain_exec_of_a_ctid_is_fast(args: list[str]) -> None:
    assert fast_exec(args) is None


def test_unknown_ct_falls_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "vzpkg.conf"
    conf.write_text(f'CONF_DIR="{tmp_path}/conf"\nRUN_DIR="{tmp_path}/run"\n')
    monkeypatch.setenv("VZPKG_CONF", str(conf))
    assert fast_exec(["exec", "4242", "true"]) is None
