"""Nested cross-validation (``--cv nested``): case-level stratified folds, no leakage from the outer test
part into the inner folds, the choice rule, outputs, resume and the one-line refusals."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

import training.experiment as experiment
import training.nested as nested
from datasets.splits import cross_validation_splits, stratified_case_folds
from tests.toy_task import make_toy_data, toy_config
from training.config import validate_config
from training.tasks.survival import SurvivalTask
from utils.errors import InputError
from utils.run_logging import RunLog

N_SLIDES = 16


def _case_of(i: int) -> str:
    """Slides 0..7 pair up into two-slide cases of one label (0+2, 1+3, 4+6, 5+7); the rest are alone."""
    return f"case_{(i // 4) * 2 + i % 2:02d}" if i < 8 else f"case_{i:02d}"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy task with 16 slides in 12 cases (4 with two slides), 6 cases per class."""
    root = tmp_path_factory.mktemp("nested")
    data = make_toy_data(root / "in", k=3, n_slides=N_SLIDES)
    csv = root / "in" / "dataset_csv" / "toy.csv"
    frame = pd.read_csv(csv)
    frame["case_id"] = [_case_of(i) for i in range(N_SLIDES)]
    frame.to_csv(csv, index=False)
    data["case_of"] = dict(zip(frame.slide_id, frame.case_id))
    data["frame"] = frame
    data["tmp"] = root
    return data


def _nested(toy, results, **overrides):
    values = {"cv": "nested", "k": 3, "inner_k": 2, "max_epochs": 2, **overrides}
    return toy_config(toy, results, **values)


def _spy_units(monkeypatch) -> list[tuple[int, dict]]:
    """Record (outer fold of the unit's label, slide ids of its train/val parts) of every trained inner unit."""
    trained = []
    original = nested.train_inner_unit

    def wrapped(run, log, label):
        outer = int(label.split()[1])
        trained.append((outer, run.task.data.fold_split(nested.INNER_KEY)))
        return original(run, log, label)

    monkeypatch.setattr(nested, "train_inner_unit", wrapped)
    return trained


def _test_slides(run_dir, fold) -> list[str]:
    return pd.read_csv(run_dir / f"fold_{fold}" / "predictions_test.csv").slide_id.astype(str).tolist()


# ---------------------------------------------------------------------------------------- the folds
def test_case_folds_partition_items_keep_cases_whole_and_stratify():
    cases = [(f"c{i}", "AB"[i % 2], [f"c{i}_s{j}" for j in range(1 + (i % 3 == 0))]) for i in range(20)]
    folds = stratified_case_folds(cases, 4, seed=7)
    items = [s for fold in folds for s in fold]
    assert sorted(items) == sorted(s for _, _, slides in cases for s in slides)  # each item exactly once
    fold_of = {s: f for f, fold in enumerate(folds) for s in fold}
    for _, _, slides in cases:
        assert len({fold_of[s] for s in slides}) == 1  # a case is never split
    for label in "AB":
        counts = [sum(1 for c, lab, sl in cases if lab == label and fold_of[sl[0]] == f) for f in range(4)]
        assert max(counts) - min(counts) <= 1, counts  # each label's cases spread evenly
    assert stratified_case_folds(list(reversed(cases)), 4, seed=7) == folds  # input order does not matter
    assert stratified_case_folds(cases, 4, seed=8) != folds
    assert stratified_case_folds(cases, 4, seed=7, salt=(1,)) != folds


def test_case_folds_refuse_too_few_cases():
    with pytest.raises(InputError, match="2 case.*cannot fill 3 cross-validation folds"):
        stratified_case_folds([("a", 0, [1]), ("b", 1, [2])], 3, seed=1)


def test_outer_splits_test_parts_partition_the_slides_by_case(toy):
    splits = cross_validation_splits(toy["frame"], 3, seed=1)
    tests = [s for split in splits for s in split.test]
    assert Counter(tests) == Counter(toy["slides"])
    case_folds = Counter((toy["case_of"][s], f) for f, split in enumerate(splits) for s in split.test)
    assert len({case for case, _ in case_folds}) == len(case_folds)  # every case in one test part only
    for split in splits:
        assert not split.val and sorted(split.train + split.test) == sorted(toy["slides"])
        assert set(split.train).isdisjoint(split.test)


