"""One registry of slide classifiers, keyed by ``--model_type``.

A builder takes one :class:`ModelSpec` -- every option a model may use, typed and explicit (the CLI's
config produces it with ``RunConfig.model_spec``) -- and returns a :class:`models.base.SlideClassifier`.
Modules register themselves with :func:`register_model`; :func:`build_model` imports the known modules
lazily so that importing the registry stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from datasets.tasks import TaskSpec
from models.hila.options import HiLaOptions
from models.hivemil.options import HiveMILOptions
from models.towers.loading import TowerSource
from utils.errors import InputError


@dataclass(frozen=True)
class ModelSpec:
    """What a registered builder receives.

    Attributes:
        task: classes (in order) of the task.
        feature_dim: patch feature dimension D.
        tower: which frozen text tower (vision-language models only) and where its weights are.
        prompt_file: the task's hierarchical prompt file (vision-language models only).
        dropout: ``--drop_out`` (baselines; HiVE-MIL has no dropout).
        prototype_number: ViLa-MIL prototypes (None: its default).
        hivemil: HiVE-MIL constructor options and variant switches; the prompt layout (coarse/fine
            counts) and context options are shared by every vision-language model.
        hila: HiLa-style survival model options (docs/survival.md §8).
        variant: ``--variant`` (``reference`` or ``corrected``): HiVE-MIL reads its switches from
            ``hivemil``; baselines whose released code differs from ours read it here (MIL_fc's
            initial weights, docs/divergences.md §16).
    """

    task: TaskSpec
    feature_dim: int = 512
    tower: TowerSource = field(default_factory=lambda: TowerSource("plip"))
    prompt_file: Path | None = None
    dropout: bool = False
    prototype_number: int | None = None
    hivemil: HiveMILOptions = field(default_factory=HiveMILOptions)
    hila: HiLaOptions = field(default_factory=HiLaOptions)
    variant: str = "reference"

    @property
    def num_classes(self) -> int:
        return self.task.num_classes


_BUILDERS: dict[str, Callable] = {}
_TEXT_TOWER_MODELS: set[str] = set()
_SURVIVAL_MODELS: set[str] = set()

# Modules that register models when imported.
_MODEL_MODULES = ("models.hivemil.model", "models.baselines", "models.hila.model")


def register_model(name: str, text_tower: bool = False, survival: bool = False):
    """Decorator: register ``builder(spec: ModelSpec) -> SlideClassifier`` under ``name``.

    ``text_tower``: the model uses the spec's text tower and prompts (vision-language models).
    ``survival``: the model predicts survival -- its logits are one hazard logit per survival bin
    (``spec.num_classes`` bins; docs/survival.md §6.1) -- and trains only on survival tasks.
    """

    def wrap(builder: Callable) -> Callable:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"model type {name!r} registered twice")
        _BUILDERS[name] = builder
        if text_tower:
            _TEXT_TOWER_MODELS.add(name)
        if survival:
            _SURVIVAL_MODELS.add(name)
        return builder

    return wrap


def is_survival_model(name: str) -> bool:
    """Whether model type ``name`` predicts survival hazards (False for unknown names)."""
    _load_all()
    return name in _SURVIVAL_MODELS


def survival_models() -> list[str]:
    _load_all()
    return sorted(_SURVIVAL_MODELS)


def uses_text_tower(name: str) -> bool:
    """Whether model type ``name`` reads a text tower and prompt file."""
    _load_all()
    return name in _TEXT_TOWER_MODELS


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


def build_model(name: str, spec: ModelSpec):
    """Build the model registered as ``name`` from ``spec``; unknown names give one clear error."""
    _load_all()
    if name not in _BUILDERS:
        raise InputError(f"--model_type {name!r} is not known; choose one of: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name](spec)
