"""HTCL (docs/method.md section 7) by hand, both variants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.hivemil.htcl import hierarchical_text_contrastive_loss


def test_htcl_value_both_variants_by_hand():
    coarse = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # 2 classes x 1 coarse text
    fine = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # 2 fine per coarse
    a0, a1 = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    pos0 = F.cosine_similarity(a0, coarse[0], dim=0)
    pos1 = F.cosine_similarity(a1, coarse[1], dim=0)
    zero = -(torch.log(torch.sigmoid(pos0)) + torch.log(torch.sigmoid(pos1))) / 2
    got = hierarchical_text_contrastive_loss(coarse, fine, num_classes=2, negatives="zero")
    assert got.item() == pytest.approx(zero.item(), abs=1e-6)
    neg = F.cosine_similarity(a0, a1, dim=0)
    real = -(torch.log(torch.sigmoid(pos0 - neg)) + torch.log(torch.sigmoid(pos1 - neg))) / 2
    got = hierarchical_text_contrastive_loss(coarse, fine, num_classes=2, negatives="real")
    assert got.item() == pytest.approx(real.item(), abs=1e-6)
    assert real.item() != pytest.approx(zero.item(), abs=1e-3)
