"""The host configuration's raw values: a vz.conf-style ``KEY="value"`` file read as sh reads
it, plus ``VZPKG_<KEY>`` environment overrides. Strings only, no checks beyond syntax.

Kept apart from hostconf (which turns these into a typed HostConfig) and light to import (os and
re only), so that vzctl's exec fast path can find its way without loading anything else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

SYSTEM_CONF = "/etc/vz/vzpkg.conf"
DEFAULT_CONF_DIR = "/etc/vz/conf"  # CTID.conf files and samples
DEFAULT_RUN_DIR = "/run/vzpkg"  # runtime state: runc root, OCI bundles


_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_VAR = re.compile(r"\$(\w+)|\$\{(\w+)\}")

# vzpkg's own keys, beside OpenVZ's (vzpkg.openvz) and <NAME>_MIRROR.
VZPKG_KEYS = frozenset(
    {
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
        "VE_LAYOUT",
        "USERNS_POOL_BASE",
        "USERNS_POOL_SIZE",
        "CACHE_KEEP_DATED",
        "CACHE_TEMPLATES",
        "TEMPLATE_INDEX",
        "TEMPLATE_INDEX_KEYS",
        "INDEX_SIGNING_KEY",
        "INDEX_GNUPGHOME",
    }
)
# OpenVZ's keys that vzpkg acts on; every other OpenVZ key is accepted and reported as unused.
USED_OPENVZ_KEYS = frozenset(
    {
        "TEMPLATE",
        "LOCKDIR",
        "VE_ROOT",
        "VE_PRIVATE",
        "VE_LAYOUT",
        "STOP_TIMEOUT",
        "DEF_OSTEMPLATE",
        "CONFIGFILE",
        "NAMESERVER",
        "SEARCHDOMAIN",
        "NEIGHBOUR_DEVS",
    }
)
MIRROR_KEY = re.compile(r"^[A-Z0-9_]+_MIRROR$")


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


def parse_values(text: str, source: str) -> tuple[dict[str, str], list[str]]:
    """Shell-style ``KEY="value"`` lines (comments, blank lines, $VAR references): the values
    and a list of problems, each naming ``source`` and the line."""
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
    return values, problems


def is_known_key(key: str) -> bool:
    from vzpkg.openvz import OPENVZ_KEYS

    return key in VZPKG_KEYS or key in OPENVZ_KEYS or MIRROR_KEY.match(key) is not None


def is_used_key(key: str) -> bool:
    return key in VZPKG_KEYS or key in USED_OPENVZ_KEYS or MIRROR_KEY.match(key) is not None


def conf_file(environ: Mapping[str, str], system: str | os.PathLike[str]) -> str | None:
    """The file to read: ``$VZPKG_CONF`` (FileNotFoundError when it does not exist), else
    ``system`` when it exists, else none."""
    named = environ.get("VZPKG_CONF")
    if named:
        if not os.path.isfile(named):
            raise FileNotFoundError(named)
        return named
    return os.fspath(system) if os.path.isfile(system) else None


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """``VZPKG_<KEY>`` variables as ``KEY: value`` (``VZPKG_CONF`` names the file instead)."""
    return {
        key.removeprefix("VZPKG_"): value
        for key, value in environ.items()
        if key.startswith("VZPKG_") and key != "VZPKG_CONF"
    }


# --- the typed, checked host configuration -------------------------------------------------

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PATH_KEYS = (
    "TEMPLATE",
    "METADATA_DIR",
    "CACHE_DIR",
    "PKGCACHE_DIR",
    "LOCKDIR",
    "CONF_DIR",
    "TREES_DIR",
    "RUN_DIR",
)
_VEID = re.compile(r"\$(?:VEID\b|\{VEID\})")


def decode_text(data: bytes, source: str) -> str:
    """A configuration file's bytes as text; a file that is not UTF-8 is a CONFIG error naming
    the line (a traceback otherwise)."""
    from vzpkg.errors import ExitCode, VzError

    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise VzError(
            f"{source}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x})",
            ExitCode.CONFIG,
            hint=f"configuration files are plain text: fix line {line} of {source}",
        ) from None


def read_text(path: str) -> str:
    with open(path, "rb") as f:
        return decode_text(f.read(), path)


def _path_problem(key: str, value: str) -> str | None:
    if not value.startswith("/"):
        return f"{key}: {value!r} is not an absolute path"
    if "$" in value:
        return f"{key}: {value!r} refers to an undefined variable"
    return None


def checked(values: Mapping[str, str], source: str) -> dict[str, object]:
    """The host configuration's typed values from its raw ``KEY: value`` pairs, every problem
    reported at once (VzError, exit 10). Light: vzctl's short paths and the full CLI both
    come here, so they accept and refuse the same configurations."""
    from vzpkg import checks
    from vzpkg.errors import ExitCode, VzError

    problems: list[str] = []
    unknown = sorted(key for key in values if not is_known_key(key))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (not vzpkg's, nor any OpenVZ's)")
    in_checkout = os.path.isdir(os.path.join(CHECKOUT, "metadata")) and os.path.isfile(
        os.path.join(CHECKOUT, "pyproject.toml")
    )
    template = values.get("TEMPLATE", "/vz/template")
    if in_checkout:
        defaults = {"METADATA_DIR": f"{CHECKOUT}/metadata", "CACHE_DIR": f"{CHECKOUT}/caches"}
    else:
        defaults = {"METADATA_DIR": f"{template}/metadata", "CACHE_DIR": f"{template}/cache"}
    cache_dir = values.get("CACHE_DIR", defaults["CACHE_DIR"])
    defaults.update(
        TEMPLATE="/vz/template",
        PKGCACHE_DIR=f"{cache_dir}/.pkgcache",
        LOCKDIR="/vz/lock",
        CONF_DIR=DEFAULT_CONF_DIR,
        TREES_DIR=f"{template}/trees",
        RUN_DIR=DEFAULT_RUN_DIR,
    )
    paths = {}
    for key in _PATH_KEYS:
        value = values.get(key, defaults[key])
        problem = _path_problem(key, value)
        if problem:
            problems.append(problem)
        paths[key] = os.path.normpath(value) if not problem else value
    build_dir = values.get("BUILD_DIR") or None
    if build_dir is not None and (problem := _path_problem("BUILD_DIR", build_dir)):
        problems.append(problem)
    ve = {}
    for key, default in (("VE_ROOT", "/vz/root/$VEID"), ("VE_PRIVATE", "/vz/private/$VEID")):
        value = values.get(key, default)
        if not value.startswith("/") or not _VEID.search(value):
            problems.append(
                f"{key}: {value!r} must be an absolute path containing $VEID "
                "(one per VPS; without it every VPS would share one)"
            )
        elif "$" in _VEID.sub("", value):
            problems.append(f"{key}: {value!r} refers to a variable other than $VEID")
        ve[key] = value
    if ve["VE_ROOT"] == ve["VE_PRIVATE"]:
        problems.append("VE_ROOT and VE_PRIVATE are the same path: they must differ")

    def check(key: str, func: object, *args: object) -> object:
        try:
            return func(*args)  # type: ignore[operator]
        except VzError as e:
            problems.append(f"{key}: {e.message.removeprefix(f'Bad parameter for {key}: ')}")
            return None

    stop_timeout = check(
        "STOP_TIMEOUT", checks.whole_seconds, values.get("STOP_TIMEOUT", "60"), "STOP_TIMEOUT"
    )
    zstd = values.get("ZSTD_LEVEL", "3")
    if not (zstd.isascii() and zstd.isdigit() and 1 <= int(zstd) <= 22):
        problems.append(f"ZSTD_LEVEL: {zstd!r} is not a zstd level (1 to 22)")
    pool: list[int] = []
    for key in ("USERNS_POOL_BASE", "USERNS_POOL_SIZE"):
        text = values.get(key, str(1 << 30))
        number = int(text) if text.isascii() and text.isdigit() and len(text) < 12 else -1
        if number <= 0 or number % 65536:
            problems.append(f"{key}: {text!r} is not a positive multiple of 65536")
        pool.append(number)
    if all(n > 0 for n in pool) and pool[0] + pool[1] > (1 << 32) - 1:
        problems.append("USERNS_POOL_BASE + USERNS_POOL_SIZE go past the last uid (2^32 - 2)")
    tool = values.get("BOOTSTRAP_TOOL") or None
    if tool not in (None, "mmdebstrap", "debootstrap"):
        problems.append(f"BOOTSTRAP_TOOL: {tool!r} is not mmdebstrap or debootstrap")
    unused = sorted(key for key in values if is_known_key(key) and not is_used_key(key))
    layout_text = values.get("VE_LAYOUT") or None
    ve_layout = None
    if layout_text is not None and layout_text.split(":")[0] == "ploop":
        unused.append("VE_LAYOUT")  # OpenVZ's default of ploop: new VPSs get vzpkg's default
    elif layout_text is not None:
        ve_layout = check("VE_LAYOUT", checks.layout, layout_text, "VE_LAYOUT")
    nameservers = tuple(
        check("NAMESERVER", checks.nameserver, word, "NAMESERVER")
        for word in values.get("NAMESERVER", "").split()
    )
    searchdomains = tuple(
        word if word == "inherit" else check("SEARCHDOMAIN", checks.domain, word, "SEARCHDOMAIN")
        for word in values.get("SEARCHDOMAIN", "").split()
    )
    neighbour = values.get("NEIGHBOUR_DEVS", "all").strip() or "all"
    if not (
        neighbour in ("all", "detect")
        or (neighbour.startswith("list:") and "," not in neighbour and "/" not in neighbour)
    ):
        problems.append(f"NEIGHBOUR_DEVS: {neighbour!r} is not all, detect or list:DEV...")
    keep = values.get("CACHE_KEEP_DATED", "0")
    if not (keep.isascii() and keep.isdigit() and int(keep) <= 1000):
        problems.append(f"CACHE_KEEP_DATED: {keep!r} is not a number of copies (0 to 1000)")
    indexes = tuple(values.get("TEMPLATE_INDEX", "").split())
    for url in indexes:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
            problems.append(f"TEMPLATE_INDEX: {url!r} is not an http:// or https:// URL")
    index_keys = tuple(values.get("TEMPLATE_INDEX_KEYS", "").split())
    for key in index_keys:
        if not key.startswith("/"):
            problems.append(f"TEMPLATE_INDEX_KEYS: {key!r} is not an absolute path")
    gnupghome = values.get("INDEX_GNUPGHOME") or None
    if gnupghome is not None and (problem := _path_problem("INDEX_GNUPGHOME", gnupghome)):
        problems.append(problem)
    if problems:
        raise VzError(
            f"invalid configuration {source}:\n  " + "\n  ".join(problems),
            ExitCode.CONFIG,
            hint="see docs/configuration.md for the keys vzpkg reads and their values",
        )
    mirrors = {
        key.removesuffix("_MIRROR").lower().replace("_", "-"): value
        for key, value in values.items()
        if MIRROR_KEY.match(key) and value
    }
    return {
        "template_dir": paths["TEMPLATE"],
        "metadata_dir": paths["METADATA_DIR"],
        "cache_dir": paths["CACHE_DIR"],
        "pkgcache_dir": paths["PKGCACHE_DIR"],
        "lock_dir": paths["LOCKDIR"],
        "build_dir": os.path.normpath(build_dir) if build_dir else None,
        "ve_root": ve["VE_ROOT"],
        "ve_private": ve["VE_PRIVATE"],
        "conf_dir": paths["CONF_DIR"],
        "trees_dir": paths["TREES_DIR"],
        "run_dir": paths["RUN_DIR"],
        "stop_timeout": stop_timeout,
        "ve_layout": ve_layout,
        "bootstrap_tool": tool,
        "zstd_level": int(zstd),
        "mirrors": mirrors,
        "def_ostemplate": values.get("DEF_OSTEMPLATE") or None,
        "configfile": values.get("CONFIGFILE") or None,
        "nameservers": nameservers,
        "searchdomains": searchdomains,
        "neighbour_devs": neighbour,
        "unused_keys": tuple(sorted(set(unused))),
        "userns_pool_base": pool[0],
        "userns_pool_size": pool[1],
        "cache_keep_dated": int(keep) if keep.isdigit() else 0,
        "cache_templates": tuple(values.get("CACHE_TEMPLATES", "").split()),
        "template_indexes": indexes,
        "template_index_keys": index_keys,
        "index_signing_key": values.get("INDEX_SIGNING_KEY") or None,
        "index_gnupghome": gnupghome,
        "source": source,
    }


def load(environ: Mapping[str, str]) -> dict[str, object]:
    """Read, parse and check the host configuration (the file, then ``VZPKG_<KEY>``
    overrides): ``checked``'s values, or VzError (exit 10) naming the file and every problem."""
    from vzpkg.errors import ExitCode, VzError

    try:
        path = conf_file(environ, SYSTEM_CONF)
    except FileNotFoundError:
        raise VzError(
            f"configuration file {environ['VZPKG_CONF']} (from VZPKG_CONF) does not exist",
            ExitCode.CONFIG,
            hint="unset VZPKG_CONF or create the file",
        ) from None
    values: dict[str, str] = {}
    if path is not None:
        try:
            text = read_text(path)
        except OSError as e:
            raise VzError(f"cannot read {path}: {e.strerror}", ExitCode.CONFIG) from None
        values, problems = parse_values(text, path)
        if problems:
            raise VzError("invalid configuration:\n  " + "\n  ".join(problems), ExitCode.CONFIG)
    overrides = env_overrides(environ)
    unknown = sorted(f"VZPKG_{key}" for key in overrides if not is_known_key(key))
    if unknown:
        # Say so here: reported as keys of the file, they would send the user looking there.
        raise VzError(
            f"environment: unknown variable(s) {', '.join(unknown)}",
            ExitCode.CONFIG,
            hint="see docs/configuration.md for the keys vzpkg reads",
        )
    values.update(overrides)
    return checked(values, path or "built-in defaults")
