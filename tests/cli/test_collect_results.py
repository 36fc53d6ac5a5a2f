"""collect_results.py: finds results.csv files in the published layout and tabulates mean ± std."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import collect_results as cr
from tests.paths import PROJECT
from training.config import RunConfig
from training.results import write_run_config
from utils.errors import InputError, run_cli


def write_run(
    root: Path,
    task: str,
    extractor: str,
    shots: str,
    model: str,
    seed: int,
    mean,
    std,
    folder: str | None = None,
) -> Path:
    """config.json and a results.csv as main.py writes them (metric,test_acc,test_auc,test_f1,val_...)."""
    config = RunConfig(
        task=task, feature_extractor=extractor, few_shot_num=int(shots), model_type=model, seed=seed
    )
    run_dir = root / task / extractor / shots / (folder or config.run_dir.name)
    run_dir.mkdir(parents=True)
    write_run_config(run_dir, config)
    frame = pd.DataFrame(
        {
            "metric": ["mean", "std"],
            "test_acc": [mean[0], std[0]],
            "test_auc": [mean[1], std[1]],
            "test_f1": [mean[2], std[2]],
            "val_acc": [0.5, 0.1],
        }
    )
    path = run_dir / "results.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "R"
    write_run(root, "tcga_brca", "plip", "16", "ABMIL", 1, (0.8, 0.9, 0.75), (0.05, 0.02, 0.04))
    write_run(root, "tcga_brca", "plip", "16", "HiVE_MIL", 1, (0.85125, 0.93, 0.8), (0.01, 0.015, 0.02))
    write_run(root, "tcga_brca", "plip", "16", "mean_pool_5x", 1, (0.7, 0.75, 0.65), (0.1, 0.1, 0.1))
    write_run(root, "tcga_brca", "plip", "4", "ABMIL", 1, (0.6, 0.65, 0.55), (0.0, 0.0, 0.0))
    write_run(root, "tcga_rcc", "conch", "16", "TransMIL", 1, (0.9, 0.95, 0.88), (0.02, 0.01, 0.03))
    write_run(root, "tcga_rcc", "conch", "16", "TransMIL", 2, (0.92, 0.96, 0.9), (0.01, 0.01, 0.01))
    (root / "tcga_brca" / "plip" / "16" / "stray.txt").write_text("not a run")
    return root


def test_runs_are_identified_by_config_json_not_folder_names(tmp_path: Path):
    """Underscores in task and method, a variant-tagged folder and a renamed folder: config.json decides."""
    root = tmp_path / "R"
    write_run(root, "tcga_brca", "plip", "16", "mean_pool_5x", 3, (0.7, 0.8, 0.6), (0.0, 0.0, 0.0))
    write_run(root, "tcga_brca", "plip", "16", "ABMIL", 1, (0.6, 0.7, 0.5), (0.0, 0.0, 0.0), folder="renamed")
    config = RunConfig(
        task="tcga_brca", feature_extractor="plip", few_shot_num=16, variant="corrected", seed=2
    )
    assert config.run_dir.name.endswith("_s2_corrected")
    run_dir = root / "tcga_brca" / "plip" / "16" / config.run_dir.name
    run_dir.mkdir(parents=True)
    write_run_config(run_dir, config)
    pd.DataFrame(
        {"metric": ["mean", "std"], "test_acc": [0.9, 0.0], "test_auc": [0.9, 0.0], "test_f1": [0.9, 0.0]}
    ).to_csv(run_dir / "results.csv", index=False)
    found = {(r.method, r.variant, r.seed) for r in cr.find_results(root)}
    assert found == {("mean_pool_5x", "", 3), ("ABMIL", "", 1), ("HiVE_MIL", "corrected", 2)}
    md, _, _ = cr.collect(root, None, tmp_path / "t.md")
    assert "| HiVE_MIL (corrected) | 90.00 ± 0.00 |" in md.read_text(encoding="utf-8")


def test_markdown_and_csv_by_hand(results: Path, tmp_path: Path):
    out = tmp_path / "tables" / "table.md"
    md_path, csv_path, count = cr.collect(results, None, out)
    assert count == 6 and csv_path == out.with_suffix(".csv")
    expected = """## tcga_brca / plip / 4-shot

