"""Building one slide's hierarchical 5x->20x feature file (the work of ``create_hierarchical_features.py``).

For one slide: read the 5x and 20x files, link every 20x patch to the 5x patches containing its top-left
corner (:func:`datasets.hierarchy.link_children`: every containing 5x patch as released, or only the
nearest one; seeded cap of ``(high/low)^2`` children), and write
``features``/``coords``/``parent_index``/``child_mask`` atomically, the rule in the ``link_rule`` attribute. The demo generator uses the same
function, so demo files and user files are built identically.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from datasets.features import FeatureLayout, hier_file_is_complete, read_patch_file, write_hierarchical_file
from datasets.hierarchy import DEFAULT_LINK_RULE, LINK_RULES, link_children, patch_px, slide_salt
from utils.errors import InputError, one_line
from utils.magnification import magnification_label, magnification_value

SOURCE = "create_hierarchical_features.py"


@dataclass
class SlideOutcome:
    """What happened to one slide."""

    slide_id: str
    status: str  # "done", "skipped" or "failed"
    rows: int = 0
    linked: int = 0
    links: int = 0
    orphans20: int = 0
    childless5: int = 0
    dropped: int = 0
    message: str = ""


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
) -> SlideOutcome:
    """Create ``layout.hier_file(slide_id)`` (or ``output``) from the slide's 5x and 20x files.

    Skips a finished output (exists and opens) unless ``overwrite``. Raises :class:`InputError` on a
    bad input (missing file, wrong shapes, NaN/Inf, 5x/20x dimension mismatch); inputs are only read.
    """
    target = Path(output) if output is not None else layout.hier_file(slide_id)
    if not overwrite and hier_file_is_complete(target):
        return SlideOutcome(slide_id, "skipped")
    low_path, high_path = layout.low_file(slide_id), layout.high_file(slide_id)
    x5, coords5 = read_patch_file(low_path, f"{layout.low_mag} feature")
    x20, coords20 = read_patch_file(high_path, f"{layout.high_mag} feature")
    if x5.shape[1] != x20.shape[1]:
        raise InputError(
            f"{high_path}: feature dim {x20.shape[1]} disagrees with {x5.shape[1]} in {low_path}"
        )
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
    attrs = {
        "max_children": int(max_children),
        "seed": int(seed),
        "link_rule": link_rule,
        "level0_mag": int(level0_mag),
        "low_mag": float(low_mag),
        "high_mag": float(high_mag),
        "parent_size_px": int(parent_size),
        "child_size_px": int(patch_px(level0_mag, high_mag)),
        "source": SOURCE,
        "slide_id": slide_id,
        "num_5x": int(x5.shape[0]),
        "num_20x": int(x20.shape[0]),
        "num_orphans20": int(link.orphans20.size),
        "num_childless5": int(link.childless5.size),
        "num_dropped": int(link.num_dropped),
    }
    rows = write_hierarchical_file(target, x20, coords20, link, attrs)
    return SlideOutcome(
        slide_id,
        "done",
        rows=rows,
        linked=link.num_linked,
        links=link.num_links,
        orphans20=int(link.orphans20.size),
        childless5=int(link.childless5.size),
        dropped=link.num_dropped,
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
