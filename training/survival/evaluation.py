"""Evaluate per-case survival predictions of any model: ``survival_metrics.csv`` and the Kaplan-Meier plot
(docs/survival.md §6.5). Used by ``evaluate_survival.py`` and at the end of every survival run.

Input: one table, one row per (fold, part, case), columns ``fold, part, case_id, risk, survival_months,
censorship`` (1 = censored; part ``train``/``val``/``test``; ``risk`` higher = earlier event, may be
empty on train rows) and optionally ``survival_0..survival_{n-1}`` (per-bin survival: S at the end of
bin b) with the bin cut points. The ``train`` rows are the fold's training cases: the censoring
distribution of the IPCW weights (iAUC, IBS) and, on request, the Kaplan-Meier threshold.

Output table: one row per fold id, then ``mean``, ``std`` (population, over the folds where the metric
is defined) and ``pooled`` (the evaluated rows of all folds together, their risks as they are); columns

* ``c_index``: Harrell's (:func:`training.survival.metrics.concordance_index`);
* ``iauc``: cumulative/dynamic AUC with IPCW, mean over the grid as scikit-survival's ``mean_auc``
  (:mod:`training.survival.td_metrics`); grid ``np.percentile(t, np.linspace(20, 81, 15))`` of the
  group's evaluated times, cut where the weights are undefined (said in ``note``);
* ``logrank_p``: median split, risk >= median = high (per fold: the fold's median; pooled: the pooled
  median; ``--km_threshold train``: the median of the fold's training risks, for both);
* ``ibs``, ``ibs_km``: IBS of the predicted curves and of the training Kaplan-Meier curve given to every
  case (the null reference), on one grid for all groups: 20 times evenly spaced from the 10th to the
  90th percentile of the whole cohort's times (every distinct case of the table), at most the last bin
  cut (the curves are flat after it);
* ``n_cases``, ``n_events``; ``note``: why a value is undefined, or what was cut or changed.

The censoring distribution of a fold is its training cases (pooled: the distinct training cases of all
folds). A fold without training rows is refused unless ``censoring="evaluated"`` says to use the
evaluated cases themselves (every group, then, and the note says so).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from training.survival.metrics import concordance_index
from training.survival.report import KMSplit, km_split, plot_kaplan_meier
from training.survival.td_metrics import (
    AUC_PERCENTILES,
    cumulative_dynamic_auc,
    integrated_brier,
    kaplan_meier,
)
from utils.atomic_io import atomic_path
from utils.errors import InputError, listed, one_line

REQUIRED_COLUMNS = ("fold", "part", "case_id", "risk", "survival_months", "censorship")
PARTS = ("train", "val", "test")
METRICS_FILE = "survival_metrics.csv"
KM_FILE = "km.png"
METRIC_NAMES = ("c_index", "iauc", "logrank_p", "ibs", "ibs_km")
TABLE_COLUMNS = ("fold", *METRIC_NAMES, "n_cases", "n_events", "note")
IBS_PERCENTILES = (10.0, 90.0)
IBS_POINTS = 20
CENSORING_CHOICES = ("train", "evaluated")
KM_THRESHOLD_CHOICES = ("evaluated", "train")


@dataclass
class Predictions:
    """A checked prediction table (see the module docstring)."""

    frame: pd.DataFrame  # fold int, part, case_id str, risk float, survival_months float, censorship int
    cuts: tuple[float, ...] | None  # bin cut points of the survival_<b> columns (None: no curves)
    source: str  # the file or folder it came from, for messages
    no_curves: str = "no survival columns in the input"  # why there is no IBS, when cuts is None

    @property
    def survival_columns(self) -> list[str]:
        return [] if self.cuts is None else [f"survival_{b}" for b in range(len(self.cuts) + 1)]

    def default_part(self) -> str:
        """``test`` when the table has test rows, else ``val``."""
        return "test" if (self.frame["part"] == "test").any() else "val"


@dataclass
class EvaluationOptions:
    part: str | None = None  # val or test (None: Predictions.default_part)
    censoring: str = "train"  # train: the fold's training rows; evaluated: the evaluated rows
    km_threshold: str = "evaluated"  # evaluated: median of the evaluated risks; train: of the training risks
    auc_percentiles: tuple[float, float, int] = AUC_PERCENTILES


@dataclass
class SurvivalEvaluation:
    """The metrics table and the pooled evaluated cases with their Kaplan-Meier split."""

    table: pd.DataFrame
    part: str
    pooled: pd.DataFrame
    split: KMSplit
    folds: list[int] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ reading
def _shown(value) -> str:
    """A cell as an error line shows it: ``'text'``, or ``(empty)``."""
    return "(empty)" if pd.isna(value) else repr(str(value))


def _numbers(frame: pd.DataFrame, column: str, source: str, rows=None) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna() & (frame[column].astype(str).str.strip() != "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(
            f"{source}: data row {i + 1}: {column} {_shown(frame[column].iloc[i])} is not a number"
        )
    return values


def check_predictions(frame: pd.DataFrame, source: str, cuts=None) -> Predictions:
    """Check a raw prediction table (one-line :class:`InputError` per problem) and type its columns."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(
            f"{source}: missing column(s) {', '.join(missing)} (needs {', '.join(REQUIRED_COLUMNS)})"
        )
    if frame.empty:
        raise InputError(f"{source}: no rows")
    frame = frame.copy()
    part = frame["part"].astype(str).str.strip()
    bad = ~part.isin(PARTS)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(
            f"{source}: data row {i + 1}: part {_shown(frame['part'].iloc[i])} is not one of {', '.join(PARTS)}"
        )
    frame["part"] = part
    fold = _numbers(frame, "fold", source)
    if fold.isna().any() or (fold != np.round(fold)).any():
        i = int(np.flatnonzero((fold.isna() | (fold != np.round(fold))).to_numpy())[0])
        raise InputError(
            f"{source}: data row {i + 1}: fold {_shown(frame['fold'].iloc[i])} is not an integer"
        )
    frame["fold"] = fold.astype(int)
    case = frame["case_id"]
    if case.isna().any() or (case.astype(str).str.strip() == "").any():
        i = int(np.flatnonzero((case.isna() | (case.astype(str).str.strip() == "")).to_numpy())[0])
        raise InputError(f"{source}: data row {i + 1}: empty case_id")
    frame["case_id"] = case.astype(str).str.strip()
    months = _numbers(frame, "survival_months", source)
    bad = ~np.isfinite(months.to_numpy(dtype=np.float64)) | (months < 0).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{source}: data row {i + 1}: survival_months {_shown(frame['survival_months'].iloc[i])} "
            "is not a finite number >= 0"
        )
    frame["survival_months"] = months.astype(np.float64)
    censor = _numbers(frame, "censorship", source)
    bad = ~censor.isin([0, 1])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(
            f"{source}: data row {i + 1}: censorship {_shown(frame['censorship'].iloc[i])} is not 0 or 1 "
            "(1 = censored, 0 = event)"
        )
    frame["censorship"] = censor.astype(int)
    risk = _numbers(frame, "risk", source).astype(np.float64)
    bad = (frame["part"] != "train").to_numpy() & ~np.isfinite(risk.to_numpy())
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{source}: data row {i + 1}: risk {_shown(frame['risk'].iloc[i])} is not a finite number "
            f"({frame['part'].iloc[i]} rows need a risk; only train rows may leave it empty)"
        )
    if np.isinf(risk.to_numpy()).any():
        i = int(np.flatnonzero(np.isinf(risk.to_numpy()))[0])
        raise InputError(f"{source}: data row {i + 1}: risk {_shown(frame['risk'].iloc[i])} is not finite")
    frame["risk"] = risk
    dup = frame.duplicated(["fold", "part", "case_id"])
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise InputError(
            f"{source}: data row {i + 1}: case {frame['case_id'].iloc[i]} listed twice in fold "
            f"{frame['fold'].iloc[i]}, part {frame['part'].iloc[i]}"
        )
    both = frame[frame["part"] == "train"].merge(frame[frame["part"] != "train"], on=["fold", "case_id"])
    if not both.empty:
        r = both.iloc[0]
        raise InputError(
            f"{source}: fold {r['fold']}: case {r['case_id']} is both a training and a {r['part_y']} case"
        )
    per_case = frame.groupby("case_id")[["survival_months", "censorship"]].nunique()
    clash = per_case[(per_case > 1).any(axis=1)]
    if not clash.empty:
        raise InputError(
            f"{source}: case(s) {listed(clash.index)} have different survival_months or censorship in "
            "different rows (one outcome per case)"
        )
    cuts = _check_curves(frame, source, cuts)
    return Predictions(frame.reset_index(drop=True), cuts, source)


