"""Constructor options of the HiLa-style survival model (docs/survival.md §8)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from utils.flags import both_spellings, flag


@dataclass(frozen=True)
class HiLaOptions:
    """Settings of the HiLa-style model; the context length and placement come from the shared prompt
    options (``--num-context-tokens``, ``--class-token-position``). The :func:`utils.flags.flag` fields
    are ``main.py`` flags.

    Attributes:
        hidden: width of the attribute adapters (§8.5).
        opl_epsilon: entropic regularisation of the optimal-transport plan (§8.4).
        opl_iterations: Sinkhorn iterations (§8.4).
        mcl_lambda: weight of the mutual contrastive loss (§8.6).
        mcl_temperature: InfoNCE temperature (§8.6).
    """

    hidden: int = 128
    mcl_lambda: float = flag(
        *both_spellings("mcl_lambda"), default=0.1, group="survival",
        help="HiLa: weight of the mutual contrastive loss",
    )  # fmt: skip
    opl_epsilon: float = flag(
        *both_spellings("opl_epsilon"), default=0.1, group="survival", help="HiLa: entropic OT regularisation"
    )
    opl_iterations: int = flag(
        *both_spellings("opl_iterations"), default=10, group="survival", help="HiLa: Sinkhorn iterations"
    )
    mcl_temperature: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)
