"""Survival baselines: the classification baselines' networks with one hazard logit per survival bin
(docs/survival.md §9).

``mean_pool_surv``, ``ABMIL_surv`` and ``TransMIL_surv`` are :class:`~models.baselines.pooling.PooledMIL`
(mean), :class:`~models.baselines.abmil.ABMIL` and :class:`~models.baselines.transmil.TransMIL` built with
``num_classes`` = the task's number of survival bins, on the case bag's real 20x patches: the same
instance embedding, pooling and linear layer, whose outputs the survival training reads as hazard logits
(:mod:`models.survival`), as MCAT / Patch-GCN do with their attention-MIL baselines.
"""

from __future__ import annotations

from models.baselines.abmil import ABMIL
from models.baselines.common import dropout_p
from models.baselines.pooling import PooledMIL
from models.baselines.transmil import TransMIL
from models.registry import ModelSpec, register_model


@register_model("mean_pool_surv", survival=True)
def build_mean_pool_surv(spec: ModelSpec) -> PooledMIL:
    return PooledMIL(spec.feature_dim, spec.num_classes, pool="mean", dropout=dropout_p(spec))


@register_model("ABMIL_surv", survival=True, patch_scores="attention")
def build_abmil_surv(spec: ModelSpec) -> ABMIL:
    return ABMIL(spec.feature_dim, spec.num_classes, dropout=dropout_p(spec))


@register_model("TransMIL_surv", survival=True, patch_scores="attention")
def build_transmil_surv(spec: ModelSpec) -> TransMIL:
    return TransMIL(spec.feature_dim, spec.num_classes)
