"""Survival losses and metrics against hand-computed values; censoring never counts as an event."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from models.survival import hazards_from_logits, risk_from_logits, survival_from_logits
from training.survival.losses import (
    CoxSurvivalLoss,
    NLLSurvivalLoss,
    build_survival_loss,
    cases_per_step,
    cox_partial_nll,
    make_targets,
)
from training.survival.metrics import (
    brier_time_grid,
    concordance_index,
    integrated_brier,
    survival_at_times,
)
from utils.errors import InputError

HAZARDS = [0.1, 0.2, 0.5, 0.5]


def _logits(hazards) -> torch.Tensor:
    h = torch.tensor(hazards, dtype=torch.float64)
    return torch.log(h / (1 - h)).reshape(1, -1)


# ------------------------------------------------------------------------------------------- outputs
def test_hazards_survival_and_risk():
    logits = _logits(HAZARDS)
    assert torch.allclose(hazards_from_logits(logits), torch.tensor([HAZARDS], dtype=torch.float64))
    survival = torch.tensor([[0.9, 0.72, 0.36, 0.18]], dtype=torch.float64)
    assert torch.allclose(survival_from_logits(logits), survival)
    assert risk_from_logits(logits).item() == pytest.approx(-(0.9 + 0.72 + 0.36 + 0.18))


# ------------------------------------------------------------------------------------------- NLL
@pytest.mark.parametrize(
    ("bin_", "censored", "expected"),
    [
        (1, 0, -(math.log(0.9) + math.log(0.2))),  # event in bin 1: survived bin 0, hazard of bin 1
        (0, 0, -math.log(0.1)),  # event in the first bin: S_{-1} = 1
        (1, 1, -(1 - 0.15) * math.log(0.72)),  # censored in bin 1: alive at its end, weight 1 - alpha
        (3, 1, -(1 - 0.15) * math.log(0.18)),
        (3, 0, -(math.log(0.36) + math.log(0.5))),
    ],
)
def test_nll_by_hand(bin_, censored, expected):
    loss = NLLSurvivalLoss(alpha=0.15)(_logits(HAZARDS), make_targets([bin_], [10.0], [censored]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # computed in float32


def test_nll_batch_mean_and_alpha_weighting():
    logits = torch.cat([_logits(HAZARDS), _logits([0.3, 0.3, 0.3, 0.3])])
    targets = make_targets([1, 2], [5.0, 9.0], [0, 1])
    per_case = [-(math.log(0.9) + math.log(0.2)), -(1 - 0.4) * math.log(0.7**3)]
    assert NLLSurvivalLoss(alpha=0.4)(logits, targets).item() == pytest.approx(np.mean(per_case))
    # alpha = 0: the plain likelihood of both case kinds
    assert NLLSurvivalLoss(alpha=0.0)(logits, targets).item() == pytest.approx(
        np.mean([per_case[0], -math.log(0.7**3)])
    )


def test_censored_case_is_never_an_event_in_the_loss():
    loss = NLLSurvivalLoss(alpha=0.15)
    logits = _logits(HAZARDS).clone().requires_grad_()
    loss(logits, make_targets([1], [10.0], [1])).backward()
    # alive at the end of bin 1: lowering the hazards of bins 0 and 1 lowers the loss; later bins are free
    assert (logits.grad[0, :2] > 0).all() and torch.equal(
        logits.grad[0, 2:], torch.zeros(2, dtype=torch.float64)
    )
    logits.grad = None
    loss(logits, make_targets([1], [10.0], [0])).backward()
    # an event in bin 1 pushes its hazard up instead
    assert logits.grad[0, 1] < 0


def test_nll_is_stable_for_extreme_logits():
    logits = torch.tensor([[60.0, -60.0, 60.0, -60.0]])
    value = NLLSurvivalLoss()(logits, make_targets([2], [1.0], [1]))
    assert torch.isfinite(value)


# ------------------------------------------------------------------------------------------- Cox
def test_cox_partial_likelihood_by_hand():
    risk = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    months = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    censorship = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    first = 1.0 - math.log(math.e + 1.0 + math.e**2)  # case 0: everyone at risk
    second = 0.0 - math.log(1.0 + math.e**2)  # case 1: cases 1 and 2 at risk
    assert cox_partial_nll(risk, months, censorship).item() == pytest.approx(-(first + second) / 2)


def test_cox_censored_cases_only_enter_risk_sets_and_no_events_give_zero():
    risk = torch.tensor([0.5, -1.0], requires_grad=True)
    value = cox_partial_nll(risk, torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]))
    value.backward()
    assert value.item() == 0.0 and torch.equal(risk.grad, torch.zeros(2))
    # ties: a case with the same time as an event is in its risk set (Breslow)
    tied = cox_partial_nll(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 2.0]), torch.tensor([0.0, 1.0]))
    assert tied.item() == pytest.approx(-(0.0 - math.log(1 + math.e)))


def test_cox_loss_reads_the_risk_of_the_hazard_logits():
    logits = torch.cat([_logits(HAZARDS), _logits([0.3] * 4), _logits([0.05] * 4)])
    targets = make_targets([0, 1, 3], [2.0, 5.0, 30.0], [0, 0, 1])
    expected = cox_partial_nll(risk_from_logits(logits), targets.months, targets.censorship)
    assert CoxSurvivalLoss()(logits, targets).item() == pytest.approx(expected.item())


def test_loss_choice_and_cases_per_step():
    assert isinstance(build_survival_loss("nll", 0.2), NLLSurvivalLoss)
    assert isinstance(build_survival_loss("cox"), CoxSurvivalLoss)
    with pytest.raises(InputError, match="--surv_loss"):
        build_survival_loss("hinge")
    assert (cases_per_step("nll", 0), cases_per_step("cox", 0), cases_per_step("cox", 8)) == (1, 16, 8)


# ------------------------------------------------------------------------------------------- c-index
def brute_force_cindex(months, censorship, risk) -> float:
    """Harrell's C by counting every ordered pair: i is an event earlier than j (or tied with a censored j)."""
    concordant, comparable = 0.0, 0
    for i, j in itertools.permutations(range(len(months)), 2):
        if censorship[i] != 0:
            continue  # a censored case is never the earlier event
        if months[i] < months[j] or (months[i] == months[j] and censorship[j] == 1):
            comparable += 1
            concordant += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return concordant / comparable if comparable else math.nan


