"""End to end: ``python main.py --task demo_survival`` (shortened) and ``create_splits.py --survival``."""

from __future__ import annotations

import json

import pandas as pd

import create_splits as splits_cli
import main as main_module
from datasets.splits import read_split
from preprocess import demo, demo_survival
from preprocess.demo_tasks import task_defaults
from training.config import parse_config
from training.tasks import kind_defaults
from utils.errors import run_cli


def test_demo_survival_short_run(tmp_path):
    results = tmp_path / "results"
    argv = ["--task", "demo_survival", "--results_dir", str(results), "--quiet", "--max_epochs", "2"]
    argv += ["--num-context-tokens", "4"]  # shorter prompts: a faster text pass
    argv += ["--gc", "4"]  # two epochs of 32-case steps are 6 steps: too few to find the signal
    assert main_module.main(argv) == 0
    (run_dir,) = [p.parent for p in results.rglob("results.csv")]
    assert run_dir.name == "demo_survival_demo_HiLa_survival_s1"
    table = pd.read_csv(run_dir / "results.csv").set_index("metric")
    assert list(table.columns) == ["test_cindex", "test_ibs", "val_cindex", "val_ibs"]
    assert table.loc["mean", "test_cindex"] > 0.6  # the planted signal is found within two epochs
    assert 0.0 < table.loc["mean", "test_ibs"] < 0.5
    assert len(pd.read_csv(run_dir / "summary.csv")) == 5
    assert (run_dir / "km_test.png").is_file() and (run_dir / "fold_4" / "predictions_val.csv").is_file()
    assert not (run_dir / "fold_4" / "predictions_test.csv").exists()  # train/val folds: val is evaluated
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    assert (saved["gc"], saved["weighted_sample"], saved["surv_alpha"], saved["lr"]) == (4, True, 0.0, 1e-3)


def test_demo_survival_runs_on_the_published_settings_but_its_own_lr_and_epochs():
    config = parse_config(
        ["--task", "demo_survival"], task_defaults=task_defaults, kind_defaults=kind_defaults
    )
    assert (config.gc, config.weighted_sample, config.surv_alpha, config.early_stopping) == (
        32,
        True,
        0.0,
        False,
    )
    assert (config.lr, config.max_epochs, config.reg) == (1e-3, 10, 1e-5)


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
    path = a.splits_root / "demo_survival" / "demo_survival_survival" / "splits_0.csv"
    assert path.read_text().startswith(",train,val\n")  # the field's layout
    split = read_split(path, item="case", require_test=False)
    assert len(split.test) == 0 and len(split.val) == 20 and len(split.train) == 80


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
    assert all(p.read_text().startswith(",train,val\n") for p in files)
    evaluated = [c for p in files for c in read_split(p, item="case", require_test=False).val]
    assert sorted(evaluated) == sorted(r[0] for r in rows)
    assert run_cli(splits_cli.main, flags) == 2
    assert "already exists (5 of 5 files); use --overwrite" in capsys.readouterr().err
    assert run_cli(splits_cli.main, [*flags, "--test_part", "--overwrite"]) == 0
    assert "cases train 18, val 6, test 6" in capsys.readouterr().out
    tested = [c for p in files for c in read_split(p, item="case").test]
    assert sorted(tested) == sorted(r[0] for r in rows)
    few = tmp_path / "few.csv"  # censored at 1..6 months, events at 7..10: 4 events
    few.write_text(
        "case_id,slide_id,survival_months,censorship,level0_mag\n"
        + "".join(f"c{i},s{i},{i + 1},{int(i < 6)},40\n" for i in range(10))
    )
    few_flags = [
        "--task",
        "f",
        "--csv",
        str(few),
        "--survival",
        "--n_bins",
        "2",
        "--splits_root",
        str(tmp_path / "sp"),
    ]
    assert run_cli(splits_cli.main, few_flags) == 2
    assert "4 event(s) (censorship 0) among 10 cases, fewer than the 5 folds" in capsys.readouterr().err
    # 4 folds: one event per val part, every censored time before it -> no comparable pair, said per fold
    assert run_cli(splits_cli.main, [*few_flags, "--k", "4"]) == 0
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 4 and all(
        w.startswith(f"warning: fold {i}: val part has no comparable pair")
        and w.endswith("(c-index undefined)")
        for i, w in enumerate(warnings)
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("case_id,slide_id,survival_months,censorship,level0_mag\nc,s,-1,0,40\n")
    assert run_cli(splits_cli.main, ["--task", "x", "--csv", str(bad), "--survival"]) == 2
    assert "survival_months must be >= 0" in capsys.readouterr().err
    assert run_cli(splits_cli.main, ["--task", "x", "--csv", str(csv)]) == 2
    assert "--few_shot_num is required" in capsys.readouterr().err
