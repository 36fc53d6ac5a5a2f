"""Evaluate any model's per-case survival predictions: the field's table (docs/survival.md §6.5).

    python evaluate_survival.py PREDICTIONS.csv|RUN_DIR [--part val|test] [--out DIR]

PREDICTIONS.csv: columns ``fold, part, case_id, risk, survival_months, censorship`` (1 = censored; part
train/val/test; train rows are the fold's training cases, for the censoring weights, and may leave
``risk`` empty), optionally ``survival_0..survival_{n-1}`` with ``--bin_cuts`` for the IBS. RUN_DIR: a
survival run folder of main.py (its fold_<k>/predictions_*.csv and config.json). Writes
``DIR/survival_metrics.csv`` (per fold, mean, std, pooled: c_index, iauc, logrank_p, ibs, ibs_km,
n_cases, n_events, note) and ``DIR/km.png``; prints the table. The computation lives in
:mod:`training.survival.evaluation`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.errors import InputError, run_cli


def _cuts(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated numbers of months expected") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Survival metrics (c-index, iAUC, log-rank, IBS) of per-case predictions."
    )
    p.add_argument(
        "predictions",
        help="a predictions CSV (fold, part, case_id, risk, survival_months, censorship) or a survival run folder",
    )
    p.add_argument(
        "--part",
        choices=("val", "test"),
        default=None,
        help="the part to evaluate (default: test when present, else val)",
    )
    p.add_argument("--out", default=None, help="output folder (default: the run folder, or the CSV's folder)")
    p.add_argument(
        "--bin_cuts",
        type=_cuts,
        default=None,
        help="bin cut points in months of the survival_<b> columns, comma-separated (a run folder's config.json holds them)",
    )
    p.add_argument(
        "--censoring",
        choices=("train", "evaluated"),
        default="train",
        help="censoring weights of iAUC/IBS from each fold's train rows (default; a fold without them is an error) or from the evaluated cases themselves",
    )
    p.add_argument(
        "--km_threshold",
        choices=("evaluated", "train"),
        default="evaluated",
        help="high risk = risk >= the median of the evaluated risks (default, the field's) or of the fold's training risks",
    )
    p.add_argument(
        "--auc_percentiles",
        type=float,
        nargs=3,
        metavar=("LOW", "HIGH", "N"),
        default=(20.0, 81.0, 15),
        help="iAUC grid: np.percentile(evaluated times, np.linspace(LOW, HIGH, N)) (default 20 81 15)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    source = Path(args.predictions)
    low, high, n = args.auc_percentiles
    if not (0 <= low <= high <= 100) or n < 1 or n != int(n):
        raise InputError(
            f"--auc_percentiles {low:g} {high:g} {n:g}: need 0 <= LOW <= HIGH <= 100 and a whole N >= 1"
        )

    from training.survival import evaluation as ev  # heavy imports after parsing

    if source.is_dir():
        if args.bin_cuts is not None:
            raise InputError(
                "--bin_cuts applies to a predictions CSV; a run folder's config.json holds its cuts"
            )
        pred = ev.run_predictions(source)
        out = Path(args.out) if args.out else source
    else:
        pred = ev.read_predictions(source, args.bin_cuts)
        out = Path(args.out) if args.out else source.parent
    options = ev.EvaluationOptions(args.part, args.censoring, args.km_threshold, (low, high, int(n)))
    result = ev.evaluate_predictions(pred, options)
    metrics_path, km_path = out / ev.METRICS_FILE, out / ev.KM_FILE
    ev.write_evaluation(
        result,
        metrics_path,
        km_path,
        f"{source.name}: {result.part} cases of folds {', '.join(map(str, result.folds))}",
    )
    print(ev.format_metrics_table(result))
    print(f"wrote {metrics_path} and {km_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
