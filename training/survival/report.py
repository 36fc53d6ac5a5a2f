"""Survival result files: per-case predictions, the summary table and the Kaplan-Meier plot
(docs/survival.md §7.3-§7.4). Every file is written atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils.atomic_io import atomic_path

SURVIVAL_METRIC_COLUMNS = ("test_cindex", "test_ibs", "val_cindex", "val_ibs")


def write_survival_predictions(path: Path, result, slides_of: dict[str, tuple[str, ...]]) -> None:
    """One row per case: ``case_id, slides, survival_months, censorship, bin, risk, hazard_<b>...,
    survival_<b>...`` (``result``: :class:`training.tasks.survival.SurvivalEvalResult`). Under the Cox
    loss the per-bin columns are the network's outputs; the IBS uses Breslow curves instead."""
    frame = pd.DataFrame(
        {
            "case_id": result.case_ids,
            "slides": [";".join(slides_of.get(c, ())) for c in result.case_ids],
            "survival_months": result.months,
            "censorship": result.censorship,
            "bin": result.bins,
            "risk": result.risk,
        }
    )
    n_bins = result.hazards.shape[1]
    for b in range(n_bins):
        frame[f"hazard_{b}"] = result.hazards[:, b]
    for b in range(n_bins):
        frame[f"survival_{b}"] = result.survival[:, b]
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)


def _cell(value: float) -> str:
    return "   nan" if math.isnan(value) else f"{value:.4f}"


def format_survival_table(
    summary: pd.DataFrame,
    results: pd.DataFrame,
    logrank_p: float | None = None,
    km_null: list[float] | None = None,
    parts: list[str] | None = None,
) -> str:
    """Per-fold c-index and IBS of the evaluated part (``parts``: test, or val in the field's train/val
    folds) and the IBS of the training KM curve beside it (``km_null``), then mean ± std (and the KM
    log-rank p-value)."""
    name = "/".join(parts or ["test"])
    km_null = km_null if km_null is not None else [math.nan] * len(summary)
    lines = [f"{'fold':>11}  {name + ' c-index':>17}  {name + ' IBS':>17}  {'IBS of train KM':>17}"]
    for (_, r), null in zip(summary.iterrows(), km_null):
        lines.append(
            f"{int(r['folds']):>11}  {_cell(r['test_cindex']):>17}  {_cell(r['test_ibs']):>17}  {_cell(null):>17}"
        )
    mean, std = results.iloc[0], results.iloc[1]
    cells = [f"{_cell(mean[c])} ± {_cell(std[c])}" for c in ("test_cindex", "test_ibs")]
    nulls = np.asarray(km_null, dtype=np.float64)
    cells.append(f"{_cell(float(np.mean(nulls)))} ± {_cell(float(np.std(nulls)))}")
    lines.append(f"{'mean ± std':>11}  {cells[0]:>17}  {cells[1]:>17}  {cells[2]:>17}")
    if logrank_p is not None:
        lines.append(
            f"Kaplan-Meier, {name} cases of all folds split at the median risk: log-rank p = {logrank_p:.3g}"
        )
    return "\n".join(lines)


@dataclass
class KMSplit:
    """Cases split into a high- and a low-risk group, the log-rank test and the hazard ratio between them."""

    threshold: float  # the median of the evaluated risks, or per case (training medians), see km_split
    high: np.ndarray  # bool [n]: risk >= threshold
    p_value: float  # NaN when undefined (see reason)
    reason: str = ""  # why p_value is undefined ("" when defined)
    hazard_ratio: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # HR high vs low, 95% CI


def km_split(risk, months, censorship, threshold=None) -> KMSplit:
    """High risk = ``risk >= threshold`` (default: the median of ``risk``; an array gives each case its own
    threshold); log-rank p-value (lifelines ``logrank_test``) and hazard ratio (:func:`hazard_ratio`).

    ``>=`` as the field (MCAT, Patch-GCN): the high group is never empty; the low group is empty only
    when every risk ties at the top, and then p is undefined with that reason.
    """
    from lifelines.statistics import logrank_test

    risk = np.asarray(risk, dtype=np.float64)
    months = np.asarray(months, dtype=np.float64)
    event = np.asarray(censorship).astype(int) == 0
    if threshold is None:
        threshold = float(np.median(risk)) if risk.size else math.nan
    high = risk >= np.asarray(threshold, dtype=np.float64)
    p_value, reason = math.nan, ""
    if not (high.any() and (~high).any()):
        reason = "one risk group is empty (all risks at or above the threshold)" if high.any() else "no cases"
    elif not event.any():
        reason = "no events"
    else:
        test = logrank_test(
            months[high], months[~high], event_observed_A=event[high], event_observed_B=event[~high]
        )
        p_value = float(test.p_value)
    ratio = hazard_ratio(months, event, high) if not reason else (math.nan, math.nan, math.nan)
    return KMSplit(threshold, high, p_value, reason, ratio)


def hazard_ratio(months, event, high) -> tuple[float, float, float]:
    """Hazard ratio of the high- against the low-risk group with its 95 % CI: a Cox model (lifelines
    ``CoxPHFitter``, Efron ties) on the group indicator; NaNs when the fit fails (e.g. no event in a group)."""
    import warnings

    from lifelines import CoxPHFitter

    frame = pd.DataFrame(
        {"T": months, "E": np.asarray(event, dtype=int), "high": np.asarray(high, dtype=int)}
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitter = CoxPHFitter().fit(frame, duration_col="T", event_col="E")
        summary = fitter.summary.loc["high"]
        values = (summary["exp(coef)"], summary["exp(coef) lower 95%"], summary["exp(coef) upper 95%"])
    except Exception:  # noqa: BLE001 -- lifelines raises several types (convergence, singular matrix)
        return (math.nan, math.nan, math.nan)
    values = tuple(float(v) for v in values)
    return values if all(np.isfinite(values)) else (math.nan, math.nan, math.nan)


def _hr_text(split: KMSplit) -> str:
    hr, low, high = split.hazard_ratio
    return "n/a" if math.isnan(hr) else f"{hr:.2f} (95% CI {low:.2f}-{high:.2f})"


def plot_kaplan_meier(path: Path, months, censorship, split: KMSplit, title: str) -> None:
    """Kaplan-Meier curves (lifelines) of the low- and high-risk groups with 95 % bands, censoring ticks,
    a number-at-risk table, the log-rank p-value and the hazard ratio with its 95 % CI, as PNG."""
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    months = np.asarray(months, dtype=np.float64)
    event = np.asarray(censorship).astype(int) == 0
    fig = Figure(figsize=(7, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    fitters = []
    for name, mask, colour in (("low risk", ~split.high, "tab:blue"), ("high risk", split.high, "tab:red")):
        if not mask.any():
            continue
        fitter = KaplanMeierFitter(label=f"{name} (n={int(mask.sum())})")
        fitter.fit(months[mask], event_observed=event[mask])
        fitter.plot_survival_function(ax=ax, ci_show=True, show_censors=True, color=colour)
        fitters.append(fitter)
    if fitters:
        add_at_risk_counts(*fitters, ax=ax, fig=fig, rows_to_show=["At risk"])
    p_text = f"n/a ({split.reason})" if math.isnan(split.p_value) else f"{split.p_value:.3g}"
    ax.set_title(f"{title}\nlog-rank p = {p_text}; HR high vs low = {_hr_text(split)}", fontsize=9)
    ax.set_xlabel("months")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
