"""Survival losses and metrics against hand-computed values; censoring never counts as an event."""

from __future__ import annotations

import itertools
import math
from functools import partial

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
    GRID_POINTS,
    IBSReference,
    breslow_survival,
    concordance_index,
    ibs_time_grid,
    integrated_brier,
    survival_at_times,
    survival_metrics,
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


def test_ibs_grid_is_one_per_run_from_the_cohort_to_the_last_cut():
    cohort = np.arange(0.0, 101.0)  # 10th / 90th percentiles: 10 and 90
    grid = ibs_time_grid(cohort, (5.0, 10.0, 40.0), points=4)
    assert grid.tolist() == [10.0, 20.0, 30.0, 40.0]  # ends at the last bin cut
    assert ibs_time_grid(cohort, (5.0, 10.0, 400.0), points=5).tolist() == [10.0, 30.0, 50.0, 70.0, 90.0]
    assert ibs_time_grid(cohort, (5.0, 10.0, 40.0), horizon=30.0, points=3).tolist() == [10.0, 20.0, 30.0]
    assert ibs_time_grid(cohort, (5.0, 10.0, 40.0), horizon=5.0).size == 0
    assert len(ibs_time_grid(cohort, (5.0, 10.0, 40.0))) == GRID_POINTS


# Training cases: times 1, 2, 3, 4 with 2 and 4 censored -> censoring KM G = 1 before 2, 2/3 on [2, 4), 0 from 4.
TRAIN_MONTHS, TRAIN_CENSORSHIP = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 1, 0, 1])
# Evaluated: A dies at 0.5, B is censored at 2.5, C dies at 3.5; their curves on the grid 1, 2, 3.
EVAL_MONTHS, EVAL_CENSORSHIP = np.array([0.5, 2.5, 3.5]), np.array([0, 1, 0])
CURVES = np.array([[0.9, 0.6, 0.3], [0.8, 0.7, 0.5], [1.0, 0.8, 0.6]])


def _given(curves):
    """Curves known at the grid times 1, 2, 3 (and 4: the value at 3) as a function of the times."""
    at = {1.0: 0, 2.0: 1, 3.0: 2, 4.0: 2}
    return lambda times: curves[:, [at[float(t)] for t in times]]


def test_ibs_by_hand_with_training_only_censoring_weights():
    reference = IBSReference(np.array([1.0, 2.0, 3.0]), TRAIN_MONTHS, TRAIN_CENSORSHIP)
    # t = 1: A died at 0.5 (weight 1/G(0.5) = 1); B and C alive (weight 1/G(1) = 1)
    bs1 = (0.9**2 / 1 + (1 - 0.8) ** 2 + (1 - 1.0) ** 2) / 3
    # t = 2: A died (weight 1); B and C alive (weight 1/G(2) = 3/2)
    bs2 = (0.6**2 / 1 + (1 - 0.7) ** 2 * 1.5 + (1 - 0.8) ** 2 * 1.5) / 3
    # t = 3: A died; B censored before 3 (no term); C alive (3/2)
    bs3 = (0.3**2 / 1 + 0 + (1 - 0.6) ** 2 * 1.5) / 3
    expected = ((bs1 + bs2) / 2 + (bs2 + bs3) / 2) / (3 - 1)
    value, why = integrated_brier(reference, EVAL_MONTHS, EVAL_CENSORSHIP, _given(CURVES))
    assert why is None and value == pytest.approx(expected)
    # with the evaluated cases' own censoring (B censored at 2.5) the weights, and the value, differ
    own = IBSReference(reference.grid, EVAL_MONTHS, EVAL_CENSORSHIP)
    assert integrated_brier(own, EVAL_MONTHS, EVAL_CENSORSHIP, _given(CURVES))[0] != pytest.approx(expected)


def test_ibs_grid_times_without_weights_are_cut_and_said():
    # grid to 4: G(4) = 0 (the last training case, at 4, is censored), so t = 4 is cut and said
    reference = IBSReference(np.array([1.0, 2.0, 3.0, 4.0]), TRAIN_MONTHS, TRAIN_CENSORSHIP)
    value, why = integrated_brier(reference, [0.5, 2.5, 5.0], [0, 1, 1], _given(CURVES))
    on_three, _ = integrated_brier(
        IBSReference(np.array([1.0, 2.0, 3.0]), TRAIN_MONTHS, TRAIN_CENSORSHIP), [0.5, 2.5, 5.0], [0, 1, 1],
        _given(CURVES),
    )  # fmt: skip
    assert value == pytest.approx(on_three) and "3 of 4 grid times kept" in why


