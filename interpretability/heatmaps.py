"""Per-patch score maps of one slide: what is drawn, how, and what is saved (one set of functions).

Used by ``predict.py --heatmaps``, ``explain.py`` and ``interpretability_analysis.ipynb``.

Scores (:class:`PatchScores`, one per magnification):

* HiVE-MIL (:func:`hivemil_patch_scores`): the class evidence of :func:`interpretability.attribution.explain_slide`
  -- per graph node, its mean similarity to a class's descriptions, each patch's similarities min-max
  normalised onto [-1, 1] (TGDF-kept 5x patches; 20x children of kept patches). Other patches are
  drawn grey.
* Attention baselines (:func:`attention_patch_scores`): ABMIL's gated attention, LiteMIL's query
  attention (mean over queries), TransMIL's class-token attention of its last layer (mean over heads,
  square-padding repeats added back onto the instance they repeat). A 20x model also gets a 5x map:
  the attention mass of each 5x patch's 20x children.
* HiLa-style survival model (:func:`transport_plan_patch_scores`): its OPL transport plans
  (docs/survival.md §8.4), one map per attribute and level: each node's share of the attribute's
  feature, P_ik / sum_i P_ik (which patches fed which attribute).

Drawing (:func:`heatmap_figure`): the scores become a raster (:func:`heat_layer`) in level-0 pixel
coordinates -- over the slide thumbnail (:func:`read_thumbnail`) when the raw slide is at hand, else
over the patch grid (every patch grey, scored ones coloured). Colours: ``viridis`` (perceptually
uniform, readable with colour-vision deficiencies); a colour bar; a scale bar in µm when the slide
file records its microns per pixel, else in level-0 pixels. :func:`save_heatmaps` writes
``heatmap_<scale>.png``, the top-k tiles cut from the slide (``top_<scale>_<rank>.png``), any further
figures of the caller (``predict.py``: :mod:`interpretability.detail`) and the raw numbers
(``scores.npz``, written last).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from utils.atomic_io import atomic_path, ensure_output_dir

HEATMAP_CMAP = "viridis"
UNSCORED_RGBA = (0.62, 0.62, 0.62, 1.0)  # patches without a score (grid mode); not a viridis colour
UNSCORED_ALPHA_ON_SLIDE = 0.35
HEAT_ALPHA_ON_SLIDE = 0.7
THUMBNAIL_MAX_SIDE = 1200  # the figure is ~850 px wide: more thumbnail pixels would not be seen
GRID_MAX_SIDE = 1500  # raster pixels along the longer side without a slide
MAX_PATCH_PIXELS = 8  # grid mode: a patch needs no more raster pixels than this (small slides)
SCORES_FILE = "scores.npz"
SCALES = ("5x", "20x")


# ------------------------------------------------------------------------------------------ data types


@dataclass
class PatchScores:
    """Scores of one slide's patches at one magnification.

    Attributes:
        scale: ``"5x"`` or ``"20x"``.
        coords: [n, 2] level-0 (x, y) top-left corners of the scored patches (None: unknown).
        values: [n] scores.
        patch_px: patch side in level-0 pixels (None: unknown).
        label: what the values are (colour-bar label).
        background: [m, 2] corners of every patch of the slide at this scale (unscored ones are grey).
        vmin, vmax: colour range (None: the values' range).
    """

    scale: str
    coords: np.ndarray | None
    values: np.ndarray
    patch_px: int | None
    label: str
    background: np.ndarray | None = None
    vmin: float | None = None
    vmax: float | None = None

    def colour_range(self) -> tuple[float, float]:
        finite = self.values[np.isfinite(self.values)] if self.values.size else self.values
        low = self.vmin if self.vmin is not None else (float(finite.min()) if finite.size else 0.0)
        high = self.vmax if self.vmax is not None else (float(finite.max()) if finite.size else 1.0)
        return (low, high) if high > low else (low - 0.5, low + 0.5)  # constant scores: mid colour

    def top(self, k: int) -> np.ndarray:
        """Indices of the ``k`` highest scores (ties: first listed first)."""
        return np.argsort(-np.asarray(self.values, dtype=np.float64), kind="stable")[:k]


@dataclass
class SlideImage:
    """A downsampled slide: ``rgb`` [h, w, 3] uint8, pixel (i, j) covers level-0
    ``[j * downsample, (j + 1) * downsample) x [i * downsample, (i + 1) * downsample)``."""

    rgb: np.ndarray
    downsample: float
    mpp: float | None = None  # microns per level-0 pixel, when the slide file records it


@dataclass
class HeatLayer:
    """A score raster: ``values`` [h, w] (NaN: no patch), ``scored`` / ``unscored`` masks, placed with its
    top-left pixel corner at level-0 ``origin`` and ``downsample`` level-0 pixels per raster pixel."""

    values: np.ndarray
    unscored: np.ndarray
    origin: tuple[float, float]
    downsample: float

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) in level-0 pixels, for ``imshow`` (y grows downwards)."""
        h, w = self.values.shape
        x0, y0 = self.origin
        return (x0, x0 + w * self.downsample, y0 + h * self.downsample, y0)


# ------------------------------------------------------------------------------------------ scores


def hivemil_patch_scores(expl, scale: str, class_index: int | None = None) -> PatchScores:
    """HiVE-MIL class evidence at ``scale`` from a :class:`~interpretability.attribution.SlideExplanation`.

    Graph nodes (TGDF-kept 5x patches, or the real 20x children of kept patches) get their mean
    normalised similarity to the descriptions of ``class_index`` (default: the predicted class), in
    [-1, 1]; every other patch of the slide is background.
    """
    cls = expl.predicted if class_index is None else int(class_index)
    if scale == "5x":
        rows = np.isin(expl.patches_5x, expl.kept_5x)
        coords, background, side = expl.coords_5x, expl.all_coords_5x, expl.patch_size_5x
        what = "TGDF-kept 5x patches"
    elif scale == "20x":
        rows = ~np.asarray(expl.nodes_20x_padding, dtype=bool)
        coords, background, side = expl.coords_20x, expl.all_coords_20x, expl.patch_size_20x
        what = "20x children of kept 5x patches"
    else:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    values = np.asarray(expl.class_similarity(scale, cls), dtype=np.float64)[rows]
    return PatchScores(
        scale=scale,
        coords=None if coords is None else np.asarray(coords)[rows],
        values=values,
        patch_px=side,
        label=f"evidence for '{expl.class_names[cls]}' ({what}; similarity, per-patch normalised)",
        background=background,
        vmin=-1.0,
        vmax=1.0,
    )


def instance_attention(extras: Mapping, num_instances: int) -> np.ndarray | None:
    """[N] per-instance attention from a model's ``extras["attention"]`` (leading axes -- queries or
    heads -- averaged), or None when the model reports none or its size does not match."""
    att = extras.get("attention") if extras else None
    if att is None:
        return None
    arr = att.detach().float().cpu().numpy() if hasattr(att, "detach") else np.asarray(att, dtype=float)
    if arr.size == 0 or arr.shape[-1] != num_instances:
        return None
    return arr.reshape(-1, num_instances).mean(axis=0).astype(np.float64)


def attention_patch_scores(
    bag, extras: Mapping, mag: str, model_name: str, patch_px: tuple[int | None, int | None]
) -> dict[str, PatchScores]:
    """Attention maps of an instance baseline that saw ``bag`` at ``mag`` (``models.baselines.common``).

    Returns ``{"20x": ..., "5x": ...}`` for a 20x model (the 5x map sums each 5x patch's children's
    attention) and ``{"5x": ...}`` for a 5x model or a slide without 20x children; ``{}`` when the
    model reports no attention. ``patch_px`` = (5x side, 20x side) in level-0 pixels.
    """
    from models.baselines.common import bag_instance_rows

    rows, slots = bag_instance_rows(bag, mag)
    scores = instance_attention(extras, len(rows))
    if scores is None:
        return {}
    coords5 = None if bag.coords5 is None else bag.coords5.cpu().numpy()
    label = f"attention ({model_name})"
    if slots is None:  # 5x instances
        return {
            "5x": PatchScores("5x", coords5, scores, patch_px[0], f"{label}, 5x patches", background=coords5)
        }
    coords20 = None
    if bag.coords20 is not None:
        coords20 = bag.coords20.cpu().numpy()[rows, slots]
    mass = np.bincount(rows, weights=scores, minlength=bag.num_5x)
    parents = np.unique(rows)
    return {
        "5x": PatchScores(
            "5x",
            None if coords5 is None else coords5[parents],
            mass[parents],
            patch_px[0],
            f"{label}: attention mass of each 5x patch's 20x children",
            background=coords5,
        ),
        "20x": PatchScores(
            "20x", coords20, scores, patch_px[1], f"{label}, 20x patches", background=coords20
        ),
    }


def plan_key(scale: str, attribute: int) -> str:
    """The name of attribute ``attribute``'s map at ``scale`` (``heatmap_<key>.png``): ``5x_attr0`` ..."""
    return f"{scale}_attr{attribute}"


def transport_plan_patch_scores(
    bag, output, attributes: Sequence[str], patch_px: tuple[int | None, int | None]
) -> dict[str, PatchScores]:
    """The HiLa-style model's transport plans drawn per attribute and level.

    ``output`` is the model's :class:`models.hila.model.HiLaOutput` for ``bag``: ``plan_region`` [N5, K]
    over the 5x rows, ``plan_patch`` [N20, K] over the real 20x children (``patch_rows``,
    ``patch_slots``; a bag without children used its 5x rows as patches). A node's value for attribute
    k is P_ik / sum_i P_ik, its weight in the attribute's visual feature z_k (docs/survival.md §8.4), so
    each map sums to 1. Returns ``{plan_key(scale, k): PatchScores}`` for scales ``5x`` and ``20x``.
    """
    plans = (output.plan_region, output.plan_patch)
    if any(p is None for p in plans):
        raise ValueError("the model output carries no transport plans (a HiLa-style output is needed)")
    region, patch = (p.detach().float().cpu().numpy().astype(np.float64) for p in plans)
    if region.shape[1] != len(attributes) or patch.shape[1] != len(attributes):
        raise ValueError(f"transport plans over {region.shape[1]} attributes, {len(attributes)} named")
    coords5 = None if bag.coords5 is None else bag.coords5.cpu().numpy()
    rows = output.patch_rows.cpu().numpy()
    slots = output.patch_slots.cpu().numpy()
    has_children = bool(bag.child_mask.any())
    if has_children:
        coords20 = None if bag.coords20 is None else bag.coords20.cpu().numpy()[rows, slots]
        background20, side20, nodes20 = coords20, patch_px[1], "20x patches"
    else:  # the model used the 5x rows as their own patches (docs/survival.md §8.3)
        coords20 = None if coords5 is None else coords5[rows]
        background20, side20, nodes20 = coords5, patch_px[0], "5x rows standing in for 20x patches"
    levels = (
        ("5x", region, coords5, coords5, patch_px[0], "5x regions"),
        ("20x", patch, coords20, background20, side20, nodes20),
    )
    scores: dict[str, PatchScores] = {}
    for scale, plan, coords, background, side, nodes in levels:
        mass = plan.sum(axis=0)
        shares = plan / np.where(mass > 0, mass, np.nan)
        for k, name in enumerate(attributes):
            scores[plan_key(scale, k)] = PatchScores(
                scale,
                coords,
                shares[:, k],
                side,
                f"share of attribute '{name}' ({nodes}; OPL transport plan)",
                background=background,
                vmin=0.0,
            )
    return scores


# ------------------------------------------------------------------------------------------ rasters


def read_thumbnail(reader, max_side: int = THUMBNAIL_MAX_SIDE) -> SlideImage:
    """The whole slide downsampled to at most ``max_side`` pixels along its longer side (an integer
    downsample, read through :func:`preprocess.wsi.reader.read_downsampled`)."""
    from preprocess.wsi.reader import read_downsampled

    width, height = reader.dimensions
    downsample = max(1, math.ceil(max(width, height) / max_side))
    return SlideImage(read_downsampled(reader, downsample), float(downsample), reader.mpp)


def _grid_geometry(points: list[np.ndarray], side: int) -> tuple[tuple[float, float], float, tuple[int, int]]:
    """Origin, downsample and raster shape covering every patch square (grid mode)."""
    stacked = np.concatenate(points)
    low = stacked.min(axis=0).astype(np.float64)
    high = stacked.max(axis=0).astype(np.float64) + side
    span = float(max(high - low))
    downsample = max(span / GRID_MAX_SIDE, side / MAX_PATCH_PIXELS, 1.0)
    pad = 0.02 * span
    origin = (low[0] - pad, low[1] - pad)
    shape = (
        max(1, math.ceil((high[1] - low[1] + 2 * pad) / downsample)),
        max(1, math.ceil((high[0] - low[0] + 2 * pad) / downsample)),
    )
    return origin, downsample, shape


def _paint(
    shape: tuple[int, int],
    coords: np.ndarray,
    values: np.ndarray,
    side: float,
    origin: tuple[float, float],
    downsample: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(sum, count) rasters of ``values`` painted over each patch square (overlaps are averaged later)."""
    total = np.zeros(shape, dtype=np.float64)
    count = np.zeros(shape, dtype=np.int32)
    h, w = shape
    for (x, y), v in zip(np.asarray(coords, dtype=np.float64), values):
        x0 = int(round((x - origin[0]) / downsample))
        y0 = int(round((y - origin[1]) / downsample))
        x1 = max(x0 + 1, int(round((x + side - origin[0]) / downsample)))
        y1 = max(y0 + 1, int(round((y + side - origin[1]) / downsample)))
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 > x0 and y1 > y0:
            total[y0:y1, x0:x1] += v
            count[y0:y1, x0:x1] += 1
    return total, count


def heat_layer(scores: PatchScores, image: SlideImage | None = None) -> HeatLayer | None:
    """The raster of ``scores``: on the thumbnail's pixel grid when ``image`` is given, else on a grid
    covering every patch. Each pixel holds the mean score of the patches covering it (NaN: none);
    ``unscored`` marks background patches without a score. None without coordinates."""
    if scores.coords is None or scores.patch_px is None:
        return None
    side = float(scores.patch_px)
    background = scores.background if scores.background is not None else np.zeros((0, 2), np.int64)
    if image is not None:
        origin, downsample, shape = (0.0, 0.0), float(image.downsample), image.rgb.shape[:2]
    else:
        points = [p for p in (np.asarray(scores.coords), np.asarray(background)) if len(p)]
        if not points:
            return None
        origin, downsample, shape = _grid_geometry(points, int(side))
    total, count = _paint(shape, scores.coords, np.asarray(scores.values, float), side, origin, downsample)
    values = np.full(shape, np.nan, dtype=np.float64)
    np.divide(total, count, out=values, where=count > 0)
    _, behind = _paint(shape, background, np.zeros(len(background)), side, origin, downsample)
    return HeatLayer(values.astype(np.float32), (behind > 0) & (count == 0), origin, downsample)


# ------------------------------------------------------------------------------------------ drawing


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot state; works headless and in notebooks)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _nice_length(target: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above ``target``."""
    if target <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(target))
    return max(m * power for m in (1, 2, 5) if m * power <= target)


def scale_bar(view_width_px: float, mpp: float | None) -> tuple[float, str]:
    """(length in level-0 pixels, label) of a scale bar about a fifth of the view wide: µm (or mm)
    when ``mpp`` is known, level-0 pixels otherwise."""
    if mpp:
        microns = _nice_length(0.2 * view_width_px * mpp)
        label = f"{microns / 1000:g} mm" if microns >= 1000 else f"{microns:g} µm"
        return microns / mpp, label
    pixels = _nice_length(0.2 * view_width_px)
    return pixels, f"{pixels:g} px (level 0)"


def _add_scale_bar(ax, view_width: float, mpp: float | None) -> None:
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length, label = scale_bar(view_width, mpp)
    ax.add_artist(
        AnchoredSizeBar(
            ax.transData, length, label, loc="lower right", pad=0.4, sep=3, frameon=True,
            size_vertical=max(view_width / 250, 1.0), fontproperties={"size": 7},
        )
    )  # fmt: skip


def heatmap_figure(
    scores: PatchScores,
    image: SlideImage | None = None,
    *,
    title: str | None = None,
    outline: Sequence[float] | None = None,
    layer: HeatLayer | None = None,
    cmap: str = HEATMAP_CMAP,
) -> Figure:
    """Draw ``scores`` over the slide thumbnail (``image``) or, without one, over the patch grid.

    Args:
        scores: the patches and their values.
        image: the slide thumbnail (:func:`read_thumbnail`); None: grid mode (background patches grey).
        title: figure title.
        outline: (x, y, side) level-0 square drawn as a black outline (e.g. the drill-down patch).
        layer: a precomputed :func:`heat_layer` of ``scores`` (computed when None).
        cmap: matplotlib colour map (default viridis).
    """
    fig = new_figure(7.0, 5.6)
    draw_heatmap(fig, fig.add_subplot(), scores, image, title=title, outline=outline, layer=layer, cmap=cmap)
    return fig


def draw_heatmap(
    fig: Figure,
    ax,
    scores: PatchScores,
    image: SlideImage | None = None,
    *,
    title: str | None = None,
    outline: Sequence[float] | None = None,
    layer: HeatLayer | None = None,
    cmap: str = HEATMAP_CMAP,
) -> None:
    """:func:`heatmap_figure`'s drawing on the axes ``ax`` of ``fig`` (its colour bar beside them)."""
    layer = layer if layer is not None else heat_layer(scores, image)
    if title:
        ax.set_title(title, fontsize=9)
    if layer is None:
        ax.text(0.5, 0.5, "no patch coordinates in this slide", ha="center", va="center")
        ax.set_axis_off()
        return
    low, high = scores.colour_range()
    norm = Normalize(vmin=low, vmax=high)
    ax.imshow(compose(layer, norm, image, cmap), extent=layer.extent, interpolation="nearest")
    if outline is not None:
        x, y, side = outline
        ax.add_patch(Rectangle((x, y), side, side, fill=False, edgecolor="black", linewidth=1.5))
    points = [p for p in (scores.coords, scores.background) if p is not None and len(p)]
    stacked = np.concatenate(points).astype(np.float64)
    lo, hi = stacked.min(axis=0), stacked.max(axis=0) + float(scores.patch_px)
    pad = 0.04 * float(max(hi - lo))
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(hi[1] + pad, lo[1] - pad)  # image convention: y grows downwards
    ax.set_aspect("equal")
    ax.set_xlabel("x (level-0 px)")
    ax.set_ylabel("y (level-0 px)")
    ax.tick_params(labelsize=7)
    _add_scale_bar(ax, float(hi[0] - lo[0]) + 2 * pad, image.mpp if image is not None else None)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=_wrap(scores.label), shrink=0.85)


