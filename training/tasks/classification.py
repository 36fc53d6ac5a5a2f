"""The classification task (the published one): slides, classes, cross-entropy or ``--bag_loss``.

:class:`ClassificationTask` supplies the kind-specific parts of a run (:mod:`training.tasks`); its
survival counterpart is :mod:`training.tasks.survival`. Order of work (docs/method.md §8):

* :meth:`ClassificationTask.prepare` (:func:`prepare_data`) checks every input before any training --
  task and prompt classes, dataset CSV, split files (slides in the CSV, no slide in two parts, no
  patient in two parts), feature files (``--skip-missing`` drops missing slides with a warning) and then
  *every slide* of every requested fold (keys, shapes, dimensions, alignment, NaN/Inf, stale
  hierarchical files, 20x patches without a 5x parent), all problems reported at once -- and builds one
  bounded-cache :class:`datasets.bag_dataset.BagDataset` over all slides the folds use.
* One fold: loss :func:`effective_bag_loss` (+ the model's auxiliary loss), one slide per optimiser
  step (:meth:`ClassificationTask.train_epoch`), evaluation (:func:`evaluate`: loss, probabilities,
  ACC/AUC/macro-F1), the epoch's log line and scalars, per-slide prediction files.
* :meth:`ClassificationTask.finish`: ``summary.csv`` / ``results.csv`` (mean and population std) and
  a one-screen table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from datasets.bag import SlideBag
from datasets.bag_dataset import BagDataset
from datasets.dataset_csv import read_dataset_csv
from datasets.features import FeatureLayout, missing_feature_slides
from datasets.splits import (
    PARTS,
    Split,
    check_split_against_csv,
    cross_validation_splits,
    read_split,
    split_csv_path,
    split_leakage,
)
from datasets.tasks import TaskSpec
from models.passes import forward_pass
from models.registry import model_info
from training import results as res
from training.bag_losses import build_bag_loss
from training.chunks import CHUNK_METRIC_COLUMNS, check_chunkable, evaluate_chunked, train_chunked_epoch
from training.config import RunConfig, with_values
from training.fingerprints import fold_inputs
from training.loop import LoopOptions, check_finite_logits, check_finite_loss
from training.run_checks import check_every_slide as _check_every_slide
from training.run_checks import check_feature_dim as _check_feature_dim
from training.run_checks import feature_layout as _feature_layout
from training.run_checks import limit_split as _limit_split
from utils.amp import autocast, grad_scaler
from utils.errors import InputError
from utils.errors import listed as _listed
from utils.metrics import classification_metrics
from utils.prefetch import prefetch
from utils.run_logging import RunLog, bar


# ------------------------------------------------------------------------------------------- data
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
    csv_rows: dict[str, list] = field(default_factory=dict)  # slide -> [case_id, label, level0_mag]

    @property
    def layout(self) -> FeatureLayout:
        return self.dataset.layout

    def fold_split(self, fold: int) -> dict[str, list[str]]:
        """Slide ids of each part of ``fold`` (dataset-CSV order)."""
        idx = self.folds[fold]
        return {part: [self.dataset.slide_ids[i] for i in getattr(idx, part)] for part in PARTS}


def _read_fold_splits(config: RunConfig, task: TaskSpec, df) -> dict[int, Split]:
    """Read and check the split file of every fold to run; with ``--cv nested`` make the outer folds
    instead (:func:`datasets.splits.cross_validation_splits` over every slide of the CSV, seeded by
    ``--seed``; no val part: the inner folds of :mod:`training.nested` choose the training length)."""
    if config.cv == "nested":
        outer = cross_validation_splits(df, config.k, config.seed)
        return {fold: outer[fold] for fold in config.fold_range}
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


def resolve_prompts(config: RunConfig) -> RunConfig:
    """``config`` with ``--LLM`` resolved (released default gpt4o when its file exists, else curated)."""
    return config if config.LLM else with_values(config, LLM=config.task_spec().default_llm())


def prepare_data(config: RunConfig, log: RunLog) -> PreparedData:
    """Check all inputs of the run (one-line :class:`InputError` each) and build the shared dataset."""
    task = config.task_spec()
    df = read_dataset_csv(task.csv_path, task)
    empty_classes = [c for c in task.class_names if not (df["label"] == c).any()]
    if empty_classes:
        raise InputError(
            f"{task.csv_path}: no slides of class(es) {', '.join(map(repr, empty_classes))}, which the task "
            f"defines (classes: {', '.join(task.class_names)}; for a custom task they are the prompt file's keys)"
        )
    label_of = dict(zip(df["slide_id"].astype(str), df["label_idx"].astype(int)))
    case_of = dict(zip(df["slide_id"].astype(str), df["case_id"].astype(str)))
    csv_rows = {
        str(r.slide_id): [str(r.case_id), str(r.label), int(r.level0_mag)] for r in df.itertuples(index=False)
    }
    raw_splits = _read_fold_splits(config, task, df)
    _check_leakage(config, raw_splits, case_of)
    splits = {fold: _limit_split(s, config, fold) for fold, s in raw_splits.items()}

    layout = _feature_layout(config, task.name)
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
    needed = ("train", "test") if config.cv == "nested" else PARTS
    for fold, split in splits.items():
        empty = [p for p in needed if not split.part(p)]
        if empty:
            source = (
                "outer fold of --cv nested"
                if config.cv == "nested"
                else f"split of --few_shot_num {config.few_shot_num}"
            )
            raise InputError(f"fold {fold}: no slides left in {', '.join(empty)} ({source})")
        trained = {label_of[s] for s in split.train}
        absent = [name for c, name in enumerate(task.class_names) if c not in trained]
        if absent:
            log.warning(f"fold {fold}: no training slide of class(es) {', '.join(absent)}")

    _check_feature_dim(config, layout, used[0])
    dataset = BagDataset(
        layout, used, [label_of[s] for s in used], cache_mb=config.cache_mb, expected_dim=config.feature_dim
    )
    position = {s: i for i, s in enumerate(used)}
    _check_every_slide(config, layout, used, lambda s: dataset[position[s]], log)
    csv_row = {s: row for row, s in enumerate(df["slide_id"].astype(str))}
    folds = {fold: FoldIndices(*split.positions(position, csv_row)) for fold, split in splits.items()}
    return PreparedData(
        task=task,
        dataset=dataset,
        folds=folds,
        dropped=missing if config.skip_missing else [],
        csv_rows={s: csv_rows[s] for s in used},
    )


def _check_leakage(config: RunConfig, splits: dict[int, Split], case_of: dict[str, str]) -> None:
    """No slide in two parts of a split; no patient in two parts unless ``--allow-patient-overlap``."""
    for fold, split in splits.items():
        slide_problems, patient_problems = split_leakage(split, case_of)
        if slide_problems:
            raise InputError(f"fold {fold} split: {'; '.join(slide_problems)}")
        if patient_problems and not config.allow_patient_overlap:
            raise InputError(
                f"fold {fold} split: {'; '.join(patient_problems)} (patient-level leakage; "
                "--allow-patient-overlap accepts it)"
            )


def effective_bag_loss(config: RunConfig) -> str:
    """The slide loss a run trains with: the released HiVE-MIL always uses cross-entropy
    (``--bag_loss`` has no effect there, docs/divergences.md §11); the corrected variant and every
    other model honour ``--bag_loss``."""
    return model_info(config.model_type).bag_loss(config.bag_loss, config.variant)


# ----------------------------------------------------------------------------- train and evaluate
@dataclass
class EpochStats:
    """One training epoch: mean loss and training error (``train/loss``, ``train/error``)."""

    loss: float
    error: float


@dataclass
class EvalResult:
    """Per-slide outputs of one pass and their metrics (``acc``, ``auc``, ``f1``)."""

    slide_ids: list[str]
    labels: np.ndarray  # [n] int
    probs: np.ndarray  # [n, C] float
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=1) if len(self.labels) else np.zeros(0, dtype=np.int64)

    @property
    def error(self) -> float:
        return 1.0 - self.metrics["acc"]


def train_one_epoch(
    model: nn.Module,
    load: Callable[[int], SlideBag],
    indices: Sequence[int],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    options: LoopOptions,
    desc: str = "train",
) -> EpochStats:
    """One pass over ``indices`` (already in visiting order), one slide per optimiser step (docs/method.md
    §8.1): loss = bag_loss(logits, label) + out.aux_loss (e.g. lambda * HTCL). A loss that is not finite
    stops training (:func:`training.loop.check_finite_loss`)."""
    model.train()
    total_loss, wrong = 0.0, 0
    scaler = grad_scaler(options.amp, device)
    bags = prefetch(load, indices, depth=options.prefetch_depth, workers=options.workers)
    for step, bag in enumerate(
        bar(bags, total=len(indices), desc=desc, enabled=options.progress, leave=False)
    ):
        loss, correct = train_step(
            model,
            bag.to(device),
            optimizer,
            loss_fn,
            scaler,
            device,
            options.amp,
            step,
            f"slide {bag.slide_id}",
        )
        total_loss += loss
        wrong += int(not correct)
    n = max(len(indices), 1)
    return EpochStats(loss=total_loss / n, error=wrong / n)


def train_step(
    model: nn.Module,
    bag: SlideBag,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    scaler,
    device: torch.device,
    amp: str = "off",
    step: int = 0,
    item: str | None = None,
) -> tuple[float, bool]:
    """One optimiser step on one bag (already on ``device``): ``(loss, prediction == label)``. A loss that
    is not finite stops training (:func:`training.loop.check_finite_loss`: ``step`` of the epoch and the
    ``item`` it covers, default the bag's slide)."""
    with autocast(amp, device):
        out = model(bag)
    target = torch.tensor([bag.label], device=out.logits.device)
    loss = loss_fn(out.logits.float(), target) + out.aux_loss.float()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    value = float(loss.detach())  # the one read-back of the loss, logged and checked
    check_finite_loss(value, step, item or f"slide {bag.slide_id}", optimizer)
    return value, int(out.logits.detach().argmax(dim=1).item()) == bag.label


def evaluate(
    model: nn.Module,
    load: Callable[[int], SlideBag],
    indices: Sequence[int],
    loss_fn: nn.Module,
    device: torch.device,
    num_classes: int,
    *,
    use_text_cache: bool = True,
    prefetch_depth: int = 2,
    workers: int = 1,
    progress: bool = False,
    desc: str = "eval",
    amp: str = "off",
) -> EvalResult:
    """Evaluate ``model`` on bags ``load(i)`` for ``i`` in ``indices`` (:func:`models.passes.forward_pass`).

    The reported loss is the mean over slides of the training objective, bag loss + the model's
    auxiliary loss (CE + lambda * HTCL for HiVE-MIL, as the released validation logs it: HTCL varies
    slightly by slide because text nodes receive image messages). A slide whose logits are not finite
    stops the pass (:func:`training.loop.check_finite_logits`, the slide named).
    """
    slide_ids: list[str] = []
    labels: list[int] = []
    probs: list[np.ndarray] = []
    total_loss = 0.0

    def visit(bag: SlideBag, out) -> None:
        nonlocal total_loss
        target = torch.tensor([bag.label], device=out.logits.device)
        logits = out.logits.float()
        total_loss += float(loss_fn(logits, target) + out.aux_loss.float())
        # probabilities and logits come back together (one copy); a logit that is not finite stops the pass
        both = torch.cat([torch.softmax(logits, dim=1), logits], dim=1).reshape(-1).cpu().numpy()
        check_finite_logits(both[num_classes:], desc, f"slide {bag.slide_id}")
        probs.append(both[:num_classes])
        labels.append(int(bag.label))
        slide_ids.append(bag.slide_id)

    forward_pass(
        model, load, indices, device, visit, use_text_cache=use_text_cache, prefetch_depth=prefetch_depth,
        workers=workers, progress=progress, desc=desc, amp=amp,
    )  # fmt: skip
    label_arr = np.asarray(labels, dtype=np.int64)
    prob_arr = np.stack(probs).astype(np.float64) if probs else np.zeros((0, num_classes))
    loss = total_loss / len(labels) if labels else math.nan
    return EvalResult(slide_ids, label_arr, prob_arr, loss, classification_metrics(label_arr, prob_arr))


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


# ---------------------------------------------------------------------------------------- the task
class ClassificationTask:
    """Slide classification (see the module docstring); an instance holds the resolved config and the
    checked :class:`PreparedData` of one run. The epoch hooks used by :func:`training.loop.fit` need
    neither (``ClassificationTask()`` serves a bare loop)."""

    name = "classification"
    metric_columns = res.METRIC_COLUMNS
    items = "slides"
    watched = {"error": "validation-error", "loss": "validation-loss"}
    nan_is_worst = False

    def __init__(self, config: RunConfig | None = None, data: PreparedData | None = None):
        self.config = config
        self.data = data
        if self._chunk_size:  # chunked runs add chunk-level accuracy (training.chunks)
            self.metric_columns = res.METRIC_COLUMNS + CHUNK_METRIC_COLUMNS

    @property
    def _chunk_size(self) -> int:
        """``--chunk_size`` (0: whole slides; :mod:`training.chunks`)."""
        return self.config.chunk_size if self.config is not None else 0

    # ---- the run (before data)
    @staticmethod
    def defaults(config: RunConfig) -> dict:
        return {}  # the RunConfig field defaults are the published classification ones

    @staticmethod
    def run_dir(config: RunConfig) -> Path:
        return config.run_dir

    @staticmethod
    def check_model(config: RunConfig) -> None:
        if model_info(config.model_type).survival:
            why = (
                "--task_kind classification was given"
                if config.task_kind == ClassificationTask.name
                else "its dataset CSV has no survival_months column"
            )
            raise InputError(
                f"--model_type {config.model_type} predicts survival, but task {config.task} is run as a "
                f"classification task ({why}; docs/survival.md §2)"
            )
        check_chunkable(config.model_type, config.chunk_size)

    @staticmethod
    def resolve(config: RunConfig) -> RunConfig:
        return resolve_prompts(config)

    @classmethod
    def prepare(cls, config: RunConfig, log: RunLog) -> ClassificationTask:
        return cls(config, prepare_data(config, log))

    # ---- header and fold inputs
    def describe(self, device: torch.device) -> str:
        task = self.data.task
        return (
            f"task {task.name}: classes {', '.join(task.class_names)}; model {self.config.model_type}; "
            f"device {device}"
        )

    def config_extra(self) -> dict:
        return {}

    def fold_inputs(self, fold: int, tower: dict | None) -> dict:
        """What fold ``fold``'s results depend on besides the flags (:mod:`training.fingerprints`)."""
        prompt = (
            self.data.task.prompt_file(self.config.LLM)
            if model_info(self.config.model_type).text_tower
            else None
        )
        return fold_inputs(self.data.fold_split(fold), self.data.csv_rows, self.data.layout, prompt, tower)

    # ---- one fold
    def loss(self) -> nn.Module:
        return build_bag_loss(effective_bag_loss(self.config), self.data.task.num_classes)

    def start_note(self) -> str:
        return f"; chunks of at most {self._chunk_size} instances" if self._chunk_size else ""

    def prediction_parts(self, fold: int) -> tuple[str, ...]:
        return ("val", "test")

    def sampling_labels(self, indices) -> list[int]:
        """The class of each slide (``--weighted_sample`` balances the classes, as released)."""
        return [self.data.dataset.labels[i] for i in indices]

    def train_epoch(self, model, load, order, optimizer, loss_fn, device, options, desc: str = "train"):
        if self._chunk_size:
            loss, error = train_chunked_epoch(
                model, load, order, optimizer, loss_fn, device, options, self._chunk_size, train_step,
                mag=model_info(self.config.model_type).magnification, desc=desc,
            )  # fmt: skip
            return EpochStats(loss=loss, error=error)
        return train_one_epoch(model, load, order, optimizer, loss_fn, device, options, desc=desc)

    def evaluate(self, model, fold: int, indices, loss_fn, device, options: LoopOptions, desc: str = "eval"):
        if self._chunk_size:
            return EvalResult(
                *evaluate_chunked(
                    model, self.data.dataset.__getitem__, indices, loss_fn, device, self.data.task.num_classes,
                    self._chunk_size, self.config.seed, mag=model_info(self.config.model_type).magnification,
                    prefetch_depth=options.prefetch_depth, workers=options.workers, progress=options.progress,
                    desc=desc, amp=options.amp,
                )
            )  # fmt: skip
        return evaluate(
            model, self.data.dataset.__getitem__, indices, loss_fn, device, self.data.task.num_classes,
            prefetch_depth=options.prefetch_depth, workers=options.workers, progress=options.progress,
            desc=desc, amp=options.amp,
        )  # fmt: skip

    def final_passes(self, fold: int, best_val: EvalResult, run_eval, run_test) -> dict[str, EvalResult]:
        """The kept validation pass and the test pass."""
        return {"val": best_val, "test": run_test(self.data.folds[fold].test)}

    def row_extra(self, fold: int, passes: dict) -> dict:
        return {}

    def epoch_line(self, epoch: int, stats: EpochStats, val: EvalResult, seconds: float) -> str:
        return (
            f"epoch {epoch:3d}  train loss {stats.loss:.4f} err {stats.error:.4f}  "
            f"val loss {val.loss:.4f} acc {val.metrics['acc']:.4f} auc {_fmt(val.metrics['auc'])}"
            + (f" chunk acc {val.metrics['chunk_acc']:.4f}" if "chunk_acc" in val.metrics else "")
        )

    def val_scalars(self, val: EvalResult) -> list[tuple[str, float]]:
        extra = [("val/chunk_acc", val.metrics["chunk_acc"])] if "chunk_acc" in val.metrics else []
        return [
            ("val/error", val.error),
            ("val/auc", val.metrics["auc"]),
            ("val/f1", val.metrics["f1"]),
            *extra,
        ]

    def write_predictions(self, path: Path, result: EvalResult) -> None:
        res.write_predictions(path, result, self.data.task.class_names)

    def test_summary(self, row: dict) -> str:
        chunk = f" (chunk acc {row['test_chunk_acc']:.4f})" if "test_chunk_acc" in row else ""
        return f"test acc {row['test_acc']:.4f} auc {row['test_auc']:.4f} f1 {row['test_f1']:.4f}{chunk}"

    # ---- the run's summary
    def finish(self, run_dir: Path, rows: list[dict], log: RunLog) -> Path:
        _, results_path = res.write_summaries(
            run_dir, rows, self.config.fold_range, self.config.k, self.metric_columns
        )
        log.info("")
        log.info(res.format_summary_table(rows))
        if self._chunk_size:
            chunk_acc = np.array([float(r["test_chunk_acc"]) for r in rows])
            log.info(
                f"chunk-level test ACC {chunk_acc.mean():.4f} ± {chunk_acc.std():.4f} (chunks of at most "
                f"{self._chunk_size}; the table above is slide-level, mean chunk probability per slide)"
            )
        log.info(f"results: {results_path}")
        return results_path
