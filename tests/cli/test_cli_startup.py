"""Every root CLI answers ``--help`` and a bad flag before importing the heavy libraries.

Each runs as ``python -X importtime X.py ...`` in a subprocess; the import log (stderr) must name none
of :data:`HEAVY`, so a typo costs a fraction of a second, not the seconds torch takes to load.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.paths import PROJECT

CLIS = (
    "main.py",
    "predict.py",
    "explain.py",
    "reproduce.py",
    "extract_features.py",
    "collect_results.py",
    "create_splits.py",
    "create_hierarchical_features.py",
    "check_hierarchical_consistency.py",
    "generate_text_prompts.py",
    "evaluate_survival.py",
)
HEAVY = ("torch", "transformers", "torch_geometric", "sklearn", "ray", "open_clip")
_IMPORT_LINE = re.compile(r"^import time:\s*\d+\s*\|\s*\d+\s*\|\s*(\S+)\s*$")


def imported_modules(stderr: str) -> set[str]:
    """Top-level names of the modules ``-X importtime`` logged."""
    return {m.group(1).split(".")[0] for m in map(_IMPORT_LINE.match, stderr.splitlines()) if m}


def run_importtime(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-X", "importtime", script, *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_log_is_read():
    """The parser sees what a heavy import looks like (so an empty answer below means something)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import json"], capture_output=True, text=True
    )
    assert "json" in imported_modules(done.stderr)


def test_every_root_cli_is_listed():
    entry_points = {p.name for p in PROJECT.glob("*.py") if "__main__" in p.read_text(encoding="utf-8")}
    assert entry_points == set(CLIS)


@pytest.mark.parametrize("script", CLIS)
def test_help_and_a_bad_flag_import_no_heavy_library(script):
    shown = run_importtime(script, "--help")
    assert shown.returncode == 0 and "usage" in shown.stdout.lower(), shown.stderr[-2000:]
    assert not imported_modules(shown.stderr) & set(HEAVY), f"{script} --help imports them"
    refused = run_importtime(script, "--no-such-flag-anywhere")
    lines = [line for line in refused.stderr.splitlines() if not line.startswith("import time:")]
    assert refused.returncode == 2 and "error" in "\n".join(lines), refused.stderr[-2000:]
    assert not imported_modules(refused.stderr) & set(HEAVY), f"{script} with a bad flag imports them"
