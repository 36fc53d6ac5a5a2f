"""Shared pieces of the baselines: config reading, instance selection, registration.

Conventional MIL baselines see one flat bag of instances. By default that bag is the slide's real
20x patches (``bag.x20[bag.child_mask]``, padding dropped); ``baseline_mag="5x"`` (a config field,
or the ``<name>_5x`` model types) uses the 5x patches ``bag.x5`` instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from datasets.bag import SlideBag
from models.base import ModelOutput, SlideClassifier, zero_loss
from models.registry import register_model

MAGNIFICATIONS = ("5x", "20x")
DROPOUT_P = 0.25  # the p of every baseline's dropout when --drop_out is set (CLAM convention)


def dropout_p(config) -> float:
    """0.25 when the run asks for dropout (``config.drop_out``), else 0."""
    return DROPOUT_P if bool(getattr(config, "drop_out", False)) else 0.0


def feature_dim(config) -> int:
    """Patch feature dimension D of the run (``config.feature_dim``, default 512)."""
    return int(getattr(config, "feature_dim", None) or 512)


def num_classes(task) -> int:
    """Number of classes of a :class:`datasets.tasks.TaskSpec` (or anything with ``class_names``)."""
    return len(task.class_names)


def baseline_mag(config, default: str = "20x") -> str:
    """Magnification a conventional baseline reads (``config.baseline_mag``, default 20x)."""
    mag = getattr(config, "baseline_mag", None) or default
    if mag not in MAGNIFICATIONS:
        raise ValueError(f"baseline_mag must be one of {MAGNIFICATIONS}, got {mag!r}")
    return mag


def bag_instances(bag: SlideBag, mag: str = "20x") -> torch.Tensor:
    """The flat instance matrix [N, D] of ``bag`` at ``mag``.

    20x: the real children only (padded rows/slots dropped). A slide without any 20x child (never the
    case for files written by the feature pipeline) falls back to its 5x patches so that every slide
    still gets a prediction.
    """
    if mag == "5x":
        return bag.x5
    real = bag.x20[bag.child_mask]
    return real if real.shape[0] > 0 else bag.x5


class InstanceMIL(SlideClassifier):
    """Base of the conventional baselines: flat instances in, ``classify(x) -> (logits, extras)``."""

    def __init__(self, num_classes: int, mag: str = "20x"):
        super().__init__()
        if mag not in MAGNIFICATIONS:
            raise ValueError(f"mag must be one of {MAGNIFICATIONS}, got {mag!r}")
        self.num_classes = num_classes
        self.mag = mag

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:  # pragma: no cover - abstract
        """[N, D] instances -> ([1, C] logits, extras)."""
        raise NotImplementedError

    def forward(self, bag: SlideBag, cache: object | None = None) -> ModelOutput:
        logits, extras = self.classify(bag_instances(bag, self.mag))
        return ModelOutput(logits=logits, aux_loss=zero_loss(logits), extras=extras)


def register_instance_baseline(name: str, factory: Callable[..., InstanceMIL]) -> None:
    """Register ``name`` (magnification from the config), ``<name>_5x`` and a lowercase alias.

    ``factory(config, task, mag)`` builds the model.
    """

    def build(config, task):
        return factory(config, task, baseline_mag(config))

    def build_5x(config, task):
        return factory(config, task, "5x")

    register_model(name)(build)
    register_model(f"{name}_5x")(build_5x)
    if name.lower() != name:
        register_model(name.lower())(build)
