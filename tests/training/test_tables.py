"""Result tables (training/tables.py): runs identified by config.json, metrics read generically, per-fold CSV."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from training.config import RunConfig
from training.results import summary_frames, write_run_config, write_summaries
from training.tables import find_runs, folds_frame, markdown_tables, read_run, results_frame, write_tables
from utils.errors import InputError


def fake_run(results: Path, rows: list[dict], **settings) -> Path:
    """A finished run folder as main.py leaves it: config.json, summary.csv and results.csv of ``rows``."""
    config = RunConfig(results_dir=str(results), **settings)
    write_run_config(config.run_dir, config)
    write_summaries(config.run_dir, rows, config.fold_range, config.k)
    return config.run_dir


def rows_of(*accs: float) -> list[dict]:
    names = ("test_acc", "test_auc", "test_f1", "val_acc", "val_auc", "val_f1")
    return [{"fold": i, **{n: a for n in names}} for i, a in enumerate(accs)]


def survival_run(results: Path, cindex: list[float], **settings) -> Path:
    """A run of a survival task (``task_kind`` survival in config.json, its own folder) whose files carry
    test_cindex instead of the classification metrics."""
    config = RunConfig(results_dir=str(results), k=len(cindex), **settings)
    run_dir = config.run_folder("survival")
    write_run_config(run_dir, config, {"task_kind": "survival"})
    summary = pd.DataFrame({"folds": range(len(cindex)), "test_cindex": cindex, "val_cindex": cindex})
    summary.to_csv(run_dir / "summary.csv", index=False)
    mean, std = float(pd.Series(cindex).mean()), float(pd.Series(cindex).std(ddof=0))
    pd.DataFrame({"metric": ["mean", "std"], "test_cindex": [mean, std], "val_cindex": [mean, std]}).to_csv(
        run_dir / "results.csv", index=False
    )
    return run_dir


def test_records_come_from_config_json_and_results_files(tmp_path: Path):
    rows = rows_of(0.5, 0.75, 1.0)
    run_dir = fake_run(
        tmp_path, rows, task="tcga_brca", model_type="HiVE_MIL", variant="corrected", k=3, seed=4
    )
    assert run_dir.name.endswith("_s4_corrected")
    record = read_run(run_dir)
    _, results = summary_frames(rows)
    assert (record.task, record.extractor, record.few_shot, record.method, record.variant, record.seed) == (
        "tcga_brca",
        "plip",
        16,
        "HiVE_MIL",
        "corrected",
        4,
    )
    assert record.mean == {m: results.loc[0, f"test_{m}"] for m in ("acc", "auc", "f1")}
    assert record.std["acc"] == results.loc[1, "test_acc"]
    assert [f["fold"] for f in record.folds] == [0, 1, 2] and record.folds[1]["val_auc"] == 0.75
    # a run without results yet is not a record; a baseline has no variant
    unfinished = RunConfig(results_dir=str(tmp_path), task="tcga_brca", model_type="ABMIL")
    write_run_config(unfinished.run_dir, unfinished)
    assert read_run(unfinished.run_dir) is None
    baseline = fake_run(
        tmp_path, rows_of(0.5), task="tcga_brca", model_type="ABMIL", variant="corrected", k=1
    )
    assert read_run(baseline).variant == ""


def test_partial_fold_ranges_read_their_own_files(tmp_path: Path):
    run_dir = fake_run(
        tmp_path, rows_of(0.25, 0.5)[1:], task="t", model_type="ABMIL", k=3, k_start=1, k_end=2
    )
    assert (run_dir / "results_partial_1_1.csv").is_file() and not (run_dir / "results.csv").exists()
    record = read_run(run_dir)
    assert record.results_path.name == "results_partial_1_1.csv" and record.mean["acc"] == 0.5
    assert [f["fold"] for f in record.folds] == [1]


def test_survival_metrics_are_read_generically(tmp_path: Path):
    fake_run(tmp_path, rows_of(0.6, 0.8), task="tcga_brca", model_type="ABMIL", k=2)
    survival_run(tmp_path, [0.625, 0.75], task="tcga_brca", model_type="HiLa")
    records, unidentified = find_runs(tmp_path)
    assert unidentified == [] and [r.few_shot for r in records] == [16, "survival"]
    table = markdown_tables(records)
    assert (
        "## tcga_brca / plip / survival\n\n| Method | C-index |\n|---|---|\n| HiLa | 0.6875 ± 0.0625 |"
        in table
    )
    assert "| ABMIL | 70.00 ± 10.00 | 70.00 ± 10.00 | 70.00 ± 10.00 |" in table
    frame = results_frame(records)
    assert list(frame.columns)[-3:] == ["cindex_mean", "cindex_std", "path"]
    hila = frame[frame.method == "HiLa"].iloc[0]
    assert hila.cindex_mean == 0.6875 and math.isnan(hila.acc_mean) and hila.folds == 2
    folds = folds_frame(records)
    assert len(folds) == 4 and set(folds.columns) >= {"fold", "test_cindex", "val_cindex", "test_acc"}


def test_seeds_and_variants_get_their_own_rows_and_labels(tmp_path: Path):
    for seed, acc in ((1, 0.5), (2, 1.0)):
        fake_run(tmp_path, rows_of(acc), task="t", model_type="ABMIL", k=1, seed=seed)
    fake_run(
        tmp_path,
        rows_of(0.25),
        task="t",
        model_type="HiVE_MIL",
        k=1,
        variant="corrected",
        text_encoding="released",
    )
    fake_run(tmp_path, rows_of(0.75), task="t", model_type="HiVE_MIL", k=1)
    records, _ = find_runs(tmp_path)
    md = tmp_path / "out" / "table.md"
    write_tables(records, md, md.with_suffix(".csv"), md.parent / "table_folds.csv")
    lines = [
        line
        for line in md.read_text(encoding="utf-8").splitlines()
        if line.startswith("| ") and "Method" not in line
    ]
    assert [line.split(" | ")[0] for line in lines] == [
        "| HiVE_MIL",
        "| HiVE_MIL (corrected_text-encoding-released)",
        "| ABMIL (s1)",
        "| ABMIL (s2)",
    ]
    frame = pd.read_csv(md.with_suffix(".csv"), keep_default_na=False)
    assert list(frame.variant) == ["reference", "corrected_text-encoding-released", "", ""]
    assert len(pd.read_csv(md.parent / "table_folds.csv")) == 4
    assert not list(md.parent.glob(".*"))  # atomic writes leave no temporary files


def test_bad_files_are_one_line_and_results_without_config_are_listed(tmp_path: Path):
    run_dir = fake_run(tmp_path, rows_of(0.5), task="t", model_type="ABMIL", k=1)
    (run_dir / "results.csv").write_text("metric,val_acc\nmean,0.5\nstd,0\n")
    with pytest.raises(InputError, match=r"results\.csv: missing column\(s\) test_<metric>"):
        read_run(run_dir)
    (run_dir / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="config.json: unreadable run config"):
        read_run(run_dir)
    (run_dir / "config.json").unlink()
    records, unidentified = find_runs(tmp_path)
    assert records == [] and unidentified == [run_dir]
    with pytest.raises(InputError, match="not a folder"):
        find_runs(tmp_path / "missing")
