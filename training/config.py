"""Typed run configuration of ``main.py``, built from the command line.

Flag names and defaults follow the published ``main.py`` (underscores and hyphens exactly as there);
attribute names are the argparse ``dest`` names. Differences from the published defaults: ``--LLM``
defaults to ``curated`` (our prompt folder), ``--device`` to ``auto`` (CUDA when available, else CPU),
and ``--feature_extractor`` accepts any name (plip, quiltnet, conch, demo, open_clip names).
Flags added by this project (``--text_tower``, ``--skip-missing``, ``--cache_mb``, ...) are listed in the
"run control" group; the HiVE-MIL variant switches come from :func:`models.hivemil.options.add_model_arguments`.

With ``--task demo`` every data flag the user did not give is taken from the generated demo data
(:func:`preprocess.demo.ensure_demo_data`): data root, splits, feature extractor/dimension, folds, shots.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from models.hivemil.options import add_model_arguments, switches_from_namespace
from utils.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Flags whose default depends on the task (``--task demo``); the parser leaves them None when not given.
TASK_DEPENDENT = (
    "data_root_dir",
    "feature_extractor",
    "feature_dim",
    "k",
    "few_shot_num",
    "splits_root",
    "lr",
    "max_epochs",
)
# Training defaults of ``--task demo`` (a tiny random text tower on synthetic data learns in a few epochs
# at a larger learning rate; the published defaults stay for every other task).
DEMO_TRAINING = {"lr": 1e-3, "max_epochs": 10}

# Fields that do not change a fold's results: a run may be resumed with different values.
RESUME_INDEPENDENT = frozenset(
    {
        "k",
        "k_start",
        "k_end",
        "results_dir",
        "log_data",
        "quiet",
        "cache_mb",
        "num_workers",
        "prefetch_depth",
        "overwrite",
        "threads",
    }
)

TESTING_MAX_SLIDES = 8  # ``--testing`` (published "debugging tool"): at most this many slides per split part


@dataclass
class RunConfig:
    """Every setting of one ``main.py`` run (names = argparse dest names)."""

    # --- published flags ---
    data_root_dir: str | None = None
    max_epochs: int = 50
    lr: float = 1e-4
    feature_extractor: str = "plip"
    feature_dim: int = 512
    few_shot_num: int = 16
    high_mag: str = "20x"
    low_mag: str = "5x"
    label_frac: float = 1.0
    seed: int = 1
    k: int = 5
    k_start: int = -1
    k_end: int = -1
    results_dir: str = "./results"
    log_data: bool = False
    testing: bool = False
    early_stopping: bool = False
    opt: str = "adam"
    drop_out: bool = False
    model_type: str = "HiVE_MIL"
    mode: str = "transformer"
    weighted_sample: bool = False
    reg: float = 1e-5
    bag_loss: str = "ce"
    task: str | None = None
    text_prompt: str | None = None
    prototype_number: int | None = None
    device: str = "auto"
    LLM: str = "curated"  # noqa: N815 - published flag name
    num_context_tokens: int = 16
    class_specific_token: bool = False
    class_token_position: str = "end"
    num_low_mag_texts: int = 4
    num_high_mag_subtexts: int = 3
    filter_alpha: float = 0.5
    contrastive_lambda: float = 0.5
    # --- HiVE-MIL variant switches (models.hivemil.options); None = the variant's value ---
    variant: str = "reference"
    text_encoding: str | None = None
    hier_attention: str | None = None
    attn_residual: str | None = None
    logit_scale: str | None = None
    htcl_negatives: str | None = None
    padded_children: str | None = None
    max_children: int = 0
    attention_chunk: int = 0
    # flags that add_model_arguments adds beyond the fields above land here (also readable as attributes)
    model_options: dict = field(default_factory=dict)
    # --- run control added by this project ---
    text_tower: str | None = None
    skip_missing: bool = False
    cache_mb: float = 2048.0
    splits_root: str = "splits"
    csv_dir: str = "dataset_csv"
    prompt_dir: str = "text_prompt"
    patience: int = 10
    stop_epoch: int = 20
    num_workers: int = 1
    prefetch_depth: int = 2
    max_slides: int | None = None
    amp: str = "off"
    threads: int = 0
    deterministic: bool = True
    overwrite: bool = False
    quiet: bool = False

    def __getattr__(self, name: str):
        """Model options without a declared field (see ``model_options``) read like attributes."""
        options = self.__dict__.get("model_options")
        if options is not None and name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

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
        return f"{self.task}_{self.feature_extractor}_{self.model_type}_{self.few_shot_num}"

    @property
    def run_dir(self) -> Path:
        """``results_dir/<task>/<extractor>/<shots>/<exp_code>_s<seed>`` (published layout)."""
        return (
            Path(self.results_dir)
            / str(self.task)
            / self.feature_extractor
            / str(self.few_shot_num)
            / f"{self.exp_code}_s{self.seed}"
        )

    @property
    def slide_limit(self) -> int | None:
        """Most slides per split part (``--max_slides``, or a small number with ``--testing``)."""
        if self.max_slides is not None:
            return self.max_slides
        return TESTING_MAX_SLIDES if self.testing else None

    def switches(self):
        """The resolved :class:`models.hivemil.options.VariantSwitches`."""
        return switches_from_namespace(self)

    def resolve_path(self, value: str | None) -> Path | None:
        """A project folder flag (``--splits_root``, ``--csv_dir``, ``--prompt_dir``) as a path.

        Relative paths are taken from the working directory when they exist there, else from the project
        root, so the defaults work from any working directory.
        """
        if value is None:
            return None
        path = Path(value).expanduser()
        if path.is_absolute() or path.exists():
            return path
        return PROJECT_ROOT / path

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def resume_identity(self) -> dict:
        """The settings that must match for finished folds to be reused."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUME_INDEPENDENT}


