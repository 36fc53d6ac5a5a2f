"""Task objects: everything that differs between a classification run and a survival run.

:mod:`training.experiment` runs every kind through the same stages (flags, run folder, lock, resume,
fold locks, logging) and :func:`training.fold.run_fold` through the same fold (optimiser, fit with
early stopping, best state, checkpoint, test, row); :func:`training.loop.fit` is the one epoch loop. A
:class:`Task` supplies the rest, Lightning-style: :class:`training.tasks.classification.ClassificationTask`
and :class:`training.tasks.survival.SurvivalTask`, two symmetric files (docs/survival.md §7.1).

The kind comes from ``--task_kind`` (default ``auto``: ``survival`` when the task's dataset CSV has a
``survival_months`` column, else ``classification``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from datasets.survival import is_survival_csv
from training.config import RunConfig
from training.tasks.classification import ClassificationTask
from training.tasks.survival import SurvivalTask
from utils.run_logging import RunLog

CLASSIFICATION = "classification"
SURVIVAL = "survival"


class Task(Protocol):
    """The kind-specific parts of a run. Class-level hooks take the flags (before any data is read);
    an instance (:meth:`prepare`) holds the resolved config and the checked data of the run."""

    name: str
    metric_columns: tuple[str, ...]  # columns a finished fold's row must hold
    items: str  # what the dataset holds, for the log: "slides" or "cases"
    watched: dict[str, str]  # --es-metric -> what the early-stop line says did not improve
    nan_is_worst: bool  # a NaN monitored value counts as +inf (never beats a defined one)
    config: RunConfig
    data: Any  # .task, .dataset, .folds, .layout, .fold_split(fold)

    # ---- the run (before data)
    @staticmethod
    def defaults(config: RunConfig) -> dict: ...  # the kind's defaults for flags not given
    @staticmethod
    def run_dir(config: RunConfig) -> Path: ...
    @staticmethod
    def check_model(config: RunConfig) -> None: ...
    @staticmethod
    def resolve(config: RunConfig) -> RunConfig: ...
    @classmethod
    def prepare(cls, config: RunConfig, log: RunLog) -> Task: ...

    # ---- header and fold inputs
    def describe(self, device: torch.device) -> str: ...
    def config_extra(self) -> dict: ...
    def fold_inputs(self, fold: int, tower: dict | None) -> dict: ...

    # ---- one fold
    def loss(self) -> nn.Module: ...
    def start_note(self) -> str: ...
    def prediction_parts(self, fold: int) -> tuple[str, ...]: ...  # the fold's predictions_<part>.csv files
    def sampling_labels(self, indices) -> list[int]: ...  # groups --weighted_sample balances
    def train_epoch(self, model, load, order, optimizer, loss_fn, device, options, desc: str = "train"): ...
    def evaluate(self, model, fold: int, indices, loss_fn, device, options, desc: str = "eval"): ...
    def final_passes(
        self, fold: int, best_val, run_eval, run_test
    ) -> dict: ...  # part -> result after training
    def row_extra(self, fold: int, passes: dict) -> dict: ...  # non-metric entries of the fold's row
    def epoch_line(self, epoch: int, stats, val, seconds: float) -> str: ...
    def val_scalars(self, val) -> list[tuple[str, float]]: ...
    def write_predictions(self, path: Path, result) -> None: ...
    def test_summary(self, row: dict) -> str: ...

    # ---- the run's summary
    def finish(self, run_dir: Path, rows: list[dict], log: RunLog) -> Path: ...


def detect_task_kind(config: RunConfig) -> str:
    """``classification`` or ``survival`` for ``config`` (``--task_kind``, or the dataset CSV's columns)."""
    if config.task_kind in (CLASSIFICATION, SURVIVAL):
        return config.task_kind
    if not config.task:
        return CLASSIFICATION
    csv_dir = config.resolve_path(config.csv_dir)
    return SURVIVAL if is_survival_csv(Path(csv_dir) / f"{config.task}.csv") else CLASSIFICATION


def kind_defaults(config: RunConfig) -> dict:
    """The defaults of ``config``'s task kind for flags not given (:func:`training.config.parse_config`):
    none for classification, the published MCAT / Patch-GCN settings for survival."""
    return task_for(config).defaults(config)


def task_for(config: RunConfig) -> type[ClassificationTask] | type[SurvivalTask]:
    """The task class of ``config``'s kind (see the module docstring)."""
    return SurvivalTask if detect_task_kind(config) == SURVIVAL else ClassificationTask
