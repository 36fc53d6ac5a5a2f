"""Slide logits from GNN outputs (DESIGN.md section 3.6, paper Eq. for hierarchical prediction).

For one magnification with image embeddings ``V`` [N, D] and text embeddings ``T`` [C*K, D]:

    S = V @ T^T                                   [N, C*K]
    s_j = mean of the top-k entries of column j   k = min(k_max, N)
    logit_c = scale * mean_{j in class c} s_j

Slide logits are the 5x logits (k_max = 2) plus the 20x logits (k_max = 100). The released code
uses ``scale = logit_scale`` (the log temperature, ~4.6); ``exp(logit_scale)`` is the CLIP convention.
"""

from __future__ import annotations

import torch


def topk_class_logits(
    image: torch.Tensor, text: torch.Tensor, num_classes: int, k_max: int, scale: torch.Tensor
) -> torch.Tensor:
    """[C] logits: per text, mean of the top-k image similarities; per class, mean over its texts."""
    sim = image @ text.t()
    k = min(k_max, sim.shape[0])
    if k == 0:
        return sim.new_zeros(num_classes)
    per_text = scale * torch.topk(sim, k, dim=0).values.mean(0)
    return per_text.reshape(num_classes, -1).mean(1)
