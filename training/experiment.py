"""The k-fold experiment behind ``main.py``: check inputs, then train, evaluate and record each fold.

Every task kind runs through these stages; what differs between classification and survival (data,
loss, evaluation, metrics, result files) comes from a :class:`training.task_kind.TaskKind`:
:class:`ClassificationKind` below (the functions of this module) or
:class:`training.survival_run.SurvivalKind` (docs/survival.md §7.1). For classification:

Order of work (docs/method.md §8):

1. :func:`run_experiment` checks the flags, takes the run folder's lock (a second run into the same
   folder stops with one line naming the holder) and starts ``log.txt``; every error from here on is
   also written there.
2. :func:`prepare_data` checks every input before any training -- task and prompt classes, dataset CSV,
   split files (slides in the CSV, no slide in two parts, no patient in two parts), feature files
   (``--skip-missing`` drops missing slides with a warning) and then *every slide* of every requested
   fold (keys, shapes, dimensions, alignment, NaN/Inf, stale hierarchical files, 20x patches without a
   5x parent), all problems reported at once -- and builds one bounded-cache
   :class:`datasets.bag_dataset.BagDataset` over all slides the folds use.
3. Finished folds of an earlier run are reused only when the flags (``config.json``) and the fold's
   inputs (``fold_<k>/inputs.json``: split, CSV rows, prompt file, text tower, feature files) are
   unchanged; other folds are (re)trained by :func:`run_fold`: seed reset, model, optimiser, training
   with validation every epoch and early stopping, best state restored, checkpoint with its identity,
   val/test predictions.
4. Summary CSVs (mean and population std) and a one-screen table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from datasets.bag_dataset import BagDataset
from datasets.dataset_csv import read_dataset_csv
from datasets.features import FeatureLayout, missing_feature_slides
from datasets.splits import PARTS, Split, check_split_against_csv, read_split, split_csv_path, split_leakage
from datasets.tasks import TaskSpec, get_task
from models.base import SlideClassifier
from models.registry import build_model, is_survival_model, uses_text_tower
from models.towers.loading import tower_identity
from training import results as res
from training.bag_losses import build_bag_loss
from training.config import RunConfig, validate_config, with_values
from training.evaluation import evaluate
from training.fingerprints import changed_inputs, fold_inputs, read_fold_inputs
from training.fold import FoldSteps, train_and_record_fold
from training.loop import fit
from training.run_checks import check_every_slide as _check_every_slide
from training.run_checks import check_feature_dim as _check_feature_dim
from training.run_checks import check_writable as _check_writable
from training.run_checks import feature_layout as _feature_layout
from training.run_checks import limit_split as _limit_split
from training.survival_run import SurvivalKind
from training.task_kind import SURVIVAL, TaskKind, detect_task_kind
from utils.device import resolve_device
from utils.errors import InputError
from utils.errors import listed as _listed
from utils.locking import FolderLock, LockHeld
from utils.run_logging import RunLog
from utils.seed import configure_determinism, seed_everything


@dataclass
class FoldIndices:
    """Positions in the shared dataset of one fold's train/val/test slides, each part in dataset-CSV order
    (the order the released code's split datasets, and so its samplers, see them)."""

    train: list[int]
    val: list[int]
    test: list[int]


@dataclass
class PreparedData:
    """Everything the folds read: the task, one dataset over all used slides, per-fold positions."""

    task: TaskSpec
    dataset: BagDataset
    folds: dict[int, FoldIndices]
    dropped: list[str] = field(default_factory=list)
    csv_rows: dict[str, list] = field(default_factory=dict)  # slide -> [case_id, label, level0_mag]

    @property
    def layout(self) -> FeatureLayout:
        return self.dataset.layout

    def fold_split(self, fold: int) -> dict[str, list[str]]:
        """Slide ids of each part of ``fold`` (dataset-CSV order)."""
        idx = self.folds[fold]
        return {part: [self.dataset.slide_ids[i] for i in getattr(idx, part)] for part in PARTS}


def _read_fold_splits(config: RunConfig, task: TaskSpec, df) -> dict[int, Split]:
    """Read and check the split file of every fold to run."""
    splits_root = config.resolve_path(config.splits_root)
    folder = split_csv_path(splits_root, task.name, config.few_shot_num, 0).parent
    if not folder.is_dir():
        raise InputError(
            f"split folder not found: {folder} (make it with create_splits.py for task {task.name} "
            f"and --few_shot_num {config.few_shot_num}, or point --splits_root at one)"
        )
    splits = {}
    for fold in config.fold_range:
        path = split_csv_path(splits_root, task.name, config.few_shot_num, fold)
        if not path.is_file():
            raise InputError(
                f"split file not found: {path} (fold {fold} of --k {config.k}; make it with create_splits.py)"
            )
        split = read_split(path)
        unknown = check_split_against_csv(split, df)
        if unknown:
            raise InputError(f"{path}: {len(unknown)} slide(s) not in {task.csv_path}: {_listed(unknown)}")
        splits[fold] = split
    return splits


def run_task(config: RunConfig) -> TaskSpec:
    """The task named by ``config`` (its CSV and prompt folders from ``--csv_dir`` / ``--prompt_dir``)."""
    return get_task(
        config.task,
        csv_dir=config.resolve_path(config.csv_dir),
        prompt_dir=config.resolve_path(config.prompt_dir),
        llm=config.LLM,
    )


def resolve_prompts(config: RunConfig) -> RunConfig:
    """``config`` with ``--LLM`` resolved (released default gpt4o when its file exists, else curated)."""
    return config if config.LLM else with_values(config, LLM=run_task(config).default_llm())


def prepare_data(config: RunConfig, log: RunLog) -> PreparedData:
    """Check all inputs of the run (one-line :class:`InputError` each) and build the shared dataset."""
    task = run_task(config)
    df = read_dataset_csv(task.csv_path, task)
    empty_classes = [c for c in task.class_names if not (df["label"] == c).any()]
    if empty_classes:
        raise InputError(
            f"{task.csv_path}: no slides of class(es) {', '.join(map(repr, empty_classes))}, which the task "
            f"defines (classes: {', '.join(task.class_names)}; for a custom task they are the prompt file's keys)"
        )
    label_of = dict(zip(df["slide_id"].astype(str), df["label_idx"].astype(int)))
    case_of = dict(zip(df["slide_id"].astype(str), df["case_id"].astype(str)))
    csv_rows = {
        str(r.slide_id): [str(r.case_id), str(r.label), int(r.level0_mag)] for r in df.itertuples(index=False)
    }
    raw_splits = _read_fold_splits(config, task, df)
    _check_leakage(config, raw_splits, case_of)
    splits = {fold: _limit_split(s, config, fold) for fold, s in raw_splits.items()}

    layout = _feature_layout(config, task.name)
    used = list(dict.fromkeys(s for split in splits.values() for s in split.all_ids()))
    missing = missing_feature_slides(layout, used)
    if missing:
        where = f"{layout.low_dir} / {layout.hier_dir}"
        if not config.skip_missing:
            raise InputError(
                f"features missing for {len(missing)} of {len(used)} slides ({where}): {_listed(missing)}; "
                "extract them or pass --skip-missing to drop those slides"
            )
        log.warning(
            f"--skip-missing: dropping {len(missing)} slide(s) without features ({where}): {_listed(missing)}"
        )
        gone = set(missing)
        splits = {
            f: Split(*[[s for s in sp.part(p) if s not in gone] for p in PARTS]) for f, sp in splits.items()
        }
        used = [s for s in used if s not in gone]
    for fold, split in splits.items():
        empty = [p for p in PARTS if not split.part(p)]
        if empty:
            raise InputError(
                f"fold {fold}: no slides left in {', '.join(empty)} (split of --few_shot_num {config.few_shot_num})"
            )
        trained = {label_of[s] for s in split.train}
        absent = [name for c, name in enumerate(task.class_names) if c not in trained]
        if absent:
            log.warning(f"fold {fold}: no training slide of class(es) {', '.join(absent)}")

    _check_feature_dim(config, layout, used[0])
    dataset = BagDataset(
        layout, used, [label_of[s] for s in used], cache_mb=config.cache_mb, expected_dim=config.feature_dim
    )
    position = {s: i for i, s in enumerate(used)}
    _check_every_slide(config, layout, used, lambda s: dataset[position[s]], log)
    csv_row = {s: row for row, s in enumerate(df["slide_id"].astype(str))}
    folds = {fold: FoldIndices(*split.positions(position, csv_row)) for fold, split in splits.items()}
    return PreparedData(
        task=task,
        dataset=dataset,
        folds=folds,
        dropped=missing if config.skip_missing else [],
        csv_rows={s: csv_rows[s] for s in used},
    )


def _check_leakage(config: RunConfig, splits: dict[int, Split], case_of: dict[str, str]) -> None:
    """No slide in two parts of a split; no patient in two parts unless ``--allow-patient-overlap``."""
    for fold, split in splits.items():
        slide_problems, patient_problems = split_leakage(split, case_of)
        if slide_problems:
            raise InputError(f"fold {fold} split: {'; '.join(slide_problems)}")
        if patient_problems and not config.allow_patient_overlap:
            raise InputError(
                f"fold {fold} split: {'; '.join(patient_problems)} (patient-level leakage; "
                "--allow-patient-overlap accepts it)"
            )


def effective_bag_loss(config: RunConfig) -> str:
    """The slide loss a run trains with: the released HiVE-MIL always uses cross-entropy
    (``--bag_loss`` has no effect there, docs/divergences.md §11); the corrected variant and every
    other model honour ``--bag_loss``."""
    if config.model_type == "HiVE_MIL" and config.variant == "reference":
        return "ce"
    return config.bag_loss


def seeded_model(config: RunConfig, task: TaskSpec) -> SlideClassifier:
    """Reset every seed (start of a fold, as published), then build the model: the fold's first RNG use."""
    seed_everything(config.seed, config.deterministic)
    return build_model(config.model_type, config.model_spec(task))


def run_fold(
    config: RunConfig,
    data: PreparedData,
    fold: int,
    run_dir: Path,
    device: torch.device,
    log: RunLog,
    inputs: dict,
    model: SlideClassifier | None = None,
) -> dict:
    """Train and evaluate one fold (:func:`training.fold.train_and_record_fold` with cross-entropy or
    ``--bag_loss``, :func:`training.loop.fit` and :func:`training.evaluation.evaluate`); write its
    checkpoint, predictions, input record (``inputs``, see :func:`fold_input_record`) and summary row;
    return the row.

    ``model``, when given, must come straight from :func:`seeded_model` with no RNG use since, so the
    fold is exactly as if it had been built here.
    """
    task = data.task
    model = model if model is not None else seeded_model(config, task)
    steps = FoldSteps(
        loss_fn=build_bag_loss(effective_bag_loss(config), task.num_classes).to(device),
        fit=fit,
        evaluate=evaluate,
        evaluate_args=(task.num_classes,),
        write_predictions=lambda path, result: res.write_predictions(path, result, task.class_names),
        items="slides",
        test_summary=lambda row: (
            f"test acc {row['test_acc']:.4f} auc {row['test_auc']:.4f} f1 {row['test_f1']:.4f}"
        ),
    )
    return train_and_record_fold(config, data, fold, run_dir, device, log, inputs, model, steps)


def fold_input_record(config: RunConfig, data: PreparedData, fold: int, tower: dict | None) -> dict:
    """What fold ``fold``'s results depend on besides the flags (:mod:`training.fingerprints`)."""
    prompt = data.task.prompt_file(config.LLM) if uses_text_tower(config.model_type) else None
    return fold_inputs(data.fold_split(fold), data.csv_rows, data.layout, prompt, tower)


class ClassificationKind:
    """Slide classification (the published task): the functions of this module as a
    :class:`training.task_kind.TaskKind`."""

    name = "classification"
    metric_columns = res.METRIC_COLUMNS

    def run_dir(self, config: RunConfig) -> Path:
        return config.run_dir

    def check_model(self, config: RunConfig) -> None:
        if is_survival_model(config.model_type):
            raise InputError(
                f"--model_type {config.model_type} predicts survival, but task {config.task} is a classification "
                "task (its dataset CSV has no survival_months column; docs/survival.md §2)"
            )

    def resolve(self, config: RunConfig) -> RunConfig:
        return resolve_prompts(config)

    def prepare_data(self, config: RunConfig, log: RunLog) -> PreparedData:
        return prepare_data(config, log)

    def describe(self, config: RunConfig, data: PreparedData, device: torch.device) -> str:
        return (
            f"task {data.task.name}: classes {', '.join(data.task.class_names)}; model {config.model_type}; "
            f"device {device}"
        )

    def config_extra(self, config: RunConfig, data: PreparedData) -> dict:
        return {}

    def fold_inputs(self, config: RunConfig, data: PreparedData, fold: int, tower: dict | None) -> dict:
        return fold_input_record(config, data, fold, tower)

    def run_fold(self, config, data, fold, run_dir, device, log, inputs, model) -> dict:
        return run_fold(config, data, fold, run_dir, device, log, inputs, model=model)

    def finish(self, run: PreparedRun, rows: list[dict], log: RunLog) -> Path:
        _, results_path = res.write_summaries(run.run_dir, rows, run.config.fold_range, run.config.k)
        log.info("")
        log.info(res.format_summary_table(rows))
        log.info(f"results: {results_path}")
        return results_path


CLASSIFICATION_KIND = ClassificationKind()
SURVIVAL_KIND = SurvivalKind()


def task_kind(config: RunConfig) -> TaskKind:
    """The kind of ``config``'s task (``--task_kind``, default: from the dataset CSV's columns)."""
    return SURVIVAL_KIND if detect_task_kind(config) == SURVIVAL else CLASSIFICATION_KIND


@dataclass
class PreparedRun:
    """A run whose inputs are all checked (nothing written yet): what every fold needs."""

    config: RunConfig  # prompts resolved
    data: PreparedData  # or training.survival_run.SurvivalData for survival tasks
    run_dir: Path
    device: torch.device
    tower: dict | None  # text tower identity (vision-language models)
    kind: TaskKind = CLASSIFICATION_KIND


def prepare_run(config: RunConfig, log: RunLog) -> PreparedRun:
    """Check flags, output folder, settings of an existing run folder and every input; write nothing."""
    validate_config(config)
    kind = task_kind(config)
    run_dir = kind.run_dir(config)
    _check_writable(run_dir)
    kind.check_model(config)
    config = kind.resolve(config)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    configure_determinism(config.deterministic)
    device = resolve_device(config.device)
    if not config.overwrite:
        res.check_resumable(run_dir, config)
    data = kind.prepare_data(config, log)
    spec = config.model_spec(data.task)
    tower = tower_identity(spec.tower) if uses_text_tower(config.model_type) else None
    return PreparedRun(config, data, run_dir, device, tower, kind)


def write_run_header(run: PreparedRun, log: RunLog) -> bool:
    """Under the run lock: check the folder's settings again, write ``config.json``, log the header.

    Returns whether finished folds may be reused (False with ``--overwrite``).
    """
    config, data = run.config, run.data
    resuming = False if config.overwrite else res.check_resumable(run.run_dir, config)
    spec = config.model_spec(data.task)
    text_model = uses_text_tower(config.model_type)
    extra = {"device": str(run.device), "run_dir": str(run.run_dir)}
    if text_model:
        extra["prompt_file"] = str(spec.prompt_file)
    extra.update(run.kind.config_extra(config, data))
    res.write_run_config(run.run_dir, config, extra)
    log.info(f"run directory: {run.run_dir}")
    log.info(run.kind.describe(config, data, run.device))
    if text_model:
        log.info(f"prompts: {spec.prompt_file}")
    if effective_bag_loss(config) != config.bag_loss:
        log.info(
            f"notice: --bag_loss {config.bag_loss} has no effect on the released HiVE-MIL "
            "(--variant reference trains with cross-entropy + lambda * HTCL; --variant corrected honours it)"
        )
    return resuming


def reusable_fold_row(run: PreparedRun, fold: int, log: RunLog) -> dict | None:
    """The stored row of a finished fold whose inputs are unchanged, else None (saying why, when it changed)."""
    row = res.finished_fold_row(run.run_dir, fold, run.kind.metric_columns)
    if row is None:
        return None
    inputs = run.kind.fold_inputs(run.config, run.data, fold, run.tower)
    changes = changed_inputs(read_fold_inputs(res.fold_inputs_path(run.run_dir, fold)), inputs)
    if changes:
        log.info(f"fold {fold}: inputs changed since it finished ({'; '.join(changes)}); training it again")
        return None
    log.info(f"fold {fold}: finished in an earlier run with the same inputs, reusing its results")
    return row


def train_fold(run: PreparedRun, fold: int, log: RunLog, model: SlideClassifier | None = None) -> dict:
    """Train fold ``fold`` under its own lock (``.fold_<k>.lock`` in the run folder): a fold is never
    trained twice at once, also when several workers share one run."""
    lock = FolderLock(run.run_dir, name=f".fold_{fold}.lock")
    try:
        lock.acquire()
    except LockHeld as err:
        raise InputError(f"fold {fold}: {err}") from None
    try:
        inputs = run.kind.fold_inputs(run.config, run.data, fold, run.tower)
        if model is None and run.kind is not CLASSIFICATION_KIND:
            model = seeded_model(run.config, run.data.task)  # classification's run_fold builds its own
        return run.kind.run_fold(run.config, run.data, fold, run.run_dir, run.device, log, inputs, model)
    finally:
        lock.release()


def finish_run(run: PreparedRun, rows: list[dict], log: RunLog) -> Path:
    """Write the summary CSVs of ``rows`` (and, for survival, the Kaplan-Meier plot) and log the table;
    returns the results file."""
    return run.kind.finish(run, rows, log)


def run_experiment(config: RunConfig, log: RunLog | None = None) -> list[dict]:
    """Run (or resume) every fold of ``config`` and write the summaries; return the fold rows.

    Nothing is written before every input has been checked. Then the run folder is created and locked
    (:class:`utils.locking.FolderLock`): a second run into the same folder stops with one line naming
    the holder. An input error of a rerun is also appended to the existing folder's ``log.txt``.
    """
    log = log or RunLog(quiet=config.quiet)
    run_dir: Path | None = None
    lock: FolderLock | None = None
    lock_refused = False
    try:
        run_dir = task_kind(config).run_dir(config)
        run = prepare_run(config, log)
        # The first fold's model now, so model errors (type, tower, prompts) come before any output.
        first_model: SlideClassifier | None = seeded_model(run.config, run.data.task)
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(run_dir)
        try:
            lock.acquire()
        except LockHeld as err:
            lock, lock_refused = None, True
            raise InputError(f"{err}; wait for it to finish or use another --results_dir") from None
        log.attach(run_dir / "log.txt")
        resuming = write_run_header(run, log)
        rows = []
        for fold in run.config.fold_range:
            row = reusable_fold_row(run, fold, log) if resuming else None
            if row is None:
                row = train_fold(run, fold, log, model=first_model)
                first_model = None
            rows.append(row)
        finish_run(run, rows, log)
        return rows
    except InputError as err:
        if run_dir is not None and run_dir.is_dir() and not log.attached and not lock_refused:
            log.attach(run_dir / "log.txt")  # a rerun's error goes to its existing log too
        log.info(f"error: {err}", console=False)
        raise
    finally:
        if lock is not None:
            lock.release()
        log.close()
