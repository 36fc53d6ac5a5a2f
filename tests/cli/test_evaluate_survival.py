"""evaluate_survival.py: a predictions CSV in, survival_metrics.csv and km.png out; bad input one line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import evaluate_survival as cli
from tests.paths import PROJECT
from utils.errors import run_cli


def _predictions(path, with_curves=False, k=3, n=30, seed=0):
    """k-fold cross-validation predictions: every case evaluated once, trained on in the other folds."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    event_time = rng.exponential(20 * np.exp(-x))
    follow_up = rng.uniform(5, 60, n)
    months = np.round(np.minimum(event_time, follow_up), 1)
    censorship = (event_time > follow_up).astype(int)
    rows = []
    for fold in range(k):
        for i in range(n):
            part = "val" if i % k == fold else "train"
            row = {
                "fold": fold,
                "part": part,
                "case_id": f"case_{i:02d}",
                "risk": x[i] + rng.normal(scale=0.3) if part == "val" else "",
                "survival_months": months[i],
                "censorship": censorship[i],
            }
            if with_curves:
                hazards = 1 / (1 + np.exp(-(x[i] - 1 + 0.3 * np.arange(4))))
                row.update({f"survival_{b}": s for b, s in enumerate(np.cumprod(1 - hazards))})
            rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_csv_in_metrics_and_plot_out(tmp_path, capsys):
    source = _predictions(tmp_path / "pred.csv", with_curves=True)
    assert run_cli(cli.main, [str(source), "--bin_cuts", "5,12,25", "--out", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "survival_metrics.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == [
        "fold", "c_index", "iauc", "logrank_p", "ibs", "ibs_km", "n_cases", "n_events", "note",
    ]  # fmt: skip
    assert list(table["fold"]) == ["0", "1", "2", "mean", "std", "pooled"]
    numbers = table.drop(columns=["fold", "note"]).astype(float)
    assert np.isfinite(numbers.to_numpy()).all()  # every metric defined on this cohort: none blank
    assert list(table["n_cases"]) == ["10", "10", "10", "10.0", "0.0", "30"]
    assert (tmp_path / "out" / "km.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "pooled" in out and "HR" in out and "survival_metrics.csv" in out


def test_undefined_values_are_nan_with_a_reason(tmp_path):
    source = _predictions(tmp_path / "pred.csv")
    frame = pd.read_csv(source)
    fold2 = frame.loc[(frame["fold"] == 2) & (frame["part"] == "val"), "case_id"]
    frame.loc[frame["case_id"].isin(fold2), "censorship"] = 1  # fold 2's cases: no event
    frame.to_csv(source, index=False)
    assert run_cli(cli.main, [str(source)]) == 0
    text = (tmp_path / "survival_metrics.csv").read_text()
    assert ",," not in text  # never blank
    table = pd.read_csv(tmp_path / "survival_metrics.csv", keep_default_na=False).set_index("fold")
    assert table.loc["2", "c_index"] == "nan" and "c_index: no events" in table.loc["2", "note"]
    assert "iauc: no events" in table.loc["2", "note"] and "logrank_p: no events" in table.loc["2", "note"]
    assert "c_index: over 2 of 3 folds (undefined in fold 2)" in table.loc["mean", "note"]
    assert table.loc["pooled", "c_index"] != "nan"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.drop(columns=["risk"]), "missing column(s) risk"),
        (
            lambda f: f.assign(risk=np.where(f["part"] == "val", "", f["risk"])),
            "risk (empty) is not a finite number",
        ),
        (lambda f: f.assign(survival_months=f["survival_months"] - 100), "is not a finite number >= 0"),
        (lambda f: f.assign(censorship=f["censorship"] + 1), "is not 0 or 1"),
        (lambda f: f[f["part"] != "train"], "fold 0 has no train rows"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, capsys, edit, message):
    source = _predictions(tmp_path / "pred.csv")
    edit(pd.read_csv(source, keep_default_na=False)).to_csv(source, index=False)
    assert run_cli(cli.main, [str(source)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_curves_need_their_bin_cuts(tmp_path, capsys):
    source = _predictions(tmp_path / "pred.csv", with_curves=True)
    assert run_cli(cli.main, [str(source)]) == 2
    assert "need the bin cut points" in capsys.readouterr().err


def test_censoring_fallback_is_explicit(tmp_path):
    source = _predictions(tmp_path / "pred.csv")
    frame = pd.read_csv(source)
    frame[frame["part"] != "train"].to_csv(source, index=False)
    assert run_cli(cli.main, [str(source), "--censoring", "evaluated"]) == 0
    table = pd.read_csv(tmp_path / "survival_metrics.csv", keep_default_na=False).set_index("fold")
    assert "censoring weights from the evaluated cases" in table.loc["0", "note"]


def test_help_parses_before_heavy_imports():
    code = (
        "import sys, runpy; sys.argv = ['evaluate_survival.py', '--help']\n"
        "try:\n    runpy.run_path('evaluate_survival.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'sksurv', 'lifelines', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().endswith("[]")
