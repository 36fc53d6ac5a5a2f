"""Collect the ``results.csv`` files of many runs into one comparison table (markdown + CSV).

``main.py`` writes ``R/<task>/<extractor>/<few_shot>/<task>_<extractor>_<model_type>_<few_shot>_s<seed>/results.csv``
with rows ``metric`` = mean / std and columns ``test_acc``, ``test_auc``, ``test_f1`` (fractions). This
script finds them all under ``--results_dir`` and writes, for every task / extractor / few-shot
combination, a markdown table with one row per method and ``mean ± std`` of ACC, AUC and macro-F1 in
percent, plus the same numbers (fractions, unrounded) as CSV next to the markdown file.

    python collect_results.py --results_dir RESULTS [--task tcga_brca] [--out RESULTS/results_table.md]
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from utils.atomic_io import atomic_write_text
from utils.errors import InputError, run_cli

METRICS = (("acc", "test_acc"), ("auc", "test_auc"), ("f1", "test_f1"))
# Row order of the table; methods not listed follow alphabetically.
METHOD_ORDER = (
    "HiVE_MIL",
    "zero_shot",
    "ViLa_MIL",
    "mean_pool",
    "max_pool",
    "MIL_fc",
    "ABMIL",
    "TransMIL",
    "LiteMIL",
)
DEFAULT_OUT_NAME = "results_table.md"
CSV_COLUMNS = [
    "task",
    "extractor",
    "few_shot",
    "method",
    "seed",
    *[f"{name}_{stat}" for name, _ in METRICS for stat in ("mean", "std")],
    "path",
]


@dataclass(frozen=True)
class RunResult:
    """Mean and std of the test metrics of one run (one results.csv)."""

    task: str
    extractor: str
    few_shot: str
    method: str
    seed: str
    mean: dict[str, float]
    std: dict[str, float]
    path: Path


def parse_run_name(run_name: str, task: str, extractor: str, few_shot: str) -> tuple[str, str]:
    """(model_type, seed) of ``<task>_<extractor>_<model_type>_<few_shot>_s<seed>``.

    A folder that does not follow the pattern keeps its whole name as the method and seed ``?``.
    """
    pattern = rf"{re.escape(task)}_{re.escape(extractor)}_(.+)_{re.escape(few_shot)}_s([^_]+)"
    match = re.fullmatch(pattern, run_name)
    if match is None:
        return run_name, "?"
    return match.group(1), match.group(2)


def read_results_csv(path: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(mean, std) dicts keyed acc/auc/f1 from one results.csv; bad files raise :class:`InputError`."""
    try:
        frame = pd.read_csv(path)
    except Exception as err:  # pandas raises many types for unreadable CSVs
        raise InputError(f"{path}: cannot read CSV ({err})") from None
    label_column = (
        "metric" if "metric" in frame.columns else (frame.columns[0] if len(frame.columns) else None)
    )
    missing = [column for _, column in METRICS if column not in frame.columns]
    if label_column is None or missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing) or 'metric'}")
    labels = frame[label_column].astype(str).str.strip()
    stats = []
    for wanted in ("mean", "std"):
        hits = frame[labels == wanted]
        if hits.empty:
            raise InputError(f"{path}: no row with {label_column} = {wanted!r}")
        row = hits.iloc[0]
        try:
            stats.append({name: float(row[column]) for name, column in METRICS})
        except (TypeError, ValueError) as err:
            raise InputError(f"{path}: non-numeric value in row {wanted!r} ({err})") from None
    return stats[0], stats[1]


def find_results(results_dir: Path, task: str | None = None) -> list[RunResult]:
    """Every ``results.csv`` four folders below ``results_dir`` (optionally of one task), sorted."""
    if not results_dir.is_dir():
        raise InputError(f"--results_dir {results_dir}: not a folder")
    pattern = f"{task}/*/*/*/results.csv" if task else "*/*/*/*/results.csv"
    found = []
    for path in sorted(results_dir.glob(pattern)):
        run_dir = path.parent
        few_shot_dir = run_dir.parent
        extractor_dir = few_shot_dir.parent
        task_name = extractor_dir.parent.name
        method, seed = parse_run_name(run_dir.name, task_name, extractor_dir.name, few_shot_dir.name)
        mean, std = read_results_csv(path)
        found.append(
            RunResult(task_name, extractor_dir.name, few_shot_dir.name, method, seed, mean, std, path)
        )
    if not found:
        where = f"{results_dir}/{task}" if task else str(results_dir)
        raise InputError(
            f"--results_dir {where}: no results.csv found "
            "(expected <task>/<extractor>/<few_shot>/<task>_<extractor>_<model>_<few_shot>_s<seed>/results.csv)"
        )
    return found


def _few_shot_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _method_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method.lower())


def _row_label(result: RunResult, seeds_of_method: set[str]) -> str:
    return result.method if len(seeds_of_method) == 1 else f"{result.method} (s{result.seed})"


def format_cell(mean: float, std: float) -> str:
    """``mean ± std`` in percent with two decimals (``nan`` stays ``nan``)."""
    if pd.isna(mean):
        return "nan"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def sorted_results(results: list[RunResult]) -> list[RunResult]:
    return sorted(
        results,
        key=lambda r: (r.task, r.extractor, _few_shot_key(r.few_shot), _method_key(r.method), r.seed),
    )


def markdown_tables(results: list[RunResult]) -> str:
    """One markdown table per task / extractor / few-shot combination."""
    groups: dict[tuple[str, str, str], list[RunResult]] = {}
    for result in sorted_results(results):
        groups.setdefault((result.task, result.extractor, result.few_shot), []).append(result)
    blocks = []
    for (task, extractor, few_shot), rows in groups.items():
        seeds: dict[str, set[str]] = {}
        for r in rows:
            seeds.setdefault(r.method, set()).add(r.seed)
        lines = [
            f"## {task} / {extractor} / {few_shot}-shot",
            "",
            "| Method | ACC (%) | AUC (%) | F1 (%) |",
            "|---|---|---|---|",
        ]
        for r in rows:
            cells = [format_cell(r.mean[name], r.std[name]) for name, _ in METRICS]
            lines.append(f"| {_row_label(r, seeds[r.method])} | {' | '.join(cells)} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def results_frame(results: list[RunResult]) -> pd.DataFrame:
    """All runs as one flat table (fractions, unrounded), columns :data:`CSV_COLUMNS`."""
    records = []
    for r in sorted_results(results):
        record = {
            "task": r.task,
            "extractor": r.extractor,
            "few_shot": r.few_shot,
            "method": r.method,
            "seed": r.seed,
        }
        for name, _ in METRICS:
            record[f"{name}_mean"] = r.mean[name]
            record[f"{name}_std"] = r.std[name]
        record["path"] = str(r.path)
        records.append(record)
    return pd.DataFrame(records, columns=CSV_COLUMNS)


def collect(results_dir: Path, task: str | None, out: Path) -> tuple[Path, Path, int]:
    """Write the markdown table to ``out`` and the CSV beside it; returns (md, csv, number of runs)."""
    results = find_results(results_dir, task)
    csv_path = out.with_suffix(".csv")
    if csv_path == out:
        raise InputError(f"--out {out}: use a markdown file name (.md); the CSV goes next to it")
    atomic_write_text(out, markdown_tables(results))
    atomic_write_text(csv_path, results_frame(results).to_csv(index=False))
    return out, csv_path, len(results)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Tabulate mean ± std test ACC/AUC/F1 of main.py runs.")
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
