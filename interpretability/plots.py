"""Figures of a :class:`~interpretability.attribution.SlideExplanation` (matplotlib, Agg canvas).

Figures are built with the object-oriented API on an Agg canvas (no pyplot state, no global backend
change), so they work headless, in scripts and in notebooks (``display(fig)``).

* :func:`plot_contributions`: one bar per description, coloured by class; each class's bars sum to
  its slide logit at that magnification (paper Sec. 3.6).
* :func:`plot_heatmap`: the slide drawn from patch coordinates; kept graph nodes coloured by their
  normalised similarity to the predicted class's descriptions, every other patch grey; the
  drill-down 5x patch outlined.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from interpretability.attribution import SlideExplanation
from utils.atomic_io import atomic_path

GREY = "#9a9a9a"  # patches that are not graph nodes (distinct from the near-white 0 of the colour map)
HEATMAP_CMAP = "RdBu_r"


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


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


def _squares(coords: np.ndarray, size: float) -> list[Rectangle]:
    return [Rectangle((float(x), float(y)), size, size) for x, y in coords]


def plot_heatmap(expl: SlideExplanation, scale: str, class_index: int | None = None) -> Figure:
    """The slide from patch coordinates at ``scale``: graph nodes (TGDF-kept 5x patches, or 20x children
    of kept 5x patches) coloured by mean normalised similarity to a class's descriptions (default: the
    predicted class), all other patches grey. Needs coordinates in the explanation."""
    cls = expl.predicted if class_index is None else class_index
    fig = new_figure(6.5, 5.5)
    ax = fig.add_subplot()
    if scale == "5x":
        all_coords, size = expl.all_coords_5x, expl.patch_size_5x or 1
        rows = np.isin(expl.patches_5x, expl.kept_5x)
        node_coords = None if expl.coords_5x is None else expl.coords_5x[rows]
        what = "TGDF-kept 5x patches"
    else:
        all_coords, size = expl.all_coords_20x, expl.patch_size_20x or 1
        rows = ~expl.nodes_20x_padding
        node_coords = None if expl.coords_20x is None else expl.coords_20x[rows]
        what = "20x children of kept 5x patches"
    if all_coords is None or node_coords is None:
        ax.text(0.5, 0.5, "no patch coordinates in this slide", ha="center", va="center")
        ax.set_axis_off()
        return fig
    values = expl.class_similarity(scale, cls)[rows]
    ax.add_collection(PatchCollection(_squares(all_coords, size), facecolor=GREY, edgecolor="none"))
    norm = Normalize(vmin=-1.0, vmax=1.0)
    nodes = PatchCollection(
        _squares(node_coords, size), cmap=colormaps[HEATMAP_CMAP], norm=norm, edgecolor="none"
    )
    nodes.set_array(np.asarray(values, dtype=float))
    ax.add_collection(nodes)
    dd = expl.drilldown
    if dd.patch_coords is not None and dd.class_index == cls:
        side = expl.patch_size_5x or size
        ax.add_patch(
            Rectangle(tuple(dd.patch_coords), side, side, fill=False, edgecolor="black", linewidth=1.5)
        )
    extent = np.concatenate([all_coords, node_coords]) if len(node_coords) else all_coords
    if len(extent):
        low, high = extent.min(axis=0), extent.max(axis=0) + size
        pad = 0.02 * float(max(high - low))
        ax.set_xlim(low[0] - pad, high[0] + pad)
        ax.set_ylim(high[1] + pad, low[1] - pad)  # image convention: y grows downwards
    ax.set_aspect("equal")
    ax.set_xlabel("x (level-0 px)")
    ax.set_ylabel("y (level-0 px)")
    fig.colorbar(nodes, ax=ax, label=f"similarity to '{expl.class_names[cls]}' descriptions (normalised)")
    ax.set_title(f"{expl.slide_id} {scale}: {what} (grey: other patches)", fontsize=9)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


REPORT_FILES = (
    "contributions_5x.png",
    "contributions_20x.png",
    "heatmap_5x.png",
    "heatmap_20x.png",
    "drilldown.csv",
    "explanation.json",
)


def save_report(expl: SlideExplanation, out_dir: str | Path) -> list[Path]:
    """Write the four figures, ``drilldown.csv`` and ``explanation.json`` (last) into ``out_dir``, atomically.

    The similarity matrices in the JSON are rounded to 6 decimals; all other numbers are exact.
    """
    import json

    from interpretability.attribution import drilldown_frame
    from utils.atomic_io import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for scale in ("5x", "20x"):
        written.append(save_figure(plot_contributions(expl, scale), out_dir / f"contributions_{scale}.png"))
    for scale in ("5x", "20x"):
        written.append(save_figure(plot_heatmap(expl, scale), out_dir / f"heatmap_{scale}.png"))
    with atomic_path(out_dir / "drilldown.csv", suffix=".csv") as tmp:
        drilldown_frame(expl).to_csv(tmp, index=False)
    written.append(out_dir / "drilldown.csv")
    atomic_write_text(
        out_dir / "explanation.json", json.dumps(expl.to_dict(matrix_decimals=6), allow_nan=False) + "\n"
    )
    written.append(out_dir / "explanation.json")
    return written
