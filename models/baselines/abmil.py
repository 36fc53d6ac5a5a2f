"""ABMIL: gated-attention MIL (Ilse, Tomczak & Welling, ICML 2018, Eq. 9).

Instances are embedded h_i = dropout(relu(W x_i)) (256-d), scored by the gated attention
a_i = softmax_i( w^T (tanh(V h_i) * sigmoid(U h_i)) ) (128-d gates), pooled z = sum_i a_i h_i and
classified linearly.
"""

from __future__ import annotations

import torch
from torch import nn

from models.baselines.common import (
    InstanceMIL,
    dropout_p,
    register_instance_baseline,
)
from models.registry import ModelSpec


class GatedAttention(nn.Module):
    """Attention scores [N] from the tanh branch gated by the sigmoid branch (Ilse et al. Eq. 9)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.tanh_branch = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.gate_branch = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.score = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.score(self.tanh_branch(h) * self.gate_branch(h)).squeeze(-1)


class ABMIL(InstanceMIL):
    """Gated-attention pooling of embedded instances, then a linear classifier."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: int = 256,
        attention_hidden: int = 128,
        dropout: float = 0.0,
        mag: str = "20x",
    ):
        super().__init__(num_classes, mag)
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden, attention_hidden, dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        h = self.embed(x)
        weights = self.attention(h).softmax(dim=0)
        slide = weights @ h
        return self.classifier(slide).unsqueeze(0), {"attention": weights.detach()}


def _build(spec: ModelSpec, mag: str) -> ABMIL:
    return ABMIL(spec.feature_dim, spec.num_classes, dropout=dropout_p(spec), mag=mag)


register_instance_baseline("ABMIL", _build, patch_scores="attention")
