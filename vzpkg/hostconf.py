"""Host configuration: a vz.conf-style ``KEY="value"`` file plus environment overrides.

The file is the one named by ``$VZPKG_CONF``, else /etc/vz/vzpkg.conf when it exists. Any key can
be overridden by the environment variable ``VZPKG_<KEY>`` (e.g. ``VZPKG_CACHE_DIR``). Run from a
checkout with no system file, the checkout's own ``metadata/`` and ``caches/`` are used, so the
tools work out of the box. See docs/configuration.md for every key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vzpkg import hostvalues
from vzpkg.errors import ExitCode, VzError
from vzpkg.hostvalues import MIRROR_KEY, is_known_key, parse_values

SYSTEM_CONF = Path(hostvalues.SYSTEM_CONF)
CHECKOUT = Path(__file__).resolve().parent.parent


def parse_kv(text: str, source: str) -> dict[str, str]:
    """Parse shell-style ``KEY="value"`` lines (comments, blank lines, $VAR references)."""
    values, problems = parse_values(text, source)
    if problems:
        raise VzError("invalid configuration:\n  " + "\n  ".join(problems), ExitCode.CONFIG)
    return values


def _int_value(values: Mapping[str, str], key: str, default: int, source: str) -> int:
    try:
        return int(values.get(key, default))
    except ValueError:
        raise VzError(f"{source}: {key} must be a number", ExitCode.CONFIG) from None


def _layout_value(value: str | None, source: str) -> str | None:
    # OpenVZ's simfs is a plain directory tree; ploop images are not supported.
    layout = {"simfs": "plain"}.get(value or "", value or None)
    if layout not in (None, "plain", "overlay"):
        raise VzError(f"{source}: VE_LAYOUT must be plain or overlay (or simfs)", ExitCode.CONFIG)
    return layout


@dataclass(frozen=True)
class HostConfig:
    template_dir: Path
    metadata_dir: Path
    cache_dir: Path
    pkgcache_dir: Path
    lock_dir: Path
    build_dir: Path | None  # where new roots are bootstrapped; None: /dev/shm when roomy
    ve_root: str  # may contain $VEID, expanded per CT
    ve_private: str
    conf_dir: Path = Path(hostvalues.DEFAULT_CONF_DIR)  # CTID.conf files and samples
    trees_dir: Path = Path("/vz/template/trees")  # overlay layout: shared template trees
    run_dir: Path = Path(hostvalues.DEFAULT_RUN_DIR)  # runtime state: runc root, OCI bundles
    stop_timeout: int = 60
    ve_layout: str | None = None  # default layout of new VPSs: plain | overlay
    bootstrap_tool: str | None = None  # force mmdebstrap / debootstrap
    zstd_level: int = 3
    mirrors: Mapping[str, str] = field(default_factory=dict)  # DEBIAN_MIRROR -> "debian": url
    source: str = "built-in defaults"

    def mirror(self, name: str) -> str | None:
        return self.mirrors.get(name)


def load_host_config(environ: Mapping[str, str] | None = None) -> HostConfig:
    env = os.environ if environ is None else environ
    try:
        conf_path = hostvalues.conf_file(env, SYSTEM_CONF)
    except FileNotFoundError:
        raise VzError(
            f"configuration file {env['VZPKG_CONF']} (from VZPKG_CONF) does not exist",
            ExitCode.CONFIG,
            hint="unset VZPKG_CONF or create the file",
        ) from None
    values: dict[str, str] = {}
    if conf_path is not None:
        try:
            with open(conf_path) as f:
                values = parse_kv(f.read(), conf_path)
        except OSError as e:
            raise VzError(f"cannot read {conf_path}: {e.strerror}", ExitCode.CONFIG) from None
    overrides = hostvalues.env_overrides(env)
    unknown = sorted(f"VZPKG_{key}" for key in overrides if not is_known_key(key))
    if unknown:
        # Say so here: reported as keys of the file, they would send the user looking there.
        raise VzError(
            f"environment: unknown variable(s) {', '.join(unknown)}",
            ExitCode.CONFIG,
            hint="see docs/configuration.md for the keys vzpkg reads",
        )
    values.update(overrides)
    return host_config_from(values, conf_path or "built-in defaults")


def host_config_from(values: Mapping[str, str], source: str) -> HostConfig:
    unknown = sorted(k for k in values if not is_known_key(k))
    if unknown:
        raise VzError(
            f"{source}: unknown key(s) {', '.join(unknown)}",
            ExitCode.CONFIG,
            hint="see docs/configuration.md for the keys vzpkg reads",
        )
    in_checkout = (CHECKOUT / "metadata").is_dir() and (CHECKOUT / "pyproject.toml").is_file()
    template = Path(values.get("TEMPLATE", "/vz/template"))
    if in_checkout:
        metadata_default, cache_default = CHECKOUT / "metadata", CHECKOUT / "caches"
    else:
        metadata_default, cache_default = template / "metadata", template / "cache"
    cache_dir = Path(values.get("CACHE_DIR", cache_default))
    try:
        level = int(values.get("ZSTD_LEVEL", "3"))
    except ValueError:
        raise VzError(f"{source}: ZSTD_LEVEL must be a number", ExitCode.CONFIG) from None
    tool = values.get("BOOTSTRAP_TOOL") or None
    if tool not in (None, "mmdebstrap", "debootstrap"):
        raise VzError(
            f"{source}: BOOTSTRAP_TOOL must be mmdebstrap or debootstrap", ExitCode.CONFIG
        )
    mirrors = {
        key.removesuffix("_MIRROR").lower().replace("_", "-"): value
        for key, value in values.items()
        if MIRROR_KEY.match(key) and value
    }
    return HostConfig(
        template_dir=template,
        metadata_dir=Path(values.get("METADATA_DIR", metadata_default)),
        cache_dir=cache_dir,
        pkgcache_dir=Path(values.get("PKGCACHE_DIR", cache_dir / ".pkgcache")),
        lock_dir=Path(values.get("LOCKDIR", "/vz/lock")),
        build_dir=Path(values["BUILD_DIR"]) if values.get("BUILD_DIR") else None,
        ve_root=values.get("VE_ROOT", "/vz/root/$VEID"),
        ve_private=values.get("VE_PRIVATE", "/vz/private/$VEID"),
        conf_dir=Path(values.get("CONF_DIR", hostvalues.DEFAULT_CONF_DIR)),
        trees_dir=Path(values.get("TREES_DIR", str(template / "trees"))),
        run_dir=Path(values.get("RUN_DIR", hostvalues.DEFAULT_RUN_DIR)),
        stop_timeout=_int_value(values, "STOP_TIMEOUT", 60, source),
        ve_layout=_layout_value(values.get("VE_LAYOUT"), source),
        bootstrap_tool=tool,
        zstd_level=level,
        mirrors=mirrors,
        source=source,
    )
