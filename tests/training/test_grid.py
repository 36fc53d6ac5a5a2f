"""Experiment grids (training/grid.py): expansion from flags and TOML, pass-through flags, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import parse_config
from training.grid import Grid, expand_grid, main_flags_given, merge_grids, read_grid_file, validate_grid
from utils.errors import InputError

NO_AXES = {"tasks": None, "extractors": None, "shots": None, "models": None, "variants": None, "seeds": None}


def grid_of(folds=None, args=(), file_grid=None, **axes) -> Grid:
    return validate_grid(merge_grids(file_grid, {**NO_AXES, **axes}, folds, list(args)))


def test_cli_grid_expands_in_axis_order_with_passthrough_flags_last():
    grid = grid_of(
        tasks=["tcga_brca"],
        shots=["4", "16"],
        models=["HiVE_MIL", "ABMIL"],
        args=["--k", "2", "--lr", "1e-3"],
    )
    points = expand_grid(grid)
    assert [p.values for p in points] == [
        {"tasks": "tcga_brca", "shots": 4, "models": "HiVE_MIL"},
        {"tasks": "tcga_brca", "shots": 4, "models": "ABMIL"},
        {"tasks": "tcga_brca", "shots": 16, "models": "HiVE_MIL"},
        {"tasks": "tcga_brca", "shots": 16, "models": "ABMIL"},
    ]
    assert points[1].argv == [
        "--task",
        "tcga_brca",
        "--few_shot_num",
        "4",
        "--model_type",
        "ABMIL",
        "--k",
        "2",
        "--lr",
        "1e-3",
    ]
    assert points[1].label() == "task=tcga_brca few_shot_num=4 model_type=ABMIL"
    config = parse_config(points[2].argv)
    assert (config.task, config.few_shot_num, config.model_type, config.k, config.lr) == (
        "tcga_brca",
        16,
        "HiVE_MIL",
        2,
        1e-3,
    )


def test_variants_apply_to_hivemil_only_and_duplicates_collapse():
    grid = grid_of(
        models=["HiVE_MIL", "ABMIL", "ABMIL"], variants=["reference", "corrected"], seeds=["1", "2"]
    )
    labels = [p.label() for p in expand_grid(grid)]
    assert labels == [
        "model_type=HiVE_MIL variant=reference seed=1",
        "model_type=HiVE_MIL variant=reference seed=2",
        "model_type=HiVE_MIL variant=corrected seed=1",
        "model_type=HiVE_MIL variant=corrected seed=2",
        "model_type=ABMIL variant=reference seed=1",
        "model_type=ABMIL variant=reference seed=2",
    ]
    # without a models axis the main.py --model_type decides
    assert len(expand_grid(grid_of(variants=["reference", "corrected"], args=["--model_type", "ABMIL"]))) == 1
    assert len(expand_grid(grid_of(variants=["reference", "corrected"]))) == 2  # default model: HiVE_MIL


def test_folds_become_a_fold_range():
    (point,) = expand_grid(grid_of(tasks=["t"], folds=["3", "1", "2"]))
    assert point.argv == ["--task", "t", "--k_start", "1", "--k_end", "4"]
    (point,) = expand_grid(grid_of(folds=[0]))
    config = parse_config(point.argv)
    assert list(config.fold_range) == [0]


def test_toml_grid_and_command_line_override(tmp_path: Path):
    path = tmp_path / "grid.toml"
    path.write_text(
        'tasks = "tcga_rcc"\nmodels = ["HiVE_MIL", "TransMIL"]\nshots = [8]\nseeds = [1, 2]\nfolds = [0, 1]\n\n'
        '[args]\nk = 2\nearly_stopping = true\ndrop_out = false\nresults_dir = "OUT"\nlr = 0.001\n'
    )
    file_grid = read_grid_file(path)
    assert file_grid.args == ["--k", "2", "--early_stopping", "--results_dir", "OUT", "--lr", "0.001"]
    points = expand_grid(grid_of(file_grid=file_grid, seeds=["7"], args=["--lr", "1e-2"]))
    assert [p.values for p in points] == [
        {"tasks": "tcga_rcc", "shots": 8, "models": "HiVE_MIL", "seeds": 7},
        {"tasks": "tcga_rcc", "shots": 8, "models": "TransMIL", "seeds": 7},
    ]
    config = parse_config(points[1].argv)
    assert config.lr == 1e-2 and config.early_stopping and not config.drop_out and config.results_dir == "OUT"
    assert list(config.fold_range) == [0, 1] and config.seed == 7
    path.write_text('models = "ABMIL"\nargs = ["--max_epochs", "3"]\n')
    (point,) = expand_grid(grid_of(file_grid=read_grid_file(path)))
    assert point.argv == ["--model_type", "ABMIL", "--max_epochs", "3"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("tasks = [", "not valid TOML"),
        ("model = ['ABMIL']", "unknown key(s) model"),
        ("models = []", "models is an empty list"),
        ("[args]\nlr = [1, 2]", "use a string, number or boolean"),
        ("args = 3", "table of flags or a list of strings"),
    ],
)
def test_bad_grid_files_are_one_line(tmp_path: Path, text: str, message: str):
    path = tmp_path / "g.toml"
    path.write_text(text)
    with pytest.raises(
        InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ) as err:
        read_grid_file(path)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="file not found"):
        read_grid_file(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "axes, folds, args, message",
    [
        ({"shots": ["four"]}, None, [], "--shots value 'four' is not an integer"),
        ({"shots": ["0"]}, None, [], "--shots 0: must be >= 1"),
        ({"models": ["NoSuchMIL"]}, None, [], "--models NoSuchMIL not known"),
        ({"variants": ["fixed"]}, None, [], "--variants fixed: choose from reference, corrected"),
        ({"tasks": ["-x"]}, None, [], "must not start with '-'"),
        ({}, ["0", "2"], [], "not a contiguous range"),
        ({}, ["-1"], [], "fold indices >= 0"),
        ({}, None, ["--no_such_flag", "1"], "main.py does not know --no_such_flag 1"),
        ({}, None, ["--lr", "fast"], "main.py flags: argument --lr: invalid float value: 'fast'"),
        ({}, None, ["--opt", "lbfgs"], "invalid choice"),
        ({"models": ["ABMIL"]}, None, ["--model_type", "HiVE_MIL"], "--model_type is set by the grid"),
        ({}, ["0"], ["--k_end", "2"], "--k_start/--k_end are set by the grid"),
    ],
)
def test_bad_values_and_flags_are_one_line(axes, folds, args, message):
    with pytest.raises(InputError) as err:
        grid_of(folds=folds, args=args, **axes)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_main_flags_given_names_the_settings():
    assert main_flags_given(["--k", "2", "--drop_out", "--text-tower", "x"]) == {
        "k",
        "drop_out",
        "text_tower",
    }
    assert main_flags_given([]) == set()
