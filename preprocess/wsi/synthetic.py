"""A small synthetic pyramidal slide with a known answer, for tests and benchmarks.

The picture is laid out in units of one 20x tile (``tile_px`` level-0 pixels) on an 8 x 8 block of
20x tiles, i.e. 2 x 2 tiles at 5x, repeated ``repeat`` x ``repeat`` times:

- tissue A: x in [1, 7), y in [1, 3) -> 5x tiles (0, 0) and (1, 0) are 6/16 tissue: kept, with 12 20x tiles;
- tissue B: x in [0, 4.5), y in [4, 8) -> 5x tile (0, 1) is all tissue: kept, 16 20x tiles; the half-covered
  column x in [4, 4.5) puts 2/16 tissue into 5x tile (1, 1): dropped, so its 50%-tissue 20x tiles go too;
- a blue pen band (x in [5, 8), y in [5.5, 7)) and a black pen blob (x in [6, 7.5), y in [4.25, 4.75))
  in 5x tile (1, 1): counted as tissue they would lift it to 45% and keep it.

Per block at ``min_tissue`` 0.25: 3 kept 5x tiles and 28 kept 20x tiles (:data:`EXPECTED_PER_BLOCK`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BLOCK_TILES = 8  # 20x tiles per block side
_NOISE = 12  # stain texture: +-12 grey levels
TISSUE_RGB = (214, 140, 190)
BACKGROUND_RGB = (242, 242, 240)
BLUE_PEN_RGB = (40, 70, 170)
BLACK_PEN_RGB = (30, 30, 45)
# (x0, x1, y0, y1) in 20x-tile units within one block
TISSUE_RECTS = ((1.0, 7.0, 1.0, 3.0), (0.0, 4.5, 4.0, 8.0))
PEN_RECTS = (((5.0, 8.0, 5.5, 7.0), BLUE_PEN_RGB), ((6.0, 7.5, 4.25, 4.75), BLACK_PEN_RGB))
KEPT_LOW_CELLS = ((0, 0), (1, 0), (0, 1))  # (col, row) of kept 5x tiles within a block
EXPECTED_PER_BLOCK = (3, 28)


def expected_tiles(repeat: int = 1) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """Kept (col, row) cells of the 5x grid and of the 20x grid for ``repeat`` x ``repeat`` blocks."""
    low, high = set(), set()
    for by in range(repeat):
        for bx in range(repeat):
            for cx, cy in KEPT_LOW_CELLS:
                low.add((bx * 2 + cx, by * 2 + cy))
            for x in range(1, 7):
                for y in range(1, 3):
                    high.add((bx * BLOCK_TILES + x, by * BLOCK_TILES + y))
            for x in range(0, 4):
                for y in range(4, 8):
                    high.add((bx * BLOCK_TILES + x, by * BLOCK_TILES + y))
    return low, high


def synthetic_image(tile_px: int, repeat: int = 1, seed: int = 0) -> np.ndarray:
    """Level-0 RGB uint8 image of ``repeat`` x ``repeat`` blocks (module docstring), with stain texture.

    ``tile_px`` must be a multiple of 32 (the texture repeats every 256 pixels).
    """
    if tile_px % 32:
        raise ValueError(f"tile_px must be a multiple of 32, got {tile_px}")
    block = BLOCK_TILES * tile_px
    # colours are painted NOISE below their value and the noise (0 .. 2 * NOISE) added in place, in uint8:
    # every colour channel lies in [NOISE, 255 - NOISE], so nothing wraps
    cell = np.empty((block, block, 3), dtype=np.uint8)
    cell[:] = np.subtract(BACKGROUND_RGB, _NOISE)

    def paint(rect: tuple[float, float, float, float], rgb: tuple[int, int, int]) -> None:
        x0, x1, y0, y1 = (int(round(v * tile_px)) for v in rect)
        cell[y0:y1, x0:x1] = np.subtract(rgb, _NOISE)

    for rect in TISSUE_RECTS:
        paint(rect, TISSUE_RGB)
    for rect, rgb in PEN_RECTS:
        paint(rect, rgb)
    image = np.tile(cell, (repeat, repeat, 1)) if repeat > 1 else cell
    noise = np.random.default_rng(seed).integers(0, 2 * _NOISE + 1, size=(256, 256, 3), dtype=np.uint8)
    side = image.shape[0] // 256
    image.reshape(side, 256, side, 256, 3)[...] += noise[None, :, None, :, :]
    return image


def write_pyramid_tiff(
    path: Path,
    image: np.ndarray,
    downsamples: tuple[int, ...] = (1, 4, 16),
    objective_power: int | None = None,
    mpp: float | None = None,
    tile: int = 256,
) -> Path:
    """Write ``image`` as a tiled pyramidal TIFF (zlib) with tifffile.

    With ``objective_power`` the file follows the Aperio SVS layout (description with ``AppMag`` and
    ``MPP``, a stripped thumbnail as the second page), which OpenSlide and tiffslide both parse;
    without it, a generic pyramid whose reduced levels are marked as such.
    """
    import tifffile

    height, width = image.shape[:2]
    levels = [np.ascontiguousarray(image[::ds, ::ds]) for ds in downsamples]
    options = {"photometric": "rgb", "compression": "zlib", "compressionargs": {"level": 1}, "metadata": None}
    with tifffile.TiffWriter(path) as writer:
        if objective_power is not None:
            desc = (
                f"Aperio Image Library v12.0.0 \n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) "
                f"RAW|AppMag = {objective_power}|MPP = {mpp or 10.0 / objective_power:.4f}"
            )
            writer.write(levels[0], tile=(tile, tile), description=desc, **options)
            thumb = np.ascontiguousarray(image[:: max(1, width // 256), :: max(1, width // 256)])
            writer.write(thumb, description="Aperio Image Library thumbnail", **options)
            for level in levels[1:]:
                writer.write(level, tile=(tile, tile), description=desc, **options)
        else:
            for i, level in enumerate(levels):
                writer.write(level, tile=(tile, tile), subfiletype=1 if i else 0, **options)
    return path