def test_ibs_equals_scikit_survival_when_the_training_cases_are_the_evaluated_ones():
    from sksurv.metrics import integrated_brier_score
    from sksurv.util import Surv

    rng = np.random.default_rng(0)
    months = np.round(rng.exponential(10, 40), 3) + 0.01
    censorship = (rng.random(40) < 0.3).astype(int)
    grid = np.linspace(np.sort(months)[1], np.sort(months)[-3], 30)
    curves = np.exp(-np.outer(rng.uniform(0.05, 0.2, 40), grid))
    value, _ = integrated_brier(IBSReference(grid, months, censorship), months, censorship, lambda t: curves)
    both = Surv.from_arrays(censorship == 0, months)
    assert value == pytest.approx(integrated_brier_score(both, both, curves, grid), rel=1e-12)


def test_training_km_reference_and_model_curves():
    rng = np.random.default_rng(1)
    n = 80
    months = rng.exponential(20, n) + 0.1
    censorship = (rng.random(n) < 0.3).astype(int)
    cuts = tuple(np.quantile(months[censorship == 0], [0.25, 0.5, 0.75]))
    bins = np.searchsorted(cuts, months, "right")
    good = np.array([[1.0 if b < t else 0.05 for b in range(4)] for t in bins])  # dies in its own bin
    reference = IBSReference(ibs_time_grid(months, cuts), months[:60], censorship[:60])
    curves = partial(survival_at_times, good[60:], cuts)
    metrics, notes = survival_metrics(months[60:], censorship[60:], -good[60:].sum(1), curves, reference)
    null, _ = integrated_brier(reference, months[60:], censorship[60:], reference.km_null(20))
    assert notes == {} and metrics["ibs_km"] == null
    # the null curve is the product-limit estimate of the 60 training cases at every grid time
    train_months, train_event = months[:60], censorship[:60] == 0
    by_hand = [
        np.prod([1 - np.sum(train_event & (train_months == s)) / np.sum(train_months >= s)
                 for s in np.unique(train_months[train_event]) if s <= t])
        for t in reference.grid
    ]  # fmt: skip
    assert reference.km_null(2)(reference.grid)[1] == pytest.approx(by_hand)
    assert 0 <= metrics["ibs"] < metrics["ibs_km"] < 0.5  # curves that know the bin beat the KM curve


def test_undefined_metrics_carry_their_reason():
    reference = IBSReference(np.array([1.0, 2.0, 3.0]), TRAIN_MONTHS, TRAIN_CENSORSHIP)
    metrics, notes = survival_metrics([0.5, 3.5], [1, 1], [0.1, 0.2], None, reference)
    assert math.isnan(metrics["cindex"]) and notes["cindex"] == "no event among its 2 case(s)"
    assert math.isnan(metrics["ibs"]) and "Breslow" in notes["ibs"]
    assert not math.isnan(metrics["ibs_km"]) and "ibs_km" not in notes


def test_breslow_survival_by_hand():
    # training: events at 1 and 2, censored at 3; exp(risk) = 1, 2, 1
    # H0 = 1/(1+2+1) after 1, + 1/(2+1) after 2; S(t | r) = exp(-H0(t) e^r)
    train_risk = np.log([1.0, 2.0, 1.0])
    curves = breslow_survival([1, 2, 3], [0, 0, 1], train_risk, [np.log(3.0), 0.0], [0.5, 1.5, 2.5, 9.0])
    h0 = np.array([0.0, 1 / 4, 1 / 4 + 1 / 3, 1 / 4 + 1 / 3])
    assert curves == pytest.approx(np.stack([np.exp(-3 * h0), np.exp(-h0)]))
    shifted = breslow_survival(
        [1, 2, 3], [0, 0, 1], train_risk + 5, [np.log(3.0) + 5, 5.0], [0.5, 1.5, 2.5, 9.0]
    )
    assert shifted == pytest.approx(curves)  # a common shift of the risks changes nothing