def _check_curves(frame: pd.DataFrame, source: str, cuts) -> tuple[float, ...] | None:
    """The bin cut points when the table has ``survival_<b>`` columns (checked), else None."""
    columns = sorted(
        (c for c in frame.columns if c.startswith("survival_") and c[len("survival_") :].isdigit()),
        key=lambda c: int(c[len("survival_") :]),
    )
    if not columns:
        return None
    want = [f"survival_{b}" for b in range(len(columns))]
    if columns != want:
        raise InputError(
            f"{source}: survival columns must be survival_0..survival_{len(columns) - 1}, found {', '.join(columns)}"
        )
    if cuts is None:
        raise InputError(
            f"{source}: survival_0..survival_{len(columns) - 1} need the bin cut points in months "
            "(--bin_cuts, comma-separated; a run folder's config.json holds them)"
        )
    cuts = tuple(float(c) for c in cuts)
    if len(cuts) != len(columns) - 1:
        raise InputError(
            f"{source}: {len(columns)} survival columns need {len(columns) - 1} bin cut points, got {len(cuts)}"
        )
    if not all(np.isfinite(cuts)) or any(b <= a for a, b in zip(cuts, cuts[1:])) or (cuts and cuts[0] <= 0):
        raise InputError(f"bin cut points {list(cuts)} must be positive and increasing")
    evaluated = (frame["part"] != "train").to_numpy()
    for c in columns:
        values = _numbers(frame, c, source).to_numpy(dtype=np.float64)
        bad = evaluated & ~((values >= 0) & (values <= 1))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{source}: data row {i + 1}: {c} {_shown(frame[c].iloc[i])} is not a probability in [0, 1]"
            )
        frame[c] = values
    return cuts


