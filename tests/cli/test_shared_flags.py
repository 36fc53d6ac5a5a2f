"""Every CLI spells a shared setting (tower weights, data root, device, amp, threads, tiling) the same way:
the option strings come from the one declaration of its flag group."""

from __future__ import annotations

import argparse

import pytest

import explain
import extract_features
import predict
from preprocess.wsi.options import TileFlags
from training.config import RunConfig
from training.config import build_parser as main_parser
from utils.cli_flags import AmpFlags, DataRootFlags, DeviceFlags, ThreadFlags, TowerFlags
from utils.errors import InputError
from utils.flags import all_flag_fields, flag_key, read_flags

GROUPS = (TowerFlags, DataRootFlags, DeviceFlags, AmpFlags, ThreadFlags, TileFlags)
# older spellings a CLI still accepts (README: "Renamed flags")
ALIASES = {"extract_features.py": {"data_root_dir": ("--data-root",), "text_tower": ("--weights",)}}
PARSERS = {
    "main.py": main_parser,
    "predict.py": predict.build_parser,
    "explain.py": explain.build_parser,
    "extract_features.py": extract_features.build_parser,
}


def _options(parser: argparse.ArgumentParser) -> dict[str, tuple[str, ...]]:
    return {a.dest: tuple(a.option_strings) for a in parser._actions if a.dest != "help"}


@pytest.mark.parametrize("cli", sorted(PARSERS))
def test_shared_groups_have_one_spelling(cli):
    options = _options(PARSERS[cli]())
    seen = 0
    for group in GROUPS:
        for f in all_flag_fields(group):
            key = flag_key(f)
            if key in options:
                seen += 1
                assert options[key] == f.metadata["flags"] + ALIASES.get(cli, {}).get(key, ()), (cli, key)
    assert seen >= 2, cli


def test_each_shared_setting_is_in_the_clis_that_have_it():
    have = {cli: set(_options(make())) for cli, make in PARSERS.items()}
    assert {"text_tower", "data_root_dir", "device", "amp", "threads"} <= have["main.py"]
    assert {"text_tower", "data_root_dir", "device", "amp", "level0_mag", "batch_size"} <= have[
        "extract_features.py"
    ]
    assert {"device", "threads", "level0_mag", "min_tissue", "batch_size", "workers"} <= have["predict.py"]
    assert {"device", "threads", "data_root_dir", "text_tower"} <= have["explain.py"]


def test_run_config_defaults_are_the_groups_defaults():
    config = RunConfig()
    for group in (TowerFlags, DataRootFlags, DeviceFlags, AmpFlags, ThreadFlags):
        for key, value in vars(group()).items():
            assert getattr(config, key) == value, key


def test_extract_features_accepts_the_new_and_the_old_spellings():
    base = ["--slides", "s", "--task", "t", "--feature-extractor", "plip"]
    new = extract_features.parse_args([*base, "--data_root_dir", "R", "--text_tower", "W", "--amp", "bf16"])
    old = extract_features.parse_args([*base, "--data-root", "R", "--weights", "W"])
    assert (new.data_root_dir, new.text_tower, new.amp) == ("R", "W", "bf16")
    assert (old.data_root_dir, old.text_tower, old.amp) == ("R", "W", "off")
    with pytest.raises(InputError, match="^--data_root_dir is required"):
        extract_features.validate_args(extract_features.parse_args(base))


def test_tile_flags_check_and_defaults():
    parser = argparse.ArgumentParser()
    from utils.flags import add_flags

    add_flags(parser, TileFlags)
    assert read_flags(TileFlags, parser.parse_args([])) == TileFlags()
    with pytest.raises(InputError, match="^--batch-size must be at least 1, got 0$"):
        read_flags(TileFlags, parser.parse_args(["--batch-size", "0"])).check()
    from preprocess.wsi.pipeline import ExtractOptions

    options = ExtractOptions(extractor="plip")
    assert (options.min_tissue, options.batch_size, options.workers, options.level0_mag) == (
        TileFlags.min_tissue, TileFlags.batch_size, TileFlags.workers, TileFlags.level0_mag,
    )  # fmt: skip
