"""End-to-end: create_hierarchical_features.py, check_hierarchical_consistency.py, create_splits.py,
scripts/make_demo_data.py on small generated data."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import check_hierarchical_consistency as checker_cli
import create_hierarchical_features as create_cli
import create_splits as splits_cli
from datasets.features import FeatureLayout, read_slide_bag, write_patch_file
from datasets.splits import read_split
from preprocess.consistency import check_slide
from tests.data_fixtures import (
    edit_h5,
    grid_children,
    snapshot,
    standard_slide,
    write_published_hier,
    write_slide,
)
from tests.paths import PROJECT
from utils.errors import run_cli


def _flags(root: Path, *extra: str) -> list[str]:
    return [
        "--dataset-root-path",
        str(root),
        "--dataset-name",
        "toy",
        "--feature-extractor-name",
        "plip",
        "--csv",
        str(root / "toy.csv"),
        *extra,
    ]


def _make_root(root: Path, n_slides: int = 3) -> FeatureLayout:
    """Slides s0..: standard slides at level0_mag 40, plus s_20 on a 1024 grid at level0_mag 20."""
    layout = FeatureLayout(root, "toy", "plip")
    rows = []
    for i in range(n_slides):
        standard_slide(layout, f"s{i}", seed=i)
        rows.append((f"c{i}", f"s{i}", "A", 40))
    coords5 = np.array([[0, 0], [1024, 0]])
    coords20 = np.concatenate(
        [grid_children((0, 0), [0, 1], step=256), grid_children((1024, 0), [15], step=256)]
    )
    write_slide(layout, "s_20", coords5, coords20, seed=9)
    rows.append(("c9", "s_20", "A", 20))
    pd.DataFrame(rows, columns=["case_id", "slide_id", "label", "level0_mag"]).to_csv(
        root / "toy.csv", index=False
    )
    return layout


def test_create_then_resume_then_overwrite(tmp_path, capsys):
    layout = _make_root(tmp_path)
    inputs = snapshot(layout.low_dir) | snapshot(layout.high_dir)
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "4 done, 0 skipped" in out and "0 failed" in out
    # s0..s2: 19 linked, 1 orphan, 1 childless each; s_20: 3 linked, none orphan or childless.
    assert "60 20x linked, 3 20x without parent, 3 5x without children" in out
    bag = read_slide_bag(layout, "s_20")
    np.testing.assert_array_equal(bag.child_mask.sum(1).numpy(), [2, 1])
    with h5py.File(layout.hier_file("s0"), "r") as f:
        assert f.attrs["level0_mag"] == 40 and f.attrs["max_children"] == 16 and f.attrs["seed"] == 0
        assert f["features"].shape == (2, 16, 8) and list(f["parent_index"][()]) == [0, 2]
    with h5py.File(layout.hier_file("s_20"), "r") as f:
        assert f.attrs["level0_mag"] == 20 and f.attrs["parent_size_px"] == 1024

    stamp = layout.hier_file("s0").stat().st_mtime_ns
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    assert "0 done, 4 skipped" in capsys.readouterr().out
    assert layout.hier_file("s0").stat().st_mtime_ns == stamp

    layout.hier_file("s1").write_bytes(b"half written")  # an unfinished output is rebuilt
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    assert "1 done, 3 skipped" in capsys.readouterr().out
    assert run_cli(create_cli.main, _flags(tmp_path, "--overwrite", "--max-patches", "4")) == 0
    assert (
        "0 done, 0 skipped (up to date), 4 rebuilt (built with other settings: 4)" in capsys.readouterr().out
    )
    with h5py.File(layout.hier_file("s0"), "r") as f:
        assert f["features"].shape == (2, 4, 8)
    assert snapshot(layout.low_dir) | snapshot(layout.high_dir) == inputs


def test_failing_slide_is_reported_and_others_continue(tmp_path, capsys):
    layout = _make_root(tmp_path)
    layout.high_file("s1").unlink()
    write_patch_file(layout.high_file("s2"), np.full((2, 8), np.nan, np.float32), np.zeros((2, 2), int))
    assert run_cli(create_cli.main, _flags(tmp_path, "--workers", "2")) == 1
    captured = capsys.readouterr()
    assert "2 done, 0 skipped" in captured.out and "2 failed" in captured.out
    assert "failed s1: missing 20x feature file" in captured.err
    assert "failed s2:" in captured.err and "NaN or Inf" in captured.err
    assert layout.hier_file("s0").is_file() and not layout.hier_file("s1").exists()


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
    assert run_cli(create_cli.main, _flags(tmp_path / "nowhere")) == 2
    assert "5x feature folder not found" in capsys.readouterr().err
    _make_root(tmp_path)
    assert run_cli(create_cli.main, _flags(tmp_path, "--level0-mag", "30")) == 2
    assert "--level0-mag must be 20 or 40" in capsys.readouterr().err
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("slide_id\ns0\n")
    flags = _flags(tmp_path)
    flags[flags.index("--csv") + 1] = str(bad_csv)
    assert run_cli(create_cli.main, flags) == 2
    assert "missing column(s) level0_mag" in capsys.readouterr().err


def _h5_content(path: Path) -> dict:
    """Every dataset (as bytes + dtype + shape) and every attribute of an HDF5 file."""
    content = {}
    with h5py.File(path, "r") as f:
        content["attrs"] = {k: np.asarray(v).tolist() for k, v in f.attrs.items()}
        for key in f:
            data = f[key][()]
            content[key] = (str(data.dtype), data.shape, data.tobytes())
    return content


def test_both_magnification_forms_give_identical_outputs(tmp_path, capsys):
    """``--low-mag 5x --high-mag 20x`` and ``--low-mag 5 --high-mag 20`` (and 5.0/20.0) write the same files."""
    outputs = {}
    for name, low, high in (("x_form", "5x", "20x"), ("plain", "5", "20"), ("decimal", "5.0", "20.0")):
        root = tmp_path / name
        layout = _make_root(root)
        mags = ["--low-mag", low, "--high-mag", high]
        assert run_cli(create_cli.main, [*_flags(root), *mags, "--max-patches", "16"]) == 0
        created = capsys.readouterr().out
        assert run_cli(checker_cli.main, [*_flags(root), *mags]) == 0
        checked = capsys.readouterr().out
        assert layout.hier_dir.name == "hierarchical_plip_5x_20x"
        assert sorted(p.name for p in layout.root.iterdir()) == [
            "hierarchical_plip_5x_20x",
            "plip_20x",
            "plip_5x",
        ]
        files = sorted(layout.hier_dir.glob("*.h5"))
        assert [p.stem for p in files] == ["s0", "s1", "s2", "s_20"]
        outputs[name] = (
            {p.name: (_h5_content(p), p.read_bytes()) for p in files},
            created.replace(str(root), "ROOT"),
            checked.replace(str(root), "ROOT"),
        )
    assert outputs["plain"] == outputs["x_form"]
    assert outputs["decimal"] == outputs["x_form"]
    attrs = outputs["plain"][0]["s0.h5"][0]["attrs"]
    assert attrs["low_mag"] == 5.0 and attrs["high_mag"] == 20.0


def test_feature_layout_folder_names_use_the_x_form(tmp_path):
    for low, high in (("5x", "20x"), ("5", "20"), ("5.0", "20.0"), (5, 20), (5.0, 20.0)):
        layout = FeatureLayout(tmp_path, "toy", "plip", low_mag=low, high_mag=high)
        assert (layout.low_dir.name, layout.high_dir.name) == ("plip_5x", "plip_20x")
        assert layout.hier_dir.name == "hierarchical_plip_5x_20x"
    assert FeatureLayout(tmp_path, "t", "e", "2.5", "10X").hier_dir.name == "hierarchical_e_2.5x_10x"


@pytest.mark.parametrize("cli", [create_cli, checker_cli], ids=["create", "check"])
@pytest.mark.parametrize(
    "low, high, message",
    [
        ("5y", "20x", "--low-mag '5y': not a magnification"),
        ("5x", "twenty", "--high-mag 'twenty': not a magnification"),
        ("0", "20", "--low-mag '0': not a magnification"),
        ("-5", "20", "--low-mag '-5': not a magnification"),
        ("20", "5", "--high-mag 5 must be larger than --low-mag 20"),
        ("5x", "5", "--high-mag 5 must be larger than --low-mag 5x"),
    ],
)
def test_bad_magnifications_are_one_line_errors(tmp_path, capsys, cli, low, high, message):
    _make_root(tmp_path, n_slides=1)
    before = snapshot(tmp_path)
    assert run_cli(cli.main, [*_flags(tmp_path), "--low-mag", low, "--high-mag", high]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err and captured.out == ""
    assert snapshot(tmp_path) == before


def test_help_shows_both_magnification_forms():
    result = subprocess.run(
        [sys.executable, str(PROJECT / "create_hierarchical_features.py"), "--help"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert "5x or 5" in result.stdout and "20x or 20" in result.stdout


# --------------------------------------------------------------------------------------------- checker


def _plant(layout: FeatureLayout) -> dict[str, str]:
    """Damage one slide per problem; return {slide: text expected in its report}."""
    hier = layout.hier_file
    with h5py.File(hier("s1"), "r") as f:
        feats = f["features"][()]
        coords = f["coords"][()]
    feats[0, 0] += 1
    edit_h5(hier("s1"), "features", feats)
    coords_out = coords.copy()
    coords_out[0, 1] = [5000, 5000]
    edit_h5(hier("s2"), "coords", coords_out)
    with h5py.File(layout.high_file("s3"), "r") as f:
        feats3 = f["features"][()]
    feats3[4, 2] = np.nan
    edit_h5(layout.high_file("s3"), "features", feats3)
    c5 = np.array([[0, 0], [0, 0], [0, 2048]])
    edit_h5(layout.low_file("s4"), "coords", c5)
    hier("s5").unlink()
    write_published_hier(hier("s5"), feats, coords)  # published layout, 2 rows for 3 5x patches
    edit_h5(hier("s6"), "parent_index", np.array([0, 7]))
    with h5py.File(hier("s7"), "r") as f:
        mask = f["child_mask"][()]
    mask[1, 15] = False
    edit_h5(hier("s7"), "child_mask", mask)
    with h5py.File(hier("s7"), "r") as f:
        feats7 = f["features"][()]
        coords7 = f["coords"][()]
    feats7[1, 15] = 0
    coords7[1, 15] = 0
    edit_h5(hier("s7"), "features", feats7)
    edit_h5(hier("s7"), "coords", coords7)
    hier("s8").unlink()
    return {
        "s1": "1 children whose features differ from the 20x file",
        "s2": "1 children outside their parent's 5x square",
        "s3": "1 20x feature rows contain NaN or Inf",
        "s4": "1 duplicate 5x coordinates",
        "s5": "published-format file has 2 rows for 3 5x patches",
        "s6": "'parent_index' out of range",
        "s7": "1 5x patches have fewer children than the 20x file provides",
        "s8": "missing hierarchical feature file",
    }


def test_checker_finds_each_planted_problem_and_fix_keeps_originals(tmp_path, capsys):
    layout = _make_root(tmp_path, n_slides=9)
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    assert run_cli(checker_cli.main, _flags(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "10 checked, 10 ok, 0 with problems" in out
    assert "9 5x patches without children" in out  # a note, not a problem

    expected = _plant(layout)
    before = snapshot(layout.root)
    assert run_cli(checker_cli.main, _flags(tmp_path)) == 1
    out = capsys.readouterr().out
    lines = {
        line.split()[1].rstrip(":"): line for line in out.splitlines() if line.startswith(("OK", "PROBLEM"))
    }
    for slide, text in expected.items():
        assert lines[slide].startswith("PROBLEM") and text in lines[slide], lines[slide]
    assert lines["s0"].startswith("OK") and lines["s_20"].startswith("OK")
    assert "8 with problems" in out
    assert snapshot(layout.root) == before  # checking never modifies anything

    assert run_cli(checker_cli.main, _flags(tmp_path, "--fix")) == 1  # s3 and s4 cannot be fixed
    out = capsys.readouterr().out
    fixed = layout.hier_dir.with_name(layout.hier_dir.name + "_fixed")
    after = {k: v for k, v in snapshot(layout.root).items() if not k.startswith(fixed.name)}
    assert after == before  # originals kept
    assert sorted(p.stem for p in fixed.glob("*.h5")) == ["s1", "s2", "s5", "s6", "s7", "s8"]
    assert "not fixable" in out and "s3" in out and "s4" in out
    for slide in ("s1", "s5", "s7"):
        shutil.copyfile(fixed / f"{slide}.h5", layout.hier_file(slide))
        assert check_slide(layout, slide, 40).ok


def test_checker_level0_mag_disagreement(tmp_path, capsys):
    layout = _make_root(tmp_path, n_slides=1)
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    report = check_slide(layout, "s0", 20)
    assert any("level0_mag attribute 40 but 20 expected" in p for p in report.problems)


# ------------------------------------------------------------------------------ linking rules (all | nearest)


def _make_overlapping_root(root: Path) -> FeatureLayout:
    """Slide 'ov': 5x tiles of 2048 px at step 1024 (2 x 2, overlapping) over a 512-px grid of 36 20x tiles."""
    layout = FeatureLayout(root, "toy", "plip")
    coords5 = np.array([[0, 0], [1024, 0], [0, 1024], [1024, 1024]])
    coords20 = np.array([[x, y] for y in range(0, 3072, 512) for x in range(0, 3072, 512)])
    write_slide(layout, "ov", coords5, coords20, seed=4)
    pd.DataFrame([("c", "ov", "A", 40)], columns=["case_id", "slide_id", "label", "level0_mag"]).to_csv(
        root / "toy.csv", index=False
    )
    return layout


def _rows_by_parent(path: Path) -> dict[int, list[list[int]]]:
    with h5py.File(path, "r") as f:
        parents, mask, coords = f["parent_index"][()], f["child_mask"][()], f["coords"][()]
    return {int(p): sorted(coords[i][mask[i]].tolist()) for i, p in enumerate(parents)}


def test_link_rules_on_overlapping_tiles_create_check_and_load(tmp_path, capsys):
    layouts = {}
    for rule in ("all", "nearest"):
        root = tmp_path / rule
        layout = layouts[rule] = _make_overlapping_root(root)
        extra = [] if rule == "all" else ["--link-rule", "nearest"]
        assert run_cli(create_cli.main, [*_flags(root), *extra]) == 0
        out = capsys.readouterr().out
        with h5py.File(layout.hier_file("ov"), "r") as f:
            assert f.attrs["link_rule"] == rule
        assert run_cli(checker_cli.main, _flags(root)) == 0, capsys.readouterr().out
        checked = capsys.readouterr().out
        assert "1 checked, 1 ok" in checked and f"link_rule={rule}" in checked
        bag = read_slide_bag(layout, "ov")
        if rule == "all":
            # Every 2048-px tile contains a 4 x 4 block of 512-px corners: 64 links over 36 distinct 20x tiles.
            assert "36 20x linked (64 links: overlapping 5x patches share children)" in out
            np.testing.assert_array_equal(bag.child_mask.sum(1).numpy(), [16, 16, 16, 16])
        else:
            assert "36 20x linked, 0 20x without parent" in out
            assert bag.child_mask.sum().item() == 36
    rows_all = _rows_by_parent(layouts["all"].hier_file("ov"))
    rows_nearest = _rows_by_parent(layouts["nearest"].hier_file("ov"))
    # By hand: tile #3 at (1024, 1024) holds corners x, y in {1024, 1536, 2048, 2560} under 'all' ...
    assert rows_all[3] == sorted([x, y] for x in (1024, 1536, 2048, 2560) for y in (1024, 1536, 2048, 2560))
    # ... and under 'nearest' only those nearer to it than to any other tile (ties: lowest index).
    assert rows_nearest[0] == sorted([x, y] for x in (0, 512) for y in (0, 512))
    assert rows_nearest[3] == sorted(
        [x, y] for x in (1024, 1536, 2048, 2560) for y in (1024, 1536, 2048, 2560)
    )
    assert sum(len(v) for v in rows_nearest.values()) == 36


def test_checker_applies_the_files_rule(tmp_path, capsys):
    layout = _make_overlapping_root(tmp_path)
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    capsys.readouterr()
    path = layout.hier_file("ov")
    # The same rows labelled 'nearest': children under two parents are now a problem.
    with h5py.File(path, "a") as f:
        f.attrs["link_rule"] = "nearest"
    report = check_slide(layout, "ov", 40)
    assert not report.ok and any("20x patches appear more than once" in p for p in report.problems)
    # A child listed twice under the same parent is a problem under 'all' too.
    with h5py.File(path, "a") as f:
        f.attrs["link_rule"] = "all"
        feats, coords = f["features"][()], f["coords"][()]
    feats[0, 1], coords[0, 1] = feats[0, 0], coords[0, 0]
    edit_h5(path, "features", feats)
    edit_h5(path, "coords", coords)
    report = check_slide(layout, "ov", 40)
    assert any("1 20x patches appear more than once under the same 5x patch" in p for p in report.problems)
    # --fix rebuilds with the file's rule into the _fixed folder.
    assert run_cli(checker_cli.main, _flags(tmp_path, "--fix")) == 0
    fixed = layout.hier_dir.with_name(layout.hier_dir.name + "_fixed") / "ov.h5"
    with h5py.File(fixed, "r") as f:
        assert f.attrs["link_rule"] == "all" and f["child_mask"][()].sum() == 64
    with h5py.File(path, "a") as f:
        f.attrs["link_rule"] = "closest"
    assert any("unknown link_rule attribute 'closest'" in p for p in check_slide(layout, "ov", 40).problems)


def test_checker_reads_published_overlapping_files_with_the_released_rule(tmp_path):
    """A published file (no attributes) made by the released script from overlapping tiles is sound."""
    layout = _make_overlapping_root(tmp_path)
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    with h5py.File(layout.hier_file("ov"), "r") as f:
        feats, coords = f["features"][()], f["coords"][()]
    layout.hier_file("ov").unlink()
    write_published_hier(layout.hier_file("ov"), feats, coords)  # 4 rows for 4 5x patches
    report = check_slide(layout, "ov", 40)
    assert report.ok and report.link_rule == "all", report.line()
    assert read_slide_bag(layout, "ov").child_mask.sum().item() == 64


def test_link_rules_write_the_same_rows_without_overlap(tmp_path, capsys):
    contents = {}
    for rule in ("all", "nearest"):
        root = tmp_path / rule
        layout = _make_root(root)
        assert run_cli(create_cli.main, [*_flags(root), "--link-rule", rule]) == 0
        assert run_cli(checker_cli.main, _flags(root)) == 0
        contents[rule] = {p.name: _h5_content(p) for p in sorted(layout.hier_dir.glob("*.h5"))}
    capsys.readouterr()
    assert contents["all"].keys() == contents["nearest"].keys()
    for name, content in contents["all"].items():
        other = contents["nearest"][name]
        assert content["attrs"].pop("link_rule") == "all" and other["attrs"].pop("link_rule") == "nearest"
        assert content == other


def test_bad_link_rule_is_refused(tmp_path, capsys):
    _make_root(tmp_path, n_slides=1)
    with pytest.raises(SystemExit) as exit_:
        create_cli.main([*_flags(tmp_path), "--link-rule", "closest"])
    assert exit_.value.code == 2
    assert "invalid choice: 'closest'" in capsys.readouterr().err
    assert not (tmp_path / "toy_plip" / "hierarchical_plip_5x_20x").exists()


def test_checker_far_edge_of_a_parent_is_outside(tmp_path):
    """The checker's square is half-open too: a child at parent + size - 1 is fine, at parent + size is not."""
    layout = FeatureLayout(tmp_path, "toy", "plip")
    coords5 = np.array([[0, 0], [2048, 0]])
    coords20 = np.array([[1536, 0], [2047, 0], [2048, 0], [2048, 2047]])
    write_slide(layout, "edge", coords5, coords20)
    pd.DataFrame([("c", "edge", "A", 40)], columns=["case_id", "slide_id", "label", "level0_mag"]).to_csv(
        tmp_path / "toy.csv", index=False
    )
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    assert check_slide(layout, "edge", 40).ok
    with h5py.File(layout.hier_file("edge"), "r") as f:
        feats, coords, mask = f["features"][()], f["coords"][()], f["child_mask"][()]
    with h5py.File(layout.high_file("edge"), "r") as f:
        x20 = f["features"][()]
    mask[0, 2] = True
    edit_h5(layout.hier_file("edge"), "child_mask", mask)
    for moved in (2, 3):  # (2048, 0): on #0's right edge; (2048, 2047): also one past it in x
        edited_feats, edited_coords = feats.copy(), coords.copy()
        edited_feats[0, 2], edited_coords[0, 2] = x20[moved], coords20[moved]  # listed under #0 as well
        edit_h5(layout.hier_file("edge"), "features", edited_feats)
        edit_h5(layout.hier_file("edge"), "coords", edited_coords)
        report = check_slide(layout, "edge", 40)
        assert any("1 children outside their parent's 5x square" in p for p in report.problems), report.line()


