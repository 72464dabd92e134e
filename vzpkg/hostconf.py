"""Host configuration: a vz.conf-style ``KEY="value"`` file plus environment overrides.

The file is the one named by ``$VZPKG_CONF``, else /etc/vz/vzpkg.conf when it exists. Any key can
be overridden by the environment variable ``VZPKG_<KEY>`` (e.g. ``VZPKG_CACHE_DIR``). Run from a
checkout with no system file, the checkout's own ``metadata/`` and ``caches/`` are used, so the
tools work out of the box. See docs/configuration.md for every key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vzpkg.errors import ExitCode, VzError

SYSTEM_CONF = Path("/etc/vz/vzpkg.conf")
CHECKOUT = Path(__file__).resolve().parent.parent

_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_VAR = re.compile(r"\$(\w+)|\$\{(\w+)\}")

KNOWN_KEYS = frozenset(
    {
        # OpenVZ's own (vz.conf(5))
        "TEMPLATE",
        "LOCKDIR",
        "VE_ROOT",
        "VE_PRIVATE",
        "VE0CPUUNITS",
        "VE_LAYOUT",
        "DEF_OSTEMPLATE",
        "CONFIGFILE",
        "IPV6",
        "VZFASTBOOT",
        "VE_STOP_MODE",
        "GOOD_PROC",
        "VE_PARALLEL",
        "VIRTUOZZO",
        "LOGGING",
        "LOGFILE",
        "LOG_LEVEL",
        "VERBOSE",
        "DISK_QUOTA",
        "NEIGHBOUR_DEVS",
        # vzpkg's
        "METADATA_DIR",
        "CACHE_DIR",
        "PKGCACHE_DIR",
        "BUILD_DIR",
        "BOOTSTRAP_TOOL",
        "ZSTD_LEVEL",
        "CONF_DIR",
        "TREES_DIR",
        "RUN_DIR",
        "STOP_TIMEOUT",
    }
)
_MIRROR_KEY = re.compile(r"^[A-Z0-9_]+_MIRROR$")


def _expand(text: str, start: int, values: Mapping[str, str]) -> tuple[str, int]:
    """The value of the ``$NAME`` / ``${NAME}`` at ``start`` and where it ends.

    Names not defined above stay as they are, so ``VE_ROOT="/vz/root/$VEID"`` keeps its
    ``$VEID`` for the runtime to fill in.
    """
    match = _VAR.match(text, start)
    if match is None:
        return "$", start + 1
    return values.get(match.group(1) or match.group(2), match.group(0)), match.end()


def _shell_value(text: str, values: Mapping[str, str]) -> str:
    """The right-hand side of ``KEY=...`` as sh reads it: '...' is literal, "..." and bare
    words expand ``$NAME``, a backslash escapes, ``#`` at a word's start begins a comment."""
    words: list[str] = []
    word: list[str] | None = None
    i = 0
    while i < len(text):
        char = text[i]
        if char in " \t":
            if word is not None:
                words.append("".join(word))
                word = None
            i += 1
            continue
        if char == "#" and word is None:
            break
        if word is None:
            word = []
        if char == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ValueError("no closing quotation")
            word.append(text[i + 1 : end])
            i = end + 1
        elif char == '"':
            i += 1
            while True:
                if i >= len(text):
                    raise ValueError("no closing quotation")
                char = text[i]
                if char == '"':
                    i += 1
                    break
                if char == "\\" and i + 1 < len(text) and text[i + 1] in '$`"\\':
                    word.append(text[i + 1])
                    i += 2
                elif char == "$":
                    value, i = _expand(text, i, values)
                    word.append(value)
                else:
                    word.append(char)
                    i += 1
        elif char == "\\":
            if i + 1 >= len(text):
                raise ValueError("no escaped character")
            word.append(text[i + 1])
            i += 2
        elif char == "$":
            value, i = _expand(text, i, values)
            word.append(value)
        else:
            word.append(char)
            i += 1
    if word is not None:
        words.append("".join(word))
    return " ".join(words)


def parse_kv(text: str, source: str) -> dict[str, str]:
    """Parse shell-style ``KEY="value"`` lines (comments, blank lines, $VAR references)."""
    values: dict[str, str] = {}
    problems = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            problems.append(f'{source}:{number}: expected KEY="value", got {raw!r}')
            continue
        key, rest = match.groups()
        try:
            values[key] = _shell_value(rest, values)
        except ValueError as e:
            problems.append(f"{source}:{number}: {key}: {e}")
    if problems:
        raise VzError("invalid configuration:\n  " + "\n  ".join(problems), ExitCode.CONFIG)
    return values


def is_known_key(key: str) -> bool:
    return key in KNOWN_KEYS or _MIRROR_KEY.match(key) is not None


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
    conf_dir: Path = Path("/etc/vz/conf")  # CTID.conf files and samples
    trees_dir: Path = Path("/vz/template/trees")  # overlay layout: shared template trees
    run_dir: Path = Path("/run/vzpkg")  # runtime state: runc root, OCI bundles
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
    conf_path: Path | None = None
    if env.get("VZPKG_CONF"):
        conf_path = Path(env["VZPKG_CONF"])
        if not conf_path.is_file():
            raise VzError(
                f"configuration file {conf_path} (from VZPKG_CONF) does not exist",
                ExitCode.CONFIG,
                hint="unset VZPKG_CONF or create the file",
            )
    elif SYSTEM_CONF.is_file():
        conf_path = SYSTEM_CONF
    values: dict[str, str] = {}
    if conf_path is not None:
        try:
            values = parse_kv(conf_path.read_text(), str(conf_path))
        except OSError as e:
            raise VzError(f"cannot read {conf_path}: {e.strerror}", ExitCode.CONFIG) from None
    overrides = {
        key.removeprefix("VZPKG_"): value
        for key, value in env.items()
        if key.startswith("VZPKG_") and key != "VZPKG_CONF"
    }
    unknown = sorted(f"VZPKG_{key}" for key in overrides if not is_known_key(key))
    if unknown:
        # Say so here: reported as keys of the file, they would send the user looking there.
        raise VzError(
            f"environment: unknown variable(s) {', '.join(unknown)}",
            ExitCode.CONFIG,
            hint="see docs/configuration.md for the keys vzpkg reads",
        )
    values.update(overrides)
    return host_config_from(values, str(conf_path) if conf_path else "built-in defaults")


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
        if _MIRROR_KEY.match(key) and value
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
        conf_dir=Path(values.get("CONF_DIR", "/etc/vz/conf")),
        trees_dir=Path(values.get("TREES_DIR", str(template / "trees"))),
        run_dir=Path(values.get("RUN_DIR", "/run/vzpkg")),
        stop_timeout=_int_value(values, "STOP_TIMEOUT", 60, source),
        ve_layout=_layout_value(values.get("VE_LAYOUT"), source),
        bootstrap_tool=tool,
        zstd_level=level,
        mirrors=mirrors,
        source=source,
    )
