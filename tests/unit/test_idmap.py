"""User namespace blocks: the pool reserved in /etc/subuid and /etc/subgid, and a block per
VPS that nothing else has."""

from __future__ import annotations

from pathlib import Path

import pytest

from vzpkg.ct import idmap
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostconf import HostConfig, host_config_from

BASE = 1 << 30


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HostConfig:
    monkeypatch.setattr(idmap, "SUBUID", tmp_path / "subuid")
    monkeypatch.setattr(idmap, "SUBGID", tmp_path / "subgid")
    return host_config_from(
        {
            "LOCKDIR": str(tmp_path / "lock"),
            "USERNS_POOL_BASE": str(BASE),
            "USERNS_POOL_SIZE": str(4 * idmap.BLOCK),
        },
        "test",
    )


def test_parse_subid_skips_what_is_not_a_range() -> None:
    ranges = idmap.parse_subid("alice:100000:65536\n# comment\nbad line\nbob:x:1\nroot:5:6\n")
    assert [(r.owner, r.start, r.count) for r in ranges] == [
        ("alice", 100000, 65536),
        ("root", 5, 6),
    ]


def test_the_pool_is_reserved_once_beside_what_is_there(host: HostConfig) -> None:
    idmap.SUBUID.write_text("alice:100000:65536")  # no newline at the end
    idmap.reserve_pool(host, (idmap.SUBUID, idmap.SUBGID))
    idmap.reserve_pool(host, (idmap.SUBUID, idmap.SUBGID))
    line = f"root:{BASE}:{4 * idmap.BLOCK}\n"
    assert idmap.SUBUID.read_text() == "alice:100000:65536\n" + line
    assert idmap.SUBGID.read_text() == line


def test_a_pool_overlapping_another_owner_is_refused(host: HostConfig) -> None:
    idmap.SUBUID.write_text(f"lxd:{BASE + 10}:65536\n")
    with pytest.raises(VzError) as e:
        idmap.reserve_pool(host, (idmap.SUBUID,))
    assert e.value.code == ExitCode.CONFIG and "lxd" in e.value.message
    assert idmap.SUBUID.read_text() == f"lxd:{BASE + 10}:65536\n"  # untouched


def test_blocks_are_never_shared(host: HostConfig) -> None:
    first = idmap.allocate(host, 101, lambda: [])
    assert first == BASE
    # 101's create is over (its reservation is stale: nobody holds its lock): its block now
    # counts through its CTID.conf, which the caller passes as taken.
    second = idmap.allocate(host, 102, lambda: [first])
    assert second == BASE + idmap.BLOCK
    idmap.SUBGID.write_text(
        idmap.SUBGID.read_text() + f"carol:{BASE + 2 * idmap.BLOCK}:10\n"
    )  # another owner's range inside the pool: skipped
    third = idmap.allocate(host, 103, lambda: [first, second])
    assert third == BASE + 3 * idmap.BLOCK
    with pytest.raises(VzError) as e:
        idmap.allocate(host, 104, lambda: [first, second, third])
    assert "full" in e.value.message


def test_a_pool_inside_roots_larger_reserved_range_is_reserved_already(
    host: HostConfig,
) -> None:
    idmap.SUBUID.write_text(f"root:{BASE - idmap.BLOCK}:{16 * idmap.BLOCK}\n")
    idmap.reserve_pool(host, (idmap.SUBUID,))
    assert idmap.SUBUID.read_text() == f"root:{BASE - idmap.BLOCK}:{16 * idmap.BLOCK}\n"


def test_a_block_overlapping_a_config_that_is_not_aligned_is_busy(host: HostConfig) -> None:
    # OpenVZ's LOCAL_UID=100000-style bases need not be aligned: overlap, not equality, counts.
    assert idmap.allocate(host, 201, lambda: [BASE + 10]) == BASE + 2 * idmap.BLOCK


def test_the_first_free_block_among_many_and_the_hosts_own_ids(
    host: HostConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idmap, "_host_ids", lambda: {0, 1000, BASE + 2 * idmap.BLOCK + 7})
    # A block not aligned makes blocks 0 and 1 busy, block 2 holds a host id: block 3 is free.
    assert idmap.allocate(host, 301, lambda: [BASE + 1]) == BASE + 3 * idmap.BLOCK
    assert idmap._any_between([1, 5, 9], 5, 6) and not idmap._any_between([1, 5, 9], 6, 9)
    assert not idmap._any_between([], 0, 10) and idmap._any_between([1, 5, 9], 9, 10)


def test_kernel_release_is_read_as_major_minor() -> None:
    from vzpkg.ct.idmap import kernel_release

    assert kernel_release("6.18.44-fc-v1098") == (6, 18)
    assert kernel_release("5.19rc4") == (5, 19)
    assert kernel_release("garbage") == (0, 0)
