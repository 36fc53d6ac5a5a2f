"""Make k patient-level few-shot splits: ``<splits_root>/<task>/<task>_<N>/splits_<i>.csv``.

Per split: N training slides per class (whole cases), stratified val/test from the remaining cases,
seeded. Existing split files are never overwritten without ``--overwrite``. ``--csv`` names the dataset
CSV, so a task this project does not know needs no ``dataset_csv/<task>.csv``: its classes are its
prompt file's keys when there is one, else the CSV's labels.

    python create_splits.py --task tcga_brca --few_shot_num 16 --k 5 --seed 1

``--survival``: case-level k-fold cross-validation for a survival task (docs/survival.md §4), stratified
by censorship and survival bin, written to ``<splits_root>/<task>/<task>_survival/splits_<i>.csv``
holding case ids in the survival field's ``,train,val`` layout (fold i validates on group i and trains
on the rest; ``--test_part`` adds a test part: fold i tests group i, validates on group i + 1)::

    python create_splits.py --task demo_survival --csv cache/demo_survival/dataset_csv/demo_survival.csv \
        --survival --splits_root my_splits
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datasets.dataset_csv import read_dataset_csv
from datasets.splits import PARTS, make_few_shot_splits, split_csv_path, write_split
from datasets.survival import (
    DEFAULT_BINS,
    SPLIT_PARTS,
    bin_cuts,
    make_survival_splits,
    read_survival_csv,
    split_warnings,
    survival_split_path,
)
from datasets.tasks import DEFAULT_CSV_DIR, get_task
from utils.errors import InputError, one_line, run_cli
from utils.safe_names import contained


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, help="task name (dataset_csv/<task>.csv)")
    parser.add_argument(
        "--csv",
        default=None,
        help="dataset CSV (default dataset_csv/<task>.csv); any task name works with it",
    )
    parser.add_argument(
        "--few_shot_num",
        type=int,
        default=None,
        help="training slides per class (required without --survival)",
    )
    parser.add_argument(
        "--survival",
        action="store_true",
        help="case-level k-fold cross-validation of a survival task (CSV with survival_months, censorship)",
    )
    parser.add_argument(
        "--n_bins", type=int, default=DEFAULT_BINS, help="survival bins used for stratification (--survival)"
    )
    parser.add_argument(
        "--test_part",
        action="store_true",
        help="--survival: also a test part (train/val/test, k >= 3); default the field's train/val (k >= 2)",
    )
    parser.add_argument("--k", type=int, default=5, help="number of splits (default 5)")
    parser.add_argument("--val_frac", type=float, default=0.3, help="fraction of the remaining cases for val")
    parser.add_argument(
        "--test_frac", type=float, default=0.3, help="fraction of the remaining cases for test"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--splits_root", default="splits", help="output root (default splits)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing split files")
    return parser.parse_args(argv)


def _inside(splits_root: str, path: Path) -> Path:
    """``path`` (built under ``splits_root``) resolved, refused when it would leave ``--splits_root``."""
    return contained(splits_root, str(path.relative_to(Path(splits_root))))


def _existing_check(targets: list[Path], overwrite: bool) -> None:
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise InputError(
            f"{existing[0]} already exists ({len(existing)} of {len(targets)} files); use --overwrite"
        )


def survival_main(args: argparse.Namespace) -> int:
    """``--survival``: stratified case-level k-fold splits of a survival task."""
    csv_path = Path(args.csv) if args.csv else DEFAULT_CSV_DIR / f"{args.task}.csv"
    targets = [
        _inside(args.splits_root, survival_split_path(args.splits_root, args.task, i))
        for i in range(max(args.k, 0))
    ]
    _existing_check(targets, args.overwrite)
    table = read_survival_csv(csv_path)
    splits, _ = make_survival_splits(table, bin_cuts(table, args.n_bins), args.k, args.seed, args.test_part)
    parts = PARTS if args.test_part else SPLIT_PARTS
    for path, split in zip(targets, splits):
        write_split(path, split, parts)
        sizes = ", ".join(f"{p} {len(split.part(p))}" for p in parts)
        print(f"{path}: cases {sizes}")
    for line in split_warnings(splits, table.by_id()):
        print(f"warning: {line}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.csv is not None and not Path(args.csv).is_file():
        raise InputError(f"--csv {args.csv}: no such file")
    if args.survival:
        return survival_main(args)
    if args.few_shot_num is None:
        raise InputError("--few_shot_num is required (training slides per class), unless --survival")
    task = get_task(args.task, csv_path=args.csv)
    csv_path = task.csv_path
    targets = [
        _inside(args.splits_root, split_csv_path(args.splits_root, task.name, args.few_shot_num, i))
        for i in range(max(args.k, 0))
    ]
    existing = [p for p in targets if p.exists()]
    if existing and not args.overwrite:
        raise InputError(
            f"{existing[0]} already exists ({len(existing)} of {len(targets)} files); use --overwrite"
        )
    table = read_dataset_csv(csv_path, task)
    splits = make_few_shot_splits(table, args.few_shot_num, args.k, args.seed, args.val_frac, args.test_frac)
    if targets:
        try:  # an unwritable --splits_root is one line, before any file is written
            targets[0].parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(
                f"--splits_root {args.splits_root}: cannot create {targets[0].parent} ({one_line(err, with_type=False)})"
            ) from None
    for path, split in zip(targets, splits):
        try:
            write_split(path, split)
        except OSError as err:
            raise InputError(
                f"{path}: cannot write the split file ({one_line(err, with_type=False)})"
            ) from None
        print(f"{path}: train {len(split.train)}, val {len(split.val)}, test {len(split.test)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
