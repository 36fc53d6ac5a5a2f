"""Discrete-time survival outputs shared by every survival model (docs/survival.md §6.1).

A survival model's :class:`models.base.ModelOutput` ``logits`` [B, n_bins] are hazard logits: bin b's
hazard h_b = sigmoid(logit_b) is the probability of the event in bin b given survival up to its start.
The survival S_b = prod_{j <= b} (1 - h_j) is the probability of surviving past bin b, and the risk score
is -sum_b S_b (higher = shorter expected survival; MCAT / Patch-GCN convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hazards_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """[..., n_bins] hazards in (0, 1)."""
    return torch.sigmoid(logits)


def survival_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """[..., n_bins] survival S_b = prod_{j<=b} (1 - h_j), computed as exp(cumsum(log sigmoid(-logit)))."""
    return torch.exp(torch.cumsum(F.logsigmoid(-logits), dim=-1))


def risk_from_survival(survival: torch.Tensor) -> torch.Tensor:
    """[...] risk score -sum_b S_b of [..., n_bins] survival curves (e.g. a fold ensemble's mean curve)."""
    return -survival.sum(dim=-1)


def risk_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """[...] risk score -sum_b S_b."""
    return risk_from_survival(survival_from_logits(logits))
