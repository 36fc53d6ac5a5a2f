"""Survival metrics: concordance index and integrated Brier score (docs/survival.md §6).

* c-index: Harrell's concordance with right censoring, scikit-survival's
  ``concordance_index_censored`` on the risk scores (-sum of the predicted survival). A pair (i, j) is
  comparable when case i had the event and t_i < t_j (or t_i = t_j and j is censored); it is concordant
  when r_i > r_j and counts 1/2 when the risks tie. A censored case is never the earlier event of a pair.
  NaN when no pair is comparable.
* IBS: scikit-survival's ``integrated_brier_score`` of the predicted survival curves. The curve of a case
  is the step function S(t) = prod of (1 - h_b) over the bins b that end at or before t (1 in the first
  bin), evaluated on a grid of :data:`GRID_POINTS` times evenly spaced between the 10th and 90th
  percentile of the evaluated cases' observed times, kept strictly inside their follow-up range. The
  censoring distribution (inverse-probability-of-censoring weights) is the Kaplan-Meier estimate of the
  training cases together with the evaluated ones (so every evaluated time lies within it). NaN when
  fewer than two distinct grid times remain or the weights are undefined.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sksurv.metrics import concordance_index_censored, integrated_brier_score
from sksurv.util import Surv

GRID_POINTS = 20
GRID_PERCENTILES = (10.0, 90.0)


def concordance_index(months, censorship, risk) -> float:
    """Harrell's c-index of ``risk`` (higher = earlier event) against times and censorship (1 censored)."""
    months = np.asarray(months, dtype=np.float64)
    event = np.asarray(censorship).astype(int) == 0
    risk = np.asarray(risk, dtype=np.float64)
    if months.size < 2 or not event.any():
        return math.nan
    try:
        return float(concordance_index_censored(event, months, risk)[0])
    except (ValueError, ZeroDivisionError):
        return math.nan  # no comparable pair


def survival_at_times(survival_bins: np.ndarray, cuts, times: np.ndarray) -> np.ndarray:
    """[n, T] predicted survival at ``times`` from per-bin survival [n, n_bins] (step at the bin ends)."""
    survival_bins = np.asarray(survival_bins, dtype=np.float64)
    ones = np.ones((survival_bins.shape[0], 1))
    padded = np.concatenate([ones, survival_bins], axis=1)  # column b = S_{b-1}
    bins = np.searchsorted(np.asarray(cuts, dtype=np.float64), np.asarray(times, dtype=np.float64), "right")
    return padded[:, bins]


def brier_time_grid(months) -> np.ndarray:
    """The IBS time grid of the evaluated cases' times ``months`` (module docstring); may be empty."""
    months = np.asarray(months, dtype=np.float64)
    if months.size < 2:
        return np.zeros(0)
    low, high = np.percentile(months, GRID_PERCENTILES)
    grid = np.unique(np.linspace(low, high, GRID_POINTS))
    return grid[(grid >= months.min()) & (grid < months.max())]


def integrated_brier(
    train_months, train_censorship, months, censorship, survival_bins: np.ndarray, cuts
) -> float:
    """IBS of the evaluated cases' predicted per-bin survival (module docstring); NaN where undefined."""
    months = np.asarray(months, dtype=np.float64)
    event = np.asarray(censorship).astype(int) == 0
    grid = brier_time_grid(months)
    if grid.size < 2:
        return math.nan
    all_months = np.concatenate([np.asarray(train_months, dtype=np.float64), months])
    all_event = np.concatenate([np.asarray(train_censorship).astype(int) == 0, event])
    estimate = survival_at_times(survival_bins, cuts, grid)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = integrated_brier_score(
                Surv.from_arrays(all_event, all_months), Surv.from_arrays(event, months), estimate, grid
            )
    except (ValueError, ZeroDivisionError):
        return math.nan
    return float(value) if np.isfinite(value) else math.nan


def survival_metrics(
    months, censorship, risk, survival_bins, cuts, train_months, train_censorship
) -> dict[str, float]:
    """``{"cindex", "ibs"}`` of one evaluation pass."""
    return {
        "cindex": concordance_index(months, censorship, risk),
        "ibs": integrated_brier(train_months, train_censorship, months, censorship, survival_bins, cuts),
    }
