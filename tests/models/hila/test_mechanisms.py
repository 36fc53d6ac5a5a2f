"""HiLa-style mechanisms on tiny inputs: Sinkhorn/OPL, cross-level propagation, mutual contrastive loss."""

from __future__ import annotations

import math

import pytest
import torch

from models.hila.clp import CrossLevelPropagation, EdgeAttention
from models.hila.mcl import mutual_contrastive_loss
from models.hila.opl import optimal_prompt_features, sinkhorn_plan


# ------------------------------------------------------------------------------------------- OPL
@pytest.mark.parametrize(("n", "k", "eps"), [(50, 6, 0.1), (7, 3, 0.05), (300, 8, 0.5)])
def test_sinkhorn_plan_has_the_uniform_marginals(n, k, eps):
    g = torch.Generator().manual_seed(n)
    cost = 1.0 - torch.nn.functional.cosine_similarity(
        torch.randn(n, 1, 16, generator=g), torch.randn(1, k, 16, generator=g), dim=-1
    )
    plan = sinkhorn_plan(cost.double(), epsilon=eps, iterations=300)
    assert torch.allclose(plan.sum(dim=0), torch.full((k,), 1.0 / k, dtype=plan.dtype), atol=1e-12)
    assert torch.allclose(plan.sum(dim=1), torch.full((n,), 1.0 / n, dtype=plan.dtype), atol=1e-6)
    assert (plan >= 0).all()


def test_sinkhorn_given_marginals_and_few_iterations():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(5, 3, generator=g, dtype=torch.float64)
    a = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2], dtype=torch.float64)
    b = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    plan = sinkhorn_plan(cost, 0.1, 500, a, b)
    assert torch.allclose(plan.sum(1), a, atol=1e-8) and torch.allclose(plan.sum(0), b, atol=1e-12)
    few = sinkhorn_plan(cost, 0.1, 3, a, b)  # the column update comes last: columns exact already
    assert torch.allclose(few.sum(0), b, atol=1e-12)


def test_sinkhorn_is_stable_for_small_epsilon_and_prefers_cheap_pairs():
    cost = torch.tensor([[0.0, 2.0], [2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    plan = sinkhorn_plan(cost, epsilon=1e-3, iterations=20)  # exp(-2000) underflows outside log space
    assert torch.isfinite(plan).all()
    assert torch.allclose(plan, torch.tensor([[0.25, 0.0], [0.0, 0.25], [0.25, 0.0], [0.0, 0.25]]), atol=1e-6)


def test_opl_features_are_plan_weighted_means_and_differentiable():
    g = torch.Generator().manual_seed(1)
    visual = torch.randn(20, 8, generator=g, requires_grad=True)
    prompts = torch.randn(4, 8, generator=g, requires_grad=True)
    out = optimal_prompt_features(visual, prompts, epsilon=0.1, iterations=10)
    weights = out.plan / out.plan.sum(0, keepdim=True)
    assert out.features.shape == (4, 8) and out.plan.shape == (20, 4)
    assert torch.allclose(out.features, weights.T @ visual, atol=1e-6)
    cos = torch.nn.functional.normalize(visual, dim=-1) @ torch.nn.functional.normalize(prompts, dim=-1).T
    assert torch.allclose(out.transport_cost, (weights * (1 - cos)).sum(0), atol=1e-6)
    out.features.sum().backward()
    assert visual.grad is not None and prompts.grad is not None and prompts.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------- CLP
def test_clp_is_the_identity_at_initialisation():
    torch.manual_seed(0)
    clp = CrossLevelPropagation(8)
    regions, patches = torch.randn(3, 8), torch.randn(5, 8)
    parent = torch.tensor([0, 0, 2, 2, 2])
    r, p = clp(regions, patches, parent)
    assert torch.equal(r, regions) and torch.equal(p, patches)


def test_edge_attention_follows_only_the_true_edges():
    torch.manual_seed(0)
    att = EdgeAttention(4)
    torch.nn.init.eye_(att.out.weight)
    torch.nn.init.eye_(att.value.weight)
    torch.nn.init.zeros_(att.value.bias)
    regions = torch.randn(3, 4)
    patches = torch.randn(5, 4)
    parent = torch.tensor([0, 0, 2, 2, 2])
    child = torch.arange(5)
    up = att(regions, patches, torch.stack([child, parent]))
    # region 1 has no children: no message; region 0 gets a convex combination of patches 0 and 1
    assert torch.equal(up[1], torch.zeros(4))
    q, k = att.query(regions), att.key(patches)
    w = torch.softmax((q[0] @ k[:2].T) / 2.0, dim=0)
    assert torch.allclose(up[0], w @ patches[:2], atol=1e-6)
    # a patch has one parent: its softmax weight is 1, it receives its parent's value
    down = att(patches, regions, torch.stack([parent, child]))
    assert torch.allclose(down, regions[parent], atol=1e-6)


# ------------------------------------------------------------------------------------------- MCL
def test_mcl_by_hand():
    region = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    patch = torch.tensor([[2.0, 0.0], [3.0, 0.0]])  # both attributes point the same way at the patch level
    # S = A B^T / tau with tau = 1: [[1, 1], [0, 0]]
    rows = (math.log(2) + math.log(2)) / 2  # CE(S, I): each row has two equal scores
    cols = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2  # CE(S^T, I): rows [1, 0] and [1, 0]
    assert mutual_contrastive_loss(region, patch, temperature=1.0).item() == pytest.approx(
        0.5 * (rows + cols)
    )


def test_mcl_is_small_when_levels_agree_and_uses_other_attributes_as_negatives():
    a = torch.eye(4)
    assert mutual_contrastive_loss(a, a, 0.1).item() < 1e-3
    shuffled = a[[1, 0, 2, 3]]
    assert mutual_contrastive_loss(a, shuffled, 0.1).item() > 4.0
