"""Attribute prompts with learnable context, one set per level (docs/survival.md §8.1-§8.2).

Each level's K rendered attribute prompts (``"<attribute> : <description>"``) get ``n_ctx`` learnable
context vectors shared by that level's prompts (CoOp; :class:`models.hivemil.prompt_learner.PromptLearner`
with one "class" holding the K prompts), and pass through the frozen tower's own text path (causal mask,
pooled at the end token, its projection). The two levels have separate contexts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.hivemil.prompt_learner import PromptLearner
from models.towers.base import TextTower


class LevelPrompts(nn.Module):
    """The learnable context of one level's attribute prompts."""

    def __init__(self, tower: TextTower, descriptions: Sequence[str], n_ctx: int = 16, position: str = "end"):
        super().__init__()
        self.learner = PromptLearner(
            tower, [list(descriptions)], n_ctx=n_ctx, position=position, released_name_lengths=False
        )

    @property
    def num_prompts(self) -> int:
        return int(self.learner.token_ids(0).shape[0])

    def encode(self, tower: TextTower) -> torch.Tensor:
        """[K, D] text features of the prompts with the current context (differentiable)."""
        embeddings = self.learner()[0]
        return tower.encode_embeddings(embeddings, self.learner.token_ids(0), released_layout=False)


def encode_levels(tower: TextTower, levels: Sequence[LevelPrompts]) -> list[torch.Tensor]:
    """[K_l, D] text features of several levels' prompts from one pass through the tower (the same
    numbers as :meth:`LevelPrompts.encode` per level, with less overhead)."""
    embeddings = torch.cat([level.learner()[0] for level in levels])
    token_ids = torch.cat([level.learner.token_ids(0) for level in levels])
    features = tower.encode_embeddings(embeddings, token_ids, released_layout=False)
    return list(features.split([level.num_prompts for level in levels]))
