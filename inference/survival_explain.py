"""Explaining one slide of a survival run (``explain.py`` on a survival run; docs/survival.md §12).

A fold's model gives the slide's hazards, its survival curve S(t_b) at the end of every bin and the risk
-sum_b S_b exactly as ``predict.py`` computes them (:func:`inference.prediction.fold_curve`, the
evaluation's forward :func:`models.passes.forward_bag`). The per-patch maps are the ones
``predict.py --heatmaps`` draws, through the same code (:mod:`interpretability.heatmaps`):

* the HiLa-style model: its OPL transport plans, one map per attribute and level (5x regions, 20x
  patches), each node's share of the attribute's feature (:func:`transport_plan_patch_scores`), with
  each attribute's transport cost per level;
* ``ABMIL_surv`` / ``TransMIL_surv``: their attention at 20x and, summed over each 5x patch's children,
  at 5x (:func:`attention_patch_scores`).

:func:`save_survival_explanation` writes ``heatmap_<map>.png`` per map, ``scores.npz`` and
``explanation.json`` (every number, with the top patches of every map).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from datasets.bag import SlideBag
from datasets.survival import bin_labels
from inference.prediction import fold_curve
from models.passes import evaluating, forward_bag
from models.registry import model_info
from models.survival import hazards_from_logits, risk_from_survival
from training.config import RunConfig
from utils.atomic_io import atomic_write_text, ensure_output_dir
from utils.magnification import magnification_value

EXPLANATION_FILE = "explanation.json"


@dataclass
class SurvivalExplanation:
    """One slide's survival prediction by one fold's model and its per-patch maps."""

    slide_id: str
    fold: int
    model_type: str
    scores_kind: str  # "transport plan" or "attention"
    bins: list[str]  # readable bins of the run (months)
    hazards: np.ndarray  # [n_bins]
    survival: np.ndarray  # [n_bins] S at the end of each bin
    risk: float
    scores: dict = field(default_factory=dict)  # map key -> interpretability.heatmaps.PatchScores
    attributes: list[str] = field(default_factory=list)  # HiLa-style: attribute names
    transport_cost: dict[str, list[float]] = field(default_factory=dict)  # level -> [K] costs

    def record(self, top: int) -> dict:
        """Every number as JSON-ready values (the ``top`` highest-scoring patches of every map)."""
        maps = {}
        for key, item in sorted(self.scores.items()):
            tops = []
            for index in item.top(top):
                entry = {"index": int(index), "score": float(item.values[index])}
                if item.coords is not None:
                    entry["x"], entry["y"] = (int(v) for v in item.coords[index])
                tops.append(entry)
            maps[key] = {"scale": item.scale, "label": item.label, "top_patches": tops}
        return {
            "slide_id": self.slide_id,
            "fold": self.fold,
            "model_type": self.model_type,
            "scores": self.scores_kind,
            "bins_months": self.bins,
            "hazards": [float(v) for v in self.hazards],
            "survival": [float(v) for v in self.survival],
            "risk": self.risk,
            "attributes": self.attributes,
            "transport_cost": self.transport_cost,
            "maps": maps,
        }


def explain_survival_slide(
    config: RunConfig, task, model: torch.nn.Module, bag: SlideBag, fold: int, device
) -> SurvivalExplanation:
    """Predict ``bag`` with one fold's survival ``model`` and build its per-patch maps (module docstring).

    ``task`` is the run's :class:`datasets.survival.SurvivalTaskSpec` (its bins); ``device`` where the
    model is. A model without per-patch scores is a ``ValueError`` (callers check the registry first).
    """
    from interpretability.attribution import patch_sizes
    from interpretability.heatmaps import attention_patch_scores, transport_plan_patch_scores

    info = model_info(config.model_type)
    with evaluating(model, device, config.amp):
        cache = model.precompute()
    on_device = bag.to(device)
    output = forward_bag(model, on_device, cache, device, config.amp)
    curve = fold_curve(output.logits, fold)
    sides = patch_sizes(bag, magnification_value(config.low_mag), magnification_value(config.high_mag))
    expl = SurvivalExplanation(
        slide_id=bag.slide_id,
        fold=fold,
        model_type=config.model_type,
        scores_kind=str(info.patch_scores),
        bins=bin_labels(task.bin_cuts),
        hazards=hazards_from_logits(output.logits.detach().float().reshape(-1))
        .cpu()
        .numpy()
        .astype(np.float64),
        survival=curve,
        risk=float(risk_from_survival(torch.from_numpy(curve))),
    )
    if info.patch_scores == "transport plan":
        expl.attributes = list(model.attributes)
        expl.scores = transport_plan_patch_scores(on_device, output, expl.attributes, sides)
        expl.transport_cost = {
            "5x": [float(v) for v in output.cost_region.float().cpu()],
            "20x": [float(v) for v in output.cost_patch.float().cpu()],
        }
    elif info.patch_scores == "attention":
        expl.scores = attention_patch_scores(
            on_device, output.extras, info.magnification, config.model_type, sides
        )
        if not expl.scores:
            raise ValueError(f"{config.model_type} reported no per-instance attention")
    else:
        raise ValueError(f"model_type {config.model_type}: no survival per-patch maps ({info.patch_scores})")
    return expl


def save_survival_explanation(
    expl: SurvivalExplanation, out_dir: str | Path, image=None, top: int = 5
) -> list[Path]:
    """``heatmap_<map>.png`` per map and ``scores.npz`` (:func:`interpretability.heatmaps.save_heatmaps`),
    then ``explanation.json``; returns the written files."""
    from interpretability.heatmaps import save_heatmaps

    out_dir = Path(out_dir)
    ensure_output_dir(out_dir)
    title = f"{expl.slide_id}, fold {expl.fold} (risk {expl.risk:.3f}),"
    meta = {
        "slide_id": expl.slide_id,
        "fold": expl.fold,
        "model_type": expl.model_type,
        "scores": expl.scores_kind,
    }
    if expl.attributes:
        meta["attributes"] = expl.attributes
    written = save_heatmaps(expl.scores, out_dir, image=image, title=title, meta=meta)
    path = out_dir / EXPLANATION_FILE
    atomic_write_text(path, json.dumps(expl.record(top), indent=2) + "\n")
    return [*written, path]
