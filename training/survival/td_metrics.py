"""Time-dependent survival metrics with inverse-probability-of-censoring weights (docs/survival.md §6.4).

Written to the definitions scikit-survival implements (``cumulative_dynamic_auc``, ``brier_score``,
``integrated_brier_score``), with one difference made explicit: scikit-survival refuses a whole
evaluation when any evaluated time lies beyond the follow-up of the cases the censoring distribution is
estimated from (``time must be smaller than largest observed time point``), although such a time may
never enter the value. Here the **time grid** is cut where the weights stop being defined, the cut is
reported, and on every grid where scikit-survival gives a number the value is the same (tested).

* Censoring distribution G: the Kaplan-Meier estimate of the *censoring* times of the reference
  (training) cases, events leaving the risk set before censorings at a tied time; G(t) includes the
  step at t (scikit-survival's ``CensoringDistributionEstimator``). Defined up to the last reference
  time; an event's weight is 1 / G(t_i).
* Cumulative/dynamic AUC at t: cases are evaluated events with t_i <= t, weighted 1 / G(t_i); controls
  are evaluated cases with t_j > t (weight 1); a (case, control) pair counts 1 when r_i > r_j and 1/2
  when the risks tie (within :data:`TIED_TOL`, as the c-index). Its mean over the grid is
  scikit-survival's ``mean_auc``: the AUCs weighted by the drops of the evaluated cases' Kaplan-Meier
  curve at the grid times, divided by 1 - S(t_last).
* Brier score at t: mean over the evaluated cases of S_i(t)^2 / G(t_i) for events at or before t and
  (1 - S_i(t))^2 / G(t) for cases still followed after t (censored cases before t count 0); the IBS is
  its trapezoidal integral over the grid divided by the grid's span.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# The MCAT-lineage iAUC grid: np.percentile(times, np.linspace(20, 81, 15)).
AUC_PERCENTILES = (20.0, 81.0, 15)
TIED_TOL = 1e-8  # risks this close count as tied (scikit-survival's tied_tol, as in the c-index)


@dataclass(frozen=True)
class StepFunction:
    """A right-continuous step function: ``values[k]`` on [times[k], times[k+1]); 1 before ``times[0]``;
    undefined after ``times[-1]`` (the end of follow-up)."""

    times: np.ndarray
    values: np.ndarray

    @property
    def last(self) -> float:
        return float(self.times[-1]) if self.times.size else -math.inf

    def __call__(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        idx = np.searchsorted(self.times, t, side="right") - 1
        out = np.where(idx >= 0, self.values[np.clip(idx, 0, None)] if self.values.size else 1.0, 1.0)
        return np.where(t > self.last, np.nan, out)


def _counts(months: np.ndarray, event: np.ndarray):
    times = np.unique(months)
    at_risk = np.array([(months >= u).sum() for u in times], dtype=np.float64)
    events = np.array([(event & (months == u)).sum() for u in times], dtype=np.float64)
    censored = np.array([(~event & (months == u)).sum() for u in times], dtype=np.float64)
    return times, at_risk, events, censored


def kaplan_meier(months, event) -> StepFunction:
    """Kaplan-Meier survival of the events (``event`` True = event)."""
    months, event = np.asarray(months, dtype=np.float64), np.asarray(event, dtype=bool)
    times, at_risk, events, _ = _counts(months, event)
    return StepFunction(times, np.cumprod(1.0 - events / at_risk))


def censoring_survival(months, event) -> StepFunction:
    """Kaplan-Meier survival of the censoring times (G; module docstring)."""
    months, event = np.asarray(months, dtype=np.float64), np.asarray(event, dtype=bool)
    times, at_risk, events, censored = _counts(months, event)
    left = at_risk - events  # events leave before censorings at a tied time
    ratio = np.divide(censored, left, out=np.zeros_like(censored), where=censored > 0)
    return StepFunction(times, np.cumprod(1.0 - ratio))


def percentile_grid(months, percentiles=AUC_PERCENTILES) -> np.ndarray:
    """``np.percentile(months, np.linspace(low, high, n))``, sorted and without repeats."""
    low, high, n = percentiles
    months = np.asarray(months, dtype=np.float64)
    if months.size == 0:
        return np.zeros(0)
    return np.unique(np.percentile(months, np.linspace(low, high, int(n))))


@dataclass
class GridCut:
    """The grid actually used and what was dropped from the requested one, and why."""

    times: np.ndarray
    dropped: list[str] = field(default_factory=list)

    def note(self, metric: str, requested: int) -> str:
        if not self.dropped:
            return ""
        kept = self.times.size
        return f"{metric}: {kept} of {requested} grid times kept ({'; '.join(self.dropped)})"


def restrict_grid(grid, months, G: StepFunction, event=None) -> GridCut:
    """Keep the grid times inside the evaluated follow-up [min, max) of ``months`` (scikit-survival's
    rule) and where the censoring weights are defined.

    With ``event`` given (AUC), a time t needs 1 / G(t_i) of the evaluated events t_i <= t only: t is
    kept below the first evaluated event time beyond the reference follow-up or where G = 0. Without it
    (Brier), t needs G(t) > 0 itself, t <= the last reference time.
    """
    grid = np.unique(np.asarray(grid, dtype=np.float64))
    months = np.asarray(months, dtype=np.float64)
    dropped = []
    inside = (grid >= months.min()) & (grid < months.max())
    if (~inside).any():
        dropped.append(
            f"{int((~inside).sum())} outside the evaluated follow-up [{months.min():.4g}, {months.max():.4g})"
        )
    grid = grid[inside]
    if event is not None:
        event = np.asarray(event, dtype=bool)
        with np.errstate(invalid="ignore"):
            g = G(months[event])
        bad = months[event][~(g > 0)]  # NaN (beyond follow-up) or zero
        limit = bad.min() if bad.size else math.inf
        ok = grid < limit
    else:
        with np.errstate(invalid="ignore"):
            ok = G(grid) > 0
    if (~ok).any():
        dropped.append(
            f"{int((~ok).sum())} beyond the training follow-up (last training time {G.last:.4g}), "
            "where the censoring weights are undefined"
        )
    return GridCut(grid[ok], dropped)


@dataclass
class TimeMetric:
    """A grid-averaged metric: its value (NaN when undefined), per-time values, grid, and a note."""

    value: float
    per_time: np.ndarray
    times: np.ndarray
    note: str = ""


def cumulative_dynamic_auc(ref_months, ref_event, months, event, risk, grid) -> TimeMetric:
    """Cumulative/dynamic AUC of ``risk`` (higher = earlier) over ``grid`` and its ``mean_auc``
    (module docstring); censoring weights from the reference cases ``ref_*``."""
    months, event = np.asarray(months, dtype=np.float64), np.asarray(event, dtype=bool)
    risk = np.asarray(risk, dtype=np.float64)
    requested = np.unique(np.asarray(grid, dtype=np.float64)).size
    if not event.any():
        return TimeMetric(math.nan, np.zeros(0), np.zeros(0), "iauc: no events")
    G = censoring_survival(ref_months, ref_event)
    cut = restrict_grid(grid, months, G, event)
    note = cut.note("iauc", requested)
    times = cut.times
    with np.errstate(invalid="ignore", divide="ignore"):
        weight = np.where(event, 1.0 / G(months), 0.0)
    diff = risk[:, None] - risk[None, :]  # [case, control]
    tied = np.abs(diff) <= TIED_TOL
    beats = ((diff > 0) & ~tied) + 0.5 * tied
    aucs = np.full(times.size, np.nan)
    for k, t in enumerate(times):
        case = event & (months <= t)
        control = months > t
        w = weight[case]
        if w.sum() == 0 or not control.any():
            continue  # no case yet: the KM weight of this time is 0 (module docstring)
        aucs[k] = float((w[:, None] * beats[np.ix_(case, control)]).sum() / (w.sum() * control.sum()))
    defined = ~np.isnan(aucs)
    if not defined.any():
        why = "no event at or before any grid time" if times.size else "no grid time left"
        return TimeMetric(math.nan, aucs, times, "; ".join(filter(None, [note, f"iauc: {why}"])))
    km = kaplan_meier(months, event)(times)
    drops = -np.diff(np.r_[1.0, km])
    if times.size == 1:
        return TimeMetric(float(aucs[0]), aucs, times, note)
    value = float((aucs[defined] * drops[defined]).sum() / (1.0 - km[-1]))
    return TimeMetric(value, aucs, times, note)


def integrated_brier(ref_months, ref_event, months, event, curves, grid) -> TimeMetric:
    """IBS of predicted survival ``curves`` ([n, len(grid)]: S_i at each grid time, or a callable
    ``times -> [n, T]``) over ``grid`` (module docstring); censoring weights from ``ref_*``."""
    months, event = np.asarray(months, dtype=np.float64), np.asarray(event, dtype=bool)
    requested = np.unique(np.asarray(grid, dtype=np.float64)).size
    G = censoring_survival(ref_months, ref_event)
    cut = restrict_grid(grid, months, G)
    note = cut.note("ibs", requested)
    times = cut.times
    if times.size < 2:
        why = "fewer than two grid times left"
        return TimeMetric(math.nan, np.zeros(0), times, "; ".join(filter(None, [note, f"ibs: {why}"])))
    estimate = curves(times) if callable(curves) else np.asarray(curves, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        g_own = G(months)
    scores = np.empty(times.size)
    for k, t in enumerate(times):
        s = estimate[:, k]
        case = event & (months <= t)
        control = months > t
        terms = np.zeros(months.size)
        terms[case] = s[case] ** 2 / g_own[case]
        terms[control] = (1.0 - s[control]) ** 2 / G(t)
        scores[k] = terms.mean()
    value = float(np.trapezoid(scores, times) / (times[-1] - times[0]))
    return TimeMetric(value, scores, times, note)
