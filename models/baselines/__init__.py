"""Baselines behind the model registry (``--model_type``).

Conventional MIL on 20x patches by default (``<name>_5x`` or ``baseline_mag="5x"`` for 5x):
``mean_pool``, ``max_pool``, ``MIL_fc``, ``ABMIL``, ``TransMIL``, ``LiteMIL`` (lowercase aliases too).
Vision-language MIL over the frozen text tower: ``zero_shot`` (no training) and ``ViLa_MIL``.
Survival (hazard logits per survival bin): ``mean_pool_surv``, ``ABMIL_surv``, ``TransMIL_surv``.
"""

from models.baselines import abmil, litemil, mil_fc, pooling, survival, transmil, vila_mil, zero_shot

__all__ = ["abmil", "litemil", "mil_fc", "pooling", "survival", "transmil", "vila_mil", "zero_shot"]
