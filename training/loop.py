"""Training of one fold: one slide per optimiser step, validation every epoch, early stopping, best state.

Step (docs/method.md §8.1): loss = bag_loss(logits, label) + out.aux_loss (e.g. lambda * HTCL), Adam
(or SGD) with weight decay ``--reg`` on ``model.trainable_parameters()`` only. Slides are visited in a
random order drawn from a seeded generator each epoch; ``--weighted_sample`` draws them class-balanced
with replacement instead. The best state (or the last one without early stopping) is kept in memory and
restored by the caller before testing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from datasets.bag import SlideBag
from training.early_stopping import EarlyStopping
from training.evaluation import EvalResult
from utils.amp import autocast, grad_scaler
from utils.prefetch import prefetch
from utils.run_logging import ScalarLog, bar


@dataclass
class LoopOptions:
    """How bags are fed and whether progress bars show."""

    prefetch_depth: int = 2
    workers: int = 1
    progress: bool = False
    amp: str = "off"  # 'off' | 'bf16' | 'fp16' (utils.amp)


@dataclass
class EpochStats:
    loss: float
    error: float


@dataclass
class FitResult:
    """Outcome of :func:`fit`: the chosen epoch, its validation pass and its parameters."""

    best_epoch: int
    epochs_run: int
    stopped_early: bool
    best_val: EvalResult
    best_state: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)


def build_optimizer(
    name: str, params: Sequence[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """``adam`` (published default) or ``sgd`` (momentum 0.9) over ``params``."""
    params = list(params)
    if not params:
        raise ValueError("the model has no trainable parameters")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def epoch_order(labels: Sequence[int], generator: torch.Generator, weighted: bool) -> list[int]:
    """Positions 0..n-1 in this epoch's visiting order.

    Unweighted: a random permutation. Weighted: n draws with replacement, each slide weighted by
    1 / (number of training slides of its class), so every class is drawn equally often on average.
    """
    n = len(labels)
    if n == 0:
        return []
    if not weighted:
        return torch.randperm(n, generator=generator).tolist()
    label_tensor = torch.as_tensor(list(labels), dtype=torch.long)
    counts = torch.bincount(label_tensor).double()
    weights = 1.0 / counts[label_tensor]
    return torch.multinomial(weights, n, replacement=True, generator=generator).tolist()


def snapshot_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of everything training can change: trainable parameters and buffers."""
    state = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    state.update({name: b.detach().clone() for name, b in model.named_buffers()})
    return state


def restore_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a :func:`snapshot_state` back into ``model`` in place."""
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    with torch.no_grad():
        for name, value in state.items():
            tensors[name].copy_(value)


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
    """One pass over ``indices`` (already in visiting order), one slide per optimiser step."""
    model.train()
    total_loss, wrong = 0.0, 0
    scaler = grad_scaler(options.amp, device)
    bags = prefetch(load, indices, depth=options.prefetch_depth, workers=options.workers)
    for bag in bar(bags, total=len(indices), desc=desc, enabled=options.progress, leave=False):
        bag = bag.to(device)
        with autocast(options.amp, device):
            out = model(bag)
        target = torch.tensor([bag.label], device=out.logits.device)
        loss = loss_fn(out.logits.float(), target) + out.aux_loss.float()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += float(loss.detach())
        wrong += int(out.logits.detach().argmax(dim=1).item() != bag.label)
    n = max(len(indices), 1)
    return EpochStats(loss=total_loss / n, error=wrong / n)


def fit(
    model: nn.Module,
    load: Callable[[int], SlideBag],
    train_indices: Sequence[int],
    train_labels: Sequence[int],
    validate: Callable[[], EvalResult],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    *,
    max_epochs: int,
    generator: torch.Generator,
    weighted_sample: bool = False,
    early_stopping: EarlyStopping | None = None,
    options: LoopOptions | None = None,
    scalars: ScalarLog | None = None,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train for up to ``max_epochs`` epochs, validating after each; keep the best (or last) state.

    With ``early_stopping`` the state of the epoch with the lowest validation loss is kept and training
    ends when the stopper says so; without it the last epoch's state is kept.
    """
    options = options or LoopOptions()
    scalars = scalars or ScalarLog(None)
    history: list[dict[str, float]] = []
    best: tuple[int, EvalResult, dict[str, torch.Tensor]] | None = None
    stopped = False
    epochs = bar(range(max_epochs), desc="epochs", enabled=options.progress, leave=False)
    for epoch in epochs:
        order = [train_indices[i] for i in epoch_order(train_labels, generator, weighted_sample)]
        stats = train_one_epoch(
            model, load, order, optimizer, loss_fn, device, options, desc=f"epoch {epoch}"
        )
        val = validate()
        history.append(
            {
                "epoch": epoch,
                "train_loss": stats.loss,
                "train_error": stats.error,
                "val_loss": val.loss,
                **{f"val_{k}": v for k, v in val.metrics.items()},
            }
        )
        for tag, value in (
            ("train/loss", stats.loss),
            ("train/error", stats.error),
            ("val/loss", val.loss),
            ("val/error", val.error),
            ("val/auc", val.metrics["auc"]),
            ("val/f1", val.metrics["f1"]),
        ):
            scalars.add(tag, value, epoch)
        improved = early_stopping.step(epoch, val.loss) if early_stopping is not None else True
        marker = " *" if early_stopping is not None and improved else ""
        log(
            f"epoch {epoch:3d}  train loss {stats.loss:.4f} err {stats.error:.4f}  "
            f"val loss {val.loss:.4f} acc {val.metrics['acc']:.4f} auc {_fmt(val.metrics['auc'])}{marker}"
        )
        if improved:
            best = (epoch, val, snapshot_state(model))
        if early_stopping is not None and early_stopping.should_stop:
            stopped = True
            log(
                f"early stop at epoch {epoch}: no validation-loss improvement for {early_stopping.patience} epochs"
            )
            break
    assert best is not None
    return FitResult(
        best_epoch=best[0],
        epochs_run=len(history),
        stopped_early=stopped,
        best_val=best[1],
        best_state=best[2],
        history=history,
    )


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"
