"""The epoch loop of every task kind: training epochs (the task's), validation every epoch, early stopping,
best state.

Adam (or SGD) with weight decay ``--reg`` on ``model.trainable_parameters()`` only; one epoch's steps
are the task's (:mod:`training.tasks`; classification: one slide per step, docs/method.md §8.1). The
visiting order of the training slides, and every draw from torch's global generator that decides it, follow the released
training run (:class:`ReleasedLoaderDraws`, docs/method.md §8.3); ``--weighted_sample`` draws slides
class-balanced with replacement. The best state (or the last one without early stopping) is kept in
memory and restored by the caller before testing.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from datasets.bag import SlideBag
from training.early_stopping import EarlyStopping
from utils.errors import NonFiniteError, listed
from utils.run_logging import ScalarLog, bar


@dataclass
class LoopOptions:
    """How bags are fed and whether progress bars show."""

    prefetch_depth: int = 2
    workers: int = 1
    progress: bool = False
    amp: str = "off"  # 'off' | 'bf16' | 'fp16' (utils.amp)


@dataclass
class FitResult:
    """Outcome of :func:`fit`: the chosen epoch, its validation pass (the task's evaluation result) and
    its parameters."""

    best_epoch: int
    epochs_run: int
    stopped_early: bool
    best_val: Any  # the task's evaluation result (EvalResult, SurvivalEvalResult)
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


def check_finite_loss(value: float, step: int, item: str, optimizer: torch.optim.Optimizer) -> None:
    """Stop training at a loss that is not finite (:class:`utils.errors.NonFiniteError`, one line).

    ``value`` is the step's loss as the loop already reads it back for its log (no extra host
    synchronisation), ``step`` its position in the epoch (from 0), ``item`` the slide or case(s) it
    covers; :func:`fit` puts the epoch in front of the line. A finite loss above :data:`LOSS_CEILING`
    counts as diverged too: log-space losses (the survival NLL) stay finite while the logits run off to
    1e9 and every prediction saturates to exactly 0 or 1.
    """
    if not math.isfinite(value) or abs(value) > LOSS_CEILING:
        beyond = "" if not math.isfinite(value) else f", beyond {LOSS_CEILING:.3g} (2**24)"
        raise NonFiniteError(
            f"step {step} ({item}): training loss is {value:.6g}{beyond}; training diverged -- try a lower "
            f"--lr{_lr_note(optimizer)}, or check the features of the {item.split()[0]}"
        )


# Beyond 2**24 float32 no longer resolves a unit change of the loss; every loss of this project is O(1)-O(100)
# in a sane run (cross-entropy, survival NLL/Cox, the auxiliary losses), so a loss this large is a divergence.
LOSS_CEILING = float(2**24)


def _lr_note(optimizer: torch.optim.Optimizer) -> str:
    lr = optimizer.param_groups[0].get("lr") if optimizer.param_groups else None
    return f" (now {lr:g})" if isinstance(lr, float | int) else ""


def check_finite_parameters(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """After an epoch's steps every trained parameter is finite, else :class:`NonFiniteError` naming them
    (one host synchronisation per epoch: a diverged model whose outputs saturate to finite values)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not params:
        return
    finite = torch.stack([torch.isfinite(p.detach()).all() for p in params])
    if bool(finite.all()):
        return
    names = {id(p): name for name, p in model.named_parameters()}
    bad = [names.get(id(p), "?") for p, ok in zip(params, finite.tolist()) if not ok]
    raise NonFiniteError(
        f"after its training steps {len(bad)} parameter tensor(s) are not finite ({listed(bad, 3)}); "
        f"training diverged -- try a lower --lr{_lr_note(optimizer)}"
    )


