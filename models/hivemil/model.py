"""HiVE-MIL: composition of the mechanisms (DESIGN.md section 3, paper Fig. 2).

    text tower + prompt learner  -> 5x texts [C*4, D], 20x texts [C*12, D]        (3.1-3.2)
    TGDF stage 1 (5x), stage 2 (children of kept 5x patches, 20x)                 (3.3)
    hierarchical heterogeneous graph -> two-layer GNN                             (3.4-3.5)
    top-k slide logits at 5x and 20x, summed                                      (3.6)
    aux loss = lambda * HTCL                                                      (3.7)

Released-code behaviours are selected by :class:`models.hivemil.options.VariantSwitches`.
The frozen text tower is a submodule (it follows ``.to(device)``) but is left out of ``state_dict``:
checkpoints hold only the learned context and the GNN (the tower comes from its own weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from datasets.bag import SlideBag
from datasets.prompt_file import load_prompt_file
from models.base import FrozenTowerClassifier, ModelOutput
from models.hivemil.gnn import HierHeteroGNN
from models.hivemil.graph import X5_IMAGE, X5_TEXT, X20_IMAGE, X20_TEXT, build_hier_graph
from models.hivemil.htcl import hierarchical_text_contrastive_loss
from models.hivemil.options import HiveMILOptions
from models.hivemil.prompt_learner import PromptLearner
from models.hivemil.slide_logits import topk_class_logits
from models.hivemil.tgdf import text_guided_filter
from models.registry import ModelSpec, register_model
from models.towers.base import TextTower, check_joint_space
from models.towers.loading import load_text_tower
from utils.errors import InputError

TOWER_PREFIX = "text_tower."


@dataclass
class TextFeatures:
    """Slide-independent text features (cacheable for a whole evaluation pass)."""

    x5: torch.Tensor  # [C*T5, D]
    x20: torch.Tensor  # [C*T20, D]


class HiveMIL(FrozenTowerClassifier):
    """HiVE-MIL slide classifier.

    Args:
        tower: frozen text tower (its ``embed_dim`` must equal the image feature dimension).
        class_descriptions: per class, the description strings ``"<term> : <explanation>"``, coarse first.
        options: constructor options and variant switches.
    """

    frozen_prefix = TOWER_PREFIX  # the frozen text tower is left out of checkpoints

    def __init__(
        self, tower: TextTower, class_descriptions: Sequence[Sequence[str]], options: HiveMILOptions
    ):
        super().__init__()
        self.options = options
        sw = options.switches
        self.num_classes = len(class_descriptions)
        per_class = options.num_low_mag_texts * (1 + options.num_high_mag_subtexts)
        for c, descs in enumerate(class_descriptions):
            if len(descs) != per_class:
                raise InputError(
                    f"class {c} has {len(descs)} descriptions; expected {options.num_low_mag_texts} coarse + "
                    f"{options.num_low_mag_texts}x{options.num_high_mag_subtexts} fine = {per_class}"
                )
        self.released_text = sw.text_encoding == "released"
        if self.released_text and tower.width != tower.embed_dim:
            raise InputError(
                f"--text-encoding released needs the text width ({tower.width}) to equal the projection "
                f"dimension ({tower.embed_dim}); use --text-encoding causal"
            )
        self.text_tower = tower
        self.prompt_learner = PromptLearner(
            tower,
            class_descriptions,
            n_ctx=options.n_ctx,
            class_specific=options.class_specific_context,
            position=options.class_token_position,
            released_name_lengths=self.released_text,
        )
        self.dim = tower.embed_dim
        self.gnn = HierHeteroGNN(
            self.dim,
            num_heads=options.num_heads,
            dense_attention=sw.hier_attention == "dense",
            double_residual=sw.attn_residual == "double",
            attention_chunk=options.attention_chunk,
        )

    # ----- text side -------------------------------------------------------------------------------
    def encode_text(self) -> TextFeatures:
        """Text features of all prompts with the current context (differentiable w.r.t. ``ctx``)."""
        t5 = self.options.num_low_mag_texts
        feats = [
            self.text_tower.encode_embeddings(emb, self.prompt_learner.token_ids(c), self.released_text)
            for c, emb in enumerate(self.prompt_learner())
        ]
        x5 = torch.cat([f[:t5] for f in feats])
        x20 = torch.cat([f[t5:] for f in feats])
        return TextFeatures(x5=x5, x20=x20)

    @torch.no_grad()
    def precompute(self) -> TextFeatures:
        return self.encode_text()

    # ----- slide side ------------------------------------------------------------------------------
    def _select_children(self, bag: SlideBag, parents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """20x node features and each node's 5x parent, for the kept 5x patches ``parents``."""
        rows, valid = bag.x20[parents], bag.child_mask[parents]  # [P, M, D], [P, M]
        cap = self.options.max_children
        if 0 < cap < rows.shape[1]:
            rows, valid = cap_children(rows, valid, cap)
        owner = parents[:, None].expand(-1, rows.shape[1])
        if self.options.switches.padded_children == "keep":
            return rows.reshape(-1, rows.shape[-1]), owner.reshape(-1)
        return rows[valid], owner[valid]

    def forward(self, bag: SlideBag, cache: TextFeatures | None = None) -> ModelOutput:
        opts, sw = self.options, self.options.switches
        if bag.x5.shape[-1] != self.dim:
            raise InputError(
                f"slide {bag.slide_id}: features have dim {bag.x5.shape[-1]}, the model expects {self.dim}"
            )
        text = cache if cache is not None else self.encode_text()
        logit_scale = self.text_tower.logit_scale

        if sw.padded_children == "keep":
            # Released data pipeline: 5x patches without children were deleted from the 5x file.
            has_child = bag.child_mask.any(dim=1)
            if bool(has_child.any()) and not bool(has_child.all()):
                bag = SlideBag(
                    bag.slide_id, bag.x5[has_child], bag.x20[has_child], bag.child_mask[has_child], bag.label
                )

        stage1 = text_guided_filter(bag.x5, text.x5, logit_scale, opts.filter_alpha)
        kept5 = stage1.image_mask
        if not bool(kept5.any()):
            # Released code crashes here (e.g. one 5x patch: std is NaN); keep every patch instead.
            kept5 = torch.ones_like(kept5)
        parents = kept5.nonzero().squeeze(1)
        x20, x20_parent = self._select_children(bag, parents)
        stage2 = text_guided_filter(x20, text.x20, logit_scale, opts.filter_alpha)

        graph = build_hier_graph(
            stage1.kept,
            stage2.kept,
            x20_parent,
            texts_per_coarse=opts.num_high_mag_subtexts,
            children_per_parent=opts.children_per_parent,
            true_parents=sw.hier_attention == "sparse",
        )
        emb = self.gnn(graph, {X5_TEXT: text.x5, X5_IMAGE: bag.x5, X20_TEXT: text.x20, X20_IMAGE: x20})

        scale = logit_scale if sw.logit_scale == "raw" else logit_scale.exp()
        logits_5x = topk_class_logits(emb[X5_IMAGE], emb[X5_TEXT], self.num_classes, opts.topk_low, scale)
        logits_20x = topk_class_logits(emb[X20_IMAGE], emb[X20_TEXT], self.num_classes, opts.topk_high, scale)
        logits = (logits_5x + logits_20x).unsqueeze(0)
        htcl = hierarchical_text_contrastive_loss(
            emb[X5_TEXT], emb[X20_TEXT], self.num_classes, sw.htcl_negatives
        )
        extras = {
            "htcl": htcl.detach(),
            "x5_mask": stage1.image_mask,
            "kept_5x": parents,
            "x20_parent": x20_parent,
            "n_x20_nodes": int(x20.shape[0]),
            "logits_5x": logits_5x.detach(),
            "logits_20x": logits_20x.detach(),
            "embeddings": {t: v.detach() for t, v in emb.items()},
            "x5_kept": stage1.kept.detach(),
            "x20_kept": stage2.kept.detach(),
        }
        return ModelOutput(logits=logits, aux_loss=opts.contrastive_lambda * htcl, extras=extras)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith(TOWER_PREFIX)]


def cap_children(rows: torch.Tensor, valid: torch.Tensor, cap: int, seed: int = 0):
    """Keep at most ``cap`` real children per row: a seeded random subset, real children first.

    The choice depends only on ``seed`` and the row's child validity pattern, not on the device.
    """
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(valid.shape, generator=gen).to(valid.device)
    order = torch.argsort(noise - 2.0 * valid.to(noise.dtype), dim=1)[:, :cap]  # valid ones sort first
    return rows.gather(1, order.unsqueeze(-1).expand(-1, -1, rows.shape[-1])), valid.gather(1, order)


@register_model("HiVE_MIL")
def build_hivemil(spec: ModelSpec) -> HiveMIL:
    """Registry builder: the spec's text tower and prompt file, with ``spec.hivemil`` options."""
    tower = load_text_tower(spec.tower)
    check_joint_space(spec.feature_dim, tower, "HiVE-MIL")
    options = spec.hivemil
    prompts = load_prompt_file(
        spec.prompt_file,
        class_names=spec.task.class_names,
        n_coarse=options.num_low_mag_texts,
        n_fine_per_coarse=options.num_high_mag_subtexts,
    )
    return HiveMIL(tower, [prompts.descriptions(c) for c in spec.task.class_names], options)
