"""Notes said once: unused OpenVZ keys are reported the first time, not on every command."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from vzpkg import notes


def test_said_once_per_file_and_again_when_it_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vzpkg")
    assert notes.once(tmp_path, "/etc/vz/vz.conf", ["DUMPDIR", "IPV6"])
    assert "DUMPDIR IPV6" in caplog.text
    assert not notes.once(tmp_path, "/etc/vz/vz.conf", ["IPV6", "DUMPDIR"])
    assert notes.once(tmp_path, "/etc/vz/conf/101.conf", ["KMEMSIZE"])  # another file
    assert notes.once(tmp_path, "/etc/vz/vz.conf", ["IPV6"])  # changed: said again
    (tmp_path / notes.NOTES_FILE).write_text("{broken")
    assert notes.once(tmp_path, "/etc/vz/vz.conf", ["IPV6"])  # an unreadable record: say it
