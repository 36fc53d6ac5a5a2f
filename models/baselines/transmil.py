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

``extras["attention"]`` [N]: per instance, the class token's attention in the second layer (the
Nyström row, mean over heads), with the attention on a square-padding repeat added to the instance
it repeats; used for heatmaps.
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

    def forward(self, x: torch.Tensor, cls_attention: bool = False):
        """``x + attention(LayerNorm(x))``; with ``cls_attention`` also the class token's (position 0)
        attention row over all positions, mean over heads, [B, n] -- the row of the package's Nyström
        matrix ``attn1 @ pinv(attn2) @ attn3`` without forming the n x n matrix."""
        if not cls_attention:
            return x + self.attention(self.norm(x))
        out, (attn1, attn2_inv, attn3) = self.attention(self.norm(x), return_attn_matrices=True)
        n = x.shape[1]
        first = attn1.shape[-2] - n  # the package pads the sequence at the front
        row = attn1[..., first : first + 1, :] @ attn2_inv @ attn3  # [B, heads, 1, padded n]
        return x + out, row[..., 0, -n:].mean(dim=1)


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
        h, cls_row = self.layer2(h, cls_attention=True)
        return self.classifier(self.norm(h)[:, 0]), {"attention": instance_scores(cls_row[0].detach(), n)}


def instance_scores(cls_row: torch.Tensor, n: int) -> torch.Tensor:
    """[n] class-token attention per instance from its row over [cls, n instances, square-padding
    repeats]: a repeat's attention is added to the instance it repeats."""
    tokens = cls_row[1:]
    scores = tokens[:n].clone()
    if tokens.shape[0] > n:
        repeated = torch.arange(tokens.shape[0] - n, device=tokens.device) % n
        scores.index_add_(0, repeated, tokens[n:])
    return scores


def _build(spec: ModelSpec, mag: str) -> TransMIL:
    return TransMIL(spec.feature_dim, spec.num_classes, mag=mag)


register_instance_baseline("TransMIL", _build, patch_scores="attention")