def read_predictions(path: Path, cuts=None) -> Predictions:
    """Read and check a prediction CSV (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        frame = pd.read_csv(path, dtype={"case_id": str}, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable CSV ({one_line(err, 150)})") from None
    return check_predictions(frame, str(path), cuts)


def run_predictions(run_dir: Path, folds=None) -> Predictions:
    """The prediction table of a survival run folder: ``fold_<k>/predictions_{train,val,test}.csv`` of
    every finished fold (or of ``folds``), bin cuts from ``config.json``."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise InputError(f"{run_dir}: not a run folder (no readable config.json)") from None
    survival = config.get("survival") if isinstance(config, dict) else None
    if not isinstance(survival, dict) or "bin_cuts_months" not in survival:
        raise InputError(f"{config_path}: not a survival run (no survival.bin_cuts_months)")
    if folds is None:
        folds = sorted(
            int(p.name[len("fold_") :])
            for p in run_dir.glob("fold_*")
            if p.name[len("fold_") :].isdigit() and (p / "metrics.json").is_file()
        )
    if not folds:
        raise InputError(f"{run_dir}: no finished fold (fold_<k>/metrics.json)")
    frames = []
    for fold in folds:
        for part in PARTS:
            path = run_dir / f"fold_{fold}" / f"predictions_{part}.csv"
            if not path.is_file():
                continue
            try:
                part_frame = pd.read_csv(path, dtype={"case_id": str})
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
                raise InputError(f"{path}: not a readable CSV ({one_line(err, 150)})") from None
            part_frame.insert(0, "part", part)
            part_frame.insert(0, "fold", fold)
            frames.append(part_frame)
    if not frames:
        raise InputError(f"{run_dir}: no fold_<k>/predictions_*.csv")
    frame = pd.concat(frames, ignore_index=True)
    if survival.get("loss") == "cox":  # the curves of a Cox run carry no time scale (docs/survival.md §5.2)
        frame = frame.drop(columns=[c for c in frame.columns if c.removeprefix("survival_").isdigit()])
        pred = check_predictions(frame, str(run_dir))
        pred.no_curves = (
            "Cox run: its per-bin curves are not survival estimates (the loss fixes only the ranking)"
        )
        return pred
    return check_predictions(frame, str(run_dir), survival["bin_cuts_months"])