def compose(
    layer: HeatLayer, norm: Normalize, image: SlideImage | None, cmap: str = HEATMAP_CMAP
) -> np.ndarray:
    """The RGB picture [h, w, 3] (floats in [0, 1]) of ``layer``: scored pixels in the colour map, unscored
    patches grey, over the thumbnail (blended, so the tissue shows through) or over white."""
    if image is not None:
        base = image.rgb.astype(np.float32) / 255.0
        unscored_alpha, heat_alpha = UNSCORED_ALPHA_ON_SLIDE, HEAT_ALPHA_ON_SLIDE
    else:
        base = np.ones((*layer.values.shape, 3), dtype=np.float32)
        unscored_alpha, heat_alpha = 1.0, 1.0
    grey = np.asarray(UNSCORED_RGBA[:3], dtype=np.float32)
    base[layer.unscored] = (1 - unscored_alpha) * base[layer.unscored] + unscored_alpha * grey
    scored = np.isfinite(layer.values)
    colours = colormaps[cmap](norm(layer.values[scored]))[:, :3].astype(np.float32)
    base[scored] = (1 - heat_alpha) * base[scored] + heat_alpha * colours
    return np.clip(base, 0.0, 1.0)


def _wrap(text: str, width: int = 60) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line]) if line else "\n".join(lines)


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


