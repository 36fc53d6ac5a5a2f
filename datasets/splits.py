"""Few-shot splits: ``splits/<task>/<task>_<N>/splits_<fold>.csv`` reading, writing and making.

File format (the published one): header ``,train,val,test``, an integer index column, one slide id per
cell, shorter columns padded with blanks::

    ,train,val,test
    0,slideA,slideC,slideE
    1,,slideD,slideF

Splits are patient-level: all slides of a case go to the same part, so no case appears in two parts.
The same holds for the case-level, label-stratified cross-validation folds of ``--cv nested``
(:func:`stratified_case_folds`, :func:`cross_validation_splits`).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from utils.atomic_io import atomic_write_text
from utils.errors import InputError, listed
from utils.safe_names import check_name

PARTS = ("train", "val", "test")
T = TypeVar("T")


@dataclass
class Split:
    """Slide ids of one few-shot split."""

    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)

    def part(self, name: str) -> list[str]:
        return getattr(self, name)

    def all_ids(self) -> list[str]:
        return [*self.train, *self.val, *self.test]

    def positions(self, position: dict[str, int], order: dict[str, int]) -> list[list[int]]:
        """Per part (train, val, test): ``position`` of each id, the part sorted by ``order`` (e.g. the
        dataset-CSV row of each slide or case)."""
        return [[position[i] for i in sorted(self.part(p), key=order.__getitem__)] for p in PARTS]


def split_csv_path(splits_root: str | Path, task: str, few_shot_num: int, fold: int) -> Path:
    """``<splits_root>/<task>/<task>_<N>/splits_<fold>.csv`` (``task`` must be a safe file name)."""
    check_name(task, "task name", "--task")
    return Path(splits_root) / task / f"{task}_{few_shot_num}" / f"splits_{fold}.csv"


def read_split(path: str | Path, item: str = "slide", require_test: bool = True) -> Split:
    """Parse a split CSV (published format). One-line :class:`InputError` on any format problem.

    ``item`` names what the cells hold in messages (``"case"`` for survival splits, docs/survival.md §4).
    ``require_test=False`` also accepts the survival field's ``,train,val`` files (MCAT, Patch-GCN): a
    file without a ``test`` column gives an empty test part.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"split file not found: {path} (make one with create_splits.py)")
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read split CSV ({err})") from None
    if not rows:
        raise InputError(f"{path}: empty split file (expected header ',train,val,test')")
    header = [h.strip() for h in rows[0]]
    needed = PARTS if require_test else PARTS[:2]
    missing = [p for p in needed if p not in header]
    if missing:
        expected = "',train,val,test'" if require_test else "',train,val' or ',train,val,test'"
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (expected header {expected})")
    columns = {p: header.index(p) for p in PARTS if p in header}
    parts: dict[str, list[str]] = {p: [] for p in PARTS}
    for number, row in enumerate(rows[1:], start=1):
        if not any(cell.strip() for cell in row):
            continue
        for part, col in columns.items():
            value = row[col].strip() if col < len(row) else ""
            if value:
                parts[part].append(check_name(value, f"{item} id in '{part}'", f"{path}: data row {number}"))
    for part, ids in parts.items():
        dup = sorted(s for s, n in Counter(ids).items() if n > 1)
        if dup:
            raise InputError(f"{path}: {item} {dup[0]} listed twice in '{part}'")
    leaked = sorted(set(parts["train"]) & (set(parts["val"]) | set(parts["test"])))
    if leaked:
        raise InputError(
            f"{path}: {item} {leaked[0]} is in train and in val/test ({len(leaked)} such {item}s)"
        )
    return Split(**parts)


