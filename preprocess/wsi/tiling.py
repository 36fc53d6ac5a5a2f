"""Nested 5x/20x tile grids on level-0 pixels, the tissue test per tile, and the pyramid level to read.

Geometry (docs/formats.md §3): a tile is ``patch_size`` (256) pixels at its magnification, so it
covers ``patch_size * level0_mag / mag`` level-0 pixels: 2048 (5x) and 512 (20x) at level0_mag 40,
1024 and 256 at level0_mag 20. Both grids are anchored at level-0 (0, 0); only tiles lying fully
inside the slide are considered. Each 5x tile therefore contains exactly a 4x4 block of 20x tiles.

Selection rule:
- a 5x tile is kept when its tissue fraction is ``>= min_tissue``;
- a 20x tile is kept when its own tissue fraction is ``>= min_tissue`` AND its parent 5x tile is kept.

The tissue mask is computed at ``mask_px_per_child`` (16) mask pixels per 20x tile side, so every
tile is an exact block of mask pixels and a 5x tile's fraction is exactly the mean of its 16
children's fractions. Hence every kept 5x tile has at least one kept 20x child (the mean of 16
numbers is ``>= min_tissue`` only if one of them is), and no kept 20x tile lacks its parent.
``coords`` are (x, y) level-0 top-left corners, int64, in row-major order (y, then x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datasets.hierarchy import patch_px
from preprocess.wsi.reader import SlideError, best_level_for_downsample

PATCH_SIZE = 256
LOW_MAG = 5
HIGH_MAG = 20
MASK_PX_PER_CHILD = 16
_MAG_SNAP = (20, 40)  # magnifications inferred from microns per pixel snap to these
_MAG_SNAP_TOLERANCE = 0.15


@dataclass(frozen=True)
class TileGeometry:
    """Tile sides in level-0 pixels for one slide's level-0 magnification."""

    level0_mag: int
    patch_size: int = PATCH_SIZE
    low_mag: float = LOW_MAG
    high_mag: float = HIGH_MAG
    mask_px_per_child: int = MASK_PX_PER_CHILD

    def __post_init__(self) -> None:
        if self.level0_mag < self.high_mag:
            raise SlideError(f"level0_mag {self.level0_mag} is below the {self.high_mag:g}x tiles requested")
        try:
            low, high = self.low_px, self.high_px
        except ValueError as err:
            raise SlideError(f"level0_mag {self.level0_mag} is not supported ({err})") from None
        if low % high or high % self.mask_px_per_child:
            raise SlideError(
                f"level0_mag {self.level0_mag}: tiles of {low} and {high} level-0 px do not nest on the "
                f"{self.mask_px_per_child}-px mask grid"
            )

    @property
    def low_px(self) -> int:
        """5x tile side in level-0 pixels (2048 at level0_mag 40)."""
        return patch_px(self.level0_mag, self.low_mag, self.patch_size)

    @property
    def high_px(self) -> int:
        """20x tile side in level-0 pixels (512 at level0_mag 40)."""
        return patch_px(self.level0_mag, self.high_mag, self.patch_size)

    @property
    def children_per_side(self) -> int:
        """20x tiles along one side of a 5x tile (4)."""
        return self.low_px // self.high_px

    @property
    def mask_downsample(self) -> int:
        """Level-0 pixels per tissue-mask pixel (32 at level0_mag 40, 16 at 20)."""
        return self.high_px // self.mask_px_per_child


@dataclass(frozen=True)
class TilePlan:
    """Kept tiles of one slide.

    Attributes:
        geometry: tile sides.
        coords_low: [N5, 2] int64 (x, y) level-0 corners of kept 5x tiles.
        coords_high: [N20, 2] int64 corners of kept 20x tiles.
        parent_of_high: [N20] int64 row in ``coords_low`` of each 20x tile's parent.
        tissue_low / tissue_high: tissue fraction of each kept tile.
        grid_low: (rows, cols) of the full 5x grid; ``num_candidates_low`` = rows * cols.
        slide_tissue_fraction: fraction of the slide's mask that is tissue.
    """

    geometry: TileGeometry
    coords_low: np.ndarray
    coords_high: np.ndarray
    parent_of_high: np.ndarray
    tissue_low: np.ndarray
    tissue_high: np.ndarray
    grid_low: tuple[int, int]
    slide_tissue_fraction: float


