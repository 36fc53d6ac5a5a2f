"""Comparison tables over many runs (``collect_results.py`` and ``reproduce.py``).

A run folder (docs/formats.md §6) is identified by its ``config.json`` -- task, feature extractor,
shots, model, variant and seed as the run resolved them -- never by its folder name. Its numbers come
from the results file (mean and population std per metric, as ``main.py`` wrote them) and the summary
file (one row per fold) named by the run's fold range (``results.csv``/``summary.csv``, or the
``_partial_<a>_<b>`` files of a fold subset). Metrics are read generically: every ``test_<metric>``
column except ``test_loss`` (``test_acc``, ``test_auc``, ``test_f1`` of classification runs,
``test_cindex`` of survival runs, ...).

Outputs: markdown with one table per task / extractor / shots and one row per model, variant (and seed,
when a model ran with several); a CSV with the same rows (fractions, unrounded); a CSV with one row per
fold of every run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from models.registry import model_info
from training.config import RunConfig
from training.results import CONFIG_FILE, summary_names
from utils.atomic_io import atomic_write_text
from utils.errors import InputError, one_line

CLASSIFICATION_METRICS = ("acc", "auc", "f1")
PERCENT_METRICS = frozenset(CLASSIFICATION_METRICS)  # shown as percentages; others as fractions
METRIC_TITLES = {"acc": "ACC (%)", "auc": "AUC (%)", "f1": "F1 (%)", "cindex": "C-index", "ibs": "IBS"}
SURVIVAL = "survival"  # task kind of survival runs (config.json ``task_kind``), shown in place of the shots
# Row order of a table; methods not listed follow alphabetically.
METHOD_ORDER = (
    "HiVE_MIL",
    "zero_shot",
    "ViLa_MIL",
    "mean_pool",
    "max_pool",
    "MIL_fc",
    "ABMIL",
    "TransMIL",
    "LiteMIL",
)
ID_COLUMNS = ("task", "extractor", "few_shot", "method", "variant", "seed")
NOT_METRICS = frozenset({"loss"})


@dataclass(frozen=True)
class RunRecord:
    """One finished run: its identity (from config.json) and its numbers."""

    task: str
    extractor: str
    few_shot: int | str  # shots per class; "survival" / "nested3x2" (RunConfig.cv_label): folds not few-shot
    method: str
    variant: str  # "reference", "corrected", "corrected_<switch>-<value>"...; "" for models without variants
    seed: int
    mean: dict[str, float]  # metric name (acc, auc, f1, cindex, ...) -> mean over folds
    std: dict[str, float]
    folds: tuple[dict, ...]  # per-fold rows of the summary file: fold, then its metric columns
    results_path: Path

    @property
    def run_dir(self) -> Path:
        return self.results_path.parent


def metric_names(columns) -> list[str]:
    """``<metric>`` of every ``test_<metric>`` column (``test_loss`` excluded), in column order."""
    return [
        c[len("test_") :] for c in columns if c.startswith("test_") and c[len("test_") :] not in NOT_METRICS
    ]


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except Exception as err:  # pandas raises many types for unreadable CSVs
        raise InputError(f"{path}: cannot read CSV ({one_line(err, with_type=False)})") from None


def read_results_file(path: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(mean, std) by metric name from a results file (rows ``mean`` and ``std``); one error line when
    it is malformed (no metric columns, an incomplete classification set, a missing row, a non-number)."""
    frame = _read_csv(path)
    label_column = (
        "metric" if "metric" in frame.columns else (frame.columns[0] if len(frame.columns) else None)
    )
    names = metric_names(frame.columns)
    present = [m for m in CLASSIFICATION_METRICS if m in names]
    missing = [f"test_{m}" for m in CLASSIFICATION_METRICS if m not in names] if present else []
    if label_column is None or not names or missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing) or 'test_<metric>'}")
    labels = frame[label_column].astype(str).str.strip()
    stats = []
    for wanted in ("mean", "std"):
        hits = frame[labels == wanted]
        if hits.empty:
            raise InputError(f"{path}: no row with {label_column} = {wanted!r}")
        row = hits.iloc[0]
        try:
            stats.append({name: float(row[f"test_{name}"]) for name in names})
        except (TypeError, ValueError) as err:
            raise InputError(f"{path}: non-numeric value in row {wanted!r} ({err})") from None
    return stats[0], stats[1]


