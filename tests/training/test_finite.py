"""Finite or nothing: a diverging loss, parameters or logits stop the run in one line naming where;
metrics raise on numbers that are not finite and are NaN only where undefined; reproduce.py reports a
divergence after one attempt."""

from __future__ import annotations

import math
import os
import types

import numpy as np
import pytest
import torch
from torch import nn

from tests.toy_task import DIM, MeanPoolLinear, make_toy_data, toy_bags
from training.loop import LOSS_CEILING, build_optimizer, check_finite_parameters, fit
from training.survival.metrics import (
    IBSReference,
    concordance_index,
    ibs_time_grid,
    integrated_brier,
    survival_at_times,
)
from training.tasks.classification import ClassificationTask, evaluate
from utils.errors import InputError, NonFiniteError
from utils.metrics import classification_metrics


def _fit(model, bags, lr=1e-2):
    optimizer = build_optimizer("adam", model.trainable_parameters(), lr, 0.0)
    validate = lambda: evaluate(model, bags.__getitem__, [0], nn.CrossEntropyLoss(), torch.device("cpu"), 2)  # noqa: E731
    return fit(
        model, ClassificationTask(), bags.__getitem__, list(range(len(bags))), [b.label for b in bags], validate,
        optimizer, nn.CrossEntropyLoss(), torch.device("cpu"), max_epochs=2, log=lambda _msg: None,
    )  # fmt: skip


def test_a_nan_loss_stops_training_naming_epoch_step_slide_and_lr():
    torch.manual_seed(0)
    bags = toy_bags(4)
    bags[2].x5[0, 0] = float("nan")
    with pytest.raises(NonFiniteError) as err:
        _fit(MeanPoolLinear(DIM, 2), bags)
    message = str(err.value)
    assert isinstance(err.value, InputError) and "\n" not in message
    assert message.startswith("epoch 0, step ") and "(slide s2): training loss is nan" in message
    assert message.endswith("try a lower --lr (now 0.01), or check the features of the slide")


def test_a_loss_beyond_the_ceiling_is_a_divergence_although_finite():
    torch.manual_seed(0)
    with pytest.raises(
        NonFiniteError, match=r"training loss is [0-9.e+]+, beyond 1\.68e\+07 \(2\*\*24\); .*\(now 1e\+09\)"
    ):
        _fit(MeanPoolLinear(DIM, 2), toy_bags(4), lr=1e9)  # the logits run off to ~1e10, finite
    assert LOSS_CEILING == 2.0**24


def test_a_sane_fit_is_untouched_by_the_checks():
    torch.manual_seed(0)
    result = _fit(MeanPoolLinear(DIM, 2), toy_bags(4))
    assert result.epochs_run == 2 and all(math.isfinite(h["train_loss"]) for h in result.history)


def test_parameters_that_are_not_finite_are_named():
    model = MeanPoolLinear(DIM, 2)
    optimizer = build_optimizer("adam", model.trainable_parameters(), 1e-2, 0.0)
    check_finite_parameters(model, optimizer)
    with torch.no_grad():
        model.text[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"1 parameter tensor\(s\) are not finite \(text\)"):
        check_finite_parameters(model, optimizer)


def test_evaluation_refuses_a_non_finite_logit_naming_the_slide():
    torch.manual_seed(0)
    model = MeanPoolLinear(DIM, 2)
    bags = toy_bags(4)
    bags[3].x20[0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"^val: slide s3: the model's logits are not finite \("):
        evaluate(
            model, bags.__getitem__, [0, 1, 2, 3], nn.CrossEntropyLoss(), torch.device("cpu"), 2, desc="val"
        )


def test_classification_metrics_raise_on_probabilities_that_are_not_finite():
    labels = np.array([0, 1, 1])
    probs = np.array([[0.7, 0.3], [np.nan, np.nan], [0.2, 0.8]])
    with pytest.raises(NonFiniteError, match=r"1 of 3 slide\(s\).*first: row 1"):
        classification_metrics(labels, probs)
    assert math.isnan(classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8]] * 2))["auc"])


def test_cindex_raises_on_nan_risks_and_is_nan_only_where_undefined():
    with pytest.raises(NonFiniteError, match="c-index risks: 1 of 3"):
        concordance_index([1.0, 2.0, 3.0], [0, 0, 1], [0.3, np.nan, 0.1])
    with pytest.raises(NonFiniteError, match="c-index times"):
        concordance_index([1.0, np.inf], [0, 0], [0.3, 0.1])
    assert math.isnan(concordance_index([1.0, 2.0], [1, 1], [0.1, 0.2]))  # no event
    assert math.isnan(concordance_index([2.0, 1.0], [0, 1], [0.1, 0.2]))  # no comparable pair
    assert concordance_index([1.0, 2.0], [0, 1], [0.9, 0.1]) == 1.0


def test_ibs_raises_on_predicted_survival_that_is_not_finite():
    rng = np.random.default_rng(0)
    months = rng.exponential(20, 40) + 0.1
    censorship = (rng.random(40) < 0.3).astype(int)
    cuts = (5.0, 15.0, 30.0)
    reference = IBSReference(ibs_time_grid(months, cuts), months, censorship)
    bins = np.tile([0.9, 0.7, 0.4, 0.2], (40, 1))
    value, _ = integrated_brier(reference, months, censorship, lambda t: survival_at_times(bins, cuts, t))
    assert 0 < value < 1
    bins[5, 0] = np.nan
    with pytest.raises(NonFiniteError, match="IBS predicted survival"):
        integrated_brier(reference, months, censorship, lambda t: survival_at_times(bins, cuts, t))


def test_reproduce_reports_a_divergence_once_without_retry(tmp_path, monkeypatch):
    from preprocess.demo_tasks import task_defaults
    from training import grid_run

    data = make_toy_data(tmp_path / "toy", k=1)
    argv = [*data["argv"], "--results_dir", str(tmp_path / "results"), "--lr", "1e9", "--max_epochs", "1"]
    result = grid_run.train_one_fold(
        argv, 0, os.getcwd(), task_defaults
    )  # the Ray task's body, in this process
    assert "row" not in result and "training diverged" in result["diverged"]
    assert result["diverged"].startswith("fold 0, epoch 0, step ")
    assert not list((tmp_path / "results").rglob("metrics.json"))  # no fold row: nothing claims a number

    lines = []
    job = types.SimpleNamespace(
        failed={}, rows={}, label="toy", log=types.SimpleNamespace(info=lambda *a, **k: None)
    )
    progress = types.SimpleNamespace(failed=0, done=0)
    monkeypatch.setattr(grid_run.tqdm, "write", lambda text, **_: lines.append(text))
    ray = types.SimpleNamespace(get=lambda ref: ref)
    grid_run.collect_fold(ray, result, job, 0, 3, progress)
    assert progress.failed == 1 and not job.rows and "not retried" in job.failed[0]
    assert lines == [f"failed: toy fold 0: {job.failed[0]}"]
