"""Task kinds: what differs between a classification run and a survival run (docs/survival.md §7.1).

:mod:`training.experiment` runs every kind through the same stages (``prepare_run``,
``write_run_header``, ``reusable_fold_row``, ``train_fold``, ``finish_run``: flags, run folder, lock,
resume, fold locks, logging). A :class:`TaskKind` provides the parts that depend on the kind: the run
folder, which models fit, data preparation and checks, the fold's input record, training and evaluation
of one fold (loss, metrics, predictions) and the summary files.

The kind comes from ``--task_kind`` (default ``auto``: ``survival`` when the task's dataset CSV has a
``survival_months`` column, else ``classification``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from datasets.survival import is_survival_csv
from training.config import RunConfig
from utils.run_logging import RunLog

CLASSIFICATION = "classification"
SURVIVAL = "survival"


def detect_task_kind(config: RunConfig) -> str:
    """``classification`` or ``survival`` for ``config`` (``--task_kind``, or the dataset CSV's columns)."""
    if config.task_kind in (CLASSIFICATION, SURVIVAL):
        return config.task_kind
    if not config.task:
        return CLASSIFICATION
    csv_dir = config.resolve_path(config.csv_dir)
    return SURVIVAL if is_survival_csv(Path(csv_dir) / f"{config.task}.csv") else CLASSIFICATION


class TaskKind(Protocol):
    """The kind-specific parts of a run (see the module docstring)."""

    name: str
    metric_columns: tuple[str, ...]  # columns a finished fold's row must hold

    def run_dir(self, config: RunConfig) -> Path: ...

    def check_model(self, config: RunConfig) -> None: ...

    def resolve(self, config: RunConfig) -> RunConfig: ...

    def prepare_data(self, config: RunConfig, log: RunLog): ...

    def describe(self, config: RunConfig, data, device: torch.device) -> str: ...

    def config_extra(self, config: RunConfig, data) -> dict: ...

    def fold_inputs(self, config: RunConfig, data, fold: int, tower: dict | None) -> dict: ...

    def run_fold(
        self,
        config: RunConfig,
        data,
        fold: int,
        run_dir: Path,
        device: torch.device,
        log: RunLog,
        inputs: dict,
        model,
    ) -> dict: ...

    def finish(self, run, rows: list[dict], log: RunLog) -> Path: ...
