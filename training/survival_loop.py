"""Training and evaluation of survival models on case bags (docs/survival.md §5.3, §6, §7.2).

One optimiser step covers ``batch`` cases (``--surv_batch``; 1 for the NLL loss by default, so a step
per case as in classification): per-case losses (NLL) are back-propagated case by case, divided by the
step's size (gradient accumulation); the Cox loss needs the step's risks together, so their graphs are
kept until the step's loss is formed. The model's auxiliary loss (lambda * MCL for HiLa-style) is added
per case. The epoch loop is the classification one (:func:`training.loop.fit`, run by
:func:`fit_survival` with the survival epoch and log lines), so case order and its RNG draws are those of
classification (:class:`training.loop.ReleasedLoaderDraws`, over the training cases' survival bins;
``--weighted_sample`` balances the bins). Validation after every epoch; early stopping watches 1 - c-index (``--es-metric
error``) or the validation loss (``--es-metric loss``), with the classification stopper's rules.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from datasets.bag import SlideBag
from models.survival import hazards_from_logits, risk_from_logits, survival_from_logits
from training.loop import EpochRecord, FitResult, LoopOptions, fit
from training.survival_losses import SurvivalTargets, make_targets
from training.survival_metrics import concordance_index, survival_metrics
from utils.amp import autocast, grad_scaler
from utils.prefetch import prefetch
from utils.run_logging import bar


def case_targets(bag: SlideBag, device: torch.device | str = "cpu") -> SurvivalTargets:
    """Targets of one case bag (:class:`datasets.case_bag.CaseBag`: label = bin, months, censorship)."""
    return make_targets([bag.label], [bag.months], [bag.censorship], device)


@dataclass
class SurvivalEvalResult:
    """Per-case outputs of one pass and their metrics (``cindex``, ``ibs``)."""

    case_ids: list[str]
    months: np.ndarray  # [n]
    censorship: np.ndarray  # [n] 1 censored
    bins: np.ndarray  # [n] survival bin of the time
    hazards: np.ndarray  # [n, n_bins]
    survival: np.ndarray  # [n, n_bins]
    risk: np.ndarray  # [n]
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def error(self) -> float:
        """1 - c-index (the survival counterpart of the classification error); inf when undefined."""
        value = self.metrics.get("cindex", math.nan)
        return math.inf if math.isnan(value) else 1.0 - value


def evaluate_survival(
    model: nn.Module,
    load: Callable[[int], SlideBag],
    indices: Sequence[int],
    loss_fn: nn.Module,
    device: torch.device,
    cuts: Sequence[float],
    train_months: np.ndarray,
    train_censorship: np.ndarray,
    *,
    prefetch_depth: int = 2,
    workers: int = 1,
    progress: bool = False,
    desc: str = "eval",
    amp: str = "off",
) -> SurvivalEvalResult:
    """Evaluate on the case bags ``load(i)`` (eval mode, no gradients, text features once per pass).

    The loss is the training objective over the pass: the survival loss of all cases together (for NLL
    the mean of the per-case losses; for Cox the partial likelihood over the whole set) plus the mean
    auxiliary loss. ``train_*`` (the fold's training cases) enter the IBS censoring weights.
    """
    was_training = model.training
    model.eval()
    ids, months, censor, bins, logits, aux = [], [], [], [], [], []
    try:
        with torch.no_grad(), autocast(amp, device):
            cache = model.precompute()
            bags = prefetch(load, indices, depth=prefetch_depth, workers=workers)
            for bag in bar(bags, total=len(indices), desc=desc, enabled=progress, leave=False):
                bag = bag.to(device)
                out = model(bag, cache=cache)
                logits.append(out.logits.detach().float().reshape(1, -1).cpu())
                aux.append(float(out.aux_loss))
                ids.append(bag.slide_id)
                months.append(float(bag.months))
                censor.append(int(bag.censorship))
                bins.append(int(bag.label))
    finally:
        model.train(was_training)
    n_bins = len(cuts) + 1
    if not ids:
        empty = np.zeros((0, n_bins))
        return SurvivalEvalResult(
            [], np.zeros(0), np.zeros(0, int), np.zeros(0, int), empty, empty, np.zeros(0), math.nan
        )
    all_logits = torch.cat(logits)
    targets = make_targets(bins, months, censor)
    loss = float(loss_fn(all_logits, targets)) + float(np.mean(aux))
    survival = survival_from_logits(all_logits).numpy().astype(np.float64)
    risk = risk_from_logits(all_logits).numpy().astype(np.float64)
    result = SurvivalEvalResult(
        case_ids=ids,
        months=np.asarray(months, dtype=np.float64),
        censorship=np.asarray(censor, dtype=np.int64),
        bins=np.asarray(bins, dtype=np.int64),
        hazards=hazards_from_logits(all_logits).numpy().astype(np.float64),
        survival=survival,
        risk=risk,
        loss=loss,
    )
    result.metrics = survival_metrics(
        result.months, result.censorship, risk, survival, cuts, train_months, train_censorship
    )
    return result


@dataclass
class SurvivalEpochStats:
    loss: float
    cindex: float


def train_survival_epoch(
    model: nn.Module,
    load: Callable[[int], SlideBag],
    indices: Sequence[int],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    options: LoopOptions,
    batch: int = 1,
    desc: str = "train",
) -> SurvivalEpochStats:
    """One pass over ``indices`` (in visiting order), ``batch`` cases per optimiser step."""
    model.train()
    scaler = grad_scaler(options.amp, device)
    per_case = bool(getattr(loss_fn, "per_case", True))
    n = len(indices)
    total, risks, months, censor = 0.0, [], [], []
    kept_logits: list[torch.Tensor] = []
    kept_targets: list[SurvivalTargets] = []
    kept_aux: list[torch.Tensor] = []
    optimizer.zero_grad(set_to_none=True)
    bags = prefetch(load, indices, depth=options.prefetch_depth, workers=options.workers)
    for position, bag in enumerate(bar(bags, total=n, desc=desc, enabled=options.progress, leave=False)):
        step_start = position - position % batch
        step_size = min(batch, n - step_start)
        bag = bag.to(device)
        with autocast(options.amp, device):
            out = model(bag)
        logits = out.logits.float().reshape(1, -1)
        target = case_targets(bag, logits.device)
        risks.append(float(risk_from_logits(logits.detach())[0]))
        months.append(float(bag.months))
        censor.append(int(bag.censorship))
        if per_case:
            loss = loss_fn(logits, target) + out.aux_loss.float()
            scaler.scale(loss / step_size).backward()
            total += float(loss.detach())
        else:
            kept_logits.append(logits)
            kept_targets.append(target)
            kept_aux.append(out.aux_loss.float())
        if position - step_start + 1 == step_size:  # last case of the step
            if not per_case:
                targets = SurvivalTargets(
                    torch.cat([t.bins for t in kept_targets]),
                    torch.cat([t.months for t in kept_targets]),
                    torch.cat([t.censorship for t in kept_targets]),
                )
                loss = loss_fn(torch.cat(kept_logits), targets) + torch.stack(kept_aux).mean()
                scaler.scale(loss).backward()
                total += float(loss.detach()) * step_size
                kept_logits, kept_targets, kept_aux = [], [], []
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
    return SurvivalEpochStats(loss=total / max(n, 1), cindex=concordance_index(months, censor, risks))


def _survival_line(epoch: int, stats: SurvivalEpochStats, val: SurvivalEvalResult, seconds: float) -> str:
    return (
        f"epoch {epoch:3d}  train loss {stats.loss:.4f} c-index {_fmt(stats.cindex)}  "
        f"val loss {val.loss:.4f} c-index {_fmt(val.metrics['cindex'])} ibs {_fmt(val.metrics['ibs'])} "
        f"({seconds:.1f} s)"
    )


SURVIVAL_RECORD = EpochRecord(
    val_scalars=lambda val: [("val/cindex", val.metrics["cindex"]), ("val/ibs", val.metrics["ibs"])],
    line=_survival_line,
    watched={"error": "validation 1 - c-index", "loss": "validation loss"},
    nan_is_worst=True,  # an undefined c-index never improves (docs/survival.md §7.2)
)


def fit_survival(*args, batch: int = 1, **kwargs) -> FitResult:
    """Train a survival model: :func:`training.loop.fit` (same arguments; ``train_labels`` are the
    training cases' survival bins) with :func:`train_survival_epoch` at ``batch`` cases per optimiser
    step and the survival epoch record (:data:`SURVIVAL_RECORD`)."""
    return fit(
        *args,
        train_epoch=functools.partial(train_survival_epoch, batch=batch),
        record=SURVIVAL_RECORD,
        **kwargs,
    )


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"
