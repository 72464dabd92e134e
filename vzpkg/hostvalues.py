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
    return key in KNOWN_KEYS or MIRROR_KEY.match(key) is not None


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