def tissue_fractions(mask: np.ndarray, rows: int, cols: int, block: int) -> np.ndarray:
    """[rows, cols] mean of each ``block`` x ``block`` cell of ``mask`` (cropped to the grid)."""
    crop = mask[: rows * block, : cols * block].astype(np.float32)
    if crop.shape != (rows * block, cols * block):
        raise ValueError(f"mask {mask.shape} is smaller than the {rows}x{cols} grid of {block}-px cells")
    return crop.reshape(rows, block, cols, block).mean(axis=(1, 3))


def plan_tiles(
    mask: np.ndarray, geometry: TileGeometry, slide_size: tuple[int, int], min_tissue: float = 0.25
) -> TilePlan:
    """Apply the selection rule (module docstring) to a tissue ``mask`` at ``geometry.mask_downsample``.

    Args:
        mask: [H // ds, W // ds] bool tissue mask (e.g. :func:`preprocess.wsi.tissue.segment_tissue`).
        geometry: tile sides of this slide.
        slide_size: level-0 (width, height).
        min_tissue: minimum tissue fraction of a kept tile.
    """
    width, height = slide_size
    k = geometry.children_per_side
    rows5, cols5 = height // geometry.low_px, width // geometry.low_px
    frac20 = tissue_fractions(mask, rows5 * k, cols5 * k, geometry.mask_px_per_child)
    frac5 = frac20.reshape(rows5, k, cols5, k).mean(axis=(1, 3))
    keep5 = frac5 >= min_tissue
    keep20 = (frac20 >= min_tissue) & np.repeat(np.repeat(keep5, k, axis=0), k, axis=1)

    r5, c5 = np.nonzero(keep5)
    r20, c20 = np.nonzero(keep20)
    index5 = np.full(keep5.shape, -1, dtype=np.int64)
    index5[r5, c5] = np.arange(r5.size)
    return TilePlan(
        geometry=geometry,
        coords_low=np.stack([c5, r5], axis=1).astype(np.int64) * geometry.low_px,
        coords_high=np.stack([c20, r20], axis=1).astype(np.int64) * geometry.high_px,
        parent_of_high=index5[r20 // k, c20 // k],
        tissue_low=frac5[r5, c5],
        tissue_high=frac20[r20, c20],
        grid_low=(int(rows5), int(cols5)),
        slide_tissue_fraction=float(mask.mean()) if mask.size else 0.0,
    )


@dataclass(frozen=True)
class LevelChoice:
    """Where to read tiles of one magnification: pyramid ``level``, ``read_size`` level pixels per side."""

    level: int
    downsample: float
    read_size: int
    patch_size: int

    @property
    def exact(self) -> bool:
        """True when the level is exactly the tile magnification (no resize needed)."""
        return self.read_size == self.patch_size


def choose_level(level_downsamples: list[float], tile_px: int, patch_size: int = PATCH_SIZE) -> LevelChoice:
    """Level with the largest downsample ``<= tile_px / patch_size`` (= level0_mag / mag); the tile's
    ``tile_px`` level-0 pixels cover ``round(tile_px / downsample)`` pixels there, resized to
    ``patch_size`` when the level is not exact."""
    level = best_level_for_downsample(level_downsamples, tile_px / patch_size)
    ds = float(level_downsamples[level])
    return LevelChoice(level, ds, max(1, int(round(tile_px / ds))), patch_size)


def resolve_level0_mag(
    override: float | None, csv_value: float | None, objective_power: float | None, mpp: float | None
) -> tuple[int, str]:
    """Level-0 magnification and where it came from: ``--level0-mag`` > CSV column > slide's objective
    power > microns per pixel (10 / mpp, snapped to 20 or 40 within 15%). Raises :class:`SlideError`."""
    for value, source in ((override, "--level0-mag"), (csv_value, "csv"), (objective_power, "metadata")):
        if value is not None and not (isinstance(value, float) and np.isnan(value)):
            mag = float(value)
            if mag <= 0 or mag != int(mag):
                raise SlideError(f"level0_mag from {source} must be a positive whole number, got {value}")
            return int(mag), source
    if mpp:
        estimate = 10.0 / mpp
        for mag in _MAG_SNAP:
            if abs(estimate - mag) <= _MAG_SNAP_TOLERANCE * mag:
                return mag, "mpp"
    raise SlideError(
        "level-0 magnification unknown (no objective power or microns per pixel in the file); "
        "pass --level0-mag or a level0_mag column in the CSV"
    )
