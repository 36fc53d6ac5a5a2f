"""From a finished ``main.py`` run to a model, its prompts and one slide.

A run folder (``results_dir/<task>/<extractor>/<shots>/<exp_code>_s<seed>/``) holds ``config.json``
(the resolved run config under ``"config"``) and ``s_<fold>_checkpoint.pt`` per fold. The model is
rebuilt from the config exactly as training built it (:func:`models.registry.build_model`: same text
tower, prompts and variant switches) and the fold's learned state is loaded into it.

Reads the run folder through :mod:`training.config` (``RunConfig``) and :mod:`training.results` (file
names); imports nothing else of training. Used by ``predict.py`` (:mod:`inference.prediction`),
``explain.py`` and the notebook.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from datasets.bag import SlideBag
from datasets.prompt_file import HierarchicalPrompts, load_prompt_file
from datasets.survival import SurvivalTaskSpec
from datasets.tasks import TaskSpec
from training.config import RunConfig
from training.results import CONFIG_FILE, checkpoint_path
from utils.errors import InputError


@dataclass(frozen=True)
class RunFiles:
    """The config and checkpoint files of one fold of a run."""

    config: Path
    checkpoint: Path


def resolve_run_files(
    path: str | Path, fold: int = 0, checkpoint: str | Path | None = None, config: str | Path | None = None
) -> RunFiles:
    """Find config and checkpoint from a run folder, a ``config.json`` or a checkpoint file.

    ``config``/``checkpoint`` override what ``path`` implies; both files must exist (one-line errors).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such run folder, config.json or checkpoint")
    if fold < 0:
        raise InputError(f"--fold must be >= 0, got {fold}")
    if path.is_dir():
        run_dir, implied_config, implied_ckpt = path, path / CONFIG_FILE, checkpoint_path(path, fold)
    elif path.suffix.lower() == ".json":
        run_dir, implied_config, implied_ckpt = path.parent, path, checkpoint_path(path.parent, fold)
    else:
        run_dir, implied_config, implied_ckpt = path.parent, path.parent / CONFIG_FILE, path
    config_path = Path(config).expanduser() if config is not None else implied_config
    ckpt_path = Path(checkpoint).expanduser() if checkpoint is not None else implied_ckpt
    if not config_path.is_file():
        raise InputError(f"{config_path}: run config not found (pass the run folder or --config config.json)")
    if not ckpt_path.is_file():
        raise InputError(f"{ckpt_path}: checkpoint not found (fold {fold} of run {run_dir})")
    return RunFiles(config=config_path, checkpoint=ckpt_path)


