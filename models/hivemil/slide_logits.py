"""Slide logits from GNN outputs (docs/method.md §6, paper Eq. for hierarchical prediction).

For one magnification with image embeddings ``V`` [N, D] and text embeddings ``T`` [C*K, D]:

    S = V @ T^T                                   [N, C*K]
    s_j = mean of the top-k entries of column j   k = min(k_max, N)
    logit_c = scale * mean_{j in class c} s_j

Slide logits are the 5x logits (k_max = 2) plus the 20x logits (k_max = 100). The released code
uses ``scale = logit_scale`` (the log temperature, ~4.6); ``exp(logit_scale)`` is the CLIP convention.

Merged images (``counts``): image row i stands for ``counts[i]`` identical images, so k and the top-k
mean count images: a merged row inside the top k enters the mean as often as it occurs there.
"""

from __future__ import annotations

import torch


def topk_text_scores(
    image: torch.Tensor,
    text: torch.Tensor,
    k_max: int,
    scale: torch.Tensor,
    counts: torch.Tensor | None = None,
    num_images: int | None = None,
) -> torch.Tensor:
    """[C*K] per-text scores: ``scale *`` mean of the top-k image similarities of each text (0 without images).

    ``counts`` [N]: multiplicity of each image row, ``num_images`` their sum (module docstring)."""
    sim = image @ text.t()
    if counts is None:
        k = min(k_max, sim.shape[0])
        if k == 0:
            return sim.new_zeros(sim.shape[1])
        return scale * torch.topk(sim, k, dim=0).values.mean(0)
    k = min(k_max, int(num_images))
    if k == 0:
        return sim.new_zeros(sim.shape[1])
    # Each row is at least one image, so the top k images lie in the top min(k, N) rows.
    values, rows = torch.topk(sim, min(k, sim.shape[0]), dim=0)
    occurs = counts.float()[rows]  # [k', M]; float32 even under autocast (counts stay exact)
    before = occurs.cumsum(0) - occurs  # images ranked above each row
    taken = torch.minimum(occurs, (k - before).clamp(min=0))
    return scale * ((taken * values.float()).sum(0) / k).to(sim.dtype)


def topk_class_logits(
    image: torch.Tensor,
    text: torch.Tensor,
    num_classes: int,
    k_max: int,
    scale: torch.Tensor,
    counts: torch.Tensor | None = None,
    num_images: int | None = None,
) -> torch.Tensor:
    """[C] logits: per text, mean of the top-k image similarities; per class, mean over its texts."""
    scores = topk_text_scores(image, text, k_max, scale, counts, num_images)
    return scores.reshape(num_classes, -1).mean(1)
