"""Reading and validating ``dataset_csv/<task>.csv`` (columns ``case_id,slide_id,label,level0_mag``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from datasets.tasks import CSV_COLUMNS, TaskSpec
from utils.errors import InputError, listed, one_line
from utils.safe_names import check_names, refuse_nul

VALID_LEVEL0_MAGS = (20, 40)
ID_COLUMNS = ("case_id", "slide_id")  # columns whose cells become file names or split cells


def _load(path: Path, required: tuple[str, ...], expected: tuple[str, ...] = CSV_COLUMNS) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"dataset CSV not found: {path} (expected columns {','.join(expected)})")
    refuse_nul(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:  # pandas raises many exception types for unreadable files
        raise InputError(f"{path}: cannot read CSV ({one_line(err, with_type=False)})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        hint = (
            "; it has survival_months: a survival table, run it as a survival task (--task_kind auto or survival)"
            if "label" in missing and "survival_months" in frame.columns
            else ""
        )
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)} (expected columns {','.join(expected)}){hint}"
        )
    if frame.empty:
        raise InputError(f"{path}: no rows")
    for col in required:
        frame[col] = frame[col].str.strip()
        blank = frame.index[frame[col] == ""]
        if len(blank):
            raise InputError(f"{path}: empty '{col}' in {len(blank)} row(s) (first: data row {blank[0] + 1})")
    for col in ID_COLUMNS:  # ids name files (<slide>.h5) and split cells: one rule (utils.safe_names)
        if col in frame.columns:
            check_names(frame[col], col.replace("_", " "), path)
    dup = frame["slide_id"][frame["slide_id"].duplicated()].unique() if "slide_id" in required else []
    if len(dup):
        raise InputError(f"{path}: duplicate slide ids: {listed(dup)}")
    if "level0_mag" in required:
        frame["level0_mag"] = _parse_level0_mag(frame["level0_mag"], path)
    return frame


def _parse_level0_mag(values: pd.Series, path: Path) -> pd.Series:
    numeric = pd.to_numeric(values, errors="coerce")
    bad = values[~numeric.isin(VALID_LEVEL0_MAGS)]
    if len(bad):
        raise InputError(
            f"{path}: level0_mag must be 20 or 40, found {listed(bad.unique())} "
            f"(first at data row {bad.index[0] + 1})"
        )
    return numeric.astype(int)


def read_csv_table(path: str | Path, required: tuple[str, ...]) -> pd.DataFrame:
    """A dataset-style CSV with the columns ``required``, checked as :func:`read_dataset_csv` checks its
    columns (file present, columns present, no empty cells, unique ``slide_id``, ``level0_mag`` 20 or
    40); all cells are trimmed strings except ``level0_mag`` (int). Used for other task kinds' CSVs."""
    return _load(Path(path), tuple(required), tuple(required))


def read_dataset_csv(path: str | Path, task: TaskSpec) -> pd.DataFrame:
    """Read a task's dataset CSV and add ``label_idx`` from ``task.label_dict``.

    Returns a DataFrame with columns ``case_id, slide_id, label, level0_mag`` (int, 20 or 40),
    ``label_idx`` (int), then any extra columns of the file, in file order. Raises a one-line
    :class:`InputError` for a missing file, missing columns, unknown labels, duplicate slide ids or a
    bad ``level0_mag``.
    """
    path = Path(path)
    frame = _load(path, CSV_COLUMNS)
    unknown = sorted(set(frame["label"]) - set(task.label_dict))
    if unknown:
        raise InputError(
            f"{path}: labels not in task {task.name!r}: {listed(unknown)} "
            f"(task classes: {', '.join(task.label_dict)})"
        )
    frame["label_idx"] = frame["label"].map(task.label_dict).astype(int)
    extras = [c for c in frame.columns if c not in (*CSV_COLUMNS, "label_idx")]
    return frame[[*CSV_COLUMNS, "label_idx", *extras]].reset_index(drop=True)


def read_level0_mags(path: str | Path) -> dict[str, int]:
    """``{slide_id: level0_mag}`` from a dataset CSV (only ``slide_id`` and ``level0_mag`` are required)."""
    frame = _load(Path(path), ("slide_id", "level0_mag"))
    return dict(zip(frame["slide_id"], frame["level0_mag"].astype(int)))