def read_run_config(path: str | Path, model_types: Collection[str] | None = None) -> RunConfig:
    """The :class:`RunConfig` stored in a run's ``config.json`` (or a bare config dict).

    ``model_types``: the model types the caller can handle (e.g. ``("HiVE_MIL",)`` to explain a run);
    None accepts every registered model. Anything else is one :class:`InputError` line.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read run config ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with the run config")
    try:
        config = RunConfig.from_dict(data)
    except TypeError as err:
        raise InputError(f"{path}: not a run config ({err})") from None
    if not config.task:
        raise InputError(f"{path}: the run config names no task")
    if model_types is not None and config.model_type not in model_types:
        wanted = " or ".join(model_types)
        raise InputError(
            f"{path}: model_type {config.model_type!r} is not {wanted}; only {wanted} runs can be explained"
        )
    from models.registry import available_models

    if config.model_type not in available_models():
        raise InputError(
            f"{path}: model_type {config.model_type!r} is not a known model ({', '.join(available_models())})"
        )
    return config


def load_run(
    results_dir_or_config: str | Path,
    fold: int = 0,
    checkpoint: str | Path | None = None,
    config: str | Path | None = None,
    device="cpu",
    model_types: Collection[str] | None = None,
):
    """Rebuild a run's model and load fold ``fold``'s checkpoint; returns ``(model, task, config)``.

    Args:
        results_dir_or_config: the run folder, its ``config.json``, or a checkpoint file next to one.
        fold: which ``s_<fold>_checkpoint.pt`` to load (ignored when ``checkpoint`` is given).
        checkpoint: explicit checkpoint file (ours or a released one, see :mod:`models.checkpoint`); one
            whose stored identity disagrees with the run config is refused.
        config: explicit ``config.json``.
        device: where the model goes (eval mode).
        model_types: model types accepted (:func:`read_run_config`; None: any).
    """
    files = resolve_run_files(results_dir_or_config, fold, checkpoint, config)
    run_config = read_run_config(files.config, model_types)
    task = run_task(run_config, files.config)
    model = load_fold_model(run_config, task, files.checkpoint, device)
    return model, task, run_config


def is_survival_run(config: RunConfig) -> bool:
    """Whether the run's model predicts survival (the registry's fact, :class:`models.registry.ModelInfo`)."""
    from models.registry import model_info

    return model_info(config.model_type).survival


def run_task(config: RunConfig, config_file: str | Path | None = None) -> TaskSpec:
    """The task spec the run was trained with.

    Classification: :meth:`RunConfig.task_spec`. Survival (docs/survival.md §3): the survival bins the
    run stored in its ``config.json`` (``survival.bin_cuts_months``), so a later change of the dataset
    CSV does not change the model's bins; without that record, the cuts of the task's CSV.
    """
    if not is_survival_run(config):
        return config.task_spec()
    from datasets.survival import bin_class_names, read_survival_csv, survival_task

    csv_path = Path(config.resolve_path(config.csv_dir)) / f"{config.task}.csv"
    prompt_dir = config.resolve_path(config.prompt_dir)
    cuts = None
    if config_file is not None:
        try:
            saved = json.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"{config_file}: cannot read run config ({err})") from None
        record = saved.get("survival") if isinstance(saved, dict) else None
        cuts = record.get("bin_cuts_months") if isinstance(record, dict) else None
    if cuts is None:
        if not csv_path.is_file():
            raise InputError(
                f"{config_file}: no survival bins recorded and no dataset CSV {csv_path} to cut them from"
            )
        return survival_task(config.task, read_survival_csv(csv_path), prompt_dir, config.n_bins)
    try:
        cuts = tuple(float(c) for c in cuts)
    except (TypeError, ValueError):
        raise InputError(f"{config_file}: survival.bin_cuts_months must be a list of numbers") from None
    classes = bin_class_names(len(cuts) + 1)
    return SurvivalTaskSpec(
        name=config.task,
        class_names=classes,
        csv_path=csv_path,
        prompt_dir=Path(prompt_dir),
        label_dict={c: i for i, c in enumerate(classes)},
        bin_cuts=cuts,
    )


def explanation_kind(config: RunConfig, source: str = "") -> str:
    """What ``explain.py`` shows for the run's model: the registry's ``patch_scores`` fact (``"class
    evidence"``, ``"transport plan"`` or ``"attention"``); a model without per-patch scores is one
    :class:`InputError` line."""
    from models.registry import model_info

    kind = model_info(config.model_type).patch_scores
    if kind is None:
        raise InputError(
            f"{source}model_type {config.model_type!r} has no per-patch scores to explain (HiVE_MIL, HiLa and "
            "the attention baselines have)"
        )
    return kind


def load_fold_model(config: RunConfig, task: TaskSpec, checkpoint: str | Path, device="cpu"):
    """The run's model built as training built it, with ``checkpoint`` loaded (its stored identity must
    match the config), on ``device`` in eval mode."""
    from models.checkpoint import load_checkpoint, model_identity
    from models.registry import build_model

    spec = config.model_spec(task)
    model = build_model(config.model_type, spec)
    load_checkpoint(model, checkpoint, model_identity(config.model_type, spec))
    return model.to(device).eval()


def load_prompts(config: RunConfig, task: TaskSpec) -> HierarchicalPrompts:
    """The run's hierarchical prompts (the texts behind the model's description columns)."""
    return load_prompt_file(
        task.prompt_file(config.LLM),
        class_names=task.class_names,
        n_coarse=config.hivemil.num_low_mag_texts,
        n_fine_per_coarse=config.hivemil.num_high_mag_subtexts,
    )


def first_test_slide(config: RunConfig, task: TaskSpec, fold: int = 0) -> str:
    """The first test slide of fold ``fold``'s split file (survival runs: the first slide of its first
    test case)."""
    from datasets.splits import read_split, split_csv_path

    path = split_csv_path(config.resolve_path(config.splits_root), task.name, config.few_shot_num, fold)
    if isinstance(task, SurvivalTaskSpec):
        from datasets.survival import read_survival_csv, survival_split_path

        path = survival_split_path(config.resolve_path(config.splits_root), task.name, fold)
        split = read_split(path, item="case")
        if not split.test:
            raise InputError(f"{path}: no test cases")
        return read_survival_csv(task.csv_path).by_id()[split.test[0]].slides[0]
    split = read_split(path)
    if not split.test:
        raise InputError(f"{path}: no test slides")
    return split.test[0]


def _slide_row(task: TaskSpec, slide_id: str) -> tuple[int, int]:
    """(label index, level0_mag) of ``slide_id`` in the task's dataset CSV (survival: label -1)."""
    if isinstance(task, SurvivalTaskSpec):
        from datasets.survival import read_survival_csv

        rows = read_survival_csv(task.csv_path).rows
        if slide_id not in rows:
            raise InputError(
                f"--slide {slide_id}: not in {task.csv_path} (task {task.name}, {len(rows)} slides)"
            )
        return -1, int(rows[slide_id][3])
    from datasets.dataset_csv import read_dataset_csv

    frame = read_dataset_csv(task.csv_path, task)
    rows = frame[frame["slide_id"].astype(str) == str(slide_id)]
    if rows.empty:
        raise InputError(
            f"--slide {slide_id}: not in {task.csv_path} (task {task.name}, {len(frame)} slides)"
        )
    row = rows.iloc[0]
    return int(row["label_idx"]), int(row["level0_mag"])


def load_slide(config: RunConfig, task: TaskSpec, slide_id: str) -> SlideBag:
    """Read one slide of the run's task (label and ``level0_mag`` from the dataset CSV into the bag;
    a survival task's slide gets label -1: its outcome is the case's, not the slide's)."""
    from datasets.features import FeatureLayout, missing_feature_slides, read_slide_bag
    from datasets.slide_check import hierarchy_staleness

    label, level0_mag = _slide_row(task, str(slide_id))
    layout = FeatureLayout(
        config.resolve_path(config.data_root_dir),
        task.name,
        config.feature_extractor,
        config.low_mag,
        config.high_mag,
    )
    if missing_feature_slides(layout, [str(slide_id)]):
        raise InputError(
            f"--slide {slide_id}: feature files missing ({layout.low_file(slide_id)} / {layout.hier_file(slide_id)})"
        )
    stale = hierarchy_staleness(layout, str(slide_id))
    if stale is not None:
        raise InputError(stale)
    bag = read_slide_bag(layout, str(slide_id), label, expected_dim=config.feature_dim)
    bag.meta["level0_mag"] = level0_mag
    return bag
