"""Nothing silently wrong in the hierarchy tools: stale outputs rebuilt (and main.py accepting them
again), magnification sanity (orphaned 20x patches), duplicate coordinates, bad flag values, and
create_splits.py --csv for a task the project does not know."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import check_hierarchical_consistency as checker_cli
import create_hierarchical_features as create_cli
import create_splits as splits_cli
import main as main_module
import preprocess.hierarchy as hierarchy
from datasets.features import FeatureLayout, write_patch_file
from datasets.fingerprint import content_record
from datasets.slide_check import check_slide as training_check
from datasets.slide_check import hierarchy_staleness
from datasets.splits import read_split
from tests.data_fixtures import grid_children, snapshot, standard_slide, write_published_hier, write_slide
from tests.toy_task import DIM, make_toy_data
from utils.errors import run_cli


def _flags(root: Path, task: str = "toy", extractor: str = "plip", csv: Path | None = None) -> list[str]:
    return [
        "--dataset-root-path", str(root), "--dataset-name", task, "--feature-extractor-name", extractor,
        "--csv", str(csv if csv is not None else root / "toy.csv"),
    ]  # fmt: skip


def _csv(root: Path, mags: dict[str, int]) -> None:
    rows = [(f"c_{s}", s, "A", m) for s, m in mags.items()]
    pd.DataFrame(rows, columns=["case_id", "slide_id", "label", "level0_mag"]).to_csv(
        root / "toy.csv", index=False
    )


def _mtimes(layout: FeatureLayout) -> dict[str, int]:
    return {p.stem: p.stat().st_mtime_ns for p in layout.hier_dir.glob("*.h5")}


def _bump_features(path: Path) -> None:
    """Rewrite a 5x/20x file with slightly different features (what a re-extraction does)."""
    with h5py.File(path, "r") as f:
        feats, coords = f["features"][()], f["coords"][()]
    feats[0, 0] += 1.0
    write_patch_file(path, feats, coords)


# ------------------------------------------------------------------------------------------ stale outputs
def test_outputs_record_their_sources_and_a_changed_source_is_rebuilt_alone(tmp_path, capsys):
    layout = FeatureLayout(tmp_path, "toy", "plip")
    for i in range(3):
        standard_slide(layout, f"s{i}", seed=i)
    _csv(tmp_path, {f"s{i}": 40 for i in range(3)})
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    capsys.readouterr()
    for slide in ("s0", "s1", "s2"):
        with h5py.File(layout.hier_file(slide), "r") as f:
            assert f.attrs["source_low"] == content_record(layout.low_file(slide))
            assert f.attrs["source_high"] == content_record(layout.high_file(slide))
    before = _mtimes(layout)

    _bump_features(layout.low_file("s1"))  # new 5x features for one slide
    assert "stale" in hierarchy_staleness(layout, "s1")
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    out, err = capsys.readouterr()
    assert "0 done, 2 skipped (up to date), 1 rebuilt (stale: 1), 0 failed" in out
    assert f"rebuilt s1: stale: {layout.low_file('s1')} changed after it was built" in err
    after = _mtimes(layout)
    assert after["s0"] == before["s0"] and after["s2"] == before["s2"] and after["s1"] != before["s1"]
    assert hierarchy_staleness(layout, "s1") is None

    _bump_features(layout.high_file("s2"))  # and the 20x file of another
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    out, err = capsys.readouterr()
    assert "1 rebuilt (stale: 1)" in out and f"rebuilt s2: stale: {layout.high_file('s2')} changed" in err
    assert run_cli(checker_cli.main, _flags(tmp_path)) == 0  # consistent again
    capsys.readouterr()


def test_other_settings_rebuild_and_unrecorded_outputs_are_kept_unless_overwrite(tmp_path, capsys):
    layout = FeatureLayout(tmp_path, "toy", "plip")
    standard_slide(layout, "s0", seed=0)
    standard_slide(layout, "s1", seed=1)
    _csv(tmp_path, {"s0": 40, "s1": 40})
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    with h5py.File(layout.hier_file("s1"), "r") as f:
        feats, coords = f["features"][()], f["coords"][()]
    layout.hier_file("s1").unlink()
    write_published_hier(layout.hier_file("s1"), feats, coords)  # no attributes: cannot be judged
    capsys.readouterr()

    assert run_cli(create_cli.main, [*_flags(tmp_path), "--seed", "3"]) == 0
    out, err = capsys.readouterr()
    assert "0 done, 1 skipped (up to date; 1 without source records, kept: --overwrite rebuilds them)" in out
    assert (
        "1 rebuilt (built with other settings: 1)" in out
        and "rebuilt s0: built with other settings (seed 0 -> 3)" in err
    )
    assert run_cli(create_cli.main, [*_flags(tmp_path), "--seed", "3", "--overwrite"]) == 0
    assert "2 rebuilt (--overwrite: 2)" in capsys.readouterr().out
    with h5py.File(layout.hier_file("s1"), "r") as f:
        assert f.attrs["seed"] == 3 and "source_low" in f.attrs


def test_unchanged_sources_are_not_read_again_on_resume(tmp_path, capsys, monkeypatch):
    layout = FeatureLayout(tmp_path, "toy", "plip")
    standard_slide(layout, "s0")
    _csv(tmp_path, {"s0": 40})
    calls = []
    original = hierarchy.content_record
    monkeypatch.setattr(hierarchy, "content_record", lambda p: calls.append(Path(p).name) or original(p))
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    assert sorted(calls) == ["s0.h5", "s0.h5"]
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    assert len(calls) == 2  # the records came from the cache
    path = layout.low_file("s0")
    path.write_bytes(path.read_bytes())  # same content, new modification time: read again, still current
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    assert len(calls) == 3 and "0 done, 1 skipped" in capsys.readouterr().out


def _add_20x_files(data: dict) -> None:
    """The toy task ships hierarchical files only; give it 20x files holding exactly their children."""
    layout = data["layout"]
    for slide in data["slides"]:
        with h5py.File(layout.hier_file(slide), "r") as f:
            feats, coords = f["features"][()], f["coords"][()]
        real = (feats != 0).any(axis=2)
        write_patch_file(layout.high_file(slide), feats[real], coords[real])


def test_end_to_end_stale_file_is_rebuilt_alone_and_training_accepts_it_again(tmp_path, capsys):
    data = make_toy_data(tmp_path / "in", k=2)
    _add_20x_files(data)
    layout, slides = data["layout"], data["slides"]
    csv = tmp_path / "in" / "dataset_csv" / "toy.csv"
    flags = _flags(layout.data_root_dir, "toy", "toyfe", csv)
    train = [*data["argv"], "--results_dir", str(tmp_path / "results"), "--max_epochs", "1"]
    assert run_cli(create_cli.main, [*flags, "--overwrite"]) == 0  # published files -> ours, with sources
    assert run_cli(main_module.main, train) == 0
    capsys.readouterr()
    before = _mtimes(layout)

    _bump_features(layout.low_file(slides[3]))
    code = run_cli(main_module.main, [*train, "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "stale" in err and slides[3] in err  # training refuses the stale file
    assert run_cli(create_cli.main, flags) == 0
    assert f"0 done, {len(slides) - 1} skipped (up to date), 1 rebuilt (stale: 1)" in capsys.readouterr().out
    after = _mtimes(layout)
    assert [s for s in slides if after[s] != before[s]] == [slides[3]]
    assert training_check(layout, slides[3], DIM).problem is None
    assert run_cli(main_module.main, [*train, "--overwrite"]) == 0


# ------------------------------------------------------------------------------------------ magnification
def _mislabelled_root(root: Path) -> FeatureLayout:
    """A 40x slide (2048-px 5x tiles, 512-px 20x tiles) that the CSV declares as 20x, and a sound one."""
    layout = FeatureLayout(root, "toy", "plip")
    standard_slide(layout, "wrong", seed=1)  # 14 of its 20 20x patches fall outside 1024-px squares
    standard_slide(layout, "fine", seed=2)
    _csv(root, {"wrong": 20, "fine": 40})
    return layout


def test_level0_mag_that_orphans_most_20x_patches_is_refused_by_builder_and_checker(tmp_path, capsys):
    layout = _mislabelled_root(tmp_path)
    inputs = (snapshot(layout.low_dir), snapshot(layout.high_dir))
    assert run_cli(create_cli.main, _flags(tmp_path)) == 1
    out, err = capsys.readouterr()
    failed = [line for line in err.splitlines() if line.startswith("failed ")]
    assert len(failed) == 1 and failed[0].startswith("failed wrong: 70% of the 20x patches")
    assert "lie in no 5x patch at level0_mag 20, above --max-orphan-frac 0.2" in failed[0]
    assert "1 done" in out and "1 failed" in out
    assert not layout.hier_file("wrong").exists() and layout.hier_file("fine").is_file()
    assert (snapshot(layout.low_dir), snapshot(layout.high_dir)) == inputs

    assert run_cli(checker_cli.main, _flags(tmp_path)) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("PROBLEM wrong"))
    assert "orphan_frac=70%" in line and "above --max-orphan-frac 0.2" in line
    assert next(x for x in out.splitlines() if " fine:" in x).startswith("OK")

    # a looser threshold: built and passed, with a warning each
    assert run_cli(create_cli.main, [*_flags(tmp_path), "--max-orphan-frac", "0.9"]) == 0
    out, err = capsys.readouterr()
    assert "warning wrong: 70% of the 20x patches" in err and "check level0_mag" in err
    assert "warnings: 1 slides with more than 5% of their 20x patches without a 5x parent" in out
    with h5py.File(layout.hier_file("wrong"), "r") as f:
        assert f.attrs["num_orphans20"] == 14 and f.attrs["num_20x"] == 20
    assert run_cli(checker_cli.main, [*_flags(tmp_path), "--max-orphan-frac", "0.9"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if " wrong:" in x)
    assert line.startswith("OK") and "warning: 70% of the 20x patches" in line
    assert run_cli(checker_cli.main, _flags(tmp_path)) == 1  # the default threshold still refuses it
    capsys.readouterr()


def test_orphan_fraction_between_warning_and_threshold_only_warns(tmp_path, capsys):
    layout = FeatureLayout(tmp_path, "toy", "plip")
    coords5 = np.array([[0, 0]])
    coords20 = np.concatenate([grid_children((0, 0), list(range(16))), [[9000, 0], [9000, 512]]])
    write_slide(layout, "s", coords5, coords20)  # 2 of 18 orphaned: 11%
    _csv(tmp_path, {"s": 40})
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    assert "warning s: 11% of the 20x patches" in capsys.readouterr().err
    assert run_cli(checker_cli.main, _flags(tmp_path)) == 0
    assert "orphan_frac=11%" in capsys.readouterr().out


@pytest.mark.parametrize("cli", [create_cli, checker_cli])
@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_bad_max_orphan_frac_is_one_line(tmp_path, capsys, cli, value):
    _mislabelled_root(tmp_path)
    assert run_cli(cli.main, [*_flags(tmp_path), "--max-orphan-frac", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --max-orphan-frac must be in [0, 1]") and err.count("\n") == 1


# ------------------------------------------------------------------------------------------ duplicates
@pytest.mark.parametrize("which", ["5x", "20x"])
def test_duplicate_coordinates_fail_that_slide(tmp_path, capsys, which):
    layout = FeatureLayout(tmp_path, "toy", "plip")
    coords5, coords20, _, _ = standard_slide(layout, "dup")
    standard_slide(layout, "ok", seed=3)
    _csv(tmp_path, {"dup": 40, "ok": 40})
    path = layout.low_file("dup") if which == "5x" else layout.high_file("dup")
    coords = (coords5 if which == "5x" else coords20).copy()
    coords[2] = coords[1]  # row 2 repeats row 1
    with h5py.File(path, "r") as f:
        feats = f["features"][()]
    write_patch_file(path, feats, coords)
    x, y = coords[1]

    assert run_cli(create_cli.main, _flags(tmp_path)) == 1
    out, err = capsys.readouterr()
    failed = [line for line in err.splitlines() if line.startswith("failed ")]
    assert failed == [
        f"failed dup: {path}: duplicate {which} coordinate ({x}, {y}) at rows 1 and 2 (1 repeated row(s)); "
        "each patch must be listed once, so fix or re-extract this file"
    ]
    assert not layout.hier_file("dup").exists() and layout.hier_file("ok").is_file()
    assert run_cli(checker_cli.main, _flags(tmp_path)) == 1
    line = next(x for x in capsys.readouterr().out.splitlines() if " dup:" in x)
    assert line.startswith("PROBLEM") and f"1 duplicate {which} coordinates" in line


# ------------------------------------------------------------------------------------------ flags, splits
@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_patches_must_be_positive(tmp_path, capsys, value):
    layout = _mislabelled_root(tmp_path)
    assert run_cli(create_cli.main, [*_flags(tmp_path), "--max-patches", value]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --max-patches must be at least 1, got {value}\n"
    assert not layout.hier_dir.exists()


def test_create_splits_takes_any_task_from_its_csv(tmp_path, capsys):
    rows = [(f"p{i}", f"sl{i}", label, 40) for i, label in enumerate(["red", "green"] * 8)]
    csv = tmp_path / "elsewhere" / "colours.csv"
    csv.parent.mkdir()
    pd.DataFrame(rows, columns=["case_id", "slide_id", "label", "level0_mag"]).to_csv(csv, index=False)
    flags = ["--task", "my_colours", "--csv", str(csv), "--few_shot_num", "2", "--k", "2"]
    flags += ["--splits_root", str(tmp_path / "splits")]
    assert run_cli(splits_cli.main, flags) == 0, capsys.readouterr().err
    files = sorted((tmp_path / "splits" / "my_colours" / "my_colours_2").glob("splits_*.csv"))
    assert [p.name for p in files] == ["splits_0.csv", "splits_1.csv"]
    split = read_split(files[0])
    assert len(split.train) == 4 and set(split.train) <= {r[1] for r in rows}

    missing = ["--task", "my_colours", "--csv", str(tmp_path / "nope.csv"), "--few_shot_num", "2"]
    assert run_cli(splits_cli.main, missing) == 2
    assert capsys.readouterr().err.startswith(f"error: --csv {tmp_path / 'nope.csv'}: no such file")


def test_unwritable_outputs_are_one_line(tmp_path, capsys):
    _mislabelled_root(tmp_path)
    layout = FeatureLayout(tmp_path, "toy", "plip")
    layout.hier_dir.write_text("a file where the output folder belongs")
    assert run_cli(create_cli.main, _flags(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err == f"error: output folder {layout.hier_dir} is a file; move it away\n"

    rows = [(f"p{i}", f"sl{i}", label, 40) for i, label in enumerate(["red", "green"] * 8)]
    csv = tmp_path / "colours.csv"
    pd.DataFrame(rows, columns=["case_id", "slide_id", "label", "level0_mag"]).to_csv(csv, index=False)
    (tmp_path / "splits").write_text("a file where the splits folder belongs")
    flags = [
        "--task",
        "colours",
        "--csv",
        str(csv),
        "--few_shot_num",
        "2",
        "--splits_root",
        str(tmp_path / "splits"),
    ]
    assert run_cli(splits_cli.main, flags) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: --splits_root {tmp_path / 'splits'}: cannot create") and err.count("\n") == 1
    )
