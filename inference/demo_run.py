"""A demo run to look at: the run ``python main.py --task demo`` made, or a quick one trained here.

For the notebook, the tests and ``scripts/``; ``predict.py`` and ``explain.py`` do not use it. Training
goes through :func:`training.experiment.run_experiment`, the entry point ``main.py`` calls.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from training.config import RunConfig, parse_config
from training.results import CONFIG_FILE, checkpoint_path
from utils.errors import InputError
from utils.paths import PROJECT_ROOT, cache_root

QUICK_DEMO_DIRNAME = "interpretability_demo"


def demo_config(argv: list[str]) -> RunConfig:
    """The config ``python main.py --task demo <argv>`` runs with (the CLI's demo expansion included)."""
    from preprocess.demo_tasks import task_defaults

    return parse_config(["--task", "demo", *argv], task_defaults=task_defaults)


def demo_run_dir(results_dir: str | Path) -> Path:
    """Where ``python main.py --task demo --results_dir results_dir`` puts its run."""
    return demo_config(["--results_dir", str(results_dir)]).run_dir


def train_demo(argv: list[str]) -> int:
    """Train ``python main.py <argv>`` (a demo task's argv, ``--task demo`` included) in this process;
    returns 0."""
    from preprocess.demo_tasks import task_defaults
    from training.experiment import run_experiment

    run_experiment(parse_config(argv, task_defaults=task_defaults))
    return 0


def _has_fold(run_dir: Path, fold: int) -> bool:
    return (Path(run_dir) / CONFIG_FILE).is_file() and checkpoint_path(run_dir, fold).is_file()


def ensure_demo_run(
    max_epochs: int = 3,
    fold: int = 0,
    results_dir: str | Path | None = None,
    train: Callable[[list[str]], int | None] | None = None,
) -> Path:
    """A demo run folder with fold ``fold``: the one ``python main.py --task demo`` made, else a quick one.

    The default run (``./results`` or ``<project>/results``) is used when it holds the fold. Otherwise
    a short run (``max_epochs`` epochs, that fold only) is trained (:func:`train_demo`) into
    ``results_dir`` (default ``<cache>/interpretability_demo/e<max_epochs>``, see
    :func:`utils.paths.cache_root`), so the default results folder is never touched; a finished quick
    run is reused.
    """
    for root in (Path.cwd() / "results", PROJECT_ROOT / "results"):
        if _has_fold(demo_run_dir(root), fold):
            return demo_run_dir(root)
    if max_epochs < 1:
        raise InputError(f"max_epochs must be >= 1, got {max_epochs}")
    if results_dir is None:
        results_dir = cache_root() / QUICK_DEMO_DIRNAME / f"e{max_epochs}"
    run_dir = demo_run_dir(results_dir)
    if _has_fold(run_dir, fold):
        return run_dir
    argv = [
        "--max_epochs", str(max_epochs), "--k_start", str(fold), "--k_end", str(fold + 1),
        "--results_dir", str(results_dir), "--quiet",
    ]  # fmt: skip
    code = (train or train_demo)(["--task", "demo", *argv])
    if code not in (0, None) or not _has_fold(run_dir, fold):
        raise InputError(f"demo training did not produce {checkpoint_path(run_dir, fold)} (exit code {code})")
    return run_dir
