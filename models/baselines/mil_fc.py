"""MIL_fc: the instance-level max-MIL baseline of the CLAM / ViLa-MIL code bases.

Every instance is embedded (fc 512 + ReLU + dropout) and classified on its own. One instance then
speaks for the slide and its instance logits become the slide logits:
- two classes: the instance with the highest positive-class (class 1) probability;
- more classes: the instance holding the highest probability of any class.
The selection is not differentiable; gradients flow through the selected instance's logits.

Initial weights: under ``--variant reference`` as released (CLAM's ``initialize_weights``): the layers
are created with PyTorch's default init, then every ``nn.Linear`` gets Xavier-normal weights and zero
biases, in module order -- so one seed gives the released weights. ``corrected`` keeps PyTorch's
default init (docs/divergences.md §16).
"""

from __future__ import annotations

import torch
from torch import nn

from models.baselines.common import (
    InstanceMIL,
    dropout_p,
    register_instance_baseline,
)
from models.registry import ModelSpec


class MILfc(InstanceMIL):
    """Per-instance classifier with top-1 instance selection (see the module docstring)."""

    def __init__(
        self, in_dim: int, num_classes: int, hidden: int = 512, dropout: float = 0.0, mag: str = "20x"
    ):
        super().__init__(num_classes, mag)
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, num_classes)

    def select_top_instance(self, instance_logits: torch.Tensor) -> torch.Tensor:
        """Index (0-dim long tensor) of the instance whose logits become the slide logits."""
        probs = instance_logits.softmax(dim=1)
        if self.num_classes == 2:
            return probs[:, 1].argmax()
        return torch.div(probs.flatten().argmax(), self.num_classes, rounding_mode="floor")

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        instance_logits = self.classifier(self.embed(x))
        top = self.select_top_instance(instance_logits.detach())
        return instance_logits[top].unsqueeze(0), {"top_instance": int(top)}


def released_init(model: nn.Module) -> nn.Module:
    """CLAM-style re-initialisation: each ``nn.Linear`` in module order gets Xavier-normal weights and
    zero biases (the released baselines' ``initialize_weights``)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def _build(spec: ModelSpec, mag: str) -> MILfc:
    model = MILfc(spec.feature_dim, spec.num_classes, dropout=dropout_p(spec), mag=mag)
    return released_init(model) if spec.variant == "reference" else model


register_instance_baseline("MIL_fc", _build, variants=True)  # released initial weights (§16)
