"""HiLa-style survival model: composition of the mechanisms (docs/survival.md §8).

Built from the abstract of HiLa ("Hierarchical Vision-Language Collaboration for Cancer Survival
Prediction", MICCAI 2025, arXiv 2507.04613); every design choice below is ours and listed in
docs/survival.md §8.8. It is not a reproduction of the authors' model.

    attribute prompts per level + learnable context -> text features T5, T20 [K, D]     (§8.1-§8.2)
    regions (5x rows) and patches (real 20x children) of the case bag                   (§2)
    CLP: regions <- children, patches <- parent along the true edges                     (§8.3)
    OPL per level: Sinkhorn plan between nodes and prompts -> z5, z20 [K, D]            (§8.4)
    attribute adapters -> e5, e20 [K, H]; hazard head on both levels -> n_bins logits   (§8.5)
    aux loss = lambda * MCL(e5, e20)                                                     (§8.6)

The logits are hazard logits (:mod:`models.survival`). The frozen text tower is a submodule left out
of checkpoints (:class:`models.base.FrozenTowerClassifier`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from datasets.bag import SlideBag
from datasets.survival_prompts import SurvivalPrompts, load_survival_prompts
from models.base import FrozenTowerClassifier, ModelOutput
from models.hila.clp import CrossLevelPropagation
from models.hila.mcl import mutual_contrastive_loss
from models.hila.opl import optimal_prompt_features
from models.hila.options import HiLaOptions
from models.hila.prompts import LevelPrompts, encode_levels
from models.registry import ModelSpec, register_model
from models.survival import hazards_from_logits, risk_from_logits, survival_from_logits
from models.towers.base import TextTower, check_joint_space, freeze
from models.towers.loading import load_text_tower
from utils.errors import InputError

TOWER_PREFIX = "tower."
DROPOUT_P = 0.25  # with --drop_out, in the attribute adapters (the baselines' rate)


@dataclass
class HiLaOutput(ModelOutput):
    """One case's forward: hazard logits and the weighted MCL, plus what analysis needs (all detached)."""

    mcl: torch.Tensor | None = None  # unweighted MCL value
    hazards: torch.Tensor | None = None  # [n_bins]
    survival: torch.Tensor | None = None  # [n_bins]
    risk: torch.Tensor | None = None  # scalar
    plan_region: torch.Tensor | None = None  # [N5, K] OPL plan of the region level
    plan_patch: torch.Tensor | None = None  # [N20, K] OPL plan of the patch level
    patch_rows: torch.Tensor | None = None  # [N20] bag row (5x patch) of each patch node
    patch_slots: torch.Tensor | None = None  # [N20] child slot of each patch node
    cost_region: torch.Tensor | None = None  # [K] transport cost per attribute
    cost_patch: torch.Tensor | None = None  # [K]