# ------------------------------------------------------------------------------------ the choice rule
def test_choice_lowest_mean_metric_then_loss_then_earliest():
    settings = [nested.Setting(0.1, 0.0), nested.Setting(0.2, 0.0)]
    nan = float("nan")
    scores = {
        (0, 0): [{"error": nan, "loss": 1.0}, {"error": 0.25, "loss": 0.9}, {"error": 0.25, "loss": 0.7}],
        (0, 1): [{"error": 0.0, "loss": 1.0}, {"error": 0.25, "loss": 0.9}, {"error": 0.25, "loss": 0.7}],
        (1, 0): [{"error": 0.5, "loss": 2.0}, {"error": 0.5, "loss": 0.1}, {"error": 0.5, "loss": 0.1}],
        (1, 1): [{"error": 0.0, "loss": 2.0}, {"error": 0.0, "loss": 0.1}, {"error": 0.0, "loss": 0.1}],
    }
    table = nested.inner_table(settings, scores, "error")
    # a NaN counts as the worst value (setting 0, epoch 0 is not a mean error of 0); five rows tie at
    # mean error .25, the lowest mean loss (.1) is setting 1 at epochs 1 and 2: the earlier one wins
    assert table.mean_error.tolist()[0] == float("inf")
    assert table[table.chosen == 1][["setting", "epoch"]].values.tolist() == [[1, 1]]
    by_loss = nested.inner_table(settings, scores, "loss")
    assert by_loss[by_loss.chosen == 1][["setting", "epoch"]].values.tolist() == [[1, 1]]
    same = nested.inner_table(settings, {(g, j): scores[(0, 1)] for g in (0, 1) for j in (0, 1)}, "error")
    assert same[same.chosen == 1][["setting", "epoch"]].values.tolist() == [[0, 0]]


