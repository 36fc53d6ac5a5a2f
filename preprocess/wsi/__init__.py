"""From raw whole-slide images to 5x/20x tile features (used by ``extract_features.py``).

Modules, one mechanism each:

- :mod:`preprocess.wsi.reader`: :func:`open_slide` -> :class:`SlideReader` (OpenSlide, or tiffslide when installed).
- :mod:`preprocess.wsi.tissue`: :func:`segment_tissue` on a thumbnail (saturation, Otsu, morphology, pen marks).
- :mod:`preprocess.wsi.tiling`: nested 5x/20x grids, the tissue test per tile, the pyramid level to read.
- :mod:`preprocess.wsi.encode`: batched encoding with background tile readers.
- :mod:`preprocess.wsi.sources`: slides listed by a folder or a CSV.
- :mod:`preprocess.wsi.pipeline`: one slide end to end, written atomically.
"""

from preprocess.wsi.reader import (
    SlideError,
    SlideReader,
    best_level_for_downsample,
    open_slide,
    read_downsampled,
)
from preprocess.wsi.tiling import TileGeometry, TilePlan, choose_level, plan_tiles, resolve_level0_mag
from preprocess.wsi.tissue import TissueMask, TissueParams, segment_tissue

__all__ = [
    "SlideError",
    "SlideReader",
    "TileGeometry",
    "TilePlan",
    "TissueMask",
    "TissueParams",
    "best_level_for_downsample",
    "choose_level",
    "open_slide",
    "plan_tiles",
    "read_downsampled",
    "resolve_level0_mag",
    "segment_tissue",
]
