"""Chunked bags (``--chunk_size``, training/chunks.py): cutting, seeding, aggregation, refusal, a run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from models.baselines.common import bag_instances
from models.registry import MODEL_MODULES, model_info
from tests.mini_run import make_bag
from tests.toy_task import make_toy_data, toy_config
from training.chunks import (
    aggregate_chunks,
    check_chunkable,
    chunk_bags,
    chunk_positions,
    epoch_generator,
    slide_generator,
)
from training.experiment import run_experiment
from utils.errors import InputError
from utils.run_logging import RunLog
from utils.seed import seed_everything


@pytest.mark.parametrize("n,size", [(1, 4), (4, 4), (5, 4), (17, 4), (50, 7), (1000, 999)])
def test_chunk_positions_partition_the_instances_in_near_equal_chunks(n, size):
    parts = chunk_positions(n, size, torch.Generator().manual_seed(0))
    sizes = [len(p) for p in parts]
    assert len(parts) == -(-n // size)
    assert max(sizes) <= size and max(sizes) - min(sizes) <= 1
    assert sorted(torch.cat(parts).tolist()) == list(range(n))


def test_chunk_positions_of_an_empty_slide():
    assert chunk_positions(0, 4, torch.Generator().manual_seed(0)) == []


@pytest.mark.parametrize("mag", ["20x", "5x"])
def test_chunk_bags_feed_an_instance_baseline_exactly_the_chunk(mag):
    bag = make_bag(seed=3, dim=8, label=2)  # 38 real 20x children, 8 5x patches
    instances = bag_instances(bag, mag)
    chunks = list(chunk_bags(bag, 5, torch.Generator().manual_seed(1), mag))
    seen = torch.cat([bag_instances(c, mag) for c in chunks])  # what the model reads, at either mag
    assert all(c.label == 2 and c.slide_id == bag.slide_id for c in chunks)
    assert seen.shape == instances.shape
    # the chunks are a permutation of the slide's instances (rows matched one to one)
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, instances.tolist()))
    assert not torch.equal(seen, instances)  # shuffled, not the file order


def test_epoch_chunks_come_from_the_run_seed():
    def first_epoch(seed):
        seed_everything(seed)
        return [p.tolist() for p in chunk_positions(40, 8, epoch_generator())]

    assert first_epoch(1) == first_epoch(1)
    assert first_epoch(1) != first_epoch(2)
    seed_everything(1)
    a = chunk_positions(40, 8, epoch_generator())
    b = chunk_positions(40, 8, epoch_generator())  # the next epoch draws a new seed
    assert [p.tolist() for p in a] != [p.tolist() for p in b]


def test_evaluation_chunks_depend_on_seed_and_slide_not_on_the_global_rng():
    def cut(seed, slide):
        return [p.tolist() for p in chunk_positions(40, 8, slide_generator(seed, slide))]

    torch.manual_seed(0)
    first = cut(1, "slide_a")
    state = torch.get_rng_state()
    torch.manual_seed(123)
    assert cut(1, "slide_a") == first
    assert cut(1, "slide_b") != first and cut(2, "slide_a") != first
    torch.set_rng_state(state)


def test_aggregate_chunks_is_the_size_weighted_mean_probability():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    out = aggregate_chunks(probs, np.array([2, 1, 1]))
    np.testing.assert_allclose(out, [(1.8 + 0.3 + 0.5) / 4, (0.2 + 0.7 + 0.5) / 4])
    assert out.sum() == pytest.approx(1.0)


def test_hierarchical_models_are_refused_and_flat_ones_accepted():
    for name in MODEL_MODULES:
        if model_info(name).hierarchy:
            with pytest.raises(InputError, match="needs the whole slide") as err:
                check_chunkable(name, 16)
            assert "\n" not in str(err.value)
        else:
            check_chunkable(name, 16)
        check_chunkable(name, 0)  # without chunks every model is fine
    assert model_info("HiVE_MIL").hierarchy and not model_info("LiteMIL").hierarchy


def test_chunked_run_reports_slide_and_chunk_metrics(tmp_path):
    data = make_toy_data(tmp_path / "data", k=2)
    config = toy_config(data, tmp_path / "results", model_type="ABMIL", chunk_size=4, max_epochs=2)
    rows = run_experiment(config, RunLog(quiet=True))
    run_dir = config.run_dir
    assert run_dir.name.endswith("_chunk4")
    results = pd.read_csv(run_dir / "results.csv")
    for column in ("test_acc", "test_auc", "test_f1", "val_acc", "val_auc", "val_f1"):
        assert column in results.columns
    assert {"test_chunk_acc", "val_chunk_acc"} <= set(results.columns)
    assert all(0 <= r["test_chunk_acc"] <= 1 for r in rows)
    preds = pd.read_csv(run_dir / "fold_0" / "predictions_test.csv")  # one row per slide, as whole-slide runs
    assert preds["slide_id"].is_unique and len(preds) == 4  # the toy split's 4 test slides
    probs = preds[[c for c in preds.columns if c.startswith("prob_")]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    # the same flags reproduce the same numbers (chunks seeded from the run's RNG)
    again = run_experiment(
        toy_config(data, tmp_path / "again", model_type="ABMIL", chunk_size=4, max_epochs=2),
        RunLog(quiet=True),
    )
    assert [r["test_chunk_acc"] for r in again] == [r["test_chunk_acc"] for r in rows]
    assert [r["val_loss"] for r in again] == [r["val_loss"] for r in rows]


def test_chunk_size_is_refused_for_hivemil_and_survival_in_one_line(tmp_path):
    from training.tasks.classification import ClassificationTask
    from training.tasks.survival import SurvivalTask

    data = make_toy_data(tmp_path / "data", k=1)
    with pytest.raises(InputError, match="needs the whole slide"):
        ClassificationTask.check_model(toy_config(data, tmp_path / "r", model_type="HiVE_MIL", chunk_size=8))
    with pytest.raises(InputError, match="applies to classification tasks"):
        SurvivalTask.check_model(toy_config(data, tmp_path / "r", model_type="ABMIL_surv", chunk_size=8))


def test_nested_cross_validation_with_chunks_reports_slide_and_chunk_metrics(tmp_path):
    data = make_toy_data(tmp_path / "data", k=2, n_slides=12)
    config = toy_config(
        data,
        tmp_path / "results",
        model_type="LiteMIL",
        chunk_size=4,
        cv="nested",
        k=2,
        inner_k=2,
        max_epochs=1,
    )
    rows = run_experiment(config, RunLog(quiet=True))
    results = pd.read_csv(config.run_dir / "results.csv")
    assert {"test_acc", "test_auc", "test_f1", "test_chunk_acc"} <= set(results.columns)
    assert len(rows) == 2 and all(0 <= r["test_chunk_acc"] <= 1 and 0 <= r["test_acc"] <= 1 for r in rows)
    tested = [
        set(pd.read_csv(config.run_dir / f"fold_{k}" / "predictions_test.csv").slide_id) for k in (0, 1)
    ]
    assert tested[0].isdisjoint(tested[1]) and tested[0] | tested[1] == set(data["slides"])
