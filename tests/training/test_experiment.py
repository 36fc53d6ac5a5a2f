"""Training loop pieces (early stopping, sampling, prefetch, evaluation, fit) and a full k-fold run.

The model is a tiny mean-pooling linear classifier registered here under a test-only name; the data
are small H5 files written in ``tmp_path`` in the published formats.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from models.checkpoint import read_checkpoint
from tests.toy_task import (
    DIM,
    TASK,
    TEST_MODEL,
    MeanPoolLinear,
    _build_test_model,
    make_toy_data,
    toy_bags,
    toy_config,
)
from training.early_stopping import EarlyStopping
from training.experiment import run_experiment
from training.loop import LoopOptions, build_optimizer, fit, restore_state, snapshot_state
from training.tasks.classification import ClassificationTask, EvalResult, evaluate
from utils.prefetch import prefetch
from utils.run_logging import RunLog


# ------------------------------------------------------------------------------------- early stopping
def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping(patience=2, stop_epoch=3)
    errors = [0.5, 0.3, 0.4, 0.3, 0.2, 0.2, 0.25]
    improved = [stopper.step(epoch, value) for epoch, value in enumerate(errors)]
    # a tie is no improvement (0.3 at epoch 3, 0.2 at epoch 5): the first epoch at the lowest value is kept
    assert improved == [True, True, False, False, True, False, False]
    assert stopper.best_epoch == 4 and stopper.should_stop  # counter 2 at epoch 6 > stop_epoch 3


def test_early_stopping_waits_for_stop_epoch():
    stopper = EarlyStopping(patience=1, stop_epoch=3)
    for epoch, value in enumerate([1.0, 2.0, 2.0, 2.0]):
        stopper.step(epoch, value)
        assert stopper.should_stop == (epoch > 3)
    stopper.step(4, 2.0)
    assert stopper.should_stop


def test_released_defaults_stop_at_epoch_10_at_the_earliest():
    stopper = EarlyStopping()  # patience 10, stop_epoch 0
    stops = [epoch for epoch in range(20) if (stopper.step(epoch, 0.5), stopper.should_stop)[1]]
    assert stopper.best_epoch == 0 and stops[0] == 10  # epochs 1..10 tie with epoch 0: counter 10 at epoch 10


# -------------------------------------------------------------------------------------------- prefetch
def test_prefetch_keeps_order_and_bounds_lookahead():
    started = 0
    lock = threading.Lock()

    def load(i):
        nonlocal started
        with lock:
            started += 1
        time.sleep(0.002)
        return i * 10

    got, ahead = [], []
    for item in prefetch(load, range(20), depth=3, workers=4):
        time.sleep(0.003)  # a slow consumer lets the loaders run ahead as far as allowed
        got.append(item)
        with lock:
            ahead.append(started - len(got))
    assert got == [i * 10 for i in range(20)]
    assert max(ahead) == 3  # never more than `depth` loads beyond the item being consumed
    assert list(prefetch(load, range(5), depth=0)) == [0, 10, 20, 30, 40]


def test_prefetch_reraises_and_shuts_down():
    loaded = []

    def load(i):
        if i == 3:
            raise OSError("bad file 3")
        loaded.append(i)
        return i

    before = threading.active_count()
    got = []
    with pytest.raises(OSError, match="bad file 3"):
        for item in prefetch(load, range(100), depth=2):
            got.append(item)
    assert got == [0, 1, 2]
    assert max(loaded) <= 5  # the window stopped moving at the failure
    gen = prefetch(load, range(3), depth=2)
    assert next(gen) == 0
    gen.close()  # consumer stops early: pending loads cancelled, threads joined
    assert threading.active_count() == before


# ------------------------------------------------------------------------------------------ evaluation
def test_evaluate_precomputes_once_and_passes_cache():
    torch.manual_seed(0)
    model = MeanPoolLinear(DIM, 2)
    bags = toy_bags(5)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    result = evaluate(model, bags.__getitem__, [0, 2, 4], loss_fn, torch.device("cpu"), 2)
    assert model.precompute_calls == 1
    assert len(model.seen_caches) == 3 and all(c is model.seen_caches[0] for c in model.seen_caches)
    assert model.training  # mode restored
    assert result.slide_ids == ["s0", "s2", "s4"] and result.labels.tolist() == [0, 0, 0]
    with torch.no_grad():
        logits = torch.cat([model(bags[i]).logits for i in (0, 2, 4)])
    assert np.allclose(result.probs, torch.softmax(logits, 1).numpy(), atol=1e-6)
    aux = float(0.01 * model.text.detach().pow(2).mean())  # the model's auxiliary loss counts, as in training
    expected_loss = float(
        np.mean([loss_fn(logits[j : j + 1], torch.tensor([0])).item() + aux for j in range(3)])
    )
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)
    uncached = evaluate(
        model, bags.__getitem__, [0, 2, 4], loss_fn, torch.device("cpu"), 2, use_text_cache=False
    )
    assert model.precompute_calls == 1 and np.allclose(uncached.probs, result.probs, atol=1e-6)


# ------------------------------------------------------------------------------------------------ fit
def _scripted_validate(losses, errors=None):
    it = iter(zip(losses, errors if errors is not None else [0.0] * len(losses)))

    def validate():
        loss, error = next(it)
        return EvalResult(
            ["s"],
            np.array([0]),
            np.array([[0.6, 0.4]]),
            loss,
            {"acc": 1.0 - error, "auc": float("nan"), "f1": 1.0},
        )

    return validate


def test_fit_keeps_best_state_and_stops_early():
    torch.manual_seed(0)
    model = MeanPoolLinear(DIM, 2)
    bags = toy_bags(4)
    states = []
    losses = [1.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]

    def validate():
        states.append(snapshot_state(model))
        return _scripted_validate([losses[len(states) - 1]])()

    optimizer = build_optimizer("adam", model.trainable_parameters(), 1e-2, 0.0)
    result = fit(
        model, ClassificationTask(), bags.__getitem__, [0, 1, 2, 3], [b.label for b in bags], validate, optimizer,
        nn.CrossEntropyLoss(), torch.device("cpu"), max_epochs=8, early_stopping=EarlyStopping(patience=3, stop_epoch=2),
        es_metric="loss", log=lambda _msg: None,
    )  # fmt: skip
    assert result.best_epoch == 1 and result.stopped_early and result.epochs_run == 5
    assert "frozen" not in result.best_state  # frozen parameters are not copied
    restore_state(model, result.best_state)
    assert all(torch.equal(dict(model.named_parameters())[n], t) for n, t in states[1].items())


def test_fit_without_early_stopping_keeps_last_epoch():
    torch.manual_seed(0)
    model = MeanPoolLinear(DIM, 2)
    bags = toy_bags(4)
    optimizer = build_optimizer("sgd", model.trainable_parameters(), 1e-2, 1e-5)
    result = fit(
        model, ClassificationTask(), bags.__getitem__, [0, 1, 2, 3], [b.label for b in bags],
        _scripted_validate([0.1, 0.5, 0.9]), optimizer, nn.CrossEntropyLoss(), torch.device("cpu"), max_epochs=3,
        options=LoopOptions(prefetch_depth=0), log=lambda _msg: None,
    )  # fmt: skip
    assert result.best_epoch == 2 and not result.stopped_early
    assert result.best_val.loss == 0.9


def test_training_updates_only_trainable_parameters():
    torch.manual_seed(0)
    model = MeanPoolLinear(DIM, 2)
    bags = toy_bags(4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer("adam", model.trainable_parameters(), 1e-2, 1e-5)
    fit(
        model, ClassificationTask(), bags.__getitem__, [0, 1, 2, 3], [b.label for b in bags],
        _scripted_validate([1.0]), optimizer, nn.CrossEntropyLoss(), torch.device("cpu"), max_epochs=1, log=lambda _msg: None,
    )  # fmt: skip
    after = dict(model.named_parameters())
    assert torch.equal(after["frozen"], before["frozen"])
    assert not torch.equal(after["proj.weight"], before["proj.weight"])


# ----------------------------------------------------------------------------------------- full run
def test_run_experiment_writes_published_layout(tmp_path):
    data = make_toy_data(tmp_path / "in")
    config = toy_config(data, tmp_path / "results", early_stopping=True, log_data=True)
    rows = run_experiment(config, RunLog(quiet=True))
    run_dir = tmp_path / "results" / TASK / "toyfe" / "2" / f"{TASK}_toyfe_{TEST_MODEL}_2_s1"
    assert config.run_dir == run_dir
    assert [r["fold"] for r in rows] == [0, 1, 2]
    for name in ("results.csv", "summary.csv", "config.json", "log.txt"):
        assert (run_dir / name).is_file(), name
    summary = pd.read_csv(run_dir / "summary.csv")
    results = pd.read_csv(run_dir / "results.csv")
    assert results["metric"].tolist() == ["mean", "std"]
    for col in ("test_acc", "test_auc", "test_f1", "val_acc", "val_auc", "val_f1"):
        assert results[col].tolist() == pytest.approx([np.mean(summary[col]), np.std(summary[col])])
    for fold in range(3):
        preds = pd.read_csv(run_dir / f"fold_{fold}" / "predictions_test.csv")
        assert list(preds.columns) == ["slide_id", "label", "pred", "prob_A", "prob_B"]
        assert np.allclose(preds[["prob_A", "prob_B"]].sum(axis=1), 1.0)
        acc = float((preds["label"] == preds["pred"]).mean())
        assert summary.loc[fold, "test_acc"] == pytest.approx(acc)
        state, identity = read_checkpoint(run_dir / f"s_{fold}_checkpoint.pt")
        assert set(state) == {"proj.weight", "proj.bias", "text", "frozen"}
        assert identity == {"model_type": TEST_MODEL, "class_names": ["A", "B"], "feature_dim": DIM}
        assert list((run_dir / "tb" / f"fold_{fold}").iterdir())
    log = (run_dir / "log.txt").read_text()
    assert "fold 2: best epoch" in log and "mean ± std" in log


def test_checkpoint_reproduces_test_predictions(tmp_path):
    data = make_toy_data(tmp_path / "in", k=1)
    config = toy_config(data, tmp_path / "results")
    run_experiment(config, RunLog(quiet=True))
    from datasets.tasks import get_task

    task = get_task(TASK, csv_dir=tmp_path / "in" / "dataset_csv", prompt_dir=tmp_path / "none")
    model = _build_test_model(config.model_spec(task))
    model.load_state_dict(read_checkpoint(config.run_dir / "s_0_checkpoint.pt")[0])
    model.eval()
    preds = pd.read_csv(config.run_dir / "fold_0" / "predictions_test.csv")
    from datasets.features import read_slide_bag

    label_of = dict(zip(data["slides"], data["labels"]))
    for _, row in preds.iterrows():
        with torch.no_grad():
            prob = torch.softmax(
                model(read_slide_bag(data["layout"], row["slide_id"], label_of[row["slide_id"]])).logits, 1
            )
        assert prob[0, 1].item() == pytest.approx(row["prob_B"], abs=1e-6)


def test_testing_flag_shuffles_evaluation_and_shifts_later_training(tmp_path):
    """--testing (reference): the same slides are evaluated, in another order, and the validation passes'
    draws change every later epoch's training order, hence the trained weights (deterministic otherwise)."""
    data = make_toy_data(tmp_path / "in", k=1, n_slides=16)
    runs = {}
    for testing in (False, True):
        config = toy_config(data, tmp_path / f"results_{testing}", testing=testing, max_epochs=3)
        run_experiment(config, RunLog(quiet=True))
        preds = {p: pd.read_csv(config.run_dir / "fold_0" / f"predictions_{p}.csv") for p in ("val", "test")}
        runs[testing] = preds, read_checkpoint(config.run_dir / "s_0_checkpoint.pt")[0]
    (plain, plain_state), (shuffled, shuffled_state) = runs[False], runs[True]
    for part in ("val", "test"):
        assert sorted(plain[part]["slide_id"]) == sorted(shuffled[part]["slide_id"])  # no slide cap
    assert any(plain[p]["slide_id"].tolist() != shuffled[p]["slide_id"].tolist() for p in ("val", "test"))
    assert not torch.equal(plain_state["proj.weight"], shuffled_state["proj.weight"])
