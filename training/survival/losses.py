"""Survival losses chosen by ``--surv_loss`` (docs/survival.md §5).

Both map hazard logits [B, n_bins] and the cases' targets to a scalar.

* ``nll`` -- discrete-time negative log-likelihood (Zadeh & Schmid, "Bias in cross-entropy-based training
  of deep survival networks", TPAMI 2020; the form MCAT / Patch-GCN use). For a case in bin y with
  censorship c (1 censored), hazards h and survival S_b = prod_{j<=b} (1 - h_j), S_{-1} = 1:

      uncensored = -(1 - c) * (log S_{y-1} + log h_y)       the event happened in bin y
      censored   = -c * log S_y                             alive at the end of bin y
      loss       = (1 - alpha) * (uncensored + censored) + alpha * uncensored

  alpha (``--alpha_surv``, alias ``--surv_alpha``) up-weights uncensored cases; default 0.0, the value
  of the published MCAT / Patch-GCN command lines (0.15 is only the class default of MCAT's
  ``NLLSurvLoss``, which their training scripts override). A censored case never
  contributes log h_y: it is never counted as an event. Computed in log space (log h = log sigmoid(l),
  log(1 - h) = log sigmoid(-l)), so no clamping is needed. The batch loss is the mean over cases.
* ``cox`` -- negative Cox partial log-likelihood (Breslow ties) of the risk scores r = -sum_b S_b over
  the cases of one optimiser step:

      loss = -1/E * sum_{i: event} ( r_i - log sum_{j: t_j >= t_i} exp(r_j) )

  with E the number of events among them; a step without events gives 0 (and no gradient). Censored
  cases only enter the risk sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.survival import risk_from_logits
from utils.errors import InputError

SURVIVAL_LOSSES = ("nll", "cox")
DEFAULT_ALPHA = 0.0  # --alpha_surv of the published command lines
COX_DEFAULT_BATCH = 16  # cases per optimiser step for --surv_loss cox when --surv_batch is 0 (auto)


@dataclass
class SurvivalTargets:
    """Outcomes of a batch of cases (all [B] tensors)."""

    bins: torch.Tensor  # long, survival bin of the time
    months: torch.Tensor  # float, survival / follow-up time
    censorship: torch.Tensor  # float, 1 censored, 0 event

    def to(self, device: torch.device | str) -> SurvivalTargets:
        return SurvivalTargets(self.bins.to(device), self.months.to(device), self.censorship.to(device))


def make_targets(bins, months, censorship, device: torch.device | str = "cpu") -> SurvivalTargets:
    return SurvivalTargets(
        torch.as_tensor(bins, dtype=torch.long, device=device).reshape(-1),
        torch.as_tensor(months, dtype=torch.float32, device=device).reshape(-1),
        torch.as_tensor(censorship, dtype=torch.float32, device=device).reshape(-1),
    )


class NLLSurvivalLoss(nn.Module):
    """Discrete-time survival NLL with alpha weighting (module docstring)."""

    per_case = True  # the batch loss is a mean of per-case terms

    def __init__(self, alpha: float = DEFAULT_ALPHA):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha

    def per_case_loss(self, logits: torch.Tensor, targets: SurvivalTargets) -> torch.Tensor:
        """[B] loss of each case."""
        logits = logits.float()
        log_h = F.logsigmoid(logits)  # log h_b
        log_s = torch.cumsum(F.logsigmoid(-logits), dim=1)  # log S_b
        log_s_padded = torch.cat([torch.zeros_like(log_s[:, :1]), log_s], dim=1)  # log S_{b-1} at index b
        y = targets.bins.reshape(-1, 1)
        c = targets.censorship.reshape(-1).float()
        uncensored = -(1.0 - c) * (log_s_padded.gather(1, y).squeeze(1) + log_h.gather(1, y).squeeze(1))
        censored = -c * log_s.gather(1, y).squeeze(1)
        return (1.0 - self.alpha) * (uncensored + censored) + self.alpha * uncensored

    def forward(self, logits: torch.Tensor, targets: SurvivalTargets) -> torch.Tensor:
        return self.per_case_loss(logits, targets).mean()


class CoxSurvivalLoss(nn.Module):
    """Negative Cox partial log-likelihood over the cases of one step (module docstring)."""

    per_case = False  # needs the whole step's cases at once

    def forward(self, logits: torch.Tensor, targets: SurvivalTargets) -> torch.Tensor:
        risk = risk_from_logits(logits.float()).reshape(-1)
        return cox_partial_nll(risk, targets.months, targets.censorship)


def cox_partial_nll(risk: torch.Tensor, months: torch.Tensor, censorship: torch.Tensor) -> torch.Tensor:
    """-1/E sum_{events i} (r_i - log sum_{t_j >= t_i} exp(r_j)); 0 (connected to ``risk``) without events."""
    event = censorship.reshape(-1) == 0
    if not bool(event.any()):
        return risk.sum() * 0.0
    at_risk = months.reshape(1, -1) >= months.reshape(-1, 1)  # [i, j]: j still at risk at t_i
    log_risk_set = torch.logsumexp(risk.reshape(1, -1).masked_fill(~at_risk, float("-inf")), dim=1)
    return -(risk - log_risk_set)[event].mean()


def build_survival_loss(name: str, alpha: float = DEFAULT_ALPHA) -> nn.Module:
    """The loss named by ``--surv_loss``."""
    if name == "nll":
        return NLLSurvivalLoss(alpha)
    if name == "cox":
        return CoxSurvivalLoss()
    raise InputError(f"--surv_loss {name!r} is not known; choose one of: {', '.join(SURVIVAL_LOSSES)}")


def cases_per_step(loss_name: str, surv_batch: int) -> int:
    """``--surv_batch`` resolved: 0 means 1 case per step for ``nll`` and :data:`COX_DEFAULT_BATCH` for ``cox``."""
    if surv_batch > 0:
        return surv_batch
    return COX_DEFAULT_BATCH if loss_name == "cox" else 1