# ------------------------------------------------------------------------------------------ saving


def save_top_tiles(
    scores: PatchScores, reader, out_dir: str | Path, k: int, name: str | None = None
) -> list[dict]:
    """The ``k`` highest-scoring patches cut from the slide at their own magnification (256 px, as the
    feature extractor reads them), as ``top_<name>_<rank>.png`` (``name``: the map's key, default its
    scale); returns one record per tile."""
    from PIL import Image

    from preprocess.wsi.encode import tile_image
    from preprocess.wsi.tiling import PATCH_SIZE, choose_level

    if k < 1 or scores.coords is None or scores.patch_px is None or not len(scores.values):
        return []
    level = choose_level(reader.level_downsamples, int(scores.patch_px), PATCH_SIZE)
    records = []
    for rank, index in enumerate(scores.top(k), start=1):
        x, y = (int(v) for v in scores.coords[index])
        tile: Image.Image = tile_image(reader, (x, y), level)
        path = Path(out_dir) / f"top_{name or scores.scale}_{rank}.png"
        with atomic_path(path, suffix=".png") as tmp:
            tile.save(tmp, format="PNG")
        records.append(
            {"rank": rank, "x": x, "y": y, "score": float(scores.values[index]), "file": path.name}
        )
    return records


def save_heatmaps(
    scores: Mapping[str, PatchScores],
    out_dir: str | Path,
    *,
    image: SlideImage | None = None,
    reader=None,
    top_k: int = 0,
    title: str = "",
    meta: dict | None = None,
    figures: Callable[[str, PatchScores, HeatLayer | None], list[Path]] | None = None,
) -> list[Path]:
    """Write ``heatmap_<scale>.png`` per scale, the top-``top_k`` tiles (needs the open slide ``reader``),
    what ``figures(name, scores, layer)`` writes per map (e.g. :func:`interpretability.detail.save_detail_figures`)
    and ``scores.npz`` (written last: its presence marks a finished folder). The keys of ``scores``
    name the maps (a scale, or e.g. ``5x_attr0`` for one of several maps at a scale).

    ``scores.npz`` holds per scale ``coords_<s>`` [n, 2], ``values_<s>`` [n], ``patch_px_<s>``, the drawn
    raster ``raster_<s>`` [h, w] (NaN where no patch), ``raster_origin_<s>`` (level-0 x, y) and
    ``raster_downsample_<s>``; ``scales``; and ``meta`` (JSON text: ``meta`` plus the top tiles).
    """
    out_dir = Path(out_dir)
    ensure_output_dir(out_dir)
    written: list[Path] = []
    arrays: dict[str, np.ndarray] = {"scales": np.array(sorted(scores))}
    tiles: dict[str, list[dict]] = {}
    for scale in sorted(scores):
        item = scores[scale]
        layer = heat_layer(item, image)
        fig = heatmap_figure(item, image, title=f"{title} {scale}".strip(), layer=layer)
        written.append(save_figure(fig, out_dir / f"heatmap_{scale}.png"))
        arrays[f"coords_{scale}"] = (
            np.zeros((0, 2), np.int64) if item.coords is None else np.asarray(item.coords)
        )
        arrays[f"values_{scale}"] = np.asarray(item.values, dtype=np.float64)
        arrays[f"patch_px_{scale}"] = np.array(-1 if item.patch_px is None else int(item.patch_px))
        if layer is not None:
            arrays[f"raster_{scale}"] = layer.values
            arrays[f"raster_origin_{scale}"] = np.asarray(layer.origin, dtype=np.float64)
            arrays[f"raster_downsample_{scale}"] = np.array(layer.downsample, dtype=np.float64)
        if reader is not None and top_k > 0:
            tiles[scale] = save_top_tiles(item, reader, out_dir, top_k, name=scale)
            written.extend(out_dir / t["file"] for t in tiles[scale])
        if figures is not None:
            written.extend(figures(scale, item, layer))
    arrays["meta"] = np.array(json.dumps({**(meta or {}), "top_tiles": tiles}, sort_keys=True))
    with atomic_path(out_dir / SCORES_FILE, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    written.append(out_dir / SCORES_FILE)
    return written


def read_scores_meta(path: str | Path) -> dict | None:
    """The ``meta`` record of a ``scores.npz`` (None when missing or unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["meta"]))
    except (OSError, KeyError, ValueError):
        return None
