"""Why HiVE-MIL predicts what it predicts for one slide: descriptions, patches and the 5x -> 20x path.

Everything here reads the quantities the model itself computes in one forward pass
(:class:`models.hivemil.model.HiveMILOutput`, which also records which slide patch each graph node is):

* the GNN outputs (paper Sec. 3.5; L2-normalised, so ``image @ text^T`` is a cosine similarity);
* the hierarchical slide logits (Sec. 3.6, :mod:`models.hivemil.slide_logits`): per text the mean of its top-k
  image similarities times the logit scale, per class the mean over its texts. Dividing each text's
  score by the number of texts of its class gives that text's *contribution*; a class's contributions
  sum exactly to its 5x (or 20x) logit;
* the TGDF-kept 5x patches (Sec. 3.3) and the 5x parent of every 20x graph node.

Graph rows map back to the slide through the output's provenance: in the released pipeline
(``--padded-children keep``) 5x patches without children are not graph nodes and zero-padded child
slots are 20x nodes; both are recorded (``patches_5x``, ``nodes_20x_padding``) so nothing is
attributed to a padded slot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from datasets.bag import SlideBag
from datasets.hierarchy import patch_px
from datasets.prompt_file import HierarchicalPrompts
from models.hivemil.graph import X5_IMAGE, X5_TEXT, X20_IMAGE, X20_TEXT
from models.hivemil.model import HiveMIL
from models.hivemil.slide_logits import topk_text_scores
from utils.errors import InputError

SCALES = ("5x", "20x")


# ------------------------------------------------------------------------------------------ numerics


def normalise_rows(sim: np.ndarray) -> np.ndarray:
    """Min-max normalise each row of ``sim`` onto [-1, 1]; a constant row becomes zeros."""
    sim = np.asarray(sim, dtype=np.float64)
    if sim.size == 0:
        return sim.copy()
    low = sim.min(axis=1, keepdims=True)
    span = sim.max(axis=1, keepdims=True) - low
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, 2.0 * (sim - low) / safe - 1.0, 0.0)


def text_contributions(
    image: torch.Tensor, text: torch.Tensor, num_classes: int, k_max: int, scale: torch.Tensor
) -> torch.Tensor:
    """[C*T] contribution of each text to its class logit (its score / T); sums per class to the logit."""
    scores = topk_text_scores(image, text, k_max, scale)
    return scores / (scores.shape[0] // num_classes)


def slide_logit_scale(model: HiveMIL) -> torch.Tensor:
    """The scale the slide logits use: ``logit_scale`` (released) or its exponential (``--logit-scale exp``)."""
    logit_scale = model.text_tower.logit_scale
    return logit_scale if model.options.switches.logit_scale == "raw" else logit_scale.exp()


# ------------------------------------------------------------------------------------------ data types


@dataclass
class Description:
    """One prompt description: column ``column`` of the similarity matrix of its scale."""

    column: int
    class_index: int
    class_name: str
    term: str
    explanation: str
    coarse_column: int | None = None  # fine (20x) descriptions: the 5x column of the coarse entry refined


@dataclass
class DrillDown:
    """The 5x -> 20x path for one class (paper Fig. 2: coarse description -> patch -> fine descriptions).

    ``patch`` is the kept 5x patch (slide index) with the highest mean normalised similarity to the
    class's coarse descriptions; ``children`` are its real 20x children that are graph nodes; ``fine_of_coarse[j]``
    lists the 20x columns of the fine descriptions refining the class's j-th coarse description.
    """

    class_index: int
    class_name: str
    patch: int
    patch_row: int
    patch_coords: list[int] | None
    coarse_columns: list[int]
    coarse_similarity: list[float]  # patch vs each coarse description of the class (cosine)
    coarse_similarity_norm: list[float]  # the same, normalised per patch onto [-1, 1]
    mean_coarse_similarity_norm: float  # what the patch was chosen by
    fine_columns: list[int]
    fine_of_coarse: list[list[int]]
    children: list[dict] = field(default_factory=list)  # node, slot, coords, similarity, similarity_norm


@dataclass
class SlideExplanation:
    """Attribution of one slide's prediction (see the module docstring).

    Rows of ``similarity_5x`` are 5x graph nodes (slide index ``patches_5x[row]``); rows of
    ``similarity_20x`` are 20x graph nodes (parent ``nodes_20x_parent[row]``, child slot
    ``nodes_20x_slot[row]``, ``nodes_20x_padding[row]`` True for a zero-padded slot). ``*_norm`` matrices
    are min-max normalised per row onto [-1, 1]. Coordinates are level-0 pixels (top-left corners).
    """

    slide_id: str
    label: int
    class_names: list[str]
    predicted: int
    probabilities: np.ndarray  # [C]
    logits: np.ndarray  # [C] = logits_5x + logits_20x
    logits_5x: np.ndarray
    logits_20x: np.ndarray
    descriptions_5x: list[Description]
    descriptions_20x: list[Description]
    kept_5x: np.ndarray  # [K] slide indices of the TGDF-kept 5x patches
    kept_5x_coords: np.ndarray | None  # [K, 2]
    patches_5x: np.ndarray  # [R5] slide index of each 5x graph node
    coords_5x: np.ndarray | None  # [R5, 2]
    nodes_20x_parent: np.ndarray  # [R20] slide index of each 20x node's 5x parent
    nodes_20x_slot: np.ndarray  # [R20] child slot within the parent
    nodes_20x_padding: np.ndarray  # [R20] bool
    coords_20x: np.ndarray | None  # [R20, 2]
    similarity_5x: np.ndarray  # [R5, C*T5]
    similarity_5x_norm: np.ndarray
    similarity_20x: np.ndarray  # [R20, C*T20]
    similarity_20x_norm: np.ndarray
    contributions_5x: np.ndarray  # [C*T5]
    contributions_20x: np.ndarray  # [C*T20]
    top_patches_5x: list[list[dict]]  # per 5x description: top patches (row, patch, coords, similarity...)
    top_patches_20x: list[list[dict]]
    drilldown: DrillDown
    all_coords_5x: np.ndarray | None = None  # [N5, 2] every 5x patch of the slide (heatmap background)
    all_coords_20x: np.ndarray | None = None  # [n, 2] every real 20x child of the slide
    patch_size_5x: int | None = None  # side in level-0 px
    patch_size_20x: int | None = None
    variant_switches: dict = field(default_factory=dict)

    @property
    def predicted_name(self) -> str:
        return self.class_names[self.predicted]

    def descriptions(self, scale: str) -> list[Description]:
        return self.descriptions_5x if _scale(scale) == "5x" else self.descriptions_20x

    def contributions(self, scale: str) -> np.ndarray:
        return self.contributions_5x if _scale(scale) == "5x" else self.contributions_20x

    def scale_logits(self, scale: str) -> np.ndarray:
        return self.logits_5x if _scale(scale) == "5x" else self.logits_20x

    def class_columns(self, scale: str, class_index: int) -> list[int]:
        return [d.column for d in self.descriptions(scale) if d.class_index == class_index]

    def class_similarity(self, scale: str, class_index: int | None = None) -> np.ndarray:
        """Per graph node of ``scale``: mean normalised similarity to the descriptions of a class."""
        cls = self.predicted if class_index is None else class_index
        sim = self.similarity_5x_norm if _scale(scale) == "5x" else self.similarity_20x_norm
        cols = self.class_columns(scale, cls)
        return sim[:, cols].mean(axis=1) if sim.shape[0] else np.zeros(0)

    def to_dict(self, include_matrices: bool = True, matrix_decimals: int | None = None) -> dict:
        """JSON-serialisable dict (numpy arrays as lists).

        ``include_matrices=False`` drops the N x T similarity matrices; ``matrix_decimals`` rounds them
        (they dominate the size for large slides; every other number keeps full precision).
        """
        out = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name.startswith("similarity_"):
                if not include_matrices:
                    continue
                if matrix_decimals is not None:
                    value = np.round(value, matrix_decimals)
            out[name] = _jsonable(value)
        out["predicted_name"] = self.predicted_name
        return out


def _scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    return scale


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {name: _jsonable(getattr(value, name)) for name in value.__dataclass_fields__}
    return value


# ------------------------------------------------------------------------------------------ graph rows


def grid_step(coords: np.ndarray) -> int | None:
    """Smallest positive gap between distinct coordinates along x or y (the grid step), if any."""
    gaps = []
    for axis in range(coords.shape[1] if coords.ndim == 2 else 0):
        values = np.unique(coords[:, axis])
        if values.size > 1:
            gaps.append(int(np.diff(values).min()))
    return min(gaps) if gaps else None


def _patch_sizes(model: HiveMIL, bag: SlideBag) -> tuple[int | None, int | None]:
    return patch_sizes(bag, model.options.low_mag, model.options.high_mag)


def patch_sizes(bag: SlideBag, low_mag: float = 5, high_mag: float = 20) -> tuple[int | None, int | None]:
    """(5x, 20x) patch sides in level-0 px: from ``bag.meta['level0_mag']`` when known, else from the
    coordinate grid (the smallest gap between patch corners; None when it cannot be told)."""
    level0 = bag.meta.get("level0_mag")
    if level0:
        return patch_px(level0, low_mag), patch_px(level0, high_mag)
    ratio = max(1, int(round(float(high_mag) / float(low_mag))))
    size20 = None
    if bag.coords20 is not None and bool(bag.child_mask.any()):
        size20 = grid_step(bag.coords20[bag.child_mask.cpu()].cpu().numpy())
    size5 = grid_step(bag.coords5.cpu().numpy()) if bag.coords5 is not None else None
    if size5 is None and size20 is not None:
        size5 = size20 * ratio
    if size20 is None and size5 is not None:
        size20 = max(1, size5 // ratio)
    return size5, size20


# ------------------------------------------------------------------------------------------ explanation


def _descriptions(
    class_names: Sequence[str], prompts: HierarchicalPrompts, n_coarse: int, n_fine: int
) -> tuple[list[Description], list[Description]]:
    coarse, fine = [], []
    for c, name in enumerate(class_names):
        for j, (term, expl) in enumerate(prompts.coarse[name]):
            coarse.append(Description(c * n_coarse + j, c, name, term, expl))
        for f, (term, expl) in enumerate(prompts.fine[name]):
            parent = c * n_coarse + prompts.fine_parent(f)
            fine.append(Description(c * n_coarse * n_fine + f, c, name, term, expl, coarse_column=parent))
    return coarse, fine


def _check_prompts(model: HiveMIL, class_names: Sequence[str], prompts: HierarchicalPrompts) -> None:
    opts = model.options
    if len(class_names) != model.num_classes:
        raise InputError(f"{len(class_names)} class names given, the model has {model.num_classes} classes")
    missing = [c for c in class_names if c not in prompts.coarse]
    if missing:
        raise InputError(f"{prompts.path}: no prompts for class(es) {', '.join(map(repr, missing))}")
    if (prompts.n_coarse, prompts.n_fine_per_coarse) != (opts.num_low_mag_texts, opts.num_high_mag_subtexts):
        raise InputError(
            f"{prompts.path}: prompts have {prompts.n_coarse} coarse x {prompts.n_fine_per_coarse} fine entries, "
            f"the model {opts.num_low_mag_texts} x {opts.num_high_mag_subtexts}"
        )


def _top_patches(
    sim: np.ndarray,
    sim_norm: np.ndarray,
    top_n: int,
    patch_of_row: np.ndarray,
    coords: np.ndarray | None,
    exclude: np.ndarray | None = None,
    slot_of_row: np.ndarray | None = None,
) -> list[list[dict]]:
    """Per column: the ``top_n`` rows of highest (raw) similarity, excluding rows flagged in ``exclude``."""
    candidates = np.arange(sim.shape[0]) if exclude is None else np.flatnonzero(~exclude)
    out = []
    for col in range(sim.shape[1]):
        order = candidates[np.argsort(-sim[candidates, col], kind="stable")][:top_n]
        entries = []
        for row in order:
            entry = {
                "row": int(row),
                "patch": int(patch_of_row[row]),
                "coords": None if coords is None else [int(v) for v in coords[row]],
                "similarity": float(sim[row, col]),
                "similarity_norm": float(sim_norm[row, col]),
            }
            if slot_of_row is not None:
                entry["slot"] = int(slot_of_row[row])
            entries.append(entry)
        out.append(entries)
    return out


def _drilldown(
    parts: dict, class_index: int, class_name: str, n_coarse: int, n_fine_per_coarse: int
) -> DrillDown:
    """Pick the kept 5x patch with the highest mean normalised similarity to the class's coarse
    descriptions (the hottest kept patch of the 5x heatmap; first on ties) and list its real 20x children."""
    sim5, sim5_norm = parts["sim5"], parts["sim5_norm"]
    sim20, sim20_norm = parts["sim20"], parts["sim20_norm"]
    patches_5x, kept = parts["patches_5x"], parts["kept_5x"]
    coarse_cols = list(range(class_index * n_coarse, (class_index + 1) * n_coarse))
    n_fine = n_coarse * n_fine_per_coarse
    fine_cols = list(range(class_index * n_fine, (class_index + 1) * n_fine))
    row_of_patch = {int(p): r for r, p in enumerate(patches_5x)}
    kept_rows = np.array([row_of_patch[int(p)] for p in kept], dtype=np.int64)
    scores = sim5_norm[np.ix_(kept_rows, coarse_cols)].mean(axis=1)
    best = int(kept_rows[int(np.argmax(scores))])
    patch = int(patches_5x[best])
    coords5, coords20 = parts["coords_5x"], parts["coords_20x"]
    children = []
    child_rows = np.flatnonzero((parts["nodes_20x_parent"] == patch) & ~parts["nodes_20x_padding"])
    for row in child_rows:
        children.append(
            {
                "row": int(row),
                "slot": int(parts["nodes_20x_slot"][row]),
                "coords": None if coords20 is None else [int(v) for v in coords20[row]],
                "similarity": [float(v) for v in sim20[row, fine_cols]],
                "similarity_norm": [float(v) for v in sim20_norm[row, fine_cols]],
            }
        )
    return DrillDown(
        class_index=class_index,
        class_name=class_name,
        patch=patch,
        patch_row=best,
        patch_coords=None if coords5 is None else [int(v) for v in coords5[best]],
        coarse_columns=coarse_cols,
        coarse_similarity=[float(v) for v in sim5[best, coarse_cols]],
        coarse_similarity_norm=[float(v) for v in sim5_norm[best, coarse_cols]],
        mean_coarse_similarity_norm=float(sim5_norm[best, coarse_cols].mean()),
        fine_columns=fine_cols,
        fine_of_coarse=[
            fine_cols[j * n_fine_per_coarse : (j + 1) * n_fine_per_coarse] for j in range(n_coarse)
        ],
        children=children,
    )


@torch.no_grad()
def explain_slide(
    model: HiveMIL,
    bag: SlideBag,
    class_names: Sequence[str],
    prompts: HierarchicalPrompts,
    top_n: int = 5,
    drilldown_class: int | None = None,
    cache: object | None = None,
) -> SlideExplanation:
    """Explain HiVE-MIL's prediction for ``bag`` (one forward pass in eval mode; the model is not changed).

    Args:
        model: a HiVE-MIL model (any variant, any number of classes/descriptions).
        bag: the slide (coordinates are optional; without them coordinate fields are None).
        class_names: class names in model order (used to look up ``prompts``).
        prompts: the task's hierarchical prompts (the texts behind the model's description columns).
        top_n: patches listed per description.
        drilldown_class: class of the 5x -> 20x drill-down (default: the predicted class).
        cache: the model's text features (``model.precompute()``), reused when explaining many slides.
    """
    if not isinstance(model, HiveMIL):
        raise InputError(f"only HiVE-MIL models can be explained this way, got {type(model).__name__}")
    if top_n < 1:
        raise InputError(f"top_n must be >= 1, got {top_n}")
    _check_prompts(model, class_names, prompts)
    if drilldown_class is not None and not 0 <= int(drilldown_class) < model.num_classes:
        raise InputError(f"drilldown_class must be in [0, {model.num_classes}), got {drilldown_class}")
    opts = model.options
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = model(bag.to(device), cache=cache)
    finally:
        model.train(was_training)
    emb = out.embeddings
    scale = slide_logit_scale(model)
    num_classes = model.num_classes
    contrib5 = text_contributions(emb[X5_IMAGE], emb[X5_TEXT], num_classes, opts.topk_low, scale)
    contrib20 = text_contributions(emb[X20_IMAGE], emb[X20_TEXT], num_classes, opts.topk_high, scale)
    for contrib, name, logits_scale in (
        (contrib5, "logits_5x", out.logits_5x),
        (contrib20, "logits_20x", out.logits_20x),
    ):
        summed = contrib.reshape(num_classes, -1).sum(1)
        if not torch.allclose(summed, logits_scale.to(summed.dtype), rtol=1e-4, atol=1e-5):
            raise RuntimeError(
                f"description contributions do not sum to the model's {name}; slide_logits changed?"
            )
    sim5 = (emb[X5_IMAGE] @ emb[X5_TEXT].t()).double().cpu().numpy()
    sim20 = (emb[X20_IMAGE] @ emb[X20_TEXT].t()).double().cpu().numpy()

    cpu_mask = bag.child_mask.cpu()
    rows5 = out.nodes_5x.cpu()
    parents = out.nodes_20x_row.cpu()
    slots = out.nodes_20x_slot.cpu()
    padding = out.nodes_20x_padding.cpu()
    kept = rows5[out.kept_5x.cpu()].numpy()

    coords5_all = None if bag.coords5 is None else bag.coords5.cpu().numpy()
    coords20_all = None if bag.coords20 is None else bag.coords20.cpu().numpy()
    coords5 = None if coords5_all is None else coords5_all[rows5.numpy()]
    coords20 = None if coords20_all is None else coords20_all[parents.numpy(), slots.numpy()]
    sim5_norm, sim20_norm = normalise_rows(sim5), normalise_rows(sim20)

    logits = out.logits.detach().squeeze(0).double().cpu()
    predicted = int(torch.argmax(logits))
    desc5, desc20 = _descriptions(class_names, prompts, opts.num_low_mag_texts, opts.num_high_mag_subtexts)
    parts = {
        "sim5": sim5,
        "sim5_norm": sim5_norm,
        "sim20": sim20,
        "sim20_norm": sim20_norm,
        "patches_5x": rows5.numpy(),
        "kept_5x": kept,
        "coords_5x": coords5,
        "coords_20x": coords20,
        "nodes_20x_parent": parents.numpy(),
        "nodes_20x_slot": slots.numpy(),
        "nodes_20x_padding": padding.numpy(),
    }
    target = predicted if drilldown_class is None else int(drilldown_class)
    size5, size20 = _patch_sizes(model, bag)
    return SlideExplanation(
        slide_id=bag.slide_id,
        label=int(bag.label),
        class_names=list(class_names),
        predicted=predicted,
        probabilities=torch.softmax(logits, dim=0).numpy(),
        logits=logits.numpy(),
        logits_5x=out.logits_5x.double().cpu().numpy(),
        logits_20x=out.logits_20x.double().cpu().numpy(),
        descriptions_5x=desc5,
        descriptions_20x=desc20,
        kept_5x=kept,
        kept_5x_coords=None if coords5_all is None else coords5_all[kept],
        patches_5x=rows5.numpy(),
        coords_5x=coords5,
        nodes_20x_parent=parents.numpy(),
        nodes_20x_slot=slots.numpy(),
        nodes_20x_padding=padding.numpy(),
        coords_20x=coords20,
        similarity_5x=sim5,
        similarity_5x_norm=sim5_norm,
        similarity_20x=sim20,
        similarity_20x_norm=sim20_norm,
        contributions_5x=contrib5.double().cpu().numpy(),
        contributions_20x=contrib20.double().cpu().numpy(),
        top_patches_5x=_top_patches(sim5, sim5_norm, top_n, rows5.numpy(), coords5),
        top_patches_20x=_top_patches(
            sim20, sim20_norm, top_n, parents.numpy(), coords20, padding.numpy(), slots.numpy()
        ),
        drilldown=_drilldown(
            parts, target, class_names[target], opts.num_low_mag_texts, opts.num_high_mag_subtexts
        ),
        all_coords_5x=coords5_all,
        all_coords_20x=None if coords20_all is None else coords20_all[cpu_mask.numpy()],
        patch_size_5x=size5,
        patch_size_20x=size20,
        variant_switches=opts.switches.to_dict(),
    )


# ------------------------------------------------------------------------------------------ tables


def contributions_frame(expl: SlideExplanation, scale: str) -> pd.DataFrame:
    """One row per description of ``scale``: class, term, contribution (sums per class to the scale's logit)."""
    values = expl.contributions(scale)
    return pd.DataFrame(
        {
            "class": [d.class_name for d in expl.descriptions(scale)],
            "term": [d.term for d in expl.descriptions(scale)],
            "contribution": [float(values[d.column]) for d in expl.descriptions(scale)],
        }
    )


def drilldown_frame(expl: SlideExplanation) -> pd.DataFrame:
    """The drill-down as a long table: one row per (20x child, fine description) of the chosen 5x patch.

    Columns: parent patch and its coordinates, child row/slot/coordinates, the coarse description
    (term, the parent's cosine similarity to it and its per-patch normalised value), the fine description refining it, the child's
    cosine similarity to that fine description and its per-child normalised value.
    """
    dd = expl.drilldown
    rows = []
    for child in dd.children:
        for j, fine_cols in enumerate(dd.fine_of_coarse):
            coarse = expl.descriptions_5x[dd.coarse_columns[j]]
            for col in fine_cols:
                i = dd.fine_columns.index(col)
                rows.append(
                    {
                        "class": dd.class_name,
                        "patch_5x": dd.patch,
                        "patch_x": None if dd.patch_coords is None else dd.patch_coords[0],
                        "patch_y": None if dd.patch_coords is None else dd.patch_coords[1],
                        "child_row": child["row"],
                        "child_slot": child["slot"],
                        "child_x": None if child["coords"] is None else child["coords"][0],
                        "child_y": None if child["coords"] is None else child["coords"][1],
                        "coarse_term": coarse.term,
                        "coarse_similarity": dd.coarse_similarity[j],
                        "coarse_similarity_norm": dd.coarse_similarity_norm[j],
                        "fine_term": expl.descriptions_20x[col].term,
                        "similarity": child["similarity"][i],
                        "similarity_norm": child["similarity_norm"][i],
                    }
                )
    columns = [
        "class", "patch_5x", "patch_x", "patch_y", "child_row", "child_slot", "child_x", "child_y",
        "coarse_term", "coarse_similarity", "coarse_similarity_norm", "fine_term", "similarity", "similarity_norm",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def top_patches_frame(expl: SlideExplanation, scale: str) -> pd.DataFrame:
    """One row per (description, rank) of ``scale`` with the patch, its coordinates and similarities."""
    tops = expl.top_patches_5x if _scale(scale) == "5x" else expl.top_patches_20x
    rows = []
    for desc, entries in zip(expl.descriptions(scale), tops):
        for rank, entry in enumerate(entries):
            rows.append(
                {
                    "class": desc.class_name,
                    "term": desc.term,
                    "rank": rank + 1,
                    "patch_5x": entry["patch"],
                    **({"slot": entry["slot"]} if "slot" in entry else {}),
                    "x": None if entry["coords"] is None else entry["coords"][0],
                    "y": None if entry["coords"] is None else entry["coords"][1],
                    "similarity": entry["similarity"],
                    "similarity_norm": entry["similarity_norm"],
                }
            )
    return pd.DataFrame(rows)
