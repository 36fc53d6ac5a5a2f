"""predict.py and explain.py on survival runs (docs/survival.md §12): risk and per-bin survival per case
bag, the fold ensemble as the mean curve, transport-plan and attention heatmaps, one-line failures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import explain as explain_cli
import predict as predict_cli
import training.experiment as experiment
from inference.prediction import ensemble_curve, fold_curve
from models.survival import risk_from_logits, survival_from_logits
from models.towers.tiny import ensure_demo_text_tower
from tests.survival_toy import PROMPTS, make_survival_toy_data
from training.config import parse_config
from training.tasks import task_for
from utils.errors import InputError
from utils.run_logging import RunLog

N_BINS = 4


def _train(data, results, model_type: str, *extra) -> object:
    argv = [*data["argv"], "--results_dir", str(results), "--model_type", model_type, "--max_epochs", "1"]
    config = parse_config([*argv, "--k_end", "2", *extra])
    experiment.run_experiment(config, RunLog(quiet=True))
    return task_for(config).run_dir(config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A HiLa-style run (tiny tower) and an ABMIL_surv run, two folds each, on the toy survival task."""
    root = tmp_path_factory.mktemp("survpredict")
    data = make_survival_toy_data(root / "in", n_cases=15, dim=64)
    tower = str(ensure_demo_text_tower())
    hila = _train(data, root / "r", "HiLa", "--text_tower", tower, "--num-context-tokens", "4")
    abmil = _train(data, root / "r", "ABMIL_surv")
    return {"data": data, "hila": hila, "abmil": abmil, "root": root}


def _predict(argv) -> int:
    return predict_cli.main([str(a) for a in argv])


def test_ensemble_is_the_mean_curve_and_its_risk():
    logits = {0: torch.tensor([[0.3, -1.0, 2.0, 0.1]]), 1: torch.tensor([[-2.0, 0.5, 0.0, 1.5]])}
    curves = {k: fold_curve(v, k) for k, v in logits.items()}
    for k in logits:
        assert curves[k] == pytest.approx(survival_from_logits(logits[k])[0].numpy(), abs=1e-7)
    mean, risk = ensemble_curve(curves)
    assert mean == pytest.approx((curves[0] + curves[1]) / 2)
    assert risk == pytest.approx(-mean.sum())
    folds_risk = [float(risk_from_logits(v)[0]) for v in logits.values()]
    assert risk == pytest.approx(np.mean(folds_risk), abs=1e-6)  # -sum_b is linear: mean of fold risks
    with pytest.raises(InputError, match="fold 3: the model's survival output is not finite"):
        fold_curve(torch.tensor([[0.0, float("nan"), 0.0, 0.0]]), 3)


