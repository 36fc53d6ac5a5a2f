"""LiteMIL-style detailed view of one slide's patch scores and a grid of its top-k patches.

``predict.py --heatmaps`` writes, beside each ``heatmap_<scale>.png`` (:mod:`interpretability.heatmaps`):

* ``detail_<map>.png`` (:func:`detailed_figure`; a map is a scale, or e.g. ``5x_attr0``): the overlay (heatmap over the thumbnail or the patch
  grid), the histogram of the scores (log count axis; mean, median and the top-k threshold marked), the
  summary statistics (:func:`score_statistics`) and the predicted class with its probability (survival
  runs: the predicted risk).
* ``top_grid_<map>.png`` (:func:`top_patch_grid`): the ``k`` highest-scoring patches in rank order.
  With the raw slide at hand each panel is the tissue tile read from the slide at the patch's own
  magnification; without one (features only) there are no pixels to show, so each panel is the patch's
  neighbourhood on the score map (the patch outlined in red, colours = scores), as the figure's title says.

For attention (non-negative scores) the statistics include the attention entropy normalised by its
maximum ``log n`` (1: uniform over the patches, 0: all on one patch), the effective number of patches
``1 / sum p_i^2`` and the share of the total held by the top 1 % of patches and by the top k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from interpretability.heatmaps import (
    HEATMAP_CMAP,
    HeatLayer,
    PatchScores,
    SlideImage,
    compose,
    draw_heatmap,
    new_figure,
    save_figure,
)


@dataclass(frozen=True)
class Prediction:
    """What the detailed figure states about the prediction: the fold's class and probability and,
    when several folds vote, the ensemble's."""

    class_name: str
    probability: float
    fold: int | None = None
    ensemble_class: str | None = None
    ensemble_probability: float | None = None

    def lines(self) -> list[str]:
        who = f"fold {self.fold}" if self.fold is not None else "model"
        out = [f"predicted ({who}): {self.class_name}, p = {self.probability:.3f}"]
        if self.ensemble_class is not None and self.ensemble_probability is not None:
            out.append(f"ensemble of folds: {self.ensemble_class}, p = {self.ensemble_probability:.3f}")
        return out


@dataclass(frozen=True)
class RiskPrediction:
    """The survival counterpart of :class:`Prediction`: the fold's risk and, with several folds, the
    ensemble's."""

    risk: float
    fold: int | None = None
    ensemble_risk: float | None = None

    def lines(self) -> list[str]:
        who = f"fold {self.fold}" if self.fold is not None else "model"
        out = [f"predicted risk ({who}): {self.risk:.3f}"]
        if self.ensemble_risk is not None:
            out.append(f"ensemble of folds: risk {self.ensemble_risk:.3f}")
        return out


