"""Inference passes of a slide model: the one evaluation skeleton every caller shares.

A pass puts the model in eval mode (its training mode is restored afterwards), runs without gradients
under ``--amp`` autocast, computes the slide-independent part (text features, ``model.precompute()``)
once and hands it to every forward as ``cache`` (docs/method.md §9), and loads bags in a background
prefetch thread, with an optional progress bar. What is kept of each output is the caller's:
:func:`forward_pass` hands every ``(bag, output)`` to ``visit``. :func:`forward_bag` is the same
no-gradient, autocast forward for one bag with a cache the caller holds (prediction of many slides
with models loaded once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from datasets.bag import SlideBag
from models.base import ModelOutput
from utils.amp import autocast
from utils.prefetch import prefetch
from utils.run_logging import bar


@contextmanager
def evaluating(model: nn.Module, device: torch.device, amp: str = "off") -> Iterator[None]:
    """Eval mode, no gradients and ``amp`` autocast inside; the model's mode is restored on exit."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(amp, device):
            yield
    finally:
        model.train(was_training)


def forward_pass(
    model: nn.Module,
    load: Callable[[int], SlideBag],
    indices: Sequence[int],
    device: torch.device,
    visit: Callable[[SlideBag, ModelOutput], None],
    *,
    use_text_cache: bool = True,
    prefetch_depth: int = 2,
    workers: int = 1,
    progress: bool = False,
    desc: str = "eval",
    amp: str = "off",
) -> None:
    """Run ``model`` on the bags ``load(i)`` for ``i`` in ``indices`` (in order) and call
    ``visit(bag, output)`` for each, with ``bag`` on ``device`` (see the module docstring)."""
    with evaluating(model, device, amp):
        cache = model.precompute() if use_text_cache else None
        bags = prefetch(load, indices, depth=prefetch_depth, workers=workers)
        for bag in bar(bags, total=len(indices), desc=desc, enabled=progress, leave=False):
            bag = bag.to(device)
            visit(bag, model(bag, cache=cache))


def forward_bag(
    model: nn.Module, bag: SlideBag, cache, device: torch.device, amp: str = "off"
) -> ModelOutput:
    """One forward of ``bag`` (already on ``device``) without gradients, under ``amp`` autocast, with the
    ``cache`` of ``model.precompute()``; the model is expected in eval mode."""
    with torch.no_grad(), autocast(amp, device):
        return model(bag, cache=cache)
