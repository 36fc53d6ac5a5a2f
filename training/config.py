"""Typed run configuration of ``main.py``: every flag is declared once, on a :class:`RunConfig` field.

Flag names and defaults follow the published ``main.py`` (underscores and hyphens exactly as there);
field names are the argparse ``dest`` names. The parser is derived from the fields
(:func:`utils.flags.add_flags`). Differences from the published defaults: ``--LLM`` defaults to
``gpt4o`` only where that prompt file exists, else to ``curated`` (our prompts; see
:func:`datasets.tasks.resolve_llm`); ``--device`` defaults to ``auto`` (CUDA when available, else
CPU); ``--feature_extractor`` accepts any tower name or open_clip spec.

Task-specific defaults (the generated ``demo`` task) are applied by the CLI through ``task_defaults``
(:func:`parse_config`): this module knows no task by name.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from datasets.slide_check import DEFAULT_MAX_ORPHAN_FRAC
from datasets.tasks import TaskSpec, get_task
from models.hila.options import HiLaOptions
from models.hivemil.options import SWITCHES, VARIANTS, HiveMILOptions, VariantSwitches
from models.registry import ModelSpec, model_info
from models.towers.source import TowerSource
from training.early_stopping import ES_METRICS
from utils.cli_flags import AmpFlags, DataRootFlags, DeviceFlags, ThreadFlags, TowerFlags
from utils.device import resolve_device
from utils.errors import InputError
from utils.flags import (
    add_flags,
    flag,
    flag_from,
    flag_keys,
    flag_values,
    given_values,
    resumable_keys,
    with_flag_values,
)
from utils.flags import both_spellings as _both  # a project-added flag with _ and - spellings
from utils.magnification import magnification_arg, magnification_label, magnification_value
from utils.paths import resolve_project_path

FLOAT32_MAX = 3.4028234663852886e38  # the optimiser's step sizes must fit the parameters' dtype
GROUPS = {
    "published": "published flags",
    "hivemil": "HiVE-MIL options",
    "variant": "HiVE-MIL variant: released-code behaviours (README, Known divergences)",
    "run": "run control (added by this project)",
    "survival": "survival tasks and the HiLa-style model (docs/survival.md)",
    "cv": "cross-validation (added by this project; README, Nested cross-validation)",
}

TASK_KINDS = ("auto", "classification", "survival")
CV_MODES = ("given", "nested")
SURVIVAL_LOSS_NAMES = ("nll", "cox")


@dataclass
class RunConfig:
    """Every setting of one ``main.py`` run (field names = argparse dest names)."""

    # --- published flags ---
    data_root_dir: str | None = flag_from(DataRootFlags, "data_root_dir", group="published")
    max_epochs: int = flag("--max_epochs", default=50, group="published", help="maximum number of epochs")
    lr: float = flag("--lr", default=1e-4, group="published", help="learning rate")
    feature_extractor: str = flag(
        "--feature_extractor", default="plip", group="published",
        help="feature extractor / text tower: plip, quiltnet, conch, or an open_clip spec",
    )  # fmt: skip
    feature_dim: int = flag("--feature_dim", default=512, group="published", help="feature dimension")
    few_shot_num: int = flag("--few_shot_num", default=16, group="published", help="shots per class")
    high_mag: str = flag(
        "--high_mag",
        default=magnification_label(HiveMILOptions.high_mag),
        type=magnification_arg,
        group="published",
        help="high magnification (20x or 20)",
    )
    low_mag: str = flag(
        "--low_mag",
        default=magnification_label(HiveMILOptions.low_mag),
        type=magnification_arg,
        group="published",
        help="low magnification (5x or 5)",
    )
    label_frac: float = flag(
        "--label_frac",
        default=1.0,
        group="published",
        help="fraction of training slides used (seeded subset)",
    )
    seed: int = flag("--seed", default=1, group="published", help="random seed, reset at every fold")
    k: int = flag("--k", default=5, group="published", resumable=True, help="number of folds")
    k_start: int = flag(
        "--k_start", default=-1, group="published", resumable=True, help="first fold (-1 = 0)"
    )
    k_end: int = flag(
        "--k_end", default=-1, group="published", resumable=True, help="end fold, exclusive (-1 = k)"
    )
    results_dir: str = flag(
        "--results_dir", default="./results", group="published", resumable=True, help="results directory"
    )
    log_data: bool = flag(
        "--log_data", default=False, group="published", resumable=True, help="log scalars to TensorBoard"
    )
    testing: bool = flag(
        "--testing", default=False, group="published",
        help="debugging, as released: validation and test slides in shuffled order, drawn from the run's "
        "RNG (--variant reference only; a few slides per split: --max_slides)",
    )  # fmt: skip
    early_stopping: bool = flag(
        "--early_stopping", default=False, group="published", help="enable early stopping"
    )
    opt: str = flag("--opt", default="adam", choices=("adam", "sgd"), group="published", help="optimizer")
    drop_out: bool = flag(
        "--drop_out",
        default=False,
        group="published",
        help="dropout p=0.25 (baselines; no effect on HiVE-MIL)",
    )
    model_type: str = flag(
        "--model_type", default="HiVE_MIL", group="published", help="model name in models.registry"
    )
    mode: str = flag(
        "--mode", default="transformer", choices=("transformer",), group="published", help="unused"
    )
    weighted_sample: bool = flag(
        "--weighted_sample", default=False, action=argparse.BooleanOptionalAction, group="published",
        help="class-balanced sampling (survival: over the bin x censorship groups, on by default there)",
    )  # fmt: skip
    reg: float = flag("--reg", default=1e-5, group="published", help="weight decay")
    bag_loss: str = flag(
        "--bag_loss", default="ce", choices=("svm", "ce", "focal"), group="published", help="slide-level loss"
    )
    task: str | None = flag(
        "--task", default=None, type=str, group="published",
        help="tcga_brca, tcga_nsclc, tcga_rcc, demo, or a custom task",
    )  # fmt: skip
    text_prompt: str | None = flag("--text_prompt", default=None, type=str, group="published", help="unused")
    prototype_number: int | None = flag(
        "--prototype_number", default=None, type=int, group="published", help="ViLa-MIL prototypes (16)"
    )
    device: str = flag_from(DeviceFlags, "device", group="published")
    LLM: str | None = flag(  # noqa: N815 - published flag name
        "--LLM", default=None, type=str, group="published",
        help="prompt folder text_prompt/HiVE_MIL/<LLM>", default_text="gpt4o if present, else curated",
    )  # fmt: skip

    # --- HiVE-MIL options (published names; declared on HiveMILOptions) ---
    hivemil: HiveMILOptions = field(default_factory=HiveMILOptions)

    # --- HiVE-MIL variant and per-behaviour switches (None = the variant's value) ---
    variant: str = flag(
        "--variant", default="reference", choices=VARIANTS, group="variant",
        help="reference: reproduce the released code; corrected: fix every listed behaviour",
    )  # fmt: skip
    text_encoding: str | None = flag(
        "--text-encoding", default=None, type=str, choices=SWITCHES["text_encoding"], group="variant",
        help="how prompts pass the text tower",
    )  # fmt: skip
    hier_attention: str | None = flag(
        "--hier-attention", default=None, type=str, choices=SWITCHES["hier_attention"], group="variant",
        help="all-to-all or parent-child attention between scales",
    )  # fmt: skip
    attn_residual: str | None = flag(
        "--attn-residual", default=None, type=str, choices=SWITCHES["attn_residual"], group="variant",
        help="attention residual added twice or once",
    )  # fmt: skip
    logit_scale: str | None = flag(
        "--logit-scale", default=None, type=str, choices=SWITCHES["logit_scale"], group="variant",
        help="slide logits times logit_scale or its exponential",
    )  # fmt: skip
    htcl_negatives: str | None = flag(
        "--htcl-negatives", default=None, type=str, choices=SWITCHES["htcl_negatives"], group="variant",
        help="HTCL negative term",
    )  # fmt: skip
    padded_children: str | None = flag(
        "--padded-children", default=None, type=str, choices=SWITCHES["padded_children"], group="variant",
        help="zero-padded 20x children as graph nodes or masked",
    )  # fmt: skip

    # --- run control added by this project ---
    text_tower: str | None = flag_from(TowerFlags, "text_tower", group="run")
    skip_missing: bool = flag(
        *_both("skip_missing"), default=False, group="run", help="drop slides without features (warns)"
    )
    cache_mb: float = flag(
        *_both("cache_mb"), default=2048.0, group="run", resumable=True, help="bag cache size in MB"
    )
    splits_root: str = flag(*_both("splits_root"), default="splits", group="run", help="split folder root")
    csv_dir: str = flag(*_both("csv_dir"), default="dataset_csv", group="run", help="dataset CSV folder")
    prompt_dir: str = flag(*_both("prompt_dir"), default="text_prompt", group="run", help="prompt folder")
    patience: int = flag("--patience", default=10, group="run", help="early-stopping patience in epochs")
    stop_epoch: int = flag(
        *_both("stop_epoch"), default=0, group="run", help="early stop only at epochs past this one (0-based)"
    )
    es_metric: str = flag(
        *_both("es_metric"), default="error", choices=ES_METRICS, group="run",
        help="early stopping watches the validation error (released) or the validation loss (CE + lambda*HTCL)",
    )  # fmt: skip
    num_workers: int = flag(
        *_both("num_workers"), default=1, group="run", resumable=True, help="prefetch threads"
    )
    prefetch_depth: int = flag(
        *_both("prefetch_depth"), default=2, group="run", resumable=True, help="bags loaded ahead (0: off)"
    )
    chunk_size: int = flag(
        *_both("chunk_size"), default=0, group="run",
        help="instance baselines: train on random chunks of at most N instances of a slide, each with the "
        "slide's label; slide-level metrics from the mean chunk probability, plus chunk-level accuracy "
        "(0: whole slides; training/chunks.py)",
    )  # fmt: skip
    max_slides: int | None = flag(
        *_both("max_slides"), default=None, type=int, group="run", help="debug: first N slides per split part"
    )
    amp: str = flag_from(AmpFlags, "amp", group="run")
    threads: int = flag_from(ThreadFlags, "threads", group="run", resumable=True)
    deterministic: bool = flag(
        *_both("no_deterministic"), default=True, group="run", help="allow non-deterministic kernels"
    )
    allow_patient_overlap: bool = flag(
        *_both("allow_patient_overlap"), default=False, group="run",
        help="accept splits where one patient (case_id) has slides in two parts (patient-level leakage)",
    )  # fmt: skip
    max_orphan_frac: float = flag(
        *_both("max_orphan_frac"), default=DEFAULT_MAX_ORPHAN_FRAC, group="run",
        help="refuse slides where more than this fraction of 20x patches has no 5x parent "
        "(a wrong level0_mag); above 0.05 a warning",
    )  # fmt: skip
    overwrite: bool = flag(
        "--overwrite", default=False, group="run", resumable=True, help="retrain every fold even if finished"
    )
    quiet: bool = flag(
        "--quiet",
        default=False,
        group="run",
        resumable=True,
        help="no progress bars, only warnings and errors",
    )

    # --- survival tasks (docs/survival.md) ---
    task_kind: str = flag(
        *_both("task_kind"), default="auto", choices=TASK_KINDS, group="survival",
        help="auto: survival when the task's dataset CSV has a survival_months column, else classification",
    )  # fmt: skip
    surv_loss: str = flag(
        *_both("surv_loss"), default="nll", choices=SURVIVAL_LOSS_NAMES, group="survival",
        help="discrete-time NLL (Zadeh & Schmid 2020) or Cox partial likelihood",
    )  # fmt: skip
    surv_alpha: float = flag(
        *_both("alpha_surv"), *_both("surv_alpha"), default=0.15, group="survival",
        help="NLL extra weight of the uncensored term (MCAT/Patch-GCN's --alpha_surv; --surv_alpha is an alias)",
        default_text="0.0 in survival runs, the published value; the stored field default 0.15 keeps the "
        "config.json of earlier runs resumable",
    )  # fmt: skip
    gc: int = flag(
        "--gc", default=1, group="survival",
        help="gradient accumulation: loss batches (--surv_batch cases each) per optimiser step "
        "(MCAT/Patch-GCN's --gc; survival runs: 32 for nll, 1 for cox unless given)",
    )  # fmt: skip
    ibs_horizon: float = flag(
        *_both("ibs_horizon"), default=0.0, group="survival",
        help="end of the IBS time grid in months (0: the last survival bin cut)",
    )  # fmt: skip
    n_bins: int = flag(
        *_both("n_bins"), default=4, group="survival",
        help="survival bins, cut at quantiles of the uncensored times (4: quartiles)",
    )  # fmt: skip
    surv_batch: int = flag(
        *_both("surv_batch"), default=0, group="survival",
        help="cases per optimiser step (0: 1 for nll, 16 for cox)",
    )  # fmt: skip
    hila: HiLaOptions = field(default_factory=HiLaOptions)  # HiLa flags (declared on HiLaOptions)

    # --- cross-validation (training.nested) ---
    cv: str = flag(
        *_both("cv"), default="given", choices=CV_MODES, group="cv",
        help="given: the split files; nested: --k case-level stratified outer folds over the dataset CSV, "
        "each selecting its training length (and with --inner_grid lr / weight decay) on --inner_k inner folds",
    )  # fmt: skip
    inner_k: int = flag(
        *_both("inner_k"), default=3, group="cv", help="--cv nested: inner folds per outer training part"
    )
    inner_grid: bool = flag(
        *_both("inner_grid"), default=False, group="cv",
        help="--cv nested: the inner folds also choose lr (x1/3, x1, x3 of --lr) and weight decay (1e-5, 1e-3)",
    )  # fmt: skip

    # ---- derived values ----
    @property
    def fold_range(self) -> range:
        """Folds to run: k_start..k_end-1 (-1 means 0 and k, as published)."""
        start = 0 if self.k_start == -1 else self.k_start
        end = self.k if self.k_end == -1 else self.k_end
        return range(start, end)

    @property
    def exp_code(self) -> str:
        """``<task>_<extractor>_<model_type>_<few_shot_num>`` (published experiment code)."""
        return self.experiment_code()

    def experiment_code(self, shots: str | int | None = None) -> str:
        """:attr:`exp_code` with ``shots`` in place of ``--few_shot_num`` (e.g. ``survival``)."""
        label = self.few_shot_num if shots is None else shots
        return f"{self.task}_{self.feature_extractor}_{self.model_type}_{label}"

    @property
    def variant_tag(self) -> str:
        """``""`` for the reference variant; else ``_corrected`` and/or one ``_<switch>-<value>`` per
        switch that differs from its variant's value, e.g. ``_corrected_text-encoding-released``."""
        if not model_info(self.model_type).variants:
            return ""
        tag = "" if self.variant == "reference" else f"_{self.variant}"
        defaults = VariantSwitches.for_variant(self.variant)
        for name, value in self.switches().to_dict().items():
            if value != getattr(defaults, name):
                tag += f"_{name.replace('_', '-')}-{value}"
        return tag

    @property
    def run_dir(self) -> Path:
        """``results_dir/<task>/<extractor>/<shots>/<exp_code>_s<seed><variant_tag>`` (published layout,
        extended so that runs of different variants never share a folder)."""
        return self.run_folder()

    def run_folder(self, shots: str | int | None = None) -> Path:
        """:attr:`run_dir` with ``shots`` in place of ``--few_shot_num`` (survival runs: ``survival``).

        A ``--cv nested`` run uses no split files and no shot number: its label is :attr:`cv_label`, so
        it never shares a folder with a run on the given splits or with another number of folds."""
        label = self.cv_label or (self.few_shot_num if shots is None else shots)
        return (
            Path(self.results_dir)
            / str(self.task)
            / self.feature_extractor
            / str(label)
            / f"{self.experiment_code(label)}_s{self.seed}{self.variant_tag}{self.chunk_tag}"
        )

    @property
    def cv_label(self) -> str | None:
        """``nested<k>x<inner_k>`` (``...grid`` with ``--inner_grid``) for a ``--cv nested`` run, else None:
        what its folder and result tables show in place of the shot number."""
        if self.cv != "nested":
            return None
        return f"nested{self.k}x{self.inner_k}{'grid' if self.inner_grid else ''}"

    @property
    def chunk_tag(self) -> str:
        """``_chunk<N>`` with ``--chunk_size N`` (chunked and whole-slide runs never share a folder), else ``""``."""
        return f"_chunk{self.chunk_size}" if self.chunk_size else ""

    @property
    def slide_limit(self) -> int | None:
        """Most slides per split part (``--max_slides``)."""
        return self.max_slides

    @property
    def shuffles_evaluation(self) -> bool:
        """``--testing`` under ``--variant reference``: validation and test loaders shuffle, as released
        (``training.loop.EvalLoaderDraws``); the corrected variant keeps their order."""
        return self.testing and self.variant == "reference"

    def switches(self) -> VariantSwitches:
        """``--variant`` with the per-behaviour overrides applied."""
        return VariantSwitches.for_variant(self.variant, **{name: getattr(self, name) for name in SWITCHES})

    def hivemil_options(self) -> HiveMILOptions:
        """The HiVE-MIL constructor options this run asks for: :attr:`hivemil` with the magnifications
        and the variant switches of this run."""
        return replace(
            self.hivemil,
            low_mag=magnification_value(self.low_mag),
            high_mag=magnification_value(self.high_mag),
            switches=self.switches(),
        )

    def task_spec(self) -> TaskSpec:
        """The task named by ``--task`` (its CSV and prompt folders from ``--csv_dir`` / ``--prompt_dir``)."""
        return get_task(
            self.task,
            csv_dir=self.resolve_path(self.csv_dir),
            prompt_dir=self.resolve_path(self.prompt_dir),
            llm=self.LLM,
        )

    def model_spec(self, task: TaskSpec) -> ModelSpec:
        """Everything a model builder needs (:class:`models.registry.ModelSpec`), explicitly."""
        return ModelSpec(
            task=task,
            feature_dim=self.feature_dim,
            tower=TowerSource(self.feature_extractor, self.text_tower),
            prompt_file=task.prompt_file(self.LLM),
            dropout=self.drop_out,
            prototype_number=self.prototype_number,
            hivemil=self.hivemil_options(),
            hila=self.hila,
            variant=self.variant,
        )

    def resolve_path(self, value: str | None) -> Path | None:
        """A folder flag (``--splits_root``, ``--csv_dir``, ``--prompt_dir``, ``--data_root_dir``) as a path."""
        return None if value is None else resolve_project_path(value)

    def to_dict(self) -> dict:
        """The flat ``{flag key: value}`` form (``config.json``; keys = argparse dest names)."""
        return flag_values(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        """The config of a flat ``{flag key: value}`` dict (``config.json``); unknown keys are ignored."""
        known = set(flag_keys(cls))
        return with_flag_values(cls(), {k: v for k, v in data.items() if k in known})

    def resume_identity(self) -> dict:
        """The settings that must match for finished folds to be reused (every flag not declared
        ``resumable``)."""
        skip = resumable_keys(RunConfig)
        return {k: v for k, v in self.to_dict().items() if k not in skip}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``main.py``, derived from the :class:`RunConfig` fields."""
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Train and evaluate few-shot WSI classifiers (HiVE-MIL and baselines) over k folds.",
    )
    add_flags(parser, RunConfig, GROUPS)
    return parser


TaskDefaults = Callable[[str], dict]
KindDefaults = Callable[[RunConfig], dict]


def parse_config(
    argv: list[str] | None = None,
    task_defaults: TaskDefaults | None = None,
    kind_defaults: KindDefaults | None = None,
) -> RunConfig:
    """Parse ``argv`` (default ``sys.argv[1:]``) into a :class:`RunConfig`.

    ``task_defaults(task)`` (given by the CLI) returns defaults for flags the user did not give, e.g.
    the generated demo task's data paths and training settings. ``kind_defaults(config)`` (given by the
    CLI: :func:`training.tasks.kind_defaults`) returns the task kind's defaults, e.g. the published
    survival settings (docs/survival.md §7.2); a demo's own settings beat them and explicit flags beat
    both. The field defaults here are the classification (published HiVE-MIL) ones.
    """
    given = given_values(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    values = dict(task_defaults(given["task"])) if task_defaults and given.get("task") else {}
    unknown = set(values) - set(flag_keys(RunConfig))
    if unknown:
        raise ValueError(f"task defaults name unknown settings: {sorted(unknown)}")
    values.update(given)
    config = with_flag_values(RunConfig(), values)
    if kind_defaults is None:
        return config
    extra = kind_defaults(config)
    unknown = set(extra) - set(flag_keys(RunConfig))
    if unknown:
        raise ValueError(f"task-kind defaults name unknown settings: {sorted(unknown)}")
    return with_flag_values(config, {k: v for k, v in extra.items() if k not in values})


def with_values(config: RunConfig, **changes) -> RunConfig:
    """A copy of ``config`` with ``changes`` applied, by flag key (``num_context_tokens=4`` sets
    ``config.hivemil.n_ctx``)."""
    return with_flag_values(config, changes)


def validate_config(config: RunConfig) -> None:
    """Cheap checks of flag values; each problem is one :class:`InputError` line naming the flag."""
    if not config.task:
        raise InputError("--task is required (tcga_brca, tcga_nsclc, tcga_rcc, demo, or a custom task)")
    DataRootFlags(config.data_root_dir).required()
    checks = [
        (config.k >= 1, "--k must be >= 1"),
        (config.max_epochs >= 1, "--max_epochs must be >= 1"),
        (
            0 < config.lr <= FLOAT32_MAX,
            f"--lr must be a positive number (at most {FLOAT32_MAX:.3g}, float32's largest)",
        ),
        (0 <= config.reg <= FLOAT32_MAX, "--reg must be a finite number >= 0"),
        (0 < config.label_frac <= 1, "--label_frac must be in (0, 1]"),
        (config.feature_dim >= 1, "--feature_dim must be >= 1"),
        (config.few_shot_num >= 1, "--few_shot_num must be >= 1"),
        (config.cache_mb >= 0, "--cache_mb must be >= 0"),
        (config.num_workers >= 0, "--num_workers must be >= 0"),
        (config.prefetch_depth >= 0, "--prefetch_depth must be >= 0"),
        (config.patience >= 1, "--patience must be >= 1"),
        (config.stop_epoch >= 0, "--stop_epoch must be >= 0"),
        (0 <= config.max_orphan_frac <= 1, "--max_orphan_frac must be in [0, 1]"),
        (config.max_slides is None or config.max_slides >= 1, "--max_slides must be >= 1"),
        (config.chunk_size >= 0, "--chunk_size must be >= 0 (0: whole slides)"),
        (config.threads >= 0, "--threads must be >= 0"),
        (config.hivemil.max_children >= 0, "--max-children must be >= 0"),
        (config.hivemil.attention_chunk >= 0, "--attention-chunk must be >= 0"),
        (0 <= config.surv_alpha <= 1, "--alpha_surv must be in [0, 1]"),
        (config.gc >= 1, "--gc must be >= 1"),
        (config.ibs_horizon >= 0 and math.isfinite(config.ibs_horizon), "--ibs_horizon must be >= 0"),
        (config.n_bins >= 2, "--n_bins must be >= 2"),
        (config.surv_batch >= 0, "--surv_batch must be >= 0"),
        (
            config.surv_loss != "cox" or config.surv_batch != 1,
            "--surv_loss cox needs --surv_batch >= 2 "
            "(the partial likelihood compares the cases of one step) or 0 for the default",
        ),
        (config.hila.mcl_lambda >= 0, "--mcl_lambda must be >= 0"),
        (
            config.hila.opl_epsilon > 0 and math.isfinite(config.hila.opl_epsilon),
            "--opl_epsilon must be a positive number",
        ),
        (config.hila.opl_iterations >= 1, "--opl_iterations must be >= 1"),
        (config.cv != "nested" or config.k >= 2, "--cv nested needs --k >= 2 outer folds"),
        (config.cv != "nested" or config.inner_k >= 2, "--cv nested needs --inner_k >= 2 inner folds"),
        (config.cv == "nested" or not config.inner_grid, "--inner_grid needs --cv nested"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    from models.towers.backbones import is_backbone  # torch: only once the flags have parsed
    from utils.seed import check_seed

    check_seed(config.seed)

    if is_backbone(config.feature_extractor) and model_info(config.model_type).text_tower:
        raise InputError(
            f"--model_type {config.model_type} compares patches with texts: --feature_extractor "
            f"{config.feature_extractor} is an image-only backbone (use plip, quiltnet, conch or an open_clip model)"
        )
    folds = config.fold_range
    if not (0 <= folds.start < folds.stop <= config.k):
        raise InputError(
            f"--k_start {config.k_start} / --k_end {config.k_end} select no valid folds of --k {config.k} "
            f"(need 0 <= k_start < k_end <= k; -1 means 0 and k)"
        )
    low = magnification_value(config.low_mag, "--low_mag")
    high = magnification_value(config.high_mag, "--high_mag")
    if high <= low:
        raise InputError(f"--high_mag {config.high_mag} must be larger than --low_mag {config.low_mag}")
    resolve_device(config.device)
