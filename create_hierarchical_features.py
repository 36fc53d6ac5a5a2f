"""Build hierarchical 5x->20x feature files: ``hierarchical_<extractor>_5x_20x/<slide>.h5``.

For every slide in ``DATA_ROOT/<dataset>_<extractor>/<extractor>_5x`` this links each 20x patch to the
5x patches that contain its top-left corner (near-linear grid-key lookup; ``--link-rule all``, the
released rule, lists it under every such 5x patch when 5x tiles overlap, ``nearest`` under one), keeps at most
``--max-patches`` children per 5x patch (seeded, reproducible sub-sample) and writes ``features``,
``coords``, ``parent_index`` and ``child_mask`` atomically, with the content records of the 5x and
20x files it was built from (``source_low``/``source_high``) and the build settings as attributes.
A rerun skips outputs that are up to date (same 5x/20x content, same settings), so an interrupted run
resumes, and rebuilds stale or differently built ones, saying why. Outputs without source records
(published files, or ones built before the records existed) cannot be judged: they are kept, and
rebuilt only with ``--overwrite``. A slide whose 5x or 20x file lists a coordinate twice, or with more
than ``--max-orphan-frac`` of its 20x patches outside every 5x patch (a wrong ``level0_mag``), fails;
above 5 % it gets a warning. A failing slide is reported and counted; the others continue.

    python create_hierarchical_features.py --dataset-root-path R --dataset-name tcga_brca \
        --feature-extractor-name plip --low-mag 5 --high-mag 20 --max-patches 16
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm

from datasets.features import list_slides
from datasets.hierarchy import children_per_parent
from datasets.slide_check import DEFAULT_MAX_ORPHAN_FRAC, ORPHAN_WARNING
from preprocess.hierarchy import (
    SlideJob,
    SlideOutcome,
    SourceRecords,
    add_dataset_arguments,
    add_link_rule_argument,
    layout_from_args,
    level0_mags_from_csv,
    magnifications,
    run_slide_job,
)
from utils.errors import InputError, run_cli


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataset_arguments(parser)
    parser.add_argument(
        "--max-patches", type=int, default=None, help="children per 5x patch (default (high/low)^2)"
    )
    add_link_rule_argument(parser)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the >max-patches sub-sampling")
    parser.add_argument(
        "--max-orphan-frac",
        type=float,
        default=DEFAULT_MAX_ORPHAN_FRAC,
        help="refuse a slide when more than this fraction of its 20x patches lie in no 5x patch (default "
        f"{DEFAULT_MAX_ORPHAN_FRAC}, as main.py --max_orphan_frac; above {100 * ORPHAN_WARNING:g}%% a warning)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild every output, also up-to-date ones and ones without source records (published files)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    low_mag, high_mag = magnifications(args)
    if args.max_patches is not None and args.max_patches < 1:
        raise InputError(f"--max-patches must be at least 1, got {args.max_patches}")
    max_children = args.max_patches or children_per_parent(low_mag, high_mag)
    if not 0 <= args.max_orphan_frac <= 1:
        raise InputError(f"--max-orphan-frac must be in [0, 1], got {args.max_orphan_frac}")
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    layout = layout_from_args(args)
    for folder, flag in ((layout.low_dir, "5x"), (layout.high_dir, "20x")):
        if not folder.is_dir():
            raise InputError(
                f"{flag} feature folder not found: {folder} (check --dataset-root-path and names)"
            )
    if layout.hier_dir.exists() and not layout.hier_dir.is_dir():
        raise InputError(f"output folder {layout.hier_dir} is a file; move it away")
    slides = list_slides(layout.low_dir)
    if not slides:
        raise InputError(f"no .h5 files in {layout.low_dir}")
    if args.level0_mag not in (20, 40):
        raise InputError(f"--level0-mag must be 20 or 40, got {args.level0_mag}")
    from_csv, csv_used = level0_mags_from_csv(args.csv, args.dataset_name)
    mags = {s: from_csv.get(s, args.level0_mag) for s in slides}
    n_default = sum(1 for s in slides if s not in from_csv)
    print(
        f"{len(slides)} slides in {layout.low_dir}; level0_mag from {csv_used or '--level0-mag'}"
        + (
            f" ({n_default} slides not in the CSV use --level0-mag {args.level0_mag})"
            if csv_used and n_default
            else ""
        )
        + f"; link rule {args.link_rule}; writing {layout.hier_dir}"
    )
    cached = SourceRecords.load(layout)

    def known(slide: str) -> dict[str, str]:
        keys = (SourceRecords.key(layout.low_file(slide)), SourceRecords.key(layout.high_file(slide)))
        return {k: cached[k] for k in keys if k in cached}

    jobs = [
        SlideJob(
            layout,
            s,
            mags[s],
            low_mag,
            high_mag,
            max_children,
            args.seed,
            args.overwrite,
            args.link_rule,
            args.max_orphan_frac,
            known(s),
        )
        for s in slides
    ]
    outcomes = run_jobs(jobs, args.workers)
    current = {k: v for job in jobs for k, v in (job.known_records or {}).items()}
    for outcome in outcomes:
        current.update(outcome.records)
    if current != cached:
        SourceRecords.save(layout, current)
    print(summarize(outcomes))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def run_jobs(jobs: list[SlideJob], workers: int) -> list[SlideOutcome]:
    """Run the jobs (inline or in a process pool) with a progress bar; report failures as they come."""
    outcomes: list[SlideOutcome] = []
    progress = tqdm(total=len(jobs), desc="hierarchical features", unit="slide", file=sys.stderr)
    if workers == 1:
        results = map(run_slide_job, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(run_slide_job, jobs, chunksize=1)
    try:
        for outcome in results:
            outcomes.append(outcome)
            if outcome.status == "failed":
                tqdm.write(f"failed {outcome.slide_id}: {outcome.message}", file=sys.stderr)
            elif outcome.status == "rebuilt" and outcome.message != "--overwrite":
                tqdm.write(f"rebuilt {outcome.slide_id}: {outcome.message}", file=sys.stderr)
            if outcome.warning:
                tqdm.write(f"warning {outcome.slide_id}: {outcome.warning}", file=sys.stderr)
            progress.update(1)
    finally:
        progress.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return outcomes


def summarize(outcomes: list[SlideOutcome]) -> str:
    """Summary of a run: slide counts (why outputs were rebuilt), warnings, patch counts of the slides built now."""
    count = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "rebuilt", "failed")}
    reasons: dict[str, int] = {}
    for o in outcomes:
        if o.status == "rebuilt":  # "stale: <path> changed ..." -> "stale"; "built with other settings (...)"
            key = o.message.split(":")[0].split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
    unverified = sum(o.unverified for o in outcomes)
    skipped = f"{count['skipped']} skipped (up to date"
    skipped += (
        f"; {unverified} without source records, kept: --overwrite rebuilds them)" if unverified else ")"
    )
    rebuilt = f"{count['rebuilt']} rebuilt"
    if reasons:
        rebuilt += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) + ")"
    lines = [f"slides: {count['done']} done, {skipped}, {rebuilt}, {count['failed']} failed"]
    warned = sum(bool(o.warning) for o in outcomes)
    if warned:
        lines.append(
            f"warnings: {warned} slides with more than {ORPHAN_WARNING:.0%} of their 20x patches without a "
            "5x parent (listed above; check level0_mag)"
        )
    built = [o for o in outcomes if o.status in ("done", "rebuilt")]
    linked, links = sum(o.linked for o in built), sum(o.links for o in built)
    shared = f" ({links} links: overlapping 5x patches share children)" if links != linked else ""
    lines.append(
        f"patches (slides built now): {linked} 20x linked{shared}, "
        f"{sum(o.orphans20 for o in built)} 20x without parent, "
        f"{sum(o.childless5 for o in built)} 5x without children, "
        f"{sum(o.dropped for o in built)} 20x dropped by --max-patches"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_cli(main))
