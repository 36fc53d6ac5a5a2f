"""Which token positions can reach a text tower's pooled output (docs/method.md §9), and causal masks.

Two exact short-cuts, shared by the adapters:

* Causal (tower's own) layout: position ``p`` only sees positions ``<= p``, so with the output pooled
  at ``pool[i]`` nothing after ``max(pool)`` matters: run the encoder on the first ``max(pool) + 1``
  positions only (:func:`causal_prefix_length`).
* Released HF layout (sequence and batch axes swapped, no mask): each token position is an
  independent batch element of the encoder and every other op is position-wise, so only the
  positions in ``unique(pool)`` matter (:func:`pooled_position_groups`).
"""

from __future__ import annotations

import torch


def causal_prefix_length(pool: torch.Tensor) -> int:
    """Number of leading positions a causal encoder needs to produce the outputs at ``pool`` [N]."""
    return int(pool.max().item()) + 1


def pooled_position_groups(pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positions [P], slot [N])``: the distinct pooled positions and, per row, its index among them."""
    positions, slot = torch.unique(pool, sorted=True, return_inverse=True)
    return positions, slot


def causal_additive_mask(length: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """[length, length] additive mask: 0 on and below the diagonal, -inf above (query row, key column)."""
    mask = torch.full((length, length), float("-inf"), dtype=dtype, device=device)
    return mask.triu_(1)
