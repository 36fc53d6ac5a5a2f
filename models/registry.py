"""One registry of slide classifiers, keyed by ``--model_type``.

A builder takes one :class:`ModelSpec` -- every option a model may use, typed and explicit (the CLI's
config produces it with ``RunConfig.model_spec``) -- and returns a :class:`models.base.SlideClassifier`.
Modules register themselves with :func:`register_model`, which also records the model's facts
(:class:`ModelInfo`: text tower, survival, variants, per-patch scores, hierarchy, magnification, the
loss the released code forces). :func:`build_model` and :func:`model_info` import only the one module
that registers the asked-for name (:data:`MODEL_MODULES`), so importing the registry stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from datasets.tasks import TaskSpec
from models.hila.options import HiLaOptions
from models.hivemil.options import HiveMILOptions
from models.towers.source import TowerSource
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


@dataclass(frozen=True)
class ModelInfo:
    """The facts of one registered model type (what callers used to look up in string tables).

    Attributes:
        name: the ``--model_type`` name.
        text_tower: the model reads the spec's text tower and prompt file (vision-language models).
        survival: the model predicts survival -- one hazard logit per survival bin (``spec.num_classes``
            bins; docs/survival.md §6.1) -- and trains only on survival tasks.
        variants: results depend on ``--variant`` and the per-behaviour switches (run folders carry the
            variant tag; grids run it once per variant).
        patch_scores: what the model's per-patch scores show in a heatmap (``"attention"``, ``"class
            evidence"``, ``"transport plan"``: HiLa-style OPL plans per attribute), None when it has none.
        hierarchy: the model needs the 5x/20x hierarchy (a flat [N, D] bag cannot feed it).
        magnification: which patches the instances of a flat bag are (``"5x"`` for the ``<name>_5x``
            instance baselines, else ``"20x"``).
        reference_loss: the slide loss the released code trains with under ``--variant reference``
            whatever ``--bag_loss`` says (docs/divergences.md §11); None: ``--bag_loss`` is honoured.
    """

    name: str
    text_tower: bool = False
    survival: bool = False
    variants: bool = False
    patch_scores: str | None = None
    hierarchy: bool = False
    magnification: str = "20x"
    reference_loss: str | None = None

    def bag_loss(self, requested: str, variant: str) -> str:
        """The slide loss a run of this model trains with, given ``--bag_loss`` and ``--variant``."""
        if self.reference_loss is not None and variant == "reference":
            return self.reference_loss
        return requested


# Model type -> the module whose import registers it. ``build_model``/``model_info`` import only that
# module; a test checks that these names and the registered ones agree.
_INSTANCE_BASELINES = {
    "models.baselines.pooling": ("mean_pool", "max_pool"),
    "models.baselines.mil_fc": ("MIL_fc",),
    "models.baselines.abmil": ("ABMIL",),
    "models.baselines.transmil": ("TransMIL",),
    "models.baselines.litemil": ("LiteMIL",),
}
MODEL_MODULES: dict[str, str] = {
    "HiVE_MIL": "models.hivemil.model",
    "HiLa": "models.hila.model",
    "zero_shot": "models.baselines.zero_shot",
    "ViLa_MIL": "models.baselines.vila_mil",
    "vila_mil": "models.baselines.vila_mil",
    "mean_pool_surv": "models.baselines.survival",
    "ABMIL_surv": "models.baselines.survival",
    "TransMIL_surv": "models.baselines.survival",
    **{
        alias: module
        for module, names in _INSTANCE_BASELINES.items()
        for name in names
        for alias in dict.fromkeys((name, f"{name}_5x", name.lower()))
    },
}

_BUILDERS: dict[str, Callable] = {}
_INFOS: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    text_tower: bool = False,
    survival: bool = False,
    variants: bool = False,
    patch_scores: str | None = None,
    hierarchy: bool = False,
    magnification: str = "20x",
    reference_loss: str | None = None,
):
    """Decorator: register ``builder(spec: ModelSpec) -> SlideClassifier`` under ``name`` with its facts
    (the keywords are the :class:`ModelInfo` attributes)."""
    info = ModelInfo(
        name, text_tower, survival, variants, patch_scores, hierarchy, magnification, reference_loss
    )

    def wrap(builder: Callable) -> Callable:
        if name in _BUILDERS and (_BUILDERS[name] is not builder or _INFOS[name] != info):
            raise ValueError(f"model type {name!r} registered twice")
        _BUILDERS[name] = builder
        _INFOS[name] = info
        return builder

    return wrap


def _load(name: str) -> None:
    """Import the module that registers ``name`` (nothing for unknown or already registered names)."""
    if name not in _BUILDERS and name in MODEL_MODULES:
        importlib.import_module(MODEL_MODULES[name])


def _load_all() -> None:
    """Import every model module of :data:`MODEL_MODULES` (an import error propagates)."""
    for module in dict.fromkeys(MODEL_MODULES.values()):
        importlib.import_module(module)


def available_models() -> list[str]:
    """Every model type name: the indexed ones and any registered at run time (tests)."""
    return sorted(set(MODEL_MODULES) | set(_BUILDERS))


def _unknown(name: str) -> InputError:
    return InputError(f"--model_type {name!r} is not known; choose one of: {', '.join(available_models())}")


def model_info(name: str) -> ModelInfo:
    """The facts of model type ``name``; an unknown name is one :class:`InputError` line listing the known."""
    _load(name)
    if name not in _INFOS:
        raise _unknown(name)
    return _INFOS[name]


def survival_models() -> list[str]:
    """The survival model types (imports every model module)."""
    _load_all()
    return sorted(name for name, info in _INFOS.items() if info.survival)


def build_model(name: str, spec: ModelSpec):
    """Build the model registered as ``name`` from ``spec``; unknown names give one clear error."""
    _load(name)
    if name not in _BUILDERS:
        raise _unknown(name)
    return _BUILDERS[name](spec)
