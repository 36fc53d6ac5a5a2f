"""The survival task: cases, survival bins, the NLL or Cox loss, c-index and IBS (docs/survival.md §7).

:class:`SurvivalTask` supplies the kind-specific parts of a run (:mod:`training.tasks`); its
classification counterpart is :mod:`training.tasks.classification`.

* :meth:`SurvivalTask.prepare` (:func:`prepare_data`) checks everything before any training -- the
  survival CSV (:func:`datasets.survival.read_survival_csv`), the bins, the case-level split files
  (the field's ``,train,val`` or ``,train,val,test``; cases in the CSV, no case in two parts; a part
  whose c-index cannot be defined is a warning), feature files (``--skip-missing`` drops missing slides
  with a warning; a case left without slides is an error) and every slide of the used cases
  (:func:`training.run_checks.check_every_slide`) -- and builds one cached
  :class:`datasets.case_bag.CaseBagDataset` and the run's IBS grid.
* Defaults (:meth:`SurvivalTask.defaults`): the published MCAT / Patch-GCN settings.
* One fold (docs/survival.md §5.3, §6, §7.2): a loss batch covers ``--surv_batch`` cases (1 for NLL,
  16 for Cox), an optimiser step ``--gc`` loss batches (gradient accumulation): NLL losses are
  back-propagated case by case divided by the step's size; the Cox loss needs a batch's risks
  together, so their graphs are kept until the batch's loss is formed. The model's auxiliary loss
  (lambda * MCL for HiLa-style) is added per case. The epoch loop is the classification one
  (:func:`training.loop.fit`), so case order and its RNG draws are those of classification
  (:class:`training.loop.ReleasedLoaderDraws`, over the (bin x censorship) groups that
  ``--weighted_sample`` balances). Early stopping watches 1 - c-index (``--es-metric error``; an
  undefined c-index never improves) or the validation loss. After training the fold's training cases
  are passed (``predictions_train.csv``; the Cox runs' Breslow baseline), the evaluated part is test,
  or val without a test part, and every undefined metric is a note of the fold's row.
* :meth:`SurvivalTask.finish` writes ``summary.csv`` (with the notes) / ``results.csv`` (mean and
  population std of the c-index and IBS), and through :mod:`training.survival.evaluation` (as
  ``evaluate_survival.py``) ``survival_metrics.csv`` and ``km_test.png`` from the prediction files of
  all folds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from datasets.bag import SlideBag
from datasets.case_bag import CaseBagDataset
from datasets.features import FeatureLayout, missing_feature_slides, read_slide_bag
from datasets.splits import PARTS, Split, read_split
from datasets.survival import (
    SURVIVAL_COLUMNS,
    SURVIVAL_SPLIT_LABEL,
    SurvivalCase,
    SurvivalTable,
    SurvivalTaskSpec,
    bin_index,
    bin_labels,
    read_survival_csv,
    split_warnings,
    survival_split_path,
    survival_task,
)
from models.passes import forward_pass
from models.registry import model_info, survival_models
from models.survival import hazards_from_logits, risk_from_logits, survival_from_logits
from training import results as res
from training.config import RunConfig
from training.fingerprints import fold_inputs
from training.loop import LoopOptions, check_finite_logits, check_finite_loss
from training.run_checks import check_every_slide, check_feature_dim, feature_layout, limit_split
from training.survival.evaluation import (
    METRICS_FILE,
    evaluate_predictions,
    format_metrics_table,
    run_predictions,
    write_evaluation,
)
from training.survival.losses import SurvivalTargets, build_survival_loss, cases_per_step, make_targets
from training.survival.metrics import (
    IBSReference,
    breslow_survival,
    concordance_index,
    ibs_time_grid,
    survival_at_times,
    survival_metrics,
)
from training.survival.report import (
    SURVIVAL_METRIC_COLUMNS,
    format_survival_table,
    write_survival_predictions,
)
from utils.amp import autocast, grad_scaler
from utils.errors import InputError, listed
from utils.prefetch import prefetch
from utils.run_logging import RunLog, bar


# ------------------------------------------------------------------------------------------- data
@dataclass
class CaseFold:
    """Positions in the shared case dataset of one fold's train/val/test cases (dataset-CSV order)."""

    train: list[int]
    val: list[int]
    test: list[int]  # empty in the field's train/val layout: the val part is then the evaluation set

    @property
    def evaluated(self) -> str:
        """The part the fold is evaluated on: ``test``, or ``val`` without a test part."""
        return "test" if self.test else "val"


