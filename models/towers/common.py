"""Small helpers shared by the tower adapters: projections and one-line error text."""

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


def one_line_error(err: BaseException, limit: int = 200) -> str:
    """``"Type: message"`` squeezed onto one line and cut to ``limit`` characters (for InputError text)."""
    msg = " ".join(f"{type(err).__name__}: {err}".split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."