# ---------------------------------------------------------------------------------------- other CLIs


def test_create_splits_cli(tmp_path, capsys):
    rows = [(f"p{i}", f"sl{i}", label, 40) for i, label in enumerate(["CCRCC", "CHRCC", "PRCC"] * 6)]
    csv = tmp_path / "rcc.csv"
    pd.DataFrame(rows, columns=["case_id", "slide_id", "label", "level0_mag"]).to_csv(csv, index=False)
    flags = ["--task", "tcga_rcc", "--csv", str(csv), "--few_shot_num", "2", "--k", "3", "--seed", "4"]
    flags += ["--val_frac", "0.5", "--test_frac", "0.5", "--splits_root", str(tmp_path / "splits")]
    assert run_cli(splits_cli.main, flags) == 0
    files = sorted((tmp_path / "splits" / "tcga_rcc" / "tcga_rcc_2").glob("splits_*.csv"))
    assert [p.name for p in files] == ["splits_0.csv", "splits_1.csv", "splits_2.csv"]
    assert len(read_split(files[0]).train) == 6
    before = snapshot(tmp_path / "splits")
    assert run_cli(splits_cli.main, flags) == 2
    err = capsys.readouterr().err
    assert "splits_0.csv already exists (3 of 3 files); use --overwrite" in err
    assert snapshot(tmp_path / "splits") == before
    assert run_cli(splits_cli.main, [*flags, "--overwrite"]) == 0
    assert snapshot(tmp_path / "splits") == before  # same seed, same content

    bad = tmp_path / "bad.csv"
    bad.write_text("case_id,slide_id,label,level0_mag\np,s,LUAD,40\n")
    assert run_cli(splits_cli.main, ["--task", "tcga_rcc", "--csv", str(bad), "--few_shot_num", "1"]) == 2
    assert "labels not in task 'tcga_rcc': LUAD" in capsys.readouterr().err


