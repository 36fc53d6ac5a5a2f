"""What a fold's results depend on, recorded so that a resumed run redoes a fold whose inputs changed.

A finished fold stores ``fold_<k>/inputs.json``: its split (slide ids per part), the dataset-CSV rows of
those slides, the prompt file's content record (vision-language models), the text tower's identity
(:func:`models.towers.loading.tower_identity`) and the size and modification time of every slide's 5x
and hierarchical feature files. Resume reuses a fold only when all of these are unchanged; the flags
are compared separately (``config.json``, :func:`training.results.check_resumable`).
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets.features import FeatureLayout
from datasets.fingerprint import content_record, stat_record
from datasets.splits import PARTS
from utils.atomic_io import atomic_write_text
from utils.errors import listed

INPUTS_FILE = "inputs.json"
CATEGORIES = {
    "split": "the split",
    "csv_rows": "dataset-CSV rows",
    "prompt_file": "the prompt file",
    "tower": "the text tower",
    "features": "feature files",
    "labels": "the label definition (survival bins)",
}


def fold_inputs(
    split: dict[str, list[str]],
    csv_rows: dict[str, list],
    layout: FeatureLayout,
    prompt_file: Path | None,
    tower: dict | None,
    labels: dict | None = None,
) -> dict:
    """The input record of one fold (see the module docstring).

    ``labels``: how labels derive from the whole dataset CSV where they do (survival bins,
    docs/survival.md §3); recorded only when given.
    """
    slides = sorted({s for part in PARTS for s in split[part]})
    record = {
        "split": {part: list(split[part]) for part in PARTS},
        "csv_rows": {s: csv_rows[s] for s in slides},
        "prompt_file": content_record(prompt_file)
        if prompt_file is not None and prompt_file.is_file()
        else None,
        "tower": tower,
        "features": {s: [stat_record(layout.low_file(s)), stat_record(layout.hier_file(s))] for s in slides},
    }
    if labels is not None:
        record["labels"] = labels
    return record


def write_fold_inputs(path: Path, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def read_fold_inputs(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def changed_inputs(old: dict | None, new: dict) -> list[str]:
    """Phrases naming what differs between a stored and a current input record (empty: unchanged)."""
    if old is None:
        return ["no input record (run from an older version or interrupted)"]
    changes = []
    for key, label in CATEGORIES.items():
        before, after = old.get(key), json.loads(json.dumps(new.get(key)))
        if before == after:
            continue
        if key in ("csv_rows", "features") and isinstance(before, dict) and isinstance(after, dict):
            differing = sorted(s for s in set(before) | set(after) if before.get(s) != after.get(s))
            changes.append(f"{label} of {len(differing)} slide(s) ({listed(differing, 3)})")
        else:
            changes.append(label)
    return changes
