"""How a VPS is named: the CTID as users type it, and the container name runc knows it by.

Light (os-free, imports only vzpkg.errors): vzctl's short paths parse CTIDs here too, so that
they accept exactly what the full CLI accepts.
"""

from __future__ import annotations

from vzpkg.errors import ExitCode, VzError

CONTAINER_PREFIX = "vz"  # keeps VPSs apart from anything else in a runc state directory
CTID_MAX = 2_147_483_647  # vzctl keeps CTIDs in a C int
_ASCII_DIGITS = frozenset("0123456789")


def parse_ctid(value: object) -> int:
    """The CTID as an int: OpenVZ's CTIDs are numbers from 1 to 2147483647 (0 is the host).

    ASCII digits only (``str.isdigit`` would take other scripts' digits, which ``int`` reads
    as another number), and checked for length before ``int`` sees it.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise bad_ctid(repr(value))
    text = str(value)
    if (
        not text
        or len(text) > 10
        or not set(text) <= _ASCII_DIGITS
        or not 0 < int(text) <= CTID_MAX
    ):
        raise bad_ctid(text)
    return int(text)


def bad_ctid(text: str) -> VzError:
    shown = text if len(text) <= 40 else text[:37] + "..."
    return VzError(
        f"invalid CTID {shown!r}",
        ExitCode.INVALID_ARGUMENT,
        hint=f"a CTID is a number from 1 to {CTID_MAX}",
    )


def container_id(ctid: int | str) -> str:
    return f"{CONTAINER_PREFIX}{ctid}"