def test_grid_is_the_declared_one(toy):
    plain = _nested(toy, "unused", lr=0.01, reg=0.0)
    assert nested.inner_settings(plain) == [nested.Setting(0.01, 0.0)]
    grid = nested.inner_settings(_nested(toy, "unused", lr=0.03, inner_grid=True))
    assert [(round(s.lr, 6), s.reg) for s in grid] == [
        (0.01, 1e-5), (0.01, 1e-3), (0.03, 1e-5), (0.03, 1e-3), (0.09, 1e-5), (0.09, 1e-3)
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------- a run
@pytest.fixture(scope="module")
def reference(toy):
    """One uninterrupted nested run (every inner unit recorded by a spy)."""
    with pytest.MonkeyPatch.context() as mp:
        units = _spy_units(mp)
        config = _nested(toy, toy["tmp"] / "reference")
        rows = experiment.run_experiment(config, RunLog(quiet=True))
    return {"config": config, "rows": rows, "units": units, "run_dir": config.run_dir}


def test_run_writes_results_over_outer_folds_partitioning_by_case(toy, reference):
    run_dir = reference["run_dir"]
    assert run_dir.parent.name == "nested3x2" and run_dir.name == "toy_toyfe_test_meanpool_nested3x2_s1"
    results = pd.read_csv(run_dir / "results.csv")
    summary = pd.read_csv(run_dir / "summary.csv")
    assert summary.folds.tolist() == [0, 1, 2]
    assert results.test_acc.tolist() == pytest.approx([summary.test_acc.mean(), summary.test_acc.std(ddof=0)])
    tested = {fold: _test_slides(run_dir, fold) for fold in range(3)}
    assert Counter(s for slides in tested.values() for s in slides) == Counter(toy["slides"])
    for fold, slides in tested.items():
        others = {toy["case_of"][s] for f, sl in tested.items() if f != fold for s in sl}
        assert others.isdisjoint(toy["case_of"][s] for s in slides)


def test_inner_folds_never_see_the_outer_test_part(toy, reference):
    units = reference["units"]
    assert Counter(outer for outer, _ in units) == {0: 2, 1: 2, 2: 2}  # inner_k units per outer fold
    for outer in range(3):
        test_cases = {toy["case_of"][s] for s in _test_slides(reference["run_dir"], outer)}
        outer_train = set(toy["slides"]) - set(_test_slides(reference["run_dir"], outer))
        vals = []
        for _, parts in (u for u in units if u[0] == outer):
            seen = parts["train"] + parts["val"]
            assert not parts["test"] and set(seen) == outer_train  # inner train + val = outer train
            assert test_cases.isdisjoint(toy["case_of"][s] for s in seen)
            assert {toy["case_of"][s] for s in parts["train"]}.isdisjoint(
                toy["case_of"][s] for s in parts["val"]
            )
            vals.extend(parts["val"])
        assert Counter(vals) == Counter(outer_train)  # the inner val parts partition the outer train part


def test_outer_fold_retrains_the_chosen_setting(reference):
    run_dir = reference["run_dir"]
    for row in reference["rows"]:
        fold = row["fold"]
        table = pd.read_csv(run_dir / f"fold_{fold}" / nested.INNER_SCORES)
        assert table.chosen.sum() == 1 and len(table) == 2  # one setting x max_epochs 2
        chosen = table[table.chosen == 1].iloc[0]
        assert chosen.mean_error == table.mean_error.min()
        assert row["epochs_run"] == chosen.epoch + 1
        inputs = json.loads((run_dir / f"fold_{fold}" / "inputs.json").read_text())
        assert inputs["split"]["val"] == [] and sorted(inputs["split"]["test"]) == sorted(
            _test_slides(run_dir, fold)
        )
        assert pd.read_csv(run_dir / f"fold_{fold}" / "predictions_val.csv").empty


def test_partial_then_resumed_run_reuses_units_and_matches(toy, reference, monkeypatch):
    results = toy["tmp"] / "resumed"
    units = _spy_units(monkeypatch)
    experiment.run_experiment(_nested(toy, results, k_end=2), RunLog(quiet=True))
    assert sorted({outer for outer, _ in units}) == [0, 1]
    run_dir = _nested(toy, results).run_dir
    (run_dir / "fold_1" / "metrics.json").unlink()  # outer fold 1 interrupted after its inner units
    units.clear()
    experiment.run_experiment(_nested(toy, results), RunLog(quiet=True))
    assert [outer for outer, _ in units] == [2, 2]  # fold 1 reused its inner units, fold 0 everything
    log = (run_dir / "log.txt").read_text()
    assert "fold 1 inner 0 setting 0 (lr 0.01, reg 1e-05): finished in an earlier run" in log
    for name in ("results.csv", "summary.csv", "fold_1/inner_scores.csv", "fold_1/predictions_test.csv"):
        assert (run_dir / name).read_bytes() == (reference["run_dir"] / name).read_bytes(), name


def test_grid_run_scores_every_setting_and_retrains_the_chosen_one(toy):
    config = _nested(toy, toy["tmp"] / "grid", inner_grid=True, k_end=1, max_epochs=1)
    experiment.run_experiment(config, RunLog(quiet=True))
    assert config.run_dir.parent.name == "nested3x2grid"
    table = pd.read_csv(config.run_dir / "fold_0" / nested.INNER_SCORES)
    settings = nested.inner_settings(config)
    assert table.lr.tolist() == pytest.approx([s.lr for s in settings])
    assert table.reg.tolist() == pytest.approx([s.reg for s in settings])
    assert len(list((config.run_dir / "fold_0" / "inner").glob("setting_*_fold_*.json"))) == 6 * 2
    chosen = table[table.chosen == 1].iloc[0]
    log = (config.run_dir / "log.txt").read_text()
    assert f"fold 0: inner folds chose lr {chosen.lr:g}, reg {chosen.reg:g}, 1 epoch(s)" in log


# ------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cv": "nested", "k": 1}, "--cv nested needs --k >= 2"),
        ({"cv": "nested", "inner_k": 1}, "--cv nested needs --inner_k >= 2"),
        ({"inner_grid": True}, "--inner_grid needs --cv nested"),
    ],
)
def test_bad_flags_are_one_line(toy, changes, message):
    with pytest.raises(InputError, match=message):
        validate_config(toy_config(toy, "unused", **changes))


def test_survival_runs_refuse_nested(toy):
    with pytest.raises(InputError, match="--cv nested is implemented for classification tasks only"):
        SurvivalTask.check_model(_nested(toy, "unused"))


def test_too_few_cases_for_the_inner_folds_is_one_line(toy):
    config = _nested(toy, toy["tmp"] / "few", k=2, inner_k=7)
    with pytest.raises(InputError, match="outer fold 0: 6 case.*cannot fill 7 .*lower --inner_k"):
        experiment.run_experiment(config, RunLog(quiet=True))
