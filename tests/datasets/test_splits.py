"""Splits: published CSV format round trip, reference files, patient-level seeded few-shot splits."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from datasets.dataset_csv import read_dataset_csv, read_level0_mags
from datasets.splits import (
    Split,
    check_split_against_csv,
    format_split,
    make_few_shot_splits,
    read_split,
    split_csv_path,
    write_split,
)
from datasets.tasks import DEFAULT_CSV_DIR, TaskSpec, get_task
from tests.paths import BUILTIN_TCGA_TASKS, REFERENCE_DATA, SHIPPED_DATASET_CSV, SHIPPED_SPLITS, missing
from utils.errors import InputError

REFERENCE = SHIPPED_SPLITS  # the published splits, shipped with the project


def test_split_csv_path():
    assert split_csv_path("splits", "tcga_rcc", 16, 3) == Path("splits/tcga_rcc/tcga_rcc_16/splits_3.csv")


def test_write_format_by_hand_and_round_trip(tmp_path):
    split = Split(train=["a", "b"], val=["c"], test=["d", "e", "f"])
    path = tmp_path / "x" / "splits_0.csv"
    write_split(path, split)
    assert path.read_text() == ",train,val,test\n0,a,c,d\n1,b,,e\n2,,,f\n"
    assert read_split(path) == split
    assert [p.name for p in path.parent.iterdir()] == ["splits_0.csv"]  # no temp file left


@pytest.mark.parametrize(
    "text, message",
    [
        ("train,val\n", "missing column(s) test"),
        ("", "empty split file"),
        (",train,val,test\n0,a,b,c\n1,a,,\n", "listed twice in 'train'"),
        (",train,val,test\n0,a,b,a\n", "in train and in val/test"),
    ],
)
def test_bad_split_files(tmp_path, text, message):
    path = tmp_path / "splits_0.csv"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        read_split(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert path.read_text() == text


def test_missing_split_file(tmp_path):
    with pytest.raises(InputError, match="split file not found.*create_splits.py"):
        read_split(tmp_path / "nope.csv")


def test_reference_splits_parse_and_reformat_identically():
    files = sorted(REFERENCE.glob("*/*/splits_*.csv"))
    assert len(files) == 15
    for path in files:
        split = read_split(path)
        assert len(split.train) in (32, 48) and len(split.val) == len(split.test) > 0
        assert not set(split.val) & set(split.test)
        assert format_split(split) == path.read_text()


def _table():
    """3 classes; per class 7 cases: 5 with one slide, 2 with two slides (9 slides)."""
    rows = []
    for label in ("x", "y", "z"):
        for c in range(7):
            for s in range(2 if c < 2 else 1):
                rows.append((f"{label}_case{c}", f"{label}_case{c}_s{s}", label))
    return pd.DataFrame(rows, columns=["case_id", "slide_id", "label"])


def test_few_shot_splits_patient_level_and_seeded():
    table = _table()
    splits = make_few_shot_splits(table, n_shots=3, k=4, seed=5, val_frac=0.5, test_frac=0.5)
    assert len(splits) == 4
    case_of = dict(zip(table.slide_id, table.case_id))
    label_of = dict(zip(table.slide_id, table.label))
    for split in splits:
        for label in ("x", "y", "z"):
            assert sum(label_of[s] == label for s in split.train) == 3
            assert any(label_of[s] == label for s in split.val) and any(
                label_of[s] == label for s in split.test
            )
        cases = [{case_of[s] for s in split.part(p)} for p in ("train", "val", "test")]
        assert not (cases[0] & cases[1]) and not (cases[0] & cases[2]) and not (cases[1] & cases[2])
        # every slide of a used case is in the same part
        used = {s for s in split.all_ids()}
        for s, c in case_of.items():
            if c in cases[0] | cases[1] | cases[2]:
                assert s in used
        assert len(split.all_ids()) == len(set(split.all_ids()))
    again = make_few_shot_splits(
        table.sample(frac=1, random_state=0), 3, k=4, seed=5, val_frac=0.5, test_frac=0.5
    )
    assert again == splits  # same seed, shuffled rows: identical
    other = make_few_shot_splits(table, 3, k=4, seed=6, val_frac=0.5, test_frac=0.5)
    assert other != splits
    assert splits[0] != splits[1]


def test_too_few_cases_is_a_clear_error():
    table = _table()
    with pytest.raises(InputError, match="class 'x' has 7 cases / 9 slides: too few for 10 training slides"):
        make_few_shot_splits(table, n_shots=10, k=1)
    with pytest.raises(InputError, match="val_frac"):
        make_few_shot_splits(table, n_shots=2, k=1, val_frac=0.8, test_frac=0.5)


def test_case_with_two_labels_is_refused():
    table = pd.DataFrame({"case_id": ["p", "p"], "slide_id": ["a", "b"], "label": ["x", "y"]})
    with pytest.raises(InputError, match="case p has slides with different labels"):
        make_few_shot_splits(table, 1, k=1)


def test_check_split_against_csv():
    table = _table()
    split = Split(train=["x_case0_s0", "ghost"], val=["ghost", "other"], test=["z_case6_s0"])
    assert check_split_against_csv(split, table) == ["ghost", "other"]


# ------------------------------------------------------------------------------------ dataset CSV

TASK = TaskSpec("toy", ("A", "B"), Path("unused.csv"), label_dict={"A": 0, "B": 1})
GOOD = "case_id,slide_id,label,level0_mag,site\np1,s1,A,40,x\np1,s2,A,20,y\np2,s3,B,40,z\n"


def test_read_dataset_csv(tmp_path):
    path = tmp_path / "toy.csv"
    path.write_text(GOOD)
    table = read_dataset_csv(path, TASK)
    assert list(table.columns) == ["case_id", "slide_id", "label", "level0_mag", "label_idx", "site"]
    assert table.label_idx.tolist() == [0, 0, 1] and table.level0_mag.tolist() == [40, 20, 40]
    assert str(table.level0_mag.dtype).startswith("int") and str(table.label_idx.dtype).startswith("int")
    assert read_level0_mags(path) == {"s1": 40, "s2": 20, "s3": 40}


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "dataset CSV not found: {path} (expected columns case_id,slide_id,label,level0_mag)"),
        ("case_id,slide_id,label\np,s,A\n", "{path}: missing column(s) level0_mag"),
        ("case_id,slide_id,label,level0_mag\np,s,C,40\np,t,D,40\n", "{path}: labels not in task 'toy': C, D"),
        ("case_id,slide_id,label,level0_mag\np,s,A,40\nq,s,B,40\n", "{path}: duplicate slide ids: s"),
        ("case_id,slide_id,label,level0_mag\np,s,A,10\n", "{path}: level0_mag must be 20 or 40, found 10"),
        ("case_id,slide_id,label,level0_mag\np,s,A,forty\n", "level0_mag must be 20 or 40, found forty"),
        ("case_id,slide_id,label,level0_mag\np,,A,40\n", "{path}: empty 'slide_id' in 1 row(s)"),
        ("case_id,slide_id,label,level0_mag\n", "{path}: no rows"),
    ],
)
def test_bad_dataset_csv(tmp_path, text, message):
    path = tmp_path / "toy.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError) as err:
        read_dataset_csv(path, TASK)
    assert message.format(path=path) in str(err.value) and "\n" not in str(err.value)
    if text is not None:
        assert path.read_text() == text


def test_reference_csvs_and_splits_agree():
    for task_name in BUILTIN_TCGA_TASKS:
        table = read_dataset_csv(SHIPPED_DATASET_CSV / f"{task_name}.csv", get_task(task_name))
        assert (
            set(table.level0_mag) <= {20, 40} and table.label_idx.nunique() == get_task(task_name).num_classes
        )
        paths = sorted((REFERENCE / task_name).glob("*/splits_*.csv"))
        assert [p.name for p in paths] == [f"splits_{k}.csv" for k in range(5)]
        for path in paths:
            assert path.parent.name == f"{task_name}_16"
            assert check_split_against_csv(read_split(path), table) == []


@pytest.mark.parametrize("task_name", BUILTIN_TCGA_TASKS)
def test_shipped_csvs_are_the_builtin_tasks_defaults(task_name):
    """The built-in tasks find their shipped CSV by default, and it loads with every class present."""
    task = get_task(task_name)
    assert task.csv_path == DEFAULT_CSV_DIR / f"{task_name}.csv" == SHIPPED_DATASET_CSV / f"{task_name}.csv"
    table = read_dataset_csv(task.csv_path, task)
    assert len(table) > 800 and table.slide_id.is_unique
    assert sorted(table.label.unique()) == sorted(task.class_names)
    split = read_split(split_csv_path(SHIPPED_SPLITS, task_name, 16, 0))
    assert check_split_against_csv(split, table) == []


SHIPPED_FILES = [
    *(f"dataset_csv/{t}.csv" for t in BUILTIN_TCGA_TASKS),
    *(f"splits/{t}/{t}_16/splits_{k}.csv" for t in BUILTIN_TCGA_TASKS for k in range(5)),
]


@pytest.mark.parametrize("relative", SHIPPED_FILES)
def test_shipped_copies_are_byte_identical_to_reference_data(relative):
    shipped = SHIPPED_DATASET_CSV.parent / relative
    assert shipped.is_file()
    if absent := missing(REFERENCE_DATA / relative):
        pytest.skip(absent)
    assert shipped.read_bytes() == (REFERENCE_DATA / relative).read_bytes()


@pytest.mark.skipif(not REFERENCE_DATA.is_dir(), reason="../shared/reference_data not available")
def test_every_reference_file_is_shipped():
    """Whatever part of the published files ../shared holds here, each is one the project ships."""
    published = sorted(str(p.relative_to(REFERENCE_DATA)) for p in REFERENCE_DATA.rglob("*.csv"))
    assert set(published) <= set(SHIPPED_FILES), sorted(set(published) - set(SHIPPED_FILES))
