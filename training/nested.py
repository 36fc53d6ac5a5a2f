"""Nested cross-validation: ``main.py --cv nested --k K --inner_k J [--inner_grid]`` (README, Nested
cross-validation).

The outer folds come with the run's data (:func:`datasets.splits.cross_validation_splits`: every slide of
the dataset CSV, whole cases, stratified by label, seeded by ``--seed``): outer fold ``k`` tests its
slides and trains on all others, with no val part. :func:`run_nested_fold` is the body of one outer
fold (called by :func:`training.experiment.train_fold` under the fold's lock, so ``main.py`` and
``reproduce.py`` run it unchanged):

1. The outer training part is dealt into ``--inner_k`` inner folds the same way (whole cases, stratified,
   seeded by ``(--seed, k)``); nothing of the outer test part enters them.
2. For every setting (the run's ``--lr`` / ``--reg``, or with ``--inner_grid`` the :data:`GRID`) and every
   inner fold, one *inner unit*: train on the other inner folds for ``--max_epochs`` epochs (no early
   stopping), validating on the inner fold after every epoch. A unit's per-epoch scores are written to
   ``fold_<k>/inner/setting_<g>_fold_<j>.json`` with its inputs (:mod:`training.fingerprints`); a later
   run reuses a unit whose setting and inputs are unchanged (not with ``--overwrite``).
3. Choice: the setting and epoch with the lowest mean inner validation ``--es_metric`` (error or loss)
   over the inner folds; ties go to the lower mean loss, then the earlier epoch, then the earlier
   setting. All means and the choice are written to ``fold_<k>/inner_scores.csv``.
4. The chosen setting is retrained on the whole outer training part for the chosen number of epochs
   (:func:`training.fold.run_fold`, its files as for any fold; ``val_*`` are NaN: there is no val part)
   and tested on the outer test part.

Model size is not searched: no model of the registry exposes a size option through its build spec.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from datasets.splits import stratified_case_folds
from models.base import SlideClassifier
from training import results as res
from training.config import RunConfig, with_values
from training.fingerprints import changed_inputs
from training.fold import PreparedRun, run_fold, seeded_model
from training.loop import LoopOptions, build_optimizer, fit
from training.tasks.classification import FoldIndices
from utils.atomic_io import atomic_path, atomic_write_text
from utils.errors import InputError, NonFiniteError
from utils.run_logging import RunLog, progress_enabled

# The --inner_grid search space, declared once: lr = factor x --lr, weight decay replaces --reg.
GRID = {"lr_factor": (1 / 3, 1.0, 3.0), "reg": (1e-5, 1e-3)}
INNER_SCORES = "inner_scores.csv"
INNER_KEY = 0  # the fold key of an inner unit's one-fold data


@dataclass(frozen=True)
class Setting:
    """One point of the inner search: learning rate and weight decay."""

    lr: float
    reg: float


def inner_settings(config: RunConfig) -> list[Setting]:
    """The settings the inner folds compare: the run's own, or every point of :data:`GRID`."""
    if not config.inner_grid:
        return [Setting(config.lr, config.reg)]
    return [Setting(config.lr * f, reg) for f in GRID["lr_factor"] for reg in GRID["reg"]]


def inner_folds(run: PreparedRun, outer: int) -> list[FoldIndices]:
    """The ``--inner_k`` inner folds of outer fold ``outer``: dataset positions of its outer training
    part only, whole cases, stratified by label, seeded by ``(--seed, outer)``; val = the inner fold,
    train = the rest of the outer training part, test empty."""
    data, config = run.task.data, run.config
    train = list(data.folds[outer].train)
    by_case: dict[str, list[int]] = {}
    for i in train:
        by_case.setdefault(data.csv_rows[data.dataset.slide_ids[i]][0], []).append(i)
    cases = [(case, data.dataset.labels[items[0]], items) for case, items in by_case.items()]
    try:
        vals = stratified_case_folds(cases, config.inner_k, config.seed, salt=(outer,))
    except InputError as err:
        raise InputError(f"outer fold {outer}: {err} (lower --inner_k or raise --k)") from None
    folds = []
    for val in vals:
        held = set(val)
        folds.append(FoldIndices([i for i in train if i not in held], sorted(val), []))
    return folds


def unit_run(run: PreparedRun, key: int, indices: FoldIndices, config: RunConfig) -> PreparedRun:
    """``run`` with ``config`` and one fold ``key`` of ``indices`` (the task copied, the data shared)."""
    task = copy.copy(run.task)
    task.config = config
    task.data = dataclasses.replace(run.task.data, folds={key: indices})
    return dataclasses.replace(run, config=config, task=task)


def unit_path(run_dir: Path, outer: int, setting: int, inner: int) -> Path:
    return res.fold_dir(run_dir, outer) / "inner" / f"setting_{setting}_fold_{inner}.json"


