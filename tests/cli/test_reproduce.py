"""reproduce.py: a small grid on a local Ray instance equals sequential main.py runs, resumes, reports a
failed fold; flags and grid problems are one line before anything runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import main as main_module
import reproduce
from tests.paths import PROJECT
from training.tables import find_runs, markdown_tables
from utils.errors import run_cli
from utils.locking import FolderLock

MODELS = ("HiVE_MIL", "ABMIL")
COMMON = ["--k", "2", "--max_epochs", "2", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance (2 CPUs) for the module: reproduce.py uses it and leaves it running."""
    from utils.ray_cluster import start_ray

    session = start_ray(None, num_cpus=2)
    yield session
    session.close()


def _grid(results: Path, *extra: str) -> list[str]:
    return ["--tasks", "demo", "--models", *MODELS, "--results_dir", str(results), *COMMON, *extra]


def _fold_section(log: Path) -> list[str]:
    """Lines of the last reproduce.py session in a run's log.txt."""
    lines = log.read_text(encoding="utf-8").splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("reproduce.py: configuration"))
    return lines[start:]


def test_grid_on_ray_equals_sequential_runs_and_resumes(ray_session, tmp_path: Path, capsys):
    seq, grid = tmp_path / "sequential", tmp_path / "ray"
    for model in MODELS:
        assert (
            main_module.main(["--task", "demo", "--model_type", model, "--results_dir", str(seq), *COMMON])
            == 0
        )
    capsys.readouterr()
    seq_runs, _ = find_runs(seq)
    runs = {r.method: r.run_dir.relative_to(seq) for r in seq_runs}

    # 1. ABMIL's fold 1 is locked by another process: tried twice (--retries 1), reported, the rest go on
    lock = FolderLock(grid / runs["ABMIL"], name=".fold_1.lock")
    lock.acquire()
    try:
        assert run_cli(reproduce.main, _grid(grid)) == 1
    finally:
        lock.release()
    out, err = capsys.readouterr()
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert failed and all("model_type=ABMIL fold 1" in line and "in use by" in line for line in failed), err
    assert "2 fold(s) trained" not in out and "3 fold(s) trained, 0 reused, 1 failed" in out
    train_log = (grid / runs["ABMIL"] / "fold_1" / "train_log.txt").read_text(encoding="utf-8")
    assert train_log.count("error: fold 1:") == 2  # first attempt and one retry
    assert not (grid / runs["ABMIL"] / "results.csv").exists()
    assert pd.read_csv(grid / "table.csv").method.tolist() == ["HiVE_MIL"]

    # 2. rerun: only the failed fold is trained; the rest is reused
    assert run_cli(reproduce.main, _grid(grid)) == 0
    out, _ = capsys.readouterr()
    assert "1 fold(s) trained, 3 reused, 0 failed" in out
    for model, rel in runs.items():  # same files as main.py's
        for name in ("results.csv", "summary.csv"):
            assert (grid / rel / name).read_bytes() == (seq / rel / name).read_bytes(), (model, name)
    table = pd.read_csv(grid / "table.csv")
    assert table.method.tolist() == list(MODELS)
    for record in seq_runs:
        row = table[table.method == record.method].iloc[0]
        results = pd.read_csv(record.results_path).set_index("metric")
        for m in ("acc", "auc", "f1"):
            assert row[f"{m}_mean"] == results.loc["mean", f"test_{m}"]
            assert row[f"{m}_std"] == results.loc["std", f"test_{m}"]
    folds = pd.read_csv(grid / "table_folds.csv")
    for record in seq_runs:
        summary = pd.read_csv(record.run_dir / "summary.csv")
        mine = folds[folds.method == record.method].reset_index(drop=True)
        assert mine.fold.tolist() == summary.folds.tolist()
        pd.testing.assert_frame_equal(
            mine[summary.columns[1:]], summary[summary.columns[1:]], check_exact=True
        )
    assert (grid / "table.md").read_text(encoding="utf-8") == markdown_tables(seq_runs)
    log = _fold_section(grid / runs["ABMIL"] / "log.txt")
    assert any("fold 0: finished in an earlier run" in line for line in log)
    assert any("fold 1: trained by a Ray worker" in line for line in log)

    # 3. rerun: nothing to train, every fold reused, no worker touched
    logs = {p: p.read_bytes() for p in grid.rglob("train_log.txt")}
    assert run_cli(reproduce.main, _grid(grid)) == 0
    out, _ = capsys.readouterr()
    assert "0 fold(s) trained, 4 reused, 0 failed" in out
    for rel in runs.values():
        log = _fold_section(grid / rel / "log.txt")
        assert sum("finished in an earlier run with the same inputs, reusing" in line for line in log) == 2
        assert not any("trained by a Ray worker" in line for line in log)
    assert {p: p.read_bytes() for p in grid.rglob("train_log.txt")} == logs


