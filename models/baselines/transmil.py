"""TransMIL (Shao et al., NeurIPS 2021): correlated MIL with a Nyström transformer.

Steps (TransMIL Algorithm 1): fc D->512 + ReLU; the sequence is padded to a square H x W by repeating
its first instances; a learnable class token is prepended; Nyström-attention layer; PPEG (position
encoding by 7x7, 5x5 and 3x3 depthwise convolutions over the instances laid out on the square,
added to the identity); second Nyström-attention layer; LayerNorm; the class token is classified.

The attention is ``NystromAttention`` of the PyPI package ``nystrom-attention``, the implementation
TransMIL's own code uses, with its settings: ``heads`` heads of ``dim // heads`` channels, ``dim // 2``
landmarks, 6 pseudo-inverse iterations, the depthwise value-convolution residual, dropout 0.1. The
package pads a sequence whose length is not a multiple of the landmark count with zero tokens at the
front (part of TransMIL's reference behaviour, kept as is).
"""

from __future__ import annotations

import math

import torch
from nystrom_attention import NystromAttention
from torch import nn

from models.baselines.common import InstanceMIL, register_instance_baseline
from models.registry import ModelSpec


class TransLayer(nn.Module):
    """Pre-norm Nyström self-attention block: x + attention(LayerNorm(x))."""

    def __init__(self, dim: int, heads: int, num_landmarks: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = NystromAttention(
            dim=dim,
            dim_head=dim // heads,
            heads=heads,
            num_landmarks=num_landmarks,
            pinv_iterations=6,
            residual=True,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attention(self.norm(x))


class PPEG(nn.Module):
    """Pyramid position encoding generator: identity + depthwise 7x7 + 5x5 + 3x3 convs on the square."""

    def __init__(self, dim: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        cls_token, tokens = x[:, :1], x[:, 1:]
        batch, _, dim = tokens.shape
        grid = tokens.transpose(1, 2).reshape(batch, dim, side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return torch.cat([cls_token, grid.flatten(2).transpose(1, 2)], dim=1)


class TransMIL(InstanceMIL):
    """Class-token transformer over the (square-padded) bag."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: int = 512,
        heads: int = 8,
        num_landmarks: int = 256,
        attention_dropout: float = 0.1,
        mag: str = "20x",
    ):
        super().__init__(num_classes, mag)
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden))
        self.layer1 = TransLayer(hidden, heads, num_landmarks, attention_dropout)
        self.position = PPEG(hidden)
        self.layer2 = TransLayer(hidden, heads, num_landmarks, attention_dropout)
        self.norm = nn.LayerNorm(hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        h = self.embed(x).unsqueeze(0)  # [1, N, hidden]
        n = h.shape[1]
        side = math.ceil(math.sqrt(n))
        extra = side * side - n
        if extra:  # repeat the first instances (cyclically, for bags smaller than the padding)
            h = torch.cat([h, h[:, torch.arange(extra, device=h.device) % n]], dim=1)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        h = self.layer1(h)
        h = self.position(h, side)
        h = self.layer2(h)
        return self.classifier(self.norm(h)[:, 0]), {}


def _build(spec: ModelSpec, mag: str) -> TransMIL:
    return TransMIL(spec.feature_dim, spec.num_classes, mag=mag)


register_instance_baseline("TransMIL", _build)