def test_cindex_by_hand():
    # comparable pairs: (0,1) (0,2) (0,3) concordant; (2,3) discordant; case 1 is censored: (1,2) not comparable
    assert concordance_index([1, 2, 3, 4], [0, 1, 0, 1], [4, 3, 1, 2]) == pytest.approx(0.75)
    # censoring matters: uncensoring case 1 adds (1,2) concordant and (1,3) concordant
    assert concordance_index([1, 2, 3, 4], [0, 0, 0, 1], [4, 3, 1, 2]) == pytest.approx(5 / 6)


@pytest.mark.parametrize("seed", range(6))
def test_cindex_equals_the_brute_force_pair_count(seed):
    rng = np.random.default_rng(seed)
    n = 40
    months = rng.integers(1, 15, n).astype(float)  # many tied times
    censorship = (rng.random(n) < 0.4).astype(int)
    risk = np.round(rng.normal(size=n), 1)  # tied risks
    assert concordance_index(months, censorship, risk) == pytest.approx(
        brute_force_cindex(months, censorship, risk), abs=1e-12
    )


def test_cindex_undefined_is_nan():
    assert math.isnan(concordance_index([1, 2], [1, 1], [0.1, 0.2]))
    assert math.isnan(concordance_index([3.0], [0], [1.0]))


# ------------------------------------------------------------------------------------------- IBS
def test_survival_curve_is_a_step_at_the_bin_ends():
    survival = np.array([[0.9, 0.72, 0.36, 0.18]])
    cuts = (10.0, 20.0, 30.0)
    at = survival_at_times(survival, cuts, np.array([0.0, 9.9, 10.0, 25.0, 30.0, 500.0]))
    assert at.tolist() == [[1.0, 1.0, 0.9, 0.72, 0.36, 0.36]]


def test_brier_grid_stays_inside_the_follow_up():
    months = np.arange(1.0, 101.0)
    grid = brier_time_grid(months)
    assert grid.min() >= np.percentile(months, 10) and grid.max() <= np.percentile(months, 90)
    assert grid.max() < months.max() and len(grid) == 20
    assert brier_time_grid([5.0]).size == 0


def test_ibs_rewards_good_curves_and_is_nan_when_undefined():
    rng = np.random.default_rng(0)
    n = 60
    months = rng.exponential(20, n) + 0.1
    censorship = (rng.random(n) < 0.3).astype(int)
    cuts = tuple(np.quantile(months[censorship == 0], [0.25, 0.5, 0.75]))
    bins = np.searchsorted(cuts, months, "right")
    good = np.array([[1.0 if b < t else 0.05 for b in range(4)] for t in bins])  # dies in its own bin
    bad = 1.0 - good
    ibs_good = integrated_brier(months, censorship, months, censorship, good, cuts)
    ibs_bad = integrated_brier(months, censorship, months, censorship, bad, cuts)
    assert 0 <= ibs_good < ibs_bad <= 1
    assert math.isnan(integrated_brier(months, censorship, [3.0], [0], good[:1], cuts))