def read_summary_file(path: Path) -> tuple[dict, ...]:
    """Per-fold rows (``fold`` plus every metric column) of a summary file; () when it is absent."""
    if not path.is_file():
        return ()
    frame = _read_csv(path)
    fold_column = "folds" if "folds" in frame.columns else "fold"
    if fold_column not in frame.columns:
        raise InputError(f"{path}: missing column folds")
    columns = [
        c for c in frame.columns if c != fold_column and (c.startswith("test_") or c.startswith("val_"))
    ]
    rows = []
    for _, r in frame.iterrows():
        try:
            rows.append({"fold": int(r[fold_column]), **{c: float(r[c]) for c in columns}})
        except (TypeError, ValueError) as err:
            raise InputError(f"{path}: non-numeric value ({err})") from None
    return tuple(rows)


def read_run_config(run_dir: Path) -> tuple[RunConfig, dict]:
    """The configuration stored in ``run_dir/config.json`` and the whole file (one error line when unreadable)."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        return RunConfig.from_dict(payload["config"]), payload
    except FileNotFoundError:
        raise InputError(f"{path}: not found (not a main.py run folder?)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: unreadable run config ({one_line(err)})") from None


def variant_name(config: RunConfig) -> str:
    """The variant a run trained (with its per-switch overrides); "" for models without variants."""
    if not model_info(config.model_type).variants:
        return ""
    return config.variant_tag.lstrip("_") or config.variant


def results_files(config: RunConfig, run_dir: Path) -> tuple[Path, Path]:
    """(summary, results) files of the run's fold range."""
    summary, results = summary_names(config.fold_range, config.k)
    return Path(run_dir) / summary, Path(run_dir) / results


def read_run(run_dir: Path) -> RunRecord | None:
    """The record of a finished run folder; None when it has no results file yet."""
    config, payload = read_run_config(run_dir)
    kind = payload.get("task_kind") or config.task_kind
    summary_path, results_path = results_files(config, run_dir)
    if not results_path.is_file():
        return None
    mean, std = read_results_file(results_path)
    return RunRecord(
        task=str(config.task),
        extractor=config.feature_extractor,
        few_shot=SURVIVAL if kind == SURVIVAL else (config.cv_label or int(config.few_shot_num)),
        method=config.model_type,
        variant=variant_name(config),
        seed=int(config.seed),
        mean=mean,
        std=std,
        folds=read_summary_file(summary_path),
        results_path=results_path,
    )


def find_runs(results_dir: Path, task: str | None = None) -> tuple[list[RunRecord], list[Path]]:
    """Finished runs under ``results_dir`` (``<task>/<extractor>/<shots>/<run>/``; only ``task``'s when
    given, as its config says) and the folders holding a results file but no config.json (skipped)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputError(f"--results_dir {results_dir}: not a folder")
    records = []
    for config_path in sorted(results_dir.glob(f"*/*/*/*/{CONFIG_FILE}")):
        record = read_run(config_path.parent)
        if record is not None and (task is None or record.task == task):
            records.append(record)
    unidentified = sorted(
        {p.parent for p in results_dir.glob("*/*/*/*/results*.csv") if not (p.parent / CONFIG_FILE).is_file()}
    )
    return sort_records(records), unidentified


def _few_shot_key(value) -> tuple[int, float, str]:
    try:
        return (0, float(value), str(value))
    except ValueError:
        return (1, 0.0, str(value))


def _method_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method.lower())


def sort_records(records: list[RunRecord]) -> list[RunRecord]:
    return sorted(
        records,
        key=lambda r: (
            r.task,
            r.extractor,
            _few_shot_key(r.few_shot),
            _method_key(r.method),
            (r.variant not in ("", "reference"), r.variant),
            r.seed,
        ),
    )


def ordered_metrics(records: list[RunRecord]) -> list[str]:
    """Every metric of ``records``: accuracy, AUC, F1 first, the others alphabetically."""
    names = {m for r in records for m in r.mean}
    return [m for m in CLASSIFICATION_METRICS if m in names] + sorted(names - set(CLASSIFICATION_METRICS))


def format_cell(mean: float, std: float, percent: bool = True) -> str:
    """``mean ± std``: percent with two decimals, or a fraction with four; ``nan`` stays ``nan``."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "nan"
    if percent:
        return f"{100 * mean:.2f} ± {100 * std:.2f}"
    return f"{mean:.4f} ± {std:.4f}"