class HiLaSurvival(FrozenTowerClassifier):
    """HiLa-style hierarchical vision-language survival model (see the module docstring).

    Args:
        tower: frozen text tower; its joint space must be the patch features' space.
        prompts: the task's attribute prompts (K attributes, a region and a patch description each).
        n_bins: number of survival bins (hazards).
        options: :class:`HiLaOptions`.
        n_ctx: learnable context tokens per level; ``position``: where the context goes.
        dropout: dropout rate in the attribute adapters.
    """

    frozen_prefix = TOWER_PREFIX

    def __init__(
        self,
        tower: TextTower,
        prompts: SurvivalPrompts,
        n_bins: int,
        options: HiLaOptions | None = None,
        n_ctx: int = 16,
        position: str = "end",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.options = options or HiLaOptions()
        self.num_classes = n_bins
        self.tower = freeze(tower)
        dim, hidden = tower.embed_dim, self.options.hidden
        self.num_attributes = len(prompts.attributes)
        self.attributes = prompts.attributes
        self.prompts_region = LevelPrompts(tower, prompts.descriptions("region"), n_ctx, position)
        self.prompts_patch = LevelPrompts(tower, prompts.descriptions("patch"), n_ctx, position)
        self.clp = CrossLevelPropagation(dim)
        self.adapt_region = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.adapt_patch = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Sequential(nn.LayerNorm(2 * self.num_attributes * hidden), nn.Dropout(dropout))
        self.hazard = nn.Linear(2 * self.num_attributes * hidden, n_bins)

    def train(self, mode: bool = True) -> HiLaSurvival:
        super().train(mode)
        self.tower.eval()  # the frozen tower always runs in inference mode
        return self

    # ----- text side -------------------------------------------------------------------------------
    def encode_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(region [K, D], patch [K, D]) prompt features with the current contexts (one tower pass)."""
        both = encode_levels(self.tower, [self.prompts_region, self.prompts_patch])
        return both[0], both[1]

    @torch.no_grad()
    def precompute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_text()

    # ----- case side -------------------------------------------------------------------------------
    def forward(self, bag: SlideBag, cache: tuple[torch.Tensor, torch.Tensor] | None = None) -> HiLaOutput:
        if bag.x5.shape[-1] != self.tower.embed_dim:
            raise InputError(
                f"case {bag.slide_id}: features have dim {bag.x5.shape[-1]}, the model expects "
                f"{self.tower.embed_dim}"
            )
        text_region, text_patch = cache if cache is not None else self.encode_text()
        regions = bag.x5.float()
        rows, slots = bag.child_mask.nonzero(as_tuple=True)
        if rows.numel() > 0:
            patches = bag.x20[rows, slots].float()
        else:  # no 20x child at all: each region stands in for its own patch (docs/survival.md §8.3)
            rows = torch.arange(regions.shape[0], device=regions.device)
            slots = torch.zeros_like(rows)
            patches = regions
        regions, patches = self.clp(regions, patches, rows)
        opl = self.options
        region = optimal_prompt_features(regions, text_region, opl.opl_epsilon, opl.opl_iterations)
        patch = optimal_prompt_features(patches, text_patch, opl.opl_epsilon, opl.opl_iterations)
        e_region = self.adapt_region(region.features)
        e_patch = self.adapt_patch(patch.features)
        mcl = mutual_contrastive_loss(e_region, e_patch, opl.mcl_temperature)
        pooled = self.head(torch.cat([e_region.flatten(), e_patch.flatten()]))
        logits = self.hazard(pooled).unsqueeze(0)  # [1, n_bins]
        detached = logits.detach().float()[0]
        return HiLaOutput(
            logits=logits,
            aux_loss=opl.mcl_lambda * mcl,
            mcl=mcl.detach(),
            hazards=hazards_from_logits(detached),
            survival=survival_from_logits(detached),
            risk=risk_from_logits(detached),
            plan_region=region.plan.detach(),
            plan_patch=patch.plan.detach(),
            patch_rows=rows,
            patch_slots=slots,
            cost_region=region.transport_cost.detach(),
            cost_patch=patch.transport_cost.detach(),
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith(TOWER_PREFIX)]


@register_model("HiLa", text_tower=True, survival=True, patch_scores="transport plan", hierarchy=True)
def build_hila(spec: ModelSpec) -> HiLaSurvival:
    """Registry builder: the spec's text tower, the task's HiLa prompt file and ``spec.hila`` options."""
    if spec.prompt_file is None:
        raise InputError("HiLa needs the task's attribute prompt file (text_prompt/HiLa/<task>.json)")
    prompts = load_survival_prompts(spec.prompt_file)
    tower = load_text_tower(spec.tower)
    check_joint_space(spec.feature_dim, tower, "HiLa")
    return HiLaSurvival(
        tower,
        prompts,
        n_bins=spec.num_classes,
        options=spec.hila,
        n_ctx=spec.hivemil.n_ctx,
        position=spec.hivemil.class_token_position,
        dropout=DROPOUT_P if spec.dropout else 0.0,
    )
