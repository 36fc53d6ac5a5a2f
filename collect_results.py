"""Collect the runs under a results folder into one comparison table (markdown + CSV).

``main.py`` writes each run to ``R/<task>/<extractor>/<shots>/<run>/`` with ``config.json``,
``results.csv`` (rows ``mean`` and ``std`` of every metric column) and ``summary.csv`` (one row per
fold). This script finds every finished run under ``--results_dir``, identifies it by its
``config.json`` (task, extractor, shots, model, variant, seed; folder names are not parsed) and writes,
for every task / extractor / shots combination, a markdown table with one row per method (and variant,
and seed when there are several) and ``mean ± std`` of every test metric (ACC, AUC, macro-F1 in percent;
others such as a survival C-index as fractions), plus the same numbers (unrounded) as CSV next to the
markdown file. The table code is shared with ``reproduce.py`` (:mod:`training.tables`).

    python collect_results.py --results_dir RESULTS [--task tcga_brca] [--out RESULTS/results_table.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.tables import CLASSIFICATION_METRICS, RunRecord, find_runs, table_columns, write_tables
from utils.errors import InputError, run_cli

DEFAULT_OUT_NAME = "results_table.md"
# CSV columns of classification runs (other metrics add <metric>_mean / <metric>_std columns).
CSV_COLUMNS = table_columns(list(CLASSIFICATION_METRICS))


def find_results(results_dir: Path, task: str | None = None) -> list[RunRecord]:
    """Every finished run under ``results_dir`` (optionally of one task), sorted; none is an error.

    Folders with a results file but no ``config.json`` cannot be identified: a warning each.
    """
    records, unidentified = find_runs(Path(results_dir), task)
    for folder in unidentified:
        print(f"warning: {folder}: results without config.json, skipped", file=sys.stderr)
    if not records:
        where = f"{results_dir} (task {task})" if task else str(results_dir)
        raise InputError(
            f"--results_dir {where}: no results.csv found "
            "(expected <task>/<extractor>/<shots>/<run>/ folders with config.json and results.csv)"
        )
    return records


def collect(results_dir: Path, task: str | None, out: Path) -> tuple[Path, Path, int]:
    """Write the markdown table to ``out`` and the CSV beside it; returns (md, csv, number of runs)."""
    csv_path = out.with_suffix(".csv")
    if csv_path == out:
        raise InputError(f"--out {out}: use a markdown file name (.md); the CSV goes next to it")
    records = find_results(results_dir, task)
    write_tables(records, out, csv_path)
    return out, csv_path, len(records)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Tabulate mean ± std test metrics of main.py runs.")
    p.add_argument("--results_dir", required=True, help="the --results_dir of the main.py runs")
    p.add_argument("--task", default=None, help="only this task (default: all tasks found)")
    p.add_argument(
        "--out",
        default=None,
        help=f"markdown output (default: RESULTS_DIR/{DEFAULT_OUT_NAME}); CSV beside it",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results_dir = Path(args.results_dir)
    out = Path(args.out) if args.out else results_dir / DEFAULT_OUT_NAME
    md_path, csv_path, count = collect(results_dir, args.task, out)
    print(md_path.read_text(encoding="utf-8"), end="")
    print(f"collected {count} run(s): {md_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
