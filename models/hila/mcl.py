"""Mutual Contrastive Learning (MCL) between the two levels' attribute features (docs/survival.md §8.6).

With the region-level and patch-level attribute embeddings A, B [K, H] (row k = attribute k), both
L2-normalised, and temperature tau:

    S     = A B^T / tau                                          [K, K]
    MCL   = 1/2 * ( CE(S, I) + CE(S^T, I) )

CE(S, I) is the mean over rows k of -log softmax(S[k])[k]: the same attribute at the other level is the
positive, the other K - 1 attributes the negatives (InfoNCE), in both directions ("mutual").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mutual_contrastive_loss(
    region: torch.Tensor, patch: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """Symmetric InfoNCE between ``region`` and ``patch`` [K, H]; row k of each is attribute k."""
    if region.shape != patch.shape or region.dim() != 2:
        raise ValueError(f"expected two [K, H] tensors, got {list(region.shape)} and {list(patch.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scores = F.normalize(region.float(), dim=-1) @ F.normalize(patch.float(), dim=-1).T / temperature
    target = torch.arange(scores.shape[0], device=scores.device)
    return 0.5 * (F.cross_entropy(scores, target) + F.cross_entropy(scores.T, target))
