"""Nothing silently wrong: run-folder lock and names, resume against changed inputs, every slide checked
up front, split leakage, orphaned 20x patches, stale hierarchical files, checkpoint identity."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

import main as main_module
from datasets.features import write_patch_file
from datasets.splits import Split, read_split, split_csv_path, write_split
from tests.toy_task import TASK, make_toy_data, toy_config
from training.config import parse_config
from training.experiment import run_experiment
from utils.errors import InputError, run_cli
from utils.locking import FolderLock
from utils.run_logging import RunLog


@pytest.fixture
def toy(tmp_path):
    data = make_toy_data(tmp_path / "in", k=2)
    data["results"] = tmp_path / "results"
    return data


def _run(toy, **overrides):
    return run_experiment(toy_config(toy, toy["results"], max_epochs=1, **overrides), RunLog(quiet=True))


def _cli(toy, capsys, *extra) -> tuple[int, str]:
    code = run_cli(
        main_module.main, [*toy["argv"], "--results_dir", str(toy["results"]), "--max_epochs", "1", *extra]
    )
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------ run folders
def test_second_run_into_a_locked_folder_is_refused(toy):
    config = toy_config(toy, toy["results"], max_epochs=1)
    with FolderLock(config.run_dir):  # another run holds the folder
        with pytest.raises(InputError, match=r"is in use by pid \d+ .*wait for it to finish or use another"):
            run_experiment(config, RunLog(quiet=True))
    assert not (config.run_dir / "config.json").exists()
    assert _run(toy)  # released: the next run goes ahead


def test_lock_of_a_dead_process_is_taken_over(toy):
    config = toy_config(toy, toy["results"], max_epochs=1)
    config.run_dir.mkdir(parents=True)
    # what a killed run leaves: the lock file with its record, but no live flock on it
    (config.run_dir / ".lock").write_text(json.dumps({"host": "here", "pid": 999999, "started": 0}))
    assert len(run_experiment(config, RunLog(quiet=True))) == 2


def test_run_folder_names_distinguish_variants_and_switches():
    base = ["--task", "tcga_brca", "--data_root_dir", "R", "--results_dir", "RES"]
    reference = parse_config(base).run_dir
    corrected = parse_config([*base, "--variant", "corrected"]).run_dir
    one_switch = parse_config([*base, "--hier-attention", "sparse"]).run_dir
    same_as_variant = parse_config([*base, "--variant", "corrected", "--hier-attention", "sparse"]).run_dir
    assert reference.name == "tcga_brca_plip_HiVE_MIL_16_s1"  # the published name
    assert corrected.name == "tcga_brca_plip_HiVE_MIL_16_s1_corrected" == same_as_variant.name
    assert one_switch.name == "tcga_brca_plip_HiVE_MIL_16_s1_hier-attention-sparse"
    assert parse_config([*base, "--model_type", "ABMIL", "--variant", "corrected"]).run_dir.name.endswith(
        "_s1"
    )


def test_unwritable_results_dir_is_one_line_before_loading(toy, capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = run_cli(main_module.main, [*toy["argv"], "--results_dir", str(blocker / "results")])
    err = capsys.readouterr().err
    assert code == 2 and "--results_dir: cannot write the run folder" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------ resume
def _log(config) -> str:
    return (config.run_dir / "log.txt").read_text()


def test_resume_redoes_folds_whose_inputs_changed(toy):
    config = toy_config(toy, toy["results"], max_epochs=1)
    _run(toy)
    _run(toy)
    assert _log(config).count("with the same inputs, reusing its results") == 2
    # a split file changes: fold 1 only
    path = split_csv_path(toy["root"] / "splits", TASK, 2, 1)
    split = read_split(path)
    write_split(path, Split(split.train, split.val, split.test[:-1]))
    _run(toy)
    log = _log(config)
    assert "fold 1: inputs changed since it finished (the split" in log
    assert log.count("fold 0: finished in an earlier run with the same inputs") == 2
    # one slide's features change: every fold that uses it is redone
    slide = toy["slides"][0]
    with h5py.File(toy["layout"].low_file(slide), "a") as f:
        f["features"][0, 0] += 1.0
    _run(toy)
    assert f"feature files of 1 slide(s) ({slide})" in _log(config)
    # a dataset-CSV row changes
    csv = toy["root"] / "dataset_csv" / f"{TASK}.csv"
    frame = pd.read_csv(csv)
    frame.loc[frame.slide_id == toy["slides"][1], "case_id"] = "renamed_case"
    frame.to_csv(csv, index=False)
    _run(toy)
    assert "dataset-CSV rows of 1 slide(s)" in _log(config)
    predictions = pd.read_csv(config.run_dir / "fold_1" / "predictions_test.csv")
    assert set(predictions.slide_id) == set(
        read_split(path).test
    )  # no prediction of a slide gone from the split


# ------------------------------------------------------------------------------------------ slide checks
def _break_nan(toy, slide):
    layout = toy["layout"]
    with h5py.File(layout.low_file(slide), "r") as f:
        x5, coords = f["features"][()], f["coords"][()]
    x5[0, 0] = np.nan
    write_patch_file(layout.low_file(slide), x5, coords)


def _test_slides(toy) -> list[str]:
    split = read_split(split_csv_path(toy["root"] / "splits", TASK, 2, 1))
    return split.test


def test_a_bad_test_slide_is_found_before_any_training(toy, capsys):
    bad = _test_slides(toy)[-1]  # used only as a test slide of the last fold
    _break_nan(toy, bad)
    code, err = _cli(toy, capsys)
    assert code == 2 and err.count("\n") == 1 and bad in err and "NaN or Inf" in err
    assert not toy["results"].exists()  # nothing trained, nothing written


def test_all_bad_slides_are_reported_at_once(toy, capsys):
    bad = _test_slides(toy)[-2:]
    for slide in bad:
        _break_nan(toy, slide)
    code, err = _cli(toy, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 3 and "2 of 12 slides are unusable" in lines[-1]
    assert all(any(slide in line for line in lines[:2]) for slide in bad)


def test_slide_verdicts_are_cached_until_a_file_changes(toy, monkeypatch):
    import datasets.slide_check as slide_check

    calls = []
    original = slide_check.check_slide
    monkeypatch.setattr(slide_check, "check_slide", lambda *a, **k: calls.append(a[1]) or original(*a, **k))
    _run(toy)
    first = len(calls)
    _run(toy, overwrite=True)
    assert first == 12 and len(calls) == first  # second run: every verdict from the cache
    with h5py.File(toy["layout"].low_file(toy["slides"][2]), "a") as f:
        f["features"][0, 0] += 1.0
    _run(toy, overwrite=True)
    assert calls[first:] == [toy["slides"][2]]


def test_stale_hierarchical_file_is_refused(toy, capsys):
    from datasets.fingerprint import content_record

    slide = toy["slides"][4]
    layout = toy["layout"]
    with h5py.File(layout.hier_file(slide), "a") as f:
        f.attrs["source_low"] = content_record(layout.low_file(slide))
    assert _cli(toy, capsys)[0] == 0
    with h5py.File(layout.low_file(slide), "a") as f:  # the 5x file changes after the build
        f["features"][0, 0] += 1.0
    code, err = _cli(toy, capsys, "--overwrite")
    assert code == 2 and "stale" in err and slide in err and "create_hierarchical_features.py" in err


@pytest.mark.parametrize(("fraction", "ok"), [(0.1, True), (0.62, False)])
def test_orphaned_20x_patches_warn_then_refuse(toy, capsys, fraction, ok):
    slide = toy["slides"][5]
    with h5py.File(toy["layout"].hier_file(slide), "a") as f:
        f.attrs["num_20x"] = 100
        f.attrs["num_orphans20"] = int(fraction * 100)
    code, err = _cli(toy, capsys)
    assert f"{fraction:.0%} of its 20x patches have no 5x parent" in err and slide in err
    assert (code == 0) == ok
    if not ok:
        assert "--max_orphan_frac 0.2" in err


# ------------------------------------------------------------------------------------------ splits
def test_slide_in_two_parts_and_patient_leakage_are_errors(toy, capsys):
    path = split_csv_path(toy["root"] / "splits", TASK, 2, 0)
    split = read_split(path)
    write_split(path, Split(split.train, split.val, [*split.test, split.val[0]]))
    code, err = _cli(toy, capsys)
    assert code == 2 and f"slide(s) {split.val[0]} in both val and test" in err
    write_split(path, split)
    csv = toy["root"] / "dataset_csv" / f"{TASK}.csv"
    frame = pd.read_csv(csv)
    frame.loc[frame.slide_id == split.test[0], "case_id"] = frame.loc[
        frame.slide_id == split.train[0], "case_id"
    ].iloc[0]
    frame.to_csv(csv, index=False)
    code, err = _cli(toy, capsys)
    assert code == 2 and "in both train and test (patient-level leakage" in err
    assert _cli(toy, capsys, "--allow-patient-overlap")[0] == 0


def test_prompt_class_without_slides_is_an_error(toy, capsys):
    prompts = toy["root"] / "prompts" / "HiVE_MIL" / "curated" / f"{TASK}.json"
    prompts.parent.mkdir(parents=True)
    entries = {f"t{i}": f"e{i}" for i in range(16)}
    prompts.write_text(json.dumps({"A": entries, "B": entries, "C": entries}))
    code, err = _cli(toy, capsys)
    assert code == 2 and "no slides of class(es) 'C'" in err


# ------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_identity_is_checked_on_load(tiny_clip_dir, tmp_path):
    from datasets.tasks import TaskSpec
    from models.checkpoint import load_checkpoint, model_identity, save_checkpoint
    from models.registry import build_model
    from training.config import RunConfig

    prompts = {c: {f"t{c}{i}": f"explanation {i} of {c}." for i in range(16)} for c in ("A", "B")}
    path = tmp_path / "text_prompt" / "HiVE_MIL" / "curated" / "mytask.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(prompts))
    task = TaskSpec("mytask", ("A", "B"), tmp_path / "x.csv", prompt_dir=tmp_path / "text_prompt")
    corrected = RunConfig(
        feature_extractor="plip", text_tower=str(tiny_clip_dir), feature_dim=64, variant="corrected"
    )
    reference = RunConfig(feature_extractor="plip", text_tower=str(tiny_clip_dir), feature_dim=64)
    model = build_model("HiVE_MIL", corrected.model_spec(task))
    ckpt = tmp_path / "s_0_checkpoint.pt"
    save_checkpoint(ckpt, model.state_dict(), model_identity("HiVE_MIL", corrected.model_spec(task)))
    other = build_model("HiVE_MIL", reference.model_spec(task))
    with pytest.raises(InputError, match=r"belongs to another model \(hivemil_options\.switches\."):
        load_checkpoint(other, ckpt, model_identity("HiVE_MIL", reference.model_spec(task)))
    assert (
        load_checkpoint(model, ckpt, model_identity("HiVE_MIL", corrected.model_spec(task)))["model_type"]
        == "HiVE_MIL"
    )


def test_converter_refuses_a_checkpoint_of_another_model(tmp_path, capsys):
    import torch

    from models.checkpoint import save_checkpoint
    from models.convert_checkpoint import main as convert_main

    abmil = tmp_path / "abmil.pt"
    save_checkpoint(abmil, {"attention.weight": torch.zeros(2, 2)}, {"model_type": "ABMIL"})
    code = run_cli(convert_main, [str(abmil), str(tmp_path / "out.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "not a HiVE-MIL checkpoint (ABMIL)" in err and not (tmp_path / "out.pt").exists()
    bare = tmp_path / "bare.pt"
    torch.save({"classifier.weight": torch.zeros(2, 2)}, bare)
    assert run_cli(convert_main, [str(bare), str(tmp_path / "out.pt")]) == 2


def test_errors_of_a_rerun_go_to_its_log(toy, capsys):
    config = toy_config(toy, toy["results"], max_epochs=1)
    _run(toy)
    _break_nan(toy, _test_slides(toy)[0])
    code, err = _cli(toy, capsys)
    assert code == 2
    assert "error:" in (config.run_dir / "log.txt").read_text().splitlines()[-1]


def test_inputs_record_lists_what_a_fold_depends_on(toy):
    config = toy_config(toy, toy["results"], max_epochs=1)
    _run(toy)
    record = json.loads((config.run_dir / "fold_0" / "inputs.json").read_text())
    assert set(record) == {"split", "csv_rows", "prompt_file", "tower", "features"}
    assert record["prompt_file"] is None and record["tower"] is None  # the toy model reads no text
    assert set(record["features"]) == {s for part in record["split"].values() for s in part}
