"""Constant text features: computed once when the tower reads no context position, same steps as before."""

from __future__ import annotations

import copy

import pytest
import torch

from models.hivemil.prompt_learner import PromptLearner
from tests.models.hivemil.test_model import DESCRIPTIONS, _loss, make_bag, make_model


def encoder_calls(model) -> list[int]:
    calls = [0]
    model.text_tower.encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def uncached(model):
    """The same model with the text shortcut off (the tower is asked for every position)."""
    twin = copy.deepcopy(model)
    twin.text_tower.positions_read = lambda token_ids, released_layout=False: None
    return twin


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_context_mask_marks_where_the_context_is_spliced(tiny_text_tower, position):
    learner = PromptLearner(tiny_text_tower, DESCRIPTIONS, n_ctx=4, position=position)
    with torch.no_grad():
        learner.ctx.fill_(1e6)  # no token embedding is that large
    for c in range(len(DESCRIPTIONS)):
        spliced = learner.class_embeddings(c)[..., 0] == 1e6
        assert torch.equal(learner.context_mask(c), spliced)
        assert int(learner.context_mask(c).sum()) == 4 * len(DESCRIPTIONS[c])


def test_released_layout_encodes_the_text_once_and_steps_as_before(tiny_text_tower):
    model = make_model(tiny_text_tower, "reference", seed=2)
    twin = uncached(model)
    calls = encoder_calls(model)
    opts = [torch.optim.Adam(m.trainable_parameters(), lr=1e-3, weight_decay=1e-2) for m in (model, twin)]
    for step in range(3):
        bag = make_bag(seed=step)
        losses = []
        for m, opt in zip((model, twin), opts):
            opt.zero_grad()
            loss = _loss(m(bag), 1)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-6)
        # the context gets an exactly zero gradient (not None), so weight decay still moves it as released
        assert model.prompt_learner.ctx.grad is not None and not model.prompt_learner.ctx.grad.any()
        assert not twin.prompt_learner.ctx.grad.any()
    assert calls[0] == len(DESCRIPTIONS)  # one encoder call per class, at the first step only
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(
        model.prompt_learner.ctx, make_model(tiny_text_tower, "reference", seed=2).prompt_learner.ctx
    )


def test_eval_and_train_share_the_constant_features(tiny_text_tower):
    model = make_model(tiny_text_tower, "reference")
    with torch.no_grad():
        first = model.precompute()
    again = model.encode_text()
    assert torch.equal(first.x5, again.x5.detach()) and torch.equal(first.x20, again.x20.detach())
    assert again.x5.requires_grad  # linked to the context with a zero gradient


def test_text_that_reads_the_context_is_encoded_every_step(tiny_text_tower):
    model = make_model(tiny_text_tower, "corrected")  # causal layout: the end token sees the context
    calls = encoder_calls(model)
    for step in range(2):
        model.zero_grad()
        _loss(model(make_bag(seed=step)), 0).backward()
        assert model.prompt_learner.ctx.grad.abs().sum() > 0
    assert calls[0] == 2 * len(DESCRIPTIONS)


def test_constant_features_follow_the_mode_and_autocast(tiny_text_tower):
    model = make_model(tiny_text_tower, "reference").train()
    calls = encoder_calls(model)
    model.encode_text()
    model.encode_text()
    model.eval()
    model.encode_text()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.encode_text()
    assert calls[0] == 3 * len(DESCRIPTIONS)
    model.train()  # training and evaluation passes alternate every epoch: each keeps its features
    model.encode_text()
    model.eval()
    model.encode_text()
    assert calls[0] == 3 * len(DESCRIPTIONS)
    assert low.x5.dtype == torch.bfloat16
