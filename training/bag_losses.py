"""Slide-level (bag) losses selected by ``--bag_loss``: ``ce``, ``svm`` and ``focal``.

Every loss maps ``logits`` [B, C] and integer ``target`` [B] to a scalar (mean over the batch).

* ``ce``: cross-entropy.
* ``svm``: smooth top-1 multi-class SVM (Berrada, Zisserman and Kumar, "Smooth Loss Functions for Deep
  Top-k Classification", ICLR 2018), with margin ``alpha`` = 1 and temperature ``tau`` = 1 as CLAM-style
  pipelines use it::

      L(s, y) = tau * log sum_j exp((Delta_j + s_j - s_y) / tau),   Delta_j = alpha * [j != y]

  i.e. a smooth maximum over classes of (margin + score) minus the true-class score. As tau -> 0 it
  tends to the hard multi-class hinge ``max_j (Delta_j + s_j) - s_y``; ``tau = 0`` computes that exactly.
* ``focal``: focal loss (Lin et al., ICCV 2017) ``-alpha_y (1 - p_y)^gamma log p_y`` with gamma = 2 and
  optional per-class weights ``alpha``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import InputError

BAG_LOSSES = ("svm", "ce", "focal")


class CrossEntropyBagLoss(nn.Module):
    """Mean cross-entropy of the slide logits."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)


class SmoothTop1SVM(nn.Module):
    """Smooth top-1 SVM loss (Berrada et al. 2018, eq. for k = 1); see the module docstring."""

    def __init__(self, num_classes: int, alpha: float = 1.0, tau: float = 1.0):
        super().__init__()
        if tau < 0:
            raise ValueError("tau must be >= 0")
        self.num_classes = num_classes
        self.alpha = alpha
        self.tau = tau

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        true_score = logits.gather(1, target[:, None])  # [B, 1]
        margin = self.alpha * (1.0 - F.one_hot(target, logits.shape[1]).to(logits.dtype))
        shifted = margin + logits - true_score  # Delta_j + s_j - s_y, zero at j = y
        if self.tau == 0:
            per_slide = shifted.max(dim=1).values
        else:
            per_slide = self.tau * torch.logsumexp(shifted / self.tau, dim=1)
        return per_slide.mean()


class FocalLoss(nn.Module):
    """Focal loss ``-alpha_y (1 - p_y)^gamma log p_y`` averaged over the batch."""

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        weights = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        self.register_buffer("alpha", weights, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        per_slide = -((1.0 - log_p.exp()) ** self.gamma) * log_p
        if self.alpha is not None:
            per_slide = per_slide * self.alpha.to(logits.dtype)[target]
        return per_slide.mean()


def build_bag_loss(name: str, num_classes: int) -> nn.Module:
    """The loss named by ``--bag_loss`` (published settings: svm alpha=1 tau=1, focal gamma=2)."""
    if name == "ce":
        return CrossEntropyBagLoss()
    if name == "svm":
        return SmoothTop1SVM(num_classes, alpha=1.0, tau=1.0)
    if name == "focal":
        return FocalLoss(gamma=2.0)
    raise InputError(f"--bag_loss {name!r} is not known; choose one of: {', '.join(BAG_LOSSES)}")