def test_make_demo_data_script(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_demo_data", PROJECT / "scripts" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert run_cli(module.main, ["--root", str(tmp_path / "demo"), "--seed", "3"]) == 0
    assert "demo data in" in capsys.readouterr().out
    assert (tmp_path / "demo" / "DEMO_VERSION.json").is_file()


def test_script_runs_as_a_program(tmp_path):
    """``python create_hierarchical_features.py`` works from any folder and exits 2 on bad input."""
    result = subprocess.run(
        [sys.executable, str(PROJECT / "create_hierarchical_features.py"), *_flags(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: 5x feature folder not found") and result.stderr.count("\n") == 1


def test_checker_accepts_aligned_published_format(tmp_path):
    layout = _make_root(tmp_path, n_slides=0)
    assert run_cli(create_cli.main, _flags(tmp_path)) == 0
    with h5py.File(layout.hier_file("s_20"), "r") as f:
        feats, coords = f["features"][()], f["coords"][()]
    layout.hier_file("s_20").unlink()
    write_published_hier(layout.hier_file("s_20"), feats, coords)  # 2 rows for 2 5x patches
    report = check_slide(layout, "s_20", 20)
    assert report.ok and report.notes["format"] == "published", report.line()
    assert read_slide_bag(layout, "s_20").child_mask.sum().item() == 3
