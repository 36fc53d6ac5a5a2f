"""Hostile flags and files at the CLIs: one line, exit 2, nothing written outside the named folders."""

from __future__ import annotations

import pytest

import create_splits
import extract_features
from training.config import parse_config, validate_config
from utils.errors import InputError, run_cli
from utils.seed import SEED_MAX

ROWS = "case_id,slide_id,label,level0_mag\n" + "".join(f"c{i},s{i},{'AB'[i % 2]},40\n" for i in range(12))


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


@pytest.mark.parametrize("task", ["../../x", "/tmp/x", "a/b", ".."])
@pytest.mark.parametrize("survival", [False, True])
def test_create_splits_refuses_a_task_that_leaves_the_splits_root(tmp_path, capsys, task, survival):
    work = tmp_path / "work"
    (work / "splits").mkdir(parents=True)
    csv = work / "t.csv"
    csv.write_text(ROWS)
    before = _files(tmp_path)
    argv = ["--task", task, "--csv", str(csv), "--splits_root", str(work / "splits")]
    argv += ["--survival"] if survival else ["--few_shot_num", "2"]
    assert run_cli(create_splits.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --task: task name") and "\n" not in err
    assert _files(tmp_path) == before


def test_create_splits_still_writes_under_the_root(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text(ROWS)
    argv = [
        "--task",
        "ok..task",
        "--csv",
        str(csv),
        "--splits_root",
        str(tmp_path / "s"),
        "--few_shot_num",
        "2",
    ]
    assert run_cli(create_splits.main, [*argv, "--k", "2"]) == 0
    assert (tmp_path / "s" / "ok..task" / "ok..task_2" / "splits_1.csv").is_file()


@pytest.mark.parametrize("slide_id", ["../../../x", "/tmp/x", "a/b"])
def test_extract_features_refuses_hostile_slide_ids_before_any_work(tmp_path, capsys, slide_id):
    (tmp_path / "a.svs").write_bytes(b"")
    slides = tmp_path / "slides.csv"
    slides.write_text(f"slide_id,path\nok,a.svs\n{slide_id},a.svs\n")
    root = tmp_path / "data"
    argv = ["--slides", str(slides), "--data-root", str(root), "--task", "t", "--feature-extractor", "plip"]
    assert run_cli(extract_features.main, argv) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {slides}: data row 2: slide id")
    assert not root.exists()


@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1, 10**30])
def test_seed_outside_numpys_range_is_one_line(tmp_path, seed):
    config = parse_config(["--task", "demo", "--data_root_dir", str(tmp_path), "--seed", str(seed)])
    with pytest.raises(InputError, match=rf"--seed {seed}: must be an integer from 0 to {SEED_MAX}"):
        validate_config(config)


def test_seed_range_ends_are_accepted(tmp_path):
    for seed in (0, SEED_MAX):
        validate_config(
            parse_config(["--task", "demo", "--data_root_dir", str(tmp_path), "--seed", str(seed)])
        )


def test_a_forced_classification_kind_is_named_as_the_reason(tmp_path):
    from training.tasks.classification import ClassificationTask

    base = ["--task", "toysurv", "--data_root_dir", str(tmp_path), "--model_type", "HiLa"]
    with pytest.raises(InputError) as err:
        ClassificationTask.check_model(parse_config([*base, "--task_kind", "classification"]))
    assert "--task_kind classification was given" in str(err.value)
    assert "no survival_months column" not in str(err.value)
    with pytest.raises(InputError, match="its dataset CSV has no survival_months column"):
        ClassificationTask.check_model(parse_config(base))


def test_a_survival_table_read_as_classification_says_so(tmp_path):
    from datasets.dataset_csv import read_dataset_csv
    from datasets.tasks import TaskSpec

    csv = tmp_path / "s.csv"
    csv.write_text("case_id,slide_id,survival_months,censorship,level0_mag\nc1,s1,3,0,40\n")
    with pytest.raises(InputError, match="missing column.*label.*it has survival_months.*--task_kind auto"):
        read_dataset_csv(csv, TaskSpec("s", ("A",), csv, label_dict={"A": 0}))


def test_reproduce_with_a_closed_port_is_one_line_before_any_run_folder(tmp_path, capsys):
    import socket
    import time

    import reproduce

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = tmp_path / "results"
    argv = ["--tasks", "demo", "--models", "ABMIL", "--results_dir", str(results), "--k", "1"]
    start = time.monotonic()
    assert run_cli(reproduce.main, [*argv, "--address", f"127.0.0.1:{port}"]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --address 127.0.0.1:{port}: no Ray cluster answers") and "\n" not in err
    assert not results.exists()
