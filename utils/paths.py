"""Where the project lives and where it caches generated files (one home for both facts)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE_ENV = "HIVEMIL_CACHE"


def cache_root() -> Path:
    """``$HIVEMIL_CACHE`` when set, else ``<project>/cache`` (git-ignored)."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else PROJECT_ROOT / "cache"


def resolve_project_path(value: str | os.PathLike) -> Path:
    """A relative path from the working directory when it exists there, else from the project root.

    Lets project folders (``splits``, ``dataset_csv``, ``text_prompt``) be named relatively from any
    working directory; the result is absolute, so logs and ``config.json`` name files unambiguously.
    """
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return path.absolute()
    return PROJECT_ROOT / path