@dataclass
class SurvivalData:
    """Everything the folds of a survival run read."""

    task: SurvivalTaskSpec
    table: SurvivalTable
    dataset: CaseBagDataset
    folds: dict[int, CaseFold]
    dropped: list[str] = field(default_factory=list)
    csv_rows: dict[str, list] = field(default_factory=dict)  # slide -> [case_id, months, censorship, mag]
    grid: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the run's IBS time grid (months)

    @property
    def layout(self) -> FeatureLayout:
        return self.dataset.layout

    @property
    def cases(self) -> list[SurvivalCase]:
        return self.dataset.cases

    def fold_split(self, fold: int) -> dict[str, list[str]]:
        """Slide ids of each part of ``fold`` (its cases' slides, in case order)."""
        idx = self.folds[fold]
        return {part: [s for i in getattr(idx, part) for s in self.cases[i].slides] for part in PARTS}

    def labels_record(self) -> dict:
        return {"n_bins": self.task.n_bins, "bin_cuts": list(self.task.bin_cuts)}


def _read_case_splits(config: RunConfig, task: SurvivalTaskSpec, table: SurvivalTable) -> dict[int, Split]:
    """Read and check the case-level split file of every fold to run."""
    root = config.resolve_path(config.splits_root)
    folder = survival_split_path(root, task.name, 0).parent
    if not folder.is_dir():
        raise InputError(
            f"split folder not found: {folder} (make it with create_splits.py --survival --task {task.name}, "
            "or point --splits_root at one)"
        )
    known = set(table.by_id())
    splits = {}
    for fold in config.fold_range:
        path = survival_split_path(root, task.name, fold)
        if not path.is_file():
            raise InputError(
                f"split file not found: {path} (fold {fold} of --k {config.k}; make it with "
                "create_splits.py --survival)"
            )
        split = read_split(path, item="case", require_test=False)
        unknown = list(dict.fromkeys(c for c in split.all_ids() if c not in known))
        if unknown:
            raise InputError(
                f"{path}: {len(unknown)} case id(s) not in {table.path}: {listed(unknown)} "
                "(survival splits list case ids, docs/survival.md §4)"
            )
        both = sorted(set(split.val) & set(split.test))
        if both:
            raise InputError(f"{path}: case(s) {listed(both)} in both val and test")
        splits[fold] = split
    return splits


