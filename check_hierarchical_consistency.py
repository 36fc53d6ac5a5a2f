"""Check that every slide's 5x, 20x and hierarchical feature files agree; optionally write fixed copies.

Per slide it verifies counts, parent alignment (``parent_index`` valid; children are 20x patches, lie
inside their parent's square and carry the 20x file's feature rows), duplicate coordinates, NaN/Inf,
feature dimensions and completeness, and the fraction of 20x patches that lie in no 5x patch (a
warning above 5 %, a problem above ``--max-orphan-frac``, default 0.2 as main.py's ``--max_orphan_frac``:
the slide's ``level0_mag`` is then most likely wrong); prints one report line per slide and a summary.
Exit code 1 when any slide has a problem (with ``--fix``: one that could not be fixed).

5x patches without children are reported as a note, not a problem: the loader gives them an empty,
masked row. Inputs are never modified. ``--fix`` rebuilds the hierarchical file of each slide with
problems from its 5x and 20x files into ``hierarchical_<extractor>_5x_20x_fixed/<slide>.h5``
(atomic); the original stays. Move the fixed files over the originals to use them.

    python check_hierarchical_consistency.py --dataset-root-path R --dataset-name tcga_brca \
        --feature-extractor-name plip
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
from tqdm import tqdm

from datasets.features import FeatureLayout, list_slides
from datasets.hierarchy import children_per_parent
from datasets.slide_check import DEFAULT_MAX_ORPHAN_FRAC, ORPHAN_WARNING
from preprocess.consistency import SlideReport, check_slide, fix_slide, fixed_dir, hier_width
from preprocess.hierarchy import add_dataset_arguments, layout_from_args, level0_mags_from_csv, magnifications
from utils.errors import InputError, run_cli


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataset_arguments(parser)
    parser.add_argument(
        "--fix", action="store_true", help="write rebuilt hierarchical files to a _fixed sibling folder"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the >16-children sub-sampling when fixing"
    )
    parser.add_argument(
        "--max-orphan-frac",
        type=float,
        default=DEFAULT_MAX_ORPHAN_FRAC,
        help="a problem when more than this fraction of a slide's 20x patches lie in no 5x patch "
        f"(default {DEFAULT_MAX_ORPHAN_FRAC}, as main.py --max_orphan_frac; above "
        f"{100 * ORPHAN_WARNING:g}%% a warning)",
    )
    return parser.parse_args(argv)


def _attr_level0_mag(path: Path) -> int | None:
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("level0_mag")
            return None if value is None else int(value)
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    low_mag, high_mag = magnifications(args)
    if args.level0_mag not in (20, 40):
        raise InputError(f"--level0-mag must be 20 or 40, got {args.level0_mag}")
    if not 0 <= args.max_orphan_frac <= 1:
        raise InputError(f"--max-orphan-frac must be in [0, 1], got {args.max_orphan_frac}")
    layout = layout_from_args(args)
    if not layout.low_dir.is_dir():
        raise InputError(
            f"5x feature folder not found: {layout.low_dir} (check --dataset-root-path and names)"
        )
    slides = sorted(set(list_slides(layout.low_dir)) | set(list_slides(layout.hier_dir)))
    if not slides:
        raise InputError(f"no .h5 files in {layout.low_dir} or {layout.hier_dir}")
    from_csv, csv_used = level0_mags_from_csv(args.csv, args.dataset_name)
    print(
        f"checking {len(slides)} slides under {layout.root}; level0_mag from {csv_used or 'file attributes / --level0-mag'}"
    )
    default_width = children_per_parent(low_mag, high_mag)

    reports: list[SlideReport] = []
    for slide in tqdm(slides, desc="checking", unit="slide", file=sys.stderr):
        level0 = from_csv.get(slide) or _attr_level0_mag(layout.hier_file(slide)) or args.level0_mag
        report = check_slide(layout, slide, level0, low_mag, high_mag, args.max_orphan_frac)
        if args.fix and not report.ok:
            width = hier_width(layout, slide, default_width)
            try:
                fix_slide(layout, report, level0, low_mag, high_mag, width, args.seed)
            except InputError as err:
                report.problems.append(f"cannot fix: {err}")
        tqdm.write(report.line())
        reports.append(report)

    print(summarize(reports, layout if args.fix else None))
    unresolved = [r for r in reports if not r.ok and (r.fixed_path is None or r.orphan_problem)]
    return 1 if unresolved else 0


def summarize(reports: list[SlideReport], fix_layout: FeatureLayout | None) -> str:
    """Summary lines: slide counts, problems, notes."""
    bad = [r for r in reports if not r.ok]
    fixed = [r for r in bad if r.fixed_path is not None]
    total = {k: sum(int(r.notes.get(k, 0)) for r in reports) for k in ("childless5", "orphans20", "capped5")}
    lines = [
        f"slides: {len(reports)} checked, {len(reports) - len(bad)} ok, {len(bad)} with problems"
        + (f", {len(fixed)} fixed copies in {fixed_dir(fix_layout)}" if fix_layout is not None else ""),
        f"notes: {total['childless5']} 5x patches without children (kept, masked), "
        f"{total['orphans20']} 20x patches without parent, {total['capped5']} 5x patches capped at max children",
    ]
    warned = [r.slide_id for r in reports if r.warnings]
    if warned:
        lines.append(
            f"warnings: {len(warned)} slides with more than {ORPHAN_WARNING:.0%} of their 20x patches without "
            f"a 5x parent ({', '.join(warned[:10])}); check their level0_mag"
        )
    if fix_layout is not None and fixed:
        lines.append("originals are unchanged; move the fixed files over them to use them")
    unfixable = [r.slide_id for r in bad if r.fixed_path is None or r.orphan_problem]
    if fix_layout is not None and unfixable:
        lines.append(
            f"not fixable (5x/20x inputs unsound or unreadable, or level0_mag wrong): {', '.join(unfixable[:10])}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_cli(main))
