"""Things worth saying once, not on every command: OpenVZ keys that vzpkg accepts but does not
act on. What was said is kept in ``RUN_DIR/notes.json`` (a tmpfs: said again after a reboot),
per file; a note is said again when what it says changes."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from vzpkg import fsutil

log = logging.getLogger("vzpkg")

NOTES_FILE = "notes.json"


def once(run_dir: Path, source: str, unused_keys: Sequence[str]) -> bool:
    """Warn that ``source`` sets ``unused_keys`` unless that was said already; returns whether
    it was said now."""
    path = run_dir / NOTES_FILE
    try:
        said = json.loads(path.read_bytes())
    except (OSError, ValueError):
        said = {}
    if not isinstance(said, dict):
        said = {}
    keys = sorted(unused_keys)
    if said.get(source) == keys:
        return False
    log.warning(
        "note: %s sets OpenVZ key(s) that vzpkg accepts but does not use (yet): %s "
        "(said once; docs/configuration.md lists them)",
        source,
        " ".join(keys),
    )
    said[source] = keys
    try:
        run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        fsutil.atomic_write(path, json.dumps(said, sort_keys=True).encode(), 0o644)
    except OSError as e:
        log.debug("could not record the note in %s: %s", path, e)
    return True
