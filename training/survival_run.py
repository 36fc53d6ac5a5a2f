"""The survival task kind: data preparation, one fold's training and the run's summary (docs/survival.md §7).

:class:`SurvivalKind` plugs into the stages of :mod:`training.experiment` (see :mod:`training.task_kind`):

* :meth:`SurvivalKind.prepare_data` checks everything before any training -- the survival CSV
  (:func:`datasets.survival.read_survival_csv`), the bins, the case-level split files (cases in the CSV,
  no case in two parts), feature files (``--skip-missing`` drops missing slides with a warning; a case
  left without slides is an error) and every slide of the used cases
  (:func:`training.run_checks.check_every_slide`) -- and builds one cached
  :class:`datasets.case_bag.CaseBagDataset`.
* :meth:`SurvivalKind.run_fold` trains one fold (:func:`training.survival_loop.fit_survival`, inside the
  fold body every kind shares, :func:`training.fold.train_and_record_fold`), restores the best state,
  saves the checkpoint and writes the per-case predictions, the input record and the fold's row (last,
  marking it finished).
* :meth:`SurvivalKind.finish` writes ``summary.csv`` / ``results.csv`` (mean and population std of the
  c-index and IBS) and ``km_test.png`` from the test predictions of all folds.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from datasets.case_bag import CaseBagDataset
from datasets.features import FeatureLayout, missing_feature_slides, read_slide_bag
from datasets.splits import PARTS, Split, read_split
from datasets.survival import (
    SURVIVAL_COLUMNS,
    SURVIVAL_SPLIT_LABEL,
    SurvivalCase,
    SurvivalTable,
    SurvivalTaskSpec,
    bin_index,
    bin_labels,
    read_survival_csv,
    survival_split_path,
    survival_task,
)
from models.registry import is_survival_model, survival_models, uses_text_tower
from training import results as res
from training.config import RunConfig
from training.fingerprints import fold_inputs
from training.fold import FoldSteps, train_and_record_fold
from training.run_checks import check_every_slide, check_feature_dim, feature_layout, limit_split
from training.survival_loop import evaluate_survival, fit_survival
from training.survival_losses import build_survival_loss, cases_per_step
from training.survival_report import (
    SURVIVAL_METRIC_COLUMNS,
    format_survival_table,
    km_split,
    plot_kaplan_meier,
    write_survival_predictions,
)
from utils.errors import InputError, listed
from utils.run_logging import RunLog


@dataclass
class CaseFold:
    """Positions in the shared case dataset of one fold's train/val/test cases (dataset-CSV order)."""

    train: list[int]
    val: list[int]
    test: list[int]


@dataclass
class SurvivalData:
    """Everything the folds of a survival run read."""

    task: SurvivalTaskSpec
    table: SurvivalTable
    dataset: CaseBagDataset
    folds: dict[int, CaseFold]
    dropped: list[str] = field(default_factory=list)
    csv_rows: dict[str, list] = field(default_factory=dict)  # slide -> [case_id, months, censorship, mag]

    @property
    def layout(self) -> FeatureLayout:
        return self.dataset.layout

    @property
    def cases(self) -> list[SurvivalCase]:
        return self.dataset.cases

    def fold_cases(self, fold: int) -> dict[str, list[str]]:
        """Case ids of each part of ``fold``."""
        idx = self.folds[fold]
        return {part: [self.dataset.case_ids[i] for i in getattr(idx, part)] for part in PARTS}

    def fold_split(self, fold: int) -> dict[str, list[str]]:
        """Slide ids of each part of ``fold`` (its cases' slides, in case order)."""
        idx = self.folds[fold]
        return {part: [s for i in getattr(idx, part) for s in self.cases[i].slides] for part in PARTS}

    def labels_record(self) -> dict:
        return {"n_bins": self.task.n_bins, "bin_cuts": list(self.task.bin_cuts)}


def _read_case_splits(config: RunConfig, task: SurvivalTaskSpec, table: SurvivalTable) -> dict[int, Split]:
    """Read and check the case-level split file of every fold to run."""
    root = config.resolve_path(config.splits_root)
    folder = survival_split_path(root, task.name, 0).parent
    if not folder.is_dir():
        raise InputError(
            f"split folder not found: {folder} (make it with create_splits.py --survival --task {task.name}, "
            "or point --splits_root at one)"
        )
    known = set(table.by_id())
    splits = {}
    for fold in config.fold_range:
        path = survival_split_path(root, task.name, fold)
        if not path.is_file():
            raise InputError(
                f"split file not found: {path} (fold {fold} of --k {config.k}; make it with "
                "create_splits.py --survival)"
            )
        split = read_split(path, item="case")
        unknown = list(dict.fromkeys(c for c in split.all_ids() if c not in known))
        if unknown:
            raise InputError(
                f"{path}: {len(unknown)} case id(s) not in {table.path}: {listed(unknown)} "
                "(survival splits list case ids, docs/survival.md §4)"
            )
        both = sorted(set(split.val) & set(split.test))
        if both:
            raise InputError(f"{path}: case(s) {listed(both)} in both val and test")
        splits[fold] = split
    return splits


