"""The k-fold experiment behind ``main.py``: its stages, the same for every task kind.

What differs between classification and survival (data, loss, epoch, evaluation, metrics, result
files) is the task object's (:mod:`training.tasks`); one fold is :func:`training.fold.run_fold`.
Order of work (docs/method.md §8, docs/survival.md §7):

1. :func:`run_experiment` checks the flags, takes the run folder's lock (a second run into the same
   folder stops with one line naming the holder) and starts ``log.txt``; every error from here on is
   also written there.
2. :func:`prepare_run` checks every input before any training (the task's ``prepare``: dataset CSV,
   splits, features, every slide of every requested fold, all problems at once) and computes the
   model's build spec once.
3. :func:`write_run_header` writes ``config.json`` and the log's header.
4. Finished folds of an earlier run are reused (:func:`reusable_fold_row`) only when the flags
   (``config.json``) and the fold's inputs (``fold_<k>/inputs.json``: split, CSV rows, prompt file,
   text tower, feature files) are unchanged; other folds are (re)trained by :func:`train_fold` under a
   fold lock (:func:`training.fold.run_fold`: seed reset, model, optimiser, training with validation
   every epoch and early stopping, best state restored, checkpoint with its identity, val/test
   predictions). With ``--cv nested`` each fold is an outer fold whose inner folds choose the training
   length first (:mod:`training.nested`).
5. :func:`finish_run`: the task's summary CSVs (mean and population std) and one-screen table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.base import SlideClassifier
from models.registry import model_info
from models.towers.loading import tower_identity
from training import results as res
from training.config import RunConfig, validate_config
from training.fingerprints import changed_inputs, read_fold_inputs
from training.fold import PreparedRun, run_fold, seeded_model
from training.nested import run_nested_fold
from training.run_checks import check_writable as _check_writable
from training.tasks import task_for
from training.tasks.classification import effective_bag_loss, resolve_prompts
from utils.allocator import keep_freed_memory
from utils.device import resolve_device
from utils.errors import InputError
from utils.locking import FolderLock, LockHeld
from utils.run_logging import RunLog
from utils.seed import configure_determinism

__all__ = [  # resolve_prompts and seeded_model are re-exported for the callers of this module
    "OpenRunFolder",
    "PreparedRun",
    "RunFolderLocked",
    "finish_run",
    "lock_run_folder",
    "open_run_folder",
    "prepare_run",
    "resolve_prompts",
    "reusable_fold_row",
    "run_experiment",
    "seeded_model",
    "train_fold",
    "write_run_header",
]


def prepare_run(config: RunConfig, log: RunLog) -> PreparedRun:
    """Check flags, output folder, settings of an existing run folder and every input; write nothing."""
    validate_config(config)
    kind = task_for(config)
    run_dir = kind.run_dir(config)
    _check_writable(run_dir)
    kind.check_model(config)
    config = kind.resolve(config)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    keep_freed_memory()
    configure_determinism(config.deterministic)
    device = resolve_device(config.device)
    if not config.overwrite:
        res.check_resumable(run_dir, config)
    task = kind.prepare(config, log)
    spec = config.model_spec(task.data.task)
    tower = tower_identity(spec.tower) if model_info(config.model_type).text_tower else None
    return PreparedRun(config, task, spec, run_dir, device, tower)


def write_run_header(run: PreparedRun, log: RunLog) -> bool:
    """Under the run lock: check the folder's settings again, write ``config.json``, log the header.

    Returns whether finished folds may be reused (False with ``--overwrite``).
    """
    config, spec = run.config, run.spec
    resuming = False if config.overwrite else res.check_resumable(run.run_dir, config)
    text_model = model_info(config.model_type).text_tower
    extra = {"device": str(run.device), "run_dir": str(run.run_dir)}
    if text_model:
        extra["prompt_file"] = str(spec.prompt_file)
    extra.update(run.task.config_extra())
    res.write_run_config(run.run_dir, config, extra)
    log.info(f"run directory: {run.run_dir}")
    log.info(run.task.describe(run.device))
    if text_model:
        log.info(f"prompts: {spec.prompt_file}")
    if config.model_type == "HiVE_MIL":
        from models.hivemil.model import prompt_slicing_notice  # HiVE-MIL's modules only when used

        if notice := prompt_slicing_notice(spec):
            log.info(notice)
    if effective_bag_loss(config) != config.bag_loss:
        log.info(
            f"notice: --bag_loss {config.bag_loss} has no effect on the released HiVE-MIL "
            "(--variant reference trains with cross-entropy + lambda * HTCL; --variant corrected honours it)"
        )
    return resuming


def reusable_fold_row(run: PreparedRun, fold: int, log: RunLog) -> dict | None:
    """The stored row of a finished fold whose inputs are unchanged, else None (saying why, when it changed)."""
    row = res.finished_fold_row(run.run_dir, fold, run.task.metric_columns, run.task.prediction_parts(fold))
    if row is None:
        return None
    inputs = run.task.fold_inputs(fold, run.tower)
    changes = changed_inputs(read_fold_inputs(res.fold_inputs_path(run.run_dir, fold)), inputs)
    if changes:
        log.info(f"fold {fold}: inputs changed since it finished ({'; '.join(changes)}); training it again")
        return None
    log.info(f"fold {fold}: finished in an earlier run with the same inputs, reusing its results")
    return row


class RunFolderLocked(InputError):
    """Another process holds the run folder's lock (this run wrote nothing there)."""