def test_predict_survival_run_writes_risk_and_curves_with_plan_heatmaps(runs, tmp_path, capsys):
    run = runs["hila"]
    out = tmp_path / "pred"
    slides = ["slide_00_0", "slide_01_0", "no_such_slide"]
    assert _predict(["--run", run, "--slides", *slides, "--out", out, "--heatmaps", "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "failed no_such_slide: " in captured.err and "slide_00_0: risk " in captured.out
    frame = pd.read_csv(out / "predictions.csv")
    bins = [f"survival_{b}" for b in range(N_BINS)]
    assert list(frame.columns[: 2 + N_BINS]) == ["slide_id", "risk", *bins]
    assert list(frame["slide_id"]) == slides[:2]
    assert frame["folds"].tolist() == ["0 1", "0 1"]
    for _, row in frame.iterrows():
        curves = [row[[f"fold_{k}_survival_{b}" for b in range(N_BINS)]].to_numpy(float) for k in (0, 1)]
        assert np.all(np.diff(curves[0]) <= 0) and np.all((curves[0] > 0) & (curves[0] < 1))
        assert row[bins].to_numpy(float) == pytest.approx((curves[0] + curves[1]) / 2)
        assert row["risk"] == pytest.approx(-row[bins].to_numpy(float).sum())
        assert row["fold_0_risk"] == pytest.approx(-curves[0].sum())
    # the HiLa-style transport plans: one map per attribute and level, each map summing to one
    folder = out / "heatmaps" / "slide_00_0" / "fold_1"
    with np.load(folder / "scores.npz") as saved:
        keys = sorted(str(s) for s in saved["scales"])
        assert keys == sorted(f"{s}_attr{k}" for s in ("5x", "20x") for k in range(len(PROMPTS)))
        for key in keys:
            assert saved[f"values_{key}"].sum() == pytest.approx(1.0, abs=1e-5)
            assert (folder / f"heatmap_{key}.png").read_bytes()[:4] == b"\x89PNG"
        meta = json.loads(str(saved["meta"]))
    assert meta["attributes"] == list(PROMPTS) and meta["scores"] == "transport plan"
    assert meta["risk"] == pytest.approx(frame.loc[0, "risk"])
    # a rerun reuses both rows (inputs and checkpoints unchanged)
    assert (
        _predict(["--run", run, "--slides", *slides[:2], "--out", out, "--heatmaps", "--device", "cpu"]) == 0
    )
    assert "reused slide_00_0" in capsys.readouterr().out


def test_predict_matches_the_runs_own_test_predictions(runs, tmp_path):
    """A case with one slide predicted by one fold equals the fold's test prediction of that case."""
    run = runs["hila"]
    tested = pd.read_csv(run / "fold_0" / "predictions_test.csv")
    single = tested[~tested["slides"].str.contains(";")].iloc[0]
    out = tmp_path / "one"
    assert _predict(["--run", run, "--slides", single["slides"], "--folds", "0", "--out", out]) == 0
    row = pd.read_csv(out / "predictions.csv").iloc[0]
    assert row["risk"] == pytest.approx(single["risk"], abs=1e-5)
    for b in range(N_BINS):
        assert row[f"survival_{b}"] == pytest.approx(single[f"survival_{b}"], abs=1e-5)


def test_a_case_id_is_the_case_bag_as_training_built_it(runs, tmp_path, capsys):
    """A case with two slides, named by its id, is one row equal to its fold's test prediction."""
    run = runs["hila"]
    for fold in (0, 1):
        tested = pd.read_csv(run / f"fold_{fold}" / "predictions_test.csv")
        multi = tested[tested["slides"].str.contains(";")]
        if len(multi):
            break
    case = multi.iloc[0]
    out = tmp_path / "case"
    assert _predict(["--run", run, "--slides", case["case_id"], "--folds", fold, "--out", out]) == 0
    row = pd.read_csv(out / "predictions.csv").iloc[0]
    assert row["slide_id"] == case["case_id"] and row["kind"] == "case"
    assert row["risk"] == pytest.approx(case["risk"], abs=1e-5)
    assert row["survival_3"] == pytest.approx(case["survival_3"], abs=1e-5)
    capsys.readouterr()
    assert _predict(["--run", run, "--slides", case["case_id"], "--out", tmp_path / "h", "--heatmaps"]) == 1
    assert "heatmaps are drawn per slide" in capsys.readouterr().err


def test_attention_baseline_heatmaps(runs, tmp_path):
    out = tmp_path / "att"
    assert _predict(["--run", runs["abmil"], "--slides", "slide_02_0", "--out", out, "--heatmaps"]) == 0
    folder = out / "heatmaps" / "slide_02_0" / "fold_0"
    with np.load(folder / "scores.npz") as saved:
        assert sorted(str(s) for s in saved["scales"]) == ["20x", "5x"]
        assert saved["values_20x"].sum() == pytest.approx(1.0, abs=1e-5)  # softmax attention
        assert saved["values_5x"].sum() == pytest.approx(1.0, abs=1e-5)  # children's mass per 5x patch


def test_non_finite_output_fails_that_slide_only(runs, tmp_path, monkeypatch, capsys):
    import inference.prediction as prediction

    real = prediction.forward_bag

    def poisoned(model, bag, cache, device, amp):
        out = real(model, bag, cache, device, amp)
        if bag.slide_id == "slide_03_0":
            out.logits = torch.full_like(out.logits, float("nan"))
        return out

    monkeypatch.setattr(prediction, "forward_bag", poisoned)
    out = tmp_path / "nan"
    assert _predict(["--run", runs["abmil"], "--slides", "slide_03_0", "slide_04_0", "--out", out]) == 1
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("failed slide_03_0"))
    assert "survival output is not finite" in line
    assert list(pd.read_csv(out / "predictions.csv")["slide_id"]) == ["slide_04_0"]


def test_explain_survival_run(runs, tmp_path, capsys):
    out = tmp_path / "ex"
    argv = ["--checkpoint", runs["hila"], "--slide", "slide_00_1", "--fold", "1", "--out", out, "--top", "3"]
    assert explain_cli.main([str(a) for a in argv]) == 0
    assert "slide slide_00_1: risk " in capsys.readouterr().out
    record = json.loads((out / "explanation.json").read_text())
    assert record["attributes"] == list(PROMPTS) and record["scores"] == "transport plan"
    assert len(record["survival"]) == N_BINS == len(record["bins_months"]) == len(record["hazards"])
    assert record["risk"] == pytest.approx(-sum(record["survival"]))
    expected = np.cumprod(1 - np.asarray(record["hazards"]))
    assert record["survival"] == pytest.approx(expected.tolist(), abs=1e-6)
    assert set(record["transport_cost"]) == {"5x", "20x"} and len(record["transport_cost"]["5x"]) == 3
    with np.load(out / "scores.npz") as saved:
        sizes = {key: len(saved[f"values_{key}"]) for key in record["maps"]}
    for key, item in record["maps"].items():  # the --top highest shares, in order
        assert len(item["top_patches"]) == min(3, sizes[key])
        shares = [p["score"] for p in item["top_patches"]]
        assert shares == sorted(shares, reverse=True)
    assert (out / "heatmap_20x_attr2.png").is_file() and (out / "scores.npz").is_file()
    # the same numbers as predict.py with that fold
    pred = tmp_path / "p"
    assert _predict(["--run", runs["hila"], "--slides", "slide_00_1", "--folds", "1", "--out", pred]) == 0
    assert pd.read_csv(pred / "predictions.csv").loc[0, "risk"] == pytest.approx(record["risk"], abs=1e-6)


def test_explain_attention_survival_baseline(runs, tmp_path):
    out = tmp_path / "ex"
    argv = ["--checkpoint", runs["abmil"], "--slide", "slide_05_0", "--out", out]
    assert explain_cli.main([str(a) for a in argv]) == 0
    record = json.loads((out / "explanation.json").read_text())
    assert record["scores"] == "attention" and sorted(record["maps"]) == ["20x", "5x"]


def test_explain_refuses_a_survival_model_without_patch_scores(runs, tmp_path):
    config = json.loads((runs["abmil"] / "config.json").read_text())
    config["config"]["model_type"] = "mean_pool_surv"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config))
    (run / "s_0_checkpoint.pt").write_bytes((runs["abmil"] / "s_0_checkpoint.pt").read_bytes())
    with pytest.raises(InputError, match="'mean_pool_surv' has no per-patch scores"):
        explain_cli.main(["--checkpoint", str(run), "--slide", "slide_05_0"])
    with pytest.raises(InputError, match="--heatmaps: model_type mean_pool_surv has no per-patch scores"):
        _predict(["--run", run, "--slides", "slide_05_0", "--heatmaps"])