def score_statistics(values: np.ndarray, k: int = 0) -> dict[str, float]:
    """Summary numbers of a slide's scores (see the module docstring); attention-only entries appear
    when every score is finite and non-negative with a positive sum."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"patches": 0.0}
    stats = {
        "patches": float(v.size),
        "min": float(v.min()),
        "max": float(v.max()),
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "std": float(v.std()),
    }
    total = float(v.sum())
    if (v >= 0).all() and total > 0:
        p = np.sort(v / total)[::-1]
        nz = p[p > 0]
        stats["entropy_norm"] = float(-(nz * np.log(nz)).sum() / math.log(v.size)) if v.size > 1 else 0.0
        stats["effective_patches"] = float(1.0 / (p**2).sum())
        stats["top1pct_share"] = float(p[: max(1, math.ceil(0.01 * v.size))].sum())
        if k > 0:
            stats[f"top{k}_share"] = float(p[:k].sum())
    return stats


_STAT_NAMES = {
    "patches": "patches",
    "min": "min",
    "max": "max",
    "mean": "mean",
    "median": "median",
    "std": "std",
    "entropy_norm": "entropy / log n",
    "effective_patches": "effective patches (1/Σp²)",
    "top1pct_share": "share of top 1 % patches",
}


def _stat_line(name: str, value: float) -> str:
    label = _STAT_NAMES.get(name) or (
        f"share of top {name[3:-6]} patches" if name.startswith("top") else name
    )
    shown = (
        f"{int(value)}"
        if name == "patches"
        else (f"{value:.1f}" if name == "effective_patches" else f"{value:.4g}")
    )
    return f"{label}: {shown}"


def detailed_figure(
    scores: PatchScores,
    prediction: Prediction | RiskPrediction,
    image: SlideImage | None = None,
    *,
    layer: HeatLayer | None = None,
    title: str = "",
    k: int = 0,
    name: str | None = None,
) -> Figure:
    """Overlay, histogram of the scores, summary statistics and the prediction, in one figure (``name``:
    the map's name in the titles, default its scale)."""
    fig = new_figure(12.0, 6.2)
    grid = fig.add_gridspec(2, 2, width_ratios=(1.55, 1.0), height_ratios=(1.0, 1.0))
    name = name or scores.scale
    draw_heatmap(
        fig, fig.add_subplot(grid[:, 0]), scores, image, title=f"{title} {name}".strip(), layer=layer
    )
    values = np.asarray(scores.values, dtype=np.float64)
    values = values[np.isfinite(values)]
    hist = fig.add_subplot(grid[0, 1])
    if values.size:
        hist.hist(values, bins=min(40, max(5, values.size // 5)), color=colormaps[HEATMAP_CMAP](0.35))
        hist.set_yscale("log")
        marks = [("mean", values.mean(), "black", "-"), ("median", np.median(values), "black", "--")]
        if 0 < k < values.size:
            marks.append((f"top-{k} threshold", np.sort(values)[::-1][k - 1], "crimson", ":"))
        for mark, x, colour, style in marks:
            hist.axvline(x, color=colour, linestyle=style, linewidth=1.2, label=f"{mark} {x:.3g}")
        hist.legend(fontsize=7, loc="upper right")
    hist.set_title(f"histogram of {name} scores", fontsize=9)
    hist.set_xlabel(scores.label if len(scores.label) < 70 else scores.label[:67] + "...", fontsize=7)
    hist.set_ylabel("patches (log)", fontsize=8)
    hist.tick_params(labelsize=7)
    text = fig.add_subplot(grid[1, 1])
    text.set_axis_off()
    stats = score_statistics(values, k)
    lines = [*prediction.lines(), "", *(_stat_line(n, v) for n, v in stats.items())]
    text.text(
        0.0,
        1.0,
        "\n".join(lines),
        va="top",
        ha="left",
        fontsize=9,
        family="monospace",
        transform=text.transAxes,
    )
    return fig


def _neighbourhood(ax, scores: PatchScores, layer: HeatLayer, index: int, norm: Normalize) -> None:
    """The score map around patch ``index`` (a window of five patch sides), the patch outlined."""
    side = float(scores.patch_px)
    x, y = (float(c) for c in scores.coords[index])
    ax.imshow(compose(layer, norm, None), extent=layer.extent, interpolation="nearest")
    ax.add_patch(Rectangle((x, y), side, side, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_xlim(x - 2 * side, x + 3 * side)
    ax.set_ylim(y + 3 * side, y - 2 * side)


def top_patch_grid(
    scores: PatchScores,
    k: int,
    reader=None,
    *,
    layer: HeatLayer | None = None,
    title: str = "",
    name: str = "",
) -> Figure | None:
    """The ``k`` highest-scoring patches of ``scores`` in a grid: tissue tiles read from the slide when
    ``reader`` is given, else their neighbourhood on the score map (``layer`` on the patch grid). None
    when there is nothing to draw (no coordinates, no patches, ``k`` < 1)."""
    if k < 1 or scores.coords is None or scores.patch_px is None or not len(scores.values):
        return None
    if reader is None and layer is None:
        return None
    top = scores.top(k)
    cols = min(len(top), 4)
    rows = math.ceil(len(top) / cols)
    fig = new_figure(2.6 * cols, 2.8 * rows + 0.5)
    if reader is not None:
        from preprocess.wsi.encode import tile_image
        from preprocess.wsi.tiling import PATCH_SIZE, choose_level

        level = choose_level(reader.level_downsamples, int(scores.patch_px), PATCH_SIZE)
        what = f"tiles read from the slide at {scores.scale}"
    else:
        what = "no raw slide: each panel is the patch's neighbourhood on the score map (red: the patch), not tissue"
    norm = Normalize(*scores.colour_range())
    for rank, index in enumerate(top, start=1):
        ax = fig.add_subplot(rows, cols, rank)
        x, y = (int(c) for c in scores.coords[index])
        if reader is not None:
            ax.imshow(np.asarray(tile_image(reader, (x, y), level)))
        else:
            _neighbourhood(ax, scores, layer, int(index), norm)
        ax.set_title(f"#{rank}  score {scores.values[index]:.3g}\n({x}, {y})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title} top {len(top)} {name or scores.scale} patches\n{what}".strip(), fontsize=9)
    return fig


def save_detail_figures(
    out_dir: Path,
    name: str,
    scores: PatchScores,
    layer: HeatLayer | None,
    prediction: Prediction | RiskPrediction,
    *,
    image: SlideImage | None = None,
    reader=None,
    k: int = 0,
    title: str = "",
) -> list[Path]:
    """Write ``detail_<name>.png`` and (when there is something to draw) ``top_grid_<name>.png`` for the
    map ``name`` (a scale, or e.g. ``5x_attr0`` where a model draws several maps per scale).

    Without a thumbnail the grid's neighbourhoods use ``layer`` (drawn on the patch grid); with one, the
    tiles come from ``reader``."""
    written = [
        save_figure(
            detailed_figure(scores, prediction, image, layer=layer, title=title, k=k, name=name),
            Path(out_dir) / f"detail_{name}.png",
        )
    ]
    grid_layer = layer if image is None else None
    grid = top_patch_grid(scores, k, reader, layer=grid_layer, title=title, name=name)
    if grid is not None:
        written.append(save_figure(grid, Path(out_dir) / f"top_grid_{name}.png"))
    return written
