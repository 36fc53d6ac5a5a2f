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


class FrozenTowerClassifier(SlideClassifier):
    """A classifier with a frozen tower submodule that its checkpoints leave out.

    The tower follows ``.to(device)`` like any submodule, but ``state_dict`` drops every key under
    ``frozen_prefix`` (the tower comes from its own weights) and ``load_state_dict`` ignores such keys
    while still checking every other key when ``strict``.
    """

    frozen_prefix: str = "tower."

    def __init__(self):
        super().__init__()
        self.register_state_dict_post_hook(_drop_frozen_keys)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load everything but the frozen tower; ``strict`` checks the remaining keys."""
        frozen = self.frozen_prefix
        state = {k: v for k, v in state_dict.items() if not k.startswith(frozen)}
        result = super().load_state_dict(state, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith(frozen)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"state_dict mismatch: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        return result


def _drop_frozen_keys(module: FrozenTowerClassifier, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + module.frozen_prefix)]:
        del state_dict[key]


def zero_loss(like: torch.Tensor) -> torch.Tensor:
    """A scalar zero on the device/dtype of ``like`` (for models without an auxiliary loss)."""
    return like.new_zeros(())
