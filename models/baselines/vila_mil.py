"""ViLa-MIL: dual-scale vision-language MIL (Shi et al., CVPR 2024).

Per scale s in {low = 5x, high = 20x}:
1. Dual-scale text prompts (paper Sec. 3.2): each class's descriptions of that scale (the prompt
   file's coarse entries for 5x, fine entries for 20x) get learnable CoOp context vectors
   (one context per scale, :class:`models.hivemil.prompt_learner.PromptLearner`) and go through the frozen
   text tower; a class's text feature is the normalised mean of its description features.
2. Prototype-guided patch decoder (Sec. 3.3): learnable prototypes P attend to the slide's patch
   features X by cross-attention, P' = LayerNorm(P + Attn(P, X, X)); the slide feature is mean(P').
3. Context-guided text decoder (Sec. 3.3): the class text features attend to the decoded prototypes,
   T' = T + Attn(T, P', P').
4. Logits_s = exp(logit_scale) * cos(slide feature, T'_c) for every class c.
Slide logits = logits_low + logits_high; the loss is cross-entropy only (added by the training loop).

Simplified relative to the paper: one prototype set and one decoder of each kind shared by both
scales (single-head attention); several descriptions per class and scale averaged into one class
feature (the paper prompts one description per class and scale); patch features are used as given
when their dimension equals the tower's embedding size (a trainable linear map otherwise); the text
tower runs its own (causal) text path.

The frozen tower is a submodule (it follows ``.to(device)``) but is left out of ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from datasets.bag import SlideBag
from models.base import FrozenTowerClassifier, ModelOutput, zero_loss
from models.baselines.common import bag_instances, dropout_p
from models.baselines.text_side import load_descriptions
from models.hivemil.prompt_learner import PromptLearner
from models.registry import ModelSpec, register_model
from models.towers.base import TextTower, freeze
from models.towers.loading import load_text_tower

DEFAULT_PROTOTYPES = 16  # prototypes of the patch decoder when --prototype_number is not given


class ViLaMIL(FrozenTowerClassifier):
    """Dual-scale prompts + prototype-guided patch decoder + context-guided text decoder."""

    frozen_prefix = "tower."  # the frozen text tower is left out of checkpoints

    def __init__(
        self,
        tower: TextTower,
        coarse: Sequence[Sequence[str]],
        fine: Sequence[Sequence[str]],
        feature_dim: int,
        n_ctx: int = 16,
        num_prototypes: int = DEFAULT_PROTOTYPES,
        heads: int = 1,
        dropout: float = 0.0,
        class_specific_context: bool = False,
        context_position: str = "end",
    ):
        super().__init__()
        self.num_classes = len(coarse)
        self.tower = freeze(tower)
        embed = tower.embed_dim
        learner = dict(n_ctx=n_ctx, class_specific=class_specific_context, position=context_position)
        self.prompts_low = PromptLearner(tower, coarse, released_name_lengths=False, **learner)
        self.prompts_high = PromptLearner(tower, fine, released_name_lengths=False, **learner)
        self.patch_projection = nn.Identity() if feature_dim == embed else nn.Linear(feature_dim, embed)
        self.prototypes = nn.Parameter(torch.randn(1, num_prototypes, embed) * 0.02)
        self.patch_decoder = nn.MultiheadAttention(embed, heads, dropout=dropout, batch_first=True)
        self.patch_norm = nn.LayerNorm(embed)
        self.text_decoder = nn.MultiheadAttention(embed, heads, dropout=dropout, batch_first=True)

    def train(self, mode: bool = True) -> ViLaMIL:
        super().train(mode)
        self.tower.eval()  # the frozen tower always runs in inference mode
        return self

    def class_text_features(self, learner: PromptLearner) -> torch.Tensor:
        """[C, E] normalised mean of each class's prompted description features (step 1)."""
        embeddings = learner()
        ids = torch.cat([learner.token_ids(c) for c in range(self.num_classes)])
        features = F.normalize(self.tower.encode_embeddings(torch.cat(embeddings), ids).float(), dim=-1)
        sizes = [e.shape[0] for e in embeddings]
        means = torch.stack([chunk.mean(dim=0) for chunk in features.split(sizes)])
        return F.normalize(means, dim=-1)

    def precompute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(5x, 20x) class text features; slide-independent, reused across an evaluation pass."""
        return self.class_text_features(self.prompts_low), self.class_text_features(self.prompts_high)

    def scale_logits(
        self, patches: torch.Tensor, class_text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """([1, C] logits, [1, P, E] decoded prototypes) of one scale (steps 2-4)."""
        x = self.patch_projection(patches).unsqueeze(0)
        attended, _ = self.patch_decoder(self.prototypes, x, x, need_weights=False)
        decoded = self.patch_norm(self.prototypes + attended)
        slide = decoded.mean(dim=1)  # [1, E]
        text = class_text.unsqueeze(0)
        text = text + self.text_decoder(text, decoded, decoded, need_weights=False)[0]
        cosine = F.normalize(slide, dim=-1) @ F.normalize(text[0], dim=-1).T
        return self.tower.logit_scale.exp() * cosine, decoded

    def forward(self, bag: SlideBag, cache: object | None = None) -> ModelOutput:
        text_low, text_high = cache if cache is not None else self.precompute()
        logits_low, _ = self.scale_logits(bag.x5, text_low)
        logits_high, _ = self.scale_logits(bag_instances(bag, "20x"), text_high)
        logits = logits_low + logits_high
        return ModelOutput(
            logits=logits,
            aux_loss=zero_loss(logits),
            extras={"logits_low": logits_low, "logits_high": logits_high},
        )


@register_model("ViLa_MIL", text_tower=True, hierarchy=True)
def build_vila_mil(spec: ModelSpec) -> ViLaMIL:
    coarse, fine = load_descriptions(spec)
    tower = load_text_tower(spec.tower)
    return ViLaMIL(
        tower,
        coarse,
        fine,
        spec.feature_dim,
        n_ctx=spec.hivemil.n_ctx,
        num_prototypes=spec.prototype_number or DEFAULT_PROTOTYPES,
        dropout=dropout_p(spec),
        class_specific_context=spec.hivemil.class_specific_context,
        context_position=spec.hivemil.class_token_position,
    )


register_model("vila_mil", text_tower=True, hierarchy=True)(build_vila_mil)
