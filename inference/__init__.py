"""Inference with a finished ``main.py`` run: its models applied to slides (layer above training).

* :mod:`inference.runs` - from a run folder to its config, task, fold models, prompts and one slide
  (``explain.py``, ``predict.py``, the notebook);
* :mod:`inference.slide_inputs` / :mod:`inference.prediction` - new slides (ids, feature files, tensors,
  raw slides) predicted by a run's fold checkpoints (``predict.py``);
* :mod:`inference.demo_run` - a demo run to look at (the notebook, tests, ``scripts/``).

Reads runs through :mod:`training.config` and :mod:`training.results` only. Heatmaps of predicted
slides are drawn by :mod:`interpretability` (beside this package; it never imports ``inference``).
"""

from inference.demo_run import ensure_demo_run
from inference.runs import (
    RunFiles,
    explanation_kind,
    first_test_slide,
    is_survival_run,
    load_fold_model,
    load_prompts,
    load_run,
    load_slide,
    read_run_config,
    resolve_run_files,
    run_task,
)

__all__ = [
    "RunFiles",
    "ensure_demo_run",
    "explanation_kind",
    "first_test_slide",
    "is_survival_run",
    "load_fold_model",
    "load_prompts",
    "load_run",
    "load_slide",
    "read_run_config",
    "resolve_run_files",
    "run_task",
]