def prepare_data(config: RunConfig, log: RunLog) -> SurvivalData:
    """Check all inputs of a survival run (one-line InputError each) and build the case dataset."""
    csv_path = Path(config.resolve_path(config.csv_dir)) / f"{config.task}.csv"
    if not csv_path.is_file():
        raise InputError(f"dataset CSV not found: {csv_path} (expected columns {','.join(SURVIVAL_COLUMNS)})")
    table = read_survival_csv(csv_path)
    task = survival_task(config.task, table, config.resolve_path(config.prompt_dir), config.n_bins)
    splits = {f: limit_split(s, config, f) for f, s in _read_case_splits(config, task, table).items()}
    by_id = table.by_id()

    layout = feature_layout(config, task.name)
    order = {c.case_id: i for i, c in enumerate(table.cases)}
    used_ids = sorted({c for split in splits.values() for c in split.all_ids()}, key=order.__getitem__)
    slides = [s for c in used_ids for s in by_id[c].slides]
    missing = missing_feature_slides(layout, slides)
    gone = set(missing)
    cases = {c: by_id[c] for c in used_ids}
    if missing:
        where = f"{layout.low_dir} / {layout.hier_dir}"
        emptied = [c for c in used_ids if all(s in gone for s in by_id[c].slides)]
        if not config.skip_missing:
            lost = f"; cases left without any slide: {listed(emptied)}" if emptied else ""
            raise InputError(
                f"features missing for {len(missing)} of {len(slides)} slides ({where}): {listed(missing)}"
                f"{lost}; extract them or pass --skip-missing to drop those slides"
            )
        if emptied:
            raise InputError(
                f"case(s) {listed(emptied)} have no slide with features ({where}); a case needs at least "
                "one slide -- extract its features or remove it from the split files"
            )
        log.warning(
            f"--skip-missing: dropping {len(missing)} slide(s) without features ({where}): {listed(missing)}"
        )
        cases = {
            c: dataclasses.replace(case, slides=tuple(s for s in case.slides if s not in gone))
            for c, case in cases.items()
        }
        slides = [s for s in slides if s not in gone]
    bins = bin_index([cases[c].months for c in used_ids], task.bin_cuts)
    bin_of = dict(zip(used_ids, bins.tolist()))
    for fold, split in splits.items():
        empty = [p for p in ("train", "val") if not split.part(p)]
        if empty:
            raise InputError(f"fold {fold}: no cases in {', '.join(empty)}")
    for line in split_warnings(splits, cases):
        log.warning(line)
    grid = ibs_time_grid(table.months, task.bin_cuts, config.ibs_horizon)
    if grid.size == 0:
        raise InputError(
            f"--ibs_horizon {config.ibs_horizon:g} must be after the cohort's earliest observed time "
            f"({table.months.min():g} months)"
        )

    check_feature_dim(config, layout, slides[0])

    def load_slide(slide_id: str):
        return read_slide_bag(layout, slide_id, expected_dim=config.feature_dim)

    check_every_slide(config, layout, slides, load_slide, log)
    dataset = CaseBagDataset(
        layout,
        [cases[c] for c in used_ids],
        [bin_of[c] for c in used_ids],
        cache_mb=config.cache_mb,
        expected_dim=config.feature_dim,
    )
    position = {c: i for i, c in enumerate(used_ids)}
    folds = {fold: CaseFold(*split.positions(position, order)) for fold, split in splits.items()}
    return SurvivalData(
        task=task,
        table=table,
        dataset=dataset,
        folds=folds,
        dropped=missing if config.skip_missing else [],
        csv_rows={s: table.rows[s] for s in slides},
        grid=grid,
    )


# ----------------------------------------------------------------------------- train and evaluate
def case_targets(bag: SlideBag, device: torch.device | str = "cpu") -> SurvivalTargets:
    """Targets of one case bag (:class:`datasets.case_bag.CaseBag`: label = bin, months, censorship)."""
    return make_targets([bag.label], [bag.months], [bag.censorship], device)


@dataclass
class SurvivalEvalResult:
    """Per-case outputs of one pass and their metrics (``cindex``, ``ibs``, ``ibs_km``), with the reason of
    every undefined metric in ``notes``."""

    case_ids: list[str]
    months: np.ndarray  # [n]
    censorship: np.ndarray  # [n] 1 censored
    bins: np.ndarray  # [n] survival bin of the time
    hazards: np.ndarray  # [n, n_bins]
    survival: np.ndarray  # [n, n_bins]
    risk: np.ndarray  # [n]
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # metric -> why it is undefined

    @property
    def error(self) -> float:
        """1 - c-index (the survival counterpart of the classification error); inf when undefined."""
        value = self.metrics.get("cindex", math.nan)
        return math.inf if math.isnan(value) else 1.0 - value


