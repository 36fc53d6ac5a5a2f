"""Checking every slide of a run before the first epoch, with a per-file verdict cache.

A slide is checked by loading it exactly as training will (:func:`datasets.features.read_slide_bag`:
keys, shapes, dimensions, 5x/hierarchical row alignment, children inside their parent, empty bags,
NaN/Inf) and by comparing its hierarchical file with the 5x/20x files it was built from
(:func:`hierarchy_staleness`). The fraction of 20x patches without a 5x parent is reported too (a
wrong ``level0_mag`` orphans most of them).

Verdicts are cached under ``<cache>/slide_checks/`` keyed by the files' size and modification time
(:func:`datasets.fingerprint.stat_record`) and the expected feature dimension, so a rerun skips slides
whose files did not change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from datasets.features import FeatureLayout, read_slide_bag
from datasets.fingerprint import content_record, json_digest, stat_record
from utils.atomic_io import atomic_write_text
from utils.errors import InputError, one_line
from utils.paths import cache_root

# Attributes of a hierarchical file naming the content of the 5x / 20x files it was built from.
SOURCE_ATTRS = {"source_low": "low", "source_high": "high"}
# 20x patches without a 5x parent: above ORPHAN_WARNING of a slide's patches earns a warning, above
# DEFAULT_MAX_ORPHAN_FRAC a refusal (main.py --max_orphan_frac, the hierarchy CLIs' --max-orphan-frac).
ORPHAN_WARNING = 0.05
DEFAULT_MAX_ORPHAN_FRAC = 0.2
CHECK_VERSION = 1


@dataclass
class SlideVerdict:
    """Outcome of checking one slide: ``problem`` is None when the slide is usable."""

    slide_id: str
    problem: str | None = None
    orphan_fraction: float | None = None  # 20x patches without a 5x parent / all 20x patches


def hierarchy_staleness(layout: FeatureLayout, slide_id: str) -> str | None:
    """Why ``slide_id``'s hierarchical file is out of date with its 5x/20x files, else None.

    Only files that record their sources (``source_low`` / ``source_high`` attributes) can be judged;
    a source file that is absent (20x files are not needed for training) is not compared.
    """
    hier = layout.hier_file(slide_id)
    try:
        with h5py.File(hier, "r") as f:
            recorded = {name: f.attrs.get(name) for name in SOURCE_ATTRS}
    except (OSError, ValueError):
        return None  # unreadable files are reported by read_slide_bag
    for attr, which in SOURCE_ATTRS.items():
        value = recorded[attr]
        source = layout.low_file(slide_id) if which == "low" else layout.high_file(slide_id)
        if value is None or not source.is_file():
            continue
        if content_record(source) != str(value.decode() if isinstance(value, bytes) else value):
            return (
                f"{hier}: stale, {source} changed after it was built; rebuild it with "
                "create_hierarchical_features.py (it rebuilds stale files by itself)"
            )
    return None


def orphan_fraction(layout: FeatureLayout, slide_id: str) -> float | None:
    """Fraction of the slide's 20x patches that no 5x patch contains (None when it cannot be known).

    From the hierarchical file's ``num_orphans20`` / ``num_20x`` attributes when present, else from the
    20x file (when present) against the distinct children the hierarchical file lists.
    """
    hier = layout.hier_file(slide_id)
    try:
        with h5py.File(hier, "r") as f:
            if "num_orphans20" in f.attrs and "num_20x" in f.attrs:
                total = int(f.attrs["num_20x"])
                return float(f.attrs["num_orphans20"]) / total if total else None
            high = layout.high_file(slide_id)
            if not high.is_file():
                return None
            coords = np.asarray(f["coords"][()]).reshape(-1, 2)
            mask = np.asarray(f["child_mask"][()]).reshape(-1) if "child_mask" in f else (coords != 0).any(1)
        with h5py.File(high, "r") as g:
            total = int(g["features"].shape[0])
        linked = np.unique(coords[mask], axis=0).shape[0]
        return max(0.0, 1.0 - linked / total) if total else None
    except (OSError, ValueError, KeyError):
        return None


def check_slide(
    layout: FeatureLayout,
    slide_id: str,
    expected_dim: int | None,
    load: Callable[[str], object] | None = None,
) -> SlideVerdict:
    """Check one slide (see the module docstring); problems come back in the verdict, not raised.

    ``load(slide_id)`` reads the bag (default :func:`read_slide_bag`); pass a caching loader so the
    check also warms the training cache.
    """
    try:
        if load is None:
            read_slide_bag(layout, slide_id, expected_dim=expected_dim)
        else:
            load(slide_id)
    except InputError as err:
        return SlideVerdict(slide_id, str(err))
    except Exception as err:  # a file that breaks the reader in an unforeseen way is still one line
        files = f"{layout.low_file(slide_id)} / {layout.hier_file(slide_id)}"  # which one is not known here
        return SlideVerdict(slide_id, f"{files}: unreadable ({one_line(err)})")
    stale = hierarchy_staleness(layout, slide_id)
    return SlideVerdict(slide_id, stale, orphan_fraction(layout, slide_id))


def _cache_key(layout: FeatureLayout, slide_id: str, expected_dim: int | None) -> str:
    files = [layout.low_file(slide_id), layout.hier_file(slide_id), layout.high_file(slide_id)]
    return json_digest(
        [CHECK_VERSION, expected_dim, [str(p.resolve()) for p in files], [stat_record(p) for p in files]]
    )


def _cache_path(layout: FeatureLayout) -> Path:
    return cache_root() / "slide_checks" / f"{json_digest(str(layout.root.resolve()))}.json"


def check_slides(
    layout: FeatureLayout,
    slide_ids: Iterable[str],
    expected_dim: int | None,
    progress: Callable[[Iterable], Iterable] | None = None,
    use_cache: bool = True,
    load: Callable[[str], object] | None = None,
) -> tuple[list[SlideVerdict], int]:
    """Check every slide; returns ``(verdicts in input order, number answered from the cache)``.

    ``progress`` wraps the iteration (e.g. a tqdm bar). Only usable verdicts are cached, so a fixed
    file is checked again and a broken one is reported every time.
    """
    slide_ids = list(slide_ids)
    path = _cache_path(layout)
    cache: dict[str, dict] = {}
    if use_cache:
        try:
            cache = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cache = {}
    verdicts, hits, changed = [], 0, False
    for slide_id in progress(slide_ids) if progress else slide_ids:
        key = _cache_key(layout, slide_id, expected_dim)
        stored = cache.get(key)
        if stored is not None and stored.get("slide_id") == slide_id:
            verdicts.append(SlideVerdict(**stored))
            hits += 1
            continue
        verdict = check_slide(layout, slide_id, expected_dim, load)
        verdicts.append(verdict)
        if verdict.problem is None:
            cache[key] = asdict(verdict)
            changed = True
    if use_cache and changed:
        try:
            atomic_write_text(path, json.dumps(cache))
        except OSError:
            pass  # a cache that cannot be written only costs a rescan next time
    return verdicts, hits