def test_load_run_of_a_survival_run_uses_its_recorded_bins(runs):
    from datasets.survival import SurvivalTaskSpec
    from inference.runs import first_test_slide, load_run, load_slide
    from models.hila.model import HiLaSurvival

    model, task, config = load_run(runs["hila"], fold=1)
    saved = json.loads((runs["hila"] / "config.json").read_text())["survival"]
    assert isinstance(model, HiLaSurvival) and not model.training
    assert isinstance(task, SurvivalTaskSpec) and list(task.bin_cuts) == saved["bin_cuts_months"]
    slide = first_test_slide(config, task, 1)
    tested = pd.read_csv(runs["hila"] / "fold_1" / "predictions_test.csv")
    assert slide in {s for cell in tested["slides"] for s in cell.split(";")}
    bag = load_slide(config, task, slide)
    assert bag.label == -1 and bag.meta["level0_mag"] == 40


def test_a_cox_run_writes_risks_only(runs, tmp_path):
    """A Cox run's curves carry only the ranking (docs/survival.md §5.2): no survival columns."""
    from inference.prediction import survival_columns

    data = runs["data"]
    argv = [*data["argv"], "--results_dir", str(tmp_path / "r"), "--max_epochs", "1", "--k_end", "1"]
    config = parse_config([*argv, "--surv_loss", "cox"])
    experiment.run_experiment(config, RunLog(quiet=True))
    out = tmp_path / "cox"
    assert _predict(["--run", task_for(config).run_dir(config), "--slides", "slide_06_0", "--out", out]) == 0
    frame = pd.read_csv(out / "predictions.csv")
    assert list(frame.columns) == survival_columns(N_BINS, [0], curves=False)
    assert list(frame.columns[:3]) == ["slide_id", "risk", "fold_0_risk"]
    assert frame.loc[0, "risk"] == pytest.approx(frame.loc[0, "fold_0_risk"])
