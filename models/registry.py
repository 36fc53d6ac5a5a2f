"""One registry of slide classifiers, keyed by ``--model_type``.

A builder takes ``(config, task)`` -- the run's typed config and the :class:`datasets.tasks.TaskSpec` --
and returns a :class:`models.base.SlideClassifier`. Modules register themselves with
:func:`register_model`; :func:`build_model` imports the known modules lazily so that importing the
registry stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from utils.errors import InputError

_BUILDERS: dict[str, Callable] = {}

# Modules that register models when imported.
_MODEL_MODULES = ("models.hivemil.model", "models.baselines")


def register_model(name: str):
    """Decorator: register ``builder(config, task) -> SlideClassifier`` under ``name``."""

    def wrap(builder: Callable) -> Callable:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"model type {name!r} registered twice")
        _BUILDERS[name] = builder
        return builder

    return wrap


def _load_all() -> None:
    for module in _MODEL_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def available_models() -> list[str]:
    _load_all()
    return sorted(_BUILDERS)


def build_model(name: str, config, task):
    """Build the model registered as ``name``; unknown names give one clear error."""
    _load_all()
    if name not in _BUILDERS:
        raise InputError(f"--model_type {name!r} is not known; choose one of: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name](config, task)