def test_dry_run_lists_folds_and_writes_nothing(tmp_path: Path, capsys):
    results = tmp_path / "R"
    assert run_cli(reproduce.main, [*_grid(results), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 configuration(s)" in out and out.count("train fold(s) 0 1, reuse -") == 2
    assert not results.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--no_such_flag"], "error: main.py does not know --no_such_flag"),
        (["--shots", "x"], "error: grid: --shots value 'x' is not an integer"),
        (
            ["--model_type", "ABMIL"],
            "error: --model_type is set by the grid (--models) and by the main.py flags",
        ),
        (["--retries", "-1"], "error: --retries must be >= 0"),
        (["--retries", "x"], "error: argument --retries: invalid int value: 'x'"),
        (["--seeds"], "error: argument --seeds: expected at least one argument"),
        (["--grid", "missing.toml"], "error: --grid missing.toml: file not found"),
    ],
)
def test_bad_flags_are_one_line_before_anything_runs(tmp_path: Path, capsys, extra, message):
    results = tmp_path / "R"
    assert run_cli(reproduce.main, [*_grid(results), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not results.exists()


def test_every_bad_configuration_is_listed_before_any_training(tmp_path: Path, capsys):
    results = tmp_path / "R"
    argv = ["--tasks", "demo", "no_such_task", "--models", "ABMIL", "--results_dir", str(results), *COMMON]
    argv += ["--shots", "8", "99"]  # the demo has 8-shot splits only
    assert run_cli(reproduce.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: 3 of 4 configurations have problems (above); nothing was run"
    assert len(err) == 4 and all(line.startswith("error: task=") for line in err[:3])
    assert not results.exists()


def test_script_entry_point_gives_one_error_line(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, str(PROJECT / "reproduce.py"), "--tasks", "demo", "--lr", "fast"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "error: main.py flags: argument --lr: invalid float value: 'fast'"
    )


def test_reproduce_script_usage_on_wrong_arguments(tmp_path: Path):
    script = PROJECT / "scripts" / "reproduce.sh"
    proc = subprocess.run(["bash", str(script), "tcga_brca"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("usage:")
    proc = subprocess.run(
        ["bash", str(script), "tcga_brca", "plip", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "DATA_ROOT" in proc.stderr and "not a folder" in proc.stderr


def test_reproduce_script_runs_the_grid_with_published_flags(tmp_path: Path):
    """A fake interpreter records the call: one reproduce.py grid over every model, published flags."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$@" >> "{log}"\n')
    fake.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    script = str(PROJECT / "scripts" / "reproduce.sh")
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake)}
    argv = ["bash", script, "tcga_brca", "plip", str(data), str(tmp_path / "R"), "--text_tower", "/w"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    (call,) = log.read_text().splitlines()
    models = "HiVE_MIL zero_shot ViLa_MIL mean_pool max_pool MIL_fc ABMIL TransMIL LiteMIL"
    assert call.endswith(
        f"reproduce.py --tasks tcga_brca --extractors plip --models {models} --seed 1 --drop_out --early_stopping "
        f"--lr 1e-4 --k 5 --few_shot_num 16 --feature_dim 512 --bag_loss ce --results_dir {tmp_path / 'R'} "
        f"--data_root_dir {data} --text_tower /w"
    )
    proc = subprocess.run(
        [*argv[:5], "--address", "auto"], capture_output=True, text=True, env={**env, "MODELS": "ABMIL"}
    )
    assert proc.returncode == 0 and log.read_text().splitlines()[1].endswith(
        f"--models ABMIL --seed 1 --drop_out --early_stopping --lr 1e-4 --k 5 --few_shot_num 16 --feature_dim 512 "
        f"--bag_loss ce --results_dir results --data_root_dir {data} --address auto"
    )
    # the published flags pass reproduce.py's own checks (main.py knows each of them)
    from training.grid import main_flags_given

    flags = call.split(f"--models {models} ")[1].split()  # everything after the grid flags
    assert main_flags_given(flags) >= {
        "seed",
        "drop_out",
        "early_stopping",
        "lr",
        "k",
        "few_shot_num",
        "bag_loss",
    }
