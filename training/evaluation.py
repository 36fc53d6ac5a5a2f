"""One evaluation pass over a list of slides: loss, class probabilities, metrics.

The slide-independent part of the model (text features) is computed once per pass with
``model.precompute()`` and handed to every forward as ``cache`` (docs/method.md §9); bags are loaded
by a background prefetch thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from datasets.bag import SlideBag
from utils.amp import autocast
from utils.metrics import classification_metrics
from utils.prefetch import prefetch
from utils.run_logging import bar


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
    """Evaluate ``model`` on bags ``load(i)`` for ``i`` in ``indices`` (eval mode, no gradients).

    The reported loss is the mean over slides of the training objective, bag loss + the model's
    auxiliary loss (CE + lambda * HTCL for HiVE-MIL, as the released validation logs it: HTCL varies
    slightly by slide because text nodes receive image messages).
    """
    was_training = model.training
    model.eval()
    slide_ids: list[str] = []
    labels: list[int] = []
    probs: list[np.ndarray] = []
    total_loss = 0.0
    try:
        with torch.no_grad(), autocast(amp, device):
            cache = model.precompute() if use_text_cache else None
            bags = prefetch(load, indices, depth=prefetch_depth, workers=workers)
            for bag in bar(bags, total=len(indices), desc=desc, enabled=progress, leave=False):
                bag = bag.to(device)
                out = model(bag, cache=cache)
                target = torch.tensor([bag.label], device=out.logits.device)
                total_loss += float(loss_fn(out.logits.float(), target) + out.aux_loss.float())
                probs.append(torch.softmax(out.logits.float(), dim=1).reshape(-1).cpu().numpy())
                labels.append(int(bag.label))
                slide_ids.append(bag.slide_id)
    finally:
        model.train(was_training)
    label_arr = np.asarray(labels, dtype=np.int64)
    prob_arr = np.stack(probs).astype(np.float64) if probs else np.zeros((0, num_classes))
    loss = total_loss / len(labels) if labels else math.nan
    return EvalResult(slide_ids, label_arr, prob_arr, loss, classification_metrics(label_arr, prob_arr))
