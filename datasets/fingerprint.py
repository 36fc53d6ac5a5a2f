"""Fingerprints of input files: what a file is now, to tell whether something built from it is current.

Two strengths, for two uses:

* :func:`stat_record` -- size and modification time (ns): free to compute; the key of caches and the
  per-slide part of a fold's input record (a touched or copied file counts as changed: safe side).
* :func:`content_record` -- size and a BLAKE2b digest of the bytes: survives copying; stored in the
  hierarchical files to name the 5x/20x files they were built from (docs/formats.md §2.2).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

_CHUNK = 1 << 20


def stat_record(path: str | Path) -> list[int] | None:
    """``[size, mtime_ns]`` of ``path``, or None when it does not exist."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def content_digest(path: str | Path) -> str:
    """Hex BLAKE2b-128 digest of the file's bytes (streamed)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def content_record(path: str | Path) -> str:
    """``"<size>:<digest>"`` of the file's content."""
    path = Path(path)
    return f"{path.stat().st_size}:{content_digest(path)}"


def json_digest(value) -> str:
    """A short stable digest of a JSON-serialisable value (sorted keys)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()
