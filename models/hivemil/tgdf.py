"""Text-Guided Dynamic Filtering (TGDF), docs/method.md §3 (paper Sec. 3.3, Eqs. 3-4).

For one magnification, with image features ``I`` [N, D] and text features ``T`` [M, D]:

    S = (I @ T^T) * exp(logit_scale)                          similarity
    S'_{:,j} = (S_{:,j} - min_j) / (max_j - min_j + 1e-8)      min-max per text column
    tau_j = mean(S'_{:,j}) + alpha * std(S'_{:,j})             unbiased std, as torch.std
    A_{ij} = S'_{ij} if S'_{ij} >= tau_j else 0                kept image-text entries

A kept entry with value 0 is no edge (edges are the non-zero entries). Stage 1 runs at 5x; a 5x patch
is kept when its row of ``A`` has any positive entry. Stage 2 runs on the 20x children of kept 5x
patches against the 20x texts.

Edge cases the released code does not survive: with a single image the std is NaN, every comparison
is false and nothing is kept. ``keep_all_if_empty`` (used by the model) then keeps every 5x patch
so a one-patch slide still produces a graph; this only triggers where the released code would crash.

Merged images (``counts``): row i stands for ``counts[i]`` identical images (the model merges the
zero-padded 20x children into one node). The column statistics are then taken over the images, not
the rows: min and max are unchanged, the mean weights row i by ``counts[i]`` and the unbiased std
divides by ``sum(counts) - 1``. Exact algebra; the result equals the stage run on the repeated rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MINMAX_EPS = 1e-8


@dataclass
class FilterResult:
    """Output of one TGDF stage."""

    kept: torch.Tensor  # [N, M] filtered, min-max normalised similarities (0 = dropped)
    image_mask: torch.Tensor  # [N] bool, rows with any kept entry
    threshold: torch.Tensor  # [M] per-text threshold tau_j


def text_guided_filter(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    alpha: float,
    counts: torch.Tensor | None = None,
) -> FilterResult:
    """One TGDF stage (see module docstring). ``logit_scale`` is the log temperature; ``counts`` [N]
    the multiplicity of each image row (None: every row is one image)."""
    sim = (image @ text.t()) * logit_scale.exp()
    if sim.shape[0] == 0:
        empty = sim.new_zeros(0, sim.shape[1])
        return FilterResult(
            empty, torch.zeros(0, dtype=torch.bool, device=sim.device), sim.new_zeros(sim.shape[1])
        )
    col_min = sim.amin(dim=0, keepdim=True)
    col_max = sim.amax(dim=0, keepdim=True)
    sim = (sim - col_min) / (col_max - col_min + MINMAX_EPS)
    if counts is None:
        # One image: the unbiased std is NaN (as in the released code) and nothing is kept.
        std = sim.std(dim=0, keepdim=True) if sim.shape[0] > 1 else torch.full_like(sim[:1], float("nan"))
        mean = sim.mean(dim=0, keepdim=True)
    else:
        mean, std = (t.to(sim.dtype) for t in _weighted_mean_std(sim.float(), counts.float()))
    threshold = mean + alpha * std
    kept = torch.where(sim >= threshold, sim, torch.zeros_like(sim))
    image_mask = kept.mean(dim=1) > 0
    return FilterResult(kept=kept, image_mask=image_mask, threshold=threshold.squeeze(0))


def _weighted_mean_std(sim: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column mean and unbiased std of ``sim`` [N, M] whose row i occurs ``counts[i]`` times ([1, M] each;
    the std is NaN for a single image, as ``torch.std``)."""
    weight = counts.unsqueeze(1)
    total = counts.sum()
    mean = (weight * sim).sum(dim=0, keepdim=True) / total
    var = (weight * (sim - mean).square()).sum(dim=0, keepdim=True) / (total - 1)
    var = torch.where(total > 1, var, torch.full_like(var, float("nan")))
    return mean, var.sqrt()