def _stored_scores(path: Path, setting: Setting, inputs: dict) -> list[dict] | None:
    """The per-epoch scores of a finished inner unit with the same setting and inputs, else None."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(stored, dict) or stored.get("setting") != dataclasses.asdict(setting):
        return None
    if changed_inputs(stored.get("inputs"), inputs):
        return None
    return stored.get("scores")


def train_inner_unit(run: PreparedRun, log: RunLog, label: str) -> list[dict]:
    """Train ``run``'s one fold (:data:`INNER_KEY`) for ``--max_epochs`` epochs without early stopping,
    validating every epoch; return per epoch ``{"epoch", "error", "loss"}`` of the validation pass."""
    config, task, device = run.config, run.task, run.device
    idx = task.data.folds[INNER_KEY]
    model = seeded_model(run).to(device)
    trainable = model.trainable_parameters()
    if not trainable:
        raise InputError(
            f"--cv nested: --model_type {config.model_type} has nothing to train (no training length to choose)"
        )
    loss_fn = task.loss().to(device)
    options = LoopOptions(
        config.prefetch_depth, config.num_workers, progress_enabled(config.quiet), config.amp
    )
    scores: list[dict] = []

    def validate():
        val = task.evaluate(model, INNER_KEY, idx.val, loss_fn, device, options, desc="inner val")
        scores.append({"epoch": len(scores), "error": float(val.error), "loss": float(val.loss)})
        return val

    try:
        fit(
            model,
            task,
            task.data.dataset.__getitem__,
            idx.train,
            [task.data.dataset.labels[i] for i in idx.train],
            validate,
            build_optimizer(config.opt, trainable, config.lr, config.reg),
            loss_fn,
            device,
            max_epochs=config.max_epochs,
            weighted_sample=config.weighted_sample,
            early_stopping=None,
            es_metric=config.es_metric,
            options=options,
            log=lambda line: log.info(f"{label}: {line}", console=False),
        )
    except NonFiniteError as err:  # a diverging inner setting stops the run, naming the unit
        raise NonFiniteError(f"{label}, {err}") from None
    return scores


def _monitored(value: float) -> float:
    return math.inf if math.isnan(value) else value


def inner_table(
    settings: list[Setting], scores: dict[tuple[int, int], list[dict]], metric: str
) -> pd.DataFrame:
    """One row per (setting, epoch): each inner fold's validation error and loss, their means, and
    ``chosen`` (1 on the selected row; see the module docstring for the rule)."""
    n_inner = 1 + max(j for _, j in scores)
    rows = []
    for g, setting in enumerate(settings):
        for epoch in range(min(len(scores[(g, j)]) for j in range(n_inner))):
            row = {"setting": g, "lr": setting.lr, "reg": setting.reg, "epoch": epoch}
            for j in range(n_inner):
                row[f"inner_{j}_error"] = scores[(g, j)][epoch]["error"]
                row[f"inner_{j}_loss"] = scores[(g, j)][epoch]["loss"]
            for name in ("error", "loss"):
                row[f"mean_{name}"] = float(
                    np.mean([_monitored(row[f"inner_{j}_{name}"]) for j in range(n_inner)])
                )
            rows.append(row)
    table = pd.DataFrame(rows)
    other = "loss" if metric == "error" else "error"
    best = min(
        range(len(rows)),
        key=lambda r: (
            rows[r][f"mean_{metric}"],
            rows[r][f"mean_{other}"],
            rows[r]["epoch"],
            rows[r]["setting"],
        ),
    )
    table["chosen"] = [int(r == best) for r in range(len(rows))]
    return table


def run_nested_fold(run: PreparedRun, fold: int, log: RunLog, model: SlideClassifier | None = None) -> dict:
    """Outer fold ``fold`` of a ``--cv nested`` run (module docstring): inner units (reused when
    finished), the choice, retraining on the outer training part and the outer test; returns the
    fold's row. ``model`` (a fresh :func:`seeded_model`) is not needed: every unit builds its own."""
    del model
    config = run.config
    if config.early_stopping:
        log.info(
            f"fold {fold}: notice: --early_stopping has no effect with --cv nested (the inner folds choose the epochs)"
        )
    settings = inner_settings(config)
    folds = inner_folds(run, fold)
    scores: dict[tuple[int, int], list[dict]] = {}
    for g, setting in enumerate(settings):
        unit_config = with_values(config, lr=setting.lr, reg=setting.reg, early_stopping=False)
        for j, indices in enumerate(folds):
            unit = unit_run(run, INNER_KEY, indices, unit_config)
            path = unit_path(run.run_dir, fold, g, j)
            inputs = unit.task.fold_inputs(INNER_KEY, run.tower)
            label = f"fold {fold} inner {j} setting {g} (lr {setting.lr:g}, reg {setting.reg:g})"
            stored = None if config.overwrite else _stored_scores(path, setting, inputs)
            if stored is not None:
                log.info(f"{label}: finished in an earlier run with the same inputs, reusing its scores")
                scores[(g, j)] = stored
                continue
            log.info(f"{label}: {len(indices.train)} train / {len(indices.val)} val {unit.task.items}")
            scores[(g, j)] = train_inner_unit(unit, log, label)
            record = {"setting": dataclasses.asdict(setting), "inputs": inputs, "scores": scores[(g, j)]}
            atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    table = inner_table(settings, scores, config.es_metric)
    with atomic_path(res.fold_dir(run.run_dir, fold) / INNER_SCORES, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    choice = table[table["chosen"] == 1].iloc[0]
    epochs = int(choice["epoch"]) + 1
    log.info(
        f"fold {fold}: inner folds chose lr {choice['lr']:g}, reg {choice['reg']:g}, {epochs} epoch(s) "
        f"(mean inner val {config.es_metric} {choice[f'mean_{config.es_metric}']:.4f}); "
        "retraining on the whole outer training part"
    )
    outer_config = with_values(
        config, lr=float(choice["lr"]), reg=float(choice["reg"]), max_epochs=epochs, early_stopping=False
    )
    return run_fold(unit_run(run, fold, run.task.data.folds[fold], outer_config), fold, log)
