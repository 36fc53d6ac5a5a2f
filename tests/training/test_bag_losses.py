"""Bag losses against hand-computed values (training/bag_losses.py)."""

import math

import pytest
import torch

from training.bag_losses import CrossEntropyBagLoss, FocalLoss, SmoothTop1SVM, build_bag_loss
from utils.errors import InputError


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_cross_entropy_by_hand():
    logits, target = _t([[1.0, 2.0, 0.5]]), torch.tensor([2])
    expected = -(0.5 - math.log(math.e**1 + math.e**2 + math.e**0.5))
    assert CrossEntropyBagLoss()(logits, target).item() == pytest.approx(expected, abs=1e-12)


def test_smooth_svm_matches_formula():
    # s = (1, 2, 0.5), y = 0: Delta + s - s_y = (0, 1 + 2 - 1, 1 + 0.5 - 1) = (0, 2, 0.5)
    loss = SmoothTop1SVM(3, alpha=1.0, tau=1.0)(_t([[1.0, 2.0, 0.5]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(2) + math.exp(0.5)), abs=1e-12)


def test_smooth_svm_temperature_and_batch_mean():
    logits, target = _t([[5.0, 1.0, 0.0], [0.0, 0.3, 0.1]]), torch.tensor([0, 2])
    tau = 0.5
    # slide 1: (0, 1+1-5, 1+0-5) = (0, -3, -4); slide 2 (y=2): (1+0-0.1, 1+0.3-0.1, 0) = (0.9, 1.2, 0)
    first = tau * math.log(1 + math.exp(-3 / tau) + math.exp(-4 / tau))
    second = tau * math.log(math.exp(0.9 / tau) + math.exp(1.2 / tau) + 1)
    loss = SmoothTop1SVM(3, tau=tau)(logits, target)
    assert loss.item() == pytest.approx((first + second) / 2, abs=1e-12)


def test_smooth_svm_hard_limit():
    logits, target = _t([[1.0, 2.0, 0.5], [5.0, 1.0, 0.0]]), torch.tensor([0, 0])
    hard = (2.0 + 0.0) / 2  # max(0, 2, 0.5) and max(0, -3, -4)
    assert SmoothTop1SVM(3, tau=0.0)(logits, target).item() == pytest.approx(hard, abs=1e-12)
    near = SmoothTop1SVM(3, tau=1e-3)(logits, target).item()
    assert near == pytest.approx(hard, abs=1e-2)
    assert near >= hard  # the smooth max is an upper bound of the max


def test_smooth_svm_gradient_flows():
    logits = torch.tensor([[0.2, -0.1]], requires_grad=True)
    build_bag_loss("svm", 2)(logits, torch.tensor([1])).backward()
    # d/ds of log(exp(1 + s0 - s1) + 1): positive for s0, negative for s1, summing to 0
    assert logits.grad[0, 0] > 0 > logits.grad[0, 1]
    assert logits.grad.sum().item() == pytest.approx(0.0, abs=1e-7)


def test_focal_by_hand():
    logits, target = _t([[1.0, 2.0, 0.5]]), torch.tensor([1])
    p = math.exp(2) / (math.e + math.exp(2) + math.exp(0.5))
    expected = -((1 - p) ** 2) * math.log(p)
    assert FocalLoss(gamma=2.0)(logits, target).item() == pytest.approx(expected, abs=1e-12)
    weighted = FocalLoss(gamma=2.0, alpha=[0.25, 0.75, 1.0])(logits, target)
    assert weighted.item() == pytest.approx(0.75 * expected, abs=1e-7)


def test_focal_gamma_zero_is_cross_entropy():
    logits, target = _t([[0.3, -1.0], [2.0, 0.1]]), torch.tensor([1, 0])
    focal = FocalLoss(gamma=0.0)(logits, target)
    assert focal.item() == pytest.approx(CrossEntropyBagLoss()(logits, target).item(), abs=1e-12)


def test_build_bag_loss_names():
    assert isinstance(build_bag_loss("ce", 2), CrossEntropyBagLoss)
    assert isinstance(build_bag_loss("focal", 2), FocalLoss)
    svm = build_bag_loss("svm", 3)
    assert (svm.alpha, svm.tau) == (1.0, 1.0)
    with pytest.raises(InputError, match="--bag_loss 'hinge'"):
        build_bag_loss("hinge", 2)
