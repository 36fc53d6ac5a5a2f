"""main.py: flags and defaults of the published command, --task demo defaults, one-line input errors."""

from __future__ import annotations

import types
from dataclasses import fields
from pathlib import Path

import pytest

import main as main_module
from tests.toy_task import CLASSES, TASK, make_toy_data
from training.config import RunConfig, build_parser, parse_config, validate_config
from utils.errors import run_cli
from utils.flags import flag_keys

PUBLISHED = (
    "--seed 1 --drop_out --early_stopping --lr 1e-4 --k 5 --few_shot_num 16 --feature_extractor plip "
    "--feature_dim 512 --bag_loss ce --task tcga_brca --results_dir RESULTS --model_type HiVE_MIL --data_root_dir R"
).split()


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = run_cli(main_module.main, argv)
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------- parsing
def test_published_command_parses_unchanged():
    config = parse_config([*PUBLISHED, "--text_tower", "/models/plip"])
    assert (config.seed, config.drop_out, config.early_stopping, config.lr, config.k) == (
        1,
        True,
        True,
        1e-4,
        5,
    )
    assert (config.few_shot_num, config.feature_extractor, config.feature_dim) == (16, "plip", 512)
    assert (config.bag_loss, config.task, config.model_type, config.data_root_dir) == (
        "ce",
        "tcga_brca",
        "HiVE_MIL",
        "R",
    )
    assert config.text_tower == "/models/plip"
    run_dir = Path("RESULTS") / "tcga_brca" / "plip" / "16" / "tcga_brca_plip_HiVE_MIL_16_s1"
    assert config.run_dir == run_dir


def test_published_defaults():
    config = parse_config(["--task", "tcga_rcc"])
    expected = {
        "max_epochs": 50, "lr": 1e-4, "feature_extractor": "plip", "feature_dim": 512, "few_shot_num": 16,
        "high_mag": "20x", "low_mag": "5x", "label_frac": 1.0, "seed": 1, "k": 5, "k_start": -1, "k_end": -1,
        "results_dir": "./results", "log_data": False, "testing": False, "early_stopping": False, "opt": "adam",
        "drop_out": False, "model_type": "HiVE_MIL", "mode": "transformer", "weighted_sample": False, "reg": 1e-5,
        "bag_loss": "ce", "text_prompt": None, "prototype_number": None, "device": "auto", "LLM": None,
        "num_context_tokens": 16, "class_specific_token": False, "class_token_position": "end",
        "num_low_mag_texts": 4, "num_high_mag_subtexts": 3, "filter_alpha": 0.5, "contrastive_lambda": 0.5,
        "variant": "reference", "patience": 10, "cache_mb": 2048.0, "splits_root": "splits",
        "csv_dir": "dataset_csv", "prompt_dir": "text_prompt", "skip_missing": False, "text_tower": None,
    }  # fmt: skip
    assert {name: config.to_dict()[name] for name in expected} == expected
    # --LLM unset resolves at run start: the released gpt4o folder when it has the task, else curated
    from training.experiment import resolve_prompts

    assert resolve_prompts(config).LLM == "curated"
    assert config.fold_range == range(0, 5)


def test_hyphenated_published_flags_and_switches():
    config = parse_config(
        "--task tcga_nsclc --num-context-tokens 4 --class-specific-token --class-token-position middle "
        "--num-low-mag-texts 2 --num-high-mag-subtexts 5 --filter-alpha 0.1 --contrastive_lambda 0.2 "
        "--variant corrected --hier-attention dense --skip-missing --feature_extractor ViT-B-16 --k_start 1 --k_end 3".split()
    )
    hive = config.hivemil
    assert (hive.n_ctx, hive.class_specific_context, hive.class_token_position) == (4, True, "middle")
    assert (hive.num_low_mag_texts, hive.num_high_mag_subtexts, hive.filter_alpha) == (2, 5, 0.1)
    assert hive.contrastive_lambda == 0.2 and config.skip_missing and config.feature_extractor == "ViT-B-16"
    switches = config.switches()
    assert switches.hier_attention == "dense" and switches.text_encoding == "causal"
    assert config.fold_range == range(1, 3)


def test_parser_dests_are_config_fields():
    """Every flag is declared once, on a RunConfig field or a field of its nested options: the parser's
    dests are exactly the flag keys, i.e. the keys of config.json."""
    config = parse_config(["--task", "tcga_brca"])
    dests = [a.dest for a in build_parser()._actions if a.dest != "help"]
    assert sorted(dests) == sorted(flag_keys(RunConfig)) == sorted(config.to_dict())
    own = {f.name for f in fields(RunConfig) if "flags" in f.metadata}
    assert {f.name for f in fields(RunConfig)} - own == {"hivemil", "hila"}
    assert config.hivemil.max_children == 0 and config.hivemil.attention_chunk == 0
    with pytest.raises(AttributeError):
        _ = config.no_such_option