def evaluate(
    model: nn.Module,
    load: Callable[[int], SlideBag],
    indices: Sequence[int],
    loss_fn: nn.Module,
    device: torch.device,
    n_bins: int,
    *,
    prefetch_depth: int = 2,
    workers: int = 1,
    progress: bool = False,
    desc: str = "eval",
    amp: str = "off",
) -> SurvivalEvalResult:
    """Forward the case bags ``load(i)`` (:func:`models.passes.forward_pass`); metrics are left to
    :func:`score`.

    The loss is the training objective over the pass: the survival loss of all cases together (for NLL
    the mean of the per-case losses; for Cox the partial likelihood over the whole set) plus the mean
    auxiliary loss.
    """
    ids, months, censor, bins, logits, aux = [], [], [], [], [], []

    def visit(bag, out) -> None:
        logits.append(out.logits.detach().float().reshape(1, -1).cpu())
        check_finite_logits(logits[-1].numpy(), desc, f"case {bag.slide_id}")
        aux.append(float(out.aux_loss))
        ids.append(bag.slide_id)
        months.append(float(bag.months))
        censor.append(int(bag.censorship))
        bins.append(int(bag.label))

    forward_pass(
        model, load, indices, device, visit, prefetch_depth=prefetch_depth, workers=workers,
        progress=progress, desc=desc, amp=amp,
    )  # fmt: skip
    if not ids:
        empty = np.zeros((0, n_bins))
        return SurvivalEvalResult(
            [], np.zeros(0), np.zeros(0, int), np.zeros(0, int), empty, empty, np.zeros(0), math.nan
        )
    all_logits = torch.cat(logits)
    targets = make_targets(bins, months, censor)
    loss = float(loss_fn(all_logits, targets)) + float(np.mean(aux))
    return SurvivalEvalResult(
        case_ids=ids,
        months=np.asarray(months, dtype=np.float64),
        censorship=np.asarray(censor, dtype=np.int64),
        bins=np.asarray(bins, dtype=np.int64),
        hazards=hazards_from_logits(all_logits).numpy().astype(np.float64),
        survival=survival_from_logits(all_logits).numpy().astype(np.float64),
        risk=risk_from_logits(all_logits).numpy().astype(np.float64),
        loss=loss,
    )


def score(
    result: SurvivalEvalResult,
    reference: IBSReference,
    cuts: Sequence[float],
    baseline: SurvivalEvalResult | None = None,
    cox: bool = False,
) -> SurvivalEvalResult:
    """Fill ``result.metrics`` and ``result.notes`` (docs/survival.md §6). The curves on the run's grid
    are the per-bin survival steps, or under the Cox loss the Breslow curves from ``baseline`` (the
    fold's training pass; none yet during training: no IBS)."""
    if not cox:
        curves = partial(survival_at_times, result.survival, cuts)
    elif baseline is not None:
        curves = partial(breslow_survival, baseline.months, baseline.censorship, baseline.risk, result.risk)
    else:
        curves = None
    result.metrics, result.notes = survival_metrics(
        result.months, result.censorship, result.risk, curves, reference
    )
    return result


@dataclass
class SurvivalEpochStats:
    loss: float
    cindex: float


