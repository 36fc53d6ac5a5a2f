"""Survival metrics: concordance index and integrated Brier score (docs/survival.md §6).

* c-index: Harrell's concordance with right censoring, scikit-survival's
  ``concordance_index_censored`` on the risk scores (-sum of the predicted survival). A pair (i, j) is
  comparable when case i had the event and t_i < t_j (or t_i = t_j and j is censored); it is concordant
  when r_i > r_j and counts 1/2 when the risks tie. A censored case is never the earlier event of a pair.
  NaN when no pair is comparable (fewer than two cases, no event); times or risks that are not finite
  are an error (:class:`utils.errors.NonFiniteError`), never a NaN; so are predicted survival curves.
* IBS: :func:`training.survival.td_metrics.integrated_brier` (docs/survival.md §6.4, the definition
  of ``survival_metrics.csv``) on **one time grid per run** (:func:`ibs_time_grid`: :data:`GRID_POINTS`
  times evenly spaced from the 10th to the 90th percentile of the whole cohort's observed times, ending
  at the last survival bin cut or ``--ibs_horizon`` when that comes first), with the censoring weights
  of the fold's **training cases only** (:class:`IBSReference`).
* Curves: per-bin survival from the hazards is the step S(t) = prod (1 - h_b) over the bins ending at or
  before t (:func:`survival_at_times`); under the Cox loss the risk only fixes a ranking, so a case's curve
  is the Breslow estimate from the fold's training cases, S_i(t) = exp(-H_0(t) exp(r_i))
  (:func:`breslow_survival`). The null reference is the training Kaplan-Meier curve given to every case
  (``ibs_km``): a model worth its curves scores below it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sksurv.exceptions import NoComparablePairException
from sksurv.metrics import concordance_index_censored

from datasets.survival import undefined_reason
from training.survival.td_metrics import integrated_brier as td_integrated_brier
from training.survival.td_metrics import kaplan_meier
from utils.errors import NonFiniteError

GRID_POINTS = 20
GRID_PERCENTILES = (10.0, 90.0)


def _require_finite(name: str, values) -> None:
    """A metric of numbers that are not finite is an error, never a NaN result."""
    bad = ~np.isfinite(np.asarray(values, dtype=np.float64))
    if bad.any():
        raise NonFiniteError(
            f"{name}: {int(bad.sum())} of {bad.size} value(s) not finite (first at position "
            f"{int(np.flatnonzero(bad.reshape(-1))[0])}); no metric is computed from them"
        )


def concordance_index(months, censorship, risk) -> float:
    """Harrell's c-index of ``risk`` (higher = earlier event) against times and censorship (1 censored).

    NaN exactly where it is undefined: fewer than two cases, no event, or no comparable pair. Times or
    risks that are not finite raise :class:`utils.errors.NonFiniteError`; any other error propagates.
    """
    months = np.asarray(months, dtype=np.float64)
    event = np.asarray(censorship).astype(int) == 0
    risk = np.asarray(risk, dtype=np.float64)
    _require_finite("c-index times", months)
    _require_finite("c-index risks", risk)
    if months.size < 2 or not event.any():
        return math.nan
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(concordance_index_censored(event, months, risk)[0])
    except NoComparablePairException:
        return math.nan


def survival_at_times(survival_bins: np.ndarray, cuts, times: np.ndarray) -> np.ndarray:
    """[n, T] predicted survival at ``times`` from per-bin survival [n, n_bins] (step at the bin ends)."""
    survival_bins = np.asarray(survival_bins, dtype=np.float64)
    ones = np.ones((survival_bins.shape[0], 1))
    padded = np.concatenate([ones, survival_bins], axis=1)  # column b = S_{b-1}
    bins = np.searchsorted(np.asarray(cuts, dtype=np.float64), np.asarray(times, dtype=np.float64), "right")
    return padded[:, bins]


def ibs_time_grid(cohort_months, cuts, horizon: float = 0.0, points: int = GRID_POINTS) -> np.ndarray:
    """The run's IBS grid: ``points`` times evenly spaced from the 10th to the 90th percentile of the
    observed times of the whole cohort, ending at the last bin cut (beyond it every per-bin curve is
    flat) or at ``horizon`` (> 0) when that comes first. Empty when the end is not after the start."""
    low, high = np.percentile(np.asarray(cohort_months, dtype=np.float64), GRID_PERCENTILES)
    end = min(float(high), float(horizon) if horizon > 0 else float(cuts[-1]))
    if not end > low:
        return np.zeros(0)
    return np.linspace(float(low), end, points)


def breslow_survival(train_months, train_censorship, train_risk, risk, times) -> np.ndarray:
    """[n, T] Breslow survival S_i(t) = exp(-H_0(t) exp(r_i)), H_0(t) = sum over the training event
    times s <= t of d_s / sum_{j: T_j >= s} exp(r_j) (training cases; ties: Breslow)."""
    train_months = np.asarray(train_months, dtype=np.float64)
    event = np.asarray(train_censorship).astype(int) == 0
    train_risk = np.asarray(train_risk, dtype=np.float64)
    shift = float(train_risk.max()) if train_risk.size else 0.0  # exp() range; S does not depend on it
    weight = np.exp(train_risk - shift)
    at = np.unique(train_months[event])
    d = np.array([np.sum(event & (train_months == s)) for s in at], dtype=np.float64)
    at_risk = np.array([weight[train_months >= s].sum() for s in at], dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(d / at_risk)])
    h0 = cumulative[np.searchsorted(at, np.asarray(times, dtype=np.float64), "right")]
    scale = np.exp(np.asarray(risk, dtype=np.float64) - shift)
    return np.exp(-np.outer(scale, h0))


@dataclass
class IBSReference:
    """One fold's IBS setting: the run's grid and the fold's training cases (censoring weights and the
    Kaplan-Meier null curve)."""

    grid: np.ndarray
    train_months: np.ndarray
    train_censorship: np.ndarray

    def km_null(self, n: int) -> Callable[[np.ndarray], np.ndarray]:
        """Times -> [n, T]: the training cases' Kaplan-Meier survival curve, for every one of ``n`` cases."""
        curve = kaplan_meier(self.train_months, np.asarray(self.train_censorship).astype(int) == 0)
        return lambda times: np.tile(curve(times), (n, 1))


