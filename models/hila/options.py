"""Constructor options of the HiLa-style survival model (docs/survival.md §8)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class HiLaOptions:
    """Settings of the HiLa-style model; the context length and placement come from the shared prompt
    options (``--num-context-tokens``, ``--class-token-position``).

    Attributes:
        hidden: width of the attribute adapters (§8.5).
        opl_epsilon: entropic regularisation of the optimal-transport plan (§8.4).
        opl_iterations: Sinkhorn iterations (§8.4).
        mcl_lambda: weight of the mutual contrastive loss (§8.6).
        mcl_temperature: InfoNCE temperature (§8.6).
    """

    hidden: int = 128
    opl_epsilon: float = 0.1
    opl_iterations: int = 10
    mcl_lambda: float = 0.1
    mcl_temperature: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)
