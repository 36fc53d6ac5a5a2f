"""TGDF (paper Eqs. 3-4, docs/method.md section 3): thresholds and kept entries by hand."""

from __future__ import annotations

import math

import pytest
import torch

from models.hivemil.tgdf import text_guided_filter


def test_tgdf_thresholds_and_kept_entries_by_hand():
    # logit_scale = log(2): similarities are doubled before min-max normalisation (which undoes it).
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.0, 0.0]])
    text = torch.eye(2)
    res = text_guided_filter(image, text, torch.tensor(math.log(2.0)), alpha=0.5)
    # column 0 raw sims *2: [2, 0, 1, 0] -> min-max [1, 0, .5, 0]; mean .375, std(unbiased) of that:
    col = torch.tensor([1.0, 0.0, 0.5, 0.0])
    tau = col.mean() + 0.5 * col.std()
    assert res.threshold[0].item() == pytest.approx(tau.item(), abs=1e-6)
    assert res.threshold[1].item() == pytest.approx(tau.item(), abs=1e-6)  # symmetric column
    expected = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.0, 0.0]])
    expected[expected < tau] = 0.0  # tau ~ 0.61: the 0.5 entries are dropped
    assert torch.allclose(res.kept, expected, atol=1e-6)
    assert res.image_mask.tolist() == [True, True, False, False]


def test_tgdf_zero_spread_column_keeps_nothing_and_no_nan():
    image = torch.ones(3, 2)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    res = text_guided_filter(image, text, torch.tensor(0.0), alpha=0.5)
    assert torch.isfinite(res.kept).all()
    assert not res.image_mask.any()


def test_tgdf_single_image_keeps_nothing_like_released_code():
    res = text_guided_filter(torch.randn(1, 4), torch.randn(3, 4), torch.tensor(1.0), alpha=0.5)
    assert not res.image_mask.any()  # std is NaN -> every comparison false


def test_tgdf_empty_image_set():
    res = text_guided_filter(torch.zeros(0, 4), torch.randn(3, 4), torch.tensor(1.0), alpha=0.5)
    assert res.kept.shape == (0, 3) and res.image_mask.shape == (0,)


def test_tgdf_keeps_an_entry_exactly_at_the_threshold():
    """``S' >= tau`` as released: an entry equal to tau is kept (``>`` would drop it)."""
    # One text, sims [0, 1, 2] (logit_scale 0: factor 1) -> min-max [0, 0.5, 1] exactly (2 + 1e-8 == 2 in
    # float32); alpha 0 -> tau = mean = 0.5 exactly, equal to the middle entry.
    image = torch.tensor([[0.0], [1.0], [2.0]])
    res = text_guided_filter(image, torch.ones(1, 1), torch.tensor(0.0), alpha=0.0)
    assert res.threshold.tolist() == [0.5]
    assert res.kept[:, 0].tolist() == [0.0, 0.5, 1.0]
    assert res.image_mask.tolist() == [False, True, True]
    # With alpha > 0 the threshold moves above 0.5 and the same entry is dropped.
    res = text_guided_filter(image, torch.ones(1, 1), torch.tensor(0.0), alpha=0.1)
    assert res.image_mask.tolist() == [False, False, True]
