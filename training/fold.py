"""One fold of any task kind: train, restore the kept state, test and record (docs/method.md §8,
docs/survival.md §7.2).

:func:`run_fold` is the fold body of every kind, given the :class:`PreparedRun` and the fold: seed reset
and model (:func:`seeded_model`), the task's loss, an optimiser over the model's trainable parameters (a
training-free model is evaluated as it is), :func:`training.loop.fit` with the task's epoch and
validation every epoch, early stopping, best state restored, checkpoint with its identity, the task's
final passes (test; survival: also the training cases with the restored model, and no test without a
test part), the fold's row (``test_*`` / ``val_*`` metrics and losses, ``best_epoch``, ``epochs_run``;
``final/*`` scalars and the task's extra entries), the predictions of those passes, the fold's input
record, and the row last (marking the
fold finished). What differs between kinds comes from ``run.task`` (:mod:`training.tasks`). A loss or
logit that is not finite stops the fold before its row exists (:class:`utils.errors.NonFiniteError`,
one line naming the fold): no table ever claims a number for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from models.base import SlideClassifier
from models.checkpoint import model_identity, save_checkpoint
from models.registry import ModelSpec, build_model
from training import results as res
from training.config import RunConfig
from training.early_stopping import EarlyStopping
from training.fingerprints import write_fold_inputs
from training.loop import (
    EvalLoaderDraws,
    FitResult,
    LoopOptions,
    ReleasedLoaderDraws,
    build_optimizer,
    fit,
    restore_state,
)
from training.tasks.classification import ClassificationTask
from training.tasks.survival import SurvivalTask
from utils.errors import NonFiniteError
from utils.run_logging import RunLog, ScalarLog, progress_enabled
from utils.seed import seed_everything


@dataclass
class PreparedRun:
    """A run whose inputs are all checked (nothing written yet): what every fold needs."""

    config: RunConfig  # prompts resolved
    task: ClassificationTask | SurvivalTask  # the task object, holding config and checked data
    spec: ModelSpec  # config.model_spec(task): what the model is built from, computed once per run
    run_dir: Path
    device: torch.device
    tower: dict | None  # text tower identity (vision-language models)

    @property
    def data(self):
        """The checked data of the run (``run.task.data``)."""
        return self.task.data


def seeded_model(run: PreparedRun) -> SlideClassifier:
    """Reset every seed (start of a fold, as published), then build the model: the fold's first RNG use."""
    seed_everything(run.config.seed, run.config.deterministic)
    return build_model(run.config.model_type, run.spec)


def run_fold(run: PreparedRun, fold: int, log: RunLog, model: SlideClassifier | None = None) -> dict:
    """Train and evaluate fold ``fold`` of ``run``; write its checkpoint, predictions, input record and
    row (last); return the row.

    ``model``, when given, must come straight from :func:`seeded_model` with no RNG use since, so the
    fold is exactly as if it had been built here.
    """
    config, task, run_dir, device = run.config, run.task, run.run_dir, run.device
    inputs = task.fold_inputs(fold, run.tower)  # what the fold depends on, read before it trains
    model = model if model is not None else seeded_model(run)
    loss_fn = task.loss().to(device)
    dataset, idx = task.data.dataset, task.data.folds[fold]
    model = model.to(device)
    trainable = model.trainable_parameters()
    # Training-free models (the zero-shot baseline) are evaluated as they are.
    optimizer = build_optimizer(config.opt, trainable, config.lr, config.reg) if trainable else None
    options = LoopOptions(
        config.prefetch_depth, config.num_workers, progress_enabled(config.quiet), config.amp
    )
    scalars = ScalarLog(run_dir / "tb" / f"fold_{fold}" if config.log_data else None)
    log.info(
        f"fold {fold}: {len(idx.train)} train / {len(idx.val)} val / {len(idx.test)} test {task.items}, "
        f"{sum(p.numel() for p in trainable)} trainable parameters{task.start_note()}"
    )

    def run_eval(indices: list[int], desc: str):
        return task.evaluate(model, fold, indices, loss_fn, device, options, desc=desc)

    def run_test(indices: list[int]):
        """The test pass, in the released test loader's order."""
        return run_eval(EvalLoaderDraws(shuffle).pass_order(indices), "test")

    # Loader draws and evaluation orders of the released run (--testing shuffles val/test, reference only).
    shuffle = config.shuffles_evaluation
    train_labels = task.sampling_labels(idx.train)  # the groups --weighted_sample balances
    draws = ReleasedLoaderDraws(train_labels, config.weighted_sample, shuffle_validation=shuffle)
    try:
        if optimizer is None:
            log.info(f"fold {fold}: no trainable parameters, evaluating without training")
            fitted = FitResult(0, 0, False, run_eval(draws.validation.pass_order(idx.val), "val"), {}, [])
        else:
            fitted = fit(
                model,
                task,
                dataset.__getitem__,
                idx.train,
                train_labels,
                lambda: run_eval(draws.validation.order(idx.val), "val"),
                optimizer,
                loss_fn,
                device,
                max_epochs=config.max_epochs,
                weighted_sample=config.weighted_sample,
                early_stopping=EarlyStopping(config.patience, config.stop_epoch)
                if config.early_stopping
                else None,
                es_metric=config.es_metric,
                options=options,
                scalars=scalars,
                log=log.info,
                draws=draws,
            )
        restore_state(model, fitted.best_state)
        save_checkpoint(
            res.checkpoint_path(run_dir, fold),
            model.state_dict(),
            model_identity(config.model_type, run.spec),
        )
        passes = task.final_passes(
            fold, fitted.best_val, run_eval, run_test
        )  # part -> result, in writing order
        val = passes["val"]
        test = passes.get("test", val)  # no test part (survival train/val folds): val is evaluated
        row = {
            "fold": fold,
            **{f"test_{k}": v for k, v in test.metrics.items()},
            **{f"val_{k}": v for k, v in val.metrics.items()},
            "val_loss": val.loss,
            "test_loss": test.loss,
            "best_epoch": fitted.best_epoch,
            "epochs_run": fitted.epochs_run,
        }
        for name, value in row.items():
            if name not in ("fold", "best_epoch", "epochs_run"):
                scalars.add(f"final/{name}", value, fitted.best_epoch)
        row.update(task.row_extra(fold, passes))
    except NonFiniteError as err:  # a diverged fold: one line naming it; no row, so no result claims it
        raise NonFiniteError(f"fold {fold}, {err}") from None
    finally:
        scalars.close()
    for part, result in passes.items():
        task.write_predictions(res.predictions_path(run_dir, fold, part), result)
    write_fold_inputs(res.fold_inputs_path(run_dir, fold), inputs)
    res.write_fold_row(run_dir, fold, row)  # last: marks the fold finished
    log.info(f"fold {fold}: best epoch {fitted.best_epoch} of {fitted.epochs_run}; {task.test_summary(row)}")
    return row
