"""Checking that a slide's 5x, 20x and hierarchical files agree (``check_hierarchical_consistency.py``).

Problems (make the checker exit non-zero):
missing or unreadable files, missing keys, wrong shapes, feature-dimension disagreement, NaN/Inf,
duplicate coordinates in the 5x or 20x file, invalid ``parent_index`` (out of range, repeated),
published-format files whose row count differs from the 5x count (rows cannot be aligned),
children that are not patches of the 20x file, lie outside their parent's square, or whose feature
row differs from the 20x file's row, a 20x patch used twice (under ``nearest`` linking: anywhere; under
``all``: within one parent), non-zero padding, 5x patches with fewer children than the 20x file
provides under the file's linking rule (below the cap), a ``level0_mag`` attribute that disagrees
with the CSV, a file built from 5x/20x files that changed since (its ``source_low``/``source_high``
records), and more than ``max_orphan_frac`` of the 20x patches lying in no 5x patch at the slide's
``level0_mag`` (a wrong ``level0_mag`` in the CSV orphans most of them).

Linking rule of a file: its ``link_rule`` attribute (``all`` or ``nearest``,
:func:`datasets.hierarchy.link_children`). Without one, a published file was made by the released
script (``all``: a 20x patch under every overlapping 5x patch that contains it) and one of ours by
the versions before the attribute (``nearest``). The rules only differ where 5x tiles overlap.

Notes (reported, not problems): 5x patches without children (the loader gives them an empty,
masked row, so they are harmless; the released checker deleted them from the 5x file in place, which we
never do), 20x patches without a parent (their fraction ``orphan_frac``; a warning above 5 %), and
parents capped at ``max_children``.

Fixing never touches the inputs: a hierarchical file is rebuilt from the 5x and 20x files into a
sibling folder ``<hier_dir>_fixed/<slide>.h5`` (atomic), provided the 5x and 20x files themselves are
sound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from datasets.features import FeatureLayout, open_h5, read_patch_file, require_dataset
from datasets.hierarchy import (
    DEFAULT_LINK_RULE,
    LINK_RULES,
    containing_pairs,
    find_parents,
    pack_cells,
    patch_px,
)
from datasets.slide_check import ORPHAN_WARNING, hierarchy_staleness
from preprocess.hierarchy import build_slide_hierarchy
from utils.errors import InputError
from utils.safe_names import contained

_BLOCK_ROWS = 1024


@dataclass
class SlideReport:
    """Result of checking one slide."""

    slide_id: str
    problems: list[str] = field(default_factory=list)
    notes: dict[str, int | str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    inputs_ok: bool = True  # the 5x and 20x files are sound, so the hierarchical file can be rebuilt
    fixed_path: Path | None = None
    link_rule: str = DEFAULT_LINK_RULE  # the rule the hierarchical file was checked (and is fixed) with
    orphan_problem: bool = (
        False  # too many orphaned 20x patches: level0_mag is wrong, rebuilding cannot fix it
    )

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        """One report line."""
        notes = ", ".join(f"{k}={v}" for k, v in self.notes.items())
        head = "OK     " if self.ok else "PROBLEM"
        text = f"{head} {self.slide_id}: {notes}"
        if self.problems:
            text += " | " + "; ".join(self.problems)
        if self.warnings:
            text += " | warning: " + "; ".join(self.warnings)
        if self.fixed_path is not None:
            text += f" | fixed copy: {self.fixed_path}"
        return text


def fixed_dir(layout: FeatureLayout) -> Path:
    """Folder where ``--fix`` writes rebuilt hierarchical files."""
    return layout.hier_dir.with_name(layout.hier_dir.name + "_fixed")


def check_slide(
    layout: FeatureLayout,
    slide_id: str,
    level0_mag: int,
    low_mag: float = 5,
    high_mag: float = 20,
    max_orphan_frac: float | None = None,
) -> SlideReport:
    """Check the three files of one slide; never modifies them.

    ``max_orphan_frac``: more than this fraction of 20x patches without a 5x parent is a problem
    (None: only the warning above :data:`datasets.slide_check.ORPHAN_WARNING`).
    """
    report = SlideReport(slide_id)
    parent_size = patch_px(level0_mag, low_mag)
    inputs = {}
    for name, path in (("5x", layout.low_file(slide_id)), ("20x", layout.high_file(slide_id))):
        try:
            inputs[name] = read_patch_file(path, f"{name} feature", check_finite=False)
        except InputError as err:
            report.problems.append(str(err))
    if len(inputs) < 2:
        report.inputs_ok = False
        return report
    (x5, coords5), (x20, coords20) = inputs["5x"], inputs["20x"]
    report.notes.update(n5=x5.shape[0], n20=x20.shape[0])
    _check_inputs(report, x5, coords5, x20, coords20, layout.low_file(slide_id), layout.high_file(slide_id))

    hier_path = layout.hier_file(slide_id)
    rule, rule_problem = stored_link_rule(hier_path)
    report.link_rule = rule
    if rule_problem:
        report.problems.append(rule_problem)
    if rule == "nearest":
        parent_of = find_parents(coords5, coords20, parent_size)
        linked_parents = parent_of[parent_of >= 0]
        orphans = int((parent_of < 0).sum())
    else:
        pair_child, linked_parents = containing_pairs(coords5, coords20, parent_size)
        orphans = x20.shape[0] - int(np.unique(pair_child).size)
    candidates = np.bincount(linked_parents, minlength=x5.shape[0])
    fraction = orphans / x20.shape[0]
    report.notes.update(
        childless5=int((candidates == 0).sum()),
        orphans20=orphans,
        orphan_frac=f"{fraction:.0%}",
        link_rule=rule,
    )
    orphan_text = f"{fraction:.0%} of the 20x patches lie in no 5x patch at level0_mag {level0_mag}"
    if max_orphan_frac is not None and fraction > max_orphan_frac:
        report.orphan_problem = True
        report.problems.append(
            f"{layout.high_file(slide_id)}: {orphan_text}, above --max-orphan-frac {max_orphan_frac:g} "
            "(is level0_mag right in the dataset CSV?)"
        )
    elif fraction > ORPHAN_WARNING:
        report.warnings.append(f"{orphan_text} (check level0_mag in the dataset CSV)")

    try:
        with open_h5(hier_path, "hierarchical feature") as f:
            _check_hierarchical(
                report, f, hier_path, x5, coords5, x20, coords20, parent_size, level0_mag, candidates
            )
    except InputError as err:
        report.problems.append(str(err))
    stale = hierarchy_staleness(layout, slide_id)
    if stale:
        report.problems.append(stale)
    return report


def stored_link_rule(path: Path) -> tuple[str, str | None]:
    """``(rule, problem)``: the linking rule a hierarchical file was made with (see the module docstring).

    A missing or unreadable file gives the default rule and no problem (reported elsewhere); an
    unknown ``link_rule`` value gives the default rule and a problem line.
    """
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("link_rule")
            ours = "parent_index" in f
    except (OSError, ValueError):
        return DEFAULT_LINK_RULE, None
    if value is None:
        return ("nearest" if ours else "all"), None
    value = value.decode() if isinstance(value, bytes) else str(value)
    if value not in LINK_RULES:
        return DEFAULT_LINK_RULE, f"{path}: unknown link_rule attribute {value!r} (expected all or nearest)"
    return value, None


def _check_inputs(report, x5, coords5, x20, coords20, low_path: Path, high_path: Path) -> None:
    for name, feats, coords, path in (("5x", x5, coords5, low_path), ("20x", x20, coords20, high_path)):
        bad_rows = int((~np.isfinite(feats)).any(axis=1).sum())
        if bad_rows:
            report.problems.append(f"{path}: {bad_rows} {name} feature rows contain NaN or Inf")
            report.inputs_ok = False
        dup = coords.shape[0] - np.unique(coords, axis=0).shape[0]
        if dup:
            report.problems.append(f"{path}: {dup} duplicate {name} coordinates")
            report.inputs_ok = False
    if x5.shape[1] != x20.shape[1]:
        report.problems.append(
            f"{high_path}: feature dim {x20.shape[1]} disagrees with {x5.shape[1]} in {low_path}"
        )
        report.inputs_ok = False


def _check_hierarchical(
    report, f: h5py.File, path: Path, x5, coords5, x20, coords20, parent_size, level0_mag, candidates
):
    """Problems of the hierarchical file ``f`` relative to the 5x and 20x arrays.

    ``candidates`` [N5] counts the children each 5x patch has under the file's linking rule, before the cap.
    """
    problems = report.problems
    feats_ds = require_dataset(f, "features", 3, path)
    coords_ds = require_dataset(f, "coords", 3, path)
    rows, width, dim = feats_ds.shape
    n5 = x5.shape[0]
    report.notes["rows"] = rows
    report.notes["format"] = "ours" if "parent_index" in f else "published"
    if coords_ds.shape != (rows, width, 2):
        raise InputError(f"{path}: 'coords' has shape {list(coords_ds.shape)}, expected [{rows}, {width}, 2]")
    if dim != x20.shape[1]:
        raise InputError(f"{path}: feature dim {dim} disagrees with {x20.shape[1]} in the 20x file")
    if "level0_mag" in f.attrs and int(f.attrs["level0_mag"]) != int(level0_mag):
        problems.append(
            f"{path}: level0_mag attribute {int(f.attrs['level0_mag'])} but {level0_mag} expected"
        )

    if "parent_index" in f:
        parent_index = np.asarray(require_dataset(f, "parent_index", 1, path)[()]).astype(np.int64)
        if parent_index.shape != (rows,):
            raise InputError(
                f"{path}: 'parent_index' has shape {list(parent_index.shape)}, expected [{rows}]"
            )
        if rows and (parent_index.min() < 0 or parent_index.max() >= n5):
            raise InputError(f"{path}: 'parent_index' out of range for {n5} 5x patches")
        if np.unique(parent_index).size != rows:
            problems.append(f"{path}: 'parent_index' lists a 5x patch twice")
        mask_ds = require_dataset(f, "child_mask", 2, path)
        if mask_ds.shape != (rows, width):
            raise InputError(
                f"{path}: 'child_mask' has shape {list(mask_ds.shape)}, expected [{rows}, {width}]"
            )
        stored_mask = np.asarray(mask_ds[()]).astype(bool)
    else:
        if rows != n5:
            raise InputError(
                f"{path}: published-format file has {rows} rows for {n5} 5x patches; rows cannot be aligned"
            )
        parent_index = np.arange(n5, dtype=np.int64)
        stored_mask = None

    # 20x lookup by exact coordinates (sorted packed keys).
    keys20 = pack_cells(coords20)
    order20 = np.argsort(keys20, kind="stable")
    sorted20 = keys20[order20]
    used = np.zeros(x20.shape[0], dtype=np.int64)
    link_keys = []  # parent * N20 + 20x index of every found child (a pair listed twice is a problem)
    counts = {"not_in_20x": 0, "outside": 0, "feature_mismatch": 0, "bad_padding": 0, "nonfinite": 0}
    children_per_parent = np.zeros(n5, dtype=np.int64)
    for start in range(0, rows, _BLOCK_ROWS):
        block = slice(start, min(start + _BLOCK_ROWS, rows))
        feats = np.asarray(feats_ds[block])
        coords = np.asarray(coords_ds[block]).astype(np.int64)
        finite = np.isfinite(feats)
        counts["nonfinite"] += int((~finite).any(axis=2).sum())
        mask = (np.where(finite, feats, 1) != 0).any(axis=2) if stored_mask is None else stored_mask[block]
        pad = ~mask
        counts["bad_padding"] += int((pad & ((feats != 0).any(axis=2) | (coords != 0).any(axis=2))).sum())
        parents = parent_index[block]
        children_per_parent[parents] += mask.sum(axis=1)
        child_coords = coords[mask]
        child_parent = np.repeat(parents, mask.sum(axis=1))
        delta = child_coords - coords5[child_parent]
        counts["outside"] += int(((delta < 0) | (delta >= parent_size)).any(axis=1).sum())
        keys = pack_cells(child_coords)
        pos = np.minimum(np.searchsorted(sorted20, keys), max(sorted20.size - 1, 0))
        found = sorted20[pos] == keys if sorted20.size else np.zeros(keys.size, dtype=bool)
        counts["not_in_20x"] += int((~found).sum())
        index20 = order20[pos[found]]
        np.add.at(used, index20, 1)
        link_keys.append(child_parent[found] * np.int64(x20.shape[0]) + index20)
        stored = feats[mask][found]
        reference = x20[index20].astype(feats.dtype)
        same = (stored == reference) | (np.isnan(stored) & np.isnan(reference))
        counts["feature_mismatch"] += int((~same.all(axis=1)).sum())

    messages = {
        "nonfinite": "children with NaN/Inf features",
        "not_in_20x": "children whose coordinates are not in the 20x file",
        "outside": "children outside their parent's 5x square",
        "feature_mismatch": "children whose features differ from the 20x file",
        "bad_padding": "padding slots that are not zero",
    }
    for key, text in messages.items():
        if counts[key]:
            problems.append(f"{path}: {counts[key]} {text}")
    if report.link_rule == "nearest":
        twice = int((used > 1).sum())
        if twice:
            problems.append(f"{path}: {twice} 20x patches appear more than once")
    else:  # 'all': a 20x patch may sit under several overlapping parents, but only once under each
        keys = np.concatenate([np.zeros(0, dtype=np.int64), *link_keys])
        twice = keys.size - int(np.unique(keys).size)
        if twice:
            problems.append(f"{path}: {twice} 20x patches appear more than once under the same 5x patch")

    expected = np.minimum(candidates, width)
    short = int((children_per_parent < expected).sum())
    if short:
        problems.append(f"{path}: {short} 5x patches have fewer children than the 20x file provides")
    report.notes["childless5"] = int((children_per_parent == 0).sum())
    report.notes["capped5"] = int((candidates > width).sum())


def fix_slide(
    layout: FeatureLayout,
    report: SlideReport,
    level0_mag: int,
    low_mag: float,
    high_mag: float,
    max_children: int,
    seed: int,
) -> Path | None:
    """Rebuild the slide's hierarchical file into :func:`fixed_dir` (atomic); None when not fixable.

    Too many orphaned 20x patches are not fixable here (the level0_mag is wrong): when that is the
    only problem nothing is written; otherwise the copy fixes the rest and the slide stays unresolved.
    """
    if report.ok or not report.inputs_ok:
        return None
    if report.orphan_problem and len(report.problems) == 1:
        return None
    fixed = fixed_dir(layout) / f"{report.slide_id}.h5"
    target = contained(layout.data_root_dir, str(fixed.relative_to(layout.data_root_dir)))
    build_slide_hierarchy(
        layout,
        report.slide_id,
        level0_mag,
        low_mag=low_mag,
        high_mag=high_mag,
        max_children=max_children,
        seed=seed,
        overwrite=True,
        output=target,
        link_rule=report.link_rule,
    )
    report.fixed_path = target
    return target


def hier_width(layout: FeatureLayout, slide_id: str, default: int) -> int:
    """The children-per-row width of an existing hierarchical file (``default`` if unreadable)."""
    try:
        with h5py.File(layout.hier_file(slide_id), "r") as f:
            shape = f["features"].shape
            return int(shape[1]) if len(shape) == 3 and shape[1] > 0 else default
    except (OSError, KeyError, ValueError):
        return default
