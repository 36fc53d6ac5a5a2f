"""Survival tasks: the dataset CSV, cases, survival bins and case-level cross-validation splits.

docs/survival.md §2-§4. A survival task's dataset CSV has the columns
``case_id,slide_id,survival_months,censorship,level0_mag`` (``censorship`` 1 = censored, 0 = event:
the MCAT / Patch-GCN convention). A case is one patient; all its slides form one bag
(:mod:`datasets.case_bag`) with one survival time and one censorship.

Labels are discrete survival bins: the uncensored cases' times are cut at their quantiles (quartiles for
4 bins) computed on the whole cohort; bin ``b`` is ``[cut_{b-1}, cut_b)`` (left-closed, the first bin
starts at 0, the last is open-ended), so censored cases beyond the largest uncensored time land in the
last bin.

Splits are case-level k-fold cross-validation (:func:`make_survival_splits`), written in the survival
field's split layout (``,train,val``, MCAT / Patch-GCN; ``,train,val,test`` on request) holding **case
ids** under ``splits/<task>/<task>_survival/``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from datasets.dataset_csv import read_csv_table
from datasets.splits import Split, split_csv_path
from datasets.tasks import DEFAULT_LLM, TaskSpec
from utils.errors import InputError

SURVIVAL_COLUMNS = ("case_id", "slide_id", "survival_months", "censorship", "level0_mag")
SURVIVAL_SPLIT_LABEL = "survival"  # split folder <task>_survival and run-folder part (docs/survival.md §4)
DEFAULT_BINS = 4
PROMPT_FOLDER = "HiLa"  # text_prompt/HiLa/<task>.json (docs/survival.md §8.1)


@dataclass(frozen=True)
class SurvivalCase:
    """One patient: its slides (dataset-CSV order), survival time and censorship (1 censored, 0 event)."""

    case_id: str
    slides: tuple[str, ...]
    months: float
    censorship: int

    @property
    def event(self) -> bool:
        return self.censorship == 0


@dataclass
class SurvivalTable:
    """A checked survival dataset CSV: cases in order of first appearance and the raw row of every slide."""

    path: Path
    cases: list[SurvivalCase]
    rows: dict[str, list] = field(default_factory=dict)  # slide -> [case_id, months, censorship, level0_mag]

    def by_id(self) -> dict[str, SurvivalCase]:
        return {c.case_id: c for c in self.cases}

    @property
    def months(self) -> np.ndarray:
        return np.array([c.months for c in self.cases], dtype=np.float64)

    @property
    def censorship(self) -> np.ndarray:
        return np.array([c.censorship for c in self.cases], dtype=np.int64)


def is_survival_csv(path: str | Path) -> bool:
    """Whether the CSV at ``path`` is a survival table (its header has ``survival_months``); False when
    it cannot be read (the reader of the task's kind then reports the problem)."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return "survival_months" in {h.strip() for h in header}


def _first_row(mask: pd.Series) -> int:
    return int(np.flatnonzero(mask.to_numpy())[0]) + 1


def read_survival_csv(path: str | Path) -> SurvivalTable:
    """Read and check a survival dataset CSV (docs/survival.md §2); every problem is one InputError line.

    Checks: the five columns present with no empty cell, unique slide ids, ``level0_mag`` 20 or 40,
    ``survival_months`` a finite number >= 0, ``censorship`` 0 or 1, and one time and one censorship per
    case (a case whose slides disagree is an error).
    """
    path = Path(path)
    frame = read_csv_table(path, SURVIVAL_COLUMNS)
    months = pd.to_numeric(frame["survival_months"], errors="coerce")
    bad = ~np.isfinite(months.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        first = frame["survival_months"][bad].iloc[0]
        raise InputError(
            f"{path}: survival_months must be a number, found {first!r} in {int(bad.sum())} row(s) "
            f"(first at data row {_first_row(pd.Series(bad))})"
        )
    negative = months < 0
    if negative.any():
        raise InputError(
            f"{path}: survival_months must be >= 0, found {months[negative].iloc[0]:g} in "
            f"{int(negative.sum())} row(s) (first at data row {_first_row(negative)})"
        )
    censor = pd.to_numeric(frame["censorship"], errors="coerce")
    bad_censor = ~censor.isin((0, 1))
    if bad_censor.any():
        raise InputError(
            f"{path}: censorship must be 0 (event) or 1 (censored), found "
            f"{frame['censorship'][bad_censor].iloc[0]!r} in {int(bad_censor.sum())} row(s) "
            f"(first at data row {_first_row(bad_censor)})"
        )
    frame = frame.assign(survival_months=months.astype(float), censorship=censor.astype(int))
    cases = []
    for case_id, rows in frame.groupby("case_id", sort=False):
        times = sorted(set(rows["survival_months"]))
        flags = sorted(set(rows["censorship"]))
        if len(times) > 1:
            raise InputError(
                f"{path}: case {case_id} has conflicting survival_months across its slides "
                f"({', '.join(f'{t:g}' for t in times)}); a case has one survival time"
            )
        if len(flags) > 1:
            raise InputError(
                f"{path}: case {case_id} has conflicting censorship across its slides (0 and 1); "
                "a case is either censored or not"
            )
        cases.append(SurvivalCase(str(case_id), tuple(rows["slide_id"]), float(times[0]), int(flags[0])))
    rows = {
        str(r.slide_id): [str(r.case_id), float(r.survival_months), int(r.censorship), int(r.level0_mag)]
        for r in frame.itertuples(index=False)
    }
    return SurvivalTable(path, cases, rows)


# ----------------------------------------------------------------------------------------------- bins


def bin_cuts(table: SurvivalTable, n_bins: int = DEFAULT_BINS) -> tuple[float, ...]:
    """The ``n_bins - 1`` cut points: quantiles ``1/n .. (n-1)/n`` of the uncensored cases' times over
    the whole cohort (``numpy.quantile``, linear interpolation; docs/survival.md §3)."""
    if n_bins < 2:
        raise InputError(f"--n_bins must be >= 2, got {n_bins}")
    events = np.array([c.months for c in table.cases if c.event], dtype=np.float64)
    if events.size < n_bins:
        raise InputError(
            f"{table.path}: {events.size} uncensored case(s); {n_bins} survival bins need at least "
            f"{n_bins} cases with censorship 0"
        )
    cuts = np.quantile(events, np.arange(1, n_bins) / n_bins)
    if cuts[0] <= 0 or np.any(np.diff(cuts) <= 0):
        raise InputError(
            f"{table.path}: the uncensored survival times give repeated quantile cut points "
            f"({', '.join(f'{c:g}' for c in cuts)}); too few distinct times for {n_bins} bins (--n_bins)"
        )
    return tuple(float(c) for c in cuts)


def bin_index(months, cuts) -> np.ndarray:
    """Bin of each time: ``b`` with ``cut_{b-1} <= t < cut_b`` (cut_{-1} = 0, cut_{n-1} = infinity)."""
    return np.searchsorted(np.asarray(cuts, dtype=np.float64), np.asarray(months, dtype=np.float64), "right")


def bin_labels(cuts) -> list[str]:
    """Human-readable bins, e.g. ``["[0, 12.5)", "[12.5, 30)", ..., "[61.2, inf)"]``."""
    edges = [0.0, *cuts, math.inf]
    return [f"[{edges[b]:g}, {edges[b + 1]:g})" for b in range(len(edges) - 1)]


def bin_class_names(n_bins: int) -> tuple[str, ...]:
    return tuple(f"bin_{b}" for b in range(n_bins))


@dataclass(frozen=True)
class SurvivalTaskSpec(TaskSpec):
    """A survival task: its "classes" are the survival bins (``bin_0`` ...), one hazard per bin.

    ``bin_cuts`` are the cohort's cut points (:func:`bin_cuts`). Prompts (HiLa-style) come from
    ``<prompt_dir>/HiLa/<task>.json``; ``--LLM`` does not apply.
    """

    bin_cuts: tuple[float, ...] = ()

    @property
    def n_bins(self) -> int:
        return len(self.bin_cuts) + 1

    def prompt_file(self, llm: str | None = None) -> Path:
        return Path(self.prompt_dir) / PROMPT_FOLDER / f"{self.name}.json"

    def default_llm(self) -> str:
        return DEFAULT_LLM


def survival_task(name: str, table: SurvivalTable, prompt_dir: str | Path, n_bins: int) -> SurvivalTaskSpec:
    """The task spec of survival task ``name`` read from ``table`` (bins cut on the whole cohort)."""
    cuts = bin_cuts(table, n_bins)
    classes = bin_class_names(n_bins)
    return SurvivalTaskSpec(
        name=name,
        class_names=classes,
        csv_path=table.path,
        prompt_dir=Path(prompt_dir),
        label_dict={c: i for i, c in enumerate(classes)},
        bin_cuts=cuts,
    )


# ----------------------------------------------------------------------------------------------- splits


def survival_split_path(splits_root: str | Path, task: str, fold: int) -> Path:
    """``<splits_root>/<task>/<task>_survival/splits_<fold>.csv``."""
    return split_csv_path(splits_root, task, SURVIVAL_SPLIT_LABEL, fold)


SPLIT_PARTS = ("train", "val")  # the field's layout (MCAT, Patch-GCN); ``--test_part`` adds "test"


def make_survival_splits(
    table: SurvivalTable, cuts, k: int = 5, seed: int = 1, test_part: bool = False
) -> tuple[list[Split], np.ndarray]:
    """Case-level k-fold cross-validation, stratified by (censorship, survival bin); docs/survival.md §4.

    Cases are grouped by stratum -- the event strata (censorship 0, by bin) first, then the censored
    ones -- each stratum's cases sorted by id and shuffled with ``numpy.random.default_rng((seed, 0))``,
    and dealt round-robin into k groups, the counter running on across strata: every stratum's count per
    group differs by at most one, and so do the group sizes and the groups' event counts (so with at
    least k events every group holds one).

    Default (the field's protocol): fold i validates on group i and trains on the other k - 1 groups
    (80/20 % for k = 5); the val part is the fold's evaluation set. ``test_part``: fold i tests group i,
    validates on group (i + 1) mod k and trains on the other k - 2. Either way every case is evaluated
    exactly once. Returns the k splits (case ids) and the group of every case (table order).
    """
    least = 3 if test_part else 2
    if k < least:
        layout = "train/val/test" if test_part else "train/val"
        raise InputError(f"--k must be >= {least} for survival cross-validation ({layout} groups), got {k}")
    if len(table.cases) < k:
        raise InputError(f"{table.path}: {len(table.cases)} case(s), too few for {k} folds")
    events = sum(c.event for c in table.cases)
    if events < k:
        raise InputError(
            f"{table.path}: {events} event(s) (censorship 0) among {len(table.cases)} cases, fewer than the "
            f"{k} folds: some fold would be evaluated without an event (c-index undefined); use a smaller --k"
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0]))
    bins = bin_index(table.months, cuts)
    strata: dict[tuple[int, int], list[int]] = {}
    for i, case in enumerate(table.cases):
        strata.setdefault((case.censorship, int(bins[i])), []).append(i)
    group = np.zeros(len(table.cases), dtype=np.int64)
    counter = 0
    for key in sorted(strata):
        members = sorted(strata[key], key=lambda i: table.cases[i].case_id)
        for i in rng.permutation(len(members)):
            group[members[i]] = counter % k
            counter += 1
    ids = [c.case_id for c in table.cases]
    splits = []
    for fold in range(k):
        evaluated = (fold + 1) % k if test_part else fold
        tested = [c for c, g in zip(ids, group) if g == fold] if test_part else []
        splits.append(
            Split(
                train=[c for c, g in zip(ids, group) if g not in (fold, evaluated)],
                val=[c for c, g in zip(ids, group) if g == evaluated],
                test=tested,
            )
        )
    return splits, group


