"""Where the tests find the project and the shared reference material (one home for these paths)."""

from __future__ import annotations

from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
GOLDEN = SHARED / "golden"
REFERENCE_DATA = SHARED / "reference_data"