def integrated_brier(reference: IBSReference, months, censorship, curves) -> tuple[float, str | None]:
    """(IBS, note) of ``curves`` (times -> [n, T] survival of the evaluated cases) on ``reference.grid``
    with censoring weights from the training cases: :func:`training.survival.td_metrics.integrated_brier`
    (the definition of ``survival_metrics.csv``; a grid time where the weights are undefined is cut and
    the note says so; NaN with the reason when fewer than two remain)."""
    months = np.asarray(months, dtype=np.float64)
    if months.size == 0:
        return math.nan, "no case"
    _require_finite("IBS times", months)

    def checked(times):
        values = curves(times)
        _require_finite("IBS predicted survival", values)
        return values

    result = td_integrated_brier(
        reference.train_months,
        np.asarray(reference.train_censorship).astype(int) == 0,
        months,
        np.asarray(censorship).astype(int) == 0,
        checked,
        reference.grid,
    )
    return result.value, result.note or None


def survival_metrics(
    months, censorship, risk, curves, reference: IBSReference
) -> tuple[dict[str, float], dict[str, str]]:
    """``({"cindex", "ibs", "ibs_km"}, {metric: why undefined, or what of its grid was cut})`` of one
    evaluation pass; ``curves`` (times -> [n, T]) None, as a Cox pass before its Breslow baseline, leaves
    the IBS undefined."""
    notes: dict[str, str] = {}
    cindex = concordance_index(months, censorship, risk)
    if math.isnan(cindex):
        notes["cindex"] = undefined_reason(months, censorship) or "undefined"
    if curves is None:
        ibs, why = math.nan, "no survival curves (Cox: the Breslow baseline comes after training)"
    else:
        ibs, why = integrated_brier(reference, months, censorship, curves)
    if why:
        notes["ibs"] = why
    n = len(np.atleast_1d(months))
    ibs_km, why_km = integrated_brier(reference, months, censorship, reference.km_null(n))
    if why_km:
        notes["ibs_km"] = why_km
    return {"cindex": cindex, "ibs": ibs, "ibs_km": ibs_km}, notes
