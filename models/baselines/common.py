"""Shared pieces of the baselines: dropout rate, instance selection, registration.

Conventional MIL baselines see one flat bag of instances. By default that bag is the slide's real
20x patches (``bag.x20[bag.child_mask]``, padding dropped); the ``<name>_5x`` model types use the 5x
patches ``bag.x5`` instead.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from datasets.bag import SlideBag
from models.base import ModelOutput, SlideClassifier, zero_loss
from models.registry import ModelSpec, register_model

MAGNIFICATIONS = ("5x", "20x")
DROPOUT_P = 0.25  # the p of every baseline's dropout when --drop_out is set (CLAM convention)


def dropout_p(spec: ModelSpec) -> float:
    """0.25 when the run asks for dropout (``--drop_out``), else 0."""
    return DROPOUT_P if spec.dropout else 0.0


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


def bag_instance_rows(bag: SlideBag, mag: str = "20x") -> tuple[np.ndarray, np.ndarray | None]:
    """Where each instance of :func:`bag_instances` sits in ``bag``: ``(rows, slots)``.

    20x: instance i is child slot ``slots[i]`` of 5x row ``rows[i]`` (row-major, as the mask selects);
    5x (or the 20x fallback to 5x patches): ``(arange(N5), None)``.
    """
    if mag != "5x":
        rows, slots = np.nonzero(bag.child_mask.cpu().numpy())
        if rows.size:
            return rows, slots
    return np.arange(bag.num_5x), None


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


def register_instance_baseline(
    name: str,
    factory: Callable[[ModelSpec, str], InstanceMIL],
    patch_scores: str | None = None,
    variants: bool = False,
) -> None:
    """Register ``name`` (20x instances), ``<name>_5x`` (5x instances) and a lowercase alias.

    ``factory(spec, mag)`` builds the model; ``patch_scores``: what its per-instance scores show
    (``"attention"``: ``extras["attention"]``), None when it has none; ``variants``: its results depend
    on ``--variant`` (e.g. MIL_fc's released initial weights).
    """

    def build(spec: ModelSpec) -> InstanceMIL:
        return factory(spec, "20x")

    def build_5x(spec: ModelSpec) -> InstanceMIL:
        return factory(spec, "5x")

    register_model(name, patch_scores=patch_scores, variants=variants)(build)
    register_model(f"{name}_5x", patch_scores=patch_scores, magnification="5x", variants=variants)(build_5x)
    if name.lower() != name:
        register_model(name.lower(), patch_scores=patch_scores, variants=variants)(build)
