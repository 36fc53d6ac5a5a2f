"""End to end: ``python main.py --task demo_survival`` (shortened) and ``create_splits.py --survival``."""

from __future__ import annotations

import pandas as pd

import create_splits as splits_cli
import main as main_module
from datasets.splits import read_split
from preprocess import demo, demo_survival
from preprocess.demo_tasks import task_defaults
from utils.errors import run_cli


def test_demo_survival_short_run(tmp_path):
    results = tmp_path / "results"
    argv = ["--task", "demo_survival", "--results_dir", str(results), "--quiet", "--max_epochs", "2"]
    argv += ["--num-context-tokens", "4"]  # shorter prompts: a faster text pass
    assert main_module.main(argv) == 0
    (run_dir,) = [p.parent for p in results.rglob("results.csv")]
    assert run_dir.name == "demo_survival_demo_HiLa_survival_s1"
    table = pd.read_csv(run_dir / "results.csv").set_index("metric")
    assert list(table.columns) == ["test_cindex", "test_ibs", "val_cindex", "val_ibs"]
    assert table.loc["mean", "test_cindex"] > 0.6  # the planted signal is found within two epochs
    assert 0.0 < table.loc["mean", "test_ibs"] < 0.5
    assert len(pd.read_csv(run_dir / "summary.csv")) == 5
    assert (run_dir / "km_test.png").is_file() and (run_dir / "fold_4" / "predictions_test.csv").is_file()


def test_demo_task_defaults_cover_both_demos():
    survival = task_defaults("demo_survival")
    assert survival["model_type"] == "HiLa" and survival["k"] == 5
    assert survival["csv_dir"].endswith("dataset_csv") and "demo_survival" in survival["data_root_dir"]
    assert task_defaults("demo") == demo.run_defaults()
    assert task_defaults("tcga_brca") == {}
    assert set(demo_survival.DEMO_SURVIVAL_PROMPTS) and all(
        set(v) == {"region", "patch"} for v in demo_survival.DEMO_SURVIVAL_PROMPTS.values()
    )


def test_demo_survival_generation_is_deterministic(tmp_path):
    a = demo_survival.ensure_demo_survival_data(tmp_path / "a", seed=2)
    b = demo_survival.ensure_demo_survival_data(tmp_path / "b", seed=2)
    assert a.csv_path.read_bytes() == b.csv_path.read_bytes()
    table = pd.read_csv(a.csv_path)
    assert table["case_id"].nunique() == demo_survival.NUM_CASES
    assert 0.15 < table.drop_duplicates("case_id")["censorship"].mean() < 0.45
    split = read_split(
        a.splits_root / "demo_survival" / "demo_survival_survival" / "splits_0.csv", item="case"
    )
    assert len(split.test) == 20 and len(split.val) == 20 and len(split.train) == 60


def test_create_splits_survival(tmp_path, capsys):
    rows = [(f"c{i}", f"s{i}", 5.0 + 3 * i, i % 3 == 0, 40) for i in range(30)]
    csv = tmp_path / "surv.csv"
    pd.DataFrame(rows, columns=["case_id", "slide_id", "survival_months", "censorship", "level0_mag"]).astype(
        {"censorship": int}
    ).to_csv(csv, index=False)
    flags = [
        "--task",
        "mysurv",
        "--csv",
        str(csv),
        "--survival",
        "--k",
        "5",
        "--splits_root",
        str(tmp_path / "sp"),
    ]
    assert run_cli(splits_cli.main, flags) == 0, capsys.readouterr().err
    files = sorted((tmp_path / "sp" / "mysurv" / "mysurv_survival").glob("splits_*.csv"))
    assert [p.name for p in files] == [f"splits_{i}.csv" for i in range(5)]
    tested = [c for p in files for c in read_split(p, item="case").test]
    assert sorted(tested) == sorted(r[0] for r in rows)
    assert run_cli(splits_cli.main, flags) == 2
    assert "already exists (5 of 5 files); use --overwrite" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("case_id,slide_id,survival_months,censorship,level0_mag\nc,s,-1,0,40\n")
    assert run_cli(splits_cli.main, ["--task", "x", "--csv", str(bad), "--survival"]) == 2
    assert "survival_months must be >= 0" in capsys.readouterr().err
    assert run_cli(splits_cli.main, ["--task", "x", "--csv", str(csv)]) == 2
    assert "--few_shot_num is required" in capsys.readouterr().err