class SurvivalKind:
    """Survival runs (docs/survival.md §7)."""

    name = "survival"
    metric_columns = SURVIVAL_METRIC_COLUMNS

    def run_dir(self, config: RunConfig) -> Path:
        """``results_dir/<task>/<extractor>/survival/<task>_<extractor>_<model>_survival_s<seed>``."""
        return config.run_folder(SURVIVAL_SPLIT_LABEL)

    def check_model(self, config: RunConfig) -> None:
        if not is_survival_model(config.model_type):
            raise InputError(
                f"--model_type {config.model_type!r} is not a survival model; task {config.task} is a survival "
                f"task (its dataset CSV has survival_months), choose one of: {', '.join(survival_models())}"
            )

    def resolve(self, config: RunConfig) -> RunConfig:
        return config  # the prompt file is text_prompt/HiLa/<task>.json; --LLM does not apply

    def task(self, config: RunConfig, table: SurvivalTable) -> SurvivalTaskSpec:
        return survival_task(config.task, table, config.resolve_path(config.prompt_dir), config.n_bins)

    def prepare_data(self, config: RunConfig, log: RunLog) -> SurvivalData:
        """Check all inputs of a survival run (one-line InputError each) and build the case dataset."""
        csv_path = Path(config.resolve_path(config.csv_dir)) / f"{config.task}.csv"
        if not csv_path.is_file():
            raise InputError(
                f"dataset CSV not found: {csv_path} (expected columns {','.join(SURVIVAL_COLUMNS)})"
            )
        table = read_survival_csv(csv_path)
        task = self.task(config, table)
        splits = {f: limit_split(s, config, f) for f, s in _read_case_splits(config, task, table).items()}
        by_id = table.by_id()

        layout = feature_layout(config, task.name)
        order = {c.case_id: i for i, c in enumerate(table.cases)}
        used_ids = sorted({c for split in splits.values() for c in split.all_ids()}, key=order.__getitem__)
        slides = [s for c in used_ids for s in by_id[c].slides]
        missing = missing_feature_slides(layout, slides)
        gone = set(missing)
        cases = {c: by_id[c] for c in used_ids}
        if missing:
            where = f"{layout.low_dir} / {layout.hier_dir}"
            emptied = [c for c in used_ids if all(s in gone for s in by_id[c].slides)]
            if not config.skip_missing:
                lost = f"; cases left without any slide: {listed(emptied)}" if emptied else ""
                raise InputError(
                    f"features missing for {len(missing)} of {len(slides)} slides ({where}): {listed(missing)}"
                    f"{lost}; extract them or pass --skip-missing to drop those slides"
                )
            if emptied:
                raise InputError(
                    f"case(s) {listed(emptied)} have no slide with features ({where}); a case needs at least "
                    "one slide -- extract its features or remove it from the split files"
                )
            log.warning(
                f"--skip-missing: dropping {len(missing)} slide(s) without features ({where}): {listed(missing)}"
            )
            cases = {
                c: dataclasses.replace(case, slides=tuple(s for s in case.slides if s not in gone))
                for c, case in cases.items()
            }
            slides = [s for s in slides if s not in gone]
        bins = bin_index([cases[c].months for c in used_ids], task.bin_cuts)
        bin_of = dict(zip(used_ids, bins.tolist()))
        for fold, split in splits.items():
            empty = [p for p in PARTS if not split.part(p)]
            if empty:
                raise InputError(f"fold {fold}: no cases in {', '.join(empty)}")
            if not any(cases[c].event for c in split.train):
                log.warning(f"fold {fold}: no uncensored training case; the survival loss learns little")

        check_feature_dim(config, layout, slides[0])

        def load_slide(slide_id: str):
            return read_slide_bag(layout, slide_id, expected_dim=config.feature_dim)

        check_every_slide(config, layout, slides, load_slide, log)
        dataset = CaseBagDataset(
            layout,
            [cases[c] for c in used_ids],
            [bin_of[c] for c in used_ids],
            cache_mb=config.cache_mb,
            expected_dim=config.feature_dim,
        )
        position = {c: i for i, c in enumerate(used_ids)}
        folds = {fold: CaseFold(*split.positions(position, order)) for fold, split in splits.items()}
        return SurvivalData(
            task=task,
            table=table,
            dataset=dataset,
            folds=folds,
            dropped=missing if config.skip_missing else [],
            csv_rows={s: table.rows[s] for s in slides},
        )

    def describe(self, config: RunConfig, data: SurvivalData, device: torch.device) -> str:
        events = sum(c.event for c in data.cases)
        return (
            f"task {data.task.name} (survival): {len(data.cases)} cases ({events} events), "
            f"{data.task.n_bins} bins {', '.join(bin_labels(data.task.bin_cuts))} months; loss {config.surv_loss}; "
            f"model {config.model_type}; device {device}"
        )

    def config_extra(self, config: RunConfig, data: SurvivalData) -> dict:
        """The survival bins and loss, stored in ``config.json`` (docs/survival.md §3)."""
        return {
            "task_kind": self.name,
            "survival": {
                "n_bins": data.task.n_bins,
                "bin_cuts_months": list(data.task.bin_cuts),
                "bins": bin_labels(data.task.bin_cuts),
                "loss": config.surv_loss,
                "alpha": config.surv_alpha,
                "cases_per_step": cases_per_step(config.surv_loss, config.surv_batch),
            },
        }

    def fold_inputs(self, config: RunConfig, data: SurvivalData, fold: int, tower: dict | None) -> dict:
        prompt = data.task.prompt_file() if uses_text_tower(config.model_type) else None
        return fold_inputs(
            data.fold_split(fold), data.csv_rows, data.layout, prompt, tower, data.labels_record()
        )

    def run_fold(
        self,
        config: RunConfig,
        data: SurvivalData,
        fold: int,
        run_dir: Path,
        device: torch.device,
        log: RunLog,
        inputs: dict,
        model,
    ) -> dict:
        """Train and evaluate one fold (:func:`training.fold.train_and_record_fold` with the survival
        loss, :func:`training.survival_loop.fit_survival` and
        :func:`training.survival_loop.evaluate_survival`); write checkpoint, per-case predictions, input
        record and row (last)."""
        batch = cases_per_step(config.surv_loss, config.surv_batch)
        train_cases = [data.cases[i] for i in data.folds[fold].train]
        train_months = np.array([c.months for c in train_cases])
        train_censor = np.array([c.censorship for c in train_cases])
        slides_of = {c.case_id: c.slides for c in data.cases}
        steps = FoldSteps(
            loss_fn=build_survival_loss(config.surv_loss, config.surv_alpha),
            fit=functools.partial(fit_survival, batch=batch),
            evaluate=evaluate_survival,
            evaluate_args=(data.task.bin_cuts, train_months, train_censor),
            write_predictions=lambda path, result: write_survival_predictions(path, result, slides_of),
            items="cases",
            start_note=f", {batch} case(s) per step",
            test_summary=lambda row: f"test c-index {row['test_cindex']:.4f} ibs {row['test_ibs']:.4f}",
        )
        return train_and_record_fold(config, data, fold, run_dir, device, log, inputs, model, steps)

    def finish(self, run, rows: list[dict], log: RunLog) -> Path:
        """Summary CSVs, the Kaplan-Meier plot of the pooled test cases and the one-screen table."""
        config = run.config
        summary_path, results_path = res.write_summaries(
            run.run_dir, rows, config.fold_range, config.k, metric_columns=SURVIVAL_METRIC_COLUMNS
        )
        summary, results = res.summary_frames(rows, SURVIVAL_METRIC_COLUMNS)
        pooled = pd.concat(
            [pd.read_csv(res.predictions_path(run.run_dir, int(r["fold"]), "test")) for r in rows],
            ignore_index=True,
        )
        split = km_split(pooled["risk"], pooled["survival_months"], pooled["censorship"])
        km_name = (
            "km_test.png"
            if results_path.name == "results.csv"
            else results_path.stem.replace("results", "km_test") + ".png"
        )
        km_path = results_path.with_name(km_name)
        plot_kaplan_meier(
            km_path,
            pooled["survival_months"],
            pooled["censorship"],
            split,
            f"{config.task} {config.model_type}: test cases of folds {', '.join(str(int(r['fold'])) for r in rows)}",
        )
        log.info("")
        log.info(format_survival_table(summary, results, split.p_value))
        log.info(f"results: {results_path}  (Kaplan-Meier: {km_path.name})")
        return results_path