def lock_run_folder(run_dir: Path, label: str = "") -> FolderLock:
    """Create ``run_dir`` and take its lock (:class:`utils.locking.FolderLock`); a folder held by another
    process is one :class:`RunFolderLocked` line naming the holder (prefixed with ``label``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(run_dir)
    try:
        lock.acquire()
    except LockHeld as err:
        prefix = f"{label}: " if label else ""
        raise RunFolderLocked(f"{prefix}{err}; wait for it to finish or use another --results_dir") from None
    return lock


@dataclass
class OpenRunFolder:
    """A run folder opened for writing: its lock, the folds reused from an earlier run and those to train."""

    lock: FolderLock
    reused: dict[int, dict] = field(default_factory=dict)  # fold -> its stored row
    to_train: list[int] = field(default_factory=list)


def open_run_folder(
    run: PreparedRun, log: RunLog, lock: FolderLock | None = None, note: str | None = None
) -> OpenRunFolder:
    """Open ``run``'s folder for writing, the one step of ``main.py`` and the grid (``reproduce.py``):
    lock it (unless the caller holds ``lock`` already), start its ``log.txt`` (``note`` first), write
    ``config.json`` and the header, and sort the folds into reused (finished with unchanged inputs) and
    to train. A lock taken here is released again when a later part of the step fails."""
    own_lock = lock is None
    opened = OpenRunFolder(lock_run_folder(run.run_dir) if own_lock else lock)
    try:
        log.attach(run.run_dir / "log.txt")
        if note:
            log.info(note, console=False)
        resuming = write_run_header(run, log)
        for fold in run.config.fold_range:
            row = reusable_fold_row(run, fold, log) if resuming else None
            if row is None:
                opened.to_train.append(fold)
            else:
                opened.reused[fold] = row
    except BaseException:
        if own_lock:
            opened.lock.release()
        raise
    return opened


def train_fold(run: PreparedRun, fold: int, log: RunLog, model: SlideClassifier | None = None) -> dict:
    """Train fold ``fold`` under its own lock (``.fold_<k>.lock`` in the run folder): a fold is never
    trained twice at once, also when several workers share one run. With ``--cv nested`` the fold is an
    outer fold: its inner units, choice and retraining (:func:`training.nested.run_nested_fold`) all
    happen under that lock."""
    lock = FolderLock(run.run_dir, name=f".fold_{fold}.lock")
    try:
        lock.acquire()
    except LockHeld as err:
        raise InputError(f"fold {fold}: {err}") from None
    try:
        body = run_nested_fold if run.config.cv == "nested" else run_fold
        return body(run, fold, log, model)
    finally:
        lock.release()


def finish_run(run: PreparedRun, rows: list[dict], log: RunLog) -> Path:
    """Write the summary CSVs of ``rows`` (and, for survival, the Kaplan-Meier plot) and log the table;
    returns the results file."""
    return run.task.finish(run.run_dir, rows, log)


def run_experiment(config: RunConfig, log: RunLog | None = None) -> list[dict]:
    """Run (or resume) every fold of ``config`` and write the summaries; return the fold rows.

    Nothing is written before every input has been checked. Then the run folder is created and locked
    (:class:`utils.locking.FolderLock`): a second run into the same folder stops with one line naming
    the holder. An input error of a rerun is also appended to the existing folder's ``log.txt``.
    """
    log = log or RunLog(quiet=config.quiet)
    run_dir: Path | None = None
    opened: OpenRunFolder | None = None
    try:
        run_dir = task_for(config).run_dir(config)
        run = prepare_run(config, log)
        # The first fold's model now, so model errors (type, tower, prompts) come before any output.
        first_model: SlideClassifier | None = seeded_model(run)
        opened = open_run_folder(run, log)
        rows = []
        for fold in run.config.fold_range:
            row = opened.reused.get(fold)
            if row is None:
                row = train_fold(run, fold, log, model=first_model)
                first_model = None
            rows.append(row)
        finish_run(run, rows, log)
        return rows
    except InputError as err:
        lock_refused = isinstance(err, RunFolderLocked)
        if run_dir is not None and run_dir.is_dir() and not log.attached and not lock_refused:
            log.attach(run_dir / "log.txt")  # a rerun's error goes to its existing log too
        log.info(f"error: {err}", console=False)
        raise
    finally:
        if opened is not None:
            opened.lock.release()
        log.close()