def check_finite_logits(logits: np.ndarray, part: str, item: str) -> None:
    """Refuse an evaluated slide or case whose logits (on the host already) are not all finite: one line
    naming the part (``val``, ``test``, ...) and the item (:class:`utils.errors.NonFiniteError`)."""
    if not np.isfinite(logits).all():
        shown = ", ".join(f"{v:g}" for v in np.asarray(logits, dtype=np.float64).reshape(-1)[:4])
        raise NonFiniteError(
            f"{part}: {item}: the model's logits are not finite ({shown}); training diverged or the "
            "features are out of range -- try a lower --lr or check the feature files"
        )


def draw_int64() -> int:
    """One int64 from torch's global CPU generator, drawn the way DataLoader and RandomSampler draw seeds."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


def class_balanced_weights(labels: Sequence[int]) -> torch.Tensor:
    """Per-slide sampling weight ``N / (number of training slides of its class)`` (float64), as released."""
    label_tensor = torch.as_tensor(list(labels), dtype=torch.long)
    counts = torch.bincount(label_tensor).double()
    return float(len(labels)) / counts[label_tensor]


class EvalLoaderDraws:
    """One evaluation loader of the released run (validation or test), as its global-RNG draws and order.

    A ``DataLoader`` with persistent workers draws one int64 (its base seed) when first iterated. With
    ``shuffle`` (the released ``--testing``: a ``RandomSampler`` over the part) every pass then draws
    one more int64 that seeds a fresh generator for ``randperm(n)``, the pass's visiting order, exactly
    like the training loader; without it the order is the part's own and nothing more is drawn.
    """

    def __init__(self, shuffle: bool = False):
        self.shuffle = shuffle
        self._started = False

    def start_pass(self) -> None:
        """The loader's base seed, drawn at its first iteration only (persistent workers)."""
        if not self._started:
            self._started = True
            draw_int64()

    def order(self, items: Sequence[Any]) -> list[Any]:
        """``items`` in this pass's visiting order (call after :meth:`start_pass`)."""
        items = list(items)
        if not self.shuffle or not items:
            return items
        generator = torch.Generator()
        generator.manual_seed(draw_int64())
        return [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]

    def pass_order(self, items: Sequence[Any]) -> list[Any]:
        """:meth:`start_pass` then :meth:`order`: one whole pass of a loader iterated on its own."""
        self.start_pass()
        return self.order(items)


class ReleasedLoaderDraws:
    """The training run's use of torch's global RNG for data order, reproduced draw for draw.

    The released code iterates the training slides (in dataset-CSV order) through a ``DataLoader`` with
    a ``RandomSampler`` (or ``WeightedRandomSampler``) and persistent workers, and the validation slides
    through a loader with persistent workers, sequential or -- with ``--testing`` under ``--variant
    reference`` (``shuffle_validation``) -- shuffled. From the global generator that means:

    * the first training epoch: one int64 (the training loader's base seed), then the sampler's draws;
    * every training epoch: the sampler draws one int64 that seeds a fresh generator for ``randperm(n)``
      (weighted: ``multinomial(weights, n, replacement=True)`` on the global generator);
    * the first validation pass: one int64 (the validation loader's base seed); later passes reuse the
      persistent iterator and draw nothing, except when shuffled: then every pass draws one int64 for
      its order (:class:`EvalLoaderDraws`, ``self.validation``).
    """

    def __init__(self, labels: Sequence[int], weighted: bool = False, shuffle_validation: bool = False):
        self.labels = list(labels)
        self.weighted = weighted
        self._train_started = False
        self.validation = EvalLoaderDraws(shuffle_validation)

    def epoch_order(self) -> list[int]:
        """Positions 0..n-1 of the training slides in this epoch's visiting order."""
        if not self._train_started:
            self._train_started = True
            draw_int64()  # training loader base seed (once: persistent workers)
        n = len(self.labels)
        if n == 0:
            return []
        if self.weighted:
            return torch.multinomial(class_balanced_weights(self.labels), n, replacement=True).tolist()
        generator = torch.Generator()
        generator.manual_seed(draw_int64())
        return torch.randperm(n, generator=generator).tolist()

    def validation_pass(self) -> None:
        """Call before each validation pass: the first one draws the validation loader's base seed. The
        pass's order (and, shuffled, its draw) then comes from ``self.validation.order(items)``."""
        self.validation.start_pass()


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


