"""DISKSPACE and DISKINODES: OpenVZ's value syntax, checked before anything changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from vzpkg.ct import disk
from vzpkg.errors import ExitCode, VzError

M, G = 1 << 20, 1 << 30


@pytest.mark.parametrize(
    ("text", "space", "hard"),
    [
        ("10G", 10 * G, 10 * G),
        ("10G:11G", 10 * G, 11 * G),
        ("2G:2.2G", 2 * G, int(2.2 * G)),  # OpenVZ's basic sample
        ("1048576", G, G),  # a plain number is KiB, as OpenVZ's
        ("1048576:1153434", G, 1153434 * 1024),
        ("200m", 200 * M, 200 * M),
        ("unlimited", None, None),
        ("unlimited:5G", 5 * G, 5 * G),
        ("9223372036854775807", None, None),  # OpenVZ's LONG_MAX
    ],
)
def test_diskspace_values(text: str, space: int | None, hard: int | None) -> None:
    parsed = disk.parse({"DISKSPACE": text})
    assert (parsed.space, parsed.space_hard) == (space, hard)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("12Q", "is not a size"),
        ("-1G", "is not a size"),
        ("10G:9G", "hard limit below its soft limit"),
        ("16M", "is not from 32M"),
        ("", "is not a size"),
        ("1G:2G:3G", "is not a size"),
        ("10\u212a", "is not a size"),  # the Kelvin sign, which IGNORECASE folds to k
        ("1G:", "empty half"),
        (":1G", "empty half"),
        (" ", "is empty"),
    ],
)
def test_bad_diskspace_is_named(text: str, why: str) -> None:
    if text == "":
        assert disk.parse({"DISKSPACE": text}).space is None  # an empty value: unset
        return
    with pytest.raises(VzError) as caught:
        disk.parse({"DISKSPACE": text}, from_options=True)
    assert caught.value.code == ExitCode.INVALID_VALUE
    assert "--diskspace" in caught.value.message and why in caught.value.message


@pytest.mark.parametrize("text", ["1.5", "10K", "100", "x", "200000:100000"])
def test_bad_diskinodes_is_named(text: str) -> None:
    with pytest.raises(VzError) as caught:
        disk.parse({"DISKINODES": text})
    assert caught.value.code == ExitCode.INVALID_VALUE
    assert "DISKINODES" in caught.value.message


def test_config_values_are_canonical() -> None:
    assert disk.config_values({"DISKSPACE": "200m"}) == {"DISKSPACE": "200M:200M"}
    assert disk.config_values({"DISKSPACE": "1048576:1153434"}) == {"DISKSPACE": "1G:1153434"}
    assert disk.config_values({"DISKSPACE": "unlimited"}) == {"DISKSPACE": "unlimited:unlimited"}
    assert disk.config_values({"DISKINODES": "200000"}) == {"DISKINODES": "200000:200000"}
    # What config_values writes reads back to the same limits.
    for text in ("3G:3.5G", "123456", "unlimited:7G"):
        written = disk.config_values({"DISKSPACE": text})["DISKSPACE"]
        assert disk.parse({"DISKSPACE": written}) == disk.parse({"DISKSPACE": text})


def test_the_image_leaves_room_to_grow_live() -> None:
    assert disk.ceiling(200 * M) == 200 * M + 2 * G
    assert disk.ceiling(10 * G) == 20 * G
    assert disk.ceiling(200 * M + 1) % disk.BLOCK == 0


def test_a_private_area_without_the_mark_has_no_disk(tmp_path: Path) -> None:
    (tmp_path / disk.IMAGE).write_bytes(b"")  # a plain VPS's own file of that name
    assert not disk.has_disk(tmp_path)
    assert disk.data_dir(tmp_path) == tmp_path
    assert disk.plain_root(tmp_path) == tmp_path