| Method | ACC (%) | AUC (%) | F1 (%) |
|---|---|---|---|
| ABMIL | 60.00 ± 0.00 | 65.00 ± 0.00 | 55.00 ± 0.00 |

## tcga_brca / plip / 16-shot

| Method | ACC (%) | AUC (%) | F1 (%) |
|---|---|---|---|
| HiVE_MIL | 85.12 ± 1.00 | 93.00 ± 1.50 | 80.00 ± 2.00 |
| ABMIL | 80.00 ± 5.00 | 90.00 ± 2.00 | 75.00 ± 4.00 |
| mean_pool_5x | 70.00 ± 10.00 | 75.00 ± 10.00 | 65.00 ± 10.00 |

## tcga_rcc / conch / 16-shot

| Method | ACC (%) | AUC (%) | F1 (%) |
|---|---|---|---|
| TransMIL (s1) | 90.00 ± 2.00 | 95.00 ± 1.00 | 88.00 ± 3.00 |
| TransMIL (s2) | 92.00 ± 1.00 | 96.00 ± 1.00 | 90.00 ± 1.00 |
"""
    assert md_path.read_text(encoding="utf-8") == expected
    frame = pd.read_csv(csv_path, dtype={"few_shot": str, "seed": str})
    assert list(frame.columns) == cr.CSV_COLUMNS
    hive = frame[(frame.method == "HiVE_MIL")].iloc[0]
    assert (hive.task, hive.extractor, hive.few_shot, hive.seed) == ("tcga_brca", "plip", "16", "1")
    assert hive.acc_mean == pytest.approx(0.85125) and hive.f1_std == pytest.approx(0.02)
    assert not list(out.parent.glob(".*"))  # no temporary files left behind


def test_task_filter_and_default_output(results: Path, capsys):
    assert cr.main(["--results_dir", str(results), "--task", "tcga_rcc"]) == 0
    table = (results / cr.DEFAULT_OUT_NAME).read_text(encoding="utf-8")
    assert "tcga_rcc / conch / 16-shot" in table and "tcga_brca" not in table
    assert "collected 2 run(s)" in capsys.readouterr().out


def test_nothing_found_is_one_clear_error(tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no results.csv found"):
        cr.find_results(tmp_path / "empty")
    assert run_cli(cr.main, ["--results_dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --results_dir") and "not a folder" in err


def test_malformed_results_csv_names_the_file_and_is_not_modified(tmp_path: Path):
    path = write_run(tmp_path, "t", "e", "8", "ABMIL", 1, (0.5, 0.5, 0.5), (0.0, 0.0, 0.0))
    path.write_text("metric,test_acc,test_auc\nmean,0.5,0.5\nstd,0,0\n")
    before = path.read_bytes()
    with pytest.raises(InputError, match=r"results\.csv: missing column\(s\) test_f1"):
        cr.collect(tmp_path, None, tmp_path / "out.md")
    path.write_text("metric,test_acc,test_auc,test_f1\nmean,0.5,0.5,0.5\n")
    with pytest.raises(InputError, match="no row with metric = 'std'"):
        cr.collect(tmp_path, None, tmp_path / "out.md")
    assert not (tmp_path / "out.md").exists()
    path.write_text("metric,test_acc,test_auc\nmean,0.5,0.5\nstd,0,0\n")
    assert path.read_bytes() == before


def test_cli_runs_as_a_script(results: Path, tmp_path: Path):
    out = tmp_path / "cli.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(PROJECT / "collect_results.py"),
            "--results_dir",
            str(results),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and out.with_suffix(".csv").is_file()
    bad = subprocess.run(
        [sys.executable, str(PROJECT / "collect_results.py"), "--results_dir", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        cwd=PROJECT,
    )
    assert (
        bad.returncode == 2
        and bad.stderr.startswith("error: --results_dir")
        and "Traceback" not in bad.stderr
    )
