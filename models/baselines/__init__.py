"""Baselines behind the model registry (``--model_type``); each module registers its models on import
(:data:`models.registry.MODEL_MODULES` says which), so using one baseline imports only its module.

Conventional MIL on 20x patches by default (``<name>_5x`` or ``baseline_mag="5x"`` for 5x):
``mean_pool``, ``max_pool``, ``MIL_fc``, ``ABMIL``, ``TransMIL``, ``LiteMIL`` (lowercase aliases too).
Vision-language MIL over the frozen text tower: ``zero_shot`` (no training) and ``ViLa_MIL``.
Survival (hazard logits per survival bin): ``mean_pool_surv``, ``ABMIL_surv``, ``TransMIL_surv``.
"""
