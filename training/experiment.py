"""The k-fold experiment behind ``main.py``: check inputs, then train, evaluate and record each fold.

Order of work (docs/method.md §8):

1. :func:`prepare_data` checks every input before any training -- task, dataset CSV, split folder and
   files, split slide ids against the CSV, feature files (``--skip-missing`` drops missing slides with a
   warning), feature dimension against the first slide -- and builds one bounded-cache
   :class:`datasets.bag_dataset.BagDataset` over all slides the folds use.
2. :func:`run_experiment` reuses finished folds of an earlier run with the same settings (resume),
   and for every other fold calls :func:`run_fold`: seed reset, model, optimiser, training with
   validation every epoch and early stopping, best state restored, checkpoint, val/test predictions.
3. Summary CSVs (mean and population std) and a one-screen table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from datasets.bag_dataset import BagDataset
from datasets.dataset_csv import read_dataset_csv
from datasets.features import FeatureLayout, missing_feature_slides, read_slide_bag
from datasets.splits import PARTS, Split, check_split_against_csv, read_split, split_csv_path
from datasets.tasks import TaskSpec, get_task
from models.base import SlideClassifier
from models.registry import build_model
from training import results as res
from training.bag_losses import build_bag_loss
from training.config import RunConfig, validate_config, with_values
from training.early_stopping import EarlyStopping
from training.evaluation import EvalResult, evaluate
from training.loop import FitResult, LoopOptions, build_optimizer, fit, restore_state
from utils.device import resolve_device
from utils.errors import InputError
from utils.run_logging import RunLog, ScalarLog, progress_enabled
from utils.seed import configure_determinism, seed_everything

MAX_LISTED = 5


@dataclass
class FoldIndices:
    """Positions in the shared dataset of one fold's train/val/test slides, each part in dataset-CSV order
    (the order the released code's split datasets, and so its samplers, see them)."""

    train: list[int]
    val: list[int]
    test: list[int]


@dataclass
class PreparedData:
    """Everything the folds read: the task, one dataset over all used slides, per-fold positions."""

    task: TaskSpec
    dataset: BagDataset
    folds: dict[int, FoldIndices]
    dropped: list[str] = field(default_factory=list)


def _listed(ids: list[str]) -> str:
    shown = ", ".join(ids[:MAX_LISTED])
    return shown + (f" (+{len(ids) - MAX_LISTED} more)" if len(ids) > MAX_LISTED else "")


def _read_fold_splits(config: RunConfig, task: TaskSpec, df) -> dict[int, Split]:
    """Read and check the split file of every fold to run."""
    splits_root = config.resolve_path(config.splits_root)
    folder = split_csv_path(splits_root, task.name, config.few_shot_num, 0).parent
    if not folder.is_dir():
        raise InputError(
            f"split folder not found: {folder} (make it with create_splits.py for task {task.name} "
            f"and --few_shot_num {config.few_shot_num}, or point --splits_root at one)"
        )
    splits = {}
    for fold in config.fold_range:
        path = split_csv_path(splits_root, task.name, config.few_shot_num, fold)
        if not path.is_file():
            raise InputError(
                f"split file not found: {path} (fold {fold} of --k {config.k}; make it with create_splits.py)"
            )
        split = read_split(path)
        unknown = check_split_against_csv(split, df)
        if unknown:
            raise InputError(f"{path}: {len(unknown)} slide(s) not in {task.csv_path}: {_listed(unknown)}")
        splits[fold] = split
    return splits


def _limit_split(split: Split, config: RunConfig, fold: int) -> Split:
    """Apply ``--label_frac`` (seeded subset of the training slides) and ``--max_slides``/``--testing``."""
    train = list(split.train)
    if config.label_frac < 1.0 and train:
        keep = max(1, int(round(config.label_frac * len(train))))
        rng = np.random.default_rng([config.seed, fold])
        chosen = sorted(rng.choice(len(train), size=keep, replace=False).tolist())
        train = [train[i] for i in chosen]
    parts = {"train": train, "val": list(split.val), "test": list(split.test)}
    limit = config.slide_limit
    if limit is not None:
        parts = {name: ids[:limit] for name, ids in parts.items()}
    return Split(**parts)


def run_task(config: RunConfig) -> TaskSpec:
    """The task named by ``config`` (its CSV and prompt folders from ``--csv_dir`` / ``--prompt_dir``)."""
    return get_task(
        config.task,
        csv_dir=config.resolve_path(config.csv_dir),
        prompt_dir=config.resolve_path(config.prompt_dir),
        llm=config.LLM,
    )


def resolve_prompts(config: RunConfig) -> RunConfig:
    """``config`` with ``--LLM`` resolved (released default gpt4o when its file exists, else curated)."""
    return config if config.LLM else with_values(config, LLM=run_task(config).default_llm())


def prepare_data(config: RunConfig, log: RunLog) -> PreparedData:
    """Check all inputs of the run (one-line :class:`InputError` each) and build the shared dataset."""
    task = run_task(config)
    df = read_dataset_csv(task.csv_path, task)
    label_of = dict(zip(df["slide_id"].astype(str), df["label_idx"].astype(int)))
    splits = {fold: _limit_split(s, config, fold) for fold, s in _read_fold_splits(config, task, df).items()}

    layout = FeatureLayout(
        Path(config.data_root_dir).expanduser(),
        task.name,
        config.feature_extractor,
        config.low_mag,
        config.high_mag,
    )
    if not layout.root.is_dir():
        raise InputError(
            f"feature folder not found: {layout.root} (from --data_root_dir {config.data_root_dir}, "
            f"--task {task.name}, --feature_extractor {config.feature_extractor})"
        )
    used = list(dict.fromkeys(s for split in splits.values() for s in split.all_ids()))
    missing = missing_feature_slides(layout, used)
    if missing:
        where = f"{layout.low_dir} / {layout.hier_dir}"
        if not config.skip_missing:
            raise InputError(
                f"features missing for {len(missing)} of {len(used)} slides ({where}): {_listed(missing)}; "
                "extract them or pass --skip-missing to drop those slides"
            )
        log.warning(
            f"--skip-missing: dropping {len(missing)} slide(s) without features ({where}): {_listed(missing)}"
        )
        gone = set(missing)
        splits = {
            f: Split(*[[s for s in sp.part(p) if s not in gone] for p in PARTS]) for f, sp in splits.items()
        }
        used = [s for s in used if s not in gone]
    for fold, split in splits.items():
        empty = [p for p in PARTS if not split.part(p)]
        if empty:
            raise InputError(
                f"fold {fold}: no slides left in {', '.join(empty)} (split of --few_shot_num {config.few_shot_num})"
            )

    first = used[0]
    bag = read_slide_bag(layout, first, label_of[first])
    if bag.feature_dim != config.feature_dim:
        raise InputError(
            f"--feature_dim {config.feature_dim} does not match the features of slide {first} "
            f"({layout.low_file(first)}: dimension {bag.feature_dim})"
        )
    dataset = BagDataset(
        layout, used, [label_of[s] for s in used], cache_mb=config.cache_mb, expected_dim=config.feature_dim
    )
    position = {s: i for i, s in enumerate(used)}
    csv_row = {s: row for row, s in enumerate(df["slide_id"].astype(str))}
    folds = {
        fold: FoldIndices(
            *[[position[s] for s in sorted(split.part(p), key=csv_row.__getitem__)] for p in PARTS]
        )
        for fold, split in splits.items()
    }
    return PreparedData(
        task=task, dataset=dataset, folds=folds, dropped=missing if config.skip_missing else []
    )


def effective_bag_loss(config: RunConfig) -> str:
    """The slide loss a run trains with: the released HiVE-MIL always uses cross-entropy
    (``--bag_loss`` has no effect there, docs/divergences.md §11); the corrected variant and every
    other model honour ``--bag_loss``."""
    if config.model_type == "HiVE_MIL" and config.variant == "reference":
        return "ce"
    return config.bag_loss


def seeded_model(config: RunConfig, task: TaskSpec) -> SlideClassifier:
    """Reset every seed (start of a fold, as published), then build the model: the fold's first RNG use."""
    seed_everything(config.seed, config.deterministic)
    return build_model(config.model_type, config.model_spec(task))


def run_fold(
    config: RunConfig,
    data: PreparedData,
    fold: int,
    run_dir: Path,
    device: torch.device,
    log: RunLog,
    model: SlideClassifier | None = None,
) -> dict:
    """Train and evaluate one fold; write its checkpoint, predictions and summary row; return the row.

    ``model``, when given, must come straight from :func:`seeded_model` with no RNG use since, so the
    fold is exactly as if it had been built here.
    """
    task, dataset, idx = data.task, data.dataset, data.folds[fold]
    model = (model if model is not None else seeded_model(config, task)).to(device)
    loss_fn = build_bag_loss(effective_bag_loss(config), task.num_classes).to(device)
    trainable = model.trainable_parameters()
    # Training-free models (the zero-shot baseline) are evaluated as they are.
    optimizer = build_optimizer(config.opt, trainable, config.lr, config.reg) if trainable else None
    options = LoopOptions(
        config.prefetch_depth, config.num_workers, progress_enabled(config.quiet), config.amp
    )
    scalars = ScalarLog(run_dir / "tb" / f"fold_{fold}" if config.log_data else None)
    n_trainable = sum(p.numel() for p in model.trainable_parameters())
    log.info(
        f"fold {fold}: {len(idx.train)} train / {len(idx.val)} val / {len(idx.test)} test slides, "
        f"{n_trainable} trainable parameters"
    )

    def run_eval(indices: list[int], desc: str) -> EvalResult:
        return evaluate(
            model,
            dataset.__getitem__,
            indices,
            loss_fn,
            device,
            task.num_classes,
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
            fitted = fit(
                model,
                dataset.__getitem__,
                idx.train,
                [dataset.labels[i] for i in idx.train],
                lambda: run_eval(idx.val, "val"),
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
            )
        restore_state(model, fitted.best_state)
        res.save_checkpoint(res.checkpoint_path(run_dir, fold), model.state_dict())
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
    res.write_predictions(res.predictions_path(run_dir, fold, "val"), val, task.class_names)
    res.write_predictions(res.predictions_path(run_dir, fold, "test"), test, task.class_names)
    res.write_fold_row(run_dir, fold, row)  # last: marks the fold finished
    log.info(
        f"fold {fold}: best epoch {fitted.best_epoch} of {fitted.epochs_run}; "
        f"test acc {row['test_acc']:.4f} auc {row['test_auc']:.4f} f1 {row['test_f1']:.4f}"
    )
    return row


def run_experiment(config: RunConfig, log: RunLog | None = None) -> list[dict]:
    """Run (or resume) every fold of ``config`` and write the summaries; return the fold rows."""
    log = log or RunLog(quiet=config.quiet)
    validate_config(config)
    config = resolve_prompts(config)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    configure_determinism(config.deterministic)
    device = resolve_device(config.device)
    run_dir = config.run_dir
    resuming = False if config.overwrite else res.check_resumable(run_dir, config)
    data = prepare_data(config, log)
    # Build the first fold's model now, so model errors (type, text tower, prompts) come before any output.
    first_model: SlideClassifier | None = seeded_model(config, data.task)
    run_dir.mkdir(parents=True, exist_ok=True)
    log.attach(run_dir / "log.txt")
    res.write_run_config(run_dir, config, {"device": str(device), "run_dir": str(run_dir)})
    log.info(f"run directory: {run_dir}")
    log.info(
        f"task {data.task.name}: classes {', '.join(data.task.class_names)}; model {config.model_type}; device {device}"
    )
    if effective_bag_loss(config) != config.bag_loss:
        log.info(
            f"notice: --bag_loss {config.bag_loss} has no effect on the released HiVE-MIL "
            "(--variant reference trains with cross-entropy + lambda * HTCL; --variant corrected honours it)"
        )

    rows = []
    try:
        for fold in config.fold_range:
            row = res.finished_fold_row(run_dir, fold) if resuming else None
            if row is not None:
                log.info(f"fold {fold}: finished in an earlier run, reusing its results")
            else:
                row = run_fold(config, data, fold, run_dir, device, log, model=first_model)
                first_model = None
            rows.append(row)
        summary_path, results_path = res.write_summaries(run_dir, rows, config.fold_range, config.k)
        log.info("")
        log.info(res.format_summary_table(rows))
        log.info(f"results: {results_path}")
    finally:
        log.close()
    return rows
