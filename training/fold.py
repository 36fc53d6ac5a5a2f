"""One fold of any task kind: train, restore the kept state, test and record (docs/method.md §8,
docs/survival.md §7.2).

:func:`train_and_record_fold` is the fold body shared by :func:`training.experiment.run_fold`
(classification) and :meth:`training.survival_run.SurvivalKind.run_fold`: optimiser over the model's
trainable parameters (a training-free model is evaluated as it is), training with validation every
epoch and early stopping, best state restored, checkpoint with its identity, test evaluation, the fold's
row (``test_*`` / ``val_*`` metrics and losses, ``best_epoch``, ``epochs_run``; ``final/*`` scalars),
val/test predictions, the fold's input record, and the row last (marking the fold finished). What
differs between kinds -- loss, training loop, evaluation, prediction files, log wording -- comes in a
:class:`FoldSteps`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint import model_identity, save_checkpoint
from training import results as res
from training.config import RunConfig
from training.early_stopping import EarlyStopping
from training.fingerprints import write_fold_inputs
from training.loop import FitResult, LoopOptions, build_optimizer, restore_state
from utils.run_logging import RunLog, ScalarLog, progress_enabled


@dataclass(frozen=True)
class FoldSteps:
    """The task-kind-specific parts of one fold (:func:`train_and_record_fold`)."""

    loss_fn: nn.Module
    # training.loop.fit's signature (training.survival_loop.fit_survival with its ``batch`` bound)
    fit: Callable[..., FitResult]
    # called as evaluate(model, load, indices, loss_fn, device, *evaluate_args, prefetch_depth=...,
    # workers=..., progress=..., desc=..., amp=...): training.evaluation.evaluate or
    # training.survival_loop.evaluate_survival
    evaluate: Callable[..., Any]
    evaluate_args: tuple
    write_predictions: Callable[[Path, Any], None]  # (file, evaluation result)
    items: str  # what the dataset holds, for the log: "slides" or "cases"
    test_summary: Callable[[dict], str]  # the fold row's test metrics for the fold's last log line
    start_note: str = ""  # appended to the fold's first log line


def train_and_record_fold(
    config: RunConfig,
    data,
    fold: int,
    run_dir: Path,
    device: torch.device,
    log: RunLog,
    inputs: dict,
    model,
    steps: FoldSteps,
) -> dict:
    """Train and evaluate fold ``fold`` of ``data`` (``task``, ``dataset``, ``folds``) with ``model``;
    write its checkpoint, predictions, input record (``inputs``) and row (last); return the row."""
    task, dataset, idx = data.task, data.dataset, data.folds[fold]
    model = model.to(device)
    trainable = model.trainable_parameters()
    # Training-free models (the zero-shot baseline) are evaluated as they are.
    optimizer = build_optimizer(config.opt, trainable, config.lr, config.reg) if trainable else None
    options = LoopOptions(
        config.prefetch_depth, config.num_workers, progress_enabled(config.quiet), config.amp
    )
    scalars = ScalarLog(run_dir / "tb" / f"fold_{fold}" if config.log_data else None)
    log.info(
        f"fold {fold}: {len(idx.train)} train / {len(idx.val)} val / {len(idx.test)} test {steps.items}, "
        f"{sum(p.numel() for p in trainable)} trainable parameters{steps.start_note}"
    )

    def run_eval(indices: list[int], desc: str):
        return steps.evaluate(
            model,
            dataset.__getitem__,
            indices,
            steps.loss_fn,
            device,
            *steps.evaluate_args,
            prefetch_depth=options.prefetch_depth,
            workers=options.workers,
            progress=options.progress,
            desc=desc,
            amp=options.amp,
        )

    try:
        if optimizer is None:
            log.info(f"fold {fold}: no trainable parameters, evaluating without training")
            fitted = FitResult(0, 0, False, run_eval(idx.val, "val"), {}, [])
        else:
            fitted = steps.fit(
                model,
                dataset.__getitem__,
                idx.train,
                [dataset.labels[i] for i in idx.train],
                lambda: run_eval(idx.val, "val"),
                optimizer,
                steps.loss_fn,
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
            )
        restore_state(model, fitted.best_state)
        save_checkpoint(
            res.checkpoint_path(run_dir, fold),
            model.state_dict(),
            model_identity(config.model_type, config.model_spec(task)),
        )
        val = fitted.best_val
        test = run_eval(idx.test, "test")
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
    finally:
        scalars.close()
    steps.write_predictions(res.predictions_path(run_dir, fold, "val"), val)
    steps.write_predictions(res.predictions_path(run_dir, fold, "test"), test)
    write_fold_inputs(res.fold_inputs_path(run_dir, fold), inputs)
    res.write_fold_row(run_dir, fold, row)  # last: marks the fold finished
    log.info(f"fold {fold}: best epoch {fitted.best_epoch} of {fitted.epochs_run}; {steps.test_summary(row)}")
    return row