def train_one_epoch(
    model: nn.Module,
    load: Callable[[int], SlideBag],
    indices: Sequence[int],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    options: LoopOptions,
    batch: int = 1,
    desc: str = "train",
    gc: int = 1,
) -> SurvivalEpochStats:
    """One pass over ``indices`` (in visiting order): loss batches of ``batch`` cases, ``gc`` loss batches
    (gradient accumulation) per optimiser step, so ``batch * gc`` cases per step (the last step of the
    epoch may be shorter: it is averaged over its own cases and taken). A loss that is not finite stops
    training (:func:`training.loop.check_finite_loss`)."""
    model.train()
    scaler = grad_scaler(options.amp, device)
    per_case = bool(getattr(loss_fn, "per_case", True))
    n = len(indices)
    step = batch * gc
    total, risks, months, censor = 0.0, [], [], []
    kept_logits: list[torch.Tensor] = []
    kept_targets: list[SurvivalTargets] = []
    kept_aux: list[torch.Tensor] = []
    kept_ids: list[str] = []
    optimizer.zero_grad(set_to_none=True)
    bags = prefetch(load, indices, depth=options.prefetch_depth, workers=options.workers)
    for position, bag in enumerate(bar(bags, total=n, desc=desc, enabled=options.progress, leave=False)):
        step_start = position - position % step
        step_size = min(step, n - step_start)
        batch_start = position - position % batch
        batch_size = min(batch, n - batch_start)
        bag = bag.to(device)
        with autocast(options.amp, device):
            out = model(bag)
        logits = out.logits.float().reshape(1, -1)
        target = case_targets(bag, logits.device)
        risks.append(float(risk_from_logits(logits.detach())[0]))
        months.append(float(bag.months))
        censor.append(int(bag.censorship))
        if per_case:  # the step's loss is the mean over its cases
            loss = loss_fn(logits, target) + out.aux_loss.float()
            scaler.scale(loss / step_size).backward()
            value = float(loss.detach())  # the one read-back of the loss, summed and checked
            check_finite_loss(value, position // step, f"case {bag.slide_id}", optimizer)
            total += value
        else:
            kept_logits.append(logits)
            kept_targets.append(target)
            kept_aux.append(out.aux_loss.float())
            kept_ids.append(bag.slide_id)
            if position - batch_start + 1 == batch_size:  # last case of the loss batch
                targets = SurvivalTargets(
                    torch.cat([t.bins for t in kept_targets]),
                    torch.cat([t.months for t in kept_targets]),
                    torch.cat([t.censorship for t in kept_targets]),
                )
                loss = loss_fn(torch.cat(kept_logits), targets) + torch.stack(kept_aux).mean()
                batches_in_step = -(-step_size // batch)  # the step's loss is the mean over its batches
                scaler.scale(loss / batches_in_step).backward()
                value = float(loss.detach())
                check_finite_loss(value, position // step, f"cases {listed(kept_ids, 3)}", optimizer)
                total += value * batch_size
                kept_logits, kept_targets, kept_aux, kept_ids = [], [], [], []
        if position - step_start + 1 == step_size:  # last case of the step
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
    return SurvivalEpochStats(loss=total / max(n, 1), cindex=concordance_index(months, censor, risks))


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


METRIC_NAMES = {"cindex": "c-index", "ibs": "IBS", "ibs_km": "IBS of the training KM curve"}


# ---------------------------------------------------------------------------------------- the task
# The MCAT / Patch-GCN published training settings (their main.py defaults and command lines): the
# defaults of a survival run wherever a flag (or a demo's own settings) does not say otherwise.
PUBLISHED_SURVIVAL_SETTINGS = {
    "lr": 2e-4,
    "reg": 1e-5,
    "max_epochs": 20,
    "weighted_sample": True,
    "surv_alpha": 0.0,
    "early_stopping": False,  # the last epoch is evaluated
}
PUBLISHED_GC = 32  # --gc under the NLL loss; under Cox a step is already --surv_batch cases (gc 1)


class SurvivalTask:
    """Survival runs (see the module docstring); an instance holds the resolved config and the checked
    :class:`SurvivalData` of one run."""

    name = "survival"
    metric_columns = SURVIVAL_METRIC_COLUMNS
    items = "cases"
    watched = {"error": "validation 1 - c-index", "loss": "validation loss"}
    nan_is_worst = True  # an undefined c-index never improves (docs/survival.md §7.2)

    def __init__(self, config: RunConfig, data: SurvivalData):
        self.config = config
        self.data = data
        self.batch = cases_per_step(config.surv_loss, config.surv_batch)  # cases per loss batch
        self._baseline: dict[int, SurvivalEvalResult] = {}  # fold -> its training pass (Cox: Breslow)

    # ---- the run (before data)
    @staticmethod
    def defaults(config: RunConfig) -> dict:
        """The published MCAT / Patch-GCN settings (docs/survival.md §7.2): lr 2e-4, reg 1e-5, 20 epochs,
        weighted sampling, alpha 0, the last epoch evaluated, ``--gc 32`` (Cox: 1)."""
        return {**PUBLISHED_SURVIVAL_SETTINGS, "gc": PUBLISHED_GC if config.surv_loss == "nll" else 1}

    @staticmethod
    def run_dir(config: RunConfig) -> Path:
        """``results_dir/<task>/<extractor>/survival/<task>_<extractor>_<model>_survival_s<seed>``."""
        return config.run_folder(SURVIVAL_SPLIT_LABEL)

    @staticmethod
    def check_model(config: RunConfig) -> None:
        if config.cv == "nested":
            raise InputError(
                "--cv nested is implemented for classification tasks only; survival runs use their case split files"
            )
        if not model_info(config.model_type).survival:
            raise InputError(
                f"--model_type {config.model_type!r} is not a survival model; task {config.task} is a survival "
                f"task (its dataset CSV has survival_months), choose one of: {', '.join(survival_models())}"
            )
        if config.chunk_size:
            raise InputError(
                f"--chunk_size applies to classification tasks; task {config.task} is a survival task "
                "(its steps are batches of whole cases)"
            )

    @staticmethod
    def resolve(config: RunConfig) -> RunConfig:
        return config  # the prompt file is text_prompt/HiLa/<task>.json; --LLM does not apply

    @classmethod
    def prepare(cls, config: RunConfig, log: RunLog) -> SurvivalTask:
        return cls(config, prepare_data(config, log))

    # ---- header and fold inputs
    def describe(self, device: torch.device) -> str:
        data, config = self.data, self.config
        events = sum(c.event for c in data.cases)
        return (
            f"task {data.task.name} (survival): {len(data.cases)} cases ({events} events), "
            f"{data.task.n_bins} bins {', '.join(bin_labels(data.task.bin_cuts))} months; loss {config.surv_loss}; "
            f"{self.batch * config.gc} case(s) per step; IBS grid {data.grid[0]:g}-{data.grid[-1]:g} months; "
            f"model {config.model_type}; device {device}"
        )

    def config_extra(self) -> dict:
        """The survival bins, loss and IBS grid, stored in ``config.json`` (docs/survival.md §3, §6.3)."""
        task, config, grid = self.data.task, self.config, self.data.grid
        return {
            "task_kind": self.name,
            "survival": {
                "n_bins": task.n_bins,
                "bin_cuts_months": list(task.bin_cuts),
                "bins": bin_labels(task.bin_cuts),
                "loss": config.surv_loss,
                "alpha": config.surv_alpha,
                "cases_per_step": self.batch * config.gc,
                "ibs_grid_months": [float(grid[0]), float(grid[-1]), int(grid.size)],
            },
        }

    def fold_inputs(self, fold: int, tower: dict | None) -> dict:
        data = self.data
        prompt = data.task.prompt_file() if model_info(self.config.model_type).text_tower else None
        return fold_inputs(
            data.fold_split(fold), data.csv_rows, data.layout, prompt, tower, data.labels_record()
        )

    # ---- one fold
    def loss(self) -> nn.Module:
        return build_survival_loss(self.config.surv_loss, self.config.surv_alpha)

    def start_note(self) -> str:
        steps = f"{self.batch} x {self.config.gc}" if self.config.gc > 1 else f"{self.batch}"
        return f", {steps} case(s) per step"

    def prediction_parts(self, fold: int) -> tuple[str, ...]:
        """train (its risks: censoring weights, a training KM threshold, §6.5), val, and test when the
        fold has a test part."""
        return ("train", "val", "test") if self.data.folds[fold].test else ("train", "val")

    def sampling_labels(self, indices) -> list[int]:
        """The (bin x censorship) group of each case: ``--weighted_sample`` balances them (MCAT)."""
        cases, bins = self.data.cases, self.data.dataset.labels
        return [2 * int(bins[i]) + cases[i].censorship for i in indices]

    def train_epoch(self, model, load, order, optimizer, loss_fn, device, options, desc: str = "train"):
        return train_one_epoch(
            model, load, order, optimizer, loss_fn, device, options, self.batch, desc=desc, gc=self.config.gc
        )

    def _reference(self, fold: int) -> IBSReference:
        train_cases = [self.data.cases[i] for i in self.data.folds[fold].train]
        return IBSReference(
            self.data.grid,
            np.array([c.months for c in train_cases], dtype=np.float64),
            np.array([c.censorship for c in train_cases], dtype=np.int64),
        )

    def _score(self, fold: int, result: SurvivalEvalResult) -> SurvivalEvalResult:
        return score(
            result, self._reference(fold), self.data.task.bin_cuts, self._baseline.get(fold),
            cox=self.config.surv_loss == "cox",
        )  # fmt: skip

    def evaluate(self, model, fold: int, indices, loss_fn, device, options: LoopOptions, desc: str = "eval"):
        """``indices`` of the dataset, scored against the fold's training cases (IBS weights)."""
        result = evaluate(
            model, self.data.dataset.__getitem__, indices, loss_fn, device, self.data.task.n_bins,
            prefetch_depth=options.prefetch_depth, workers=options.workers, progress=options.progress,
            desc=desc, amp=options.amp,
        )  # fmt: skip
        return self._score(fold, result)

    def final_passes(
        self, fold: int, best_val: SurvivalEvalResult, run_eval, run_test
    ) -> dict[str, SurvivalEvalResult]:
        """After training: the training cases' pass (their risks; the Cox runs' Breslow baseline), the
        kept validation pass (rescored with that baseline) and the test pass when the fold has a test
        part; without one the val part is the evaluation set (docs/survival.md §4)."""
        idx = self.data.folds[fold]
        self._baseline.pop(fold, None)
        train = run_eval(idx.train, "train")
        if self.config.surv_loss == "cox":
            self._baseline[fold] = train
            self._score(fold, train)
            self._score(fold, best_val)
        passes = {"train": train, "val": best_val}
        if idx.test:
            passes["test"] = run_test(idx.test)
        return passes

    def row_extra(self, fold: int, passes: dict) -> dict:
        """The evaluated part and one note per undefined metric (``val c-index undefined: no event
        among ...``) or per IBS whose grid was cut (``val IBS: 19 of 20 grid times kept (...)``)."""
        part = self.data.folds[fold].evaluated
        notes = []
        for name in dict.fromkeys(("val", part)):
            for metric, why in passes[name].notes.items():
                label = f"{name} {METRIC_NAMES.get(metric, metric)}"
                why = why.removeprefix("ibs: ")
                undefined = math.isnan(passes[name].metrics.get(metric, math.nan))
                notes.append(f"{label} undefined: {why}" if undefined else f"{label}: {why}")
        return {"evaluated": part, "notes": notes}

    def epoch_line(
        self, epoch: int, stats: SurvivalEpochStats, val: SurvivalEvalResult, seconds: float
    ) -> str:
        ibs = "" if self.config.surv_loss == "cox" else f" ibs {_fmt(val.metrics['ibs'])}"
        return (
            f"epoch {epoch:3d}  train loss {stats.loss:.4f} c-index {_fmt(stats.cindex)}  "
            f"val loss {val.loss:.4f} c-index {_fmt(val.metrics['cindex'])}{ibs} "
            f"({seconds:.1f} s)"
        )

    def val_scalars(self, val: SurvivalEvalResult) -> list[tuple[str, float]]:
        return [("val/cindex", val.metrics["cindex"]), ("val/ibs", val.metrics["ibs"])]

    def write_predictions(self, path: Path, result: SurvivalEvalResult) -> None:
        write_survival_predictions(path, result, {c.case_id: c.slides for c in self.data.cases})

    def test_summary(self, row: dict) -> str:
        part = row.get("evaluated", "test")
        return (
            f"{part} c-index {_fmt(row['test_cindex'])} ibs {_fmt(row['test_ibs'])} "
            f"(training KM {_fmt(row.get('test_ibs_km', math.nan))})"
        )

    # ---- the run's summary
    def finish(self, run_dir: Path, rows: list[dict], log: RunLog) -> Path:
        """Summary CSVs, the Kaplan-Meier plot of the pooled evaluated cases and the one-screen table."""
        config = self.config
        notes = ["; ".join(r.get("notes", [])) for r in rows]
        _, results_path = res.write_summaries(
            run_dir, rows, config.fold_range, config.k, metric_columns=SURVIVAL_METRIC_COLUMNS,
            na_rep="nan", summary_extra={"note": notes},
        )  # fmt: skip
        summary, results = res.summary_frames(rows, SURVIVAL_METRIC_COLUMNS)
        folds = [int(r["fold"]) for r in rows]
        evaluation = evaluate_predictions(run_predictions(run_dir, folds))
        full = results_path.name == "results.csv"
        metrics_path = results_path.with_name(
            METRICS_FILE if full else results_path.stem.replace("results", "survival_metrics") + ".csv"
        )
        km_path = results_path.with_name(
            "km_test.png" if full else results_path.stem.replace("results", "km_test") + ".png"
        )
        write_evaluation(
            evaluation,
            metrics_path,
            km_path,
            f"{config.task} {config.model_type}: {evaluation.part} cases of folds {', '.join(map(str, folds))}",
        )
        km_null = [float(r.get("test_ibs_km", math.nan)) for r in rows]
        parts = sorted({r.get("evaluated", "test") for r in rows})
        log.info("")
        log.info(format_survival_table(summary, results, evaluation.split.p_value, km_null, parts))
        log.info(format_metrics_table(evaluation))
        for fold, note in zip(folds, notes):
            if note:
                log.warning(f"fold {fold}: {note}")
        log.info(
            f"results: {results_path}  (field's metrics: {metrics_path.name}; Kaplan-Meier: {km_path.name})"
        )
        return results_path
