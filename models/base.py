"""The contract every slide classifier in ``models/`` follows."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from datasets.bag import SlideBag


@dataclass
class ModelOutput:
    """What a model returns for one slide.

    Attributes:
        logits: [1, C] class logits.
        aux_loss: scalar added to the bag loss (already weighted, e.g. lambda * HTCL); 0 for most baselines.
        extras: anything else worth keeping (attention maps, masks, embeddings) for analysis.
    """

    logits: torch.Tensor
    aux_loss: torch.Tensor
    extras: dict = field(default_factory=dict)


class SlideClassifier(nn.Module):
    """Base class: ``forward(bag) -> ModelOutput``.

    Models whose forward has a slide-independent part (text features of vision-language models)
    override :meth:`precompute` so evaluation can compute it once per pass and pass it back in
    as ``cache``.
    """

    num_classes: int

    def precompute(self) -> object | None:
        """Slide-independent state reused across slides in evaluation (None if there is none)."""
        return None

    def forward(self, bag: SlideBag, cache: object | None = None) -> ModelOutput:  # pragma: no cover
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def zero_loss(like: torch.Tensor) -> torch.Tensor:
    """A scalar zero on the device/dtype of ``like`` (for models without an auxiliary loss)."""
    return like.new_zeros(())