def test_a_flag_declared_on_a_field_reaches_the_parser():
    import argparse
    from dataclasses import dataclass

    from utils.flags import add_flags, flag, given_values

    @dataclass
    class Knobs:
        new_knob: int = flag("--new-knob", default=3, help="a knob")
        switch: bool = flag("--switch", default=False, help="on/off")

    parser = argparse.ArgumentParser()
    add_flags(parser, Knobs)
    given = given_values(parser.parse_args(["--new-knob", "7"]))
    assert given == {"new_knob": 7} and Knobs(**given) == Knobs(new_knob=7)
    assert Knobs(**given_values(parser.parse_args(["--switch"]))).switch is True
    assert "(default: 3)" in parser.format_help()


def test_config_json_round_trip():
    config = parse_config(PUBLISHED)
    again = RunConfig.from_dict(__import__("json").loads(config.to_json()))
    assert again == config


def test_demo_task_takes_paths_from_demo_data(monkeypatch, tmp_path):
    """The CLI expands --task demo into ordinary paths and settings; explicit flags win."""
    import preprocess.demo as demo_module
    from datasets.tasks import TaskSpec

    calls = []

    def ensure_demo_data(root=None, seed=0):
        calls.append(root)
        task = TaskSpec("demo", ("a", "b"), tmp_path / "dataset_csv" / "demo.csv", tmp_path / "text_prompt")
        return types.SimpleNamespace(
            root=tmp_path, data_root_dir=tmp_path / "features", task=task, feature_extractor="demo",
            feature_dim=64, splits_root=tmp_path / "splits", few_shot_num=4, num_folds=3,
        )  # fmt: skip

    monkeypatch.setattr(demo_module, "ensure_demo_data", ensure_demo_data)
    monkeypatch.setattr(demo_module, "ensure_demo_text_tower", lambda: tmp_path / "tower")
    config = parse_config(["--task", "demo"], task_defaults=demo_module.task_defaults)
    assert calls == [None]
    assert config.data_root_dir == str(tmp_path / "features") and config.splits_root == str(
        tmp_path / "splits"
    )
    assert (config.feature_extractor, config.feature_dim, config.k, config.few_shot_num) == ("demo", 64, 3, 4)
    assert (config.csv_dir, config.prompt_dir) == (
        str(tmp_path / "dataset_csv"),
        str(tmp_path / "text_prompt"),
    )
    assert config.text_tower == str(tmp_path / "tower") and (config.lr, config.max_epochs) == (1e-3, 10)
    explicit = parse_config(["--task", "demo", "--k", "1", "--feature_dim", "32"], demo_module.task_defaults)
    assert (explicit.k, explicit.feature_dim, explicit.feature_extractor) == (1, 32, "demo")
    assert parse_config(["--task", "demo"]).data_root_dir is None  # no expansion below the CLI


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--task is required"),
        (["--task", "tcga_brca"], "--data_root_dir is required"),
        (
            ["--task", "tcga_brca", "--data_root_dir", "R", "--k", "3", "--k_start", "2", "--k_end", "5"],
            "select no valid folds",
        ),
        (["--task", "tcga_brca", "--data_root_dir", "R", "--label_frac", "0"], "--label_frac"),
        (["--task", "tcga_brca", "--data_root_dir", "R", "--device", "tpu:9"], "--device"),
    ],
)
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    code, err = _cli(argv, capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_validate_accepts_published_command():
    validate_config(parse_config([*PUBLISHED, "--device", "cpu"]))


# ------------------------------------------------------------------------------------- input errors
@pytest.fixture
def toy(tmp_path):
    data = make_toy_data(tmp_path / "in", k=2)
    data["argv"] = [*data["argv"], "--results_dir", str(tmp_path / "results")]
    data["before"] = _tree_bytes(tmp_path / "in")
    data["results"] = tmp_path / "results"
    return data


def _assert_untouched(toy):
    assert _tree_bytes(toy["root"]) == toy["before"]
    assert not toy["results"].exists()  # nothing written before the inputs were checked


def test_missing_split_folder(toy, capsys):
    code, err = _cli([*toy["argv"], "--few_shot_num", "7"], capsys)
    assert code == 2 and "split folder not found" in err and f"{TASK}_7" in err and "create_splits.py" in err
    _assert_untouched(toy)


def test_split_with_slides_not_in_csv(toy, capsys):
    from datasets.splits import Split, split_csv_path, write_split

    path = split_csv_path(toy["root"] / "splits", TASK, 2, 1)
    write_split(
        path,
        Split(train=["slide_00", *[f"ghost_{i}" for i in range(7)]], val=["slide_01"], test=["slide_02"]),
    )
    toy["before"] = _tree_bytes(toy["root"])
    code, err = _cli(toy["argv"], capsys)
    assert (
        code == 2
        and "7 slide(s) not in" in err
        and "ghost_0, ghost_1, ghost_2, ghost_3, ghost_4 (+2 more)" in err
    )
    _assert_untouched(toy)


def test_missing_features_error_and_skip(toy, capsys):
    gone = toy["layout"].hier_file("slide_03")
    gone.unlink()
    toy["before"] = _tree_bytes(toy["root"])
    code, err = _cli(toy["argv"], capsys)
    assert code == 2 and "features missing for 1 of" in err and "slide_03" in err and "--skip-missing" in err
    _assert_untouched(toy)
    code, err = _cli([*toy["argv"], "--skip-missing", "--max_epochs", "1"], capsys)
    assert code == 0 and "dropping 1 slide(s) without features" in err and "slide_03" in err
    assert _tree_bytes(toy["root"]) == toy["before"]


def test_missing_feature_folder(toy, capsys):
    code, err = _cli([*toy["argv"], "--data_root_dir", str(toy["root"] / "nowhere")], capsys)
    assert code == 2 and "feature folder not found" in err and "nowhere" in err
    _assert_untouched(toy)


def test_wrong_feature_dim(toy, capsys):
    code, err = _cli([*toy["argv"], "--feature_dim", "512"], capsys)
    assert code == 2 and "--feature_dim 512 does not match" in err and "dimension 8" in err
    _assert_untouched(toy)


def test_unknown_model_and_task(toy, capsys):
    code, err = _cli([*toy["argv"], "--model_type", "NoSuchMIL"], capsys)
    assert code == 2 and "--model_type 'NoSuchMIL' is not known" in err
    code, err = _cli([*toy["argv"], "--task", "no_such_task"], capsys)
    assert code == 2 and "unknown task 'no_such_task'" in err
    _assert_untouched(toy)


def test_cli_run_succeeds(toy, capsys):
    code, _ = _cli([*toy["argv"], "--max_epochs", "2", "--weighted_sample", "--bag_loss", "svm"], capsys)
    assert code == 0
    run_dir = next(toy["results"].rglob("results.csv")).parent
    assert (run_dir / "fold_1" / "predictions_val.csv").is_file()
    assert f"prob_{CLASSES[1]}" in (run_dir / "fold_1" / "predictions_val.csv").read_text()


def test_model_option_defaults_are_written_once():
    """RunConfig's model options are the option dataclasses themselves: their defaults, by construction."""
    from dataclasses import replace

    from models.hila.options import HiLaOptions
    from models.hivemil.options import HiveMILOptions, VariantSwitches
    from utils.flags import flag_values
    from utils.magnification import magnification_value

    config = parse_config(["--task", "tcga_rcc"])
    assert config.hivemil == HiveMILOptions() and config.hila == HiLaOptions()
    spec_options = config.hivemil_options()
    assert spec_options == replace(HiveMILOptions(), switches=VariantSwitches.for_variant("reference"))
    assert magnification_value(config.high_mag) == HiveMILOptions().high_mag
    assert magnification_value(config.low_mag) == HiveMILOptions().low_mag
    # the flat config keys of the nested flags carry the option defaults
    flat = config.to_dict()
    for key, value in {**flag_values(HiveMILOptions()), **flag_values(HiLaOptions())}.items():
        assert flat[key] == value, key
    assert flat["num_context_tokens"] == HiveMILOptions().n_ctx


def test_nested_option_flags_recurse_with_flat_keys():
    import argparse
    from dataclasses import dataclass, field

    from utils.flags import add_flags, flag, given_values, resumable_keys, with_flag_values

    @dataclass(frozen=True)
    class Inner:
        width: int = flag("--width", dest="inner_width", default=3, help="w")
        fixed: int = 9  # not a flag: kept through replacement

    @dataclass
    class Outer:
        name: str = flag("--name", default="a", resumable=True, help="n")
        inner: Inner = field(default_factory=Inner)

    parser = argparse.ArgumentParser()
    add_flags(parser, Outer)
    given = given_values(parser.parse_args(["--width", "5"]))
    assert given == {"inner_width": 5}
    built = with_flag_values(Outer(), given)
    assert built == Outer(inner=Inner(width=5)) and built.inner.fixed == 9
    assert resumable_keys(Outer) == {"name"}
    with pytest.raises(TypeError, match="no flags"):
        with_flag_values(Outer(), {"width": 5})  # the key, not the field name

    @dataclass
    class Clash:
        inner_width: int = flag("--iw", default=1, help="x")
        inner: Inner = field(default_factory=Inner)

    with pytest.raises(ValueError, match="declared twice"):
        add_flags(argparse.ArgumentParser(), Clash)
