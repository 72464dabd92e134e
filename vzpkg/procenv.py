"""The environment external programs get: a fixed PATH, C.UTF-8, a few passed-through
variables, nothing else. Light to import (os only): vzctl's exec fast path uses it too."""

from __future__ import annotations

import os
from collections.abc import Mapping

# Variables passed through from the caller's environment; everything else is dropped so that a
# user's shell settings (LD_PRELOAD, PYTHONPATH, odd locales) never leak into bootstrap tools.
PASSTHROUGH_ENV = (
    "TERM",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "SOURCE_DATE_EPOCH",
    "TMPDIR",
)
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        "PATH": BASE_PATH,
        "LC_ALL": "C.UTF-8",
        "HOME": "/root" if os.geteuid() == 0 else os.environ.get("HOME", "/"),
    }
    env.update({k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ})
    if extra:
        env.update(extra)
    return env


def which(name: str, path: str) -> str | None:
    """The first executable file ``name`` in the ``:``-separated ``path`` (as shutil.which)."""
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
