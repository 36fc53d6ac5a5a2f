"""Result files of a run, in the published layout, and the resume bookkeeping.

Under ``<results_dir>/<task>/<extractor>/<shots>/<task>_<extractor>_<model>_<shots>_s<seed>/``:

* ``config.json``: the resolved configuration, variant switches and package versions;
* ``s_<k>_checkpoint.pt``: the restored (best) model of fold k (published name) with its identity
  (:mod:`models.checkpoint`);
* ``fold_<k>/predictions_{val,test}.csv``: slide_id, label, pred, prob_<class>...;
* ``fold_<k>/inputs.json``: what the fold's results depend on (:mod:`training.fingerprints`);
* ``fold_<k>/metrics.json``: fold k's summary row, written last -- its presence marks the fold finished;
* ``summary.csv``: one row per fold; ``results.csv``: mean and population std (``np.std``) of every
  metric column, as published. A run over a subset of folds writes ``summary_partial_<a>_<b>.csv`` and
  ``results_partial_<a>_<b>.csv`` instead (published naming).

Every file is written atomically.
"""

from __future__ import annotations

import json
import math
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from training.config import RunConfig
from training.fingerprints import INPUTS_FILE
from utils.atomic_io import atomic_path, atomic_write_text
from utils.errors import InputError

METRIC_COLUMNS = ("test_acc", "test_auc", "test_f1", "val_acc", "val_auc", "val_f1")
CONFIG_FILE = "config.json"


def fold_dir(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / f"fold_{fold}"


def checkpoint_path(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / f"s_{fold}_checkpoint.pt"


def predictions_path(run_dir: Path, fold: int, split: str) -> Path:
    return fold_dir(run_dir, fold) / f"predictions_{split}.csv"


def fold_row_path(run_dir: Path, fold: int) -> Path:
    return fold_dir(run_dir, fold) / "metrics.json"


def fold_inputs_path(run_dir: Path, fold: int) -> Path:
    return fold_dir(run_dir, fold) / INPUTS_FILE


def write_predictions(path: Path, result, class_names: tuple[str, ...]) -> None:
    """Per-slide predictions: slide_id, label, pred, prob_<class> for each class (``result``:
    :class:`training.tasks.classification.EvalResult`)."""
    frame = pd.DataFrame({"slide_id": result.slide_ids, "label": result.labels, "pred": result.preds})
    for c, name in enumerate(class_names):
        frame[f"prob_{name}"] = result.probs[:, c] if len(result.labels) else []
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)


def write_fold_row(run_dir: Path, fold: int, row: dict) -> None:
    atomic_write_text(fold_row_path(run_dir, fold), json.dumps(row, indent=2) + "\n")


def finished_fold_row(
    run_dir: Path,
    fold: int,
    metric_columns: tuple[str, ...] = METRIC_COLUMNS,
    parts: tuple[str, ...] = ("val", "test"),
) -> dict | None:
    """Fold k's stored row when all its outputs exist (metrics, the prediction files of ``parts``,
    checkpoint) and the row holds every column of ``metric_columns`` (the task kind's; classification by
    default)."""
    needed = [
        fold_row_path(run_dir, fold),
        *(predictions_path(run_dir, fold, part) for part in parts),
        checkpoint_path(run_dir, fold),
    ]
    if not all(p.is_file() for p in needed):
        return None
    try:
        row = json.loads(fold_row_path(run_dir, fold).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(row, dict) or any(c not in row for c in metric_columns):
        return None
    return row


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in (
        "torch",
        "torch_geometric",
        "transformers",
        "open_clip_torch",
        "numpy",
        "pandas",
        "scikit-learn",
        "h5py",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_run_config(run_dir: Path, config: RunConfig, extra: dict | None = None) -> None:
    """``config.json``: resolved config, variant switches, package versions (+ ``extra``)."""
    payload = {
        "config": config.to_dict(),
        "variant_switches": config.switches().to_dict(),
        "versions": package_versions(),
        **(extra or {}),
    }
    atomic_write_text(Path(run_dir) / CONFIG_FILE, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def check_resumable(run_dir: Path, config: RunConfig) -> bool:
    """True when ``run_dir`` holds results of the same settings; raise when it holds others.

    Returns False when there is nothing to resume (no ``config.json``).
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        stored = RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8"))["config"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(
            f"{path}: unreadable run config ({err}); use a new --results_dir or --overwrite"
        ) from None
    old = json.loads(json.dumps(stored.resume_identity()))
    new = json.loads(json.dumps(config.resume_identity()))
    differing = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if differing:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing[:5])
        raise InputError(
            f"{run_dir} holds results of different settings ({shown}); use a new --results_dir or --overwrite"
        )
    return True


def summary_names(folds: range, k: int) -> tuple[str, str]:
    """(summary file, results file) names: full names when all k folds ran, partial names otherwise."""
    if folds.start == 0 and folds.stop == k:
        return "summary.csv", "results.csv"
    tag = f"{folds.start}_{folds.stop - 1}"
    return f"summary_partial_{tag}.csv", f"results_partial_{tag}.csv"


def summary_frames(
    rows: list[dict], metric_columns: tuple[str, ...] = METRIC_COLUMNS
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-fold summary, mean/std results) frames of ``metric_columns`` (classification's by default);
    std is the population std (np.std), as published."""
    summary = pd.DataFrame(
        {"folds": [int(r["fold"]) for r in rows], **{c: [float(r[c]) for r in rows] for c in metric_columns}}
    )
    results = pd.DataFrame(
        {
            "metric": ["mean", "std"],
            **{c: [float(np.mean(summary[c])), float(np.std(summary[c]))] for c in metric_columns},
        }
    )
    return summary, results


def write_summaries(
    run_dir: Path,
    rows: list[dict],
    folds: range,
    k: int,
    metric_columns: tuple[str, ...] = METRIC_COLUMNS,
    na_rep: str = "",
    summary_extra: dict[str, list] | None = None,
) -> tuple[Path, Path]:
    """Write the per-fold summary and the mean/std results CSVs; return their paths. ``na_rep`` writes
    an undefined value (survival: ``nan``, never a blank cell); ``summary_extra`` adds columns to the
    summary (survival: ``note``)."""
    summary, results = summary_frames(rows, metric_columns)
    for name, values in (summary_extra or {}).items():
        summary[name] = values
    summary_name, results_name = summary_names(folds, k)
    paths = (Path(run_dir) / summary_name, Path(run_dir) / results_name)
    for frame, path in zip((summary, results), paths):
        with atomic_path(path, suffix=".csv") as tmp:
            frame.to_csv(tmp, index=False, na_rep=na_rep)
    return paths


def _cell(value: float) -> str:
    return "   nan" if math.isnan(value) else f"{value:.4f}"


def format_summary_table(rows: list[dict]) -> str:
    """A one-screen table: per-fold test ACC/AUC/F1, then mean ± std."""
    summary, results = summary_frames(rows)
    lines = [f"{'fold':>11}  {'test ACC':>15}  {'test AUC':>15}  {'test F1':>15}"]
    for _, r in summary.iterrows():
        lines.append(
            f"{int(r['folds']):>11}  {_cell(r['test_acc']):>15}  {_cell(r['test_auc']):>15}  {_cell(r['test_f1']):>15}"
        )
    mean, std = results.iloc[0], results.iloc[1]
    cells = [f"{_cell(mean[c])} ± {_cell(std[c])}" for c in ("test_acc", "test_auc", "test_f1")]
    lines.append(f"{'mean ± std':>11}  {cells[0]:>15}  {cells[1]:>15}  {cells[2]:>15}")
    return "\n".join(lines)
