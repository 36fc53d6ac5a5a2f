"""Small helpers shared by the tower adapters: text projections."""

from __future__ import annotations

import torch
from torch import nn


def project(x: torch.Tensor, projection: nn.Module | torch.Tensor | None) -> torch.Tensor:
    """Apply an open_clip-style text projection: a Linear, a [width, embed_dim] matrix, or nothing."""
    if projection is None:
        return x
    if isinstance(projection, nn.Module):
        return projection(x)
    return x @ projection
