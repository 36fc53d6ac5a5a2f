"""Survival runs through the shared experiment stages: results layout, KM plot, resume, one-line errors."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch

import training.experiment as experiment
from datasets.splits import Split, write_split
from datasets.survival import survival_split_path
from models.base import ModelOutput
from models.towers.tiny import ensure_demo_text_tower
from tests.survival_toy import TASK, make_survival_toy_data
from tests.toy_task import make_toy_data
from training.config import parse_config
from training.loop import LoopOptions
from training.survival.losses import build_survival_loss, make_targets
from training.survival.metrics import concordance_index
from training.tasks import kind_defaults, task_for
from training.tasks.survival import train_one_epoch
from utils.errors import InputError
from utils.run_logging import RunLog


def _config(data, results, *extra):
    return parse_config([*data["argv"], "--results_dir", str(results), *extra])


def _run(config):
    return experiment.run_experiment(config, RunLog(quiet=True))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("surv")
    data = make_survival_toy_data(root / "in")
    config = _config(data, root / "results")
    data["rows"] = _run(config)
    data["run_dir"] = task_for(config).run_dir(config)
    data["tmp"] = root
    return data


def test_survival_run_writes_the_results_layout(toy):
    run_dir = toy["run_dir"]
    assert run_dir.parts[-2:] == ("survival", f"{TASK}_toyfe_mean_pool_surv_survival_s1")
    results = pd.read_csv(run_dir / "results.csv")
    assert list(results.columns) == ["metric", "test_cindex", "test_ibs", "val_cindex", "val_ibs"]
    assert list(results["metric"]) == ["mean", "std"]
    summary = pd.read_csv(run_dir / "summary.csv")
    assert list(summary["folds"]) == [0, 1, 2]
    assert results.loc[0, "test_cindex"] == pytest.approx(summary["test_cindex"].mean())
    assert (run_dir / "km_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for fold, split in enumerate(toy["splits"]):
        predictions = pd.read_csv(run_dir / f"fold_{fold}" / "predictions_test.csv")
        assert sorted(predictions["case_id"]) == sorted(split.test)
        assert list(predictions.columns[:6]) == [
            "case_id",
            "slides",
            "survival_months",
            "censorship",
            "bin",
            "risk",
        ]
        hazards = predictions[[f"hazard_{b}" for b in range(4)]].to_numpy()
        survival = predictions[[f"survival_{b}" for b in range(4)]].to_numpy()
        assert ((hazards > 0) & (hazards < 1)).all()
        assert predictions["risk"].to_numpy() == pytest.approx(-survival.sum(1), abs=1e-5)
        assert (run_dir / f"s_{fold}_checkpoint.pt").is_file()
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["task_kind"] == "survival" and saved["survival"]["n_bins"] == 4
    assert len(saved["survival"]["bin_cuts_months"]) == 3 and saved["survival"]["loss"] == "nll"
    assert "test c-index" in (run_dir / "log.txt").read_text()


def test_case_with_two_slides_is_one_bag(toy):
    tested = pd.concat(pd.read_csv(toy["run_dir"] / f"fold_{k}" / "predictions_test.csv") for k in range(3))
    assert sorted(tested["case_id"]) == [f"case_{i:02d}" for i in range(24)]  # every case tested once
    slides = dict(zip(tested["case_id"], tested["slides"]))
    assert slides["case_00"] == "slide_00_0;slide_00_1" and slides["case_01"] == "slide_01_0"
    inputs = json.loads((toy["run_dir"] / "fold_0" / "inputs.json").read_text())
    assert inputs["labels"]["n_bins"] == 4 and "slide_00_1" in inputs["csv_rows"]


def test_run_writes_the_field_metrics_through_the_evaluation_tool(toy, tmp_path):
    import evaluate_survival

    run_dir = toy["run_dir"]
    for fold, split in enumerate(toy["splits"]):
        train = pd.read_csv(run_dir / f"fold_{fold}" / "predictions_train.csv")
        assert sorted(train["case_id"]) == sorted(split.train) and train["risk"].notna().all()
    table = pd.read_csv(run_dir / "survival_metrics.csv", dtype=str, keep_default_na=False)
    assert list(table["fold"]) == ["0", "1", "2", "mean", "std", "pooled"]
    assert "" not in table.drop(columns="note").to_numpy()  # undefined is nan with a note, never blank
    summary = pd.read_csv(run_dir / "summary.csv")
    assert table["c_index"][:3].astype(float).to_numpy() == pytest.approx(summary["test_cindex"].to_numpy())
    assert "pooled" in (run_dir / "log.txt").read_text()
    # the same code from the command line on the run folder gives the same file
    assert evaluate_survival.main([str(run_dir), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "survival_metrics.csv").read_text() == (run_dir / "survival_metrics.csv").read_text()


def test_rerun_reuses_folds_and_a_changed_time_retrains(toy, monkeypatch):
    config = _config(toy, toy["tmp"] / "results")
    before = (toy["run_dir"] / "results.csv").read_bytes()
    trained = []
    original = experiment.run_fold

    def counting(run, fold, log, model=None):
        trained.append(fold)
        return original(run, fold, log, model)

    monkeypatch.setattr(experiment, "run_fold", counting)
    _run(config)
    assert trained == [] and (toy["run_dir"] / "results.csv").read_bytes() == before
    assert "finished in an earlier run with the same inputs" in (toy["run_dir"] / "log.txt").read_text()
    # a case's survival time changes the bins (all folds) -> every fold is trained again
    csv = pd.read_csv(toy["csv"])
    original_csv = toy["csv"].read_bytes()
    try:
        event = csv.index[csv["censorship"] == 0][0]
        csv.loc[csv["case_id"] == csv.loc[event, "case_id"], "survival_months"] += 0.5
        csv.to_csv(toy["csv"], index=False)
        _run(config)
        assert trained == [0, 1, 2]
    finally:
        toy["csv"].write_bytes(original_csv)


def test_cox_loss_runs(toy):
    config = _config(toy, toy["tmp"] / "cox", "--surv_loss", "cox", "--surv_batch", "4", "--k_end", "1")
    rows = _run(config)
    assert len(rows) == 1 and 0.0 <= rows[0]["test_cindex"] <= 1.0
    run_dir = task_for(config).run_dir(config)
    assert (run_dir / "results_partial_0_0.csv").is_file() and (run_dir / "km_test_partial_0_0.png").is_file()
    table = pd.read_csv(run_dir / "survival_metrics_partial_0_0.csv", dtype=str, keep_default_na=False)
    assert list(table["fold"]) == ["0", "mean", "std", "pooled"]
    assert (
        table["ibs"][0] == "nan"
        and "Cox run: its per-bin curves are not survival estimates" in table["note"][0]
    )


# ------------------------------------------------------------------------------------------- errors
def _error(config) -> str:
    with pytest.raises(InputError) as err:
        _run(config)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_classification_model_on_a_survival_task_is_refused(toy):
    message = _error(_config(toy, toy["tmp"] / "e1", "--model_type", "ABMIL"))
    assert "not a survival model" in message and "HiLa" in message and "ABMIL_surv" in message


def test_survival_model_on_a_classification_task_is_refused(tmp_path):
    data = make_toy_data(tmp_path / "cls")
    config = parse_config([*data["argv"], "--results_dir", str(tmp_path / "r"), "--model_type", "ABMIL_surv"])
    assert "predicts survival" in _error(config)


def test_cox_needs_more_than_one_case_per_step(toy):
    assert "--surv_batch >= 2" in _error(
        _config(toy, toy["tmp"] / "e2", "--surv_loss", "cox", "--surv_batch", "1")
    )


def test_cases_without_slides_are_named(tmp_path):
    data = make_survival_toy_data(tmp_path / "in", n_cases=15)
    data["layout"].hier_file("slide_03_0").unlink()  # case_03's only slide
    data["layout"].low_file("slide_05_1").unlink()  # one of case_05's two slides
    message = _error(_config(data, tmp_path / "r"))
    assert "features missing for 2 of" in message and "cases left without any slide: case_03" in message
    message = _error(_config(data, tmp_path / "r", "--skip-missing"))
    assert "case(s) case_03 have no slide with features" in message


def test_skip_missing_keeps_a_case_with_one_slide_left(tmp_path):
    data = make_survival_toy_data(tmp_path / "in", n_cases=15)
    data["layout"].low_file("slide_05_1").unlink()
    config = _config(data, tmp_path / "r", "--skip-missing", "--max_epochs", "1", "--k_end", "1")
    _run(config)
    run_dir = task_for(config).run_dir(config)
    assert "dropping 1 slide(s) without features" in (run_dir / "log.txt").read_text()


def test_split_errors(tmp_path):
    data = make_survival_toy_data(tmp_path / "in", n_cases=15)
    path = survival_split_path(tmp_path / "in" / "splits", TASK, 1)
    write_split(path, Split(["case_01", "nobody"], ["case_02"], ["case_03"]))
    assert "1 case id(s) not in" in _error(_config(data, tmp_path / "r"))
    write_split(path, Split(["case_01"], ["case_02"], ["case_02"]))
    assert "case(s) case_02 in both val and test" in _error(_config(data, tmp_path / "r"))
    write_split(path, Split(["case_01"], ["case_02"], ["case_01"]))
    assert "case case_01 is in train and in val/test" in _error(_config(data, tmp_path / "r"))
    message = _error(_config(data, tmp_path / "r", "--splits_root", str(tmp_path / "none")))
    assert "create_splits.py --survival" in message


def test_bad_csv_row_stops_before_any_output(tmp_path):
    data = make_survival_toy_data(tmp_path / "in", n_cases=15)
    text = data["csv"].read_text().splitlines()
    fields = text[3].split(",")
    fields[3] = "2"
    text[3] = ",".join(fields)
    data["csv"].write_text("\n".join(text) + "\n")
    assert "censorship must be 0 (event) or 1 (censored)" in _error(_config(data, tmp_path / "r"))
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------- HiLa
def test_hila_run_on_the_toy_task(tmp_path):
    data = make_survival_toy_data(tmp_path / "in", n_cases=15, dim=64)
    tower = str(ensure_demo_text_tower())
    config = _config(
        data, tmp_path / "r", "--model_type", "HiLa", "--text_tower", tower, "--num-context-tokens", "4",
        "--max_epochs", "1", "--k_end", "1",
    )  # fmt: skip
    rows = _run(config)
    run_dir = task_for(config).run_dir(config)
    log = (run_dir / "log.txt").read_text()
    assert "prompts:" in log and "HiLa" in log and len(rows) == 1
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["prompt_file"].endswith(f"HiLa/{TASK}.json") and saved["config"]["mcl_lambda"] == 0.1


# ------------------------------------------------------------------------------------------- the field's protocol
def test_field_train_val_splits_train_and_report(tmp_path):
    """The field's ``,train,val`` files: 2 of 3 groups train, the val part is the evaluation set (last
    epoch), no test predictions; the training cases' risks are written for a KM threshold."""
    data = make_survival_toy_data(tmp_path / "in", test_part=False)
    header = (
        (tmp_path / "in" / "splits" / TASK / f"{TASK}_survival" / "splits_0.csv").read_text().splitlines()[0]
    )
    assert header == ",train,val"
    config = _config(data, tmp_path / "r")
    rows = _run(config)
    run_dir = task_for(config).run_dir(config)
    results = pd.read_csv(run_dir / "results.csv")
    assert list(results.columns) == ["metric", "test_cindex", "test_ibs", "val_cindex", "val_ibs"]
    for fold, (row, split) in enumerate(zip(rows, data["splits"])):
        assert row["evaluated"] == "val" and row["best_epoch"] == row["epochs_run"] - 1 == 1
        assert row["test_cindex"] == row["val_cindex"] and row["test_ibs_km"] == row["val_ibs_km"]
        assert len(split.train) == 16 and len(split.val) == 8 and split.test == []
        assert not (run_dir / f"fold_{fold}" / "predictions_test.csv").exists()
        val = pd.read_csv(run_dir / f"fold_{fold}" / "predictions_val.csv")
        train = pd.read_csv(run_dir / f"fold_{fold}" / "predictions_train.csv")
        assert sorted(val["case_id"]) == sorted(split.val) and sorted(train["case_id"]) == sorted(split.train)
        assert row["val_cindex"] == pytest.approx(
            concordance_index(val["survival_months"], val["censorship"], val["risk"])
        )
    evaluated = [c for s in data["splits"] for c in s.val]
    assert sorted(evaluated) == [f"case_{i:02d}" for i in range(24)]
    assert "note" in pd.read_csv(run_dir / "summary.csv").columns
    log = (run_dir / "log.txt").read_text()
    assert "val c-index" in log and "IBS of train KM" in log
    saved = json.loads((run_dir / "config.json").read_text())
    grid = saved["survival"]["ibs_grid_months"]
    assert grid[0] < grid[1] <= saved["survival"]["bin_cuts_months"][-1] and grid[2] == 20
    # the field's table of the run (training/survival/evaluation.py) scores the val parts on the same grid
    table = pd.read_csv(run_dir / "survival_metrics.csv").set_index("fold")
    for fold, row in enumerate(rows):
        assert table.loc[str(fold), "c_index"] == pytest.approx(row["test_cindex"])
        assert table.loc[str(fold), "ibs"] == pytest.approx(row["test_ibs"])
        assert table.loc[str(fold), "ibs_km"] == pytest.approx(row["test_ibs_km"])
    _run(config)  # a rerun reuses the train/val folds (no test predictions needed)
    assert "fold 2: finished in an earlier run with the same inputs" in (run_dir / "log.txt").read_text()


