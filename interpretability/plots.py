"""Figures of a :class:`~interpretability.attribution.SlideExplanation` (matplotlib, Agg canvas).

Figures are built with the object-oriented API on an Agg canvas (no pyplot state, no global backend
change), so they work headless, in scripts and in notebooks (``display(fig)``).

* :func:`plot_contributions`: one bar per description, coloured by class; each class's bars sum to
  its slide logit at that magnification (paper Sec. 3.6).
* :func:`plot_heatmap`: the slide (thumbnail, or the patch grid) with the kept graph nodes coloured
  by their normalised similarity to the predicted class's descriptions, every other patch grey; the
  drill-down 5x patch outlined. The drawing is :mod:`interpretability.heatmaps`' (shared with
  ``predict.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from interpretability.attribution import SlideExplanation
from interpretability.heatmaps import (
    SlideImage,
    heatmap_figure,
    hivemil_patch_scores,
    new_figure,
    save_figure,
)
from utils.atomic_io import atomic_path, ensure_output_dir

__all__ = ["new_figure", "plot_contributions", "plot_heatmap", "save_figure", "save_report"]


def class_colours(num_classes: int) -> list:
    cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(num_classes)]


def _short(text: str, limit: int = 42) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def plot_contributions(expl: SlideExplanation, scale: str) -> Figure:
    """Horizontal bars: contribution of each ``scale`` description to its class logit, coloured by class."""
    descs = expl.descriptions(scale)
    values = expl.contributions(scale)
    colours = class_colours(len(expl.class_names))
    fig = new_figure(8.0, 1.2 + 0.24 * len(descs))
    ax = fig.add_subplot()
    y = np.arange(len(descs))
    ax.barh(y, [values[d.column] for d in descs], color=[colours[d.class_index] for d in descs])
    ax.set_yticks(y, [_short(d.term) for d in descs], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0.0, color="black", linewidth=0.6)
    ax.set_xlabel("contribution to the class logit (top-k similarity x scale / #texts)")
    logits = expl.scale_logits(scale)
    handles = [
        Patch(color=colours[c], label=f"{name}: logit {logits[c]:.3f}")
        for c, name in enumerate(expl.class_names)
    ]
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_title(
        f"{expl.slide_id}: {scale} description contributions (predicted {expl.predicted_name}, "
        f"p={expl.probabilities[expl.predicted]:.2f})",
        fontsize=9,
    )
    return fig


def plot_heatmap(
    expl: SlideExplanation, scale: str, class_index: int | None = None, image: SlideImage | None = None
) -> Figure:
    """The slide at ``scale``: graph nodes (TGDF-kept 5x patches, or 20x children of kept 5x patches)
    coloured by mean normalised similarity to a class's descriptions (default: the predicted class),
    all other patches grey; over the slide thumbnail ``image`` when given. The drill-down 5x patch is
    outlined. Drawn by :func:`interpretability.heatmaps.heatmap_figure`."""
    cls = expl.predicted if class_index is None else class_index
    scores = hivemil_patch_scores(expl, scale, cls)
    dd = expl.drilldown
    outline = None
    if dd.patch_coords is not None and dd.class_index == cls and expl.patch_size_5x:
        outline = (*dd.patch_coords, expl.patch_size_5x)
    title = f"{expl.slide_id} {scale}: evidence for '{expl.class_names[cls]}' (grey: not graph nodes)"
    return heatmap_figure(scores, image, title=title, outline=outline)


def save_report(expl: SlideExplanation, out_dir: str | Path, image: SlideImage | None = None) -> list[Path]:
    """Write the four figures, ``drilldown.csv`` and ``explanation.json`` (last) into ``out_dir``, atomically.

    ``image``: the slide thumbnail (:func:`interpretability.heatmaps.read_thumbnail`) the heatmaps are
    drawn over; without it they are drawn on the patch grid.

    The similarity matrices in the JSON are rounded to 6 decimals; all other numbers are exact.
    """
    import json

    from interpretability.attribution import drilldown_frame
    from utils.atomic_io import atomic_write_text

    out_dir = Path(out_dir)
    ensure_output_dir(out_dir)
    written = []
    for scale in ("5x", "20x"):
        written.append(save_figure(plot_contributions(expl, scale), out_dir / f"contributions_{scale}.png"))
    for scale in ("5x", "20x"):
        written.append(save_figure(plot_heatmap(expl, scale, image=image), out_dir / f"heatmap_{scale}.png"))
    with atomic_path(out_dir / "drilldown.csv", suffix=".csv") as tmp:
        drilldown_frame(expl).to_csv(tmp, index=False)
    written.append(out_dir / "drilldown.csv")
    atomic_write_text(
        out_dir / "explanation.json", json.dumps(expl.to_dict(matrix_decimals=6), allow_nan=False) + "\n"
    )
    written.append(out_dir / "explanation.json")
    return written
