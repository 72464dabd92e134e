"""The id arithmetic of an in-place shift: capabilities, ACLs, the plan on disk."""

from __future__ import annotations

import struct

import pytest

from vzpkg.ct.shift import PRIVILEGED, Plan, shifted_acl, shifted_caps

BASE = 1 << 30
UP = Plan(PRIVILEGED, (BASE, BASE))
DOWN = Plan((BASE, BASE), PRIVILEGED)
BODY = struct.pack("<4I", 1 << 13, 0, 0, 0)


def test_v2_caps_become_v3_for_the_blocks_root_and_back() -> None:
    v2 = struct.pack("<I", 0x02000001) + BODY
    v3 = shifted_caps(v2, UP)
    assert v3 == struct.pack("<I", 0x03000001) + BODY + struct.pack("<I", BASE)
    assert v3 is not None and shifted_caps(v3, DOWN) == v2
    assert shifted_caps(v3, UP) == v3  # done already: unchanged (a resumed shift)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\x00" * 20,  # no revision
        struct.pack("<I", 0x03000000) + BODY,  # v3 magic, v2 size
        struct.pack("<I", 0x03000000) + BODY + struct.pack("<I", 3 * BASE),  # another root's
    ],
)
def test_caps_the_kernel_did_not_make_are_left_out(value: bytes) -> None:
    assert shifted_caps(value, UP) is None


def test_acl_named_ids_move_and_the_others_stay() -> None:
    entries = [(0x01, 7, 0xFFFFFFFF), (0x02, 5, 1000), (0x08, 4, 100), (0x02, 4, 70000)]

    def acl(ids: list[tuple[int, int, int]]) -> bytes:
        return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in ids)

    moved = shifted_acl(acl(entries), UP)
    assert moved == acl(
        [(0x01, 7, 0xFFFFFFFF), (0x02, 5, BASE + 1000), (0x08, 4, BASE + 100), (0x02, 4, 70000)]
    )
    assert shifted_acl(moved, DOWN) == acl(entries)
    assert shifted_acl(b"\x01\x00\x00\x00", UP) == b"\x01\x00\x00\x00"  # not version 2


def test_the_plan_survives_the_disk_and_a_damaged_one_is_refused() -> None:
    plan = Plan(PRIVILEGED, (BASE, BASE), {"usr/bin/su": 0o4755}, {"usr/bin/ping": "00ff"})
    assert Plan.from_json(plan.to_json()) == plan
    for text in ('{"from": [0], "to": [1, 1], "modes": {}, "caps": {}}', "[]", "{"):
        with pytest.raises((ValueError, KeyError, TypeError)):
            Plan.from_json(text)
