"""Optimal Prompt Learning (OPL): entropic optimal transport between a level's visual nodes and its
attribute prompts (docs/survival.md §8.4).

Per level, with N visual features V [N, D] and K prompt features T [K, D]:

    cost    C_ik = 1 - cos(v_i, t_k)                                   [N, K]
    plan    P = argmin_P <P, C> - eps H(P)   s.t.  P 1 = 1/N,  P^T 1 = 1/K
    feature z_k = sum_i P_ik v_i / sum_i P_ik                          attribute-specific visual feature
    score   d_k = sum_i P_ik C_ik / sum_i P_ik                         transport cost of attribute k

The plan comes from Sinkhorn's iterations in log space (log-sum-exp updates of the dual scalings), which
stay finite for small eps; the iterations are ordinary tensor operations, so gradients flow through the
plan into the visual features and, through T, into the learnable prompt context (PLOT-style prompt
learning, Chen et al. ICLR 2023, with uniform marginals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sinkhorn_plan(
    cost: torch.Tensor,
    epsilon: float = 0.1,
    iterations: int = 10,
    row_marginal: torch.Tensor | None = None,
    col_marginal: torch.Tensor | None = None,
) -> torch.Tensor:
    """Entropic transport plan [N, K] for ``cost`` [N, K] (log-domain Sinkhorn, ``iterations`` rounds).

    Marginals default to uniform (1/N per row, 1/K per column). Each round updates the row scaling, then
    the column scaling, so the returned plan's column sums equal ``col_marginal`` exactly and its row sums
    approach ``row_marginal`` as the rounds grow.
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    n, k = cost.shape
    log_a = (
        torch.full((n,), -math.log(n), dtype=cost.dtype, device=cost.device)
        if row_marginal is None
        else row_marginal.log()
    )
    log_b = (
        torch.full((k,), -math.log(k), dtype=cost.dtype, device=cost.device)
        if col_marginal is None
        else col_marginal.log()
    )
    log_kernel = -cost / epsilon
    log_v = torch.zeros(k, dtype=cost.dtype, device=cost.device)
    log_u = torch.zeros(n, dtype=cost.dtype, device=cost.device)
    for _ in range(iterations):
        log_u = log_a - torch.logsumexp(log_kernel + log_v[None, :], dim=1)
        log_v = log_b - torch.logsumexp(log_kernel + log_u[:, None], dim=0)
    return torch.exp(log_u[:, None] + log_kernel + log_v[None, :])


@dataclass
class OPLResult:
    """What OPL gives for one level."""

    features: torch.Tensor  # [K, D] attribute-specific visual features z_k
    plan: torch.Tensor  # [N, K] transport plan
    transport_cost: torch.Tensor  # [K] d_k, plan-weighted mean cosine distance per attribute


def optimal_prompt_features(
    visual: torch.Tensor, prompts: torch.Tensor, epsilon: float = 0.1, iterations: int = 10
) -> OPLResult:
    """Align ``visual`` [N, D] with ``prompts`` [K, D] by OT and pool one visual feature per prompt.

    Computed in float32 (also under autocast): the plan's exponentials need the range.
    """
    v, t = visual.float(), prompts.float()
    cost = 1.0 - F.normalize(v, dim=-1) @ F.normalize(t, dim=-1).T
    plan = sinkhorn_plan(cost, epsilon, iterations)
    weights = plan / plan.sum(dim=0, keepdim=True).clamp_min(torch.finfo(plan.dtype).tiny)
    return OPLResult(features=weights.T @ v, plan=plan, transport_cost=(weights * cost).sum(dim=0))
