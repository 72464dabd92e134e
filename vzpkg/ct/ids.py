"""How a VPS is named to runc. Kept apart so that vzctl's exec fast path imports nothing else."""

CONTAINER_PREFIX = "vz"  # keeps VPSs apart from anything else in a runc state directory


def container_id(ctid: str) -> str:
    return f"{CONTAINER_PREFIX}{ctid}"