def comparable_pairs(months, censorship) -> int:
    """Harrell's comparable pairs: (i, j) with i an event and t_i < t_j, or t_i = t_j and j censored."""
    months = np.asarray(months, dtype=np.float64)
    event = np.asarray(censorship).astype(int) == 0
    later = months[None, :] > months[:, None]
    tied_censored = (months[None, :] == months[:, None]) & ~event[None, :]
    return int(((later | tied_censored) & event[:, None]).sum())


def undefined_reason(months, censorship) -> str | None:
    """Why Harrell's c-index of these cases is undefined (no event, or no comparable pair), else None."""
    n = len(months)
    if not any(int(c) == 0 for c in censorship):
        return f"no event among its {n} case(s)"
    if comparable_pairs(months, censorship) == 0:
        return f"no comparable pair among its {n} case(s) (no time after an event)"
    return None


def split_warnings(splits: dict[int, Split] | list[Split], by_id: dict[str, SurvivalCase]) -> list[str]:
    """One line per fold part whose c-index cannot be defined (val and test parts) or whose training
    part has no event, e.g. ``fold 3: val part has no event among its 20 case(s) (c-index undefined)``."""
    items = splits.items() if isinstance(splits, dict) else enumerate(splits)
    lines = []
    for fold, split in items:
        if split.train and not any(by_id[c].event for c in split.train):
            lines.append(f"fold {fold}: train part has no event; the survival loss learns little")
        for part in ("val", "test"):
            ids = split.part(part)
            if not ids:
                continue
            reason = undefined_reason([by_id[c].months for c in ids], [by_id[c].censorship for c in ids])
            if reason:
                lines.append(f"fold {fold}: {part} part has {reason} (c-index undefined)")
    return lines