def test_survival_runs_default_to_the_published_settings(toy):
    argv = [*toy["argv"], "--results_dir", "r"]
    drop = {"--max_epochs", "--lr"}
    argv = [a for i, a in enumerate(argv) if a not in drop and argv[i - 1] not in drop]
    config = parse_config(argv, kind_defaults=kind_defaults)
    assert (config.lr, config.reg, config.max_epochs, config.gc) == (2e-4, 1e-5, 20, 32)
    assert config.weighted_sample and config.surv_alpha == 0.0 and not config.early_stopping
    given = parse_config(
        [*argv, "--gc", "4", "--no-weighted_sample", "--surv_alpha", "0.15", "--lr", "1e-3"],
        kind_defaults=kind_defaults,
    )
    assert (given.gc, given.weighted_sample, given.surv_alpha, given.lr) == (4, False, 0.15, 1e-3)
    assert parse_config([*argv, "--surv_loss", "cox"], kind_defaults=kind_defaults).gc == 1
    classification = make_toy_data(toy["tmp"] / "cls")
    plain = parse_config(classification["argv"], kind_defaults=kind_defaults)
    assert plain == parse_config(classification["argv"])  # classification defaults unchanged


def test_weighted_sampling_balances_bin_and_censorship_groups(toy):
    config = _config(toy, toy["tmp"] / "w")
    task = task_for(config).prepare(config, RunLog(quiet=True))
    idx = task.data.folds[0].train
    labels = task.sampling_labels(idx)
    cases = [task.data.cases[i] for i in idx]
    bins = [task.data.dataset.labels[i] for i in idx]
    assert labels == [2 * b + c.censorship for b, c in zip(bins, cases)]


