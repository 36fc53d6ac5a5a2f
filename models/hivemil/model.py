"""HiVE-MIL: composition of the mechanisms (docs/method.md §1-§7, paper Fig. 2).

    text tower + prompt learner  -> 5x texts [C*4, D], 20x texts [C*12, D]        (§1-§2)
    TGDF stage 1 (5x), stage 2 (children of kept 5x patches, 20x)                 (§3)
    hierarchical heterogeneous graph -> two-layer GNN                             (§4-§5)
    top-k slide logits at 5x and 20x, summed                                      (§6)
    aux loss = lambda * HTCL                                                      (§7)

Padded children kept as nodes (reference variant, dense attention) are all the zero vector, so they
are identical nodes throughout the network. They are merged into one node with their count as
multiplicity (TGDF statistics, SAGE means, attention keys and the top-k mean count it that often;
:mod:`~models.hivemil.tgdf`, :mod:`~models.hivemil.gnn`, :mod:`~models.hivemil.slide_logits`), which
gives the same logits and gradients with the FLOPs of one node; per-node outputs are expanded back.
``HiveMIL.merge_padding = False`` (and ``--exact-order``, which promises released bits) turns it off.

Released-code behaviours are selected by :class:`models.hivemil.options.VariantSwitches`.
The frozen text tower is a submodule (it follows ``.to(device)``) but is left out of ``state_dict``:
checkpoints hold only the learned context and the GNN (the tower comes from its own weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from datasets.bag import SlideBag
from datasets.prompt_file import HierarchicalPrompts, load_prompt_file, released_slicing_notice
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
class ChildNodes:
    """The 20x graph nodes of one slide and where each comes from."""

    features: torch.Tensor  # [N20, D]
    rows: torch.Tensor  # [N20] bag row (5x patch) each node is a child of
    slots: torch.Tensor  # [N20] child slot within that row
    padding: torch.Tensor  # [N20] True for a zero-padded slot kept as a node (released pipeline)


@dataclass
class PaddingMerge:
    """The padded 20x nodes merged into one (see the module docstring)."""

    nodes: torch.Tensor  # [U] the 20x nodes computed: every real one, then the first padded one
    counts: torch.Tensor  # [U] float multiplicity of each (1, and the number of padded nodes last)
    inverse: torch.Tensor  # [N20] computed node of each 20x node
    num_images: int  # N20


@dataclass
class HiveMILOutput(ModelOutput):
    """One slide's HiVE-MIL forward: logits and loss, plus what attribution needs, with provenance.

    Graph nodes map back to the slide: 5x node i is bag row ``nodes_5x[i]``; 20x node j is child slot
    ``nodes_20x_slot[j]`` of bag row ``nodes_20x_row[j]`` (``nodes_20x_padding[j]`` when that slot is
    zero padding). Indices named ``*_5x``/``x20_parent`` count 5x *nodes*, not bag rows.
    """

    htcl: torch.Tensor | None = None  # HTCL value (detached; aux_loss = lambda * HTCL)
    logits_5x: torch.Tensor | None = None  # [C]
    logits_20x: torch.Tensor | None = None  # [C]
    x5_mask: torch.Tensor | None = None  # [N5 nodes] TGDF stage-1 mask
    kept_5x: torch.Tensor | None = None  # 5x nodes whose children are 20x nodes (mask, or all when empty)
    x20_parent: torch.Tensor | None = None  # [N20] 5x node index of each 20x node's parent
    nodes_5x: torch.Tensor | None = None  # [N5 nodes] bag row of each 5x node
    nodes_20x_row: torch.Tensor | None = None  # [N20] bag row of each 20x node's parent
    nodes_20x_slot: torch.Tensor | None = None  # [N20] child slot of each 20x node
    nodes_20x_padding: torch.Tensor | None = None  # [N20] bool
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # GNN outputs per node type
    x5_kept: torch.Tensor | None = None  # TGDF stage-1 kept similarities [N5 nodes, C*T5]
    x20_kept: torch.Tensor | None = None  # TGDF stage-2 kept similarities [N20, C*T20]

    @property
    def n_x20_nodes(self) -> int:
        return int(self.nodes_20x_row.shape[0])


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
    merge_padding = True  # merge the identical zero-padded 20x nodes (module docstring); exact

    def __init__(
        self, tower: TextTower, class_descriptions: Sequence[Sequence[str]], options: HiveMILOptions
    ):
        super().__init__()
        self.options = options
        sw = options.switches
        self.num_classes = len(class_descriptions)
        # Released slicing (docs/divergences.md §17): per class the first num_low_mag_texts descriptions are
        # the 5x texts and all the others the 20x texts; HTCL groups those evenly over the 5x texts.
        low, counts = options.num_low_mag_texts, {len(d) for d in class_descriptions}
        n = counts.pop() if len(counts) == 1 else 0
        if counts or n <= low or (n - low) % low:
            got = sorted({len(d) for d in class_descriptions})
            raise InputError(
                f"HiVE-MIL needs the same number of descriptions per class (got {got}), more than "
                f"--num-low-mag-texts {low}, with the rest (the 20x texts) a multiple of {low}"
            )
        self.released_text = sw.text_encoding == "released"
        if self.released_text and tower.width != tower.embed_dim:
            raise InputError(
                f"--text-encoding released needs the text width ({tower.width}) to equal the projection "
                f"dimension ({tower.embed_dim}); use --text-encoding causal"
            )
        self.text_tower = tower
        self.dim = tower.embed_dim
        self._constant_text: dict[tuple, TextFeatures] = {}  # by _text_key(); see encode_text
        # The released model builds the GNN before it draws the learnable context: same seed, same weights.
        self.gnn = HierHeteroGNN(
            self.dim,
            num_heads=options.num_heads,
            dense_attention=sw.hier_attention == "dense",
            double_residual=sw.attn_residual == "double",
            attention_chunk=options.attention_chunk,
            exact_order=options.exact_order,
            xavier_attention=tower.released_xavier_attention,
        )
        self.prompt_learner = PromptLearner(
            tower,
            class_descriptions,
            n_ctx=options.n_ctx,
            class_specific=options.class_specific_context,
            position=options.class_token_position,
            released_name_lengths=self.released_text,
        )

    # ----- text side -------------------------------------------------------------------------------
    def encode_text(self) -> TextFeatures:
        """Text features of all prompts with the current context (differentiable w.r.t. ``ctx``).

        When the tower reads none of the context positions (the released text layout on the Hugging Face
        towers: each position is encoded on its own and pooled at the end token, so the context never
        reaches the features and gets an exactly zero gradient), the features are constant: they are
        computed once per :meth:`_text_key` and reused, linked to ``ctx`` with that zero gradient so the optimiser treats ``ctx``
        as the released run does (weight decay still moves it). Same values, no text-tower work per step.
        """
        key = self._text_key()
        if key in self._constant_text:
            return self._zero_gradient_link(self._constant_text[key])
        t5 = self.options.num_low_mag_texts
        feats, constant = [], True
        for c, emb in enumerate(self.prompt_learner()):
            ids = self.prompt_learner.token_ids(c)
            read = self.text_tower.positions_read(ids, self.released_text)
            if read is not None and not bool(self.prompt_learner.context_mask(c)[:, read].any()):
                emb = emb.detach()  # no context vector at a position the tower reads
            else:
                constant = False
            feats.append(self.text_tower.encode_embeddings(emb, ids, self.released_text))
        text = TextFeatures(x5=torch.cat([f[:t5] for f in feats]), x20=torch.cat([f[t5:] for f in feats]))
        if not constant:
            return text
        self._constant_text[key] = (
            text  # one entry per key: train and eval passes alternate without recomputing
        )
        return self._zero_gradient_link(text)

    def _text_key(self) -> tuple:
        """What constant text features depend on besides the frozen weights: device, dtype, autocast, mode."""
        param = self.text_tower.logit_scale
        kind = param.device.type
        amp = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
        return (param.device, param.dtype, amp, self.text_tower.training)

    def _zero_gradient_link(self, text: TextFeatures) -> TextFeatures:
        if not (torch.is_grad_enabled() and self.prompt_learner.ctx.requires_grad):
            return text
        ctx = self.prompt_learner.ctx
        return TextFeatures(x5=ZeroGradient.apply(text.x5, ctx), x20=ZeroGradient.apply(text.x20, ctx))

    @torch.no_grad()
    def precompute(self) -> TextFeatures:
        return self.encode_text()

    # ----- slide side ------------------------------------------------------------------------------
    def _select_children(self, bag: SlideBag, nodes: torch.Tensor) -> ChildNodes:
        """The 20x graph nodes under the kept 5x nodes ``nodes`` (indices into ``bag``'s rows)."""
        rows, valid = bag.x20[nodes], bag.child_mask[nodes]  # [P, M, D], [P, M]
        slots = torch.arange(rows.shape[1], device=rows.device).expand(rows.shape[0], -1)
        cap = self.options.max_children
        if 0 < cap < rows.shape[1]:
            slots = capped_child_slots(valid, cap)
            rows = rows.gather(1, slots.unsqueeze(-1).expand(-1, -1, rows.shape[-1]))
            valid = valid.gather(1, slots)
        owner = nodes[:, None].expand(-1, rows.shape[1])
        if self.options.switches.padded_children == "keep":
            take = torch.ones_like(valid)
        else:
            take = valid
        return ChildNodes(rows[take], owner[take], slots[take], ~valid[take])

    def _padding_merge(self, children: ChildNodes) -> PaddingMerge | None:
        """The merge of the padded 20x nodes into one, or None when there is nothing exact to merge:
        fewer than two padded nodes, sparse attention (each copy has its own parent edges), padded rows
        that are not all zero, ``--exact-order`` or ``merge_padding`` off."""
        sw = self.options.switches
        if not self.merge_padding or self.options.exact_order or sw.hier_attention != "dense":
            return None
        pad = children.padding
        n_pad = int(pad.sum())
        if n_pad < 2 or bool(children.features[pad].any()):
            return None
        real = (~pad).nonzero().squeeze(1)
        nodes = torch.cat([real, pad.nonzero()[0]])  # real children in order, then one padded node
        counts = torch.ones(nodes.shape[0], device=nodes.device)
        counts[-1] = n_pad
        inverse = torch.full_like(pad, real.shape[0], dtype=torch.long)
        inverse[real] = torch.arange(real.shape[0], device=real.device)
        return PaddingMerge(nodes=nodes, counts=counts, inverse=inverse, num_images=int(pad.shape[0]))

    def forward(self, bag: SlideBag, cache: TextFeatures | None = None) -> HiveMILOutput:
        opts, sw = self.options, self.options.switches
        if bag.x5.shape[-1] != self.dim:
            raise InputError(
                f"slide {bag.slide_id}: features have dim {bag.x5.shape[-1]}, the model expects {self.dim}"
            )
        text = cache if cache is not None else self.encode_text()
        logit_scale = self.text_tower.logit_scale

        # Bag rows that become 5x graph nodes. Released data pipeline: 5x patches without children were
        # deleted from the 5x file, so they are no nodes ('keep'); otherwise every 5x patch is a node.
        nodes_5x, x5 = torch.arange(bag.num_5x, device=bag.x5.device), bag.x5
        if sw.padded_children == "keep":
            has_child = bag.child_mask.any(dim=1)
            if bool(has_child.any()) and not bool(has_child.all()):
                nodes_5x = has_child.nonzero().squeeze(1)
                x5 = bag.x5[nodes_5x]

        stage1 = text_guided_filter(x5, text.x5, logit_scale, opts.filter_alpha)
        kept5 = stage1.image_mask
        if not bool(kept5.any()):
            # Released code crashes here (e.g. one 5x patch: std is NaN); keep every patch instead.
            kept5 = torch.ones_like(kept5)
        kept_nodes = kept5.nonzero().squeeze(1)
        children = self._select_children(bag, nodes_5x[kept_nodes])
        x20_parent = torch.searchsorted(nodes_5x, children.rows)  # bag row -> 5x node index
        merge = self._padding_merge(children)
        x20, parent20, counts = children.features, x20_parent, None
        if merge is not None:
            x20, parent20, counts = x20[merge.nodes], x20_parent[merge.nodes], merge.counts
        stage2 = text_guided_filter(x20, text.x20, logit_scale, opts.filter_alpha, counts)

        graph = build_hier_graph(
            stage1.kept,
            stage2.kept,
            parent20,  # dense attention (the only case with a merge) reads no parent edge
            texts_per_coarse=opts.num_high_mag_subtexts,
            children_per_parent=opts.children_per_parent,
            true_parents=sw.hier_attention == "sparse",
        )
        emb = self.gnn(
            graph,
            {X5_TEXT: text.x5, X5_IMAGE: x5, X20_TEXT: text.x20, X20_IMAGE: x20},
            None if merge is None else {X20_IMAGE: counts},
        )

        scale = logit_scale if sw.logit_scale == "raw" else logit_scale.exp()
        logits_5x = topk_class_logits(emb[X5_IMAGE], emb[X5_TEXT], self.num_classes, opts.topk_low, scale)
        logits_20x = topk_class_logits(
            emb[X20_IMAGE], emb[X20_TEXT], self.num_classes, opts.topk_high, scale, counts,
            None if merge is None else merge.num_images,
        )  # fmt: skip
        logits = (logits_5x + logits_20x).unsqueeze(0)
        x20_kept = stage2.kept.detach()
        if merge is not None:  # per-node outputs: every padded node reads the merged one
            emb = {**emb, X20_IMAGE: emb[X20_IMAGE][merge.inverse]}
            x20_kept = x20_kept[merge.inverse]
        htcl = hierarchical_text_contrastive_loss(
            emb[X5_TEXT], emb[X20_TEXT], self.num_classes, sw.htcl_negatives
        )
        return HiveMILOutput(
            logits=logits,
            aux_loss=opts.contrastive_lambda * htcl,
            htcl=htcl.detach(),
            logits_5x=logits_5x.detach(),
            logits_20x=logits_20x.detach(),
            x5_mask=stage1.image_mask,
            kept_5x=kept_nodes,
            x20_parent=x20_parent,
            nodes_5x=nodes_5x,
            nodes_20x_row=children.rows,
            nodes_20x_slot=children.slots,
            nodes_20x_padding=children.padding,
            embeddings={t: v.detach() for t, v in emb.items()},
            x5_kept=stage1.kept.detach(),
            x20_kept=x20_kept,
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith(TOWER_PREFIX)]


class ZeroGradient(torch.autograd.Function):
    """``features`` unchanged, with an exactly zero gradient for ``param``: constant text features
    computed without the context stay linked to it as the released autograd graph links them."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        ctx.param_like = (param.shape, param.dtype, param.device)
        return features.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        shape, dtype, device = ctx.param_like
        return grad, torch.zeros(shape, dtype=dtype, device=device)


def capped_child_slots(valid: torch.Tensor, cap: int, seed: int = 0) -> torch.Tensor:
    """[P, cap] child slots kept per row: a seeded random subset of at most ``cap`` real children,
    real children first. Depends only on ``seed`` and the validity pattern, not on the device."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(valid.shape, generator=gen).to(valid.device)
    return torch.argsort(noise - 2.0 * valid.to(noise.dtype), dim=1)[:, :cap]  # valid ones sort first


def cap_children(rows: torch.Tensor, valid: torch.Tensor, cap: int, seed: int = 0):
    """``rows`` [P, M, D] and ``valid`` [P, M] reduced to the slots of :func:`capped_child_slots`."""
    order = capped_child_slots(valid, cap, seed)
    return rows.gather(1, order.unsqueeze(-1).expand(-1, -1, rows.shape[-1])), valid.gather(1, order)


@register_model(
    "HiVE_MIL",
    text_tower=True,
    variants=True,
    patch_scores="class evidence",
    hierarchy=True,
    reference_loss="ce",
)
def build_hivemil(spec: ModelSpec) -> HiveMIL:
    """Registry builder: the spec's text tower and prompt file, with ``spec.hivemil`` options."""
    tower = load_text_tower(spec.tower)
    check_joint_space(spec.feature_dim, tower, "HiVE-MIL")
    prompts = released_prompts(spec)
    return HiveMIL(tower, [prompts.descriptions(c) for c in spec.task.class_names], spec.hivemil)


def released_prompts(spec: ModelSpec) -> HierarchicalPrompts:
    """The spec's prompt file read as the released code slices it: the first ``--num-low-mag-texts`` entries
    of each class are its 5x texts, all the others its 20x texts (docs/divergences.md §17)."""
    return load_prompt_file(
        spec.prompt_file,
        class_names=spec.task.class_names,
        n_coarse=spec.hivemil.num_low_mag_texts,
        n_fine_per_coarse=None,
    )


def prompt_slicing_notice(spec: ModelSpec) -> str | None:
    """A notice line when the text-count flags and the prompt file disagree (released slicing applies)."""
    return released_slicing_notice(released_prompts(spec), spec.hivemil.num_high_mag_subtexts)
