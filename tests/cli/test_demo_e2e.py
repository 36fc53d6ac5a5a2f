"""End to end: ``python main.py --task demo`` (shortened) through the real CLI entry point."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import main as main_module


def _run(tmp_path, *extra):
    results = tmp_path / "results"
    argv = ["--task", "demo", "--results_dir", str(results), "--k", "1", "--quiet", "--threads", "1", *extra]
    assert main_module.main(argv) == 0
    (run_dir,) = [p for p in results.rglob("results.csv")]
    return run_dir.parent


def test_demo_hivemil_short_run_writes_results(tmp_path):
    run_dir = _run(tmp_path, "--max_epochs", "3")
    table = pd.read_csv(run_dir / "results.csv")
    assert list(table["metric"]) == ["mean", "std"]
    mean = table.set_index("metric").loc["mean"]
    for col in ("test_acc", "test_auc", "test_f1"):
        assert 0.0 <= mean[col] <= 1.0
    assert mean["test_acc"] > 1 / 3  # above chance on the planted signal after 3 epochs
    assert (run_dir / "s_0_checkpoint.pt").is_file() and (run_dir / "config.json").is_file()
    assert (run_dir / "fold_0" / "predictions_test.csv").is_file()


@pytest.mark.parametrize(
    "extra", [("--model_type", "zero_shot"), ("--amp", "bf16", "--variant", "corrected")]
)
def test_demo_variants_run(tmp_path, extra):
    run_dir = _run(tmp_path, "--max_epochs", "1", *extra)
    mean = pd.read_csv(run_dir / "results.csv").set_index("metric").loc["mean"]
    assert not math.isnan(mean["test_acc"])


def test_first_demo_run_equals_later_runs(tmp_path, monkeypatch):
    """Building the demo's tiny tower on first use draws nothing from the run's RNG: run 1 (which builds
    it, in a fresh cache) and run 2 (which loads it) give byte-identical results."""
    import torch

    from models.towers.tiny import ensure_demo_text_tower

    monkeypatch.setenv("HIVEMIL_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    ensure_demo_text_tower(tmp_path / "tower_cache")
    assert torch.equal(torch.get_rng_state(), state)
    first = _run(tmp_path / "a", "--max_epochs", "1")
    second = _run(tmp_path / "b", "--max_epochs", "1")
    for name in ("results.csv", "summary.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