# ---------------------------------------------------------------------------------------- metrics
def ibs_grid(pred: Predictions) -> np.ndarray:
    """The one IBS grid of a table (module docstring); empty without curves."""
    if pred.cuts is None:
        return np.zeros(0)
    cohort = pred.frame.drop_duplicates("case_id")["survival_months"].to_numpy(dtype=np.float64)
    low, high = np.percentile(cohort, IBS_PERCENTILES)
    if pred.cuts:
        high = min(high, pred.cuts[-1])
    return np.unique(np.linspace(low, high, IBS_POINTS)) if high > low else np.zeros(0)


def _curves(rows: pd.DataFrame, pred: Predictions):
    """Predicted survival of ``rows`` at given times: the per-bin step function (S at the end of bin b)."""
    bins = rows[pred.survival_columns].to_numpy(dtype=np.float64)
    padded = np.concatenate([np.ones((bins.shape[0], 1)), bins], axis=1)  # column b = S_{b-1}

    def at(times: np.ndarray) -> np.ndarray:
        return padded[:, np.searchsorted(np.asarray(pred.cuts), times, side="right")]

    return at


def _group_metrics(
    rows: pd.DataFrame,
    reference: pd.DataFrame,
    pred: Predictions,
    grid: np.ndarray,
    threshold,
    options: EvaluationOptions,
) -> tuple[dict, list[str], KMSplit]:
    """Metrics of one group of evaluated ``rows`` with censoring ``reference`` rows (module docstring)."""
    months = rows["survival_months"].to_numpy(dtype=np.float64)
    event = rows["censorship"].to_numpy() == 0
    risk = rows["risk"].to_numpy(dtype=np.float64)
    ref_months = reference["survival_months"].to_numpy(dtype=np.float64)
    ref_event = reference["censorship"].to_numpy() == 0
    notes = []
    values = {"n_cases": int(rows.shape[0]), "n_events": int(event.sum())}

    values["c_index"] = concordance_index(months, rows["censorship"], risk)
    if math.isnan(values["c_index"]):
        notes.append(f"c_index: {'no events' if not event.any() else 'no comparable pairs'}")

    low, high, n = options.auc_percentiles
    auc = cumulative_dynamic_auc(
        ref_months, ref_event, months, event, risk, np.percentile(months, np.linspace(low, high, int(n)))
    )
    values["iauc"] = auc.value
    if auc.note:
        notes.append(auc.note)

    split = km_split(risk, months, rows["censorship"], threshold)
    values["logrank_p"] = split.p_value
    if split.reason:
        notes.append(f"logrank_p: {split.reason}")

    if pred.cuts is None:
        values["ibs"] = values["ibs_km"] = math.nan
        notes.append(f"ibs, ibs_km: {pred.no_curves}")
    else:
        model = integrated_brier(ref_months, ref_event, months, event, _curves(rows, pred), grid)
        km = kaplan_meier(ref_months, ref_event)
        null = integrated_brier(
            ref_months,
            ref_event,
            months,
            event,
            lambda t: np.broadcast_to(km(t), (months.size, len(t))),
            grid,
        )
        values["ibs"], values["ibs_km"] = model.value, null.value
        if model.note and model.note == null.note:
            notes.append(model.note.replace("ibs:", "ibs, ibs_km:", 1))
        else:
            notes.extend(n for n in (model.note, null.note.replace("ibs:", "ibs_km:", 1)) if n)
    return values, notes, split