def row_label(record: RunRecord, several_seeds: bool) -> str:
    """``method``, with the variant (when not the reference) and the seed (when there are several)."""
    notes = [record.variant] if record.variant not in ("", "reference") else []
    if several_seeds:
        notes.append(f"s{record.seed}")
    return f"{record.method} ({', '.join(notes)})" if notes else record.method


def markdown_tables(records: list[RunRecord]) -> str:
    """One markdown table per task / extractor / shots; one row per model, variant (and seed)."""
    groups: dict[tuple, list[RunRecord]] = {}
    for record in sort_records(records):
        groups.setdefault((record.task, record.extractor, record.few_shot), []).append(record)
    blocks = []
    for (task, extractor, few_shot), rows in groups.items():
        seeds: dict[tuple[str, str], set[int]] = {}
        for r in rows:
            seeds.setdefault((r.method, r.variant), set()).add(r.seed)
        metrics = ordered_metrics(rows)
        lines = [
            f"## {task} / {extractor} / {few_shot if isinstance(few_shot, str) else f'{few_shot}-shot'}",
            "",
            "| Method | " + " | ".join(METRIC_TITLES.get(m, m) for m in metrics) + " |",
            "|---|" + "---|" * len(metrics),
        ]
        for r in rows:
            cells = [
                format_cell(r.mean[m], r.std[m], m in PERCENT_METRICS) if m in r.mean else "–"
                for m in metrics
            ]
            lines.append(f"| {row_label(r, len(seeds[(r.method, r.variant)]) > 1)} | {' | '.join(cells)} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def table_columns(metrics: list[str]) -> list[str]:
    """Columns of :func:`results_frame` for these metrics."""
    return [*ID_COLUMNS, "folds", *[f"{m}_{stat}" for m in metrics for stat in ("mean", "std")], "path"]


def _identity(r: RunRecord) -> dict:
    return {
        "task": r.task,
        "extractor": r.extractor,
        "few_shot": r.few_shot,
        "method": r.method,
        "variant": r.variant,
        "seed": r.seed,
    }


def results_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per run: identity, number of folds, mean and std of every metric (fractions), results file."""
    metrics = ordered_metrics(records)
    rows = []
    for r in sort_records(records):
        row = {**_identity(r), "folds": len(r.folds) if r.folds else None}
        for m in metrics:
            row[f"{m}_mean"] = r.mean.get(m, float("nan"))
            row[f"{m}_std"] = r.std.get(m, float("nan"))
        rows.append({**row, "path": str(r.results_path)})
    return pd.DataFrame(rows, columns=table_columns(metrics))


def folds_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per fold of every run: identity, fold, every metric column of its summary file, run folder."""
    columns: list[str] = []
    rows = []
    for r in sort_records(records):
        for fold in r.folds:
            columns += [c for c in fold if c != "fold" and c not in columns]
            rows.append({**_identity(r), **fold, "path": str(r.run_dir)})
    return pd.DataFrame(rows, columns=[*ID_COLUMNS, "fold", *columns, "path"])


def write_tables(records: list[RunRecord], markdown: Path, csv: Path, folds_csv: Path | None = None) -> None:
    """Write the markdown, the per-run CSV and (when asked) the per-fold CSV, each atomically."""
    atomic_write_text(markdown, markdown_tables(records))
    atomic_write_text(csv, results_frame(records).to_csv(index=False))
    if folds_csv is not None:
        atomic_write_text(folds_csv, folds_frame(records).to_csv(index=False))
