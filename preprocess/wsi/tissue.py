"""Tissue segmentation of a slide thumbnail (stained tissue vs. glass background and pen marks).

Steps (:func:`segment_tissue`), as in CLAM's segmentation, on scikit-image:

1. Pen marks: pixels of strongly saturated blue or green hue, or nearly black, are pen ink
   (:func:`pen_mask`); H&E tissue is pink to purple, never green, rarely that blue or that dark. The
   pen mask is dilated a little to catch the faded stroke edges, left out of the threshold estimate
   and removed from the final mask.
2. Saturation channel of HSV (glass is grey/white, stain is coloured), median blurred over a square
   window with the edge pixels repeated (``skimage.filters.median``, like OpenCV's ``medianBlur``).
3. Otsu threshold of the BLURRED saturation (``skimage.filters.threshold_otsu``, pen pixels left
   out), floored at ``min_saturation`` so an almost empty slide does not turn noise into tissue.
4. Morphological close with a disk (pixels outside the thumbnail ignored, so tissue touching the
   border is not eroded), removal of small 8-connected objects, filling of small 4-connected holes
   that do not touch the border (sizes in thumbnail pixels), then the pen pixels are removed again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import color, filters, morphology


@dataclass(frozen=True)
class TissueParams:
    """Segmentation settings; sizes are in thumbnail (mask) pixels.

    Attributes:
        median_size: side of the median filter on the saturation channel.
        min_saturation: lower bound (0-255) on the Otsu threshold.
        close_radius: radius of the disk used by the morphological close.
        min_object_px: connected tissue regions smaller than this are dropped (this size is kept).
        max_hole_px: background holes inside tissue up to this size are filled.
        exclude_pen: drop pen-ink pixels (blue/green/black marker).
        pen_dilate: dilation (pixels) of the pen mask.
    """

    median_size: int = 7
    min_saturation: int = 15
    close_radius: int = 2
    min_object_px: int = 256
    max_hole_px: int = 256
    exclude_pen: bool = True
    pen_dilate: int = 2

    @classmethod
    def for_tile(cls, tile_mask_px: int, **overrides) -> TissueParams:
        """Defaults scaled to the grid: objects and holes smaller than one 20x tile's area are noise."""
        area = int(tile_mask_px) ** 2
        return cls(**{"min_object_px": area, "max_hole_px": area, **overrides})


@dataclass(frozen=True)
class TissueMask:
    """Result of :func:`segment_tissue`: ``mask`` [h, w] bool, the threshold used and pen coverage."""

    mask: np.ndarray
    threshold: int
    pen_fraction: float

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB uint8 [..., 3] -> (hue in degrees [0, 360), saturation [0, 1], value [0, 1]), float32."""
    if rgb.size == 0:
        empty = np.zeros(rgb.shape[:-1], dtype=np.float32)
        return empty, empty.copy(), empty.copy()
    hsv = color.rgb2hsv(rgb.reshape(-1, 1, 3)).reshape(rgb.shape).astype(np.float32)
    return hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]


def _value_and_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV value ``max(R, G, B)`` and chroma ``max - min`` as uint8 [h, w] (cheap channel-wise ops)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = np.maximum(np.maximum(r, g), b)
    return value, value - np.minimum(np.minimum(r, g), b)


def saturation_u8(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``chroma / value`` scaled to 0-255 and rounded half up, uint8 [h, w].

    Integer arithmetic: exact at the rounding ties (``rgb2hsv`` in float is not), and one byte per
    pixel instead of three float64 channels on a large thumbnail.
    """
    value, chroma = _value_and_chroma(rgb)
    v = np.maximum(value, 1).astype(np.uint32)
    return ((chroma.astype(np.uint32) * 510 + v) // (2 * v)).astype(np.uint8)


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Pen ink: saturated blue (hue 180-250 deg, S >= 0.4), saturated green (75-180 deg, S >= 0.3), or
    nearly black (V < 0.2). H&E stains sit at hue ~260-360 and 0-30 deg (purple to pink)."""
    value, chroma = _value_and_chroma(rgb)
    black = value < 51  # V < 0.2
    coloured = 10 * chroma.astype(np.uint16) >= 3 * value.astype(np.uint16)  # S >= 0.3: hue only there
    h, s, _ = rgb_to_hsv(rgb[coloured])
    blue = (h >= 180) & (h < 250) & (s >= 0.4)
    green = (h >= 75) & (h < 180) & (s >= 0.3)
    pen = black
    pen[coloured] |= blue | green
    return pen


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 ``values``: ``t`` maximising between-class variance of ``<= t`` vs ``> t``
    (``skimage.filters.threshold_otsu``; the first such ``t`` on ties, 0 for no values)."""
    values = np.asarray(values, dtype=np.uint8).ravel()
    if values.size == 0:
        return 0
    return int(filters.threshold_otsu(values))


def median_blur(image: np.ndarray, size: int) -> np.ndarray:
    """Median over ``size`` x ``size`` windows, edge pixels repeated (OpenCV ``medianBlur`` borders)."""
    if size <= 1:
        return image.copy()
    return filters.median(image, footprint=np.ones((size, size), dtype=bool), mode="nearest")


def remove_small_objects(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected foreground regions with fewer than ``min_size`` pixels (``min_size`` is kept)."""
    if min_size <= 1 or not mask.any():
        return mask.copy()
    return morphology.remove_small_objects(mask, max_size=min_size - 1, connectivity=2)


def fill_small_holes(mask: np.ndarray, max_size: int) -> np.ndarray:
    """Fill 4-connected background regions of at most ``max_size`` pixels that do not touch the border."""
    if max_size <= 0 or mask.all():
        return mask.copy()
    # remove_small_holes also fills small background regions on the border; binary_fill_holes
    # (4-connected background) marks exactly the regions enclosed by tissue.
    small_filled = morphology.remove_small_holes(mask, max_size=max_size, connectivity=1)
    return small_filled & ndimage.binary_fill_holes(mask)


def segment_tissue(rgb: np.ndarray, params: TissueParams | None = None) -> TissueMask:
    """Tissue mask of an RGB uint8 thumbnail [h, w, 3] (steps in the module docstring)."""
    params = params or TissueParams()
    if rgb.size == 0:
        return TissueMask(np.zeros(rgb.shape[:2], dtype=bool), 0, 0.0)
    if params.exclude_pen:
        pen = pen_mask(rgb)
        if params.pen_dilate > 0 and pen.any():
            pen = morphology.dilation(pen, morphology.disk(params.pen_dilate), mode="ignore")
    else:
        pen = np.zeros(rgb.shape[:2], dtype=bool)
    saturation = median_blur(saturation_u8(rgb), params.median_size)
    candidates = saturation[~pen]
    threshold = max(otsu_threshold(candidates), params.min_saturation) if candidates.size else 255
    mask = (saturation > threshold) & ~pen
    if params.close_radius > 0:
        mask = morphology.closing(mask, morphology.disk(params.close_radius), mode="ignore")
    mask = remove_small_objects(mask, params.min_object_px)
    mask = fill_small_holes(mask, params.max_hole_px)
    mask &= ~pen
    return TissueMask(mask, int(threshold), float(pen.mean()))