def _reference(
    pred: Predictions, fold_rows: pd.DataFrame, evaluated: pd.DataFrame, fold, options
) -> pd.DataFrame:
    if options.censoring == "evaluated":
        return evaluated
    train = fold_rows[fold_rows["part"] == "train"]
    if train.empty:
        raise InputError(
            f"{pred.source}: fold {fold} has no train rows; the censoring weights of the iAUC and IBS come "
            "from a fold's training cases: add them (part train, risk may be empty) or pass --censoring "
            "evaluated to weight by the evaluated cases' own censoring instead"
        )
    return train


def _train_median(pred: Predictions, fold_rows: pd.DataFrame, fold) -> float:
    risk = fold_rows.loc[fold_rows["part"] == "train", "risk"].to_numpy(dtype=np.float64)
    risk = risk[np.isfinite(risk)]
    if risk.size == 0:
        raise InputError(
            f"{pred.source}: fold {fold}: --km_threshold train needs the training cases' risks, and its train "
            "rows have none"
        )
    return float(np.median(risk))


def _summary_rows(per_fold: list[dict]) -> tuple[dict, dict]:
    """``mean`` and population ``std`` rows over the folds where each metric is defined."""
    mean, std = {"fold": "mean"}, {"fold": "std"}
    mean_notes = []
    for column in (*METRIC_NAMES, "n_cases", "n_events"):
        values = np.array([r[column] for r in per_fold], dtype=np.float64)
        ok = ~np.isnan(values)
        if not ok.any():
            mean[column] = std[column] = math.nan
            mean_notes.append(f"{column}: undefined in every fold")
            continue
        mean[column], std[column] = float(values[ok].mean()), float(values[ok].std())
        if not ok.all():
            left = [str(r["fold"]) for r, k in zip(per_fold, ok) if not k]
            mean_notes.append(
                f"{column}: over {int(ok.sum())} of {len(per_fold)} folds (undefined in fold {', '.join(left)})"
            )
    mean["note"] = std["note"] = "; ".join(mean_notes)
    return mean, std


