"""Mean- and max-pooling MIL baselines.

Each instance is embedded by fc + ReLU + dropout (the CLAM-style instance embedding), the embeddings
are pooled over the bag (mean or element-wise max) and a linear layer classifies the pooled vector.
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

POOLS = ("mean", "max")


class PooledMIL(InstanceMIL):
    """``logits = W pool_i(dropout(relu(A x_i)))`` with pool = mean or max over instances."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        pool: str = "mean",
        hidden: int = 512,
        dropout: float = 0.0,
        mag: str = "20x",
    ):
        super().__init__(num_classes, mag)
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.pool = pool
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, num_classes)

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        h = self.embed(x)
        pooled = h.mean(dim=0) if self.pool == "mean" else h.amax(dim=0)
        return self.classifier(pooled).unsqueeze(0), {}


def _factory(pool: str):
    def build(spec: ModelSpec, mag: str) -> PooledMIL:
        return PooledMIL(spec.feature_dim, spec.num_classes, pool=pool, dropout=dropout_p(spec), mag=mag)

    return build


register_instance_baseline("mean_pool", _factory("mean"))
register_instance_baseline("max_pool", _factory("max"))