def _both(name: str) -> list[str]:
    """Accept a project-added flag with underscores and with hyphens."""
    under, hyphen = "--" + name.replace("-", "_"), "--" + name.replace("_", "-")
    return [under] if under == hyphen else [under, hyphen]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``main.py`` (published flags first, then HiVE-MIL switches, run control)."""
    d = RunConfig()
    p = argparse.ArgumentParser(
        prog="main.py",
        description="Train and evaluate few-shot WSI classifiers (HiVE-MIL and baselines) over k folds.",
    )
    p.add_argument(
        "--data_root_dir", type=str, default=None, help="feature root: DATA_ROOT/<task>_<extractor>/..."
    )
    p.add_argument(
        "--max_epochs", type=int, default=None, help="maximum number of epochs (default: 50; demo: 10)"
    )
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-4; demo: 1e-3)")
    p.add_argument(
        "--feature_extractor",
        type=str,
        default=None,
        help="feature extractor name: plip, quiltnet, conch, ... (default: plip)",
    )
    p.add_argument("--feature_dim", type=int, default=None, help="feature dimension (default: 512)")
    p.add_argument("--few_shot_num", type=int, default=None, help="number of shots per class (default: 16)")
    p.add_argument("--high_mag", type=str, default=d.high_mag, help="high magnification (default: 20x)")
    p.add_argument("--low_mag", type=str, default=d.low_mag, help="low magnification (default: 5x)")
    p.add_argument(
        "--label_frac",
        type=float,
        default=d.label_frac,
        help="fraction of training slides used (default: 1.0)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="random seed, reset at every fold (default: 1)")
    p.add_argument("--k", type=int, default=None, help="number of folds (default: 5)")
    p.add_argument("--k_start", type=int, default=d.k_start, help="first fold (default: -1 = 0)")
    p.add_argument("--k_end", type=int, default=d.k_end, help="end fold, exclusive (default: -1 = k)")
    p.add_argument("--results_dir", default=d.results_dir, help="results directory (default: ./results)")
    p.add_argument("--log_data", action="store_true", default=False, help="log scalars to TensorBoard")
    p.add_argument("--testing", action="store_true", default=False, help="debugging: a few slides per split")
    p.add_argument("--early_stopping", action="store_true", default=False, help="enable early stopping")
    p.add_argument("--opt", type=str, choices=["adam", "sgd"], default=d.opt)
    p.add_argument("--drop_out", action="store_true", default=False, help="enable dropout (p=0.25)")
    p.add_argument("--model_type", type=str, default=d.model_type, help="model name in models.registry")
    p.add_argument("--mode", type=str, choices=["transformer"], default=d.mode)
    p.add_argument("--weighted_sample", action="store_true", default=False, help="class-balanced sampling")
    p.add_argument("--reg", type=float, default=d.reg, help="weight decay (default: 1e-5)")
    p.add_argument("--bag_loss", type=str, choices=["svm", "ce", "focal"], default=d.bag_loss)
    p.add_argument(
        "--task", type=str, default=None, help="tcga_brca, tcga_nsclc, tcga_rcc, demo, or a custom task"
    )
    p.add_argument("--text_prompt", type=str, default=None)
    p.add_argument("--prototype_number", type=int, default=None)
    p.add_argument("--device", type=str, default=d.device, help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument(
        "--LLM", type=str, default=d.LLM, help="prompt folder text_prompt/HiVE_MIL/<LLM> (default: curated)"
    )
    p.add_argument("--num-context-tokens", dest="num_context_tokens", type=int, default=d.num_context_tokens)
    p.add_argument("--class-specific-token", dest="class_specific_token", action="store_true", default=False)
    p.add_argument(
        "--class-token-position",
        dest="class_token_position",
        type=str,
        default=d.class_token_position,
        choices=["front", "middle", "end"],
    )
    p.add_argument("--num-low-mag-texts", dest="num_low_mag_texts", type=int, default=d.num_low_mag_texts)
    p.add_argument(
        "--num-high-mag-subtexts", dest="num_high_mag_subtexts", type=int, default=d.num_high_mag_subtexts
    )
    p.add_argument("--filter-alpha", dest="filter_alpha", type=float, default=d.filter_alpha)
    p.add_argument(
        "--contrastive_lambda", type=float, default=d.contrastive_lambda, help="HTCL weight (default: 0.5)"
    )

    add_model_arguments(p)

    g = p.add_argument_group("run control (added by this project)")
    g.add_argument(
        *_both("text_tower"),
        dest="text_tower",
        default=None,
        help="hub name, local folder or checkpoint of the text tower",
    )
    g.add_argument(
        *_both("skip_missing"),
        dest="skip_missing",
        action="store_true",
        help="drop slides without features (warns)",
    )
    g.add_argument(
        *_both("cache_mb"), dest="cache_mb", type=float, default=d.cache_mb, help="bag cache size in MB"
    )
    g.add_argument(
        *_both("splits_root"), dest="splits_root", default=None, help="split folder root (default: splits)"
    )
    g.add_argument(
        *_both("csv_dir"), dest="csv_dir", default=d.csv_dir, help="dataset CSV folder (default: dataset_csv)"
    )
    g.add_argument(
        *_both("prompt_dir"),
        dest="prompt_dir",
        default=d.prompt_dir,
        help="prompt folder (default: text_prompt)",
    )
    g.add_argument(
        "--patience", type=int, default=d.patience, help="early-stopping patience in epochs (default: 10)"
    )
    g.add_argument(
        *_both("stop_epoch"),
        dest="stop_epoch",
        type=int,
        default=d.stop_epoch,
        help="no early stop before this epoch",
    )
    g.add_argument(
        *_both("num_workers"), dest="num_workers", type=int, default=d.num_workers, help="prefetch threads"
    )
    g.add_argument(
        *_both("prefetch_depth"),
        dest="prefetch_depth",
        type=int,
        default=d.prefetch_depth,
        help="bags loaded ahead (0: off)",
    )
    g.add_argument(
        *_both("max_slides"),
        dest="max_slides",
        type=int,
        default=None,
        help="debug: first N slides per split part",
    )
    g.add_argument(
        "--amp",
        choices=("off", "bf16", "fp16"),
        default=d.amp,
        help="mixed precision for the forward pass: bf16 (CPU/GPU) or fp16 (CUDA, with gradient scaling)",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="CPU threads for torch (0: torch's default); small slides on CPU are often fastest with 1",
    )
    g.add_argument(
        *_both("no_deterministic"),
        dest="deterministic",
        action="store_false",
        help="allow non-deterministic kernels",
    )
    g.add_argument(
        "--overwrite", action="store_true", help="retrain every fold even if a finished one exists"
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars, only warnings and errors")
    return p


def _apply_task_defaults(values: dict) -> None:
    """Fill the task-dependent flags the user did not give (from the demo data for ``--task demo``)."""
    missing = [name for name in TASK_DEPENDENT if values.get(name) is None]
    if values.get("task") == "demo" and missing:
        from preprocess.demo import ensure_demo_data

        demo = ensure_demo_data()
        demo_values = {
            "data_root_dir": str(demo.data_root_dir),
            "feature_extractor": demo.feature_extractor,
            "feature_dim": demo.feature_dim,
            "k": demo.num_folds,
            "few_shot_num": demo.few_shot_num,
            "splits_root": str(demo.splits_root),
            **DEMO_TRAINING,
        }
        for name in missing:
            values[name] = demo_values[name]
    defaults = RunConfig()
    for name in TASK_DEPENDENT:
        if values.get(name) is None:
            values[name] = getattr(defaults, name)


def validate_config(config: RunConfig) -> None:
    """Cheap checks of flag values; each problem is one :class:`InputError` line naming the flag."""
    if not config.task:
        raise InputError("--task is required (tcga_brca, tcga_nsclc, tcga_rcc, demo, or a custom task)")
    if config.data_root_dir is None:
        raise InputError("--data_root_dir is required (the folder that holds <task>_<extractor>/ features)")
    checks = [
        (config.k >= 1, "--k must be >= 1"),
        (config.max_epochs >= 1, "--max_epochs must be >= 1"),
        (config.lr > 0 and math.isfinite(config.lr), "--lr must be a positive number"),
        (config.reg >= 0, "--reg must be >= 0"),
        (0 < config.label_frac <= 1, "--label_frac must be in (0, 1]"),
        (config.feature_dim >= 1, "--feature_dim must be >= 1"),
        (config.few_shot_num >= 1, "--few_shot_num must be >= 1"),
        (config.cache_mb >= 0, "--cache_mb must be >= 0"),
        (config.num_workers >= 0, "--num_workers must be >= 0"),
        (config.prefetch_depth >= 0, "--prefetch_depth must be >= 0"),
        (config.patience >= 1, "--patience must be >= 1"),
        (config.max_slides is None or config.max_slides >= 1, "--max_slides must be >= 1"),
        (config.threads >= 0, "--threads must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    folds = config.fold_range
    if not (0 <= folds.start < folds.stop <= config.k):
        raise InputError(
            f"--k_start {config.k_start} / --k_end {config.k_end} select no valid folds of --k {config.k} "
            f"(need 0 <= k_start < k_end <= k; -1 means 0 and k)"
        )
    resolve_device(config.device)
    try:
        config.switches()
    except ValueError as err:
        raise InputError(f"--variant: {err}") from None


def resolve_device(name: str):
    """``auto`` -> CUDA when available, else CPU; an explicit CUDA device must exist."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {name!r} is not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


def parse_config(argv: list[str] | None = None) -> RunConfig:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into a :class:`RunConfig` with task defaults applied."""
    parser = build_parser()
    namespace = parser.parse_args(sys.argv[1:] if argv is None else argv)
    values = vars(namespace)
    _apply_task_defaults(values)
    known = {f.name for f in fields(RunConfig)}
    extra = {k: v for k, v in values.items() if k not in known}
    return RunConfig(**{k: v for k, v in values.items() if k in known}, model_options=extra)
