"""Every reader of slide ids, case ids and task names refuses ids that cannot be one file name
(utils.safe_names), naming the file and row; published TCGA ids and harmless dots pass."""

from __future__ import annotations

import pytest

from datasets.dataset_csv import read_csv_table, read_dataset_csv, read_level0_mags
from datasets.features import FeatureLayout
from datasets.splits import read_split, split_csv_path
from datasets.survival import read_survival_csv
from datasets.tasks import get_task
from preprocess.wsi.sources import find_slides
from utils.errors import InputError

HOSTILE = ["../../x", "/tmp/x", "a/b", "a\\b", "..", ".", "x\x00y", "x\x01y"]
TCGA = "TCGA-A7-A0CE-01Z-00-DX1.0BB9B7B4-A7AB-4F5F-A0F6-2A6CBB53D4B1"


def _write(path, text: str):
    path.write_bytes(text.encode("utf-8"))
    return path


def _dataset_csv(tmp_path, slide="ok..id", case="case1"):
    rows = f"case_id,slide_id,label,level0_mag\n{case},{slide},A,40\ncase2,{TCGA},B,20\n"
    return _write(tmp_path / "t.csv", rows)


def _task(tmp_path):
    return get_task("t", csv_path=tmp_path / "t.csv")


def test_harmless_and_published_ids_pass(tmp_path):
    path = _dataset_csv(tmp_path)
    frame = read_dataset_csv(path, _task(tmp_path))
    assert list(frame["slide_id"]) == ["ok..id", TCGA]


@pytest.mark.parametrize("bad", HOSTILE)
@pytest.mark.parametrize("column", ["slide", "case"])
def test_dataset_csv_refuses_hostile_ids(tmp_path, bad, column):
    task = get_task("t", csv_path=_dataset_csv(tmp_path))
    path = _dataset_csv(tmp_path, **{column: bad})
    with pytest.raises(InputError) as err:
        read_dataset_csv(path, task)
    what = "contains a NUL byte" if "\x00" in bad else f"{column} id "  # pandas would cut x\0y to x
    assert str(err.value).startswith(f"{path}: data row 1: {what}")
    with pytest.raises(InputError, match="data row 1"):
        read_level0_mags(path) if column == "slide" else read_csv_table(path, ("case_id", "slide_id"))


@pytest.mark.parametrize("bad", HOSTILE)
def test_survival_csv_refuses_hostile_ids(tmp_path, bad):
    text = f"case_id,slide_id,survival_months,censorship,level0_mag\nc1,s1,3.5,0,40\nc2,{bad},4,1,40\n"
    path = _write(tmp_path / "surv.csv", text)
    with pytest.raises(InputError, match=r"surv\.csv: data row 2: (slide id|contains a NUL byte)"):
        read_survival_csv(path)


@pytest.mark.parametrize("bad", HOSTILE)
def test_split_file_refuses_hostile_ids(tmp_path, bad):
    path = _write(tmp_path / "splits_0.csv", f",train,val,test\n0,a,b,c\n1,d,{bad},e\n")
    with pytest.raises(InputError) as err:
        read_split(path)
    assert str(err.value).startswith(f"{path}: data row 2: slide id in 'val' ")


def test_split_file_with_harmless_dots_reads(tmp_path):
    path = _write(tmp_path / "splits_0.csv", f",train,val,test\n0,ok..id,{TCGA},c\n")
    assert read_split(path).all_ids() == ["ok..id", TCGA, "c"]


@pytest.mark.parametrize("bad", HOSTILE)
def test_slide_csv_of_extraction_refuses_hostile_ids(tmp_path, bad):
    (tmp_path / "s1.svs").write_bytes(b"")
    path = _write(tmp_path / "slides.csv", f"slide_id,path\ns1,s1.svs\n{bad},s1.svs\n")
    with pytest.raises(InputError, match=r"slides\.csv: data row 2: (slide id|contains a NUL byte)"):
        find_slides(path)


@pytest.mark.parametrize("bad", ["../../x", "/tmp/x", "a/b", "..", ".", "x\x00y", ""])
def test_task_names_are_refused_before_any_path_is_built(tmp_path, bad):
    with pytest.raises(InputError, match="--task: task name"):
        get_task(bad, csv_path=_dataset_csv(tmp_path))
    with pytest.raises(InputError, match="--task: task name"):
        split_csv_path(tmp_path, bad, 4, 0)
    with pytest.raises(InputError, match="task name"):
        FeatureLayout(tmp_path, bad, "plip")


def test_feature_files_refuse_hostile_slide_ids(tmp_path):
    layout = FeatureLayout(tmp_path, "t", "plip")
    for bad in HOSTILE:
        with pytest.raises(InputError, match="slide id"):
            layout.low_file(bad)
        with pytest.raises(InputError, match="slide id"):
            layout.output_files(bad)
    assert layout.output_files(TCGA)["low"] == (tmp_path / "t_plip" / "plip_5x" / f"{TCGA}.h5").resolve()


def test_outputs_leaving_the_data_root_or_colliding_are_refused(tmp_path):
    root = tmp_path / "root"
    layout = FeatureLayout(root, "t", "plip")
    layout.low_dir.mkdir(parents=True)
    layout.high_dir.symlink_to(layout.low_dir)  # 20x folder aliasing the 5x folder: one file for both
    with pytest.raises(InputError, match="same file"):
        layout.output_files("s")
    layout.high_dir.unlink()
    layout.high_dir.symlink_to(tmp_path)  # a folder that leads out of the data root
    with pytest.raises(InputError, match="leaves the output folder"):
        layout.output_files("s")
