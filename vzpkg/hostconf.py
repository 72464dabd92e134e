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
from vzpkg.hostvalues import parse_values

SYSTEM_CONF = Path(hostvalues.SYSTEM_CONF)
CHECKOUT = Path(hostvalues.CHECKOUT)


def parse_kv(text: str, source: str) -> dict[str, str]:
    """Parse shell-style ``KEY="value"`` lines (comments, blank lines, $VAR references)."""
    values, problems = parse_values(text, source)
    if problems:
        raise VzError("invalid configuration:\n  " + "\n  ".join(problems), ExitCode.CONFIG)
    return values


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
    def_ostemplate: str | None = None  # vzctl create without --ostemplate (DEF_OSTEMPLATE)
    configfile: str | None = None  # vzctl create without --config (CONFIGFILE)
    nameservers: tuple[str, ...] = ()  # NAMESERVER of new VPSs ("inherit": the host's)
    searchdomains: tuple[str, ...] = ()  # SEARCHDOMAIN of new VPSs
    neighbour_devs: str = "all"  # NEIGHBOUR_DEVS: where routed addresses are announced
    unused_keys: tuple[str, ...] = ()  # OpenVZ keys vzpkg accepts but does not act on
    userns_pool_base: int = 1 << 30  # first host id of the VPSs' user namespace blocks
    userns_pool_size: int = 1 << 30  # how many ids the pool has (65536 per VPS)
    cache_keep_dated: int = 0  # dated copies of each cache kept beside -old (CACHE_KEEP_DATED)
    cache_templates: tuple[str, ...] = ()  # what vzpkgcache --all makes: name patterns
    template_indexes: tuple[str, ...] = ()  # URLs of signed template indexes (TEMPLATE_INDEX)
    template_index_keys: tuple[str, ...] = ()  # keys an index must be signed with
    index_signing_key: str | None = None  # vzpkgcache publish signs with this gpg key
    index_gnupghome: str | None = None  # the gpg home holding it (default: gpg's own)
    source: str = "built-in defaults"

    @property
    def validated_dir(self) -> Path:
        """Where the caches checked in full are remembered (cache.archive.unpack_archive):
        root-only, and in RUN_DIR, so that a reboot forgets them."""
        return self.run_dir / "validated"

    def mirror(self, name: str) -> str | None:
        return self.mirrors.get(name)


def load_host_config(environ: Mapping[str, str] | None = None) -> HostConfig:
    """The host configuration, checked (hostvalues.load: the same checks as vzctl's short
    paths make)."""
    return _host_config(hostvalues.load(os.environ if environ is None else environ))


def host_config_from(values: Mapping[str, str], source: str) -> HostConfig:
    """A HostConfig from raw ``KEY: value`` pairs (a parsed file), checked."""
    return _host_config(hostvalues.checked(values, source))


def _host_config(fields: Mapping[str, object]) -> HostConfig:
    typed = dict(fields)
    for name in ("template_dir", "metadata_dir", "cache_dir", "pkgcache_dir", "lock_dir"):
        typed[name] = Path(str(typed[name]))
    for name in ("conf_dir", "trees_dir", "run_dir"):
        typed[name] = Path(str(typed[name]))
    if typed["build_dir"] is not None:
        typed["build_dir"] = Path(str(typed["build_dir"]))
    return HostConfig(**typed)  # type: ignore[arg-type]


def report_unused_keys(host: HostConfig) -> None:
    """Say once (per boot: the record is in RUN_DIR) which OpenVZ keys of the host
    configuration vzpkg accepts but does not act on."""
    if host.unused_keys:
        from vzpkg import notes

        notes.once(host.run_dir, host.source, host.unused_keys)
