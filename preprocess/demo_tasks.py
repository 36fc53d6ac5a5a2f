"""The generated demo tasks the CLI expands by name: ``demo`` (classification) and ``demo_survival``.

``main.py`` passes :func:`task_defaults` to :func:`training.config.parse_config`; below the CLI nothing
knows a demo task by name.
"""

from __future__ import annotations

from collections.abc import Callable

from preprocess import demo, demo_survival

DEMO_TASKS: dict[str, Callable[[], dict]] = {
    demo.TASK_NAME: demo.run_defaults,
    demo_survival.TASK_NAME: demo_survival.run_defaults,
}


def task_defaults(task: str) -> dict:
    """CLI hook: the generated data paths and training settings of a demo task, nothing for any other."""
    defaults = DEMO_TASKS.get(task)
    return defaults() if defaults is not None else {}
