"""The shared evaluation pass (models/passes.py): order, one text precompute, no gradients, mode restored."""

from __future__ import annotations

import pytest
import torch

from models.passes import forward_bag, forward_pass
from tests.toy_task import DIM, MeanPoolLinear, toy_bags


def test_forward_pass_visits_in_order_with_one_cache_and_no_gradients():
    torch.manual_seed(0)
    model, bags = MeanPoolLinear(DIM, 2), toy_bags(5)
    model.train()
    seen = []

    def visit(bag, out):
        seen.append((bag.slide_id, model.training, out.logits.requires_grad))

    forward_pass(model, bags.__getitem__, [4, 1, 3], torch.device("cpu"), visit, prefetch_depth=2)
    assert seen == [("s4", False, False), ("s1", False, False), ("s3", False, False)]
    assert model.precompute_calls == 1 and all(c is model.seen_caches[0] for c in model.seen_caches)
    assert model.training  # mode restored


def test_forward_pass_restores_the_mode_when_a_visit_fails():
    model, bags = MeanPoolLinear(DIM, 2), toy_bags(2)
    model.train()

    def visit(bag, out):
        raise RuntimeError("bad slide")

    with pytest.raises(RuntimeError, match="bad slide"):
        forward_pass(model, bags.__getitem__, [0, 1], torch.device("cpu"), visit, prefetch_depth=0)
    assert model.training


def test_forward_bag_matches_the_pass():
    torch.manual_seed(0)
    model, bags = MeanPoolLinear(DIM, 2), toy_bags(3)
    logits = []
    forward_pass(
        model, bags.__getitem__, [0, 1, 2], torch.device("cpu"), lambda b, o: logits.append(o.logits)
    )
    model.eval()
    cache = model.precompute()
    single = [forward_bag(model, b, cache, torch.device("cpu")).logits for b in bags]
    assert all(torch.equal(a, b) and not b.requires_grad for a, b in zip(logits, single))