def evaluate_predictions(pred: Predictions, options: EvaluationOptions | None = None) -> SurvivalEvaluation:
    """The metrics table of ``pred`` (module docstring)."""
    options = options or EvaluationOptions()
    if options.censoring not in CENSORING_CHOICES:
        raise InputError(f"censoring {options.censoring!r}: choose one of {', '.join(CENSORING_CHOICES)}")
    if options.km_threshold not in KM_THRESHOLD_CHOICES:
        raise InputError(
            f"km threshold {options.km_threshold!r}: choose one of {', '.join(KM_THRESHOLD_CHOICES)}"
        )
    part = options.part or pred.default_part()
    frame = pred.frame
    evaluated_all = frame[frame["part"] == part]
    if evaluated_all.empty:
        present = sorted(set(frame["part"]) - {"train"})
        raise InputError(
            f"{pred.source}: no {part} rows to evaluate"
            + (f" (parts present: {', '.join(present)}; choose one with --part)" if present else "")
        )
    grid = ibs_grid(pred)
    folds = sorted(evaluated_all["fold"].unique().tolist())
    per_fold, references, thresholds = [], [], []
    for fold in folds:
        fold_rows = frame[frame["fold"] == fold]
        evaluated = fold_rows[fold_rows["part"] == part]
        reference = _reference(pred, fold_rows, evaluated, fold, options)
        threshold = _train_median(pred, fold_rows, fold) if options.km_threshold == "train" else None
        values, notes, _ = _group_metrics(evaluated, reference, pred, grid, threshold, options)
        if options.censoring == "evaluated":
            notes.append("censoring weights from the evaluated cases (--censoring evaluated)")
        per_fold.append({"fold": str(fold), **values, "note": "; ".join(notes)})
        references.append(reference)
        thresholds.append(np.full(evaluated.shape[0], threshold if threshold is not None else np.nan))
    mean, std = _summary_rows(per_fold)

    pooled_rows = pd.concat(
        [frame[(frame["fold"] == f) & (frame["part"] == part)] for f in folds], ignore_index=True
    )
    if options.censoring == "evaluated":
        pooled_ref = pooled_rows
    else:
        pooled_ref = pd.concat(references, ignore_index=True).drop_duplicates("case_id")
    pooled_threshold = np.concatenate(thresholds) if options.km_threshold == "train" else None
    values, notes, split = _group_metrics(pooled_rows, pooled_ref, pred, grid, pooled_threshold, options)
    how = (
        "the evaluated cases"
        if options.censoring == "evaluated"
        else f"the {pooled_ref.shape[0]} distinct training cases of all folds"
    )
    notes.append(f"all folds' {part} cases, risks as they are; censoring weights from {how}")
    pooled = {"fold": "pooled", **values, "note": "; ".join(notes)}
    table = pd.DataFrame([*per_fold, mean, std, pooled], columns=list(TABLE_COLUMNS)).astype(object)
    for column in ("n_cases", "n_events"):  # counts as integers, their mean and std as numbers
        values = [v if r in ("mean", "std") else int(v) for r, v in zip(table["fold"], table[column])]
        table[column] = pd.Series(values, index=table.index, dtype=object)
    return SurvivalEvaluation(table, part, pooled_rows, split, folds)


# ------------------------------------------------------------------------------------------ output
def write_metrics_table(path: Path, table: pd.DataFrame) -> None:
    """``survival_metrics.csv``: undefined numbers as ``nan`` (never blank; ``note`` says why)."""
    with atomic_path(path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False, na_rep="nan")


def write_evaluation(evaluation: SurvivalEvaluation, metrics_path: Path, km_path: Path, title: str) -> None:
    """The metrics table and the pooled Kaplan-Meier plot."""
    write_metrics_table(metrics_path, evaluation.table)
    pooled = evaluation.pooled
    plot_kaplan_meier(km_path, pooled["survival_months"], pooled["censorship"], evaluation.split, title)


def format_metrics_table(evaluation: SurvivalEvaluation) -> str:
    """The table for a terminal: one line per row, then the notes and the pooled hazard ratio."""
    table = evaluation.table
    lines = [f"{'fold':>7} " + " ".join(f"{c:>10}" for c in TABLE_COLUMNS[1:-1])]
    for _, r in table.iterrows():
        cells = []
        for c in TABLE_COLUMNS[1:-1]:
            v = r[c]
            cells.append(
                f"{'nan' if math.isnan(v) else (f'{v:.4g}' if c not in ('n_cases', 'n_events') or r['fold'] in ('mean', 'std') else str(int(v))):>10}"
            )
        lines.append(f"{r['fold']:>7} " + " ".join(cells))
    for _, r in table.iterrows():
        if r["note"]:
            lines.append(f"note {r['fold']}: {r['note']}")
    hr, low, high = evaluation.split.hazard_ratio
    if not math.isnan(hr):
        lines.append(
            f"pooled {evaluation.part} cases, risk >= threshold vs below: HR {hr:.3g} (95% CI {low:.3g}-{high:.3g})"
        )
    return "\n".join(lines)