class _Bag:
    def __init__(self, x, label, months, censorship):
        self.x, self.label, self.months, self.censorship = x, label, months, censorship
        self.slide_id = f"case_{id(self)}"  # a case bag names its case (the divergence line uses it)

    def to(self, device):
        return self


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 4)

    def forward(self, bag):
        return ModelOutput(self.layer(bag.x.reshape(1, 3)), torch.zeros(()))


@pytest.mark.parametrize("loss_name, batch, gc", [("nll", 1, 2), ("nll", 1, 3), ("cox", 2, 2)])
def test_gradient_accumulation_by_hand(loss_name, batch, gc):
    """``batch`` cases per loss, ``gc`` losses per step: each step follows the mean loss of its cases
    (NLL) or of its loss batches (Cox); the shorter last step is averaged over its own cases."""
    g = torch.Generator().manual_seed(0)
    bags = [
        _Bag(torch.randn(3, generator=g), b, m, c)
        for b, m, c in [(0, 1.0, 0), (2, 7.0, 1), (1, 4.0, 0), (3, 9.0, 0), (1, 3.0, 1)]
    ]
    model = _Linear()
    manual = copy.deepcopy(model)
    loss_fn = build_survival_loss(loss_name, 0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    train_one_epoch(
        model,
        bags.__getitem__,
        range(5),
        optimizer,
        loss_fn,
        torch.device("cpu"),
        LoopOptions(prefetch_depth=0),
        batch,
        gc=gc,
    )
    step = batch * gc
    for start in range(0, 5, step):
        group = bags[start : start + step]
        losses = []
        for b in range(0, len(group), batch):
            part = group[b : b + batch]
            logits = torch.cat([manual(bag).logits for bag in part])
            targets = make_targets(
                [x.label for x in part], [x.months for x in part], [x.censorship for x in part]
            )
            losses.append(loss_fn(logits, targets) * (len(part) if loss_name == "nll" else 1))
        total = sum(losses) / (len(group) if loss_name == "nll" else len(losses))
        grads = torch.autograd.grad(total, list(manual.parameters()), allow_unused=True)
        with torch.no_grad():
            for p, grad in zip(manual.parameters(), grads):
                if grad is not None:
                    p -= 0.5 * grad
    for got, want in zip(model.parameters(), manual.parameters()):
        assert torch.allclose(got, want, atol=1e-6)


def test_a_fold_without_events_is_said_at_split_time_and_in_the_results(tmp_path):
    data = make_survival_toy_data(tmp_path / "in", test_part=False)
    table = pd.read_csv(data["csv"]).drop_duplicates("case_id")
    censored = sorted(table.loc[table["censorship"] == 1, "case_id"])[:3]
    train = sorted(set(table["case_id"]) - set(censored))
    write_split(
        survival_split_path(tmp_path / "in" / "splits", TASK, 1), Split(train, censored), ("train", "val")
    )
    config = _config(data, tmp_path / "r", "--max_epochs", "1")
    rows = _run(config)
    run_dir = task_for(config).run_dir(config)
    reason = "no event among its 3 case(s)"
    assert rows[1]["notes"][0] == f"val c-index undefined: {reason}"
    assert not any("c-index" in note for note in rows[0]["notes"])
    summary = pd.read_csv(run_dir / "summary.csv", keep_default_na=False)
    assert summary.loc[1, "note"].startswith(f"val c-index undefined: {reason}")
    assert summary.loc[1, "test_cindex"] == summary.loc[1, "val_cindex"] == "nan"  # said, not a blank cell
    results = pd.read_csv(run_dir / "results.csv").set_index("metric")
    defined = [rows[0]["test_cindex"], rows[2]["test_cindex"]]
    assert results.loc["mean", "test_cindex"] == pytest.approx(sum(defined) / 2)  # over the defined folds
    log = (run_dir / "log.txt").read_text()
    assert f"fold 1: val part has {reason} (c-index undefined)" in log  # when the splits are read
    assert f"fold 1: val c-index undefined: {reason}" in log  # under the final table


def test_cox_runs_score_breslow_curves(toy):
    config = _config(toy, toy["tmp"] / "cox2", "--surv_loss", "cox", "--surv_batch", "4", "--k_end", "1")
    (row,) = _run(config)
    assert 0.0 < row["test_ibs"] < 1.0 and 0.0 < row["val_ibs"] < 1.0  # Breslow curves from the training pass
    assert row["notes"] == []
    log = (task_for(config).run_dir(config) / "log.txt").read_text()
    epoch_lines = [line for line in log.splitlines() if line.lstrip().startswith("epoch")]
    assert epoch_lines and not any(" ibs " in line for line in epoch_lines)  # no baseline during training
