"""LiteMIL: learnable-query multi-head cross-attention pooling.

Instances are projected D->256 (linear + ReLU + dropout); Q learnable queries (1 by default) attend
to them with 4-head cross-attention; dropout is 0.25 (part of the architecture, independent of
--drop_out); the attended queries are added to the
queries, LayerNorm-ed, averaged over queries and classified linearly.
"""

from __future__ import annotations

import torch
from torch import nn

from models.baselines.common import (
    DROPOUT_P,
    InstanceMIL,
    register_instance_baseline,
)
from models.registry import ModelSpec


class LiteMIL(InstanceMIL):
    """Cross-attention of learnable queries over the bag, then LayerNorm and a linear classifier."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: int = 256,
        heads: int = 4,
        num_queries: int = 1,
        dropout: float = DROPOUT_P,
        mag: str = "20x",
    ):
        super().__init__(num_classes, mag)
        self.project = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.queries = nn.Parameter(torch.randn(1, num_queries, hidden) * 0.02)
        self.cross_attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        h = self.project(x).unsqueeze(0)  # [1, N, hidden]
        attended, weights = self.cross_attention(self.queries, h, h, need_weights=True)
        slide = self.norm(self.queries + attended).mean(dim=1)  # [1, hidden]
        return self.classifier(slide), {"attention": weights.detach()[0]}


def _build(spec: ModelSpec, mag: str) -> LiteMIL:
    return LiteMIL(spec.feature_dim, spec.num_classes, mag=mag)


register_instance_baseline("LiteMIL", _build, patch_scores="attention")
