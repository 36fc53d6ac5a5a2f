"""Building one slide's hierarchical 5x->20x feature file (the work of ``create_hierarchical_features.py``).

For one slide: read the 5x and 20x files, link every 20x patch to the 5x patches containing its top-left
corner (:func:`datasets.hierarchy.link_children`: every containing 5x patch as released, or only the
nearest one; seeded cap of ``(high/low)^2`` children), and write
``features``/``coords``/``parent_index``/``child_mask`` atomically, the rule in the ``link_rule`` attribute. The demo generator uses the same
function, so demo files and user files are built identically.

Every output names what it was built from and how: ``source_low`` / ``source_high`` hold
:func:`datasets.fingerprint.content_record` of the 5x / 20x file, and the build settings
(:data:`BUILD_SETTINGS`) are attributes too. A later run skips an output only when both match
(:func:`output_state`); a stale or differently built output is rebuilt. So that a resume does not
read every feature file again, content records are cached by path, size and modification time
(:class:`SourceRecords`, under the cache folder; outputs stay byte-identical for identical inputs).
Outputs without source records (published files, or built before the records existed) cannot be
judged and are kept unless ``overwrite``.

A slide is refused (one line) when its 5x or 20x file lists a coordinate twice, or when more than
``max_orphan_frac`` of its 20x patches lie in no 5x patch (a wrong ``level0_mag`` does that).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from datasets.features import (
    HIER_FORMAT_VERSION,
    FeatureLayout,
    hier_file_is_complete,
    read_patch_file,
    write_hierarchical_file,
)
from datasets.fingerprint import content_record, json_digest, stat_record
from datasets.hierarchy import DEFAULT_LINK_RULE, LINK_RULES, link_children, pack_cells, patch_px, slide_salt
from datasets.slide_check import ORPHAN_WARNING, SOURCE_ATTRS
from utils.atomic_io import atomic_write_text
from utils.errors import InputError, one_line
from utils.magnification import magnification_label, magnification_value
from utils.paths import cache_root
from utils.safe_names import distinct_outputs

SOURCE = "create_hierarchical_features.py"
# Attributes that say how an output was built; an output whose values differ from the run's is rebuilt.
BUILD_SETTINGS = ("format_version", "level0_mag", "low_mag", "high_mag", "max_children", "seed", "link_rule")


@dataclass
class SlideOutcome:
    """What happened to one slide."""

    slide_id: str
    status: str  # "done" (new), "rebuilt" (an existing output replaced), "skipped" (up to date) or "failed"
    rows: int = 0
    linked: int = 0
    links: int = 0
    orphans20: int = 0
    childless5: int = 0
    dropped: int = 0
    message: str = ""  # why it failed, or why an existing output was rebuilt
    warning: str = ""  # e.g. many 20x patches without a 5x parent (below the refusal threshold)
    unverified: bool = False  # skipped although the output records no sources (cannot be judged)
    records: dict[str, str] = field(default_factory=dict)  # content records computed (SourceRecords keys)


class SourceRecords:
    """Content records of 5x/20x files, cached by resolved path, size and modification time (ns).

    ``known`` is what an earlier run stored; records computed now go to ``learned``. A file whose
    size or modification time changed gets a new key, so it is read again.
    """

    def __init__(self, known: dict[str, str] | None = None):
        self.known = dict(known or {})
        self.learned: dict[str, str] = {}

    @staticmethod
    def key(path: Path) -> str | None:
        stat = stat_record(path)
        return None if stat is None else json_digest([str(Path(path).resolve()), stat])

    def record(self, path: Path) -> str:
        """:func:`datasets.fingerprint.content_record` of ``path``, from the cache when unchanged."""
        key = self.key(path)
        if key is not None and key in self.known:
            return self.known[key]
        if key is not None and key in self.learned:
            return self.learned[key]
        value = content_record(path)
        if key is not None:
            self.learned[key] = value
        return value

    @staticmethod
    def cache_file(layout: FeatureLayout) -> Path:
        return cache_root() / "hierarchy_sources" / f"{json_digest(str(layout.root.resolve()))}.json"

    @classmethod
    def load(cls, layout: FeatureLayout) -> dict[str, str]:
        """The stored records of ``layout``'s files (empty when there are none or they are unreadable)."""
        try:
            data = json.loads(cls.cache_file(layout).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @classmethod
    def save(cls, layout: FeatureLayout, records: dict[str, str]) -> None:
        """Store ``records`` (atomic; a cache that cannot be written only costs reading the files again)."""
        try:
            atomic_write_text(cls.cache_file(layout), json.dumps(records, sort_keys=True))
        except OSError:
            pass


def build_settings(
    level0_mag: int, low_mag: float, high_mag: float, max_children: int, seed: int, link_rule: str
) -> dict[str, int | float | str]:
    """The :data:`BUILD_SETTINGS` attribute values of an output built with these settings."""
    return {
        "format_version": HIER_FORMAT_VERSION,
        "level0_mag": int(level0_mag),
        "low_mag": float(low_mag),
        "high_mag": float(high_mag),
        "max_children": int(max_children),
        "seed": int(seed),
        "link_rule": str(link_rule),
    }


def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def output_state(
    target: Path,
    settings: dict[str, int | float | str],
    low_path: Path,
    high_path: Path,
    records: SourceRecords | None = None,
) -> tuple[str, str]:
    """``(state, reason)`` of an existing output against the run's settings and the current 5x/20x files.

    States: ``missing`` (absent or unfinished: build it), ``outdated`` (built from other 5x/20x
    content or with other settings: rebuild it; ``reason`` says why), ``current`` (skip) and
    ``unverified`` (finished but without source records, e.g. a published file: kept, as it cannot be
    judged). A source file that is missing now leaves the output to the build, which reports it.
    ``records`` caches the sources' content records.
    """
    records = records if records is not None else SourceRecords()
    if not hier_file_is_complete(target):
        return "missing", ""
    try:
        with h5py.File(target, "r") as f:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
    except (OSError, ValueError):
        return "missing", ""
    changed = [
        f"{key} {attrs[key]} -> {value}"
        for key, value in settings.items()
        if key in attrs and attrs[key] != value
    ]
    if changed:
        return "outdated", "built with other settings (" + ", ".join(changed) + ")"
    if any(name not in attrs for name in SOURCE_ATTRS):
        return "unverified", ""
    for name, which in SOURCE_ATTRS.items():
        path = low_path if which == "low" else high_path
        if not path.is_file():
            return "outdated", f"its {'5x' if which == 'low' else '20x'} file {path} is missing now"
        try:
            current = records.record(path)
        except OSError:
            return "outdated", f"its {'5x' if which == 'low' else '20x'} file {path} cannot be read now"
        if current != str(attrs[name]):
            return "outdated", f"stale: {path} changed after it was built"
    return "current", ""


def first_duplicate(coords: np.ndarray) -> tuple[int, int, int] | None:
    """``(first row, repeating row, number of repeating rows)`` of the first row (in file order) whose
    coordinate an earlier row already has; None when every coordinate is distinct."""
    keys = pack_cells(coords)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    repeat = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1
    if not repeat.size:
        return None
    later = int(order[repeat].min())
    earlier = int(order[np.searchsorted(ordered, keys[later], side="left")])
    return earlier, later, int(repeat.size)


def _refuse_duplicates(path: Path, coords: np.ndarray, what: str) -> None:
    found = first_duplicate(coords)
    if found is not None:
        earlier, later, count = found
        x, y = (int(v) for v in coords[later])
        raise InputError(
            f"{path}: duplicate {what} coordinate ({x}, {y}) at rows {earlier} and {later} "
            f"({count} repeated row(s)); each patch must be listed once, so fix or re-extract this file"
        )


def _read_source(path: Path, what: str, records: SourceRecords) -> tuple[np.ndarray, np.ndarray, str]:
    """Features, coordinates and content record of a 5x/20x file, read consistently."""
    before = stat_record(path)
    try:
        record = records.record(path) if Path(path).is_file() else ""
    except OSError as err:
        raise InputError(f"{path}: cannot read {what} file ({one_line(err, with_type=False)})") from None
    features, coords = read_patch_file(path, what)  # reports a missing or broken file in one line
    after = stat_record(path)
    if after != before:
        raise InputError(f"{path}: changed while it was being read; run again when it is complete")
    return features, coords, record


def build_slide_hierarchy(
    layout: FeatureLayout,
    slide_id: str,
    level0_mag: int,
    low_mag: float = 5,
    high_mag: float = 20,
    max_children: int = 16,
    seed: int = 0,
    overwrite: bool = False,
    output: Path | None = None,
    link_rule: str = DEFAULT_LINK_RULE,
    max_orphan_frac: float | None = None,
    known_records: dict[str, str] | None = None,
) -> SlideOutcome:
    """Create ``layout.hier_file(slide_id)`` (or ``output``) from the slide's 5x and 20x files.

    Skips an output that is up to date (:func:`output_state`: same sources, same settings) or that
    cannot be judged (no source records), unless ``overwrite``; a stale or differently built output is
    rebuilt (status ``rebuilt``, the reason in ``message``). Raises :class:`InputError` on a bad input
    (missing file, wrong shapes, NaN/Inf, 5x/20x dimension mismatch, duplicate coordinates, more than
    ``max_orphan_frac`` of the 20x patches without a 5x parent); inputs are only read.
    ``known_records`` (:class:`SourceRecords`) spares reading unchanged sources again; the records
    computed are returned in the outcome's ``records``.
    """
    records = SourceRecords(known_records)
    # resolved under the dataset root; the output can never be one of its own sources
    target = Path(output) if output is not None else layout.output_files(slide_id, ("hier",))["hier"]
    low_path, high_path = layout.low_file(slide_id), layout.high_file(slide_id)
    distinct_outputs({"hierarchical": target, layout.low_mag: low_path, layout.high_mag: high_path})
    settings = build_settings(level0_mag, low_mag, high_mag, max_children, seed, link_rule)
    state, reason = output_state(target, settings, low_path, high_path, records)
    if not overwrite and state in ("current", "unverified"):
        return SlideOutcome(slide_id, "skipped", unverified=state == "unverified", records=records.learned)
    if state != "missing":
        reason = reason or "--overwrite"
    x5, coords5, low_record = _read_source(low_path, f"{layout.low_mag} feature", records)
    x20, coords20, high_record = _read_source(high_path, f"{layout.high_mag} feature", records)
    if x5.shape[1] != x20.shape[1]:
        raise InputError(
            f"{high_path}: feature dim {x20.shape[1]} disagrees with {x5.shape[1]} in {low_path}"
        )
    _refuse_duplicates(low_path, coords5, layout.low_mag)
    _refuse_duplicates(high_path, coords20, layout.high_mag)
    parent_size = patch_px(level0_mag, low_mag)
    link = link_children(
        coords5,
        coords20,
        parent_size,
        max_children=max_children,
        seed=seed,
        salt=slide_salt(slide_id),
        rule=link_rule,
    )
    if link.num_linked == 0:
        raise InputError(
            f"{high_path}: no 20x patch lies inside any 5x patch of {low_path} (level0_mag {level0_mag}?)"
        )
    orphan_frac = link.orphans20.size / x20.shape[0]
    orphan_text = (
        f"{orphan_frac:.0%} of the 20x patches in {high_path} lie in no 5x patch at level0_mag {level0_mag}"
    )
    if max_orphan_frac is not None and orphan_frac > max_orphan_frac:
        raise InputError(
            f"{orphan_text}, above --max-orphan-frac {max_orphan_frac:g} (is level0_mag right in the "
            "dataset CSV?); not built"
        )
    warning = f"{orphan_text} (check level0_mag in the dataset CSV)" if orphan_frac > ORPHAN_WARNING else ""
    attrs = {
        **settings,
        "parent_size_px": int(parent_size),
        "child_size_px": int(patch_px(level0_mag, high_mag)),
        "source": SOURCE,
        "slide_id": slide_id,
        "source_low": low_record,
        "source_high": high_record,
        "num_5x": int(x5.shape[0]),
        "num_20x": int(x20.shape[0]),
        "num_orphans20": int(link.orphans20.size),
        "num_childless5": int(link.childless5.size),
        "num_dropped": int(link.num_dropped),
    }
    rows = write_hierarchical_file(target, x20, coords20, link, attrs)
    return SlideOutcome(
        slide_id,
        "done" if state == "missing" else "rebuilt",
        rows=rows,
        linked=link.num_linked,
        links=link.num_links,
        orphans20=int(link.orphans20.size),
        childless5=int(link.childless5.size),
        dropped=link.num_dropped,
        message=reason,
        warning=warning,
        records=records.learned,
    )


@dataclass(frozen=True)
class SlideJob:
    """Arguments of :func:`run_slide_job` (picklable, for a process pool)."""

    layout: FeatureLayout
    slide_id: str
    level0_mag: int
    low_mag: float
    high_mag: float
    max_children: int
    seed: int
    overwrite: bool
    link_rule: str = DEFAULT_LINK_RULE
    max_orphan_frac: float | None = None
    known_records: dict[str, str] | None = None  # SourceRecords of this slide's two files


def run_slide_job(job: SlideJob) -> SlideOutcome:
    """:func:`build_slide_hierarchy` that reports a failure as an outcome instead of raising."""
    try:
        return build_slide_hierarchy(
            job.layout,
            job.slide_id,
            job.level0_mag,
            low_mag=job.low_mag,
            high_mag=job.high_mag,
            max_children=job.max_children,
            seed=job.seed,
            overwrite=job.overwrite,
            link_rule=job.link_rule,
            max_orphan_frac=job.max_orphan_frac,
            known_records=job.known_records,
        )
    except InputError as err:
        return SlideOutcome(job.slide_id, "failed", message=str(err))
    except Exception as err:  # one bad slide must not stop the others; report it on one line
        message = one_line(err, limit=1000)
        return SlideOutcome(job.slide_id, "failed", message=message)


def level0_mags_from_csv(
    csv_path: str | Path | None, dataset_name: str
) -> tuple[dict[str, int], Path | None]:
    """``{slide_id: level0_mag}`` from ``csv_path``, or from ``dataset_csv/<dataset>.csv`` when that exists.

    Returns ``(mags, the CSV used or None)``; slides absent from the result take the CLI default.
    """
    from datasets.dataset_csv import read_level0_mags
    from datasets.tasks import DEFAULT_CSV_DIR

    if csv_path is not None:
        return read_level0_mags(csv_path), Path(csv_path)
    default_csv = DEFAULT_CSV_DIR / f"{dataset_name}.csv"
    if default_csv.is_file():
        return read_level0_mags(default_csv), default_csv
    return {}, None


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """The published dataset flags shared by the hierarchy CLIs, plus ``--csv`` and ``--level0-mag``."""
    parser.add_argument("--dataset-root-path", required=True, help="DATA_ROOT holding <dataset>_<extractor>/")
    parser.add_argument("--dataset-name", required=True, help="task name, e.g. tcga_brca")
    parser.add_argument("--feature-extractor-name", required=True, help="e.g. plip, conch, quilt")
    parser.add_argument(
        "--low-mag", default="5x", metavar="MAG", help="coarse magnification, 5x or 5 (default 5x)"
    )
    parser.add_argument(
        "--high-mag", default="20x", metavar="MAG", help="fine magnification, 20x or 20 (default 20x)"
    )
    parser.add_argument(
        "--csv", default=None, help="dataset CSV with level0_mag per slide (default dataset_csv/<name>.csv)"
    )
    parser.add_argument(
        "--level0-mag", type=int, default=40, help="level-0 magnification of slides not in the CSV"
    )


def magnifications(args: argparse.Namespace) -> tuple[float, float]:
    """``(low, high)`` from ``--low-mag``/``--high-mag`` (``5x`` or ``5``); one-line InputError when bad."""
    low = magnification_value(args.low_mag, "--low-mag")
    high = magnification_value(args.high_mag, "--high-mag")
    if high <= low:
        raise InputError(f"--high-mag {args.high_mag} must be larger than --low-mag {args.low_mag}")
    return low, high


def layout_from_args(args: argparse.Namespace) -> FeatureLayout:
    """The feature folders named by the dataset flags (folder names always use the ``5x`` form)."""
    magnifications(args)
    return FeatureLayout(
        Path(args.dataset_root_path),
        args.dataset_name,
        args.feature_extractor_name,
        low_mag=magnification_label(args.low_mag),
        high_mag=magnification_label(args.high_mag),
    )


def add_link_rule_argument(parser: argparse.ArgumentParser) -> None:
    """``--link-rule all|nearest``: which 5x parents a 20x patch is listed under when 5x tiles overlap."""
    parser.add_argument(
        "--link-rule",
        choices=LINK_RULES,
        default=DEFAULT_LINK_RULE,
        help="where overlapping 5x tiles both contain a 20x corner: 'all' lists the 20x patch under every "
        "such 5x patch (the released rule), 'nearest' only under the one with the nearest corner "
        f"(default {DEFAULT_LINK_RULE}; the same result when 5x tiles do not overlap)",
    )
