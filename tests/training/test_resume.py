"""Resume: a run killed after some folds continues from the finished folds and ends identical."""

from __future__ import annotations

import pytest

import training.experiment as training
from tests.toy_task import make_toy_data, toy_config
from utils.errors import InputError
from utils.run_logging import RunLog

ORIGINAL_RUN_FOLD = training.run_fold


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = make_toy_data(root / "in", k=3)
    reference = toy_config(data, root / "uninterrupted", early_stopping=True, stop_epoch=0, patience=1)
    training.run_experiment(reference, RunLog(quiet=True))
    data["reference"] = reference.run_dir
    data["tmp"] = root
    return data


def _count_run_fold(monkeypatch, fail_on: int | None = None) -> list[int]:
    trained = []
    original = ORIGINAL_RUN_FOLD

    def wrapped(run, fold, log, model=None):
        if fold == fail_on:
            raise RuntimeError("killed")
        trained.append(fold)
        return original(run, fold, log, model)

    monkeypatch.setattr(training, "run_fold", wrapped)
    return trained


def test_partial_then_full_run_matches_uninterrupted(toy, monkeypatch):
    trained = _count_run_fold(monkeypatch)
    results = toy["tmp"] / "partial"
    first = toy_config(toy, results, early_stopping=True, stop_epoch=0, patience=1, k_end=2)
    training.run_experiment(first, RunLog(quiet=True))
    assert (first.run_dir / "results_partial_0_1.csv").is_file() and not (
        first.run_dir / "results.csv"
    ).exists()
    full = toy_config(toy, results, early_stopping=True, stop_epoch=0, patience=1)
    training.run_experiment(full, RunLog(quiet=True))
    assert trained == [0, 1, 2]  # folds 0 and 1 were not trained twice
    for name in ("results.csv", "summary.csv"):
        assert (full.run_dir / name).read_bytes() == (toy["reference"] / name).read_bytes()
    assert "fold 1: finished in an earlier run with the same inputs" in (full.run_dir / "log.txt").read_text()


def test_crash_then_rerun_matches_uninterrupted(toy, monkeypatch):
    results = toy["tmp"] / "crashed"
    config = toy_config(toy, results, early_stopping=True, stop_epoch=0, patience=1)
    _count_run_fold(monkeypatch, fail_on=1)
    with pytest.raises(RuntimeError, match="killed"):
        training.run_experiment(config, RunLog(quiet=True))
    assert (config.run_dir / "fold_0" / "metrics.json").is_file() and not (config.run_dir / "fold_1").exists()
    trained = _count_run_fold(monkeypatch)
    training.run_experiment(config, RunLog(quiet=True))
    assert trained == [1, 2]
    for fold in range(3):
        for split in ("val", "test"):
            name = f"fold_{fold}/predictions_{split}.csv"
            assert (config.run_dir / name).read_bytes() == (toy["reference"] / name).read_bytes()
    assert (config.run_dir / "results.csv").read_bytes() == (toy["reference"] / "results.csv").read_bytes()


def test_changed_settings_need_new_dir_or_overwrite(toy, monkeypatch):
    results = toy["tmp"] / "changed"
    training.run_experiment(toy_config(toy, results, k_end=1, max_epochs=1), RunLog(quiet=True))
    changed = toy_config(toy, results, k_end=1, max_epochs=1, lr=0.5)
    with pytest.raises(InputError, match=r"different settings \(lr: 0.01 -> 0.5\).*--overwrite"):
        training.run_experiment(changed, RunLog(quiet=True))
    trained = _count_run_fold(monkeypatch)
    changed.overwrite = True
    training.run_experiment(changed, RunLog(quiet=True))
    assert trained == [0]


def test_old_flat_config_json_still_resumes(tmp_path):
    """A run folder written before the options were nested (flat config.json keys, e.g.
    ``num_context_tokens``, ``mcl_lambda``) resumes with the same flags and refuses changed ones."""
    import json
    import shutil

    from tests.paths import PROJECT
    from training.config import RunConfig, parse_config, with_values
    from training.results import CONFIG_FILE, check_resumable

    old = PROJECT / "tests" / "fixtures" / "old_run_config.json"
    stored = RunConfig.from_dict(json.loads(old.read_text())["config"])
    assert (stored.hivemil.n_ctx, stored.hila.mcl_lambda, stored.variant) == (8, 0.2, "corrected")
    argv = (
        "--task tcga_brca --data_root_dir /data --num-context-tokens 8 --mcl_lambda 0.2 --variant corrected "
        "--text-encoding released --k 3 --low_mag 5 --high_mag 20x"
    )
    # the run folder name is unchanged, and so is every key of config.json (flags added since then are
    # at their defaults, which is what an old folder's missing key means)
    config = parse_config([*argv.split(), "--results_dir", "/old/results"])
    assert (
        str(config.run_dir)
        == "/old/results/tcga_brca/plip/16/tcga_brca_plip_HiVE_MIL_16_s1_corrected_text-encoding-released"
    )
    written, old_keys = config.to_dict(), json.loads(old.read_text())["config"]
    assert {k: written[k] for k in old_keys} == old_keys
    defaults = RunConfig().to_dict()
    assert {k: v for k, v in written.items() if k not in old_keys} == {
        k: defaults[k] for k in written if k not in old_keys
    }
    # resumes from another --results_dir (resumable) but not with another --num-context-tokens
    shutil.copy(old, tmp_path / CONFIG_FILE)
    again = parse_config([*argv.split(), "--results_dir", str(tmp_path), "--threads", "2", "--quiet"])
    assert check_resumable(tmp_path, again)
    with pytest.raises(InputError, match=r"different settings \(num_context_tokens: 8 -> 4\)"):
        check_resumable(tmp_path, with_values(again, num_context_tokens=4))
    with pytest.raises(InputError, match=r"different settings \(opl_iterations: 10 -> 3\)"):
        check_resumable(tmp_path, with_values(again, opl_iterations=3))
