"""Zero-shot slide classification with the frozen vision-language tower (no training).

For each scale and each class description t (plain text ``"<term> : <explanation>"``, encoded by
the tower's own text path), the description's score is the mean of the top-k cosine similarities
between the slide's patches and t, k = min(100, N). A class's scale score is the mean over its
descriptions; 20x uses the fine descriptions on the real 20x patches, 5x the coarse descriptions on
the 5x patches. Slide logits = exp(logit_scale) * (5x score + 20x score).

The model has no trainable parameters: a training loop must skip the optimiser (and the backward
pass) and only evaluate it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from datasets.bag import SlideBag
from models.base import ModelOutput, SlideClassifier, zero_loss
from models.baselines.common import bag_instances
from models.baselines.text_side import load_descriptions
from models.registry import ModelSpec, register_model
from models.towers.base import TextTower, check_joint_space
from models.towers.loading import load_text_tower

DEFAULT_TOP_K = 100


def class_index(texts_per_class: Sequence[Sequence[str]]) -> torch.Tensor:
    """[T] class of each text when the per-class lists are concatenated."""
    return torch.cat([torch.full((len(t),), c, dtype=torch.long) for c, t in enumerate(texts_per_class)])


def per_class_mean(values: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean of ``values`` [..., T] over the texts of each class -> [..., C]."""
    sums = values.new_zeros(*values.shape[:-1], num_classes).index_add_(-1, classes, values)
    counts = torch.bincount(classes, minlength=num_classes).to(values.dtype)
    return sums / counts


def topk_similarity_scores(
    patches: torch.Tensor, texts: torch.Tensor, classes: torch.Tensor, num_classes: int, top_k: int
) -> torch.Tensor:
    """[C] class scores: per text, mean of the top-k patch cosine similarities; per class, mean over texts."""
    sims = F.normalize(patches, dim=-1) @ F.normalize(texts, dim=-1).T  # [N, T]
    k = min(top_k, sims.shape[0])
    per_text = sims.topk(k, dim=0).values.mean(dim=0)  # [T]
    return per_class_mean(per_text, classes, num_classes)


class ZeroShotMIL(SlideClassifier):
    """Frozen text features of every description at 5x and 20x; see the module docstring."""

    def __init__(
        self,
        text5: torch.Tensor,
        classes5: torch.Tensor,
        text20: torch.Tensor,
        classes20: torch.Tensor,
        num_classes: int,
        logit_scale: float,
        top_k: int = DEFAULT_TOP_K,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.top_k = top_k
        self.register_buffer("text5", F.normalize(text5.float(), dim=-1))
        self.register_buffer("classes5", classes5)
        self.register_buffer("text20", F.normalize(text20.float(), dim=-1))
        self.register_buffer("classes20", classes20)
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))

    @classmethod
    def from_tower(
        cls,
        tower: TextTower,
        coarse: Sequence[Sequence[str]],
        fine: Sequence[Sequence[str]],
        top_k: int = DEFAULT_TOP_K,
    ) -> ZeroShotMIL:
        """Encode the coarse (5x) and fine (20x) descriptions of each class once with ``tower``."""
        text5 = tower.encode_text([t for texts in coarse for t in texts]).float().cpu()
        text20 = tower.encode_text([t for texts in fine for t in texts]).float().cpu()
        return cls(
            text5,
            class_index(coarse),
            text20,
            class_index(fine),
            len(coarse),
            float(tower.logit_scale),
            top_k,
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        return []

    def forward(self, bag: SlideBag, cache: object | None = None) -> ModelOutput:
        score5 = topk_similarity_scores(bag.x5, self.text5, self.classes5, self.num_classes, self.top_k)
        patches20 = bag_instances(bag, "20x")
        score20 = topk_similarity_scores(patches20, self.text20, self.classes20, self.num_classes, self.top_k)
        logits = (self.logit_scale.exp() * (score5 + score20)).unsqueeze(0)
        return ModelOutput(
            logits=logits, aux_loss=zero_loss(logits), extras={"score5": score5, "score20": score20}
        )


@register_model("zero_shot", text_tower=True, hierarchy=True)
def build_zero_shot(spec: ModelSpec) -> ZeroShotMIL:
    coarse, fine = load_descriptions(spec)
    tower = load_text_tower(spec.tower)
    check_joint_space(spec.feature_dim, tower, "zero_shot")
    return ZeroShotMIL.from_tower(tower, coarse, fine)