def fit(
    model: nn.Module,
    task,
    load: Callable[[int], SlideBag],
    train_indices: Sequence[int],
    train_labels: Sequence[int],
    validate: Callable[[], Any],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    *,
    max_epochs: int,
    weighted_sample: bool = False,
    early_stopping: EarlyStopping | None = None,
    es_metric: str = "error",
    options: LoopOptions | None = None,
    scalars: ScalarLog | None = None,
    log: Callable[[str], None] = print,
    draws: ReleasedLoaderDraws | None = None,
) -> FitResult:
    """Train for up to ``max_epochs`` epochs, validating after each; keep the best (or last) state.

    The epoch loop of every task kind; ``task`` (:mod:`training.tasks`) trains one epoch
    (``task.train_epoch(model, load, order, optimizer, loss_fn, device, options, desc=...)``, returning
    the epoch's stats, a dataclass) and says what is recorded: every field of the stats goes into the
    history as ``train_<field>`` and to the scalars as ``train/<field>``; the validation loss and all
    validation metrics go into the history, ``val/loss`` and ``task.val_scalars(val)`` to the scalars;
    ``task.epoch_line`` is the epoch's log line. ``validate()`` returns a result with ``loss``,
    ``error`` and ``metrics``; with ``task.nan_is_worst`` a NaN monitored value never improves. A
    training loss that is not finite stops the fit (:func:`check_finite_loss`, the epoch named), as do
    parameters that are not finite after an epoch's steps (:func:`check_finite_parameters`).
    With ``early_stopping`` the state of the first epoch with the
    lowest validation ``es_metric`` (``error`` or ``loss``) is kept and training ends when the stopper
    says so; without it the last epoch's state is kept. Data order and its RNG draws:
    ``draws``, by default :class:`ReleasedLoaderDraws` over ``train_labels``; a caller whose validation
    order is shuffled passes its own and has ``validate`` take that order from ``draws.validation``.
    """
    options = options or LoopOptions()
    scalars = scalars or ScalarLog(None)
    draws = draws if draws is not None else ReleasedLoaderDraws(train_labels, weighted_sample)
    history: list[dict[str, float]] = []
    best: tuple[int, Any, dict[str, torch.Tensor]] | None = None
    stopped = False
    for epoch in bar(range(max_epochs), desc="epochs", enabled=options.progress, leave=False):
        start = time.perf_counter()
        order = [train_indices[i] for i in draws.epoch_order()]
        try:
            stats = task.train_epoch(
                model, load, order, optimizer, loss_fn, device, options, desc=f"epoch {epoch}"
            )
            check_finite_parameters(model, optimizer)
        except NonFiniteError as err:
            raise NonFiniteError(f"epoch {epoch}, {err}") from None
        draws.validation_pass()
        val = validate()
        trained = dataclasses.asdict(stats)
        history.append(
            {
                "epoch": epoch,
                **{f"train_{k}": v for k, v in trained.items()},
                "val_loss": val.loss,
                **{f"val_{k}": v for k, v in val.metrics.items()},
            }
        )
        for tag, value in (
            *((f"train/{k}", v) for k, v in trained.items()),
            ("val/loss", val.loss),
            *task.val_scalars(val),
        ):
            scalars.add(tag, value, epoch)
        monitored = val.error if es_metric == "error" else val.loss
        if task.nan_is_worst and math.isnan(monitored):
            monitored = math.inf
        improved = early_stopping.step(epoch, monitored) if early_stopping is not None else True
        marker = " *" if early_stopping is not None and improved else ""
        log(task.epoch_line(epoch, stats, val, time.perf_counter() - start) + marker)
        if improved:
            best = (epoch, val, snapshot_state(model))
        if early_stopping is not None and early_stopping.should_stop:
            stopped = True
            log(
                f"early stop at epoch {epoch}: no {task.watched[es_metric]} improvement for "
                f"{early_stopping.patience} epochs"
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
