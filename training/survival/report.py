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
    survival_<b>...`` (``result``: :class:`training.tasks.survival.SurvivalEvalResult`)."""
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
    summary: pd.DataFrame, results: pd.DataFrame, logrank_p: float | None = None
) -> str:
    """Per-fold test c-index and IBS, then mean ± std (and the KM log-rank p-value)."""
    lines = [f"{'fold':>11}  {'test c-index':>17}  {'test IBS':>17}"]
    for _, r in summary.iterrows():
        lines.append(f"{int(r['folds']):>11}  {_cell(r['test_cindex']):>17}  {_cell(r['test_ibs']):>17}")
    mean, std = results.iloc[0], results.iloc[1]
    cells = [f"{_cell(mean[c])} ± {_cell(std[c])}" for c in ("test_cindex", "test_ibs")]
    lines.append(f"{'mean ± std':>11}  {cells[0]:>17}  {cells[1]:>17}")
    if logrank_p is not None:
        lines.append(
            f"Kaplan-Meier, test cases of all folds split at the median risk: log-rank p = {logrank_p:.3g}"
        )
    return "\n".join(lines)


@dataclass
class KMSplit:
    """Test cases split at the median predicted risk, and the log-rank test between the groups."""

    threshold: float
    high: np.ndarray  # bool [n], risk above the median
    p_value: float  # NaN when one group is empty


def km_split(risk, months, censorship) -> KMSplit:
    """High risk = risk strictly above the median of ``risk``; log-rank p-value (lifelines) between groups."""
    from lifelines.statistics import logrank_test

    risk = np.asarray(risk, dtype=np.float64)
    months = np.asarray(months, dtype=np.float64)
    event = np.asarray(censorship).astype(int) == 0
    threshold = float(np.median(risk)) if risk.size else math.nan
    high = risk > threshold
    p_value = math.nan
    if high.any() and (~high).any():
        test = logrank_test(
            months[high], months[~high], event_observed_A=event[high], event_observed_B=event[~high]
        )
        p_value = float(test.p_value)
    return KMSplit(threshold, high, p_value)


def plot_kaplan_meier(path: Path, months, censorship, split: KMSplit, title: str) -> None:
    """Kaplan-Meier curves (lifelines) of the low- and high-risk groups, with the log-rank p-value, as PNG."""
    from lifelines import KaplanMeierFitter
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    months = np.asarray(months, dtype=np.float64)
    event = np.asarray(censorship).astype(int) == 0
    fig = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, mask, colour in (("low risk", ~split.high, "tab:blue"), ("high risk", split.high, "tab:red")):
        if not mask.any():
            continue
        fitter = KaplanMeierFitter(label=f"{name} (n={int(mask.sum())})")
        fitter.fit(months[mask], event_observed=event[mask])
        fitter.plot_survival_function(ax=ax, ci_show=True, show_censors=True, color=colour)
    p_text = "n/a" if math.isnan(split.p_value) else f"{split.p_value:.3g}"
    ax.set_title(f"{title}\nlog-rank p = {p_text}", fontsize=10)
    ax.set_xlabel("months")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
