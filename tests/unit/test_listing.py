"""vzlist's table as OpenVZ prints it."""

from __future__ import annotations

from typing import Any

import pytest

from vzpkg.ct.listing import format_table, parse_fields, sort_records
from vzpkg.errors import ExitCode, VzError

RECORDS: list[dict[str, Any]] = [
    {"ctid": 102, "nproc": None, "status": "stopped", "ip": [], "hostname": None},
    {"ctid": 101, "nproc": 8, "status": "running", "ip": ["192.168.4.45"], "hostname": "ct101"},
]


def test_default_columns_match_openvz() -> None:
    text = format_table(sort_records(RECORDS, None), parse_fields(None))
    assert text.splitlines() == [
        "      CTID      NPROC STATUS    IP_ADDR         HOSTNAME",
        "       101          8 running   192.168.4.45    ct101",
        "       102          - stopped   -               -",
    ]


def test_fields_sorting_and_no_header() -> None:
    text = format_table(sort_records(RECORDS, "-ctid"), parse_fields("veid,hostname"), header=False)
    assert text.splitlines() == ["       102 -", "       101 ct101"]
    assert [r["ctid"] for r in sort_records(RECORDS, "status")] == [101, 102]
    assert format_table([], parse_fields(None), header=False) == ""


def test_unknown_fields_are_errors() -> None:
    with pytest.raises(VzError) as e:
        parse_fields("ctid,colour")
    assert e.value.code == ExitCode.INVALID_VALUE
    with pytest.raises(VzError):
        sort_records(RECORDS, "colour")