def format_split(split: Split, parts: tuple[str, ...] = PARTS) -> str:
    """The CSV text of ``split`` in the published format (columns ``parts``: all three by default, or
    ``("train", "val")`` for the survival field's ``,train,val`` files)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["", *parts])
    length = max(len(split.part(p)) for p in parts)
    for i in range(length):
        writer.writerow([i, *(split.part(p)[i] if i < len(split.part(p)) else "" for p in parts)])
    return buffer.getvalue()


def write_split(path: str | Path, split: Split, parts: tuple[str, ...] = PARTS) -> None:
    """Write ``split`` to ``path`` atomically in the published format (:func:`format_split`)."""
    atomic_write_text(path, format_split(split, parts))


def check_split_against_csv(split: Split, df: pd.DataFrame) -> list[str]:
    """Slide ids of ``split`` (first-seen order, no repeats) that are not in the dataset CSV ``df``."""
    known = set(df["slide_id"].astype(str))
    return list(dict.fromkeys(s for s in split.all_ids() if s not in known))


def split_leakage(split: Split, case_of: dict[str, str]) -> tuple[list[str], list[str]]:
    """``(slide problems, patient problems)`` of one split, each a short phrase naming the ids.

    Slide problems: a slide listed twice in one part or in two parts. Patient problems: one case
    (``case_of[slide]``) with slides in two parts -- patient-level leakage.
    """
    slide_problems, patient_problems = [], []
    for name in PARTS:
        ids = split.part(name)
        repeated = sorted({s for s in ids if ids.count(s) > 1})
        if repeated:
            slide_problems.append(f"{listed(repeated, 3)} listed twice in {name}")
    for i, first in enumerate(PARTS):
        for second in PARTS[i + 1 :]:
            both = sorted(set(split.part(first)) & set(split.part(second)))
            if both:
                slide_problems.append(f"slide(s) {listed(both, 3)} in both {first} and {second}")
            cases = sorted(
                {case_of[s] for s in split.part(first) if s in case_of}
                & {case_of[s] for s in split.part(second) if s in case_of}
            )
            if cases:
                patient_problems.append(f"patient(s) {listed(cases, 3)} in both {first} and {second}")
    return slide_problems, patient_problems


def _cases_by_class(df: pd.DataFrame) -> dict[str, list[tuple[str, list[str]]]]:
    """``{label: [(case_id, [slide ids]), ...]}`` sorted by case id, slides sorted; one label per case."""
    missing = [c for c in ("case_id", "slide_id", "label") if c not in df.columns]
    if missing:
        raise InputError(f"dataset table lacks column(s) {', '.join(missing)}")
    frame = df[["case_id", "slide_id", "label"]].astype(str)
    labels_per_case = frame.groupby("case_id")["label"].nunique()
    mixed = labels_per_case.index[labels_per_case > 1].tolist()
    if mixed:
        raise InputError(f"case {mixed[0]} has slides with different labels; cases must have one label")
    grouped: dict[str, list[tuple[str, list[str]]]] = {}
    for case_id, rows in sorted(frame.groupby("case_id"), key=lambda item: item[0]):
        grouped.setdefault(rows["label"].iloc[0], []).append((case_id, sorted(rows["slide_id"])))
    return dict(sorted(grouped.items()))


def make_few_shot_splits(
    df: pd.DataFrame,
    n_shots: int,
    k: int = 5,
    seed: int = 1,
    val_frac: float = 0.3,
    test_frac: float = 0.3,
) -> list[Split]:
    """Make ``k`` patient-level few-shot splits.

    Per split and class, whole cases are drawn at random until the class has exactly ``n_shots``
    training slides; of the remaining cases of that class, ``round(val_frac * n)`` go to val and
    ``round(test_frac * n)`` to test (at least one each when the fraction is positive); the rest are
    unused. Split ``i`` draws from ``numpy.random.default_rng((seed, i))`` over cases sorted by id,
    so the result depends only on the table's content and the seed, not on its row order.
    """
    if n_shots <= 0 or k <= 0:
        raise InputError(f"few-shot number ({n_shots}) and number of splits ({k}) must be positive")
    if val_frac < 0 or test_frac < 0 or val_frac + test_frac > 1:
        raise InputError(f"--val_frac {val_frac} and --test_frac {test_frac} must be >= 0 and sum to <= 1")
    by_class = _cases_by_class(df)
    for label, cases in by_class.items():
        rest = len(cases) - 1
        need_val = 1 if val_frac > 0 else 0
        need_test = 1 if test_frac > 0 else 0
        n_slides = sum(len(slides) for _, slides in cases)
        if n_slides < n_shots or rest < need_val + need_test:
            raise InputError(
                f"class {label!r} has {len(cases)} cases / {n_slides} slides: too few for {n_shots} training "
                f"slides plus {need_val + need_test} val/test case(s)"
            )
    splits = []
    for fold in range(k):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, fold]))
        split = Split()
        for label, cases in by_class.items():
            order = rng.permutation(len(cases))
            taken, total = set(), 0
            for i in order:
                size = len(cases[i][1])
                if total + size <= n_shots:
                    taken.add(int(i))
                    split.train.extend(cases[i][1])
                    total += size
                if total == n_shots:
                    break
            if total != n_shots:
                raise InputError(
                    f"class {label!r}: cannot pick exactly {n_shots} training slides from whole cases "
                    f"(cases with several slides stay together); try another --seed or --few_shot_num"
                )
            rest = [cases[i] for i in order if int(i) not in taken]
            n_val = _part_size(val_frac, len(rest))
            n_test = _part_size(test_frac, len(rest))
            if n_val + n_test > len(rest):
                n_test = len(rest) - n_val
            if (val_frac > 0 and n_val == 0) or (test_frac > 0 and n_test == 0):
                raise InputError(f"class {label!r}: too few cases left for val and test after training")
            for _, slides in rest[:n_val]:
                split.val.extend(slides)
            for _, slides in rest[n_val : n_val + n_test]:
                split.test.extend(slides)
        splits.append(split)
    return splits


def _part_size(frac: float, n: int) -> int:
    if frac <= 0:
        return 0
    return min(n, max(1, int(round(frac * n))))


# ------------------------------------------------------------------------------- cross-validation folds
def stratified_case_folds(
    cases: Sequence[tuple[str, Hashable, Sequence[T]]], k: int, seed: int, salt: Sequence[int] = ()
) -> list[list[T]]:
    """Deal whole cases into ``k`` folds, stratified by label; return each fold's items.

    ``cases`` holds ``(case_id, label, items)`` (items: slide ids, dataset positions, ...). Per label
    (in sorted order), the cases sorted by id are shuffled by ``numpy.random.default_rng((seed, *salt))``
    and each goes to the fold with the fewest items of that label so far (ties: fewest items in all,
    then the lowest fold), so the folds partition the items, no case is split, and every label is spread
    as evenly as whole cases allow. The result depends only on the cases, ``seed`` and ``salt``.
    """
    if k < 2:
        raise InputError(f"cross-validation needs at least 2 folds (got {k})")
    if len(cases) < k:
        raise InputError(
            f"{len(cases)} case(s) cannot fill {k} cross-validation folds (each fold needs at least one case)"
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(int(s) for s in salt)]))
    by_label: dict[Hashable, list[tuple[str, Sequence[T]]]] = {}
    for case_id, label, items in sorted(cases, key=lambda c: str(c[0])):
        by_label.setdefault(label, []).append((case_id, items))
    folds: list[list[T]] = [[] for _ in range(k)]
    for label in sorted(by_label, key=str):
        group = by_label[label]
        of_label = [0] * k
        for i in rng.permutation(len(group)):
            _, items = group[int(i)]
            target = min(range(k), key=lambda f: (of_label[f], len(folds[f]), f))
            folds[target].extend(items)
            of_label[target] += len(items)
    return folds


def cross_validation_splits(df: pd.DataFrame, k: int, seed: int) -> list[Split]:
    """``k`` case-level, label-stratified folds of every slide of the dataset table ``df``: split ``i``
    tests fold ``i`` and trains on the others (no val part), so the test parts partition the slides."""
    grouped = _cases_by_class(df).items()
    cases = [(case_id, label, slides) for label, group in grouped for case_id, slides in group]
    tests = stratified_case_folds(cases, k, seed)
    splits = []
    for test in tests:
        held = set(test)
        train = [s for _, _, slides in cases for s in slides if s not in held]
        splits.append(Split(train=train, val=[], test=list(test)))
    return splits
